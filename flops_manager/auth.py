"""Bearer-token authentication for the manager's API, with no default credentials.

Tokens are random (`flops_` + 32 random bytes, URL-safe) and only their SHA-256 hashes are stored,
so a copied database grants nothing. The admin token is either supplied by the operator
(`FLOPS_ADMIN_TOKEN` or a secret file in `FLOPS_ADMIN_TOKEN_FILE`) or generated on the first start
and written once to a 0600 file that `flops up` points the user to. The admin creates one token per
customer; a customer sees only its own projects.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from pydantic import BaseModel

from flops_manager.store import ProjectStore

if TYPE_CHECKING:
    from flops_manager.models import Project

TOKEN_PREFIX = "flops_"
ADMIN_CUSTOMER_ID = "admin"
# A token chosen by the operator must be at least this long: no short guessable passwords.
MIN_SUPPLIED_TOKEN_LENGTH = 16
BEARER_HINT = "pass your token as the header `Authorization: Bearer <token>`"

Role = Literal["admin", "customer"]


class AuthError(Exception):
    """A request that is not authenticated (401) or not allowed (403); `message` is for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class IdentityUnavailable(RuntimeError):
    """The identity provider could not be asked whether a token is valid (unreachable, 5xx, time-out)."""


class IdentityProvider(Protocol):
    """Who else may vouch for a bearer token: an orchestrator's own login tokens (Oakestra's)."""

    def customer_for(self, token: str) -> str | None:
        """The customer `token` belongs to, None when it is nobody's; `IdentityUnavailable` when unsure."""
        ...


class Principal(BaseModel):
    """Who a request acts for."""

    customer_id: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


def hash_token(token: str) -> str:
    """SHA-256 hex digest of a token: what is stored and looked up instead of the token.

    A plain fast hash is enough (no salt or KDF) because tokens are long and random, not passwords.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token: the prefix makes it recognisable to secret scanners and to people."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def can_access(principal: Principal, project_customer_id: str) -> bool:
    """Admins see every project; a customer only its own."""
    return principal.is_admin or principal.customer_id == project_customer_id


def visible_project(store: ProjectStore, principal: Principal, project_id: str) -> Project | None:
    """The project if it exists and `principal` may see it; None reads the same for both (no oracle)."""
    project = store.get(project_id)
    return project if project is not None and can_access(principal, project.customer_id) else None


def require_admin(principal: Principal) -> None:
    """Raise 403 unless the principal is the admin (token management, resets)."""
    if not principal.is_admin:
        raise AuthError(403, "this action needs the admin token")


def _write_secret(path: Path, content: str) -> None:
    """Write `content` to `path` readable by its owner only (0600), even if the file existed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # O_CREAT's mode does not apply to a file that already existed
        os.write(fd, content.encode("utf-8"))
    finally:
        os.close(fd)


