"""The controller: events record facts, a level-triggered reconcile loop converges each project.

`submitted -> building -> deploying -> training -> post_training -> completed`, with `failed`
and `cancelled` reachable from every active state. In controller-runtime's sense:

- `handle_event` only records facts in the store (a build result, a training summary, a
  round, that training started), each event once by its id, and only where the project's
  status can use it: an event that arrives twice, late (a round after the summary) or out of
  order (aggregator/started before the build) changes nothing.
- `reconcile` reads the project as stored and calls the stage of its status (see
  `flops_manager.stages`), again at once while the stage makes progress. A `StageError` or a
  permanent backend error fails the project with the stage and the reason; a transient one
  (unreachable, 5xx, timeout) is retried with doubling delays, shown in `Project.retry`,
  and fails the stage only after `retry_give_up_s`.

A restarted manager needs nothing but the store: every active project is reconciled again.

Events are trusted as far as the broker vouches for their sender: each actor has its own
MQTT user that may publish only its own project's, its own component's topic
(`flops.mqtt_acl`), and `flops.events.decode_event` refuses a body whose project or
component is not its topic's. `handle_event` then takes only what the project's actors can
send: a builder or aggregator event of a project that never ran one is refused and logged.
"""

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationError

from flops.build import BuildFailure, BuildResult
from flops.events import (
    AggregatorFinished,
    BuilderFailed,
    Component,
    Event,
    EventName,
    EventSchemaError,
    EventSenderMismatch,
    LearnerReport,
    decode_event,
)
from flops.sla import ProjectSLA
from flops.training import RoundReport
from flops_manager.credentials import ActorCredentials
from flops_manager.models import EventRecord, Project, ProjectError, ProjectStatus, default_model_name
from flops_manager.orchestration.base import Orchestrator, OrchestratorError
from flops_manager.settings import ManagerSettings
from flops_manager.stages import build, deploy, post_training, teardown, training
from flops_manager.stages.context import StageContext
from flops_manager.stages.credentials import ManagerContext
from flops_manager.stages.errors import StageError, is_transient, next_retry
from flops_manager.stages.restarts import SpecRecorder
from flops_manager.store import ProjectStore

log = logging.getLogger("flops.manager")

Stage = Callable[[StageContext, Project], bool]
# The stage each active status is in: its name (for errors and retries) and its reconcile.
STAGES: dict[ProjectStatus, tuple[str, Stage]] = {
    ProjectStatus.SUBMITTED: (build.STAGE, build.reconcile),
    ProjectStatus.BUILDING: (build.STAGE, build.reconcile),
    ProjectStatus.DEPLOYING: (deploy.STAGE, deploy.reconcile),
    ProjectStatus.TRAINING: (training.STAGE, training.reconcile),
    ProjectStatus.POST_TRAINING: (post_training.STAGE, post_training.reconcile),
}
CANCELLING = "cancelling"
# Steps one reconcile may take while each makes progress (every status once, and a fact each).
MAX_STEPS = 2 * len(ProjectStatus)
# How often a completed project's model server is checked (the loop itself runs every second).
SERVING_CHECK_INTERVAL_S = 10.0


