"""The controller against an in-memory orchestrator and a real embedded store: every transition,
failures and cancels at each stage, duplicate and out-of-order events, restarts, retries.

Nothing here starts a process: the fake backend records what it was asked to deploy and the
test says how each service ends; the builder's result file is written by the test, and the
clock is moved by hand, so backoff needs no sleeping.
"""

import http.server
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pymongo.errors
import pytest
import requests

from flops.build import BuildFailure, BuildOutcome, BuildResult
from flops.events import (
    AggregatorFinished,
    AggregatorStarted,
    BuilderFailed,
    BuilderStarted,
    Component,
    Event,
    EventName,
    make_event,
)
from flops.mqtt import MqttSettings
from flops.sla import PostTrainingStep, ProjectSLA
from flops.training import RoundReport, TrainingSummary
from flops_manager.controller import Controller
from flops_manager.models import ProcessHandle, Project, ProjectStatus
from flops_manager.orchestration import (
    ENABLE_HINTS,
    Orchestrator,
    OrchestratorError,
    ServiceSpec,
    ServiceState,
    TransientOrchestratorError,
)
from flops_manager.orchestration.base import ServiceStatus
from flops_manager.settings import ManagerSettings
from flops_manager.stages import build
from flops_manager.stages.errors import is_transient, next_retry
from flops_manager.store import ProjectStore, open_store


class FakeOrchestrator(Orchestrator):
    """Records deploys and undeploys; the test sets how services end and which calls fail."""

    def __init__(self, name: str = "local") -> None:
        self.name = name
        self.specs: dict[str, ServiceSpec] = {}
        self.states: dict[str, ServiceState] = {}
        self.undeployed: list[str] = []
        self.released: list[str] = []
        self.errors: dict[str, list[Exception]] = {"deploy": [], "status": [], "undeploy": []}

    def _maybe_fail(self, call: str) -> None:
        if self.errors[call]:
            raise self.errors[call].pop(0)

    def deploy(self, spec: ServiceSpec) -> ProcessHandle:
        self._maybe_fail("deploy")
        ref = f"{spec.name}#{len(self.specs)}"
        self.specs[ref] = spec
        self.states[ref] = ServiceState(status=ServiceStatus.RUNNING)
        return ProcessHandle(name=spec.name, backend=self.name, ref=ref)

    def status(self, handle: ProcessHandle) -> ServiceState:
        self._maybe_fail("status")
        return self.states.get(handle.ref, ServiceState(status=ServiceStatus.GONE))

    def logs(self, handle: ProcessHandle, tail: int = 200) -> str:
        return f"last words of {handle.name}"

    def undeploy(self, handle: ProcessHandle) -> None:
        self._maybe_fail("undeploy")
        self.undeployed.append(handle.name)
        self.states[handle.ref] = ServiceState(status=ServiceStatus.GONE)

    def undeploy_project(self, project_id: str) -> bool:
        self.released.append(project_id)
        return True

    def deployed(self, name: str) -> list[ServiceSpec]:
        return [spec for spec in self.specs.values() if spec.name == name]

    def finish(self, name: str, exit_code: int = 0) -> None:
        """The latest service called `name` exits."""
        ref = [ref for ref, spec in self.specs.items() if spec.name == name][-1]
        status = ServiceStatus.EXITED if exit_code == 0 else ServiceStatus.FAILED
        self.states[ref] = ServiceState(status=status, exit_code=exit_code)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# The store's SQLite files go to memory where the machine has a tmpfs: every commit syncs, and
# these tests make hundreds. The store under test is the same embedded store either way.
STORE_ROOT = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None


