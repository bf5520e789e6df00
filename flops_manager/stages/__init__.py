"""The stages of a project's lifecycle, one module each, over one narrow `StageContext`.

Each stage module has a `reconcile(ctx, project) -> bool`: it looks at the project as stored
(status and recorded facts) and at the world (its services' states, result files), does the
next step, and returns True when it changed the project so that the controller should look
again at once. Stages raise `StageError` to fail the project for good and let transient
errors (`TransientOrchestratorError`, timeouts, 5xx) through, which the controller retries
with backoff. The controller (`flops_manager.controller`) only dispatches by status.
"""
