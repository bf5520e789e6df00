"""The `oakestra` backend: FL actors as Oakestra microservices, through the system manager's REST API.

One Oakestra application per FLOps project; each `ServiceSpec` (observatory, builder, aggregator,
learners, inference server) becomes one SLA v2.0 microservice added to it with `POST /api/service/`,
then one instance per `POST /api/service/<id>/instance`. A `ProcessHandle` keeps
"<applicationID>/<microserviceID>" in `ref` and the service's round-robin address in `address`,
so a restarted manager can find, watch and remove what it deployed.

Addresses: the manager assigns every service's `rr_ip` (10.30.x.y) itself, from an
`AddressAllocator` that records each address in the database and never hands one out twice, so
the aggregator's address is known before it runs and can be given to the learners.

The system manager has quirks this client absorbs (see docs/oakestra.md): JSON answers encoded
twice, POST routes that answer 308 without their trailing slash, failures reported with HTTP 200
in `failed_services`, a single-application GET with an empty body (the per-user list is used
instead), Mongo ids as `{"$oid": ...}`, and 10-minute access tokens renewed with a refresh token.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import requests
from pydantic import BaseModel, Field, SecretStr, ValidationError, model_validator

from flops_manager.models import ProcessHandle
from flops_manager.orchestration.addresses import DEFAULT_POOL, AddressAllocator, AddressError
from flops_manager.orchestration.base import (
    Orchestrator,
    OrchestratorError,
    ServiceSpec,
    ServiceState,
    ServiceStatus,
)

log = logging.getLogger(__name__)

SLA_VERSION = "v2.0"
NAME_PATTERN = re.compile(r"^[a-zA-Z0-9]{1,30}$")
# Oakestra refuses application names and namespaces longer than 10 characters.
MAX_NAME = 10
DEFAULT_MEMORY_MB = 100
# Statuses of an instance on its way up; RUNNING itself included.
PENDING_STATUSES = frozenset({"REQUESTED", "CLUSTER_SCHEDULED", "NODE_SCHEDULED", "CREATING", "CREATED", "RUNNING"})
# Scheduling gave up: no cluster or worker can take the service.
NEGATIVE_STATUSES = frozenset(
    {
        "NoActiveClusterWithCapacity",
        "TargetClusterNotFound",
        "TargetClusterNotActive",
        "TargetClusterNoCapacity",
        "NO_WORKER_CAPACITY",
        "NO_QUALIFIED_WORKER_FOUND",
        "NO_NODE_FOUND",
    }
)
# Oakestra re-deploys FAILED / DEAD instances by itself (a one-shot job that exits non-zero too),
# so the first time one is seen the service counts as failed.
FAILED_STATUSES = frozenset({"FAILED", "DEAD"})
ENV_PREFIX = "FLOPS_OAKESTRA_"


class OakestraConfigError(OrchestratorError):
    """The Oakestra backend is not configured (or configured unsafely); the message says how to fix it."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OakestraSettings(BaseModel):
    """How to reach and log in to Oakestra's system manager. No credential has a default."""

    url: str = Field(description="system manager base URL, e.g. https://oakestra.example:10000")
    username: str = Field(min_length=1)
    password: SecretStr
    organization: str | None = None
    ca_file: Path | None = None
    insecure: bool = False
    timeout_s: float = Field(default=30.0, gt=0)
    # Renew the access token when less than this is left (Oakestra's tokens last 10 minutes).
    refresh_margin_s: float = Field(default=60.0, ge=0)
    # Assumed access token lifetime when the token does not carry an `exp` claim.
    token_lifetime_s: float = Field(default=600.0, gt=0)
    address_pool: str = DEFAULT_POOL
    # FLOps node name -> Oakestra placement ("cluster", "cluster1,cluster2" or "cluster/worker").
    placement: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _safe_transport(self) -> OakestraSettings:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"FLOPS_OAKESTRA_URL must be an http(s) URL, not {self.url!r}")
        self.url = self.url.rstrip("/")
        loopback = _is_loopback(parts.hostname)
        if self.insecure and not loopback:
            raise ValueError(
                "FLOPS_OAKESTRA_INSECURE=1 is only accepted for a system manager on this machine (loopback); "
                f"for {parts.hostname} give its CA certificate in FLOPS_OAKESTRA_CA_FILE"
            )
        if parts.scheme == "http" and not loopback:
            raise ValueError(
                f"refusing to send Oakestra credentials in clear text to {parts.hostname}: put the system manager "
                "behind TLS (a reverse proxy, see docs/oakestra.md) and use an https:// URL, or reach it through "
                "an SSH tunnel on 127.0.0.1"
            )
        if self.ca_file is not None and not self.ca_file.is_file():
            raise ValueError(f"FLOPS_OAKESTRA_CA_FILE {self.ca_file} is not a file")
        return self

    @property
    def verify(self) -> bool | str:
        """What `requests` gets as `verify`: on by default, the CA file if one is given."""
        if self.insecure:
            return False
        return str(self.ca_file) if self.ca_file is not None else True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OakestraSettings:
        """Settings from FLOPS_OAKESTRA_* variables; raise `OakestraConfigError` naming what is missing."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name, "").strip()
            return value or None

        url, username = get("URL"), get("USERNAME")
        password, password_file = get("PASSWORD"), get("PASSWORD_FILE")
        missing = [ENV_PREFIX + name for name, value in (("URL", url), ("USERNAME", username)) if value is None]
        if password is None and password_file is None:
            missing.append(f"{ENV_PREFIX}PASSWORD or {ENV_PREFIX}PASSWORD_FILE")
        if missing:
            raise OakestraConfigError(f"the oakestra backend needs {', '.join(missing)} (there are no defaults)")
        if password is not None and password_file is not None:
            raise OakestraConfigError(f"set only one of {ENV_PREFIX}PASSWORD and {ENV_PREFIX}PASSWORD_FILE")
        if password_file is not None:
            try:
                password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as error:
                raise OakestraConfigError(f"cannot read {ENV_PREFIX}PASSWORD_FILE {password_file}: {error}") from error
            if not password:
                raise OakestraConfigError(f"{ENV_PREFIX}PASSWORD_FILE {password_file} is empty")
        placement: dict[str, str] = {}
        if get("PLACEMENT"):
            try:
                placement = json.loads(get("PLACEMENT") or "{}")
            except json.JSONDecodeError as error:
                raise OakestraConfigError(f"{ENV_PREFIX}PLACEMENT is not a JSON object: {error}") from error
        fields: dict[str, Any] = {
            "url": url,
            "username": username,
            "password": password,
            "organization": get("ORGANIZATION"),
            "ca_file": get("CA_FILE"),
            "insecure": (get("INSECURE") or "0").lower() in ("1", "true", "yes"),
            "placement": placement,
        }
        for name, field in (("TIMEOUT", "timeout_s"), ("ADDRESS_POOL", "address_pool")):
            if get(name):
                fields[field] = get(name)
        try:
            return cls.model_validate(fields)
        except ValidationError as error:
            reasons = "; ".join(str(problem["msg"]).removeprefix("Value error, ") for problem in error.errors())
            raise OakestraConfigError(f"invalid Oakestra settings: {reasons}") from error


class OakestraServiceSpec(ServiceSpec):
    """A `ServiceSpec` with Oakestra-only hints; the backend reads them with defaults from plain specs too."""

    instances: int = Field(default=1, ge=1, le=100)
    clusters: list[str] = Field(default_factory=list)
    addons: list[str] = Field(default_factory=list)
    vgpus: int = Field(default=0, ge=0)


# -- HTTP ------------------------------------------------------------------------------------------


def decode_body(text: str) -> Any:
    """An answer's JSON, decoded again while it is a string (Oakestra double-encodes); None if empty."""
    if not text.strip():
        return None
    try:
        value: Any = json.loads(text)
    except ValueError:
        return text
    while isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            break
    return value