class World:
    """A controller over a fake backend and a store on disk; restartable like a manager."""

    def __init__(self, tmp_path: Path, nodes: int = 2, **settings: Any) -> None:
        self.tmp_path = tmp_path
        self.store_dir = Path(tempfile.mkdtemp(prefix="flops-test-store-", dir=STORE_ROOT)) / "db"
        self.backend = FakeOrchestrator()
        self.clock = Clock()
        self.settings = ManagerSettings(
            home=tmp_path / "home", mqtt=MqttSettings(host="127.0.0.1"), tracking_uri="http://127.0.0.1:1",
            nodes_dir=tmp_path / "nodes", **settings,
        )  # fmt: skip
        for index in range(1, nodes + 1):
            tag = tmp_path / "nodes" / f"node-{index}" / "digits"
            tag.mkdir(parents=True)
            (tag / "part-0.parquet").write_bytes(b"")
        self.store: ProjectStore = open_store(None, self.store_dir)
        self.controller = self.new_controller()

    def close(self) -> None:
        self.store.close()
        shutil.rmtree(self.store_dir.parent, ignore_errors=True)

    def new_controller(self) -> Controller:
        return Controller(self.store, {"local": self.backend}, self.settings, clock=self.clock)

    def restart(self) -> None:
        """A new manager on the same store and the same world."""
        self.store.close()
        self.store = open_store(None, self.store_dir)
        self.controller = self.new_controller()

    def submit(self, **extra: Any) -> str:
        document: dict[str, Any] = {
            "customerID": "acme", "ml_repo_url": "https://git.example.com/acme/digits.git",
            "ml_model_flavor": "sklearn",
            "training_configuration": {
                "data_tags": ["digits"], "min_available_clients": 2, "min_fit_clients": 2, "min_evaluate_clients": 2,
            },
            **extra,
        }  # fmt: skip
        return self.controller.submit(ProjectSLA.model_validate(document), "acme").project_id

    def project(self, project_id: str) -> Project:
        project = self.store.get(project_id)
        assert project is not None
        return project

    def reconcile(self, project_id: str) -> Project:
        self.controller.reconcile(project_id)
        return self.project(project_id)

    def send(self, event: Event) -> Project:
        self.controller.handle_event(event)
        return self.project(event.project_id)

    def write_outcome(self, project_id: str, outcome: BuildOutcome) -> None:
        path = self.settings.runs_dir / project_id / build.RESULT_FILE
        path.write_text(outcome.model_dump_json(), encoding="utf-8")

    # Moving a project along ------------------------------------------------------------------
    def to_building(self) -> str:
        project_id = self.submit()
        assert self.reconcile(project_id).status is ProjectStatus.BUILDING
        return project_id

    def to_deploying(self) -> str:
        project_id = self.to_building()
        self.send(builder_succeeded(project_id))
        assert self.reconcile(project_id).status is ProjectStatus.DEPLOYING
        return project_id

    def to_training(self) -> str:
        project_id = self.to_deploying()
        self.send(make_event(project_id, Component.AGGREGATOR, EventName.STARTED, AggregatorStarted(learners=2)))
        assert self.reconcile(project_id).status is ProjectStatus.TRAINING
        return project_id

    def to_post_training(self) -> str:
        """A project that waits in post_training for a model server that never answers."""
        project_id = self.submit(post_training_steps=[PostTrainingStep.DEPLOY_IMAGE.value])
        self.reconcile(project_id)
        self.send(builder_succeeded(project_id))
        self.reconcile(project_id)
        self.send(aggregator_finished(project_id))
        assert self.reconcile(project_id).status is ProjectStatus.POST_TRAINING
        return project_id


BUILD = BuildResult(commit="c0ffee" * 6 + "c0ff", repo_dir="/builds/digits", aggregator_python="/env/bin/python")


def builder_succeeded(project_id: str) -> Event:
    return make_event(project_id, Component.BUILDER, EventName.SUCCEEDED, BUILD)


def aggregator_finished(project_id: str, status: str = "completed", error: str | None = None) -> Event:
    summary = TrainingSummary(
        status=status, project_id=project_id, error=error,  # type: ignore[arg-type]
        rounds=[RoundReport(round=1, accuracy=0.8), RoundReport(round=2, accuracy=0.9)],
        registered_model_name="digits", registered_model_version="3",
    )  # fmt: skip
    event = EventName.SUCCEEDED if status == "completed" else EventName.FAILED
    return make_event(project_id, Component.AGGREGATOR, event, AggregatorFinished(summary=summary))


