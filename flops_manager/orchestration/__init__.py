"""Orchestrator backends: one small interface, several ways to run FL actors."""

from flops_manager.orchestration.base import Orchestrator, OrchestratorError, ServiceSpec, ServiceState

__all__ = ["Orchestrator", "OrchestratorError", "ServiceSpec", "ServiceState"]