class TokenService:
    """Issues and checks tokens; keeps them in the store's `tokens` collection as hashes."""

    def __init__(self, store: ProjectStore, external: IdentityProvider | None = None) -> None:
        self.store = store
        self.external = external

    def _register(self, token: str, customer_id: str, role: Role) -> dict[str, Any]:
        record = {
            "token_id": "tok_" + secrets.token_hex(8),
            "token_hash": hash_token(token),
            "customer_id": customer_id,
            "role": role,
            "created_at": time.time(),
        }
        self.store.put_token(record)
        return record

    def admin_exists(self) -> bool:
        """Whether any admin token is registered."""
        return any(doc.get("role") == "admin" for doc in self.store.list_tokens())

    def ensure_admin_token(self, env_token: str | None, token_file: Path | None, reveal_file: Path) -> str | None:
        """Make sure an admin can log in; return a newly generated admin token, else None.

        A token supplied by the operator (env `FLOPS_ADMIN_TOKEN`, or the file named by
        `FLOPS_ADMIN_TOKEN_FILE`, e.g. a mounted secret) is registered (idempotently) and never
        written anywhere. Without one, the first start generates a token, stores its hash and
        writes it to `reveal_file` (0600) so `flops up` can tell the user where it is; the return
        value is the only other time it is shown. Later starts find an admin token and return None.
        """
        supplied = (env_token or "").strip()
        if not supplied and token_file is not None:
            try:
                supplied = Path(token_file).read_text(encoding="utf-8").strip()
            except OSError as error:
                raise ValueError(f"cannot read the admin token file {token_file}: {error}") from error
            if not supplied:
                raise ValueError(f"the admin token file {token_file} is empty")
        if supplied:
            if len(supplied) < MIN_SUPPLIED_TOKEN_LENGTH:
                raise ValueError(
                    f"the supplied admin token is shorter than {MIN_SUPPLIED_TOKEN_LENGTH} characters; "
                    "use a long random one, e.g. `openssl rand -hex 32`"
                )
            existing = self.store.find_token(hash_token(supplied))
            if existing is None or existing.get("role") != "admin":
                self._register(supplied, ADMIN_CUSTOMER_ID, "admin")
            return None
        if self.admin_exists():
            return None
        token = new_token()
        self._register(token, ADMIN_CUSTOMER_ID, "admin")
        _write_secret(Path(reveal_file), token + "\n")
        return token

    def create_customer_token(self, customer_id: str) -> str:
        """A new token for `customer_id` (the admin hands it out); only its hash is kept."""
        customer_id = customer_id.strip()
        if not customer_id:
            raise ValueError("customer_id must not be empty")
        if customer_id.lower() == ADMIN_CUSTOMER_ID:  # "Admin" too: the operator's customer, owner of unmarked data
            raise ValueError(f"{customer_id!r} is reserved for the admin: choose another customer id")
        token = new_token()
        self._register(token, customer_id, "customer")
        return token

    def record_of(self, token: str) -> dict[str, Any]:
        """The record of a token just issued, without its hash."""
        found = self.store.find_token(hash_token(token))
        if found is None:
            raise KeyError("no such token")
        return {key: value for key, value in found.items() if key != "token_hash"}

    def list_tokens(self) -> list[dict[str, Any]]:
        """Token records without their hashes (id, customer, role, creation time): safe to show."""
        return [{key: value for key, value in doc.items() if key != "token_hash"} for doc in self.store.list_tokens()]

    def revoke(self, token_id: str) -> bool:
        """Delete a token by its id; False if there was none."""
        return self.store.delete_token(token_id)

    def authenticate(self, authorization_header: str | None) -> Principal:
        """The principal behind an `Authorization: Bearer <token>` header, or AuthError(401)."""
        if not authorization_header or not authorization_header.strip():
            raise AuthError(401, f"missing credentials: {BEARER_HINT}")
        scheme, _, token = authorization_header.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or " " in token:
            raise AuthError(401, f"malformed Authorization header: {BEARER_HINT}")
        digest = hash_token(token)
        record = self.store.find_token(digest)
        # The lookup is by hash, so timing reveals nothing about the token; compare anyway so a
        # store that matched loosely can never let a different token through.
        if record is None or not hmac.compare_digest(str(record.get("token_hash", "")), digest):
            return self._external_principal(token)
        role = record.get("role")
        if role not in ("admin", "customer"):
            raise AuthError(401, "token record has no valid role; ask the admin for a new token")
        return Principal(customer_id=str(record["customer_id"]), role=role)

    def _external_principal(self, token: str) -> Principal:
        """A token FLOps did not issue: a customer if the identity provider vouches for it, else 401."""
        if self.external is None or token.startswith(TOKEN_PREFIX):
            raise AuthError(401, f"unknown or revoked token: {BEARER_HINT}")
        try:
            customer = self.external.customer_for(token)
        except IdentityUnavailable as error:
            raise AuthError(503, f"this token can only be checked by Oakestra, which is away: {error}") from error
        if customer is None or customer == ADMIN_CUSTOMER_ID:
            raise AuthError(
                401, f"unknown or revoked token (neither FLOps's nor a valid Oakestra login): {BEARER_HINT}"
            )
        return Principal(customer_id=customer, role="customer")
