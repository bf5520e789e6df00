"""The manager end to end over HTTP: real Mosquitto, MLflow, git repositories and FL processes."""

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from flops.net import http_ok, wait_until
from tests.conftest import EXAMPLES
from tests.manager_process import FINAL, Manager, make_git_repo, sla

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def manager(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    home = tmp_path_factory.mktemp("manager-home")
    instance = Manager(home, mlflow_server)
    try:
        instance.add_mock_nodes("Admin")
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_git_repo(EXAMPLES / "digits-sklearn", tmp_path_factory.mktemp("repos") / "digits-sklearn")


def test_project_completes_and_second_submit_reuses_the_build(manager: Manager, digits_repo: Path) -> None:
    submitted = time.monotonic()
    answer = manager.call(
        "POST", "/api/flops/projects/", json=sla(digits_repo, post_training_steps=["deploy_trained_model_image"])
    )
    assert answer.status_code == 201, answer.text
    project_id = answer.json()["project_id"]
    assert answer.json()["status_url"] == f"/api/flops/projects/{project_id}"
    project = manager.wait_for(project_id, FINAL)
    assert project["status"] == "completed", (project["error"], manager.log())
    assert [r["round"] for r in project["rounds"]] == [1, 2, 3]
    assert all(r["accuracy"] is not None and r["loss"] is not None for r in project["rounds"])
    assert project["rounds"][-1]["accuracy"] > 0.85
    for stage in ("submitted", "building", "deploying", "training", "post_training", "completed"):
        assert stage in project["stages"], project["stages"]
    assert project["stages"]["training"]["duration_s"] > 0
    assert project["tracking"]["run_url"].startswith(manager.env["FLOPS_TRACKING_URI"])
    assert project["model"]["registered_uri"].startswith("models:/digits-sklearn/")
    assert project["build"]["reused"] is False and len(project["build"]["commit"]) == 40
    assert "aggregator" in manager.call("GET", f"/api/flops/projects/{project_id}/logs").json()
    prediction = requests.post(project["inference_url"], json={"inputs": [[0.0] * 64, [0.5] * 64]}, timeout=30)
    assert prediction.status_code == 200, prediction.text
    assert len(prediction.json()["predictions"]) == 2
    print(f"first project: POST to completed {time.monotonic() - submitted:.1f} s")

    again = manager.call("POST", "/api/flops/projects", json=sla(digits_repo, rounds=1))
    second = manager.wait_for(again.json()["project_id"], FINAL)
    assert second["status"] == "completed", second["error"]
    assert second["build"]["reused"] is True and second["build"]["commit"] == project["build"]["commit"]
    events = manager.call("GET", f"/api/flops/projects/{second['project_id']}/events").json()
    assert any(e["component"] == "builder" and e["event"] == "succeeded" for e in events)
    assert manager.call("DELETE", f"/api/flops/projects/{project_id}").status_code == 200  # stops the server
    assert wait_until(lambda: not http_ok(project["inference_url"].replace("/invocations", "/ping")), 15)


def test_manager_restart_during_training_loses_nothing(manager: Manager, digits_repo: Path) -> None:
    project_id = manager.call("POST", "/api/flops/projects", json=sla(digits_repo, rounds=3)).json()["project_id"]
    manager.wait_for(project_id, ("training",))
    manager.kill()
    time.sleep(3)
    manager.start()
    project = manager.wait_for(project_id, FINAL)
    assert project["status"] == "completed", (project["error"], manager.log())
    assert [r["round"] for r in project["rounds"]] == [1, 2, 3]
    assert project["model"]["version"]


def session_members(session_ids: set[int]) -> set[int]:
    """Live processes in any of the given sessions (each local service is its own session)."""
    members = set()
    for pid in psutil.pids():
        try:
            if os.getsid(pid) in session_ids and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                members.add(pid)
        except (ProcessLookupError, PermissionError, psutil.NoSuchProcess):
            continue
    return members


def test_cancel_during_training_leaves_no_process(manager: Manager, digits_repo: Path) -> None:
    project_id = manager.call("POST", "/api/flops/projects", json=sla(digits_repo, rounds=20)).json()["project_id"]
    running = manager.wait_for(project_id, ("training",))
    sessions = {int(h["ref"]) for h in running["deployment"] if h["name"] != "builder"}
    assert {"aggregator", "learner-node-1", "learner-node-2"} <= set(running["components"])
    members = session_members(sessions)
    assert members, "the FL actors should be running"
    spawned = {c.pid for pid in members for c in psutil.Process(pid).children(recursive=True)} | members
    assert manager.call("DELETE", f"/api/flops/projects/{project_id}").status_code == 202
    project = manager.wait_for(project_id, FINAL, timeout=60)
    assert project["status"] == "cancelled"
    assert wait_until(lambda: not session_members(sessions), 20), session_members(sessions)
    assert wait_until(lambda: not [p for p in spawned if psutil.pid_exists(p)], 20)
    assert not any(h["active"] for h in project["deployment"])


def test_bad_requests_get_clear_4xx_and_deploy_nothing(manager: Manager, digits_repo: Path, tmp_path: Path) -> None:
    count = len(manager.call("GET", "/api/flops/projects").json())
    missing = manager.call("POST", "/api/flops/projects", json={"customerID": "Admin", "ml_model_flavor": "sklearn"})
    assert missing.status_code == 422 and missing.json()["details"][0]["field"] == "ml_repo_url"
    unknown = manager.call("POST", "/api/flops/projects", json=sla(digits_repo, ml_repo_branch="x"))
    assert unknown.status_code == 422 and "ml_repo_branch" in unknown.json()["message"]
    wrong = sla(digits_repo)
    wrong["training_configuration"]["training_rounds"] = "many"
    wrong_answer = manager.call("POST", "/api/flops/projects", json=wrong)
    assert wrong_answer.status_code == 422
    assert wrong_answer.json()["details"][0]["field"] == "training_configuration.training_rounds"
    impossible = sla(digits_repo)
    impossible["training_configuration"]["min_fit_clients"] = 5
    assert manager.call("POST", "/api/flops/projects", json=impossible).status_code == 422
    unreachable = manager.call("POST", "/api/flops/projects", json=sla(tmp_path / "nowhere.git"))
    assert unreachable.status_code == 422 and "cannot fetch" in unreachable.json()["message"]
    no_contract = make_git_repo(EXAMPLES / "digits-sklearn", tmp_path / "broken")
    (no_contract / "model_manager.py").unlink()
    subprocess.run(["git", "-C", str(no_contract), "-c", "user.name=t", "-c", "user.email=t@e.invalid",
                    "commit", "-qam", "drop"], check=True)  # fmt: skip
    contract = manager.call("POST", "/api/flops/projects", json=sla(no_contract))
    assert contract.status_code == 422 and "model_manager.py" in str(contract.json()["details"])
    no_data = sla(digits_repo)
    no_data["training_configuration"]["data_tags"] = ["mnist"]
    assert "mocks" in manager.call("POST", "/api/flops/projects", json=no_data).json()["message"]
    assert manager.call("POST", "/api/flops/projects", token=None, json=sla(digits_repo)).status_code == 401
    assert manager.call("POST", "/api/flops/projects", token="flops_forged", json=sla(digits_repo)).status_code == 401
    not_json = manager.call("POST", "/api/flops/projects", data=b"{not json")
    assert not_json.status_code in (400, 422) and "message" in not_json.json()
    assert len(manager.call("GET", "/api/flops/projects").json()) == count


def test_customers_see_only_their_own_projects(manager: Manager, digits_repo: Path) -> None:
    alice = manager.call("POST", "/api/flops/tokens", json={"customer_id": "alice"}).json()["token"]
    bob = manager.call("POST", "/api/flops/tokens", json={"customer_id": "bob"}).json()["token"]
    assert manager.call("POST", "/api/flops/tokens", token=bob, json={"customer_id": "eve"}).status_code == 403
    mine = manager.call("POST", "/api/flops/projects", token=alice, json=sla(digits_repo, rounds=1, customerID="alice"))
    assert mine.status_code == 201, mine.text
    project_id = mine.json()["project_id"]
    assert manager.call("GET", f"/api/flops/projects/{project_id}", token=bob).status_code == 404
    assert manager.call("DELETE", f"/api/flops/projects/{project_id}", token=bob).status_code == 404
    assert project_id not in [p["project_id"] for p in manager.call("GET", "/api/flops/projects", token=bob).json()]
    as_bob = manager.call("POST", "/api/flops/projects", token=bob, json=sla(digits_repo, customerID="alice"))
    assert as_bob.status_code == 403
    assert manager.wait_for(project_id, FINAL)["status"] == "completed"


def test_openapi_and_tracking(manager: Manager) -> None:
    document = manager.call("GET", "/api/openapi.json", token=None).json()
    assert "ProjectSLA" in document["components"]["schemas"]
    assert "/api/flops/projects" in document["paths"]
    tracking = manager.call("GET", "/api/flops/tracking").json()
    assert tracking["tracking_server_url"] == manager.env["FLOPS_TRACKING_URI"]
