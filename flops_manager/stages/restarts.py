"""Learners that die while their project trains are started again, a bounded number of times.

Every learner's `ServiceSpec` is kept when it is deployed (`SpecRecorder`, wrapped around each
backend by the controller) in the project's private run folder, without its MQTT password.
While the project trains, a learner on the local or docker backend whose service has
FAILED, EXITED or is GONE is removed and deployed again from that spec, with a new MQTT user
(new password); each restart is a note in the project's events. After
`MAX_LEARNER_RESTARTS` restarts of one learner the project fails with the learner's log tail.

The new SuperNode has the dead one's key: it takes its node over at once
(`aggregator.node_takeover`), and the message the dead one had pulled is sent to it again
(`aggregator.grace_grid`), so the round goes on with both.
"""

import logging
from collections.abc import Mapping
from pathlib import Path

from pydantic import ValidationError

from flops.events import Component
from flops_manager.models import ProcessHandle, Project
from flops_manager.orchestration.base import Orchestrator, ServiceSpec, ServiceState, ServiceStatus
from flops_manager.stages.context import StageContext
from flops_manager.stages.credentials import LEARNER_PREFIX, actor_mqtt_env, spec_env_without_secrets
from flops_manager.stages.errors import StageError

log = logging.getLogger("flops.manager")
MAX_LEARNER_RESTARTS = 3
RESTARTING_BACKENDS = ("local", "docker")
SPECS_DIR = "services"
RESTARTED = "restarted"


def spec_path(runs_dir: Path, project_id: str, name: str) -> Path:
    return runs_dir / project_id / SPECS_DIR / f"{name}.json"


class SpecRecorder(Orchestrator):
    """A backend that also keeps each learner's spec (without its MQTT password) for restarts."""

    def __init__(self, inner: Orchestrator, runs_dir: Path) -> None:
        self.inner = inner
        self.name = inner.name
        self.runs_dir = runs_dir

    def deploy(self, spec: ServiceSpec) -> ProcessHandle:
        handle = self.inner.deploy(spec)
        if spec.role == Component.LEARNER.value:
            path = spec_path(self.runs_dir, spec.project_id, spec.name)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            kept = spec.model_copy(update={"env": spec_env_without_secrets(spec.env)})
            partial = path.with_suffix(".tmp")
            partial.write_text(kept.model_dump_json(indent=2), encoding="utf-8")
            partial.chmod(0o600)
            partial.replace(path)
        return handle

    def status(self, handle: ProcessHandle) -> ServiceState:
        return self.inner.status(handle)

    def logs(self, handle: ProcessHandle, tail: int = 200) -> str:
        return self.inner.logs(handle, tail)

    def undeploy(self, handle: ProcessHandle) -> None:
        self.inner.undeploy(handle)

    def undeploy_project(self, project_id: str) -> bool:
        return self.inner.undeploy_project(project_id)

    def node_clusters(self, nodes: Mapping[str, Path]) -> dict[str, list[str]]:
        return self.inner.node_clusters(nodes)

    def cluster_placement(self, cluster: str) -> str | None:
        return self.inner.cluster_placement(cluster)

    def node_placement(self, node: str) -> str | None:
        return self.inner.node_placement(node)

    def __getattr__(self, name: str) -> object:  # whatever else the backend offers
        return getattr(self.inner, name)


def recorded_spec(ctx: StageContext, project_id: str, name: str) -> ServiceSpec | None:
    path = spec_path(ctx.settings.runs_dir, project_id, name)
    try:
        return ServiceSpec.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError):
        return None


def restarts_of(project: Project, name: str) -> int:
    return sum(1 for e in project.events if e.component == name and e.event.startswith(RESTARTED))


def keep_learners(ctx: StageContext, project: Project) -> None:
    """Start again every learner of a training project whose service has stopped; fail after the bound."""
    for handle in project.deployment:
        if not handle.active or not handle.name.startswith(LEARNER_PREFIX) or handle.backend not in RESTARTING_BACKENDS:
            continue
        orchestrator = ctx.orchestrators.get(handle.backend)
        if orchestrator is None:
            continue
        state = orchestrator.status(handle)
        if state.status is ServiceStatus.RUNNING:
            continue
        restart(ctx, project, handle, orchestrator, state)


def restart(
    ctx: StageContext, project: Project, handle: ProcessHandle, orchestrator: Orchestrator, state: ServiceState
) -> None:
    project_id = project.project_id
    fresh = ctx.store.get(project_id) or project
    done = restarts_of(fresh, handle.name)
    reason = state.detail or (f"exit code {state.exit_code}" if state.exit_code is not None else state.status.value)
    tail = orchestrator.logs(handle, tail=15)
    if done >= MAX_LEARNER_RESTARTS:
        raise StageError(
            "training",
            f"learner {handle.name} stopped again ({reason}) after {done} restarts; "
            f"giving up (at most {MAX_LEARNER_RESTARTS}). Its last log lines:\n{tail}",
        )
    spec = recorded_spec(ctx, project_id, handle.name)
    if spec is None:
        raise StageError("training", f"learner {handle.name} stopped ({reason}) and cannot be restarted: "
                         f"its service spec was not kept. Its last log lines:\n{tail}")  # fmt: skip
    spec.env.update(actor_mqtt_env(ctx, project_id, Component.LEARNER, spec.node, stage="training"))
    orchestrator.undeploy(handle)  # what is left of it: a stopped container, a lingering group
    new = orchestrator.deploy(spec)
    ctx.mark_inactive(project_id, [handle.name])
    ctx.add_handles(project_id, [new])
    number = done + 1
    log.warning("%s: learner %s stopped (%s): restarted (%d of at most %d)", project_id, handle.name, reason, number,
                MAX_LEARNER_RESTARTS)  # fmt: skip
    ctx.note(project_id, handle.name, f"{RESTARTED}-{number}",
             f"the learner stopped ({reason}); restarted ({number} of at most {MAX_LEARNER_RESTARTS})")  # fmt: skip
