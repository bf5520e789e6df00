"""Build: run the image builder once for the project and record its outcome.

The builder reports through builder/succeeded or builder/failed and writes a `BuildOutcome`
to its result file; whichever the manager sees first becomes the recorded fact (`build` or
`build_failure`), and only the recorded fact moves the project on.
"""

import sys
from typing import Any

from pydantic import ValidationError

from flops.actors import builder_command
from flops.build import BuildFailure, BuildOutcome, BuildResult
from flops.events import Component
from flops.sla import Backend
from flops_manager.disk import sweep_builds
from flops_manager.models import Project, ProjectStatus, default_model_name
from flops_manager.orchestration.base import ServiceSpec
from flops_manager.stages.context import StageContext
from flops_manager.stages.credentials import actor_mqtt_env
from flops_manager.stages.errors import StageError, TransientStageError

STAGE = "building"
BUILDER = "builder"
RESULT_FILE = "build-result.json"
BUILD_STATUSES = (ProjectStatus.SUBMITTED, ProjectStatus.BUILDING)


def builds_images(ctx: StageContext, project: Project) -> bool:
    """Container backends train from OCI images when a registry is configured."""
    return ctx.settings.images is not None and project.sla.backend is not Backend.LOCAL


def result_changes(result: BuildResult) -> dict[str, Any]:
    """The store fields that record a successful build."""
    return {"build": result.model_dump(mode="json"), "image_refs": dict(result.images)}


def failure_changes(failure: BuildFailure) -> dict[str, Any]:
    """The store field that records a failed build."""
    return {"build_failure": failure.model_dump(mode="json")}


def reconcile(ctx: StageContext, project: Project) -> bool:
    """submitted/building: start the builder once, follow it, move on once its outcome is recorded."""
    if project.build is not None:
        ctx.mark_inactive(project.project_id, [BUILDER])
        if project.build.dependency_warnings:  # the pins the builder relaxed, in the project's events
            ctx.note(project.project_id, BUILDER, "dependencies", "\n".join(project.build.dependency_warnings))
        return ctx.store.transition(project.project_id, ProjectStatus.DEPLOYING, now=ctx.clock())
    failure = project.build_failure
    if failure is not None and failure.transient:
        # Forget this attempt; after the controller's backoff the next reconcile starts a new builder.
        ctx.mark_inactive(project.project_id, [BUILDER])
        ctx.store.update(project.project_id, {"build_failure": None})
        raise TransientStageError(STAGE, failure.error)
    if failure is not None:
        raise StageError(STAGE, failure.error)
    handle = project.handle(BUILDER)
    if handle is None and not project.sla.job.runs_code:
        ctx.store.update(project.project_id, result_changes(no_code_build(ctx, project)))
        return True
    if handle is None:
        start(ctx, project)
        return False
    state = ctx.builder().status(handle)
    if not state.finished:
        return False
    outcome = read_outcome(ctx, project.project_id)
    if outcome is None:
        tail = ctx.builder().logs(handle, tail=15)
        raise StageError(STAGE, f"the builder exited ({state.detail or state.exit_code}) without a result:\n{tail}")
    if outcome.result is not None:
        ctx.store.update(project.project_id, result_changes(outcome.result))
    elif outcome.failure is not None:
        ctx.store.update(project.project_id, failure_changes(outcome.failure))
    return True


def no_code_build(ctx: StageContext, project: Project) -> BuildResult:
    """What a job without user code (statistics) runs: this installation's Flower and data libraries,
    and an empty folder for the app bundle."""
    folder = ctx.run_dir(project.project_id) / "no-code"
    folder.mkdir(parents=True, exist_ok=True)
    return BuildResult(commit="", repo_dir=str(folder), learner_python=sys.executable, aggregator_python=sys.executable)


def start(ctx: StageContext, project: Project) -> None:
    """Deploy the builder as a one-shot job on this machine; the project is then building."""
    ctx.orchestrator(project)  # a backend this manager lacks fails the project before anything is built
    sweep_builds(ctx.store, ctx.settings, starting=project.project_id)  # builds only ended projects used
    sla = project.sla
    run_dir = ctx.run_dir(project.project_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    result_file = run_dir / RESULT_FILE
    result_file.unlink(missing_ok=True)
    options: list[str] = []
    if builds_images(ctx, project):
        assert ctx.settings.images is not None
        options = [
            "--target", "oci", *ctx.settings.images.builder_args(),
            "--platforms", ",".join(sla.supported_platforms), "--customer", project.customer_id,
            "--image-name", project.model_name or default_model_name(sla),
        ]  # fmt: skip
    command = builder_command(
        project.project_id, sla.ml_repo_url, sla.ml_repo_ref, ctx.settings.builds_dir, result_file, options=options
    )
    spec = ServiceSpec(
        project_id=project.project_id, name=BUILDER, role=BUILDER, command=command,
        env=actor_mqtt_env(ctx, project.project_id, Component.BUILDER, stage=STAGE), one_shot=True,
    )  # fmt: skip
    ctx.add_handles(project.project_id, [ctx.builder().deploy(spec)])
    ctx.store.transition(project.project_id, ProjectStatus.BUILDING, now=ctx.clock())


def read_outcome(ctx: StageContext, project_id: str) -> BuildOutcome | None:
    """The builder's result file, or None when it wrote none (or something unreadable)."""
    path = ctx.run_dir(project_id) / RESULT_FILE
    if not path.is_file():
        return None
    try:
        return BuildOutcome.model_validate_json(path.read_text(encoding="utf-8"))
    except (ValidationError, OSError):
        return None
