"""The manager's REST API (Flask): projects, tracking, mock data, tokens, OpenAPI.

FLOps's paths, with and without the trailing slash. Every error is JSON
`{"message": ..., "details": ...}` with the right status; every route but health and the
OpenAPI document needs `Authorization: Bearer <token>`.

The API never fetches the user's repository: a submit validates the SLA and what this
manager can check without the repository, and answers at once; the builder fetches and
checks the repository, and a bad one fails the project at `building`. A client that wants
that answer first asks for a dry run (`POST /api/flops/projects?dry_run=1`), which runs
the builder's check alone, with a time limit, and deploys and stores nothing.
"""

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, Response, g, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from werkzeug.exceptions import HTTPException

from flops.actors import builder_command
from flops.build import BuildOutcome
from flops.data.catalog import BUNDLED_DATASETS, DatasetUnavailableError
from flops.data.partition import Scheme, partition
from flops.processes import stop_group
from flops.runtime_env import process_env
from flops.sla import Backend, ProjectSLA, SLAError, parse_sla
from flops.tracking_server import experiment_url, run_url
from flops_manager.auth import AuthError, Principal, TokenService, can_access
from flops_manager.controller import Controller
from flops_manager.models import Project, ProjectStatus
from flops_manager.nodes import PlacementError, discover_nodes, place_learners
from flops_manager.openapi import openapi_document
from flops_manager.orchestration import ENABLE_HINTS, OrchestratorError
from flops_manager.settings import ManagerSettings

MAX_BODY_BYTES = 1024 * 1024
# Containers get resource_constraints.memory as a hard limit; below this an FL actor cannot start.
MIN_CONTAINER_MEMORY_MB = 512
# FLOps's answers to a submission, word for word: scripts written for FLOps look for them.
PROJECT_STARTED = "New FLOps project started successfully"
MOCK_STARTED = "New Mock-Data-Provider started successfully"
DRY_RUN_VALUES = {"1": True, "true": True, "0": False, "false": False, "": False}
F = TypeVar("F", bound=Callable[..., Any])


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details


