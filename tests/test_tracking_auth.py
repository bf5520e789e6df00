"""MLflow behind authentication, written as the attacks: a real observatory (MLflow's basic-auth app).

A stranger on the host, a project's aggregator (whose user code can read its identity), and
another customer each try to read or write what is not theirs; the tracker is driven through
a tracking server that goes away and comes back (or does not). The manager-level end-to-end
checks (a real training while MLflow is killed) are in tests/test_tracking_outage.py.
"""

import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from aggregator.tracking import MlflowTracker, TrackingUnavailableError
from flops.mqtt import MqttSettings
from flops.sla import ProjectSLA
from flops.tracking_auth import (
    CREDENTIALS_FILE_ENV,
    MLFLOW_PASSWORD_ENV,
    MLFLOW_USERNAME_ENV,
    TrackingAdmin,
    TrackingCredentials,
    read_credentials,
)
from flops.training import RoundReport, TrainingSpec
from flops_manager.models import Project, registry_name
from flops_manager.settings import ManagerSettings
from flops_manager.stages.errors import StageError
from flops_manager.tracking_identities import (
    customer_login,
    prepare_training,
    project_credentials_file,
    retire_project,
)
from tests.observatory_process import Observatory

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def observatory(module_tmp: Callable[[str], Path]) -> Iterator[Observatory]:
    instance = Observatory(module_tmp("auth-observatory"))
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def settings(observatory: Observatory, module_tmp: Callable[[str], Path]) -> ManagerSettings:
    home = module_tmp("manager-home")
    return ManagerSettings(
        home=home,
        mqtt=MqttSettings(host="127.0.0.1", port=1),
        tracking_uri=observatory.uri,
        tracking_credentials_file=observatory.admin_file,
        nodes_dir=home / "nodes",
    )


def project(customer: str, name: str, project_id: str) -> Project:
    document = {
        "customerID": customer, "ml_repo_url": f"https://git.example/{customer}/{name}.git", "project_name": name,
        "ml_model_flavor": "sklearn",
        "training_configuration": {"data_tags": ["digits"], "training_rounds": 1},
    }  # fmt: skip
    return Project(project_id=project_id, customer_id=customer, sla=ProjectSLA.model_validate(document))


def deployed(settings: ManagerSettings, customer: str, name: str, project_id: str) -> tuple[TrainingSpec, Path]:
    """What deploy does for a project: its spec with the experiment named, and its identity's file."""
    record = project(customer, name, project_id)
    spec = TrainingSpec(project_id=project_id, model_name=registry_name(customer, record.sla), rounds=1)
    run_dir = settings.home / "projects" / project_id
    tracking = prepare_training(settings, record, spec, run_dir, files=True)
    assert tracking.env[CREDENTIALS_FILE_ENV] == str(project_credentials_file(run_dir))
    return tracking.spec, project_credentials_file(run_dir)


class As:
    """REST calls to the tracking server as one identity (or none)."""

    def __init__(self, uri: str, credentials: TrackingCredentials | None) -> None:
        self.uri = uri
        self.auth = (credentials.username, credentials.password) if credentials else None

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(self.uri + path, params=params, auth=self.auth, timeout=15)

    def post(self, path: str, body: dict[str, Any]) -> requests.Response:
        return requests.post(self.uri + path, json=body, auth=self.auth, timeout=15)