def failure(project: Project) -> tuple[str, str]:
    """The stage and reason of a failed project (and that it failed, retries done)."""
    assert project.status is ProjectStatus.FAILED and project.error is not None and project.retry is None
    return project.error.stage, project.error.message


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[Callable[..., World]]:
    """Worlds with other settings or node counts; each closed after the test."""
    made: list[World] = []

    def make(nodes: int = 2, **settings: Any) -> World:
        made.append(World(tmp_path / f"world-{len(made)}", nodes, **settings))
        return made[-1]

    yield make
    for world in made:
        world.close()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


# ------------------------------------------------------------------------------ transitions
def test_a_project_moves_through_every_status_and_leaves_nothing_running(world: World) -> None:
    project_id = world.submit()
    assert world.project(project_id).status is ProjectStatus.SUBMITTED

    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.BUILDING
    [builder] = world.backend.deployed("builder")
    assert builder.one_shot and "https://git.example.com/acme/digits.git" in builder.command
    assert builder.env["FLOPS_MQTT_HOST"] == "127.0.0.1"

    started = BuilderStarted(repo_url="https://git.example.com/acme/digits.git")
    world.send(make_event(project_id, Component.BUILDER, EventName.STARTED, started))
    assert world.reconcile(project_id).status is ProjectStatus.BUILDING

    world.send(builder_succeeded(project_id))
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.DEPLOYING and project.build == BUILD
    assert project.handle("builder") is None  # the builder is done, not a running service
    [aggregator] = world.backend.deployed("aggregator")
    assert aggregator.command[:3] == ["/env/bin/python", "-m", "aggregator.main"]
    assert "/builds/digits" in aggregator.command
    learners = sorted(spec.name for spec in world.backend.specs.values() if spec.role == "learner")
    assert learners == ["learner-node-1", "learner-node-2"]
    assert (world.settings.runs_dir / project_id / "spec.json").is_file()

    world.send(make_event(project_id, Component.AGGREGATOR, EventName.STARTED, AggregatorStarted(learners=2)))
    assert world.reconcile(project_id).status is ProjectStatus.TRAINING
    world.send(make_event(project_id, Component.AGGREGATOR, EventName.ROUND, RoundReport(round=1, accuracy=0.8)))
    assert [r.round for r in world.project(project_id).rounds] == [1]

    world.send(aggregator_finished(project_id))
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.COMPLETED and project.error is None and project.retry is None
    assert (project.model_name, project.model_version) == ("digits", "3")
    assert [r.round for r in project.rounds] == [1, 2]
    assert sorted(world.backend.undeployed) == ["aggregator", "learner-node-1", "learner-node-2"]
    assert world.backend.released == [project_id]
    assert not any(handle.active for handle in project.deployment)
    assert list(project.stages) == ["submitted", "building", "deploying", "training", "post_training", "completed"]
    assert all(timing.ended_at is not None for timing in project.stages.values())


def test_the_builders_result_file_is_read_when_it_exits(world: World) -> None:
    project_id = world.to_building()
    assert world.reconcile(project_id).status is ProjectStatus.BUILDING  # still running
    world.write_outcome(project_id, BuildOutcome(result=BUILD))
    world.backend.finish("builder")
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.DEPLOYING and project.build == BUILD
    assert len(world.backend.deployed("aggregator")) == 1


def test_post_training_skips_the_image_on_the_local_target(world: World) -> None:
    project_id = world.submit(post_training_steps=[PostTrainingStep.BUILD_IMAGE.value])
    world.reconcile(project_id)
    world.send(builder_succeeded(project_id))
    world.reconcile(project_id)
    world.send(aggregator_finished(project_id))
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.COMPLETED
    assert [(e.component, e.event) for e in project.events if e.component == "post_training"] == [
        ("post_training", "skipped")
    ]
    assert not world.backend.deployed("inference-builder")


# ------------------------------------------------------------------------------ failures
def test_a_bad_repository_fails_at_building_with_the_checkers_whole_message(world: World) -> None:
    project_id = world.to_building()
    reason = "fatal: unable to access 'https://git.example.com/': Could not resolve host: git.example.com"
    world.write_outcome(project_id, BuildOutcome(failure=BuildFailure(stage="fetch", error=reason)))
    world.backend.finish("builder", exit_code=1)
    assert failure(world.reconcile(project_id)) == ("building", reason)
    assert not world.backend.deployed("aggregator")