class MockDataConfiguration(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset_name: str
    number_of_partitions: int = Field(ge=1, le=1000)
    data_tag: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    scheme: Scheme = Scheme.IID
    alpha: float = Field(default=0.5, gt=0)
    seed: int = 42
    # FLOps started one mock data service per partition on request; here every partition is a
    # node folder on this machine either way, so the flag is accepted and changes nothing.
    one_mock_service_per_partition: bool = False


class MockRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    customer_id: str = Field(default="Admin", alias="customerID")
    mock_data_configuration: MockDataConfiguration


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    customer_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def create_app(controller: Controller, tokens: TokenService) -> Flask:
    app = Flask("flops_manager")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.url_map.strict_slashes = False
    store = controller.store
    settings = controller.settings

    def authenticated(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                g.principal = tokens.authenticate(request.headers.get("Authorization"))
            except AuthError as error:
                raise ApiError(error.status, error.message) from error
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def admin_only() -> None:
        if not g.principal.is_admin:
            raise ApiError(403, "this call needs the admin token")

    def visible_project(project_id: str) -> Project:
        project = store.get(project_id)
        principal: Principal = g.principal
        if project is None or not can_access(principal, project.customer_id):
            raise ApiError(404, f"no project {project_id}")
        return project

    def json_body() -> Any:
        raw = request.get_data(cache=False)
        if not raw:
            raise ApiError(400, "the request needs a JSON (or YAML) body")
        return raw

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> tuple[Response, int]:
        return jsonify({"message": error.message, "details": error.details}), error.status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        return jsonify({"message": error.description, "details": None}), error.code or 500

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response, int]:
        app.logger.exception("unexpected error")
        return jsonify({"message": "internal error", "details": type(error).__name__}), 500

    @app.get("/")
    def health() -> Response:
        return jsonify({"message": "ok"})

    @app.get("/api/openapi.json")
    def openapi() -> Response:
        return jsonify(openapi_document())

    @app.post("/api/flops/projects")
    @authenticated
    def submit_project() -> tuple[Response, int]:
        dry_run = dry_run_requested()
        try:
            sla = parse_sla(json_body())
        except SLAError as error:
            raise ApiError(422, str(error), error.details) from error
        customer = submitting_customer(sla)
        check_submission(sla)
        if dry_run:
            return jsonify(check_repository(sla, settings)), 200
        project = controller.submit(sla, customer)
        location = f"/api/flops/projects/{project.project_id}"
        # 200 with FLOps's message: the original `oak` CLI takes anything but 200 for a failure.
        response = jsonify({"message": PROJECT_STARTED, "project_id": project.project_id, "status_url": location})
        response.headers["Location"] = location
        return response, 200

    def dry_run_requested() -> bool:
        value = request.args.get("dry_run", "").strip().lower()
        if value not in DRY_RUN_VALUES:
            raise ApiError(400, f"dry_run is '{value}': give dry_run=1 (or true) to only check the SLA and repository")
        return DRY_RUN_VALUES[value]

    def submitting_customer(sla: ProjectSLA) -> str:
        """The customer a project belongs to; a customer token submits only for itself."""
        principal: Principal = g.principal
        customer = sla.customer_id
        if principal.is_admin or customer == principal.customer_id:
            return customer
        if customer != "Admin":  # FLOps's default customer means "me"
            raise ApiError(403, f"your token belongs to customer {principal.customer_id}, not {customer}")
        return principal.customer_id

    def check_submission(sla: ProjectSLA) -> None:
        """Refuse what cannot work before anything is stored: all but the repository, which the builder checks."""
        backend = sla.backend.value
        if backend not in controller.orchestrators:
            hint = ENABLE_HINTS.get(backend, "")
            raise ApiError(
                422,
                f"backend '{backend}' is not enabled on this manager" + (f": {hint}" if hint else ""),
                {"field": "backend", "enabled": sorted(controller.orchestrators)},
            )
        if sla.backend is Backend.DOCKER and settings.images is None:
            raise ApiError(
                422,
                "backend 'docker' runs images from a registry, and this manager has none: "
                "set FLOPS_REGISTRY (and FLOPS_REGISTRY_TLS_VERIFY, FLOPS_REGISTRY_AUTH_FILE) and restart it",
                {"field": "backend"},
            )
        if sla.backend is Backend.DOCKER and sla.resource_constraints.memory < MIN_CONTAINER_MEMORY_MB:
            raise ApiError(
                422,
                f"resource_constraints.memory is {sla.resource_constraints.memory} MB, and the docker backend "
                f"applies it as each container's limit: give at least {MIN_CONTAINER_MEMORY_MB} MB "
                "(Flower and the model run in every FL actor)",
                {"field": "resource_constraints.memory", "minimum": MIN_CONTAINER_MEMORY_MB},
            )
        if sla.backend in (Backend.LOCAL, Backend.DOCKER):  # learners on this machine's node folders
            config = sla.training_configuration
            try:
                place_learners(discover_nodes(settings.nodes_dir), config.data_tags, config.min_available_clients)
            except PlacementError as error:
                raise ApiError(422, str(error), {"field": "training_configuration.data_tags"}) from error

    @app.get("/api/flops/projects")
    @authenticated
    def list_projects() -> Response:
        statuses = [s for s in request.args.getlist("status") for s in s.split(",") if s]
        try:
            wanted = [ProjectStatus(s) for s in statuses] or None
        except ValueError as error:
            raise ApiError(
                400, f"unknown status filter: {error}", {"allowed": [s.value for s in ProjectStatus]}
            ) from error
        principal: Principal = g.principal
        customer = None if principal.is_admin else principal.customer_id
        return jsonify([project_view(p) for p in store.list(customer, wanted)])

    @app.get("/api/flops/projects/<project_id>")
    @authenticated
    def get_project(project_id: str) -> Response:
        return jsonify(project_view(visible_project(project_id), full=True))

    @app.get("/api/flops/projects/<project_id>/events")
    @authenticated
    def project_events(project_id: str) -> Response:
        return jsonify([e.model_dump(mode="json") for e in visible_project(project_id).events])

    @app.get("/api/flops/projects/<project_id>/logs")
    @authenticated
    def project_logs(project_id: str) -> Response:
        project = visible_project(project_id)
        component = request.args.get("component")
        try:
            tail = min(int(request.args.get("tail", "200")), 5000)
        except ValueError as error:
            raise ApiError(400, "tail must be a whole number of lines", {"field": "tail"}) from error
        names = [component] if component else controller.components(project)
        unknown = [n for n in names if n not in controller.components(project)]
        if unknown:
            raise ApiError(404, f"no component {unknown[0]}", {"components": controller.components(project)})
        try:
            return jsonify({name: controller.service_logs(project, name, tail) for name in names})
        except OrchestratorError as error:
            status = 503 if error.transient else 502
            raise ApiError(
                status, f"the {project.sla.backend.value} backend could not give the logs: {error}"
            ) from error

    @app.delete("/api/flops/projects/<project_id>")
    @authenticated
    def cancel_project(project_id: str) -> tuple[Response, int]:
        project = visible_project(project_id)
        if project.active:
            controller.cancel(project_id)
            return jsonify({"project_id": project_id, "message": "cancelling"}), 202
        controller.stop_inference(project_id)
        return jsonify({"project_id": project_id, "message": f"project already {project.status.value}"}), 200

    @app.get("/api/flops/tracking")
    @authenticated
    def tracking() -> Response:
        return jsonify({"tracking_server_url": settings.tracking_uri})

    @app.post("/api/flops/mocks")
    @authenticated
    def mocks() -> tuple[Response, int]:
        try:
            body = MockRequest.model_validate_json(json_body())
        except ValidationError as error:
            raise ApiError(422, "invalid mock data request", error.errors(include_url=False)) from error
        config = body.mock_data_configuration
        try:
            histogram = partition(
                config.dataset_name, config.number_of_partitions, config.data_tag, Path(settings.nodes_dir),
                config.scheme, config.alpha, config.seed, allow_files=False,
            )  # fmt: skip
        except DatasetUnavailableError as error:
            raise ApiError(422, str(error), {"available": list(BUNDLED_DATASETS)}) from error
        except ValueError as error:  # more partitions than rows, say
            raise ApiError(422, str(error), {"field": "mock_data_configuration"}) from error
        rows = {node: sum(counts.values()) for node, counts in histogram.items()}
        return jsonify({"message": MOCK_STARTED, "data_tag": config.data_tag, "nodes": rows}), 200

    @app.post("/api/flops/tokens")
    @authenticated
    def create_token() -> tuple[Response, int]:
        admin_only()
        try:
            body = TokenRequest.model_validate_json(json_body())
        except ValidationError as error:
            raise ApiError(422, "invalid token request", error.errors(include_url=False)) from error
        return jsonify({"customer_id": body.customer_id, "token": tokens.create_customer_token(body.customer_id)}), 201

    @app.delete("/api/flops/database")
    @authenticated
    def reset_database() -> Response:
        admin_only()
        if store.active():
            raise ApiError(409, "projects are still active: cancel them first")
        for project in store.list():  # served models go with the projects they belong to
            controller.stop_inference(project.project_id)
        store.delete_all()
        return jsonify({"message": "database reset"})

    return app


def check_repository(sla: ProjectSLA, settings: ManagerSettings) -> dict[str, Any]:
    """Fetch and check the SLA's repository with the builder's check-only mode; build nothing.

    The builder runs as a child in its own process group, without the broker's settings (a
    dry run publishes no events), and is killed with its group after
    `settings.dry_run_timeout_s`. Returns what the check found; raises `ApiError` with the
    builder's whole reason (422), or when the check ran out of time (504).
    """
    scratch_root = settings.home / "dry-runs"
    scratch_root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=scratch_root))
    result_file = scratch / "outcome.json"
    command = builder_command(
        f"dry-run-{scratch.name}", sla.ml_repo_url, sla.ml_repo_ref, settings.builds_dir, result_file, check_only=True
    )
    env = {key: value for key, value in process_env().items() if not key.startswith("FLOPS_MQTT_")}
    timeout = settings.dry_run_timeout_s
    try:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        ) as child:  # fmt: skip
            try:
                output, _ = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                stop_group(child.pid, grace=2.0)
                child.communicate()
                raise ApiError(
                    504,
                    f"checking {sla.ml_repo_url} took longer than {timeout:.0f} s, so the dry run stopped it: "
                    "check that the git server answers, or submit without dry_run and follow the build",
                    {"stage": "timeout", "field": "ml_repo_url", "timeout_s": timeout},
                ) from None
        if not result_file.is_file():
            tail = "\n".join(output.decode(errors="replace").splitlines()[-15:])
            raise ApiError(
                500,
                f"the repository check exited ({child.returncode}) without a result:\n{tail}",
                {"stage": "check"},
            )
        try:
            outcome = BuildOutcome.model_validate_json(result_file.read_text(encoding="utf-8"))
        except ValidationError as error:
            raise ApiError(
                500, "the repository check wrote neither a result nor a failure", {"stage": "check"}
            ) from error
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if outcome.failure is not None:
        raise ApiError(422, outcome.failure.error, {"stage": outcome.failure.stage, "field": "ml_repo_url"})
    assert outcome.result is not None  # a BuildOutcome holds exactly one
    return {
        "valid": True,
        "repo_url": sla.ml_repo_url,
        "ref": sla.ml_repo_ref,
        "commit": outcome.result.commit,
        "backend": sla.backend.value,
        "stage_durations": outcome.result.stage_durations,
    }