@pytest.fixture
def as_identity(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Make this process's MLflow client act as the identity in a credentials file (restored after)."""

    def use(credentials_file: Path) -> None:
        credentials = read_credentials(credentials_file)
        monkeypatch.setenv(CREDENTIALS_FILE_ENV, str(credentials_file))
        monkeypatch.setenv(MLFLOW_USERNAME_ENV, credentials.username)
        monkeypatch.setenv(MLFLOW_PASSWORD_ENV, credentials.password)
        for name in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES"):
            monkeypatch.setenv(name, os.environ.get(name, "10" if "TIMEOUT" in name else "0"))

    return use


def test_without_credentials_everything_answers_401(observatory: Observatory) -> None:
    stranger = As(observatory.uri, None)
    for path in (
        "/api/2.0/mlflow/experiments/search?max_results=10",
        "/api/2.0/mlflow/registered-models/search",
        "/api/2.0/mlflow/users/list",
        "/ajax-api/2.0/mlflow/experiments/search?max_results=10",
        "/",
    ):
        assert stranger.get(path).status_code == 401, path
    assert stranger.post("/api/2.0/mlflow/experiments/create", {"name": "mine"}).status_code == 401
    assert stranger.post("/api/2.0/mlflow/users/create", {"username": "me", "password": "x" * 16}).status_code == 401
    admin = read_credentials(observatory.admin_file)
    guessed = As(observatory.uri, TrackingCredentials(username="admin", password="password1234"))
    wrong = As(observatory.uri, TrackingCredentials(username=admin.username, password="not-the-password"))
    for caller in (guessed, wrong):
        assert caller.get("/api/2.0/mlflow/experiments/search", max_results=10).status_code == 401
    assert As(observatory.uri, admin).get("/api/2.0/mlflow/experiments/search", max_results=10).status_code == 200
    assert requests.get(observatory.uri + "/health", timeout=5).status_code == 200  # liveness stays open


def test_the_admin_password_is_random_private_and_never_on_a_command_line(observatory: Observatory) -> None:
    home = observatory.home
    admin = read_credentials(observatory.admin_file)
    assert len(admin.password) >= 24
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    for name in ("admin-credentials.json", "basic_auth.ini", "flask-secret-key"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600, name
    assert admin.password not in (home / "basic_auth.ini").read_text()
    assert "NO_PERMISSIONS" in (home / "basic_auth.ini").read_text()
    assert admin.password not in observatory.log()
    commands = [" ".join(p.cmdline()) for p in psutil.Process(observatory.process.pid).children(recursive=True)]
    assert commands and all(admin.password not in command for command in commands)
    # A second observatory home gets another password: nothing is a default.
    other = Observatory(home.parent / "second-observatory")
    try:
        assert read_credentials(other.admin_file).password != admin.password
    finally:
        other.stop()


def test_a_project_identity_reaches_its_experiment_and_model_only(
    observatory: Observatory, settings: ManagerSettings
) -> None:
    mine, mine_file = deployed(settings, "acme", "digits", "p-mine")
    other, _ = deployed(settings, "acme", "churn", "p-other")  # the same customer's other project
    admin = TrackingAdmin(observatory.uri, observatory.admin_file)
    identity = read_credentials(mine_file)
    assert stat.S_IMODE(mine_file.stat().st_mode) == 0o600
    me = As(observatory.uri, identity)
    mine_experiment = admin.experiment(mine.experiment_name or "")
    other_experiment = admin.experiment(other.experiment_name or "")
    assert mine_experiment and other_experiment and mine.experiment_name == "acme.digits"

    assert me.get("/api/2.0/mlflow/experiments/get", experiment_id=mine_experiment["experiment_id"]).ok
    assert me.get("/api/2.0/mlflow/registered-models/get", name="acme.digits").ok
    run = me.post("/api/2.0/mlflow/runs/create", {"experiment_id": mine_experiment["experiment_id"]})
    assert run.status_code == 200, run.text

    assert me.get("/api/2.0/mlflow/experiments/get", experiment_id=other_experiment["experiment_id"]).status_code == 403
    assert me.get("/api/2.0/mlflow/registered-models/get", name="acme.churn").status_code == 403
    listed = me.get("/api/2.0/mlflow/experiments/search", max_results=100).json().get("experiments", [])
    assert {e["name"] for e in listed} == {"acme.digits"}
    assert (
        me.post("/api/2.0/mlflow/runs/create", {"experiment_id": other_experiment["experiment_id"]}).status_code == 403
    )
    # It cannot make itself room either: no new experiments or models, no users, no grants.
    assert me.post("/api/2.0/mlflow/experiments/create", {"name": "acme.squat"}).status_code == 403
    assert me.post("/api/2.0/mlflow/registered-models/create", {"name": "globex.digits"}).status_code == 403
    assert me.get("/api/2.0/mlflow/users/list").status_code == 403
    grant = {"username": identity.username, "resource_type": "experiment", "resource_id": "*", "permission": "READ"}
    assert me.post("/api/3.0/mlflow/users/permissions/grant", grant).status_code == 403
    # EDIT, not MANAGE: it cannot delete its experiment or share it with someone else.
    delete = me.post("/api/2.0/mlflow/experiments/delete", {"experiment_id": mine_experiment["experiment_id"]})
    assert delete.status_code == 403


def test_another_customer_cannot_read_this_customers_runs_or_models(
    observatory: Observatory, settings: ManagerSettings, as_identity: Any
) -> None:
    spec, identity_file = deployed(settings, "acme", "fraud", "p-acme-fraud")
    as_identity(identity_file)
    tracker, _ = track(spec, observatory.uri, rounds=2)
    owner = TrackingCredentials.model_validate(customer_login(settings, "acme"))
    stranger = TrackingCredentials.model_validate(customer_login(settings, "globex"))
    assert owner.username == "customer-acme" and stranger.username == "customer-globex"
    run_id, experiment_id = tracker.parent_run_id, tracker.experiment_id

    acme = As(observatory.uri, owner)  # the project's owner opens its status links: read-only
    assert acme.get("/api/2.0/mlflow/runs/get", run_id=run_id).status_code == 200
    assert acme.get("/api/2.0/mlflow/model-versions/get", name="acme.fraud", version="1").status_code == 200
    metric = {"run_id": run_id, "key": "accuracy", "value": 1.0, "timestamp": 0, "step": 99}
    assert acme.post("/api/2.0/mlflow/runs/log-metric", metric).status_code == 403

    globex = As(observatory.uri, stranger)
    assert globex.get("/api/2.0/mlflow/runs/get", run_id=run_id).status_code in (403, 404)
    assert globex.get("/api/2.0/mlflow/experiments/get", experiment_id=experiment_id).status_code in (403, 404)
    assert globex.get("/api/2.0/mlflow/registered-models/get", name="acme.fraud").status_code in (403, 404)
    assert globex.get("/api/2.0/mlflow/model-versions/get", name="acme.fraud", version="1").status_code in (403, 404)
    artifacts = globex.get("/api/2.0/mlflow/artifacts/list", run_id=run_id)
    assert artifacts.status_code in (403, 404)
    download = globex.get(f"/get-artifact?path=model/MLmodel&run_uuid={run_id}")
    assert download.status_code in (401, 403, 404)
    found = globex.post("/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]}).json()
    assert not found.get("runs")
    models = globex.get("/api/2.0/mlflow/registered-models/search").json()
    assert not models.get("registered_models")
    # The customer's password is kept for it, and the same one is handed out again.
    assert TrackingCredentials.model_validate(customer_login(settings, "acme")) == owner


def test_two_customers_with_one_model_name_get_two_registered_models(
    observatory: Observatory, settings: ManagerSettings, as_identity: Any
) -> None:
    admin = TrackingAdmin(observatory.uri, observatory.admin_file)
    versions = {}
    for customer in ("initech", "umbrella"):
        spec, identity_file = deployed(settings, customer, "digits", f"p-{customer}")
        as_identity(identity_file)
        _, logged = track(spec, observatory.uri, rounds=1)
        versions[customer] = (logged.registered_name, logged.registered_version)
    assert versions == {"initech": ("initech.digits", "1"), "umbrella": ("umbrella.digits", "1")}
    assert admin.registered_model("digits") is None
    # Dots in customer IDs cannot make two customers' names meet: the name stays the first's.
    deployed(settings, "acme.x", "digits", "p-dotted")
    with pytest.raises(StageError, match="is taken"):
        deployed(settings, "acme", "x.digits", "p-collides")


def test_a_project_ending_without_a_model_loses_its_identity(
    observatory: Observatory, settings: ManagerSettings
) -> None:
    _, identity_file = deployed(settings, "acme", "retired", "p-retired")
    identity = read_credentials(identity_file)
    assert As(observatory.uri, identity).get("/api/2.0/mlflow/experiments/search", max_results=1).status_code == 200
    retire_project(settings, project("acme", "retired", "p-retired"), settings.home / "projects" / "p-retired")
    assert not identity_file.exists()
    assert not TrackingAdmin(observatory.uri, observatory.admin_file).user_exists(identity.username)
    assert As(observatory.uri, identity).get("/api/2.0/mlflow/experiments/search", max_results=1).status_code == 401


def test_rounds_kept_while_the_server_is_away_are_tracked_once_when_it_returns(
    observatory: Observatory, settings: ManagerSettings, as_identity: Any
) -> None:
    spec, identity_file = deployed(settings, "acme", "outage", "p-outage")
    as_identity(identity_file)
    model, reports = digits_rounds(3)
    tracker = MlflowTracker(spec, observatory.uri, outage_limit_s=90)
    assert tracker.log_round(reports[0])
    observatory.kill()
    away = time.monotonic()
    assert tracker.log_round(reports[1]) is None and tracker.log_round(reports[2]) is None
    assert tracker.pending_rounds == [2, 3] and time.monotonic() - away < 15  # training went on
    observatory.start()
    tracker.log_model(model, None, reports[-1], [], [model.coef_, model.intercept_])
    tracker.finish(True)
    assert tracker.pending_rounds == [] and all(report.run_id for report in reports)

    admin = TrackingAdmin(observatory.uri, observatory.admin_file)
    runs = admin._call(
        "POST", "/api/2.0/mlflow/runs/search", json={"experiment_ids": [tracker.experiment_id], "max_results": 100}
    ).json()["runs"]
    ours = [r for r in runs if {"key": "flops.project_id", "value": "p-outage"} in r["data"]["tags"]]
    names = sorted(r["info"]["run_name"] for r in ours)
    assert names == ["round-1", "round-2", "round-3", "training-p-outage"]
    history = admin._call(
        "GET", "/api/2.0/mlflow/metrics/get-history", params={"run_id": tracker.parent_run_id, "metric_key": "accuracy"}
    ).json()["metrics"]
    assert sorted(point["step"] for point in history) == [1, 2, 3]


def test_a_server_away_too_long_fails_the_training_with_the_reason_within_the_limit(
    observatory: Observatory, settings: ManagerSettings, as_identity: Any
) -> None:
    spec, identity_file = deployed(settings, "acme", "gone", "p-gone")
    as_identity(identity_file)
    model, reports = digits_rounds(2)
    tracker = MlflowTracker(spec, observatory.uri, outage_limit_s=8)
    tracker.log_round(reports[0])
    observatory.kill()
    try:
        started = time.monotonic()
        assert tracker.log_round(reports[1]) is None
        with pytest.raises(TrackingUnavailableError, match=rf"tracking server at {observatory.uri} unreachable for"):
            tracker.log_model(model, None, reports[-1], [], [model.coef_, model.intercept_])
        waited = time.monotonic() - started
        assert 8 <= waited <= 8 + 15, waited  # the limit, plus at most one request's time-out
        finished = time.monotonic()
        tracker.finish(False, "gone")  # nothing more waits on the server
        assert time.monotonic() - finished < 5
    finally:
        observatory.start()


def test_a_round_outlasting_the_limit_is_stopped_by_the_watcher(
    observatory: Observatory, settings: ManagerSettings, as_identity: Any
) -> None:
    """No tracking call comes while a long round trains: the watcher notices and stops it in time."""
    spec, identity_file = deployed(settings, "acme", "long-round", "p-long-round")
    as_identity(identity_file)
    _, reports = digits_rounds(1)
    tracker = MlflowTracker(spec, observatory.uri, outage_limit_s=6, watch_interval_s=1)
    tracker.log_round(reports[0])  # this thread trains
    killed = time.monotonic()  # before: the server is gone (and the watcher may hear it) before kill() returns
    observatory.kill()
    try:
        with pytest.raises(TrackingUnavailableError, match="unreachable for"):
            while time.monotonic() - killed < 60:  # the next round, waiting as Flower's poll does
                time.sleep(0.5)
        assert 6 <= time.monotonic() - killed <= 6 + 12
        tracker.finish(False, "stopped")
    finally:
        observatory.start()


def digits_rounds(rounds: int) -> tuple[LogisticRegression, list[RoundReport]]:
    features, labels = load_digits(return_X_y=True)
    model = LogisticRegression(max_iter=200).fit(features[:300] / 16.0, labels[:300])
    accuracy = float(model.score(features[1400:] / 16.0, labels[1400:]))
    reports = [
        RoundReport(round=n, loss=1.0 / n, accuracy=accuracy, learners=2, duration_s=0.1) for n in range(1, rounds + 1)
    ]
    return model, reports


def track(spec: TrainingSpec, uri: str, rounds: int) -> tuple[MlflowTracker, Any]:
    model, reports = digits_rounds(rounds)
    tracker = MlflowTracker(spec, uri)
    for report in reports:
        tracker.log_round(report)
    logged = tracker.log_model(model, None, reports[-1], [], [model.coef_, model.intercept_])
    tracker.finish(True)
    return tracker, logged
