"""Teardown: remove a project's services, their MQTT users, and what its backend keeps for it.

Used when training ends (the FL actors go, a model server stays), on cancel and on failure
(everything goes, the project's MLflow identity too). `strict` teardown lets a transient backend
error through after trying every service, so the controller retries it; otherwise errors are
logged and the services counted gone.
A removed actor's MQTT user is deleted with it, and every user of the project when the
project ends (`release_backend`, also called when a project completes).
"""

import logging

from flops_manager.models import Project, ProjectStatus
from flops_manager.orchestration.base import OrchestratorError, TransientOrchestratorError
from flops_manager.stages.context import StageContext
from flops_manager.stages.credentials import revoke_project, revoke_services
from flops_manager.tracking_identities import retire_project

log = logging.getLogger("flops.manager")
INFERENCE = "inference"


def remove_services(ctx: StageContext, project: Project, *, keep_inference: bool, strict: bool) -> None:
    """Undeploy the project's active services (but the model server when `keep_inference`)."""
    fresh = ctx.store.get(project.project_id) or project
    removed: list[str] = []
    retry_later: TransientOrchestratorError | None = None
    for handle in fresh.deployment:
        if not handle.active or (keep_inference and handle.name == INFERENCE):
            continue
        orchestrator = ctx.orchestrators.get(handle.backend)
        if orchestrator is None:
            log.warning("%s of %s runs on %s, which is not enabled: left as it is", handle.name, fresh.project_id,
                        handle.backend)  # fmt: skip
        else:
            try:
                orchestrator.undeploy(handle)
            except TransientOrchestratorError as error:
                if strict:
                    retry_later = error
                    continue
                log.warning("undeploy %s of %s: %s", handle.name, fresh.project_id, error)
            except OrchestratorError as error:
                log.warning("undeploy %s of %s: %s", handle.name, fresh.project_id, error)
        removed.append(handle.name)
    ctx.mark_inactive(fresh.project_id, removed)
    revoke_services(ctx, fresh.project_id, removed)
    if retry_later is not None:
        raise retry_later
    if not keep_inference:
        release_backend(ctx, fresh, strict=strict)


def release_backend(ctx: StageContext, project: Project, *, strict: bool) -> None:
    """Remove what the backend keeps per project (an Oakestra application, say), and the project's MQTT users."""
    revoke_project(ctx, project.project_id)
    orchestrator = ctx.orchestrators.get(project.sla.backend.value)
    if orchestrator is None:
        return
    try:
        orchestrator.undeploy_project(project.project_id)
    except TransientOrchestratorError as error:
        if strict:
            raise
        log.warning("releasing %s on %s: %s", project.project_id, orchestrator.name, error)
    except OrchestratorError as error:
        log.warning("releasing %s on %s: %s", project.project_id, orchestrator.name, error)


def end_without_model(ctx: StageContext, project: Project, *, strict: bool) -> None:
    """A project that ends cancelled or failed: every service goes, and its MLflow identity with them."""
    remove_services(ctx, project, keep_inference=False, strict=strict)
    retire_project(ctx.settings, project, ctx.run_dir(project.project_id))


def cancel(ctx: StageContext, project: Project) -> bool:
    """The user cancelled: remove everything, then the project is cancelled."""
    end_without_model(ctx, project, strict=True)
    ctx.store.transition(project.project_id, ProjectStatus.CANCELLED, now=ctx.clock())
    return False
