"""What a stage may use: the store, the orchestrators, the settings, a clock, the project's run folder."""

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from flops_manager.models import EventRecord, ProcessHandle, Project
from flops_manager.orchestration import ENABLE_HINTS
from flops_manager.orchestration.base import Orchestrator, OrchestratorError
from flops_manager.settings import ManagerSettings
from flops_manager.store import ProjectStore

log = logging.getLogger("flops.manager")
# The backend that runs one-shot builds: builds make environments and images on this machine.
BUILD_BACKEND = "local"


@dataclass
class StageContext:
    """The narrow world of a stage. `clock` is `time.time` except in tests, which move it by hand."""

    store: ProjectStore
    orchestrators: Mapping[str, Orchestrator]
    settings: ManagerSettings
    clock: Callable[[], float] = time.time
    # When the manager first saw a project's aggregator gone without a result (this process only).
    aggregator_gone_at: dict[str, float] = field(default_factory=dict)

    def run_dir(self, project_id: str) -> Path:
        """The project's folder on this machine: result files, the training spec, local actors' state."""
        return self.settings.runs_dir / project_id

    def orchestrator(self, project: Project) -> Orchestrator:
        """The backend the project's SLA names; a permanent error when this manager has not enabled it."""
        backend = project.sla.backend.value
        orchestrator = self.orchestrators.get(backend)
        if orchestrator is None:
            hint = ENABLE_HINTS.get(backend, f"configure the {backend} backend and restart the manager")
            enabled = ", ".join(sorted(self.orchestrators))
            raise OrchestratorError(f"backend {backend!r} is not enabled on this manager (enabled: {enabled}); {hint}")
        return orchestrator

    def builder(self) -> Orchestrator:
        return self.orchestrators[BUILD_BACKEND]

    def add_handles(self, project_id: str, handles: list[ProcessHandle]) -> None:
        project = self.store.get(project_id)
        if project is None or not handles:
            return
        deployment = [*project.deployment, *handles]
        self.store.update(project_id, {"deployment": [h.model_dump(mode="json") for h in deployment]})

    def mark_inactive(self, project_id: str, names: list[str]) -> None:
        """Record that the services called `names` are gone (removed or finished)."""
        project = self.store.get(project_id)
        if project is None or not names:
            return
        deployment = [h.model_copy(update={"active": False}) if h.name in names else h for h in project.deployment]
        self.store.update(project_id, {"deployment": [h.model_dump(mode="json") for h in deployment]})

    def note(self, project_id: str, component: str, event: str, message: str) -> None:
        """Add a manager-made entry to the project's event log, once per (component, event)."""
        record = EventRecord(time=self.clock(), component=component, event=event, message=message)
        self.store.record_event(project_id, f"manager/{component}/{event}", record)