def test_builder_failed_event_fails_the_build(world: World) -> None:
    project_id = world.to_building()
    world.send(make_event(project_id, Component.BUILDER, EventName.FAILED, BuilderFailed(stage="check"),
                          error="model_manager.py is missing"))  # fmt: skip
    stage, message = failure(world.reconcile(project_id))
    assert stage == "building" and message == "model_manager.py is missing"
    assert world.backend.undeployed == ["builder"]  # the still running builder is removed


def test_a_builder_that_exits_without_a_result_fails_with_its_log(world: World) -> None:
    project_id = world.to_building()
    world.backend.finish("builder", exit_code=137)
    stage, message = failure(world.reconcile(project_id))
    assert stage == "building" and "without a result" in message
    assert "last words of builder" in message


def test_too_few_nodes_fail_at_deploying(make_world: Callable[..., World]) -> None:
    world = make_world(nodes=1)
    project_id = world.to_building()
    world.send(builder_succeeded(project_id))
    stage, message = failure(world.reconcile(project_id))
    assert stage == "deploying" and "min_available_clients" in message


def test_a_refused_deployment_fails_at_deploying_and_leaves_nothing(world: World) -> None:
    project_id = world.to_building()
    world.send(builder_succeeded(project_id))

    def refuse_second_deploy(spec: ServiceSpec) -> ProcessHandle:
        if spec.role == "learner":
            raise OrchestratorError("learner refused: no such image")
        return FakeOrchestrator.deploy(world.backend, spec)

    world.backend.deploy = refuse_second_deploy  # type: ignore[method-assign]
    stage, message = failure(world.reconcile(project_id))
    assert (stage, message) == ("deploying", "learner refused: no such image")
    assert world.backend.undeployed == ["aggregator"]  # the part that was deployed is gone again


def test_a_failed_training_fails_with_its_reason_and_tears_down(world: World) -> None:
    project_id = world.to_training()
    world.send(aggregator_finished(project_id, status="failed", error="2 learners failed"))
    stage, message = failure(world.reconcile(project_id))
    assert (stage, message) == ("training", "2 learners failed")
    assert sorted(world.backend.undeployed) == ["aggregator", "learner-node-1", "learner-node-2"]


def test_an_aggregator_that_exits_without_a_result_fails_the_training(world: World) -> None:
    project_id = world.to_training()
    world.backend.finish("aggregator", exit_code=1)
    stage, message = failure(world.reconcile(project_id))
    assert stage == "training" and "exited without a result" in message


def test_an_aggregator_summary_on_disk_is_used_when_no_event_came(world: World) -> None:
    project_id = world.to_training()
    state_dir = world.settings.runs_dir / project_id / "aggregator"
    state_dir.mkdir(parents=True)
    summary = TrainingSummary(status="completed", project_id=project_id, registered_model_name="digits",
                              registered_model_version="1")  # fmt: skip
    (state_dir / "summary.json").write_text(summary.model_dump_json())
    world.backend.finish("aggregator")
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.COMPLETED and project.model_version == "1"


def test_a_model_server_that_never_answers_fails_post_training(world: World) -> None:
    project_id = world.to_post_training()
    [server] = world.backend.deployed("inference")
    assert server.command[:3] == ["/env/bin/python", "-m", "flops.model_server"]
    assert server.command[server.command.index("--model-uri") + 1] == "models:/digits/3"
    assert world.reconcile(project_id).status is ProjectStatus.POST_TRAINING  # still starting
    world.clock.advance(181)
    stage, message = failure(world.reconcile(project_id))
    assert stage == "post_training" and "did not start" in message
    assert "inference" in world.backend.undeployed


class PingServer:
    """What a model server answers on `/ping`: 200, on the port the manager gave it."""

    def __init__(self, port: int) -> None:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200 if self.path == "/ping" else 404)
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_latest(world: World) -> PingServer:
    return PingServer(world.backend.deployed("inference")[-1].ports["http"])


