"""MLflow as its users expect: what the aggregator's tracker writes, and what MLflow 3's UI shows of it.

The tracker is driven exactly as the aggregator drives it (open, one `log_round` per round,
`log_model`, `finish`) against a real MLflow server (the observatory, behind its basic auth;
the tracker acts as its admin here). The UI check opens the experiment link FLOps hands out in
Debian's headless Chromium (selenium with the system chromedriver: nothing is downloaded) with
a fresh profile, i.e. a browser in MLflow's default GenAI mode, first without credentials
(refused), then as a read-only user granted the experiment alone (the project's owner), and
reads the DOM.
"""

import base64
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import psutil
import pytest
import requests
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from aggregator.tracking import (
    EXPERIMENT_KIND_TAG,
    MODEL_TRAINING_KIND,
    PROJECT_TAG,
    TRAINING_RUN_TAG,
    MlflowTracker,
)
from flops.tracking_auth import CREDENTIALS_FILE_ENV, TrackingAdmin, TrackingCredentials, new_credentials
from flops.tracking_server import experiment_url
from flops.training import RoundReport, TrainingSpec
from observatory.main import server_env
from tests.browser import CHROMEDRIVER, CHROMIUM, NO_BROWSER, chromium, wait_for

pytestmark = pytest.mark.slow


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def track_training(
    tracking_uri: str, spec: TrainingSpec, log_model: bool = True
) -> tuple[MlflowTracker, list[RoundReport]]:
    """A tiny real training (logistic regression on growing slices of digits), tracked as the aggregator does."""
    features, labels = load_digits(return_X_y=True)
    features = features / 16.0
    tracker = MlflowTracker(spec, tracking_uri)
    model = LogisticRegression(max_iter=300)
    reports = []
    for server_round in range(1, spec.rounds + 1):
        seen = 150 * server_round
        model.fit(features[:seen], labels[:seen])
        report = RoundReport(
            round=server_round,
            loss=float(log_loss(labels[1400:], model.predict_proba(features[1400:]), labels=model.classes_)),
            accuracy=float(model.score(features[1400:], labels[1400:])),
            train_examples=seen,
            eval_examples=len(labels) - 1400,
            learners=2,
            duration_s=0.1,
        )
        report.run_id = tracker.log_round(report)
        reports.append(report)
    if log_model:
        best = max(reports, key=lambda report: report.accuracy or 0.0)
        tracker.log_model(model, None, best, [], [model.coef_, model.intercept_])
    tracker.finish(True)
    return tracker, reports


