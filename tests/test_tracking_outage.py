"""The tracking server killed in the middle of a real training, end to end through the manager.

Real manager, broker, observatory (MLflow behind basic auth), builder, aggregator and 2
learners x 3 rounds of digits. The observatory is SIGKILLed as soon as the project trains:
started again within the outage limit, the project completes with every round tracked once;
left dead, it fails with the reason within a stated bound. Never stuck in `training`.
"""

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flops.tracking_auth import TrackingAdmin, read_credentials
from tests.conftest import EXAMPLES
from tests.manager_process import FINAL, Manager, make_git_repo, sla
from tests.observatory_process import Observatory

pytestmark = pytest.mark.slow

OUTAGE_LIMIT_S = 30.0
# The stated bound: the limit, plus the aggregator's watcher (a look every 5 s, one request's
# 10 s time-out, Flower's 3 s poll), the aggregator's exit and the manager's next look; with
# room for a loaded machine.
FAILURE_BOUND_S = OUTAGE_LIMIT_S + 45.0


@pytest.fixture(scope="module")
def world(module_tmp: Callable[[str], Path]) -> Iterator[tuple[Manager, Observatory]]:
    observatory = Observatory(module_tmp("outage-observatory"))
    home = module_tmp("outage-manager")
    extra = {
        "FLOPS_TRACKING_CREDENTIALS_FILE": str(observatory.admin_file),
        "FLOPS_TRACKING_OUTAGE_LIMIT": str(OUTAGE_LIMIT_S),
        # Nothing the test process holds may stand in for the identities the manager makes.
        "MLFLOW_TRACKING_USERNAME": "",
        "MLFLOW_TRACKING_PASSWORD": "",
    }
    manager = Manager(home, observatory.uri, extra_env=extra)
    try:
        manager.add_mock_nodes("Admin")
        yield manager, observatory
    finally:
        manager.stop()
        observatory.stop()


@pytest.fixture(scope="module")
def digits_repo(module_tmp: Callable[[str], Path]) -> Path:
    return make_git_repo(EXAMPLES / "digits-sklearn", module_tmp("repos") / "digits-sklearn")


def train_and_kill_mlflow(manager: Manager, observatory: Observatory, repo: Path) -> tuple[str, float]:
    """Submit 3 rounds and SIGKILL the observatory as soon as the project trains; (project id, kill time)."""
    answer = manager.call("POST", "/api/flops/projects", json=sla(repo, rounds=3))
    assert answer.status_code == 200, answer.text
    project_id = answer.json()["project_id"]
    project = manager.wait_for(project_id, ("training", *FINAL), timeout=1200)  # a first build is slow
    assert project["status"] == "training", (project["error"], manager.log())
    observatory.kill()
    return project_id, time.monotonic()


def tracked_runs(observatory: Observatory, project: dict[str, Any]) -> list[dict[str, Any]]:
    admin = TrackingAdmin(observatory.uri, observatory.admin_file)
    experiment = admin.experiment("Admin.digits-sklearn")
    assert experiment is not None
    body = {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000}
    runs = admin._call("POST", "/api/2.0/mlflow/runs/search", json=body).json().get("runs", [])
    tag = {"key": "flops.project_id", "value": project["project_id"]}
    return [run for run in runs if tag in run["data"]["tags"]]


@pytest.mark.timeout(2400)
def test_mlflow_back_within_the_limit_every_round_tracked_once(
    world: tuple[Manager, Observatory], digits_repo: Path
) -> None:
    manager, observatory = world
    project_id, killed = train_and_kill_mlflow(manager, observatory, digits_repo)
    time.sleep(8)
    observatory.start()
    restarted = time.time()
    project = manager.wait_for(project_id, FINAL, timeout=900)  # 3 rounds on a loaded machine
    assert project["status"] == "completed", (project["error"], manager.log())
    assert project["stages"]["training"]["ended_at"] > restarted, "the training ended before MLflow was back"
    print(f"completed {time.monotonic() - killed:.1f} s after MLflow was killed (down 8 s)")

    names = sorted(run["info"]["run_name"] for run in tracked_runs(observatory, project))
    assert names == ["round-1", "round-2", "round-3", f"training-{project_id}"]
    assert sorted(report["run_id"] for report in project["rounds"]) == sorted(
        run["info"]["run_id"] for run in tracked_runs(observatory, project) if run["info"]["run_name"] != names[-1]
    )
    assert project["model"]["name"] == "Admin.digits-sklearn" and project["model"]["version"]
    # The project's identity is its own and stays out of every log.
    identity = read_credentials(manager.home / "projects" / project_id / "tracking-credentials.json")
    assert identity.username == f"project-{project_id}"
    logs = manager.call("GET", f"/api/flops/projects/{project_id}/logs").text
    assert identity.password not in logs and identity.password not in manager.log()
    assert read_credentials(observatory.admin_file).password not in logs + manager.log()


@pytest.mark.timeout(1800)
def test_mlflow_gone_the_project_fails_with_the_reason_within_the_bound(
    world: tuple[Manager, Observatory], digits_repo: Path
) -> None:
    manager, observatory = world
    try:
        project_id, killed = train_and_kill_mlflow(manager, observatory, digits_repo)
        project = manager.wait_for(project_id, FINAL, timeout=FAILURE_BOUND_S + 30)
        took = time.monotonic() - killed
        assert project["status"] == "failed", (project["status"], manager.log())
        message = project["error"]["message"]
        assert f"tracking server at {observatory.uri} unreachable for" in message, message
        assert project["error"]["stage"] == "training"
        assert OUTAGE_LIMIT_S <= took <= FAILURE_BOUND_S, took
        print(f"failed {took:.1f} s after MLflow was killed (limit {OUTAGE_LIMIT_S:.0f} s): {message[:160]}")
    finally:
        observatory.start()