def mongo_id(value: Any) -> str:
    """A Mongo id as a plain string: Oakestra sends `{"$oid": "..."}` or a string."""
    if isinstance(value, dict):
        return str(value.get("$oid", ""))
    return "" if value is None else str(value)


def error_message(value: Any) -> str:
    """Oakestra's explanation inside an error answer (its shapes vary between blueprints)."""
    if isinstance(value, dict):
        for key in ("message", "msg", "description", "reason", "error", "errors"):
            inner = value.get(key)
            if inner:
                return error_message(inner) if isinstance(inner, dict | list) else str(inner)
        return json.dumps(value)
    if isinstance(value, list):
        return "; ".join(error_message(item) for item in value)
    return "" if value is None else str(value)


def _token_expiry(token: str) -> float | None:
    """The `exp` claim of a JWT, without verifying it (the server does); None if there is none."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


_MISSING = object()


class OakestraClient:
    """Authenticated calls to the system manager, with token renewal and the quirks absorbed."""

    def __init__(
        self,
        settings: OakestraSettings,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.session = session or requests.Session()
        self.session.verify = settings.verify
        self._clock = clock
        self._lock = threading.RLock()
        self._token: str | None = None
        self._token_expires = 0.0
        self._refresh_token: str | None = None
        self._user_id: str | None = None

    def close(self) -> None:
        self.session.close()

    # -- transport ---------------------------------------------------------------------------------

    def _send(self, method: str, path: str, body: Any, headers: dict[str, str]) -> requests.Response:
        url = self.settings.url + path
        for _ in range(2):
            try:
                response = self.session.request(
                    method,
                    url,
                    json=body,
                    headers=headers,
                    timeout=self.settings.timeout_s,
                    verify=self.settings.verify,
                    allow_redirects=False,
                )
            except requests.exceptions.SSLError as error:
                raise OrchestratorError(
                    f"TLS verification of the Oakestra system manager at {self.settings.url} failed: {error}. "
                    "Give its CA certificate in FLOPS_OAKESTRA_CA_FILE"
                ) from error
            except requests.RequestException as error:
                raise OrchestratorError(f"cannot reach Oakestra at {self.settings.url}: {error}") from error
            if response.status_code not in (307, 308) or "Location" not in response.headers:
                return response
            # POST routes live under a trailing slash; follow the redirect once, same origin only
            # (the bearer token must not travel elsewhere), keeping method and body.
            target = urljoin(url, response.headers["Location"])
            if urlsplit(target)[:2] != urlsplit(self.settings.url)[:2] or target == url:
                break
            url = target
        raise OrchestratorError(f"Oakestra redirected {method} {path} again or elsewhere ({response.status_code})")

    def request(self, method: str, path: str, body: Any = None, *, auth: bool = True, missing_ok: bool = False) -> Any:
        """Call the system manager; the decoded answer, `_MISSING` for a 404 when `missing_ok`.

        A 401 renews the token and retries once. Errors raise `OrchestratorError` with Oakestra's message.
        """
        response: requests.Response | None = None
        for attempt in range(2):
            headers = {"Accept": "application/json"}
            token = self._access_token() if auth else None
            if token:
                headers["Authorization"] = f"Bearer {token}"
            response = self._send(method, path, body, headers)
            if response.status_code == 401 and auth and attempt == 0:
                with self._lock:
                    if self._token == token:  # not already renewed by another thread
                        self._renew()
                continue
            break
        assert response is not None
        if missing_ok and response.status_code == 404:
            return _MISSING
        value = decode_body(response.text)
        if not response.ok:
            reason = error_message(value) or response.reason
            raise OrchestratorError(f"Oakestra {method} {path} failed (HTTP {response.status_code}): {reason}")
        return value

    # -- authentication ----------------------------------------------------------------------------

    def _access_token(self) -> str:
        with self._lock:
            if self._token is None:
                self.login()
            elif self._token_expires - self._clock() < self.settings.refresh_margin_s:
                self._renew()
            assert self._token is not None
            return self._token

    def login(self) -> None:
        body: dict[str, str] = {
            "username": self.settings.username,
            "password": self.settings.password.get_secret_value(),
        }
        if self.settings.organization:
            body["organization_name"] = self.settings.organization
        response = self._send("POST", "/api/auth/login", body, {"Accept": "application/json"})
        value = decode_body(response.text)
        if not response.ok or not isinstance(value, dict) or not value.get("token"):
            reason = error_message(value) or response.reason
            raise OrchestratorError(
                f"Oakestra login as {self.settings.username!r} failed (HTTP {response.status_code}): {reason}"
            )
        self._set_token(str(value["token"]))
        self._refresh_token = str(value.get("refresh_token") or "") or None

    def _set_token(self, token: str) -> None:
        self._token = token
        expiry = _token_expiry(token)
        self._token_expires = expiry if expiry is not None else self._clock() + self.settings.token_lifetime_s

    def _renew(self) -> None:
        """Refresh the access token with the refresh token; log in again if that is refused."""
        if self._refresh_token:
            response = self._send(
                "POST",
                "/api/auth/refresh",
                None,
                {"Accept": "application/json", "Authorization": f"Bearer {self._refresh_token}"},
            )
            value = decode_body(response.text)
            if response.ok and isinstance(value, dict) and value.get("token"):
                self._set_token(str(value["token"]))
                if value.get("refresh_token"):
                    self._refresh_token = str(value["refresh_token"])
                return
            log.info("Oakestra token refresh refused (HTTP %s); logging in again", response.status_code)
        self.login()

    def user_id(self) -> str:
        """The caller's user id, which `GET /api/applications/<userid>` wants (Mongo `_id`, not the name)."""
        with self._lock:
            if self._user_id is None:
                user = self.request("GET", f"/api/user/{quote(self.settings.username, safe='')}")
                user_id = mongo_id(user.get("_id")) if isinstance(user, dict) else ""
                if not user_id:
                    raise OrchestratorError(f"Oakestra did not say the id of user {self.settings.username!r}")
                self._user_id = user_id
            return self._user_id


