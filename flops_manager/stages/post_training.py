"""Post-training: build the inference image (container backends), deploy the model server, wait for /ping.

Without post-training steps, or without a registered model, the project completes at once.
On the local target (or without a registry) the registered model is the artefact: no image
is built, and a model server (`flops.model_server`) runs from the build's environment.
"""

import sys

from pydantic import ValidationError

from flops.actors import inference_builder_command, model_server_command
from flops.build import IMAGE_MODEL_DIR, InferenceBuildOutcome
from flops.net import free_port, http_ok
from flops.sla import PostTrainingStep
from flops_manager.models import Project, ProjectStatus, default_model_name
from flops_manager.orchestration.base import ServiceSpec
from flops_manager.stages import teardown
from flops_manager.stages.build import builds_images
from flops_manager.stages.context import StageContext
from flops_manager.stages.errors import StageError
from flops_manager.tracking_identities import serving_env

STAGE = "post_training"
INFERENCE = teardown.INFERENCE
INFERENCE_BUILDER = "inference-builder"
INFERENCE_RESULT_FILE = "inference-build.json"
INFERENCE_START_TIMEOUT_S = 180.0


def reconcile(ctx: StageContext, project: Project) -> bool:
    """post_training: the image (if asked and possible), then the model server (if asked), then completed."""
    steps = project.sla.post_training_steps
    wants_image = PostTrainingStep.BUILD_IMAGE in steps and builds_images(ctx, project)
    if PostTrainingStep.BUILD_IMAGE in steps and not wants_image:
        ctx.note(project.project_id, STAGE, "skipped",
                 "local target or no registry: the registered model is the artefact, no image")  # fmt: skip
    if wants_image and project.model_version and INFERENCE not in project.image_refs:
        return build_inference_image(ctx, project)
    if PostTrainingStep.DEPLOY_IMAGE not in steps or not project.model_version:
        teardown.release_backend(ctx, project, strict=True)
        ctx.store.transition(project.project_id, ProjectStatus.COMPLETED, now=ctx.clock())
        return False
    server = project.handle(INFERENCE)
    if server is None:
        deploy_model_server(ctx, project)
        return False
    if server.address and http_ok(f"{server.address}/ping"):
        ctx.store.update(project.project_id, {"inference_url": f"{server.address}/invocations"})
        ctx.store.transition(project.project_id, ProjectStatus.COMPLETED, now=ctx.clock())
        return False
    orchestrator = ctx.orchestrator(project)
    state = orchestrator.status(server)
    if state.finished or ctx.clock() - server.started_at > INFERENCE_START_TIMEOUT_S:
        tail = orchestrator.logs(server, tail=15)
        raise StageError(STAGE, f"the model server did not start:\n{tail}")
    return False


def keep_serving(ctx: StageContext, project: Project) -> None:
    """A completed project's model server: advertised only while it answers, started again when it stopped.

    After `flops down` / `flops up` (or a crash) the server's process is gone: the project stops
    advertising its URL and the manager starts the server again from the registered model. A
    server that stops again within its start time-out is left stopped, with the reason noted.
    A project whose server the user removed (or that never had one) advertises no URL.
    """
    server = project.handle(INFERENCE)
    if server is None:
        if project.inference_url:
            ctx.store.update(project.project_id, {"inference_url": None})
        return
    orchestrator = ctx.orchestrators.get(server.backend)
    if orchestrator is None:
        return
    state = orchestrator.status(server)
    if not state.finished:
        if not project.inference_url and server.address and http_ok(f"{server.address}/ping"):
            ctx.store.update(project.project_id, {"inference_url": f"{server.address}/invocations"})
        return
    ctx.mark_inactive(project.project_id, [INFERENCE])
    ctx.store.update(project.project_id, {"inference_url": None})
    if ctx.clock() - server.started_at < INFERENCE_START_TIMEOUT_S:
        tail = orchestrator.logs(server, tail=15)
        ctx.note(project.project_id, INFERENCE, "stopped", f"the model server stopped ({state.detail}):\n{tail}")
        return
    ctx.note(project.project_id, INFERENCE, "restarted",
             f"the model server had stopped ({state.detail or state.status.value}): started again")  # fmt: skip
    deploy_model_server(ctx, project)


