"""The manager's REST API on Flask's test client, over a real controller, store and local backend.

Nothing here runs a reconcile loop, so a submitted project stays `submitted`: these tests see
what the API answers and stores, not what the lifecycle does (tests/test_manager_e2e.py).
The dry runs start the real image builder in check-only mode, on real git repositories.
"""

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from flask.testing import FlaskClient

from flops.data.node_meta import clusters_of
from flops.mqtt import MqttSettings
from flops_manager.api import create_app
from flops_manager.auth import TokenService
from flops_manager.controller import Controller
from flops_manager.models import ProjectStatus
from flops_manager.orchestration import ENABLE_HINTS, ServiceSpec
from flops_manager.orchestration.local import LocalOrchestrator
from flops_manager.settings import ManagerSettings
from flops_manager.sources import SourcePolicy
from flops_manager.store import ProjectStore, open_store
from tests.conftest import EXAMPLES
from tests.git_repos import git, make_git_repo
from tests.manager_process import repo_root_above, sla

ADMIN_TOKEN = "flops_test-admin-token-0123456789abcdef"
UNRESOLVABLE_URL = "https://flops-test-repository.invalid/user/model.git"


class Api:
    """The app with an admin token; `call` sends a request as the admin, a customer or nobody."""

    def __init__(self, client: FlaskClient, store: ProjectStore, settings: ManagerSettings, tokens: TokenService):
        self.client = client
        self.store = store
        self.settings = settings
        self.tokens = tokens

    def call(self, method: str, path: str, token: str | None = ADMIN_TOKEN, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return self.client.open(path, method=method, headers=headers, **kwargs)


def make_settings(home: Path) -> ManagerSettings:
    return ManagerSettings(
        home=home,
        mqtt=MqttSettings(host="127.0.0.1", port=1),  # nothing publishes: no reconcile loop starts builds
        tracking_uri="http://127.0.0.1:7027",
        nodes_dir=home / "nodes",
        # The tests' repositories: local folders under pytest's root (admin only), and the
        # silent git server's http:// address.
        sources=SourcePolicy(schemes=["https", "http"], local_roots=[repo_root_above(home)]),
    )


@pytest.fixture(scope="module")
def digits_repo(module_tmp: Callable[[str], Path]) -> Path:
    return make_git_repo(EXAMPLES / "digits-sklearn", module_tmp("repos") / "digits-sklearn")


def open_api(home: Path) -> tuple[Api, ProjectStore]:
    settings = make_settings(home)
    store = open_store(None, home / "store")
    tokens = TokenService(store)
    tokens.ensure_admin_token(ADMIN_TOKEN, None, home / "admin-token")
    controller = Controller(store, {"local": LocalOrchestrator(settings.runs_dir)}, settings)
    app = create_app(controller, tokens)
    return Api(app.test_client(), store, settings, tokens), store


@pytest.fixture(scope="module")
def api(module_tmp: Callable[[str], Path]) -> Iterator[Api]:
    """One manager home with digits on node-1 and node-2 (made through the mocks endpoint), shared
    with every customer (tests/test_tenancy.py has tags of one customer's)."""
    instance, store = open_api(module_tmp("manager-home"))
    try:
        config = {"dataset_name": "digits", "number_of_partitions": 2, "data_tag": "digits", "shared": True}
        body = {"mock_data_configuration": config}
        answer = instance.call("POST", "/api/flops/mocks", json=body)
        assert answer.status_code == 200, answer.get_json()
        assert answer.get_json()["message"] == "New Mock-Data-Provider started successfully"
        assert set(answer.get_json()["nodes"]) == {"node-1", "node-2"}
        yield instance
    finally:
        store.close()


def project_ids(api: Api) -> list[str]:
    return [p["project_id"] for p in api.call("GET", "/api/flops/projects").get_json()]


# ---------------------------------------------------------------------------- submit refusals
def test_invalid_slas_are_422_naming_the_field_and_store_nothing(api: Api, digits_repo: Path) -> None:
    before = project_ids(api)
    missing = api.call("POST", "/api/flops/projects", json={"customerID": "Admin", "ml_model_flavor": "sklearn"})
    assert missing.status_code == 422 and missing.get_json()["details"][0]["field"] == "ml_repo_url"
    unknown = api.call("POST", "/api/flops/projects", json=sla(digits_repo, ml_repo_branch="x"))
    assert unknown.status_code == 422 and "ml_repo_branch" in unknown.get_json()["message"]
    wrong = sla(digits_repo)
    wrong["training_configuration"]["training_rounds"] = "many"
    wrong_answer = api.call("POST", "/api/flops/projects", json=wrong)
    assert wrong_answer.status_code == 422
    assert wrong_answer.get_json()["details"][0]["field"] == "training_configuration.training_rounds"
    impossible = sla(digits_repo)
    impossible["training_configuration"]["min_fit_clients"] = 5
    refused = api.call("POST", "/api/flops/projects", json=impossible)
    assert refused.status_code == 422 and "min_fit_clients" in refused.get_json()["message"]
    not_json = api.call("POST", "/api/flops/projects", data=b"{not json", content_type="application/json")
    assert not_json.status_code == 422 and "neither valid JSON nor YAML" in not_json.get_json()["message"]
    empty = api.call("POST", "/api/flops/projects", data=b"")
    assert empty.status_code == 400 and "body" in empty.get_json()["message"]
    assert project_ids(api) == before


def test_names_the_store_cannot_keep_and_text_that_is_not_unicode_are_refused(api: Api, digits_repo: Path) -> None:
    """The store refuses '.' and a leading '$' in field names (they were a 500 found by schemathesis),
    and a lone surrogate escape is not text: refused with the field named, nothing stored."""
    before = project_ids(api)
    for free_form in ("hyperparameters", "strategy"):
        document = sla(digits_repo)
        document[free_form] = {"learning.rate": 0.1} if free_form == "hyperparameters" else {"parameters": {"$x": 1}}
        answer = api.call("POST", "/api/flops/projects", json=document)
        assert answer.status_code == 422, answer.get_json()
        assert "the project store cannot keep: rename it" in answer.get_json()["message"]
    statistics = {"customerID": "Admin", "job": "statistics", "strategy": {"parameters": {"3.t": "x"}}}
    assert api.call("POST", "/api/flops/projects", json=statistics).status_code == 422
    surrogate = b'{"customerID": "Admin", "project_name": "\\ud825x"}'
    answer = api.call("POST", "/api/flops/projects", data=surrogate, content_type="application/json")
    assert answer.status_code == 400 and "project_name holds a lone surrogate" in answer.get_json()["message"]
    assert project_ids(api) == before


def test_yaml_sla_is_accepted(api: Api, digits_repo: Path) -> None:
    document = f"""
customerID: Admin
ml_repo_url: {digits_repo}
ml_model_flavor: sklearn
training_configuration: {{data_tags: [digits], min_available_clients: 2, min_fit_clients: 2, min_evaluate_clients: 2}}
"""
    answer = api.call("POST", "/api/flops/projects", data=document, content_type="application/yaml")
    assert answer.status_code == 200, answer.get_json()
    assert api.store.get(answer.get_json()["project_id"]) is not None


def test_backend_not_enabled_is_422_saying_how_to_enable_it(api: Api, digits_repo: Path) -> None:
    for backend in ("docker", "oakestra"):
        answer = api.call("POST", "/api/flops/projects", json=sla(digits_repo, backend=backend))
        assert answer.status_code == 422, answer.get_json()
        body = answer.get_json()
        assert f"backend '{backend}' is not enabled" in body["message"]
        assert ENABLE_HINTS[backend] in body["message"]
        assert body["details"] == {"field": "backend", "enabled": ["local"]}
    unknown = api.call("POST", "/api/flops/projects", json=sla(digits_repo, backend="kubernetes"))
    assert unknown.status_code == 422 and unknown.get_json()["details"][0]["field"] == "backend"


def test_no_node_data_for_the_tags_is_422_pointing_to_mocks(api: Api, digits_repo: Path) -> None:
    no_data = sla(digits_repo)
    no_data["training_configuration"]["data_tags"] = ["mnist"]
    answer = api.call("POST", "/api/flops/projects", json=no_data)
    assert answer.status_code == 422 and "mocks" in answer.get_json()["message"]
    assert answer.get_json()["details"] == {"field": "training_configuration.data_tags"}
    too_many = sla(digits_repo)
    too_many["training_configuration"]["min_available_clients"] = 3
    assert api.call("POST", "/api/flops/projects", json=too_many).status_code == 422


def test_submit_answers_at_once_and_never_fetches_the_repository(api: Api, digits_repo: Path) -> None:
    """Even an unreachable repository is accepted (a fetch would refuse it): the builder fetches it."""
    started = time.monotonic()
    answer = api.call("POST", "/api/flops/projects/", json=sla(digits_repo, ml_repo_url=UNRESOLVABLE_URL))
    assert time.monotonic() - started < 2.0
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["message"] == "New FLOps project started successfully"  # FLOps's own answer
    project_id = answer.get_json()["project_id"]
    assert answer.headers["Location"] == answer.get_json()["status_url"] == f"/api/flops/projects/{project_id}"
    view = api.call("GET", f"/api/flops/projects/{project_id}").get_json()
    assert view["status"] == "submitted" and view["error"] is None
    assert view["sla"]["ml_repo_url"] == UNRESOLVABLE_URL and view["sla"]["customerID"] == "Admin"
    assert view["sla"]["training_configuration"]["data_tags"] == ["digits"]
    assert view["stages"]["submitted"]["ended_at"] is None
    assert view["components"] == [] and view["build"] is None


def test_rounds_done_counts_only_rounds_that_produced_a_model(api: Api, digits_repo: Path) -> None:
    project_id = api.call("POST", "/api/flops/projects", json=sla(digits_repo)).get_json()["project_id"]
    done = {"round": 1, "accuracy": 0.9, "loss": 0.3, "learners": 2, "duration_s": 1.5}
    all_failed = {"round": 2, "learners": 0, "failures": ["node-1: ValueError", "node-2: ValueError"]}
    api.store.update(project_id, {"rounds": [done, all_failed]})
    view = api.call("GET", f"/api/flops/projects/{project_id}").get_json()
    assert view["rounds_done"] == 1 and [r["round"] for r in view["rounds"]] == [1, 2]


def test_learners_endpoint_gives_each_learners_rounds_and_the_flags(api: Api, digits_repo: Path) -> None:
    project_id = api.call("POST", "/api/flops/projects", json=sla(digits_repo)).get_json()["project_id"]
    flag = {"figure": "local_loss", "value": 2.3, "median": 0.3, "score": 9.1}
    rounds = [
        {"round": n, "learners": 2, "duration_s": 1.0, "per_learner": [
            {"learner": "node-1", "examples": 700, "local_loss": 0.3, "update_norm": 1.9},
            {"learner": "node-2", "examples": 650, "local_loss": 2.3, "update_norm": 6.1, "flags": [flag] * (n == 2)},
        ]}
        for n in (1, 2)
    ]  # fmt: skip
    api.store.update(project_id, {"rounds": rounds})
    view = api.call("GET", f"/api/flops/projects/{project_id}/learners").get_json()
    assert sorted(view["learners"]) == ["node-1", "node-2"]
    assert [r["round"] for r in view["learners"]["node-2"]] == [1, 2]
    assert view["learners"]["node-1"][0]["examples"] == 700
    assert view["flagged"] == [
        {"round": 2, "learner": "node-2", "flags": ["local_loss 2.3 (round median 0.3, score 9.1)"]}
    ]
    one = api.call("GET", f"/api/flops/projects/{project_id}/learners?round=1").get_json()
    assert [r["round"] for r in one["learners"]["node-1"]] == [1] and one["flagged"] == []
    bad = api.call("GET", f"/api/flops/projects/{project_id}/learners?round=last")
    assert bad.status_code == 400 and bad.get_json()["details"]["field"] == "round"
    assert api.call("GET", "/api/flops/projects/nope/learners").status_code == 404


def test_a_retried_stage_shows_in_the_project(api: Api, digits_repo: Path) -> None:
    project_id = api.call("POST", "/api/flops/projects", json=sla(digits_repo)).get_json()["project_id"]
    assert "retry" not in api.call("GET", f"/api/flops/projects/{project_id}").get_json()
    retry = {"stage": "deploying", "attempts": 2, "first_failed_at": 1.0, "next_attempt_at": 5.0, "reason": "503"}
    api.store.update(project_id, {"retry": retry})
    assert api.call("GET", f"/api/flops/projects/{project_id}").get_json()["retry"] == retry
    listed = {p["project_id"]: p for p in api.call("GET", "/api/flops/projects").get_json()}
    assert listed[project_id]["retry"] == retry


# ------------------------------------------------------------------------------ auth and access
def test_requests_without_a_valid_token_are_401(api: Api, digits_repo: Path) -> None:
    for token in (None, "flops_forged"):
        answer = api.call("POST", "/api/flops/projects", token=token, json=sla(digits_repo))
        assert answer.status_code == 401, answer.get_json()
        assert "Authorization: Bearer <token>" in answer.get_json()["message"]
    assert api.call("GET", "/api/flops/projects", token=None).status_code == 401
    assert api.call("GET", "/", token=None).get_json() == {"message": "ok"}


def test_customers_see_only_their_own_projects(api: Api, digits_repo: Path) -> None:
    alice = api.call("POST", "/api/flops/tokens", json={"customer_id": "alice"}).get_json()["token"]
    bob = api.call("POST", "/api/flops/tokens", json={"customer_id": "bob"}).get_json()["token"]
    assert api.call("POST", "/api/flops/tokens", token=bob, json={"customer_id": "eve"}).status_code == 403
    assert api.call("POST", "/api/flops/tokens", json={"customer_id": "../x"}).status_code == 422
    remote = {"ml_repo_url": UNRESOLVABLE_URL}  # customer tokens name no local paths
    mine = api.call("POST", "/api/flops/projects", token=alice, json=sla(digits_repo, customerID="alice", **remote))
    assert mine.status_code == 200, mine.get_json()
    project_id = mine.get_json()["project_id"]
    for method, path in (("GET", ""), ("GET", "/events"), ("GET", "/logs"), ("DELETE", "")):
        assert api.call(method, f"/api/flops/projects/{project_id}{path}", token=bob).status_code == 404
    assert project_id not in [p["project_id"] for p in api.call("GET", "/api/flops/projects", token=bob).get_json()]
    assert project_id in [p["project_id"] for p in api.call("GET", "/api/flops/projects", token=alice).get_json()]
    as_alice = api.call("POST", "/api/flops/projects", token=bob, json=sla(digits_repo, customerID="alice", **remote))
    assert as_alice.status_code == 403 and "bob" in as_alice.get_json()["message"]
    # FLOps's default customer, "Admin", means "me" for a customer token.
    default_customer = api.call("POST", "/api/flops/projects", token=bob, json=sla(digits_repo, **remote))
    assert default_customer.status_code == 200
    assert api.store.get(default_customer.get_json()["project_id"]).customer_id == "bob"  # type: ignore[union-attr]
    assert api.call("DELETE", "/api/flops/database", token=bob).status_code == 403


def test_unknown_project_component_and_filter(api: Api, digits_repo: Path) -> None:
    assert api.call("GET", "/api/flops/projects/nope").status_code == 404
    assert api.call("DELETE", "/api/flops/projects/nope").status_code == 404
    bad_filter = api.call("GET", "/api/flops/projects?status=running")
    assert bad_filter.status_code == 400 and "submitted" in bad_filter.get_json()["details"]["allowed"]
    project_id = api.call("POST", "/api/flops/projects", json=sla(digits_repo)).get_json()["project_id"]
    listed = api.call("GET", "/api/flops/projects?status=submitted,training").get_json()
    assert project_id in [p["project_id"] for p in listed]
    assert api.call("GET", "/api/flops/projects?status=completed").get_json() == []
    logs = api.call("GET", f"/api/flops/projects/{project_id}/logs?component=aggregator")
    assert logs.status_code == 404 and logs.get_json()["details"] == {"components": []}
    bad_tail = api.call("GET", f"/api/flops/projects/{project_id}/logs?tail=many")
    assert bad_tail.status_code == 400 and bad_tail.get_json()["details"] == {"field": "tail"}
    assert api.call("DELETE", "/api/flops/database").status_code == 409  # projects still active
    cancelled = api.call("DELETE", f"/api/flops/projects/{project_id}")
    assert cancelled.status_code == 202 and api.store.get(project_id).desired == "cancelled"  # type: ignore[union-attr]


def test_mocks_refuse_unknown_data_sets_and_fields(api: Api, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no hub here, and an empty Hugging Face cache
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    for name in ("mnist", "cifar10"):  # FLOps's own mock bodies
        config = {"dataset_name": name, "number_of_partitions": 2, "data_tag": name}
        unknown = api.call("POST", "/api/flops/mocks", json={"customerID": "Admin", "mock_data_configuration": config})
        assert unknown.status_code == 422, unknown.get_json()
        message = unknown.get_json()["message"]
        assert "digits, breast_cancer, iris, wine" in message and "flops data partition FILE" in message
        assert "digits" in unknown.get_json()["details"]["available"]
    config = {"dataset_name": "imagenet", "number_of_partitions": 2, "data_tag": "x"}
    a_file = {**config, "dataset_name": "/etc/passwd"}
    secret = api.call("POST", "/api/flops/mocks", json={"mock_data_configuration": a_file})
    assert secret.status_code == 422  # a data set name, never a file on the manager
    extra = api.call("POST", "/api/flops/mocks", json={"mock_data_configuration": {**config, "size": 3}})
    assert extra.status_code == 422


def test_a_database_reset_stops_the_served_models(tmp_path: Path, digits_repo: Path) -> None:
    instance, store = open_api(tmp_path / "home")
    server: psutil.Process | None = None
    try:
        body = {"mock_data_configuration": {"dataset_name": "iris", "number_of_partitions": 2, "data_tag": "digits"}}
        assert instance.call("POST", "/api/flops/mocks", json=body).status_code == 200
        project_id = instance.call("POST", "/api/flops/projects", json=sla(digits_repo)).get_json()["project_id"]
        store.transition(project_id, ProjectStatus.COMPLETED)
        backend = LocalOrchestrator(instance.settings.runs_dir)
        command = [sys.executable, "-c", "import time; time.sleep(120)"]
        handle = backend.deploy(ServiceSpec(project_id=project_id, name="inference", role="inference", command=command))
        store.update(project_id, {"deployment": [handle.model_dump(mode="json")]})
        server = psutil.Process(int(handle.ref))
        assert server.is_running()
        assert instance.call("DELETE", "/api/flops/database").status_code == 200
        server.wait(timeout=20)  # gone with its project, not left serving
        assert store.get(project_id) is None
    finally:
        if server is not None and server.is_running():
            server.kill()
        store.close()


def test_openapi_and_tracking(api: Api) -> None:
    document = api.call("GET", "/api/openapi.json", token=None).get_json()
    assert "ProjectSLA" in document["components"]["schemas"]
    submit = document["paths"]["/api/flops/projects"]["post"]
    assert [p["name"] for p in submit["parameters"]] == ["dry_run"]
    assert {"200", "422", "504"} <= set(submit["responses"]) and "201" not in submit["responses"]
    assert api.call("GET", "/api/flops/tracking").get_json() == {"tracking_server_url": "http://127.0.0.1:7027"}


# ------------------------------------------------------------------------------------ dry runs
def dry_run_leftovers(api: Api) -> list[Path]:
    folder = api.settings.home / "dry-runs"
    return list(folder.iterdir()) if folder.is_dir() else []


def test_dry_run_checks_the_repository_and_stores_nothing(api: Api, digits_repo: Path) -> None:
    before = project_ids(api)
    for flag in ("1", "true"):
        answer = api.call("POST", f"/api/flops/projects?dry_run={flag}", json=sla(digits_repo))
        assert answer.status_code == 200, answer.get_json()
        body = answer.get_json()
        assert body["valid"] is True and body["commit"] == git(digits_repo, "rev-parse", "HEAD")
        assert body["repo_url"] == str(digits_repo) and body["backend"] == "local"
    assert project_ids(api) == before
    assert dry_run_leftovers(api) == []
    assert api.call("POST", "/api/flops/projects?dry_run=maybe", json=sla(digits_repo)).status_code == 400
    # The SLA's own checks come first: no builder runs for an SLA that would be refused.
    no_data = sla(digits_repo)
    no_data["training_configuration"]["data_tags"] = ["mnist"]
    assert api.call("POST", "/api/flops/projects?dry_run=1", json=no_data).status_code == 422


def test_dry_run_refuses_a_bad_repository_with_the_whole_reason(api: Api, digits_repo: Path, tmp_path: Path) -> None:
    before = project_ids(api)
    unreachable = api.call("POST", "/api/flops/projects?dry_run=1", json=sla(digits_repo, ml_repo_url=UNRESOLVABLE_URL))
    assert unreachable.status_code == 422, unreachable.get_json()
    body = unreachable.get_json()
    assert "Could not resolve host" in body["message"], body  # git's own reason, not a summary
    assert body["details"]["stage"] and body["details"]["field"] == "ml_repo_url"
    no_contract = make_git_repo(EXAMPLES / "digits-sklearn", tmp_path / "no-contract")
    (no_contract / "model_manager.py").unlink()
    git(no_contract, "commit", "-qam", "drop the model manager")
    contract = api.call("POST", "/api/flops/projects?dry_run=1", json=sla(no_contract))
    assert contract.status_code == 422 and "model_manager.py" in contract.get_json()["message"]
    bad_ref = api.call("POST", "/api/flops/projects?dry_run=1", json=sla(digits_repo, ml_repo_ref="no-such-branch"))
    assert bad_ref.status_code == 422 and "no-such-branch" in bad_ref.get_json()["message"]
    assert project_ids(api) == before
    assert dry_run_leftovers(api) == []


def builder_processes() -> set[int]:
    found = set()
    for process in psutil.process_iter(["pid", "cmdline"]):
        try:
            if "image_builder.main" in " ".join(process.info["cmdline"] or []):
                found.add(process.info["pid"])
        except psutil.Error:
            continue
    return found


def test_dry_run_stops_a_check_that_takes_too_long(
    api: Api, digits_repo: Path, silent_git_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api.settings, "dry_run_timeout_s", 3.0)
    before = (builder_processes(), project_ids(api))
    started = time.monotonic()
    answer = api.call("POST", "/api/flops/projects?dry_run=1", json=sla(digits_repo, ml_repo_url=silent_git_server))
    elapsed = time.monotonic() - started
    assert answer.status_code == 504, answer.get_json()
    body = answer.get_json()
    assert "longer than 3 s" in body["message"] and silent_git_server in body["message"]
    assert body["details"] == {"stage": "timeout", "field": "ml_repo_url", "timeout_s": 3.0}
    assert 3.0 <= elapsed < 10.0
    assert (builder_processes(), project_ids(api)) == before  # the builder and its git were killed
    assert dry_run_leftovers(api) == []


def test_mocks_assign_clusters_for_the_admin_only(api: Api) -> None:
    config = {"dataset_name": "iris", "number_of_partitions": 4, "data_tag": "hfl", "number_of_clusters": 2}
    made = api.call("POST", "/api/flops/mocks", json={"mock_data_configuration": config})
    assert made.status_code == 200, made.get_json()
    assert clusters_of(Path(api.settings.nodes_dir))["cluster-2"] == ["node-3", "node-4"]
    five = {**config, "number_of_clusters": 5}
    too_many = api.call("POST", "/api/flops/mocks", json={"mock_data_configuration": five})
    assert too_many.status_code == 422 and "every cluster needs a node" in str(too_many.get_json())
    carol = api.call("POST", "/api/flops/tokens", json={"customer_id": "carol"}).get_json()["token"]
    body = {"customerID": "carol", "mock_data_configuration": {**config, "data_tag": "carol-hfl"}}
    refused = api.call("POST", "/api/flops/mocks", token=carol, json=body)
    assert refused.status_code == 403 and refused.get_json()["details"]["field"].endswith("number_of_clusters")
