"""The project lifecycle: events move a project forward, a reconcile loop converges.

`submitted -> building -> deploying -> training -> post_training -> completed`, with
`failed` and `cancelled` reachable from every active state. Every step is idempotent: the
store's compare-and-set transition refuses a second move to the same state, and events are
recorded once by id, so an event delivered twice, or seen both as an event and by the
reconcile loop after a restart, changes nothing the second time.
"""

import json
import logging
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from flops.events import Component, Event, EventName
from flops.net import free_port, http_ok
from flops.progress import read_summary
from flops.sla import Backend, PostTrainingStep, ProjectSLA
from flops.training import RoundReport, TrainingSpec, TrainingSummary
from flops_manager.models import (
    BuildResult,
    EventRecord,
    ProcessHandle,
    Project,
    ProjectError,
    ProjectStatus,
)
from flops_manager.nodes import LocalNode, PlacementError, discover_nodes, place_learners
from flops_manager.orchestration.base import Orchestrator, OrchestratorError, ServiceSpec, ServiceStatus
from flops_manager.settings import ManagerSettings
from flops_manager.store import ProjectStore
from image_builder.containerfiles import MODEL_DIR

log = logging.getLogger("flops.manager")
INFERENCE_START_TIMEOUT_S = 180.0
REMOTE_RESULT_GRACE_S = 20.0


def model_name_for(sla: ProjectSLA) -> str:
    if sla.project_name:
        return sla.project_name
    name = sla.ml_repo_url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    return name or "flops-model"


def training_spec(project: Project, build: BuildResult) -> TrainingSpec:
    sla = project.parsed_sla()
    config = sla.training_configuration
    return TrainingSpec(
        project_id=project.project_id,
        model_name=project.model_name or model_name_for(sla),
        model_flavor=sla.ml_model_flavor,
        rounds=config.training_rounds,
        min_available_clients=config.min_available_clients,
        min_fit_clients=config.min_fit_clients,
        min_evaluate_clients=config.min_evaluate_clients,
        data_tags=config.data_tags,
        strategy=sla.strategy,
        hyperparameters=sla.hyperparameters,
        best_model_metric=sla.best_model_metric,
        learner_wait_timeout=sla.learner_wait_timeout,
        repo_url=sla.ml_repo_url,
        repo_commit=build.commit,
    )


class ActorPlan:
    """How the FL actors run on one backend: commands, images, where code and data are.

    Locally the actors are the build's environments and folders on this machine; on container
    backends they are the images' console scripts, with the code inside the image.
    """

    IMAGE_REPO_DIR = "/app"

    def __init__(
        self,
        backend: str,
        local: bool,
        aggregator: list[str],
        learner: list[str],
        repo_dir: str,
        images: dict[str, str],
        remote_data_root: str | None,
    ) -> None:
        self.backend = backend
        self.local = local
        self.aggregator = aggregator
        self.learner = learner
        self.repo_dir = repo_dir
        self.images = images
        self.remote_data_root = remote_data_root

    @classmethod
    def for_backend(cls, backend: str, build: BuildResult, settings: ManagerSettings) -> "ActorPlan":
        if backend == "local":
            return cls(
                backend=backend,
                local=True,
                aggregator=[build.aggregator_python or sys.executable, "-m", "aggregator.main"],
                learner=[build.learner_python or sys.executable, "-m", "learner.main"],
                repo_dir=build.repo_dir,
                images={},
                remote_data_root=None,
            )
        images = dict(build.images)
        repo_dir = cls.IMAGE_REPO_DIR
        if not images and settings.placeholder_images:
            # Only for stand-ins that run commands on this machine: name an image, use local code.
            images = {
                role: f"localhost/flops/{role}:{build.commit[:12] or 'local'}" for role in ("aggregator", "learner")
            }
            repo_dir = build.repo_dir
        return cls(
            backend=backend,
            local=False,
            aggregator=["flops-aggregator"],
            learner=["flops-learner"],
            repo_dir=repo_dir,
            images=images,
            remote_data_root=settings.remote_data_root,
        )

    def data_mounts(self, node: LocalNode) -> dict[str, str]:
        """Containers on this machine see the node folder read-only at the same path."""
        if self.backend != "docker" or self.remote_data_root:
            return {}
        return {str(node.data_dir): str(node.data_dir)}

    def data_dir(self, node: LocalNode) -> str:
        if self.remote_data_root:
            return f"{self.remote_data_root.rstrip('/')}/{node.name}"
        return str(node.data_dir)