def registered_model_uri(project: Project) -> str:
    return f"models:/{project.model_name}/{project.model_version}"


def build_inference_image(ctx: StageContext, project: Project) -> bool:
    """Start or follow the one-shot inference-image build; True once its image is recorded."""
    assert ctx.settings.images is not None
    result_file = ctx.run_dir(project.project_id) / INFERENCE_RESULT_FILE
    handle = project.handle(INFERENCE_BUILDER)
    if handle is None:
        result_file.parent.mkdir(parents=True, exist_ok=True)
        result_file.unlink(missing_ok=True)
        options = [
            *ctx.settings.images.builder_args(), "--customer", project.customer_id,
            "--project", default_model_name(project.sla),  # the image's name: the project's, as in FLOps
            "--platforms", ",".join(project.sla.supported_platforms),
        ]  # fmt: skip
        command = inference_builder_command(
            registered_model_uri(project),
            ctx.settings.tracking_uri,
            ctx.settings.builds_dir,
            result_file,
            options=options,
        )
        spec = ServiceSpec(
            project_id=project.project_id, name=INFERENCE_BUILDER, role="builder", command=command, one_shot=True,
            env=serving_env(ctx.settings, project, ctx.run_dir(project.project_id)),  # reads the model as the project
        )  # fmt: skip
        ctx.add_handles(project.project_id, [ctx.builder().deploy(spec)])
        return False
    state = ctx.builder().status(handle)
    if not state.finished:
        return False
    outcome = read_inference_outcome(result_file.read_text(encoding="utf-8") if result_file.is_file() else "")
    ctx.mark_inactive(project.project_id, [INFERENCE_BUILDER])
    if not outcome.image:
        tail = ctx.builder().logs(handle, tail=10)
        message = outcome.error or f"the inference-image builder exited ({state.detail or state.exit_code})"
        raise StageError(STAGE, f"inference image: {message}\n{tail}".strip())
    ctx.store.update(project.project_id, {"image_refs": {**project.image_refs, INFERENCE: outcome.image}})
    ctx.note(project.project_id, STAGE, "image_built", outcome.image)
    return True


def read_inference_outcome(text: str) -> InferenceBuildOutcome:
    try:
        return InferenceBuildOutcome.model_validate_json(text)
    except ValidationError:
        return InferenceBuildOutcome()


def deploy_model_server(ctx: StageContext, project: Project) -> None:
    """The model server: the inference image on container backends, else `flops.model_server` here."""
    orchestrator = ctx.orchestrator(project)
    port = free_port()
    image = project.image_refs.get(INFERENCE)
    host = "127.0.0.1" if orchestrator.name == "local" else "0.0.0.0"
    if image:
        command = model_server_command(IMAGE_MODEL_DIR, host, port, in_image=True)
        env: dict[str, str] = {}
    else:
        python = (project.build.aggregator_python if project.build else None) or sys.executable
        command = model_server_command(registered_model_uri(project), host, port, python=python)
        env = {
            "MLFLOW_TRACKING_URI": ctx.settings.tracking_uri,
            **serving_env(ctx.settings, project, ctx.run_dir(project.project_id)),  # READ on its model only
        }
    spec = ServiceSpec(
        project_id=project.project_id, name=INFERENCE, role=INFERENCE, image=image, command=command, env=env,
        ports={"http": port},
    )  # fmt: skip
    handle = orchestrator.deploy(spec)
    handle.address = f"http://127.0.0.1:{port}"
    handle.started_at = ctx.clock()  # the start time-out is measured on the stage's clock
    ctx.add_handles(project.project_id, [handle])
