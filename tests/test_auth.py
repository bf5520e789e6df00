"""Bearer-token auth on the embedded store: hashed at rest, admin token shown once, 401s explained."""

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from flops_manager.auth import (
    AuthError,
    Principal,
    TokenService,
    can_access,
    hash_token,
    require_admin,
)
from flops_manager.store import ProjectStore, open_store

ENV_TOKEN = "operator-chosen-admin-token-0123456789"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "db"


@pytest.fixture
def store(data_dir: Path) -> Iterator[ProjectStore]:
    opened = open_store(None, data_dir)
    yield opened
    opened.close()


@pytest.fixture
def tokens(store: ProjectStore) -> TokenService:
    return TokenService(store)


def all_bytes(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file())


def test_hash_token() -> None:
    assert hash_token("abc") == hash_token("abc")
    assert hash_token("abc") != hash_token("abd")
    assert len(hash_token("abc")) == 64 and "abc" not in hash_token("abc")


def test_admin_token_generated_once_and_revealed_0600(tokens: TokenService, tmp_path: Path) -> None:
    reveal = tmp_path / "secrets" / "admin-token"
    token = tokens.ensure_admin_token(None, None, reveal)
    assert token is not None and token.startswith("flops_") and len(token) > 40
    assert reveal.read_text().strip() == token
    assert stat.S_IMODE(reveal.stat().st_mode) == 0o600
    # a second start finds the admin token and shows nothing new
    assert tokens.ensure_admin_token(None, None, reveal) is None
    assert reveal.read_text().strip() == token
    assert [doc["role"] for doc in tokens.list_tokens()] == ["admin"]
    principal = tokens.authenticate(f"Bearer {token}")
    assert principal == Principal(customer_id="admin", role="admin") and principal.is_admin


def test_reveal_file_mode_tightened_if_it_existed(tokens: TokenService, tmp_path: Path) -> None:
    reveal = tmp_path / "admin-token"
    reveal.write_text("stale")
    os.chmod(reveal, 0o644)
    token = tokens.ensure_admin_token(None, None, reveal)
    assert token is not None and reveal.read_text().strip() == token
    assert stat.S_IMODE(reveal.stat().st_mode) == 0o600


def test_tokens_hashed_at_rest(tokens: TokenService, store: ProjectStore, data_dir: Path, tmp_path: Path) -> None:
    admin = tokens.ensure_admin_token(None, None, tmp_path / "admin-token")
    assert admin is not None
    customer = tokens.create_customer_token("alice")
    store.close()
    raw = all_bytes(data_dir)
    for token in (admin, customer):
        assert hash_token(token).encode() in raw  # we did look at the right files
        assert token.encode() not in raw
        assert token.removeprefix("flops_").encode() not in raw
    with open_store(None, data_dir) as reopened:
        assert all("token_hash" not in doc for doc in TokenService(reopened).list_tokens())


def test_env_admin_token(tokens: TokenService, tmp_path: Path) -> None:
    reveal = tmp_path / "admin-token"
    assert tokens.ensure_admin_token(ENV_TOKEN, None, reveal) is None
    assert tokens.ensure_admin_token(f"  {ENV_TOKEN}\n", None, reveal) is None  # idempotent
    assert not reveal.exists()
    assert len(tokens.list_tokens()) == 1
    assert tokens.authenticate(f"Bearer {ENV_TOKEN}").is_admin
    # with an admin registered, nothing is generated when the env variable is gone
    assert tokens.ensure_admin_token(None, None, reveal) is None
    assert not reveal.exists()


def test_env_admin_token_added_after_generated_one(tokens: TokenService, tmp_path: Path) -> None:
    generated = tokens.ensure_admin_token(None, None, tmp_path / "admin-token")
    assert generated is not None
    assert tokens.ensure_admin_token(ENV_TOKEN, None, tmp_path / "admin-token") is None
    assert tokens.authenticate(f"Bearer {ENV_TOKEN}").is_admin
    assert tokens.authenticate(f"Bearer {generated}").is_admin


def test_admin_token_file(tokens: TokenService, tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(ENV_TOKEN + "\n")
    assert tokens.ensure_admin_token(None, secret, tmp_path / "reveal") is None
    assert not (tmp_path / "reveal").exists()
    assert tokens.authenticate(f"Bearer {ENV_TOKEN}").is_admin
    with pytest.raises(ValueError, match="cannot read"):
        tokens.ensure_admin_token(None, tmp_path / "missing", tmp_path / "reveal")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        tokens.ensure_admin_token(None, tmp_path / "empty", tmp_path / "reveal")


def test_short_supplied_admin_token_refused(tokens: TokenService, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shorter"):
        tokens.ensure_admin_token("admin", None, tmp_path / "reveal")
    assert tokens.list_tokens() == []


def test_customer_tokens_and_isolation(tokens: TokenService) -> None:
    alice_token = tokens.create_customer_token("alice")
    bob_token = tokens.create_customer_token("bob")
    assert alice_token != bob_token and alice_token.startswith("flops_")
    alice = tokens.authenticate(f"Bearer {alice_token}")
    bob = tokens.authenticate(f"bearer {bob_token}")
    assert alice == Principal(customer_id="alice", role="customer") and not alice.is_admin
    assert bob.customer_id == "bob"
    assert can_access(alice, "alice") and not can_access(alice, "bob")
    assert can_access(bob, "bob") and not can_access(bob, "alice")
    admin = Principal(customer_id="admin", role="admin")
    assert can_access(admin, "alice") and can_access(admin, "bob")
    require_admin(admin)
    with pytest.raises(AuthError) as raised:
        require_admin(alice)
    assert raised.value.status == 403
    with pytest.raises(ValueError):
        tokens.create_customer_token("  ")
    with pytest.raises(ValueError, match="reserved"):
        tokens.create_customer_token("admin")


@pytest.mark.parametrize(
    "header",
    [None, "", "   ", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Token abc", "Bearer a b", "flops_abc"],
)
def test_missing_or_malformed_header_is_401(tokens: TokenService, header: str | None) -> None:
    tokens.create_customer_token("alice")
    with pytest.raises(AuthError) as raised:
        tokens.authenticate(header)
    assert raised.value.status == 401
    assert "Authorization: Bearer <token>" in raised.value.message


def test_unknown_and_revoked_tokens_are_401(tokens: TokenService) -> None:
    token = tokens.create_customer_token("alice")
    with pytest.raises(AuthError) as raised:
        tokens.authenticate("Bearer flops_not-a-real-token")
    assert raised.value.status == 401 and "unknown" in raised.value.message
    assert "Authorization: Bearer <token>" in raised.value.message
    with pytest.raises(AuthError):
        tokens.authenticate(f"Bearer {token}x")
    [record] = tokens.list_tokens()
    assert tokens.revoke(record["token_id"])
    with pytest.raises(AuthError) as raised:
        tokens.authenticate(f"Bearer {token}")
    assert raised.value.status == 401
    assert not tokens.revoke(record["token_id"])


def test_tokens_survive_restart(data_dir: Path, tmp_path: Path) -> None:
    with open_store(None, data_dir) as first:
        service = TokenService(first)
        admin = service.ensure_admin_token(None, None, tmp_path / "reveal")
        customer = service.create_customer_token("alice")
    assert admin is not None
    with open_store(None, data_dir) as second:
        service = TokenService(second)
        assert service.ensure_admin_token(None, None, tmp_path / "reveal") is None
        assert service.authenticate(f"Bearer {admin}").is_admin
        assert service.authenticate(f"Bearer {customer}").customer_id == "alice"