def project_view(project: Project, full: bool = False) -> dict[str, Any]:
    """What the API shows of a project: state, timings, rounds, links; no internals."""
    view: dict[str, Any] = {
        "project_id": project.project_id,
        "customer_id": project.customer_id,
        "status": project.status.value,
        "created_at": project.created_at,
        "updated_at": project.updated_at,
        "rounds_done": sum(1 for report in project.rounds if report.finished),
        "error": project.error.model_dump() if project.error else None,
        "model": {"name": project.model_name, "version": project.model_version},
    }
    if project.retry is not None:  # a transient error the manager retries: stage, attempts, next attempt, reason
        view["retry"] = project.retry.model_dump(mode="json")
    if not full:
        return view
    training = project.training
    view.update(
        {
            "sla": project.sla.model_dump(mode="json", by_alias=True),
            "stages": {
                name: {"started_at": t.started_at, "ended_at": t.ended_at, "duration_s": t.duration_s}
                for name, t in project.stages.items()
            },
            "rounds": [r.model_dump(mode="json") for r in project.rounds],
            "tracking": {
                "url": project.tracking_url,
                "experiment_id": training.experiment_id if training else None,
                "run_id": training.parent_run_id if training else None,
                "experiment_url": (
                    experiment_url(project.tracking_url, training.experiment_id)
                    if project.tracking_url and training and training.experiment_id else None
                ),
                "run_url": (
                    run_url(project.tracking_url, training.experiment_id, training.parent_run_id)
                    if project.tracking_url and training and training.experiment_id and training.parent_run_id
                    else None
                ),
            },
            "model": {
                "name": project.model_name,
                "version": project.model_version,
                "uri": training.model_uri if training else None,
                "input": training.model_input.model_dump() if training and training.model_input else None,
                "registered_uri": (
                    f"models:/{project.model_name}/{project.model_version}" if project.model_version else None
                ),
            },
            "build": project.build.model_dump(mode="json") if project.build else None,
            "inference_url": project.inference_url,
            "image_refs": project.image_refs,
            "components": sorted({h.name for h in project.deployment}),
            "deployment": [h.model_dump(mode="json", exclude={"log_path"}) for h in project.deployment],
        }
    )  # fmt: skip
    return view