def test_a_served_model_is_advertised_only_while_it_answers_and_restarted_when_gone(world: World) -> None:
    """After `flops down` / `flops up` the model server is gone: no dead URL, and it is started again."""
    project_id = world.to_post_training()
    first = serve_latest(world)
    try:
        project = world.reconcile(project_id)
        assert project.status is ProjectStatus.COMPLETED
        assert project.inference_url == f"http://127.0.0.1:{first.server.server_port}/invocations"
    finally:
        first.close()
    world.backend.finish("inference", exit_code=1)  # its process went with the stack
    world.clock.advance(600)
    world.restart()  # a manager started again on the same store
    world.controller.keep_serving()
    project = world.project(project_id)
    assert project.inference_url is None  # never advertises what does not answer
    assert len(world.backend.deployed("inference")) == 2  # started again from the registered model
    assert any(e.event == "restarted" for e in project.events)
    second = serve_latest(world)
    try:
        world.controller.keep_serving()  # checked at most every 10 s
        assert world.project(project_id).inference_url is None
        world.clock.advance(11)
        world.controller.keep_serving()
        assert world.project(project_id).inference_url == f"http://127.0.0.1:{second.server.server_port}/invocations"
    finally:
        second.close()
    world.backend.finish("inference", exit_code=1)  # dies again at once: left stopped, with the reason
    world.clock.advance(11)
    world.controller.keep_serving()
    project = world.project(project_id)
    assert project.inference_url is None and len(world.backend.deployed("inference")) == 2
    assert any(e.event == "stopped" and "last words of inference" in e.message for e in project.events)


def test_a_backend_the_manager_has_not_enabled_fails_and_says_how_to_enable_it(world: World) -> None:
    project_id = world.submit(backend="docker")
    stage, message = failure(world.reconcile(project_id))
    assert stage == "building"
    assert "'docker' is not enabled" in message and ENABLE_HINTS["docker"] in message
    assert not world.backend.specs  # nothing ran, in particular not on `local`


# ------------------------------------------------------------------------------ cancel
@pytest.mark.parametrize("stage", ["submitted", "building", "deploying", "training", "post_training"])
def test_cancel_at_each_stage_removes_everything(world: World, stage: str) -> None:
    movers = {
        "submitted": world.submit, "building": world.to_building, "deploying": world.to_deploying,
        "training": world.to_training, "post_training": world.to_post_training,
    }  # fmt: skip
    project_id = movers[stage]()
    assert world.project(project_id).status.value == stage
    running = sorted(h.name for h in world.project(project_id).deployment if h.active)
    removed_before = len(world.backend.undeployed)
    world.controller.cancel(project_id)
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.CANCELLED and project.error is None
    assert sorted(world.backend.undeployed[removed_before:]) == running
    assert not any(handle.active for handle in project.deployment)
    assert world.backend.released == [project_id]
    # a late event does not revive it
    world.send(aggregator_finished(project_id))
    assert world.reconcile(project_id).status is ProjectStatus.CANCELLED


# ------------------------------------------------------------------------------ events
def test_an_event_delivered_twice_counts_once(world: World) -> None:
    project_id = world.to_building()
    event = builder_succeeded(project_id)
    world.send(event)
    world.send(event)
    project = world.reconcile(project_id)
    assert [e.event for e in project.events].count("succeeded") == 1
    # the same fact again under another id changes nothing either
    world.send(builder_succeeded(project_id))
    assert world.reconcile(project_id).status is ProjectStatus.DEPLOYING
    assert len(world.backend.deployed("aggregator")) == 1


def test_aggregator_started_before_the_build_is_ignored(world: World) -> None:
    project_id = world.to_building()
    world.send(make_event(project_id, Component.AGGREGATOR, EventName.STARTED, AggregatorStarted()))
    world.send(make_event(project_id, Component.AGGREGATOR, EventName.ROUND, RoundReport(round=1)))
    project = world.project(project_id)
    assert project.training_started_at is None and project.rounds == []
    world.send(builder_succeeded(project_id))
    assert world.reconcile(project_id).status is ProjectStatus.DEPLOYING  # not training


def test_a_round_after_the_summary_changes_nothing(world: World) -> None:
    project_id = world.to_training()
    world.send(aggregator_finished(project_id))
    world.send(make_event(project_id, Component.AGGREGATOR, EventName.ROUND, RoundReport(round=7, accuracy=0.1)))
    world.send(aggregator_finished(project_id, status="failed", error="late"))
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.COMPLETED
    assert [r.round for r in project.rounds] == [1, 2] and project.training is not None
    assert project.training.status == "completed"