class Controller:
    """Drives every project of this manager; safe to call from API, MQTT and loop threads."""

    def __init__(self, store: ProjectStore, orchestrators: dict[str, Orchestrator], settings: ManagerSettings):
        self.store = store
        self.orchestrators = orchestrators
        self.settings = settings
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self._finished_at: dict[str, float] = {}

    # ----------------------------------------------------------------- API side
    def submit(self, sla: ProjectSLA, customer_id: str) -> Project:
        now = time.time()
        project = Project(
            project_id=uuid.uuid4().hex[:12],
            customer_id=customer_id,
            sla=sla.model_dump(mode="json", by_alias=True),
            model_name=model_name_for(sla),
            tracking_url=self.settings.tracking_uri,
            stages={ProjectStatus.SUBMITTED.value: {"started_at": now}},  # type: ignore[dict-item]
        )
        self.store.insert(project)
        self.wake.set()
        return project

    def cancel(self, project_id: str) -> None:
        self.store.set_desired(project_id, "cancelled")
        self.wake.set()

    # --------------------------------------------------------------- event side
    def handle_event(self, event: Event) -> None:
        with self.lock:
            project = self.store.get(event.project_id)
            if project is None:
                log.warning("event for unknown project %s: %s", event.project_id, event.topic)
                return
            record = EventRecord(
                time=event.time,
                component=event.component.value,
                event=event.event.value,
                message=event.error or "",
            )
            changes: dict[str, Any] = {}
            if event.component is Component.AGGREGATOR and event.event is EventName.ROUND:
                report = RoundReport.model_validate(event.payload)
                rounds = [r for r in project.rounds if r.round != report.round] + [report]
                changes["rounds"] = [r.model_dump(mode="json") for r in sorted(rounds, key=lambda r: r.round)]
                record.message = f"round {report.round}: accuracy {report.accuracy} loss {report.loss}"
            if not self.store.record_event(project.project_id, event.event_id, record, changes):
                return  # seen before
            if not project.active or project.desired == "cancelled":
                return
            self._apply_event(project, event)

    def _apply_event(self, project: Project, event: Event) -> None:
        key = (event.component, event.event)
        if key == (Component.BUILDER, EventName.STARTED):
            self.store.transition(project.project_id, ProjectStatus.BUILDING)
        elif key == (Component.BUILDER, EventName.SUCCEEDED):
            self._build_succeeded(project.project_id, BuildResult.model_validate(event.payload))
        elif key == (Component.BUILDER, EventName.FAILED):
            self._fail(project.project_id, "building", event.error or "the build failed")
        elif key == (Component.AGGREGATOR, EventName.STARTED):
            self.store.transition(project.project_id, ProjectStatus.TRAINING)
        elif key in ((Component.AGGREGATOR, EventName.SUCCEEDED), (Component.AGGREGATOR, EventName.FAILED)):
            summary = self._summary_of(project.project_id, event)
            self._training_finished(project.project_id, summary)

    def _summary_of(self, project_id: str, event: Event) -> TrainingSummary:
        """The training summary an aggregator event carries, else the one it wrote to disk."""
        if "summary" in event.payload:
            return TrainingSummary.model_validate(event.payload["summary"])
        on_disk = read_summary(self._run_dir(project_id) / "aggregator")
        if on_disk is not None:
            return on_disk
        if event.event is EventName.SUCCEEDED:
            return TrainingSummary(status="completed", project_id=project_id)
        return TrainingSummary(status="failed", project_id=project_id, error=event.error)

    # ---------------------------------------------------------------- reconcile
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.reconcile_all()
            except Exception:
                log.exception("reconcile pass failed")
            self.wake.wait(self.settings.reconcile_interval_s)
            self.wake.clear()

    def reconcile_all(self) -> None:
        for project in self.store.active():
            with self.lock:
                fresh = self.store.get(project.project_id)
                if fresh is not None and fresh.active:
                    self.reconcile(fresh)

    def reconcile(self, project: Project) -> None:
        if project.desired == "cancelled":
            self._teardown(project, keep_inference=False)
            self.store.transition(project.project_id, ProjectStatus.CANCELLED)
            return
        status = project.status
        if status is ProjectStatus.SUBMITTED:
            self._start_build(project)
        elif status is ProjectStatus.BUILDING:
            self._check_build(project)
        elif status is ProjectStatus.DEPLOYING and not self._handle(project, "aggregator"):
            if project.build is not None:
                self._deploy_actors(project.project_id)
        elif status in (ProjectStatus.DEPLOYING, ProjectStatus.TRAINING):
            self._check_training(project)
        elif status is ProjectStatus.POST_TRAINING:
            self._check_post_training(project)

    # ------------------------------------------------------------------- stages
    def _orchestrator(self, project: Project) -> Orchestrator:
        backend = project.parsed_sla().backend.value
        return self.orchestrators[backend] if backend in self.orchestrators else self.orchestrators["local"]

    def _run_dir(self, project_id: str) -> Path:
        return self.settings.runs_dir / project_id

    def _handle(self, project: Project, name: str) -> ProcessHandle | None:
        for handle in project.deployment:
            if handle.name == name and handle.active:
                return handle
        return None

    def _add_handles(self, project_id: str, handles: list[ProcessHandle]) -> None:
        project = self.store.get(project_id)
        assert project is not None
        deployment = [*project.deployment, *handles]
        self.store.update(project_id, {"deployment": [h.model_dump(mode="json") for h in deployment]})

    def _builder_local(self) -> Orchestrator:
        # The local target builds environments on this machine, whatever backend trains.
        return self.orchestrators["local"]

    def _start_build(self, project: Project) -> None:
        sla = project.parsed_sla()
        result_file = self._run_dir(project.project_id) / "build-result.json"
        result_file.unlink(missing_ok=True)
        command = [
            sys.executable, "-m", "image_builder.main",
            "--project-id", project.project_id,
            "--repo-url", sla.ml_repo_url,
            "--cache-dir", str(self.settings.builds_dir),
            "--result-file", str(result_file),
        ]  # fmt: skip
        if sla.ml_repo_ref:
            command += ["--ref", sla.ml_repo_ref]
        if self._builds_images(project):
            assert self.settings.images is not None
            command += [
                "--target", "oci", *self.settings.images.builder_args(),
                "--platforms", ",".join(sla.supported_platforms), "--customer", project.customer_id,
                "--image-name", project.model_name or model_name_for(sla),
            ]  # fmt: skip
        spec = ServiceSpec(
            project_id=project.project_id, name="builder", role="builder", command=command,
            env=self.settings.mqtt.env(), one_shot=True,
        )  # fmt: skip
        try:
            handle = self._builder_local().deploy(spec)
        except OrchestratorError as error:
            self._fail(project.project_id, "building", str(error))
            return
        self._add_handles(project.project_id, [handle])
        self.store.transition(project.project_id, ProjectStatus.BUILDING)

    def _check_build(self, project: Project) -> None:
        handle = self._handle(project, "builder")
        if handle is None:
            self._start_build(project)
            return
        state = self._builder_local().status(handle)
        if not state.finished:
            return
        result_file = self._run_dir(project.project_id) / "build-result.json"
        result = json.loads(result_file.read_text()) if result_file.is_file() else None
        if result and "error" not in result:
            self._build_succeeded(project.project_id, BuildResult.model_validate(result))
        else:
            message = (result or {}).get("error") or f"the builder exited ({state.detail or state.exit_code})"
            self._fail(project.project_id, "building", message)

    def _builds_images(self, project: Project) -> bool:
        """Container backends train from OCI images when a registry is configured."""
        return self.settings.images is not None and project.parsed_sla().backend is not Backend.LOCAL

    def _build_succeeded(self, project_id: str, build: BuildResult) -> None:
        self.store.update(project_id, {"build": build.model_dump(mode="json"), "image_refs": dict(build.images)})
        project = self.store.get(project_id)
        if project is not None:
            builder = self._handle(project, "builder")
            if builder is not None:
                self._mark_inactive(project_id, ["builder"])
        if self.store.transition(project_id, ProjectStatus.DEPLOYING):
            self._deploy_actors(project_id)

    def _deploy_actors(self, project_id: str) -> None:
        project = self.store.get(project_id)
        if project is None or project.build is None or self._handle(project, "aggregator"):
            return
        sla = project.parsed_sla()
        config = sla.training_configuration
        orchestrator = self._orchestrator(project)
        try:
            nodes = place_learners(
                discover_nodes(self.settings.nodes_dir), config.data_tags, config.min_available_clients
            )
        except PlacementError as error:
            self._fail(project_id, "deploying", str(error))
            return
        spec = training_spec(project, project.build)
        run_dir = self._run_dir(project_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        spec_file = run_dir / "spec.json"
        spec_file.write_text(spec.model_dump_json(indent=2), encoding="utf-8")
        plan = ActorPlan.for_backend(orchestrator.name, project.build, self.settings)
        port = free_port()
        mqtt_env = self.settings.mqtt.env(same_filesystem=plan.local)
        resources: dict[str, Any] = {
            "memory_mb": sla.resource_constraints.memory,
            "vcpus": sla.resource_constraints.vcpus,
        }
        aggregator = ServiceSpec(
            project_id=project_id, name="aggregator", role="aggregator", image=plan.images.get("aggregator"),
            command=[
                *plan.aggregator, "--spec-json", spec.model_dump_json(), "--repo", plan.repo_dir,
                "--state-dir", str(run_dir / "aggregator") if plan.local else f"/tmp/flops-{project_id}",
                "--host", "127.0.0.1" if plan.local else "0.0.0.0",
                "--port", str(port), "--tracking-uri", self.settings.tracking_uri, "--insecure",
            ],
            env=mqtt_env, ports={"superlink": port}, **resources,
        )  # fmt: skip
        handles: list[ProcessHandle] = []
        try:
            handles.append(orchestrator.deploy(aggregator))
            superlink = f"{handles[0].address or '127.0.0.1'}:{port}"
            for node in nodes:
                learner = ServiceSpec(
                    project_id=project_id, name=f"learner-{node.name}", role="learner", node=node.name,
                    image=plan.images.get("learner"),
                    command=[
                        *plan.learner, "--superlink", superlink, "--data-dir", plan.data_dir(node),
                        "--data-tags", ",".join(config.data_tags), "--node-name", node.name, "--insecure",
                    ],
                    env={**mqtt_env, "FLOPS_PROJECT_ID": project_id},
                    read_only_mounts=plan.data_mounts(node),
                    **resources,
                )  # fmt: skip
                handles.append(orchestrator.deploy(learner))
        except OrchestratorError as error:
            for handle in handles:
                orchestrator.undeploy(handle)
            self._fail(project_id, "deploying", str(error))
            return
        self._add_handles(project_id, handles)

    def _check_training(self, project: Project) -> None:
        handle = self._handle(project, "aggregator")
        if handle is None:
            return
        state = self._orchestrator(project).status(handle)
        if not state.finished:
            return
        summary = read_summary(self._run_dir(project.project_id) / "aggregator")
        if summary is None:
            # A remote aggregator's result comes as an event, which may trail its exit a little.
            first_seen = self._finished_at.setdefault(project.project_id, time.monotonic())
            if handle.backend != "local" and time.monotonic() - first_seen < REMOTE_RESULT_GRACE_S:
                return
            tail = self._orchestrator(project).logs(handle, tail=15)
            summary = TrainingSummary(
                status="failed",
                project_id=project.project_id,
                error=f"the aggregator exited without a result ({state.detail or state.exit_code}):\n{tail}",
            )
        self._training_finished(project.project_id, summary)

    def _training_finished(self, project_id: str, summary: TrainingSummary) -> None:
        project = self.store.get(project_id)
        if project is None or not project.active or project.status is ProjectStatus.POST_TRAINING:
            return
        changes: dict[str, Any] = {
            "training": summary.model_dump(mode="json"),
            "rounds": [r.model_dump(mode="json") for r in summary.rounds] or
                      [r.model_dump(mode="json") for r in project.rounds],
        }  # fmt: skip
        if summary.registered_model_name:
            changes["model_name"] = summary.registered_model_name
            changes["model_version"] = summary.registered_model_version
        self.store.update(project_id, changes)
        self._teardown(project, keep_inference=True)
        if summary.status != "completed":
            self._fail(project_id, "training", summary.error or "training failed")
            return
        if self.store.transition(project_id, ProjectStatus.POST_TRAINING):
            self._start_post_training(project_id)

    def _start_post_training(self, project_id: str) -> None:
        project = self.store.get(project_id)
        if project is None:
            return
        if PostTrainingStep.BUILD_IMAGE in project.parsed_sla().post_training_steps and not self._builds_images(
            project
        ):
            self.store.record_event(
                project_id, uuid.uuid4().hex,
                EventRecord(time=time.time(), component="post_training", event="skipped",
                            message="local target or no registry: the registered model is the artefact, no image"),
            )  # fmt: skip
        self._check_post_training(project)

    def _check_post_training(self, project: Project) -> None:
        """Build the inference image (container backends), deploy the model server, wait for /ping."""
        steps = project.parsed_sla().post_training_steps
        wants_image = PostTrainingStep.BUILD_IMAGE in steps and self._builds_images(project)
        if wants_image and project.model_version and "inference" not in project.image_refs:
            if not self._inference_image_built(project):
                return
            project = self.store.get(project.project_id) or project
        if PostTrainingStep.DEPLOY_IMAGE not in steps or not project.model_version:
            self._release_backend(project)
            self.store.transition(project.project_id, ProjectStatus.COMPLETED)
            return
        handle = self._handle(project, "inference")
        if handle is None:
            self._deploy_inference(project)
            return
        if handle.address and http_ok(f"{handle.address}/ping"):
            self.store.update(project.project_id, {"inference_url": f"{handle.address}/invocations"})
            self.store.transition(project.project_id, ProjectStatus.COMPLETED)
            return
        state = self._orchestrator(project).status(handle)
        if state.finished or time.time() - handle.started_at > INFERENCE_START_TIMEOUT_S:
            tail = self._orchestrator(project).logs(handle, tail=15)
            self._fail(project.project_id, "post_training", f"the model server did not start:\n{tail}")

    def _inference_image_built(self, project: Project) -> bool:
        """Start or follow the one-shot inference-image build; True once its image is recorded."""
        assert self.settings.images is not None
        result_file = self._run_dir(project.project_id) / "inference-build.json"
        handle = self._handle(project, "inference-builder")
        if handle is None:
            result_file.unlink(missing_ok=True)
            command = [
                sys.executable, "-m", "image_builder.inference", "--tracking-uri", self.settings.tracking_uri,
                "--model-uri", f"models:/{project.model_name}/{project.model_version}",
                *self.settings.images.builder_args(), "--customer", project.customer_id,
                "--project", project.model_name or model_name_for(project.parsed_sla()),
                "--platforms", ",".join(project.parsed_sla().supported_platforms),
                "--cache-dir", str(self.settings.builds_dir), "--result-file", str(result_file),
            ]  # fmt: skip
            spec = ServiceSpec(
                project_id=project.project_id, name="inference-builder", role="builder", command=command, one_shot=True
            )
            try:
                self._add_handles(project.project_id, [self._builder_local().deploy(spec)])
            except OrchestratorError as error:
                self._fail(project.project_id, "post_training", str(error))
            return False
        state = self._builder_local().status(handle)
        if not state.finished:
            return False
        result = json.loads(result_file.read_text()) if result_file.is_file() else {}
        self._mark_inactive(project.project_id, ["inference-builder"])
        if not result.get("image"):
            tail = self._builder_local().logs(handle, tail=10)
            message = result.get("error") or f"the inference-image builder exited ({state.detail or state.exit_code})"
            self._fail(project.project_id, "post_training", f"inference image: {message}\n{tail}".strip())
            return False
        self.store.update(project.project_id, {"image_refs": {**project.image_refs, "inference": result["image"]}})
        self.store.record_event(
            project.project_id, uuid.uuid4().hex,
            EventRecord(time=time.time(), component="post_training", event="image_built", message=result["image"]),
        )  # fmt: skip
        return True

    def _deploy_inference(self, project: Project) -> None:
        """The model server: the inference image on container backends, else `mlflow models serve`."""
        port = free_port()
        image = project.image_refs.get("inference")
        local = self._orchestrator(project).name == "local"
        serve = ["-h", "127.0.0.1" if local else "0.0.0.0", "-p", str(port), "--env-manager", "local", "--workers", "1"]
        if image:
            command = ["mlflow", "models", "serve", "-m", MODEL_DIR, *serve]
            env: dict[str, str] = {}
        else:
            python = (project.build.aggregator_python if project.build else None) or sys.executable
            model_uri = f"models:/{project.model_name}/{project.model_version}"
            command = [python, "-m", "mlflow", "models", "serve", "-m", model_uri, *serve]
            env = {"MLFLOW_TRACKING_URI": self.settings.tracking_uri}
        spec = ServiceSpec(
            project_id=project.project_id, name="inference", role="inference", image=image, command=command,
            env=env, ports={"http": port},
        )  # fmt: skip
        try:
            handle = self._orchestrator(project).deploy(spec)
        except OrchestratorError as error:
            self._fail(project.project_id, "post_training", str(error))
            return
        handle.address = f"http://127.0.0.1:{port}"
        self._add_handles(project.project_id, [handle])

    # ---------------------------------------------------------------- teardown
    def _mark_inactive(self, project_id: str, names: list[str]) -> None:
        project = self.store.get(project_id)
        if project is None:
            return
        deployment = [h.model_copy(update={"active": False}) if h.name in names else h for h in project.deployment]
        self.store.update(project_id, {"deployment": [h.model_dump(mode="json") for h in deployment]})

    def _teardown(self, project: Project, keep_inference: bool) -> None:
        fresh = self.store.get(project.project_id) or project
        removed = []
        for handle in fresh.deployment:
            if not handle.active or (keep_inference and handle.name == "inference"):
                continue
            orchestrator = self.orchestrators.get(handle.backend, self.orchestrators["local"])
            try:
                orchestrator.undeploy(handle)
            except OrchestratorError as error:
                log.warning("undeploy %s of %s: %s", handle.name, project.project_id, error)
            removed.append(handle.name)
        if removed:
            self._mark_inactive(project.project_id, removed)
        if not keep_inference:
            self._release_backend(fresh)

    def _release_backend(self, project: Project) -> None:
        """Remove what the backend keeps per project (an Oakestra application, say)."""
        orchestrator = self._orchestrator(project)
        undeploy_project = getattr(orchestrator, "undeploy_project", None)
        if callable(undeploy_project):
            try:
                undeploy_project(project.project_id)
            except OrchestratorError as error:
                log.warning("releasing %s on %s: %s", project.project_id, orchestrator.name, error)

    def stop_inference(self, project_id: str) -> None:
        with self.lock:
            project = self.store.get(project_id)
            if project is not None:
                self._teardown(project, keep_inference=False)

    def _fail(self, project_id: str, stage: str, message: str) -> None:
        project = self.store.get(project_id)
        if project is None:
            return
        self._teardown(project, keep_inference=False)
        self.store.transition(project_id, ProjectStatus.FAILED, error=ProjectError(stage=stage, message=message))

    def service_logs(self, project: Project, name: str, tail: int = 200) -> str:
        for handle in reversed(project.deployment):
            if handle.name == name:
                orchestrator = self.orchestrators.get(handle.backend, self.orchestrators["local"])
                return orchestrator.logs(handle, tail)
        return ""

    def components(self, project: Project) -> list[str]:
        return sorted({handle.name for handle in project.deployment})


def service_is_running(orchestrator: Orchestrator, handle: ProcessHandle) -> bool:
    return orchestrator.status(handle).status is ServiceStatus.RUNNING
