"""The original `oak` CLI's calls: its Oakestra login token, its SLA bodies, and the 200 it expects.

The CLI logs in to Oakestra and sends that access token to the FLOps manager; with
`FLOPS_OAKESTRA_USER_TOKENS=1` the manager asks Oakestra (here the stand-in of its API) whether
the token is valid, and the Oakestra user becomes the customer.
"""

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydantic import SecretStr

from flops.mqtt import MqttSettings
from flops_manager.api import create_app
from flops_manager.auth import AuthError, TokenService
from flops_manager.controller import Controller
from flops_manager.orchestration.local import LocalOrchestrator
from flops_manager.orchestration.oakestra import OakestraSettings
from flops_manager.orchestration.oakestra.identity import OakestraIdentity
from flops_manager.orchestration.settings import OrchestrationSettings, identity_provider
from flops_manager.settings import ManagerSettings
from flops_manager.sources import SourcePolicy
from flops_manager.store import ProjectStore, open_store
from tests.conftest import EXAMPLES
from tests.git_repos import make_git_repo
from tests.oakestra_standin import OakestraStandin

USER, PASSWORD = "Admin", "oak-cli-test-password"


@pytest.fixture
def standin() -> Iterator[OakestraStandin]:
    with OakestraStandin(username=USER, password=PASSWORD) as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ProjectStore]:
    opened = open_store(None, tmp_path / "db")
    yield opened
    opened.close()


def settings_for(standin: OakestraStandin, **extra: object) -> OakestraSettings:
    return OakestraSettings(url=standin.url, username=USER, password=SecretStr(PASSWORD), **extra)  # type: ignore[arg-type]


def oak_cli_login(standin: OakestraStandin) -> dict[str, str]:
    """What the `oak` CLI does before every call: log in to Oakestra's system manager."""
    answer = requests.post(f"{standin.url}/api/auth/login", json={"username": USER, "password": PASSWORD}, timeout=5)
    answer.raise_for_status()
    return dict(answer.json())


def forged(user: str) -> str:
    claims = base64.urlsafe_b64encode(json.dumps({"sub": user, "type": "access"}).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJIUzI1NiJ9.{claims}.c2lnbmF0dXJl"


def test_oakestra_access_tokens_become_customers_only_when_oakestra_vouches(
    standin: OakestraStandin, store: ProjectStore
) -> None:
    tokens = TokenService(store, OakestraIdentity(settings_for(standin), cache_s=0))
    login = oak_cli_login(standin)
    principal = tokens.authenticate(f"Bearer {login['token']}")
    assert principal.customer_id == USER and not principal.is_admin
    asked = standin.calls("GET", "/api/user/")
    assert asked and asked[-1].bearer == login["token"]
    for token in (forged(USER), login["refresh_token"], "not-a-jwt", "flops_unknown"):
        with pytest.raises(AuthError) as refused:
            tokens.authenticate(f"Bearer {token}")
        assert refused.value.status == 401
    standin.expire_access_tokens()
    with pytest.raises(AuthError) as expired:
        tokens.authenticate(f"Bearer {login['token']}")
    assert expired.value.status == 401


def test_an_accepted_token_is_remembered_and_oakestra_away_is_503(
    standin: OakestraStandin, store: ProjectStore
) -> None:
    now = [1000.0]
    identity = OakestraIdentity(settings_for(standin), cache_s=60, clock=lambda: now[0])
    tokens = TokenService(store, identity)
    token = oak_cli_login(standin)["token"]
    tokens.authenticate(f"Bearer {token}")
    before = len(standin.calls("GET", "/api/user/"))
    tokens.authenticate(f"Bearer {token}")
    assert len(standin.calls("GET", "/api/user/")) == before  # one Oakestra call a minute, not one a request
    now[0] += 61
    standin.stop()
    with pytest.raises(AuthError) as away:
        tokens.authenticate(f"Bearer {token}")
    assert away.value.status == 503 and "Oakestra" in away.value.message


def test_the_setting_turns_it_on_and_without_it_oakestra_tokens_are_refused(
    standin: OakestraStandin, store: ProjectStore
) -> None:
    assert identity_provider(OrchestrationSettings(oakestra=settings_for(standin))) is None
    env = {"FLOPS_OAKESTRA_URL": standin.url, "FLOPS_OAKESTRA_USERNAME": USER, "FLOPS_OAKESTRA_PASSWORD": PASSWORD}
    assert OrchestrationSettings.from_env(env).oakestra.accept_user_tokens is False  # type: ignore[union-attr]
    on = OrchestrationSettings.from_env({**env, "FLOPS_OAKESTRA_USER_TOKENS": "1"})
    assert isinstance(identity_provider(on), OakestraIdentity)
    with pytest.raises(AuthError) as refused:
        TokenService(store).authenticate(f"Bearer {oak_cli_login(standin)['token']}")
    assert refused.value.status == 401


def test_the_oak_clis_project_and_mock_calls_get_flops_answers(
    standin: OakestraStandin, store: ProjectStore, tmp_path: Path
) -> None:
    """The CLI's bodies as its SLA files write them, with its token: 200 and FLOps's messages."""
    settings = ManagerSettings(
        home=tmp_path / "home", mqtt=MqttSettings(host="127.0.0.1", port=1), tracking_uri="http://127.0.0.1:7027",
        nodes_dir=tmp_path / "home" / "nodes",
        # The oak CLI user is an Oakestra customer submitting a local repository: allowed here explicitly.
        sources=SourcePolicy(local_roots=[tmp_path], local_for_customers=True),
    )  # fmt: skip
    controller = Controller(store, {"local": LocalOrchestrator(settings.runs_dir)}, settings)
    client = create_app(controller, TokenService(store, OakestraIdentity(settings_for(standin)))).test_client()
    headers = {"Authorization": f"Bearer {oak_cli_login(standin)['token']}", "Content-Type": "application/json"}
    mock = {
        "customerID": "Admin",
        "mock_data_configuration": {
            "dataset_name": "digits", "number_of_partitions": 2, "one_mock_service_per_partition": False,
            "data_tag": "mnist",
        },
    }  # fmt: skip
    answer = client.post("/api/flops/mocks", json=mock, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["message"] == "New Mock-Data-Provider started successfully"
    repo = make_git_repo(EXAMPLES / "digits-sklearn", tmp_path / "repo")
    project = {
        "verbose": True, "customerID": "Admin", "ml_repo_url": str(repo), "ml_model_flavor": "sklearn",
        "use_devel_base_images": True,
        "training_configuration": {
            "data_tags": "mnist", "training_rounds": 5, "min_available_clients": 2, "min_fit_clients": 2,
            "min_evaluate_clients": 2,
        },
        "resource_constraints": {"memory": 100, "vcpus": 1, "storage": 0},
    }  # fmt: skip
    answer = client.post("/api/flops/projects", json=project, headers=headers)
    assert answer.status_code == 200, answer.get_json()
    body = answer.get_json()
    assert body["message"] == "New FLOps project started successfully"
    stored = store.get(body["project_id"])
    assert stored is not None and stored.customer_id == "Admin"
    assert stored.sla.training_configuration.data_tags == ["mnist"]
    assert body["status_url"] == f"/api/flops/projects/{body['project_id']}"
