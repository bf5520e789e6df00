"""Orchestrator backends: one small interface (`base`), several ways to run FL actors.

`local` (processes on this machine), `docker` (a Docker Engine or Podman API), `oakestra`
(Oakestra's system manager). `OrchestrationSettings` says which are enabled and
`build_orchestrators` makes them; `ENABLE_HINTS` says how to enable one that is off.
"""

from flops_manager.orchestration.base import (
    Orchestrator,
    OrchestratorError,
    ServiceSpec,
    ServiceState,
    TransientOrchestratorError,
)
from flops_manager.orchestration.settings import ENABLE_HINTS, OrchestrationSettings, build_orchestrators

__all__ = [
    "ENABLE_HINTS",
    "OrchestrationSettings",
    "Orchestrator",
    "OrchestratorError",
    "ServiceSpec",
    "ServiceState",
    "TransientOrchestratorError",
    "build_orchestrators",
]
