"""FLOps manager: REST API, project store, event listener, lifecycle and orchestrator backends."""