class Controller:
    """Drives every project of this manager; safe to call from API, MQTT and loop threads."""

    def __init__(
        self,
        store: ProjectStore,
        orchestrators: Mapping[str, Orchestrator],
        settings: ManagerSettings,
        *,
        clock: Callable[[], float] = time.time,
        credentials: ActorCredentials | None = None,
    ) -> None:
        if credentials is None and settings.mqtt.username:  # a broker with users: one per actor
            credentials = ActorCredentials(settings.mqtt)
        recorded = {name: SpecRecorder(backend, settings.runs_dir) for name, backend in orchestrators.items()}
        self.context = ManagerContext(
            store=store, orchestrators=recorded, settings=settings, clock=clock, credentials=credentials
        )
        self.lock = threading.RLock()  # one reconcile at a time; events never wait for it
        self.wake = threading.Event()
        self.serving_checked_at = float("-inf")

    @property
    def store(self) -> ProjectStore:
        return self.context.store

    @property
    def settings(self) -> ManagerSettings:
        return self.context.settings

    @property
    def orchestrators(self) -> Mapping[str, Orchestrator]:
        return self.context.orchestrators

    # ----------------------------------------------------------------- API side
    def submit(self, sla: ProjectSLA, customer_id: str) -> Project:
        """Store a new project (submitted) and wake the loop, which starts its build."""
        now = self.context.clock()
        project = Project(
            project_id=uuid.uuid4().hex[:12],
            customer_id=customer_id,
            sla=sla,
            model_name=default_model_name(sla),
            tracking_url=self.settings.tracking_uri,
            created_at=now,
            updated_at=now,
        )
        self.store.insert(project)
        self.wake.set()
        return project

    def cancel(self, project_id: str) -> None:
        """Record that the user wants the project cancelled; the loop tears it down."""
        self.store.set_desired(project_id, "cancelled")
        self.wake.set()

    def stop_inference(self, project_id: str) -> None:
        """Remove a completed project's model server (and whatever else still runs)."""
        with self.lock:
            project = self.store.get(project_id)
            if project is not None:
                teardown.remove_services(self.context, project, keep_inference=False, strict=False)

    def service_logs(self, project: Project, name: str, tail: int = 200) -> str:
        """The last `tail` log lines of the project's latest service called `name`; "" if none."""
        for handle in reversed(project.deployment):
            if handle.name == name:
                orchestrator = self.orchestrators.get(handle.backend)
                return orchestrator.logs(handle, tail) if orchestrator is not None else ""
        return ""

    def components(self, project: Project) -> list[str]:
        """The names of every service the project has had."""
        return sorted({handle.name for handle in project.deployment})

    # --------------------------------------------------------------- event side
    def receive(self, topic: str, body: bytes) -> None:
        """One MQTT message: decoded against its topic, then handled; what cannot be trusted is logged and dropped."""
        try:
            event = decode_event(topic, body)
        except EventSenderMismatch as error:
            log.warning("%s", error)
            return
        except EventSchemaError as error:
            log.warning("dropped event: %s", error)
            return
        try:
            self.handle_event(event)
        except Exception:
            log.exception("handling %s failed", topic)

    def handle_event(self, event: Event) -> None:
        """Record the event (once by id) and the facts it carries; the loop acts on them."""
        project = self.store.get(event.project_id)
        if project is None:
            log.warning("event for unknown project %s: %s", event.project_id, event.topic)
            return
        refusal = sender_refusal(project, event)
        if refusal:
            log.warning("refused event %s (%s): %s", event.topic, event.event_id, refusal)
            return
        try:
            payload = event.typed_payload()
        except (KeyError, ValidationError) as error:
            log.warning("dropped %s: %s", event.topic, error)
            return
        record = EventRecord(
            time=event.time, component=event.component.value, event=event.event.value, message=event.error or ""
        )
        if isinstance(payload, RoundReport):
            record.message = f"round {payload.round}: accuracy {payload.accuracy} loss {payload.loss}"
            record.round = payload.round
        if isinstance(payload, LearnerReport):
            record.node = payload.node
        if self.store.record_event(project.project_id, event.event_id, record, facts(project, event, payload)):
            self.wake.set()

    # ---------------------------------------------------------------- reconcile
    def run(self, stop: threading.Event) -> None:
        """Reconcile every active project, on every wake-up and at least each `reconcile_interval_s`."""
        while not stop.is_set():
            self.reconcile_all()
            self.wake.wait(self.settings.reconcile_interval_s)
            self.wake.clear()

    def reconcile_all(self) -> None:
        for project in self.store.active():
            try:
                self.reconcile(project.project_id)
            except Exception:  # the store itself failed: log it and go on with the next project
                log.exception("reconciling %s failed", project.project_id)
        self.keep_serving()

    def keep_serving(self) -> None:
        """Check completed projects' model servers, at most every `SERVING_CHECK_INTERVAL_S`."""
        now = self.context.clock()
        if now - self.serving_checked_at < SERVING_CHECK_INTERVAL_S:
            return
        self.serving_checked_at = now
        for project in self.store.list(statuses=[ProjectStatus.COMPLETED]):
            if project.handle(post_training.INFERENCE) is None and not project.inference_url:
                continue
            with self.lock:
                try:
                    current = self.store.get(project.project_id)
                    if current is not None and current.status is ProjectStatus.COMPLETED:
                        post_training.keep_serving(self.context, current)
                except Exception as error:  # a backend away now: checked again next time
                    log.warning("checking the model server of %s: %s", project.project_id, error)

    def reconcile(self, project_id: str) -> None:
        """Converge one project: run its status's stage while the stage makes progress."""
        with self.lock:
            for _ in range(MAX_STEPS):
                project = self.store.get(project_id)
                if project is None or not project.active:
                    return
                step: Stage
                if project.desired == "cancelled":
                    stage, step = CANCELLING, teardown.cancel
                else:
                    stage, step = STAGES[project.status]
                retry = project.retry
                if retry is not None and retry.stage == stage and retry.next_attempt_at > self.context.clock():
                    return  # a cancel, or a stage the project moved on to, does not wait for another's retry
                try:
                    again = step(self.context, project)
                except Exception as error:
                    self._failed(project, stage, error)
                    return
                if project.retry is not None:
                    self.store.update(project_id, {"retry": None})
                if not again:
                    return

    def _failed(self, project: Project, stage: str, error: Exception) -> None:
        """Retry a transient error later (until the give-up time), fail the project on any other."""
        if isinstance(error, StageError):
            stage, message = error.stage, error.message
        elif is_transient(error):
            message = str(error) or type(error).__name__
            now = self.context.clock()
            retry = next_retry(
                project.retry, stage, message, now,
                initial_s=self.settings.retry_initial_s, max_s=self.settings.retry_max_s,
            )  # fmt: skip
            waited = now - retry.first_failed_at
            if waited < self.settings.retry_give_up_s:
                log.warning("%s: %s failed for now (attempt %d, next in %.0f s): %s", project.project_id, stage,
                            retry.attempts, retry.next_attempt_at - now, message)  # fmt: skip
                self.store.update(project.project_id, {"retry": retry.model_dump(mode="json")})
                return
            message = f"{message} (gave up after {retry.attempts} attempts in {waited:.0f} s)"
        elif isinstance(error, OrchestratorError | OSError):
            message = str(error)
        else:
            log.exception("%s: %s failed unexpectedly", project.project_id, stage)
            message = f"internal error: {type(error).__name__}: {error}"
        self.fail(project, stage, message)

    def fail(self, project: Project, stage: str, message: str) -> None:
        """Tear everything down (as far as the backends let us) and end the project with the reason."""
        teardown.end_without_model(self.context, project, strict=False)
        self.store.update(project.project_id, {"retry": None})
        final = ProjectStatus.CANCELLED if stage == CANCELLING else ProjectStatus.FAILED
        self.store.transition(
            project.project_id, final, error=ProjectError(stage=stage, message=message), now=self.context.clock()
        )