def test_experiment_is_the_project_name_and_a_model_training_experiment(mlflow_server: str) -> None:
    name = unique("digits-rows")
    spec = TrainingSpec(project_id=unique("p"), model_name=name, rounds=3)
    tracker, reports = track_training(mlflow_server, spec)
    client = MlflowClient(mlflow_server)

    experiment = client.get_experiment(tracker.experiment_id)
    assert experiment.name == name
    assert experiment.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND == "custom_model_development"
    assert experiment.tags[PROJECT_TAG] == spec.project_id
    assert "mlflow.note.content" in experiment.tags  # the experiment's description in the UI

    runs = client.search_runs([tracker.experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    assert set(by_name) == {f"training-{spec.project_id}", "round-1", "round-2", "round-3"}
    for run in runs:
        assert run.data.tags[PROJECT_TAG] == spec.project_id
        assert "mlflow.parentRunId" not in run.data.tags, "a nested run is collapsed under its parent in the UI"
    for report in reports:
        round_run = by_name[f"round-{report.round}"]
        assert round_run.info.run_id == report.run_id
        assert round_run.data.tags[TRAINING_RUN_TAG] == tracker.parent_run_id
        history = client.get_metric_history(round_run.info.run_id, "accuracy")
        assert [(point.step, point.value) for point in history] == [(report.round, report.accuracy)]
    for metric in ("accuracy", "loss"):
        curve = client.get_metric_history(tracker.parent_run_id, metric)
        assert sorted((point.step, point.value) for point in curve) == [
            (report.round, getattr(report, metric)) for report in reports
        ]
    assert reports[-1].accuracy is not None and reports[-1].accuracy > 0.8


def test_projects_with_one_name_share_its_experiment(mlflow_server: str) -> None:
    name = unique("shared-name")
    first = TrainingSpec(project_id=unique("first"), model_name=name, rounds=1)
    second = TrainingSpec(project_id=unique("second"), model_name=name, rounds=1)
    tracker_1 = MlflowTracker(first, mlflow_server)
    tracker_1.finish(True)
    tracker_2 = MlflowTracker(second, mlflow_server)
    tracker_2.finish(True)
    client = MlflowClient(mlflow_server)

    assert tracker_1.experiment_id == tracker_2.experiment_id
    experiment = client.get_experiment(tracker_2.experiment_id)
    assert experiment.tags[PROJECT_TAG] == second.project_id  # the latest project trained in it
    for spec in (first, second):
        [run] = client.search_runs([experiment.experiment_id], f"tags.`{PROJECT_TAG}` = '{spec.project_id}'")
        assert run.info.run_name == f"training-{spec.project_id}"


def test_experiment_name_override_untagged_and_deleted_experiments(mlflow_server: str) -> None:
    client = MlflowClient(mlflow_server)
    chosen = unique("chosen")
    spec = TrainingSpec(project_id=unique("p"), model_name="model-x", experiment_name=chosen, rounds=1)
    # An experiment of that name made by hand (no kind yet) is reused and tagged.
    existing = client.create_experiment(chosen)
    tracker = MlflowTracker(spec, mlflow_server)
    tracker.finish(True)
    assert tracker.experiment_id == existing
    assert client.get_experiment(existing).tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND

    # A deleted experiment is left deleted: the training goes to `<name> (<project id>)`.
    client.delete_experiment(existing)
    again = TrainingSpec(project_id=unique("p"), model_name="model-x", experiment_name=chosen, rounds=1)
    tracker = MlflowTracker(again, mlflow_server)
    tracker.finish(True)
    moved = client.get_experiment(tracker.experiment_id)
    assert moved.name == f"{chosen} ({again.project_id})" and moved.lifecycle_stage == "active"
    assert moved.tags[EXPERIMENT_KIND_TAG] == MODEL_TRAINING_KIND


def test_observatory_starts_no_mlflow_job_runners(mlflow_server: str) -> None:
    """MLflow 3's GenAI job runners (8 processes, ~1.5 GB) stay off unless the environment asks for them."""
    assert server_env({})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    assert server_env({"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true"})["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "true"
    port = str(urlparse(mlflow_server).port)
    servers = []
    for process in psutil.process_iter(["cmdline"]):
        command = process.info["cmdline"] or []
        if any(part.endswith("mlflow") for part in command) and "server" in command and port in command:
            servers.append(process)
    assert servers, f"no `mlflow server` process for port {port}"
    helpers = []
    for server in servers:
        for child in server.children(recursive=True):
            try:
                helpers.append(" ".join(child.cmdline()))
            except psutil.NoSuchProcess:
                continue
    assert helpers and all("huey" not in helper and "_job_runner" not in helper for helper in helpers), helpers


def log_in(driver: Any, credentials: TrackingCredentials) -> None:
    """Every request of this browser carries `credentials` (HTTP basic auth, as a login prompt would)."""
    token = base64.b64encode(f"{credentials.username}:{credentials.password}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def owner_login(tracking_uri: str, experiment_id: str) -> TrackingCredentials:
    """A read-only MLflow user holding READ on the experiment only, as the manager makes for a project's owner."""
    admin = TrackingAdmin(tracking_uri, Path(os.environ[CREDENTIALS_FILE_ENV]))
    owner = new_credentials(unique("customer-ui"))
    admin.create_user(owner)
    admin.grant(owner.username, "experiment", experiment_id, "READ")
    return owner


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path / "chromium-profile") as driver:  # fresh profile: MLflow's defaults
        yield driver


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason=NO_BROWSER)
@pytest.mark.timeout(240)  # the MLflow server may start in this test's setup; the UI waits are bounded
def test_ui_opens_on_the_runs_table_with_round_rows_and_round_charts(
    mlflow_server: str, browser: Any, tmp_path: Path
) -> None:
    spec = TrainingSpec(project_id=unique("ui"), model_name=unique("digits-ui"), rounds=3)
    tracker, reports = track_training(mlflow_server, spec, log_model=False)  # the model: the test above
    started = time.monotonic()
    run_ids = {f"round-{report.round}": report.run_id for report in reports}
    run_ids[f"training-{spec.project_id}"] = tracker.parent_run_id

    # Without credentials the UI's page itself is refused (a browser shows its login prompt).
    anonymous = requests.get(experiment_url(mlflow_server, tracker.experiment_id), timeout=10)
    assert anonymous.status_code == 401 and "Basic" in anonymous.headers.get("WWW-Authenticate", "")
    log_in(browser, owner_login(mlflow_server, tracker.experiment_id))  # the project's owner: READ only
    browser.get(experiment_url(mlflow_server, tracker.experiment_id))

    def rows(driver: Any) -> dict[str, str] | None:
        links = driver.find_elements("css selector", "[role='row'] a[href*='/runs/']")
        shown = {link.text.strip(): link.get_attribute("href").split("?")[0].rsplit("/", 1)[-1] for link in links}
        return shown if set(run_ids) <= set(shown) else None

    shown = wait_for(browser, rows, "the runs table with round-1..round-3", tmp_path / "runs-timeout.png")
    browser.save_screenshot(str(tmp_path / "runs-table.png"))
    assert {name: shown[name] for name in run_ids} == run_ids
    route = browser.current_url.split("#", 1)[1]
    assert route.startswith(f"/experiments/{tracker.experiment_id}/runs"), route
    page = browser.find_element("tag name", "body").text
    assert "Detect Issues" not in page and "/overview" not in route, "the GenAI overview, not the runs"
    assert (tmp_path / "runs-table.png").stat().st_size > 10_000

    browser.get(experiment_url(mlflow_server, tracker.experiment_id) + "&compareRunsMode=CHART")

    def round_curves(driver: Any) -> dict[str, int] | None:
        """Per metric chart: the most points one run's trace has (the training run's curve)."""
        curves = {}
        for card in driver.find_elements("css selector", "[data-testid='experiment-view-compare-runs-card']"):
            title = card.text.strip().split("\n", 1)[0]
            traces = card.find_elements("css selector", ".js-plotly-plot g.trace")
            curves[title] = max((len(trace.find_elements("css selector", "path.point")) for trace in traces), default=0)
        return curves if curves.get("accuracy") == curves.get("loss") == len(reports) else None

    curves = wait_for(browser, round_curves, "accuracy and loss charted over 3 rounds", tmp_path / "charts-timeout.png")
    browser.save_screenshot(str(tmp_path / "charts.png"))
    assert curves["accuracy"] == curves["loss"] == 3

    browser.get(tracker.run_url())  # the run link FLOps prints: the training run's page, its parameters
    wait_for(
        browser,
        lambda driver: f"training-{spec.project_id}" in driver.page_source and "FedAvg" in driver.page_source,
        "the training run's page with its parameters",
        tmp_path / "run-timeout.png",
    )
    assert "/overview" not in browser.current_url.split("#", 1)[1]
    print(f"UI checks took {time.monotonic() - started:.1f} s")