# -- the orchestrator ------------------------------------------------------------------------------


@dataclass(frozen=True)
class OakestraApp:
    app_id: str
    name: str
    namespace: str


def _alnum(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]", "", text)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def application_name(project_id: str) -> str:
    """The Oakestra application name of a project: "fl" + 8 hex digits of a hash of its id."""
    return "fl" + _digest(project_id)[:8]


def application_namespace(project_id: str, attempt: int) -> str:
    """Namespace candidates: the next one is tried when a name + namespace is taken by someone else."""
    return "ns" + _digest(f"{project_id}#{attempt}")[:8]


def application_description(project_id: str) -> str:
    return f"FLOps project {project_id}"


def split_ref(handle: ProcessHandle) -> tuple[str, str]:
    app_id, _, service_id = handle.ref.partition("/")
    if not app_id or not service_id:
        raise OrchestratorError(f"{handle.name}: {handle.ref!r} is not an Oakestra '<application>/<service>' ref")
    return app_id, service_id


def placement_constraints(spec: ServiceSpec, placement: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """SLA constraints from `spec.node` ("cluster", "c1,c2" or "cluster/worker") and the spec's hints.

    `placement` maps FLOps node names to such strings, so learners placed on node directories
    land on the Oakestra cluster or worker that holds that node's data.
    """
    clusters: list[str] = list(getattr(spec, "clusters", None) or [])
    direct: list[tuple[str, str]] = []
    node = spec.node
    if node and placement and node in placement:
        node = placement[node]
    for part in (node or "").split(","):
        part = part.strip()
        if not part:
            continue
        if "/" in part:
            cluster, _, worker = part.partition("/")
            direct.append((cluster.strip(), worker.strip()))
        else:
            clusters.append(part)
    constraints: list[dict[str, Any]] = []
    if len(direct) > 1:
        raise OrchestratorError(f"{spec.name}: only one 'cluster/worker' placement can be given, not {node!r}")
    if direct:
        cluster, worker = direct[0]
        constraint: dict[str, Any] = {"type": "direct", "cluster": cluster}
        if worker:
            constraint["node"] = worker
        constraints.append(constraint)
    if clusters:
        constraints.append({"type": "clusters", "allowed": list(dict.fromkeys(clusters))})
    addons = list(getattr(spec, "addons", None) or [])
    if addons:
        constraints.append({"type": "addons", "needs": addons})
    return constraints


def check_deployable(spec: ServiceSpec) -> None:
    """Refuse what Oakestra cannot run: a service without an image, host folders to mount."""
    if not spec.image:
        raise OrchestratorError(
            f"{spec.name}: Oakestra runs container images and this service has none "
            "(build images with the image builder and push them to a registry the workers reach)"
        )
    if spec.read_only_mounts:
        raise OrchestratorError(
            f"{spec.name}: host folders cannot be mounted into Oakestra services; bake the data into the "
            "image or provide it on the worker (see docs/oakestra.md)"
        )


def map_status(doc: Mapping[str, Any]) -> ServiceState:
    """A service document's state: failed as soon as any instance failed or could not be placed."""
    instances = [item for item in doc.get("instance_list") or [] if isinstance(item, dict)]
    seen = [
        (str(item.get("status") or ""), str(item.get("status_detail") or ""), item.get("instance_number"))
        for item in instances
    ]
    if not seen:
        seen = [(str(doc.get("status") or ""), str(doc.get("status_detail") or ""), None)]

    def what(number: Any) -> str:
        return "the service" if number is None else f"instance {number}"

    for status, detail, number in seen:
        if status in NEGATIVE_STATUSES:
            text = f"Oakestra could not place {what(number)}: {status}" + (f" ({detail})" if detail else "")
            return ServiceState(status=ServiceStatus.FAILED, detail=text)
    for status, detail, number in seen:
        if status in FAILED_STATUSES:
            text = f"Oakestra reports {what(number)} {status}" + (f": {detail}" if detail else "")
            return ServiceState(status=ServiceStatus.FAILED, detail=text)
    live = [entry for entry in seen if entry[0] != "UNDEPLOYED"]
    if not live:
        return ServiceState(status=ServiceStatus.GONE, detail="undeployed in Oakestra")
    if all(status == "COMPLETED" for status, _, _ in live):
        return ServiceState(status=ServiceStatus.EXITED, exit_code=0)
    statuses = sorted({status or "no instance yet" for status, _, _ in live})
    unknown = [status for status in statuses if status not in PENDING_STATUSES and status != "COMPLETED"]
    detail = ", ".join(statuses) if not unknown else f"unknown Oakestra status {', '.join(unknown)}"
    return ServiceState(status=ServiceStatus.RUNNING, detail=detail)


class OakestraOrchestrator(Orchestrator):
    name = "oakestra"

    def __init__(
        self,
        settings: OakestraSettings,
        allocator: AddressAllocator,
        *,
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.allocator = allocator
        self.client = OakestraClient(settings, session=session, clock=clock)
        self._apps: dict[str, OakestraApp] = {}
        self._app_lock = threading.Lock()

    @classmethod
    def from_env(cls, store: Any, env: Mapping[str, str] | None = None) -> OakestraOrchestrator:
        """The backend configured from FLOPS_OAKESTRA_*, allocating addresses in `store`'s database."""
        settings = OakestraSettings.from_env(env)
        return cls(settings, AddressAllocator.from_store(store, pool=settings.address_pool))

    def close(self) -> None:
        self.client.close()

    # -- applications ------------------------------------------------------------------------------

    def _list_apps(self) -> list[dict[str, Any]]:
        apps = self.client.request("GET", f"/api/applications/{self.client.user_id()}")
        return [app for app in apps or [] if isinstance(app, dict)]

    @staticmethod
    def _app_ref(app: Mapping[str, Any]) -> OakestraApp:
        app_id = mongo_id(app.get("applicationID")) or mongo_id(app.get("_id"))
        if not app_id:
            raise OrchestratorError(f"Oakestra listed application {app.get('application_name')!r} without an id")
        return OakestraApp(app_id, str(app.get("application_name")), str(app.get("application_namespace")))

    @staticmethod
    def _find(apps: list[dict[str, Any]], name: str, namespace: str) -> dict[str, Any] | None:
        for app in apps:
            if app.get("application_name") == name and app.get("application_namespace") == namespace:
                return app
        return None

    def application(self, project_id: str, *, create: bool = False) -> OakestraApp | None:
        """The project's Oakestra application, created if asked.

        Ours is the one with the project's name and description, whatever its namespace: a new one
        takes the first namespace candidate whose name + namespace nobody holds (another project
        whose name hashes alike, or an application made by hand).
        """
        with self._app_lock:
            if project_id in self._apps:
                return self._apps[project_id]
            name, description = application_name(project_id), application_description(project_id)
            apps = self._list_apps()
            conflicts = 0
            while True:
                for app in apps:
                    if app.get("application_name") == name and app.get("application_desc") == description:
                        self._apps[project_id] = self._app_ref(app)
                        return self._apps[project_id]
                if not create:
                    return None
                namespace = next(
                    (
                        candidate
                        for candidate in (application_namespace(project_id, n) for n in range(50))
                        if self._find(apps, name, candidate) is None
                    ),
                    None,
                )
                if namespace is None:
                    raise OrchestratorError(f"no free Oakestra application namespace for project {project_id}")
                try:
                    apps = self._create_app(name, namespace, description)
                except _Conflict:
                    conflicts += 1
                    if conflicts > 3:
                        raise OrchestratorError(
                            f"Oakestra keeps answering 409 for application {name}/{namespace}"
                        ) from None
                    apps = self._list_apps()  # created meanwhile, perhaps by ourselves: look again
                    continue
                created = self._find(apps, name, namespace)
                if created is None:
                    raise OrchestratorError(f"Oakestra created application {name}/{namespace} but does not list it")
                self._apps[project_id] = self._app_ref(created)
                return self._apps[project_id]

    def _create_app(self, name: str, namespace: str, description: str) -> list[dict[str, Any]]:
        sla = {
            "sla_version": SLA_VERSION,
            "customerID": self.settings.username,
            "applications": [
                {
                    "applicationID": "",
                    "application_name": name,
                    "application_namespace": namespace,
                    "application_desc": description,
                    "microservices": [],
                }
            ],
        }
        try:
            # The answer lists ALL the caller's applications, not just the new one.
            apps = self.client.request("POST", "/api/application/", sla)
        except OrchestratorError as error:
            if "(HTTP 409)" in str(error):
                raise _Conflict from error
            raise
        return [app for app in apps or [] if isinstance(app, dict)]

    def undeploy_project(self, project_id: str) -> bool:
        """Delete the project's whole application (all its services); False if there is none."""
        app = self.application(project_id)
        if app is None:
            return False
        self.client.request("DELETE", f"/api/application/{app.app_id}")
        with self._app_lock:
            self._apps.pop(project_id, None)
        return True

    # -- services ----------------------------------------------------------------------------------

    def _service_names(self, app_id: str) -> set[str]:
        services = self.client.request("GET", f"/api/services/{app_id}")
        return {str(svc.get("microservice_name") or svc.get("service_name")) for svc in services or [] if svc}

    @staticmethod
    def _service_name(spec: ServiceSpec, taken: set[str]) -> str:
        base = _alnum(spec.name) or _alnum(spec.role) or "svc"
        if len(base) <= MAX_NAME and base not in taken:
            return base
        for attempt in range(1000):
            candidate = base[:6] + _digest(f"{spec.name}#{attempt}")[:4]
            if candidate not in taken:
                return candidate
        raise OrchestratorError(f"no free Oakestra service name for {spec.name}")

    def microservice(self, spec: ServiceSpec, name: str, rr_ip: str) -> dict[str, Any]:
        """The SLA v2.0 microservice for `spec`."""
        check_deployable(spec)
        service: dict[str, Any] = {
            "microserviceID": "",
            "microservice_name": name,
            "microservice_namespace": (_alnum(spec.role) or "flops")[:MAX_NAME],
            "virtualization": "container",
            "code": spec.image,
            "cmd": [str(part) for part in spec.command],
            "environment": [f"{key}={value}" for key, value in spec.env.items()],
            "memory": int(spec.memory_mb or DEFAULT_MEMORY_MB),
            # Oakestra's schema takes whole vCPUs.
            "vcpus": max(1, math.ceil(spec.vcpus or 1)),
            "vgpus": int(getattr(spec, "vgpus", 0) or 0),
            "storage": 0,
            "one_shot": bool(spec.one_shot),
            "addresses": {"rr_ip": rr_ip},
        }
        if spec.ports:
            service["port"] = ";".join(str(port) for port in sorted(set(spec.ports.values())))
        constraints = placement_constraints(spec, self.settings.placement)
        if constraints:
            service["constraints"] = constraints
        return service

    def deploy(self, spec: ServiceSpec) -> ProcessHandle:
        instances = int(getattr(spec, "instances", 1) or 1)
        check_deployable(spec)  # before anything is created or allocated
        app = self.application(spec.project_id, create=True)
        assert app is not None
        name = self._service_name(spec, self._service_names(app.app_id))
        try:
            rr_ip = self.allocator.allocate(f"{spec.project_id}/{spec.name}")
        except AddressError as error:
            raise OrchestratorError(f"{spec.name}: {error}") from error
        try:
            microservice = self.microservice(spec, name, rr_ip)
        except OrchestratorError:
            self.allocator.release(rr_ip)
            raise
        sla = {
            "sla_version": SLA_VERSION,
            "customerID": self.settings.username,
            "applications": [
                {
                    "applicationID": app.app_id,
                    "application_name": app.name,
                    "application_namespace": app.namespace,
                    "application_desc": application_description(spec.project_id),
                    "microservices": [microservice],
                }
            ],
        }
        try:
            result = self.client.request("POST", "/api/service/", sla)
        except OrchestratorError:
            self.allocator.release(rr_ip)
            raise
        answer = result if isinstance(result, dict) else {}
        # HTTP 200 does not mean it worked: failures only show in `failed_services`.
        failed = answer.get("failed_services")
        service_id = mongo_id(answer.get("job_id"))
        if failed:
            self.allocator.release(rr_ip)
            reasons = "; ".join(
                f"{item.get('service_name', name)}: {error_message(item) or 'status ' + str(item.get('status'))}"
                if isinstance(item, dict)
                else str(item)
                for item in failed
            )
            raise OrchestratorError(f"Oakestra refused service {spec.name} ({name}): {reasons}")
        if not service_id or service_id == "None":
            self.allocator.release(rr_ip)
            raise OrchestratorError(f"Oakestra did not return an id for service {spec.name} ({name}): {result!r}")
        handle = ProcessHandle(name=spec.name, backend=self.name, ref=f"{app.app_id}/{service_id}", address=rr_ip)
        try:
            for _ in range(instances):
                self.client.request("POST", f"/api/service/{service_id}/instance")
        except OrchestratorError:
            self._remove(handle)
            raise
        return handle

    def _service(self, handle: ProcessHandle) -> dict[str, Any] | None:
        _, service_id = split_ref(handle)
        doc = self.client.request("GET", f"/api/service/{service_id}", missing_ok=True)
        return doc if isinstance(doc, dict) else None

    def status(self, handle: ProcessHandle) -> ServiceState:
        doc = self._service(handle)
        if doc is None:
            return ServiceState(status=ServiceStatus.GONE, detail="the service no longer exists in Oakestra")
        return map_status(doc)

    def logs(self, handle: ProcessHandle, tail: int = 200) -> str:
        doc = self._service(handle)
        if doc is None:
            return ""
        instances = [item for item in doc.get("instance_list") or [] if isinstance(item, dict)]
        lines: list[str] = []
        for item in instances:
            text = str(item.get("logs") or "")
            if len(instances) > 1:
                lines.append(f"--- instance {item.get('instance_number')} ---")
            lines.extend(text.splitlines())
        return "\n".join(lines[-tail:])

    def undeploy(self, handle: ProcessHandle) -> None:
        self._remove(handle)

    def _remove(self, handle: ProcessHandle) -> None:
        _, service_id = split_ref(handle)
        doc = self._service(handle)
        if doc is not None:
            for item in doc.get("instance_list") or []:
                number = item.get("instance_number") if isinstance(item, dict) else None
                if number is not None:
                    self.client.request("DELETE", f"/api/service/{service_id}/instance/{number}", missing_ok=True)
            self.client.request("DELETE", f"/api/service/{service_id}", missing_ok=True)
        if handle.address:
            self.allocator.release(handle.address)


class _Conflict(Exception):
    """Oakestra answered 409: an application with this name and namespace exists."""
