"""A learner that dies while its project trains is started again by the manager, a bounded number of times.

The controller tests use the in-memory backend of tests/test_controller.py (the test says how
a service ends); one test uses a real broker for the restarted learner's new MQTT user; the
end-to-end test SIGKILLs a real learner's process group mid-training under a real manager
(2 learners, min_fit_clients 2) and the project still completes.
"""

import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from flops.broker import RunningBroker, launch_broker
from flops.net import free_port, wait_until
from flops.training import TrainingSummary
from flops_manager.models import ProjectStatus
from flops_manager.stages.restarts import MAX_LEARNER_RESTARTS, spec_path
from tests.broker_users import manager_settings
from tests.conftest import EXAMPLES
from tests.manager_process import FINAL, Manager, make_git_repo, sla
from tests.test_broker import HAVE_MOSQUITTO
from tests.test_controller import World, failure
from tests.test_event_trust import Attacker, credentials


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    """A controller over the in-memory backend, as in tests/test_controller.py."""
    made = World(tmp_path / "world")
    try:
        yield made
    finally:
        made.close()


def learners(world: World, name: str) -> list[str]:
    return [ref for ref, spec in world.backend.specs.items() if spec.name == name]


def kill(world: World, name: str) -> None:
    """The latest service called `name` dies of SIGKILL."""
    world.backend.finish(name, exit_code=-signal.SIGKILL)


def test_a_learner_that_dies_while_training_is_started_again_from_its_spec(world: World) -> None:
    project_id = world.to_training()
    [first] = learners(world, "learner-node-1")
    original = world.backend.specs[first]
    assert spec_path(world.settings.runs_dir, project_id, "learner-node-1").is_file()
    kill(world, "learner-node-1")
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.TRAINING
    [_, second] = learners(world, "learner-node-1")
    again = world.backend.specs[second]
    assert again.command == original.command and again.node == original.node and again.image == original.image
    assert again.env["FLOPS_PROJECT_ID"] == project_id
    assert "learner-node-1" in world.backend.undeployed  # what was left of it is removed first
    handles = [h for h in project.deployment if h.name == "learner-node-1"]
    assert [h.active for h in handles] == [False, True] and handles[1].ref == second
    notes = [e for e in project.events if e.component == "learner-node-1"]
    assert [e.event for e in notes] == ["restarted-1"] and "restarted (1 of at most 3)" in notes[0].message
    assert len(learners(world, "learner-node-2")) == 1  # the healthy one is left alone
    assert world.reconcile(project_id).status is ProjectStatus.TRAINING
    assert len(learners(world, "learner-node-1")) == 2  # a running replacement is not restarted again


def test_a_learner_that_keeps_dying_fails_the_project_with_its_log(world: World) -> None:
    project_id = world.to_training()
    for _ in range(MAX_LEARNER_RESTARTS):
        kill(world, "learner-node-1")
        assert world.reconcile(project_id).status is ProjectStatus.TRAINING
    kill(world, "learner-node-1")
    stage, message = failure(world.reconcile(project_id))
    assert stage == "training"
    assert "learner learner-node-1 stopped again" in message and f"after {MAX_LEARNER_RESTARTS} restarts" in message
    assert "last words of learner-node-1" in message  # the log tail says why
    assert len(learners(world, "learner-node-1")) == 1 + MAX_LEARNER_RESTARTS
    events = [e.event for e in world.project(project_id).events if e.component == "learner-node-1"]
    assert events == [f"restarted-{n}" for n in range(1, MAX_LEARNER_RESTARTS + 1)]


def test_learners_ending_with_the_training_are_not_restarted(world: World) -> None:
    project_id = world.to_training()
    state = world.settings.runs_dir / project_id / "aggregator"
    state.mkdir(parents=True, exist_ok=True)
    (state / "summary.json").write_text(TrainingSummary(status="completed", project_id=project_id).model_dump_json())
    kill(world, "learner-node-1")  # the SuperLink went away at the end: its learners stop
    world.reconcile(project_id)
    assert len(learners(world, "learner-node-1")) == 1


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[RunningBroker]:
    running = launch_broker(tmp_path / "broker", free_port(), "mosquitto")
    try:
        yield running
    finally:
        running.process.stop()


