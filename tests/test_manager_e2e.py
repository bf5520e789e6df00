"""The manager end to end over HTTP: real Mosquitto, MLflow, git repositories and FL processes.

Only what needs the running lifecycle is here; what the API refuses is in tests/test_api.py.
"""

import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import requests
from mlflow.tracking import MlflowClient

from flops.net import http_ok, wait_until
from tests.conftest import EXAMPLES, run_flops
from tests.manager_process import FINAL, Manager, git, make_git_repo, sla

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def manager(mlflow_server: str, module_tmp: Callable[[str], Path]) -> Iterator[Manager]:
    home = module_tmp("manager-home")
    instance = Manager(home, mlflow_server)
    try:
        instance.add_mock_nodes("Admin")
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def digits_repo(module_tmp: Callable[[str], Path]) -> Path:
    return make_git_repo(EXAMPLES / "digits-sklearn", module_tmp("repos") / "digits-sklearn")


def test_project_completes_and_second_submit_reuses_the_build(manager: Manager, digits_repo: Path) -> None:
    submitted = time.monotonic()
    answer = manager.call(
        "POST", "/api/flops/projects/", json=sla(digits_repo, post_training_steps=["deploy_trained_model_image"])
    )
    assert answer.status_code == 200, answer.text
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
    assert project["model"]["registered_uri"].startswith("models:/Admin.digits-sklearn/")  # <customerID>.<name>
    assert project["model"]["input"]["shape"] == [-1, 64]  # what the serving hint is shaped by
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
    # The same model again in the same month: the next calendar version, as a tag and a loadable alias.
    year, month, number = project["model"]["calendar_version"].split(".")
    now = time.gmtime()
    assert (int(year), int(month)) == (now.tm_year, now.tm_mon)
    assert second["model"]["calendar_version"] == f"{year}.{month}.{int(number) + 1}"
    client = MlflowClient(manager.env["FLOPS_TRACKING_URI"])
    name = second["model"]["name"]
    alias = second["model"]["calendar_uri"].rpartition("@")[2]
    assert alias == f"v{year}-{month}-{int(number) + 1}"
    assert client.get_model_version_by_alias(name, alias).version == second["model"]["version"]
    tagged = client.get_model_version(name, project["model"]["version"]).tags
    assert tagged["flops.calendar_version"] == project["model"]["calendar_version"]
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


def test_a_bad_repository_fails_the_project_at_building_with_the_whole_reason(manager: Manager, tmp_path: Path) -> None:
    """The API accepts at once (it never fetches); the builder's full reason reaches the project."""
    unresolvable = sla(tmp_path, rounds=1, ml_repo_url="https://flops-test-repository.invalid/user/model.git")
    answer = manager.call("POST", "/api/flops/projects", json=unresolvable)
    assert answer.status_code == 200, answer.text
    no_contract = make_git_repo(EXAMPLES / "digits-sklearn", tmp_path / "no-contract")
    (no_contract / "model_manager.py").unlink()
    git(no_contract, "commit", "-qam", "drop the model manager")
    contract = manager.call("POST", "/api/flops/projects", json=sla(no_contract, rounds=1))
    assert contract.status_code == 200, contract.text
    for submitted, reason in ((answer, "Could not resolve host"), (contract, "model_manager.py")):
        project = manager.wait_for(submitted.json()["project_id"], FINAL, timeout=120)
        assert project["status"] == "failed", project
        assert project["error"]["stage"] == "building", project["error"]
        assert reason in project["error"]["message"], project["error"]
        assert "aggregator" not in project["components"]


def test_cli_dry_run_checks_and_starts_nothing(manager: Manager, digits_repo: Path, tmp_path: Path) -> None:
    env = {"FLOPS_MANAGER_URL": manager.url, "FLOPS_TOKEN": manager.admin_token}
    count = len(manager.call("GET", "/api/flops/projects").json())
    good = tmp_path / "good.json"
    good.write_text(json.dumps(sla(digits_repo)), encoding="utf-8")
    valid = run_flops("submit", "--dry-run", str(good), env=env, timeout=120)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "valid" in valid.stdout and git(digits_repo, "rev-parse", "HEAD") in valid.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"ml_repo_url: {digits_repo}\nml_model_flavor: sklearn\nml_repo_ref: no-such-branch\n")
    refused = run_flops("submit", "--dry-run", str(bad), env=env, timeout=120)
    assert refused.returncode == 2 and "no-such-branch" in refused.stdout, refused.stdout + refused.stderr
    assert '"stage"' in refused.stdout
    assert len(manager.call("GET", "/api/flops/projects").json()) == count


# Pins of the example's conda.yaml that clash with the platform, directly or transitively.
FLOPS_STYLE_RELAXED = ("numpy==1.26.4", "scipy==1.11.4", "tqdm==4.65.0", "protobuf==3.20.3", "cffi==1.16.0")


def test_a_flops_style_repository_trains_unmodified(manager: Manager, tmp_path: Path) -> None:
    """set_format("numpy") + reshape, mlflow.autolog() in model_manager.py, a Python 3.10 conda.yaml."""
    repo = make_git_repo(EXAMPLES / "digits-flops-style", tmp_path / "digits-flops-style")
    answer = manager.call("POST", "/api/flops/projects", json=sla(repo, rounds=3))
    assert answer.status_code == 200, answer.text
    project = manager.wait_for(answer.json()["project_id"], FINAL, timeout=900)
    assert project["status"] == "completed", (project["error"], manager.log())
    assert [r["round"] for r in project["rounds"]] == [1, 2, 3]
    assert project["rounds"][-1]["accuracy"] > 0.8
    warnings = "\n".join(project["build"]["dependency_warnings"])
    for pin in FLOPS_STYLE_RELAXED:
        assert pin in warnings, warnings
    assert "mlflow==2.12.2 dropped" in warnings and "python=3.10.14 ignored" in warnings
    events = manager.call("GET", f"/api/flops/projects/{project['project_id']}/events").json()
    assert any(e["event"] == "dependencies" and "scipy==1.11.4" in e["message"] for e in events)
    # The learners' mlflow calls did nothing: no tracking files anywhere the project ran.
    strays = [p for p in manager.home.rglob("*") if p.name in ("mlruns", "mlflow.db")]
    assert strays == []
