"""The manager's REST API (Flask): projects, tracking, mock data, tokens, OpenAPI.

FLOps's paths, with and without the trailing slash. Every error is JSON
`{"message": ..., "details": ...}` with the right status; every route but health and the
OpenAPI document needs `Authorization: Bearer <token>`; the project routes' GETs also take the
dashboard's session cookie (`flops_manager.dashboard`), which the manager serves under `/ui`.

The API never fetches the user's repository: a submit validates the SLA and what this
manager can check without the repository, and answers at once; the builder fetches and
checks the repository, and a bad one fails the project at `building`. A client that wants
that answer first asks for a dry run (`POST /api/flops/projects?dry_run=1`), which runs
the builder's check alone, with a time limit, and deploys and stores nothing.
"""

import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

from flask import Flask, Response, g, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from flops.actors import builder_command
from flops.build import BuildOutcome
from flops.data.catalog import BUNDLED_DATASETS, DatasetUnavailableError
from flops.data.ownership import OPERATOR, TagOwnership
from flops.data.partition import partition
from flops.learner_records import learners_view
from flops.processes import stop_group
from flops.runtime_env import process_env
from flops.sla import Backend, DocumentError, Job, ProjectSLA, SLAError, load_document, parse_sla
from flops_manager.auth import AuthError, Principal, TokenService
from flops_manager.auth import visible_project as project_of
from flops_manager.bodies import MockDataConfiguration, MockRequest, TokenRequest
from flops_manager.controller import Controller
from flops_manager.dashboard.routes import dashboard_blueprint
from flops_manager.dashboard.sessions import SESSION_COOKIE, DashboardSessions
from flops_manager.disk import QuotaExceeded, check_quota
from flops_manager.models import Project, ProjectStatus
from flops_manager.nodes import PlacementError, discover_nodes, place_learners, tag_listing, tag_owners, tags_owned
from flops_manager.openapi import openapi_document
from flops_manager.orchestration import ENABLE_HINTS, OrchestratorError
from flops_manager.project_view import project_view
from flops_manager.settings import ManagerSettings
from flops_manager.sources import SourceRefused

# Containers get resource_constraints.memory as a hard limit; below this an FL actor cannot start.
MIN_CONTAINER_MEMORY_MB = 512
# FLOps's answers to a submission, word for word: scripts written for FLOps look for them.
PROJECT_STARTED = "New FLOps project started successfully"
MOCK_STARTED = "New Mock-Data-Provider started successfully"
DRY_RUN_VALUES = {"1": True, "true": True, "0": False, "false": False, "": False}
# The dashboard's pages read these with their session cookie (GET only: changes need the header).
PROJECTS_PATH = "/api/flops/projects"
TAIL_PATTERN = re.compile(r"^[0-9]{1,9}$")
F = TypeVar("F", bound=Callable[..., Any])
__all__ = ["MockDataConfiguration", "MockRequest", "TokenRequest", "create_app"]


class ApiError(Exception):
    def __init__(self, status: int, message: str, details: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = details
        self.headers = headers or {}


class SlowWork:
    """A bounded pool for what a request may wait on (dry runs, mock data): never more than
    `workers` at once, and no queue: one more is refused at once with 503 and Retry-After, so
    slow work never takes every request thread."""

    def __init__(self, workers: int, retry_after_s: float) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="api-slow")
        self.slots = threading.BoundedSemaphore(workers)
        self.retry_after = str(max(1, int(retry_after_s)))

    def run(self, what: str, timeout_s: float, work: Callable[[], Any]) -> Any:
        if not self.slots.acquire(blocking=False):
            raise ApiError(
                503, f"the manager is busy with other {what}s: try again in {self.retry_after} s",
                {"retry_after_s": int(self.retry_after)}, {"Retry-After": self.retry_after},
            )  # fmt: skip

        def guarded() -> Any:
            try:
                return work()
            finally:
                self.slots.release()

        future = self.pool.submit(guarded)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            raise ApiError(
                504, f"the {what} took longer than {timeout_s:.0f} s: it goes on, try again later",
                {"timeout_s": timeout_s},
            ) from None  # fmt: skip