@pytest.mark.skipif(not HAVE_MOSQUITTO, reason="Mosquitto is not installed")
def test_a_restarted_learner_gets_a_new_mqtt_user_and_the_old_password_is_dead(
    world: World, broker: RunningBroker
) -> None:
    world.settings = world.settings.model_copy(update={"mqtt": manager_settings(broker)})
    world.controller = world.new_controller()  # a manager whose broker has users: one per actor
    try:
        project_id = world.to_training()
        [first] = learners(world, "learner-node-1")
        old = world.backend.specs[first].env
        assert old["FLOPS_MQTT_USERNAME"] == f"{project_id}.learner.node-1" and old["FLOPS_MQTT_PASSWORD"]
        kept = spec_path(world.settings.runs_dir, project_id, "learner-node-1").read_text(encoding="utf-8")
        assert old["FLOPS_MQTT_PASSWORD"] not in kept  # the spec kept for restarts holds no password
        kill(world, "learner-node-1")
        world.reconcile(project_id)
        new = world.backend.specs[learners(world, "learner-node-1")[-1]].env
        assert new["FLOPS_MQTT_USERNAME"] == old["FLOPS_MQTT_USERNAME"]
        assert new["FLOPS_MQTT_PASSWORD"] != old["FLOPS_MQTT_PASSWORD"]
        settings = manager_settings(broker).model_copy(
            update={"username": old["FLOPS_MQTT_USERNAME"], "client_id": old["FLOPS_MQTT_CLIENT_ID"]}
        )
        stale = Attacker(broker, settings, password=old["FLOPS_MQTT_PASSWORD"])
        fresh = Attacker(broker, settings, password=new["FLOPS_MQTT_PASSWORD"])
        try:
            assert not stale.accepted and fresh.accepted, (stale.reason, fresh.reason)
        finally:
            stale.close()
            fresh.close()
    finally:
        credentials(world.controller).close()


# ------------------------------------------------------------------------------ end to end
SLOW_FIT = """
    def fit_model(self, config: dict | None = None) -> int:
        print("flops-test: fitting", flush=True)  # the learner holds its round's message now
        time.sleep(4)
        return self._fit_model(config)
"""


def kill_everything_of(group: int) -> None:
    """SIGKILL a learner's group and every process below it, all at once, as a node that dies.

    Its sandbox's processes run in a session of their own (bwrap's --new-session): a SIGKILL of the
    group alone leaves its SuperNode running, until the manager stops it in good order.
    """
    below = psutil.Process(group).children(recursive=True)
    os.killpg(group, signal.SIGKILL)
    for process in below:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()


def slow_digits(target: Path) -> Path:
    """digits-sklearn whose local training says so in the learner's log and takes 4 s more."""
    source = target.parent / "slow-digits-source"
    shutil.copytree(EXAMPLES / "digits-sklearn", source, ignore=shutil.ignore_patterns(".flops", "__pycache__"))
    model = source / "model_manager.py"
    code = model.read_text(encoding="utf-8").replace("import warnings\n", "import time\nimport warnings\n", 1)
    code = code.replace("    def fit_model(self,", "    def _fit_model(self,", 1)
    model.write_text(code.replace("    def evaluate_model(", SLOW_FIT.lstrip("\n") + "\n    def evaluate_model(", 1))
    return make_git_repo(source, target)


@pytest.mark.slow
@pytest.mark.usefixtures("no_leftover_processes")
def test_a_killed_learner_is_restarted_and_the_project_completes(mlflow_server: str, tmp_path: Path) -> None:
    """SIGKILL one of 2 required learners' process group (its sandbox with it) while its ClientApp
    trains round 1: the manager starts it again, the new SuperNode takes its node over at once, the
    message the dead one had pulled is sent to it again, and every round completes with both learners."""
    manager = Manager(tmp_path / "home", mlflow_server)
    try:
        manager.add_mock_nodes("Admin")
        repo = slow_digits(tmp_path / "repos" / "digits-sklearn")
        answer = manager.call("POST", "/api/flops/projects", json=sla(repo, rounds=3, learner_wait_timeout=240))
        assert answer.status_code == 200, answer.text
        project_id = answer.json()["project_id"]
        running = manager.wait_for(project_id, ("training", *FINAL), timeout=900)  # the build: minutes when busy
        assert running["status"] == "training", (running["error"], manager.log())
        [victim] = [h for h in running["deployment"] if h["name"] == "learner-node-1" and h["active"]]

        def fitting() -> bool:
            logs = manager.call("GET", f"/api/flops/projects/{project_id}/logs?component=learner-node-1").json()
            return "flops-test: fitting" in logs.get("learner-node-1", "")

        assert wait_until(fitting, 300, 0.2), manager.log()
        killed_at = time.monotonic()
        kill_everything_of(int(victim["ref"]))
        project = manager.wait_for(project_id, FINAL, timeout=400)
        took = time.monotonic() - killed_at
        assert project["status"] == "completed", (project["error"], manager.log())
        assert [r["round"] for r in project["rounds"]] == [1, 2, 3]
        assert [r["learners"] for r in project["rounds"]] == [2, 2, 2], project["rounds"]
        handles = [h for h in project["deployment"] if h["name"] == "learner-node-1"]
        assert len(handles) == 2 and handles[1]["ref"] != victim["ref"]
        events = manager.call("GET", f"/api/flops/projects/{project_id}/events").json()
        assert [e["event"] for e in events if e["component"] == "learner-node-1"] == ["restarted-1"], events
        superlink = (manager.home / "projects" / project_id / "aggregator" / "superlink.log").read_text("utf-8")
        assert "taken over by the new instance; 1 unanswered message(s) dropped" in superlink
        print(f"learner killed while training -> project completed: {took:.0f} s")
    finally:
        manager.stop()
