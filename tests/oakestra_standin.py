"""A stand-in for Oakestra's system manager REST API, faithful to docs in /work/shared/reference/oakestra.md.

Oakestra cannot run on these machines (no Docker engine, no root worker), so the backend is tested
against this: a threaded HTTP server on 127.0.0.1 implementing the calls FLOps uses with their
documented answers and quirks: JWT-shaped access tokens that expire (lifetime configurable),
refresh tokens, the SLA v2.0 schema checks (422), `POST /api/application/` answering with ALL the
caller's applications double-encoded, 409 for a taken name + namespace, `POST /api/service/`
answering `job_id` / `deployed_services` / `failed_services` (a failure can come with HTTP 200),
`POST /api/service/<id>/instance` answering "ok" at once (for unknown ids too) while the instance
moves REQUESTED -> CLUSTER_SCHEDULED -> NODE_SCHEDULED -> CREATING -> RUNNING one step per poll,
scheduling that ends in a negative status or FAILED (then rescheduled, as Oakestra does), the
empty-body single-application GET, 308 for POST routes without their slash, 501 for PUT.
`outage` makes every call answer one status (503 from a proxy while the system manager restarts),
and `stop()` takes the server away (connection refused), for the backend's transient errors.

With `run_locally=True` each instance's `cmd` runs as a process on this machine (the image is
ignored) in its own process group with the service's environment, status RUNNING while it lives,
COMPLETED on exit 0 and FAILED otherwise, its output in the instance's `logs`. Oakestra's semantic
addresses are emulated by rewriting every rr_ip the stand-in knows to 127.0.0.1 in the command and
environment, which lets an FL project run end to end through the Oakestra API on one machine.
Every request is recorded (`requests`) for contract tests.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import socket
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from flops.processes import ManagedProcess

NAME = re.compile(r"^[a-zA-Z0-9]{1,30}$")
RR_IP = re.compile(r"^10\.30\.(25[0-5]|2[0-4]\d|1?\d?\d)\.(25[0-5]|2[0-4]\d|1?\d?\d)$")
PORT = re.compile(r"^\d{1,5}(:\d{1,5})?(/(tcp|udp))?(;\d{1,5}(:\d{1,5})?(/(tcp|udp))?)*$")
SCHEDULING = ["REQUESTED", "CLUSTER_SCHEDULED", "NODE_SCHEDULED", "CREATING", "RUNNING"]
CLUSTER_NEGATIVE = {
    "NoActiveClusterWithCapacity",
    "TargetClusterNotFound",
    "TargetClusterNotActive",
    "TargetClusterNoCapacity",
}
WORKER_NEGATIVE = {"NO_WORKER_CAPACITY", "NO_QUALIFIED_WORKER_FOUND", "NO_NODE_FOUND"}
CONSTRAINT_TYPES = {"direct", "latency", "geo", "addons", "clusters"}
MICROSERVICE_FIELDS = {
    "microserviceID", "microservice_name", "microservice_namespace", "virtualization", "code", "cmd", "args",
    "environment", "memory", "vcpus", "vgpus", "vtpus", "storage", "bandwidth_in", "bandwidth_out", "port",
    "one_shot", "privileged", "target_node", "addresses", "volumes", "constraints", "connectivity", "added_files",
    "state", "sla_violation_strategy",
}  # fmt: skip
INTEGER_FIELDS = ("memory", "vcpus", "vgpus", "vtpus", "storage", "bandwidth_in", "bandwidth_out")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _oid() -> str:
    return secrets.token_hex(12)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def validate_sla(sla: Any) -> list[str]:
    """Problems with an SLA v2.0 document, as "path: reason" (empty if it is valid)."""
    errors: list[str] = []
    if not isinstance(sla, dict):
        return ["(root): must be an object"]
    if sla.get("sla_version") != "v2.0":
        errors.append("sla_version: must be 'v2.0'")
    if not isinstance(sla.get("customerID"), str) or not sla.get("customerID"):
        errors.append("customerID: required string")
    apps = sla.get("applications")
    if not isinstance(apps, list) or not apps:
        return [*errors, "applications: required non-empty array"]
    for a, app in enumerate(apps):
        at = f"applications[{a}]"
        if not isinstance(app, dict):
            errors.append(f"{at}: must be an object")
            continue
        for key in ("applicationID", "application_name", "application_namespace", "microservices"):
            if key not in app:
                errors.append(f"{at}.{key}: required")
        if not isinstance(app.get("applicationID", ""), str):
            errors.append(f"{at}.applicationID: must be a string")
        for key in ("application_name", "application_namespace"):
            if key in app and (not isinstance(app[key], str) or not NAME.match(app[key])):
                errors.append(f"{at}.{key}: must match ^[a-zA-Z0-9]{{1,30}}$")
        if not isinstance(app.get("application_desc", ""), str):
            errors.append(f"{at}.application_desc: must be a string")
        services = app.get("microservices", [])
        if not isinstance(services, list):
            errors.append(f"{at}.microservices: must be an array")
            continue
        for s, service in enumerate(services):
            errors.extend(_validate_microservice(service, f"{at}.microservices[{s}]"))
    return errors


def _validate_microservice(service: Any, at: str) -> list[str]:
    if not isinstance(service, dict):
        return [f"{at}: must be an object"]
    errors = [f"{at}.{key}: unknown field" for key in service if key not in MICROSERVICE_FIELDS]
    for key in ("microservice_name", "microservice_namespace", "virtualization", "code"):
        if key not in service:
            errors.append(f"{at}.{key}: required")
    for key in ("microservice_name", "microservice_namespace"):
        if key in service and (not isinstance(service[key], str) or not NAME.match(service[key])):
            errors.append(f"{at}.{key}: must match ^[a-zA-Z0-9]{{1,30}}$")
    if "virtualization" in service and service["virtualization"] not in ("container", "unikernel"):
        errors.append(f"{at}.virtualization: must be 'container' or 'unikernel'")
    if "code" in service and (not isinstance(service["code"], str) or not service["code"]):
        errors.append(f"{at}.code: must be a non-empty image reference")
    if service.get("microserviceID", "") != "":
        errors.append(f"{at}.microserviceID: must be empty")
    for key in ("cmd", "args", "added_files"):
        if key in service and not _str_list(service[key]):
            errors.append(f"{at}.{key}: must be an array of strings")
    if "environment" in service and (
        not _str_list(service["environment"]) or not all("=" in item for item in service["environment"])
    ):
        errors.append(f"{at}.environment: must be an array of 'K=V' strings")
    for key in INTEGER_FIELDS:
        if key in service and (not _is_int(service[key]) or service[key] < 0):
            errors.append(f"{at}.{key}: must be a non-negative integer")
    for key in ("one_shot", "privileged"):
        if key in service and not isinstance(service[key], bool):
            errors.append(f"{at}.{key}: must be a boolean")
    if "port" in service and (not isinstance(service["port"], str) or not PORT.match(service["port"])):
        errors.append(f"{at}.port: must look like 'host:container[/proto];...'")
    if "target_node" in service and not isinstance(service["target_node"], str):
        errors.append(f"{at}.target_node: must be a string")
    addresses = service.get("addresses")
    if addresses is not None:
        if not isinstance(addresses, dict):
            errors.append(f"{at}.addresses: must be an object")
        else:
            rr_ip = addresses.get("rr_ip")
            if rr_ip is not None and (not isinstance(rr_ip, str) or not RR_IP.match(rr_ip)):
                errors.append(f"{at}.addresses.rr_ip: must be 10.30.x.y, not {rr_ip!r}")
            for key in ("rr_ip_v6", "closest_ip", "closest_ip_v6"):
                if key in addresses and not isinstance(addresses[key], str):
                    errors.append(f"{at}.addresses.{key}: must be a string")
    for v, volume in enumerate(service.get("volumes") or []):
        if not isinstance(volume, dict) or not all(isinstance(volume.get(k), str) for k in ("volume_id", "mount_path")):
            errors.append(f"{at}.volumes[{v}]: needs volume_id and mount_path strings")
    constraints = service.get("constraints")
    if constraints is not None and not isinstance(constraints, list):
        errors.append(f"{at}.constraints: must be an array")
    for c, constraint in enumerate(constraints or []):
        where = f"{at}.constraints[{c}]"
        if not isinstance(constraint, dict) or constraint.get("type") not in CONSTRAINT_TYPES:
            errors.append(f"{where}.type: must be one of {sorted(CONSTRAINT_TYPES)}")
            continue
        kind = constraint["type"]
        if kind == "clusters" and (not _str_list(constraint.get("allowed")) or not constraint["allowed"]):
            errors.append(f"{where}.allowed: a non-empty array of cluster names")
        if kind == "addons" and (not _str_list(constraint.get("needs")) or not constraint["needs"]):
            errors.append(f"{where}.needs: a non-empty array of addon names")
        if kind == "direct" and not isinstance(constraint.get("cluster"), str):
            errors.append(f"{where}.cluster: required for a direct constraint")
    return errors


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def bearer(self) -> str | None:
        value = self.headers.get("Authorization", "")
        return value.removeprefix("Bearer ") if value.startswith("Bearer ") else None


@dataclass
class Instance:
    number: int
    stage: int = 0
    status: str = "REQUESTED"
    detail: str = ""
    process: ManagedProcess | None = None
    log_path: Path | None = None
    running_shown: bool = False

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(grace=2.0)


@dataclass
class Token:
    user: str
    kind: str  # "access" or "refresh"
    expires: float


@dataclass
class Service:
    doc: dict[str, Any]
    owner: str
    instances: list[Instance] = field(default_factory=list)
    next_number: int = 0


class OakestraStandin:
    """The stand-in server; use as a context manager or call `start()` / `stop()`."""

    def __init__(
        self,
        *,
        username: str = "flops",
        password: str = "stand-in-secret",
        organizations: tuple[str, ...] = ("root",),
        token_lifetime_s: float = 600.0,
        refresh_lifetime_s: float = 3600.0,
        run_locally: bool = False,
        tls: tuple[str, str] | None = None,
        work_dir: Path | None = None,
        clusters: list[dict[str, Any]] | None = None,
        app_id_field: bool = True,
    ) -> None:
        self.users = {username: {"password": password, "_id": _oid()}}
        self.organizations = set(organizations)
        self.token_lifetime_s = token_lifetime_s
        self.refresh_lifetime_s = refresh_lifetime_s
        self.run_locally = run_locally
        self.tls = tls
        self.app_id_field = app_id_field
        self._own_dir = tempfile.TemporaryDirectory(prefix="oakestra-standin-") if work_dir is None else None
        self.work_dir = Path(self._own_dir.name) if self._own_dir else Path(work_dir or ".")
        self.clusters = clusters or [
            {"_id": {"$oid": _oid()}, "cluster_name": "cluster1", "cluster_location": "48.26,11.67,1000",
             "active": True, "memory_in_mb": 16000, "total_cpu_cores": 16, "aggregated_cpu_percent": 10.0},
        ]  # fmt: skip
        # Behaviour switches for tests:
        self.outcomes: dict[str, tuple[str, str]] = {}  # microservice_name -> (final status, detail)
        self.default_outcome: tuple[str, str] | None = None  # the same, for every service
        self.fail_services: dict[str, str] = {}  # microservice_name -> reason, answered with HTTP 200
        self.one_shot_completes = True  # simulated (not run) one-shot services complete after RUNNING
        self.reschedule_failed = True  # FAILED instances are re-deployed, as Oakestra does
        # (status, body) every call gets instead of its answer: what the reverse proxy in front of the
        # system manager says while it restarts (503), or its own crash (500). None: answer normally.
        self.outage: tuple[int, Any] | None = None
        self.requests: list[Recorded] = []
        self.tokens: dict[str, Token] = {}
        self.apps: dict[str, dict[str, Any]] = {}
        self.services: dict[str, Service] = {}
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._connections: set[socket.socket] = set()  # open keep-alive connections, closed by stop()
        self._thread: threading.Thread | None = None

    # -- server ------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start the stand-in first"
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> OakestraStandin:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                standin._connections.add(self.connection)

            def finish(self) -> None:
                standin._connections.discard(self.connection)
                super().finish()

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, body, headers = standin.handle(self.command, self.path, dict(self.headers.items()), raw)
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = do_PUT = _handle

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        if self.tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*self.tls)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="oakestra-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            for connection in list(self._connections):  # a stopped server keeps no connection open
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        with self._lock:
            for service in self.services.values():
                for instance in service.instances:
                    instance.stop()
        if self._own_dir is not None:
            self._own_dir.cleanup()
            self._own_dir = None

    def __enter__(self) -> OakestraStandin:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- test helpers ------------------------------------------------------------------------------

    def calls(self, method: str | None = None, prefix: str = "") -> list[Recorded]:
        return [r for r in self.requests if (method is None or r.method == method) and r.path.startswith(prefix)]

    def expire_access_tokens(self) -> None:
        with self._lock:
            for token in self.tokens.values():
                if token.kind == "access":
                    token.expires = 0.0

    def revoke_refresh_tokens(self) -> None:
        with self._lock:
            for token in self.tokens.values():
                if token.kind == "refresh":
                    token.expires = 0.0

    def processes(self) -> list[ManagedProcess]:
        with self._lock:
            return [i.process for s in self.services.values() for i in s.instances if i.process is not None]

    # -- HTTP handling -----------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple[int, bytes, dict[str, str]]:
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                return self._json(400, {"message": "The request body is not valid JSON"})
        with self._lock:
            self.requests.append(Recorded(method, path, headers, body))
            if self.outage is not None:
                return self._json(*self.outage)
            try:
                return self._route(method, path.split("?", 1)[0], headers, body)
            except _Abort as abort:
                return self._json(abort.status, abort.body)

    @staticmethod
    def _json(status: int, value: Any, *, double: bool = False, headers: dict[str, str] | None = None) -> Any:
        text = json.dumps(value)
        if double:  # what `return json_util.dumps(result)` through a JSON response schema gives
            text = json.dumps(text)
        return status, text.encode("utf-8"), headers or {}

    def _route(self, method: str, path: str, headers: dict[str, str], body: Any) -> Any:
        if method == "POST" and path in ("/api/application", "/api/service"):
            return 308, b"", {"Location": path + "/"}
        if method == "POST" and path == "/api/auth/login":
            return self._login(body)
        if method == "POST" and path == "/api/auth/refresh":
            return self._refresh(headers)
        if method == "GET" and path == "/api/clusters/active":
            return self._json(200, [c for c in self.clusters if c.get("active")])
        user = self._authenticate(headers)
        routes: list[tuple[str, str, Any]] = [
            ("GET", r"/api/user/([^/]+)", self._get_user),
            ("GET", r"/api/clusters/", lambda u: self._json(200, self.clusters)),
            ("POST", r"/api/application/", lambda u: self._create_app(u, body)),
            ("GET", r"/api/applications/([^/]+)", self._list_apps),
            ("GET", r"/api/application/([^/]+)", lambda u, app_id: (200, b"", {})),
            ("DELETE", r"/api/application/([^/]+)", self._delete_app),
            ("POST", r"/api/service/", lambda u: self._create_services(u, body)),
            ("GET", r"/api/services/([^/]+)", self._list_services),
            ("POST", r"/api/service/([^/]+)/instance", self._deploy_instance),
            ("DELETE", r"/api/service/([^/]+)/instance/(\d+)", self._undeploy_instance),
            ("GET", r"/api/service/([^/]+)", self._get_service),
            ("DELETE", r"/api/service/([^/]+)", self._delete_service),
            ("PUT", r"/api/service/([^/]+)", lambda u, sid: self._json(501, {"message": "Not implemented"})),
        ]
        for verb, pattern, action in routes:
            match = re.fullmatch(pattern, path)
            if match and verb == method:
                return action(user, *match.groups())
        return self._json(404, {"message": "The requested URL was not found on the server."})

    # -- auth --------------------------------------------------------------------------------------

    def _issue(self, user: str, kind: str, lifetime: float) -> str:
        expires = time.time() + lifetime
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"sub": user, "type": kind, "exp": expires, "jti": secrets.token_hex(8)}
        token = f"{header}.{_b64(json.dumps(claims).encode())}.{_b64(secrets.token_bytes(32))}"
        self.tokens[token] = Token(user, kind, expires)
        return token

    def _login(self, body: Any) -> Any:
        if not isinstance(body, dict):
            return self._json(403, {"message": "No credentials provided"})
        organization = body.get("organization_name")
        if organization is not None and organization not in self.organizations:
            return self._json(404, {"message": "Found no organization with this name"})
        user = self.users.get(str(body.get("username")))
        if user is None or not secrets.compare_digest(str(body.get("password", "")), user["password"]):
            return self._json(401, {"message": "invalid username or password"})
        name = str(body["username"])
        return self._json(
            200,
            {
                "token": self._issue(name, "access", self.token_lifetime_s),
                "refresh_token": self._issue(name, "refresh", self.refresh_lifetime_s),
            },
        )

    def _bearer(self, headers: dict[str, str]) -> Token:
        value = headers.get("Authorization", "")
        if not value.startswith("Bearer "):
            raise _Abort(401, {"msg": "Missing Authorization Header"})
        token = self.tokens.get(value.removeprefix("Bearer "))
        if token is None:
            raise _Abort(422, {"msg": "Signature verification failed"})
        if token.expires <= time.time():
            raise _Abort(401, {"msg": "Token has expired"})
        return token

    def _refresh(self, headers: dict[str, str]) -> Any:
        token = self._bearer(headers)
        if token.kind != "refresh":
            return self._json(422, {"msg": "Only refresh tokens are allowed"})
        return self._json(200, {"token": self._issue(token.user, "access", self.token_lifetime_s)})

    def _authenticate(self, headers: dict[str, str]) -> str:
        token = self._bearer(headers)
        if token.kind != "access":
            raise _Abort(422, {"msg": "Only non-refresh tokens are allowed"})
        return token.user

    def _get_user(self, user: str, name: str) -> Any:
        if name != user:
            return self._json(401, {"message": "Unauthorized"})
        return self._json(
            200, {"_id": {"$oid": self.users[user]["_id"]}, "name": user, "roles": ["Application_Provider"]}
        )

    # -- applications ------------------------------------------------------------------------------

    def _app_out(self, app: dict[str, Any]) -> dict[str, Any]:
        out = {**app, "_id": {"$oid": app["_id"]}}
        if not self.app_id_field:
            out.pop("applicationID", None)
        return out

    def _user_apps(self, user: str) -> list[dict[str, Any]]:
        return [self._app_out(app) for app in self.apps.values() if app["userId"] == user]

    def _create_app(self, user: str, sla: Any) -> Any:
        problems = validate_sla(sla)
        if problems:
            return self._json(422, {"message": "SLA validation failed: " + "; ".join(problems)})
        for application in sla["applications"]:
            name, namespace = application["application_name"], application["application_namespace"]
            if any(
                a["userId"] == user and a["application_name"] == name and a["application_namespace"] == namespace
                for a in self.apps.values()
            ):
                return self._json(409, {"message": "An application with the same name and namespace exists already"})
            if len(name) > 10 or len(namespace) > 10:
                return self._json(422, {"message": "Application name or namespace are not in the valid format"})
            app_id = _oid()
            self.apps[app_id] = {
                "_id": app_id,
                "applicationID": app_id,
                "application_name": name,
                "application_namespace": namespace,
                "application_desc": application.get("application_desc", ""),
                "userId": user,
                "microservices": [],
            }
            if application["microservices"]:
                self._add_services(user, self.apps[app_id], application["microservices"])
        return self._json(200, self._user_apps(user), double=True)

    def _list_apps(self, user: str, user_id: str) -> Any:
        if user_id != self.users[user]["_id"]:
            return self._json(401, {"message": "Unauthorized"})
        return self._json(200, self._user_apps(user), double=True)

    def _delete_app(self, user: str, app_id: str) -> Any:
        app = self.apps.get(app_id)
        if app is None or app["userId"] != user:
            return self._json(501, {"message": "User could not be deleted"})  # sic: Oakestra's answer
        for service_id in list(app["microservices"]):
            self._remove_service(service_id)
        del self.apps[app_id]
        return self._json(200, {"message": "Application Deleted"})

    # -- services ----------------------------------------------------------------------------------

    def _create_services(self, user: str, sla: Any) -> Any:
        problems = validate_sla(sla)
        if problems:
            return self._json(422, {"message": "SLA validation failed: " + "; ".join(problems)})
        app = self.apps.get(sla["applications"][0]["applicationID"])
        if app is None or app["userId"] != user:
            return self._json(404, {"message": "application not found"})
        return self._json(200, self._add_services(user, app, sla["applications"][0]["microservices"]))

    def _add_services(self, user: str, app: dict[str, Any], microservices: list[dict[str, Any]]) -> dict[str, Any]:
        deployed: list[dict[str, Any]] = []
        failed: list[dict[str, Any]] = []
        last_id = ""
        for microservice in microservices:
            name, namespace = microservice["microservice_name"], microservice["microservice_namespace"]
            job_name = f"{app['application_name']}.{app['application_namespace']}.{name}.{namespace}"
            if name in self.fail_services:
                failed.append({"service_name": name, "message": self.fail_services[name], "status": 500})
                continue
            if any(s.doc["job_name"] == job_name for s in self.services.values()):
                failed.append({"service_name": name, "message": f"job {job_name} exists already", "status": 500})
                continue
            service_id = _oid()
            doc = {
                **microservice,
                "_id": service_id,
                "microserviceID": service_id,
                "applicationID": app["applicationID"],
                "app_name": app["application_name"],
                "app_ns": app["application_namespace"],
                "service_name": name,
                "service_ns": namespace,
                "image": microservice["code"],
                "job_name": job_name,
                "virtualization": "docker" if microservice["virtualization"] == "container" else "unikernel",
                "status": "CREATED",
                "status_detail": "",
                "RR_ip": (microservice.get("addresses") or {}).get("rr_ip"),
            }
            self.services[service_id] = Service(doc=doc, owner=user)
            app["microservices"].append(service_id)
            deployed.append({"service_name": name, "status": 200})
            last_id = service_id
        return {"job_id": last_id, "deployed_services": deployed, "failed_services": failed}

    def _owned(self, user: str, service_id: str) -> Service | None:
        service = self.services.get(service_id)
        return service if service is not None and service.owner == user else None

    def _service_out(self, service: Service) -> dict[str, Any]:
        instances = [self._instance_out(service, instance) for instance in service.instances]
        statuses = [item["status"] for item in instances]
        status = service.doc["status"]
        if statuses:
            status = "RUNNING" if all(s == "RUNNING" for s in statuses) else statuses[0]
        return {**service.doc, "_id": {"$oid": service.doc["_id"]}, "status": status, "instance_list": instances}

    def _instance_out(self, service: Service, instance: Instance) -> dict[str, Any]:
        logs = ""
        if instance.log_path is not None and instance.log_path.is_file():
            logs = instance.log_path.read_text(encoding="utf-8", errors="replace")[-65536:]
        return {
            "instance_number": instance.number,
            "status": instance.status,
            "status_detail": instance.detail,
            "publicip": "192.0.2.10",
            "cluster_id": mongo_text(self._target_cluster(service)[0].get("_id")),
            "cluster_location": self._target_cluster(service)[0].get("cluster_location", ""),
            "worker_id": "worker1",
            "host_ip": "192.0.2.10",
            "host_port": service.doc.get("port", ""),
            "cpu_percent": 0.0,
            "memory_percent": 0.0,
            "disk": 0,
            "logs": logs,
            "last_modified_timestamp": time.time(),
        }

    def _advance(self, service: Service) -> None:
        """One poll's worth of progress for each instance of `service`."""
        outcome = self._outcome(service)
        for instance in service.instances:
            if instance.status == "FAILED" and self.reschedule_failed:
                # Oakestra re-deploys a failed instance; its FAILED was visible for one poll only.
                instance.stop()
                instance.stage, instance.status, instance.detail = 0, "REQUESTED", ""
                instance.process, instance.running_shown = None, False
                if self.run_locally and outcome is None:
                    self._start(service, instance)
                continue
            if instance.status not in SCHEDULING:
                continue  # a final status
            if outcome is not None:
                final, detail = outcome
                stop_at = 1 if final in CLUSTER_NEGATIVE else 2 if final in WORKER_NEGATIVE else 4
                if instance.stage + 1 >= stop_at:
                    instance.status, instance.detail = final, detail
                    continue
            if instance.stage < len(SCHEDULING) - 1:
                instance.stage += 1
                instance.status = SCHEDULING[instance.stage]
                if instance.status != "RUNNING":
                    continue
            self._settle(service, instance)

    def _settle(self, service: Service, instance: Instance) -> None:
        """An instance past scheduling: the process's fate, or a simulated one."""
        if instance.process is not None:
            code = instance.process.returncode()
            if code is None:
                instance.status = "RUNNING"
            elif code == 0:
                instance.status, instance.detail = "COMPLETED", ""
            else:
                instance.status, instance.detail = "FAILED", f"exit code {code}"
        elif service.doc.get("one_shot") and self.one_shot_completes and not self.run_locally:
            if instance.running_shown:
                instance.status = "COMPLETED"
            instance.running_shown = True

    def _start(self, service: Service, instance: Instance) -> None:
        """Run the service's command here, rr_ips rewritten to loopback (emulating Oakestra's network)."""
        rr_ips = {s.doc["RR_ip"] for s in self.services.values() if s.doc.get("RR_ip")}

        def local(text: str) -> str:
            for address in rr_ips:
                text = re.sub(rf"(?<![\d.]){re.escape(address)}(?![\d])", "127.0.0.1", text)
            return text

        command = [local(part) for part in service.doc.get("cmd") or []] + list(service.doc.get("args") or [])
        env = {}
        for item in service.doc.get("environment") or []:
            key, _, value = item.partition("=")
            env[key] = local(value)
        instance.log_path = self.work_dir / f"{service.doc['_id']}-{instance.number}.log"
        try:
            instance.process = ManagedProcess(service.doc["job_name"], command, instance.log_path, env=env)
        except (OSError, ValueError, IndexError) as error:
            instance.process = None
            instance.status, instance.detail = "FAILED", f"cannot start: {error}"

    def _deploy_instance(self, user: str, service_id: str) -> Any:
        service = self._owned(user, service_id)
        if service is not None:  # Oakestra says "ok" for unknown ids as well
            instance = Instance(number=service.next_number)
            service.next_number += 1
            service.instances.append(instance)
            if self.run_locally and self._outcome(service) is None:
                self._start(service, instance)
        return self._json(200, {"message": "ok"})

    def _outcome(self, service: Service) -> tuple[str, str] | None:
        outcome = self.outcomes.get(service.doc["service_name"], self.default_outcome)
        if outcome is not None:
            return outcome
        _, refusal = self._target_cluster(service)
        return refusal

    def _target_cluster(self, service: Service) -> tuple[dict[str, Any], tuple[str, str] | None]:
        """Where Oakestra's scheduler puts the service: the cluster its `direct` or `clusters`
        constraint names (refused when unknown or inactive), else the first active cluster."""
        wanted: list[str] = []
        for constraint in service.doc.get("constraints") or []:
            if constraint.get("type") == "direct":
                wanted = [constraint["cluster"]]
            elif constraint.get("type") == "clusters" and not wanted:
                wanted = list(constraint.get("allowed") or [])
        by_name = {cluster.get("cluster_name"): cluster for cluster in self.clusters}
        if not wanted:
            active = [cluster for cluster in self.clusters if cluster.get("active")]
            return (active or self.clusters)[0], None
        known = [by_name[name] for name in wanted if name in by_name]
        if not known:
            return self.clusters[0], ("TargetClusterNotFound", f"no cluster {', '.join(wanted)}")
        active = [cluster for cluster in known if cluster.get("active")]
        if not active:
            return known[0], ("TargetClusterNotActive", f"cluster {', '.join(wanted)} is not active")
        return active[0], None

    def running_processes(self) -> int:
        """Locally run instances whose process is still alive."""
        with self._lock:
            return sum(
                1
                for service in self.services.values()
                for instance in service.instances
                if instance.process is not None and instance.process.running()
            )

    def _undeploy_instance(self, user: str, service_id: str, number: str) -> Any:
        service = self._owned(user, service_id)
        if service is not None:
            for instance in [i for i in service.instances if i.number == int(number)]:
                instance.stop()
                service.instances.remove(instance)
        return self._json(200, {"message": "ok"})

    def _get_service(self, user: str, service_id: str) -> Any:
        service = self._owned(user, service_id)
        if service is None:
            return self._json(404, {"message": "not found"})
        self._advance(service)
        return self._json(200, self._service_out(service), double=True)

    def _list_services(self, user: str, app_id: str) -> Any:
        app = self.apps.get(app_id)
        if app is None or app["userId"] != user:
            return self._json(404, {"message": "app not found"})
        return self._json(200, [self._service_out(self.services[sid]) for sid in app["microservices"]], double=True)

    def _remove_service(self, service_id: str) -> None:
        service = self.services.pop(service_id)
        for instance in service.instances:
            instance.stop()
        for app in self.apps.values():
            if service_id in app["microservices"]:
                app["microservices"].remove(service_id)

    def _delete_service(self, user: str, service_id: str) -> Any:
        if self._owned(user, service_id) is None:
            return self._json(500, {"message": "Job not deleted"})
        self._remove_service(service_id)
        return self._json(200, {"message": "Job deleted"})


def mongo_text(value: Any) -> str:
    return str(value.get("$oid")) if isinstance(value, dict) else str(value)


class _Abort(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