def test_an_event_for_an_unknown_project_is_dropped(world: World) -> None:
    world.controller.handle_event(builder_succeeded("nobody"))
    assert world.store.list() == []


# ------------------------------------------------------------------------------ restarts
@pytest.mark.parametrize("stage", ["submitted", "building", "deploying", "training", "post_training"])
def test_a_restarted_manager_picks_up_a_project_in_each_stage(world: World, stage: str) -> None:
    if stage == "post_training":
        project_id = world.submit(post_training_steps=[PostTrainingStep.DEPLOY_IMAGE.value])
        world.reconcile(project_id)
        world.send(builder_succeeded(project_id))
        world.reconcile(project_id)
        world.send(aggregator_finished(project_id))
        world.reconcile(project_id)
    else:
        movers = {"submitted": world.submit, "building": world.to_building, "deploying": world.to_deploying,
                  "training": world.to_training}  # fmt: skip
        project_id = movers[stage]()
    assert world.project(project_id).status.value == stage
    world.restart()
    if stage == "post_training":  # the new manager follows the server it deployed, then gives up on it
        world.clock.advance(181)
        assert world.reconcile(project_id).status is ProjectStatus.FAILED
        assert len(world.backend.deployed("inference")) == 1
        return
    world.controller.reconcile_all()
    if world.project(project_id).status is ProjectStatus.BUILDING:
        world.send(builder_succeeded(project_id))
        world.reconcile(project_id)
    if world.project(project_id).status is ProjectStatus.DEPLOYING:
        world.send(make_event(project_id, Component.AGGREGATOR, EventName.STARTED, AggregatorStarted()))
    world.send(aggregator_finished(project_id))
    assert world.reconcile(project_id).status is ProjectStatus.COMPLETED
    assert len(world.backend.deployed("builder")) == 1 and len(world.backend.deployed("aggregator")) == 1


# ------------------------------------------------------------------------------ retries
def test_a_transient_error_is_retried_with_backoff_shown_in_the_project(world: World) -> None:
    project_id = world.submit()
    world.backend.errors["deploy"] = [
        TransientOrchestratorError("backend unreachable"),
        TransientOrchestratorError("backend answered 503"),
    ]
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.SUBMITTED and project.retry is not None
    assert (project.retry.stage, project.retry.attempts, project.retry.reason) == (
        "building", 1, "backend unreachable",
    )  # fmt: skip
    assert project.retry.next_attempt_at == pytest.approx(world.clock.now + 1)
    assert world.reconcile(project_id).retry == project.retry  # not before its time
    world.clock.advance(1)
    project = world.reconcile(project_id)
    assert project.retry is not None and project.retry.attempts == 2 and project.retry.reason.endswith("503")
    assert project.retry.next_attempt_at == pytest.approx(world.clock.now + 2)
    world.clock.advance(2)
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.BUILDING and project.retry is None
    assert len(world.backend.deployed("builder")) == 1


def test_a_build_that_found_the_registry_away_is_built_again_after_backoff(world: World) -> None:
    project_id = world.to_building()
    away = BuildFailure(stage="push", error="cannot reach the registry 127.0.0.1:1: connection refused", transient=True)
    world.write_outcome(project_id, BuildOutcome(failure=away))
    world.backend.finish("builder", exit_code=1)
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.BUILDING and project.build_failure is None
    assert project.retry is not None and (project.retry.stage, project.retry.reason) == ("building", away.error)
    assert project.handle("builder") is None and len(world.backend.deployed("builder")) == 1
    world.clock.advance(1)
    project = world.reconcile(project_id)
    assert project.retry is None and len(world.backend.deployed("builder")) == 2  # a new builder, same project
    world.send(make_event(project_id, Component.BUILDER, EventName.FAILED, BuilderFailed(stage="push", transient=True),
                          error=away.error))  # fmt: skip
    assert world.reconcile(project_id).retry is not None  # the event says so as well as the file
    world.clock.advance(2)
    world.reconcile(project_id)
    world.send(builder_succeeded(project_id))
    assert world.reconcile(project_id).status is ProjectStatus.DEPLOYING