def create_app(controller: Controller, tokens: TokenService) -> Flask:
    app = Flask("flops_manager")
    store = controller.store
    settings = controller.settings
    limits = settings.limits
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes
    app.url_map.strict_slashes = False
    slow = SlowWork(limits.slow_workers, min(settings.dry_run_timeout_s, 30.0))
    mocks_lock = threading.Lock()  # node folders are written by one mock request at a time

    sessions = DashboardSessions()
    app.register_blueprint(dashboard_blueprint(controller, tokens, sessions))

    def credentials() -> str | None:
        """The request's `Authorization` header; for reading projects, a dashboard session's too."""
        header = request.headers.get("Authorization")
        if header is None and request.method in ("GET", "HEAD") and request.path.startswith(PROJECTS_PATH):
            session = sessions.get(request.cookies.get(SESSION_COOKIE))
            return session.authorization() if session is not None else None
        return header

    def authenticated(view: F) -> F:
        @wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                g.principal = tokens.authenticate(credentials())
            except AuthError as error:
                raise ApiError(error.status, error.message) from error
            return view(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def admin_only() -> None:
        if not g.principal.is_admin:
            raise ApiError(403, "this call needs the admin token")

    def visible_project(project_id: str) -> Project:
        project = project_of(store, g.principal, project_id)
        if project is None:
            raise ApiError(404, f"no project {project_id}")
        return project

    def document(yaml_allowed: bool = True) -> Any:
        """The request's JSON (or YAML) body, decoded within the limits; 400/422 naming what is wrong."""
        raw = request.get_data(cache=False)
        if not raw:
            raise ApiError(400, "the request needs a JSON" + (" (or YAML)" if yaml_allowed else "") + " body")
        try:
            return load_document(raw, yaml_allowed=yaml_allowed, max_depth=limits.max_nesting_depth)
        except DocumentError as error:
            raise ApiError(error.status, str(error), {"limit": limits.max_nesting_depth}) from error
        except SLAError as error:
            raise ApiError(422, str(error), error.details) from error

    @app.before_request
    def plain_urls() -> None:
        """No NUL or other control character in the path or the query: 400 before any route."""
        texts = [request.path, *request.args.keys(), *request.args.values()]
        if any(re.search(r"[\x00-\x1f\x7f]", text) for text in texts):
            raise ApiError(400, "the URL holds a control character (a NUL, say): remove it")

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> tuple[Response, int]:
        response = jsonify({"message": error.message, "details": error.details})
        response.headers.update(error.headers)
        return response, error.status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response, int]:
        message = error.description
        if isinstance(error, RequestEntityTooLarge):
            message = f"the body is larger than {limits.max_body_bytes} bytes (FLOPS_API_MAX_BODY_BYTES)"
        response = jsonify({"message": message, "details": None})
        for name, value in error.get_headers():  # Allow on 405, say
            if name.lower() != "content-type":
                response.headers[name] = value
        return response, error.code or 500

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
            sla = parse_sla(document())
        except SLAError as error:
            raise ApiError(422, str(error), error.details) from error
        customer = submitting_customer(sla.customer_id)
        check_source(sla)
        check_submission(sla, customer)
        if dry_run and not sla.job.runs_code:
            return jsonify({"valid": True, "job": sla.job.value}), 200
        if dry_run:
            checked = slow.run("dry run", settings.dry_run_timeout_s + 15, lambda: check_repository(sla, settings))
            return jsonify(checked), 200
        try:
            check_quota(store, settings, customer)
        except QuotaExceeded as error:
            raise ApiError(429, error.message, error.details) from error
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

    def submitting_customer(customer: str) -> str:
        """The customer a project (or mock data) belongs to; a customer token acts only for itself."""
        principal: Principal = g.principal
        if principal.is_admin or customer == principal.customer_id:
            return customer
        if customer != OPERATOR:  # FLOps's default customer means "me"
            raise ApiError(403, f"your token belongs to customer {principal.customer_id}, not {customer}")
        return principal.customer_id

    def check_source(sla: ProjectSLA) -> None:
        """Refuse a repository this manager does not take, from the URL alone (no oracle)."""
        if not sla.job.runs_code:  # a statistics job fetches no repository
            return
        try:
            settings.sources.check(sla.ml_repo_url, settings.home, admin=g.principal.is_admin,
                                   state=[settings.nodes_dir])  # fmt: skip
        except SourceRefused as error:
            raise ApiError(422, error.message, {"field": "ml_repo_url"}) from error

    def check_submission(sla: ProjectSLA, customer: str) -> None:
        """Refuse what cannot work before anything is stored: all but the repository, which the builder checks."""
        explained = sla.explain.registered_name if sla.job is Job.EXPLAIN and sla.explain is not None else None
        if explained is not None and not explained.startswith(f"{customer}."):
            raise ApiError(
                403,
                f"customer {customer} explains only its own models: models:/{customer}.NAME/VERSION, not {explained}",
                {"field": "explain.model_uri"},
            )
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
                place_learners(
                    discover_nodes(settings.nodes_dir), config.data_tags, config.min_available_clients, customer
                )
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

    @app.get("/api/flops/projects/<project_id>/learners")
    @authenticated
    def project_learners(project_id: str) -> Response:
        """Each learner's figures per round and the outliers flagged (`flops.learner_records`); `?round=N` for one."""
        project = visible_project(project_id)
        wanted = request.args.get("round")
        if wanted is not None and not (wanted.isascii() and wanted.isdigit()):
            raise ApiError(400, f"round is '{wanted}': give a round number, e.g. ?round=2", {"field": "round"})
        rounds = [(r.round, r.per_learner) for r in project.rounds if wanted is None or r.round == int(wanted)]
        return jsonify(learners_view(rounds).model_dump(mode="json"))

    @app.get("/api/flops/projects/<project_id>/logs")
    @authenticated
    def project_logs(project_id: str) -> Response:
        project = visible_project(project_id)
        component = request.args.get("component")
        raw_tail = request.args.get("tail", "200").strip()
        if not TAIL_PATTERN.match(raw_tail):
            raise ApiError(
                400, f"tail must be a whole number of lines (at most {limits.max_log_lines})", {"field": "tail"}
            )
        tail = min(int(raw_tail), limits.max_log_lines)
        names = [component] if component else controller.components(project)
        unknown = [n for n in names if n not in controller.components(project)]
        if unknown:
            raise ApiError(404, f"no component {unknown[0]}", {"components": controller.components(project)})
        try:
            return jsonify({name: bounded(controller.service_logs(project, name, tail)) for name in names})
        except OrchestratorError as error:
            status = 503 if error.transient else 502
            raise ApiError(
                status, f"the {project.sla.backend.value} backend could not give the logs: {error}"
            ) from error

    def bounded(text: str) -> str:
        """At most `max_log_bytes` of a log, its end (whatever the backend gave)."""
        data = text.encode("utf-8", errors="replace")
        if len(data) <= limits.max_log_bytes:
            return text
        return data[-limits.max_log_bytes :].decode("utf-8", errors="ignore").split("\n", 1)[-1]

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
        """The tracking server and the caller's MLflow login: a customer's own user and password."""
        from flops.tracking_auth import TrackingAuthError
        from flops_manager.tracking_identities import customer_login

        principal: Principal = g.principal
        try:
            return jsonify(customer_login(settings, None if principal.is_admin else principal.customer_id))
        except TrackingAuthError as error:
            status = 503 if error.transient else 502
            raise ApiError(status, f"the tracking server could not give a login: {error}") from error

    @app.post("/api/flops/mocks")
    @authenticated
    def mocks() -> tuple[Response, int]:
        try:
            body = MockRequest.model_validate(document(yaml_allowed=False))
        except ValidationError as error:
            raise ApiError(422, "invalid mock data request", _problems(error)) from error
        principal: Principal = g.principal
        owner = submitting_customer(body.customer_id)
        config = body.mock_data_configuration
        if config.number_of_partitions > limits.max_mock_nodes:
            raise ApiError(
                422,
                f"number_of_partitions is {config.number_of_partitions}, and this manager makes at most "
                f"{limits.max_mock_nodes} node folders (FLOPS_MAX_MOCK_NODES)",
                {"field": "mock_data_configuration.number_of_partitions", "maximum": limits.max_mock_nodes},
            )
        if not principal.is_admin and config.number_of_clusters:
            raise ApiError(
                403,
                "the nodes' clusters are the operator's topology: only the admin token sets number_of_clusters",
                {"field": "mock_data_configuration.number_of_clusters"},
            )
        if not principal.is_admin and config.dataset_name not in BUNDLED_DATASETS:
            raise ApiError(
                403,
                f"customer tokens make mock data from the bundled data sets only ({', '.join(BUNDLED_DATASETS)}); "
                "ask the admin for others",
                {"field": "mock_data_configuration.dataset_name", "available": list(BUNDLED_DATASETS)},
            )

        def make() -> dict[str, Any]:
            with mocks_lock:
                nodes = discover_nodes(settings.nodes_dir)
                if tag_owners(nodes, config.data_tag) - {owner}:
                    raise ApiError(
                        409,
                        f"the data tag '{config.data_tag}' is taken by another owner's data: choose another tag name",
                        {"field": "mock_data_configuration.data_tag"},
                    )
                owned = tags_owned(nodes, owner)
                if config.data_tag not in owned and len(owned) >= limits.max_tags_per_customer:
                    raise ApiError(
                        429,
                        f"customer {owner} owns {len(owned)} data tags, the most this manager keeps per customer "
                        f"(FLOPS_MAX_TAGS_PER_CUSTOMER): reuse one of them",
                        {"field": "mock_data_configuration.data_tag", "maximum": limits.max_tags_per_customer},
                    )
                try:
                    return partition(
                        config.dataset_name, config.number_of_partitions, config.data_tag, Path(settings.nodes_dir),
                        config.scheme, config.alpha, config.seed, allow_files=False,
                        ownership=TagOwnership(owner=owner, shared=config.shared),
                        clusters=config.number_of_clusters or None,
                    )  # fmt: skip
                except DatasetUnavailableError as error:
                    raise ApiError(422, str(error), {"available": list(BUNDLED_DATASETS)}) from error
                except ValueError as error:  # more partitions than rows, say
                    raise ApiError(422, str(error), {"field": "mock_data_configuration"}) from error

        histogram = slow.run("mock data request", limits.mock_timeout_s, make)
        rows = {node: sum(counts.values()) for node, counts in histogram.items()}
        return jsonify({"message": MOCK_STARTED, "data_tag": config.data_tag, "owner": owner, "nodes": rows}), 200

    @app.get("/api/flops/data")
    @authenticated
    def data_tags() -> Response:
        """The data tags the caller's projects may train on (every tag for the admin), with their nodes."""
        principal: Principal = g.principal
        customer = None if principal.is_admin else principal.customer_id
        listing = tag_listing(discover_nodes(settings.nodes_dir), customer)
        if customer is not None:  # a shared tag's owner is another customer's name: not shown
            for entry in listing:
                entry["owners"] = [owner for owner in entry["owners"] if owner == customer]  # type: ignore[attr-defined]
        return jsonify(listing)

    @app.post("/api/flops/tokens")
    @authenticated
    def create_token() -> tuple[Response, int]:
        admin_only()
        try:
            body = TokenRequest.model_validate(document(yaml_allowed=False))
        except ValidationError as error:
            raise ApiError(422, "invalid token request", _problems(error)) from error
        try:
            token = tokens.create_customer_token(body.customer_id)
        except ValueError as error:
            raise ApiError(422, str(error), {"field": "customer_id"}) from error
        record = tokens.record_of(token)
        return jsonify({"customer_id": body.customer_id, "token": token, "token_id": record["token_id"]}), 201

    @app.get("/api/flops/tokens")
    @authenticated
    def list_tokens() -> Response:
        admin_only()
        return jsonify(tokens.list_tokens())

    @app.delete("/api/flops/tokens/<token_id>")
    @authenticated
    def revoke_token(token_id: str) -> Response:
        """Revoke a token at once (rotation: create the new one first, then revoke the old)."""
        admin_only()
        record = next((doc for doc in tokens.list_tokens() if doc.get("token_id") == token_id), None)
        if record is None:
            raise ApiError(404, f"no token {token_id}: GET /api/flops/tokens lists them")
        if record.get("role") == "admin" and sum(doc.get("role") == "admin" for doc in tokens.list_tokens()) == 1:
            raise ApiError(409, "this is the last admin token: register another one (FLOPS_ADMIN_TOKEN) first")
        tokens.revoke(token_id)
        return jsonify({"revoked": token_id, "customer_id": record.get("customer_id")})

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
    builder's whole reason (422), when the check ran out of time (504), or when the builder
    ended without an outcome (502).
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
                502,
                f"the repository check exited ({child.returncode}) without a result:\n{tail}",
                {"stage": "check"},
            )
        try:
            outcome = BuildOutcome.model_validate_json(result_file.read_text(encoding="utf-8"))
        except ValidationError as error:
            raise ApiError(
                502, "the repository check wrote neither a result nor a failure", {"stage": "check"}
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


def _problems(error: ValidationError) -> list[Any]:
    """A body's validation problems as JSON (a model validator's context holds the exception itself)."""
    return list(error.errors(include_url=False, include_context=False))