# The service whose events change a project's facts, per component: only it may have sent them.
SENDERS = {Component.BUILDER: build.BUILDER, Component.AGGREGATOR: deploy.AGGREGATOR}


def sender_refusal(project: Project, event: Event) -> str | None:
    """Why the project cannot have sent `event` (None: it can): the component never ran for it."""
    service = SENDERS.get(event.component)
    if service is not None and not any(handle.name == service for handle in project.deployment):
        return f"project {project.project_id} never ran a {service}"
    return None


def facts(project: Project, event: Event, payload: Any) -> dict[str, Any]:
    """The store fields an event records, where the project's status still wants them (else none)."""
    status = project.status
    key = (event.component, event.event)
    if status in build.BUILD_STATUSES and project.build is None and project.build_failure is None:
        if key == (Component.BUILDER, EventName.SUCCEEDED) and isinstance(payload, BuildResult):
            return build.result_changes(payload)
        if key == (Component.BUILDER, EventName.FAILED) and isinstance(payload, BuilderFailed):
            failure = BuildFailure(
                stage=payload.stage, error=event.error or "the build failed", transient=payload.transient
            )
            return build.failure_changes(failure)
    if status in training.TRAINING_STATUSES and project.training is None:
        if key == (Component.AGGREGATOR, EventName.STARTED) and project.training_started_at is None:
            return {"training_started_at": event.time}
        if isinstance(payload, RoundReport):
            return training.round_changes(project, payload)
        if isinstance(payload, AggregatorFinished):
            return training.summary_changes(project, payload.summary)
    return {}