def test_a_transient_error_while_watching_training_is_retried(world: World) -> None:
    project_id = world.to_training()
    world.backend.errors["status"] = [requests.ConnectionError("connection refused")]
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.TRAINING and project.retry is not None
    assert project.retry.stage == "training"
    world.clock.advance(1)
    world.send(aggregator_finished(project_id))
    assert world.reconcile(project_id).status is ProjectStatus.COMPLETED


def test_transient_errors_beyond_the_give_up_time_fail_the_stage(make_world: Callable[..., World]) -> None:
    world = make_world(retry_give_up_s=30.0)
    project_id = world.submit()
    world.backend.errors["deploy"] = [TransientOrchestratorError("backend unreachable")] * 100
    delays = []
    while world.project(project_id).status is ProjectStatus.SUBMITTED:
        project = world.reconcile(project_id)
        if project.retry is not None:
            delays.append(project.retry.next_attempt_at - world.clock.now)
            world.clock.advance(project.retry.next_attempt_at - world.clock.now)
    assert delays[:5] == pytest.approx([1, 2, 4, 8, 16])
    stage, message = failure(world.project(project_id))
    assert stage == "building" and "backend unreachable (gave up after" in message


def test_a_permanent_error_fails_at_once(world: World) -> None:
    project_id = world.submit()
    world.backend.errors["deploy"] = [OrchestratorError("cannot start builder: no such file")]
    assert failure(world.reconcile(project_id)) == ("building", "cannot start builder: no such file")


def test_a_cancel_retries_a_backend_that_is_away(world: World) -> None:
    project_id = world.to_training()
    world.backend.errors["undeploy"] = [TransientOrchestratorError("backend unreachable")]
    world.controller.cancel(project_id)
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.TRAINING and project.retry is not None
    assert project.retry.stage == "cancelling"
    world.clock.advance(1)
    project = world.reconcile(project_id)
    assert project.status is ProjectStatus.CANCELLED
    assert sorted(world.backend.undeployed) == ["aggregator", "learner-node-1", "learner-node-2"]


def test_a_cancel_does_not_wait_for_another_stages_retry(world: World) -> None:
    project_id = world.submit()
    world.backend.errors["deploy"] = [TransientOrchestratorError("backend unreachable")]
    assert world.reconcile(project_id).retry is not None
    world.controller.cancel(project_id)
    project = world.reconcile(project_id)  # the clock has not moved
    assert project.status is ProjectStatus.CANCELLED and project.retry is None


def test_one_broken_project_does_not_hold_up_the_others(world: World) -> None:
    broken = world.to_training()
    healthy = world.submit()

    def broken_status(handle: ProcessHandle) -> ServiceState:
        if handle.name == "aggregator":
            raise KeyError("a bug")
        return FakeOrchestrator.status(world.backend, handle)

    world.backend.status = broken_status  # type: ignore[method-assign]
    world.controller.reconcile_all()
    stage, message = failure(world.project(broken))
    assert stage == "training" and message.startswith("internal error: KeyError")
    assert world.project(healthy).status is ProjectStatus.BUILDING


def test_what_counts_as_transient() -> None:
    server_error = requests.HTTPError(response=requests.Response())
    server_error.response.status_code = 502  # type: ignore[union-attr]
    client_error = requests.HTTPError(response=requests.Response())
    client_error.response.status_code = 404  # type: ignore[union-attr]
    assert is_transient(TransientOrchestratorError("x")) and not is_transient(OrchestratorError("x"))
    assert is_transient(TimeoutError()) and is_transient(requests.Timeout()) and is_transient(server_error)
    assert not is_transient(client_error) and not is_transient(ValueError("x"))
    assert is_transient(pymongo.errors.AutoReconnect("primary stepped down"))
    retry = next_retry(None, "deploying", "x", 100.0, initial_s=1, max_s=60)
    for _ in range(10):
        retry = next_retry(retry, "deploying", "x", 100.0, initial_s=1, max_s=60)
    assert retry.attempts == 11 and retry.next_attempt_at == 160.0 and retry.first_failed_at == 100.0
    assert next_retry(retry, "training", "y", 200.0, initial_s=1, max_s=60).attempts == 1
