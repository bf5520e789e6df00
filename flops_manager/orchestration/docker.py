"""The `docker` backend: FL actors as containers of a Docker Engine (or Podman's Docker API).

It talks to the engine through the `docker` package at the base URL it is given (the manager
passes DOCKER_HOST, read once at start-up): `unix:///var/run/docker.sock`, or Podman's
compatible socket from
`podman system service --time=0 unix:///PATH/podman.sock`. A `ServiceSpec` must name an
image (the OCI target of the image builder makes them); the image is pulled when missing,
then run detached as `flops-<project>-<service>` with the labels `flops.project` and
`flops.service`, the spec's environment, its read-only mounts (node data into learners),
memory and CPU limits. Networking is the host's by default (the aggregator's port is then
reachable on the node as it is for the local backend) or a named network.

Project run folders can be bind-mounted read-write at the same path (`runs_dir`), so the
commands the manager builds for the local backend (spec file, state folder) work unchanged
inside the containers.

Containers run user code, so they are locked down: never as root (the image's user when it
is not root, as in FLOps images (10001), else `CONTAINER_USER` 65534:65534, or `user`), a
read-only root file system with a fresh tmpfs `/tmp` (also its HOME) and a
tmpfs for each writable path outside /tmp, every capability dropped, no-new-privileges,
and no environment but the spec's own and Flower's offline settings (never the manager's).
Bind-mounted folders must be readable (node data) or writable (run folders) by that user;
as root, the manager hands run folders to the numeric user it runs containers as.

Errors: an engine that cannot be reached (connection refused, a missing socket, a timeout) or
answers 5xx raises `TransientOrchestratorError`; a 4xx (a refused option, an image that does
not exist) raises `OrchestratorError` with the engine's explanation.
"""

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker.errors
import requests
from docker.tls import TLSConfig

from flops.runtime_env import FLOWER_OFFLINE_ENV
from flops_manager.models import ProcessHandle
from flops_manager.orchestration.base import (
    Orchestrator,
    OrchestratorError,
    ServiceSpec,
    ServiceState,
    ServiceStatus,
    TransientOrchestratorError,
)

# Who user code runs as when neither `user` nor a non-root image user says: nobody.
CONTAINER_USER = "65534:65534"
CONTAINER_HOME = "/tmp"
TMPFS_OPTIONS = "rw,nosuid,nodev,mode=1777"
_ROOT_USERS = frozenset({"", "0", "root"})
PROJECT_LABEL = "flops.project"
SERVICE_LABEL = "flops.service"
ROLE_LABEL = "flops.role"
STOP_TIMEOUT_S = 10
_RUNNING_STATES = frozenset({"created", "running", "restarting", "paused"})
# What the engine's API can raise: its own errors, and the transport's when it is unreachable.
ENGINE_ERRORS = (docker.errors.DockerException, requests.RequestException)


def tls_config(verify: bool, cert_path: Path | None) -> TLSConfig | None:
    """TLS for a tcp:// engine as Docker's DOCKER_TLS_VERIFY / DOCKER_CERT_PATH define it; None: no TLS.

    The folder holds `ca.pem`, `cert.pem` and `key.pem` (default `~/.docker` when only `verify`).
    """
    if not verify and cert_path is None:
        return None
    folder = cert_path or Path.home() / ".docker"
    try:
        return TLSConfig(
            client_cert=(str(folder / "cert.pem"), str(folder / "key.pem")),
            ca_cert=str(folder / "ca.pem"),
            verify=verify,
        )
    except docker.errors.TLSParameterError as error:
        raise OrchestratorError(
            f"DOCKER_CERT_PATH {folder} must hold the engine's ca.pem and this client's cert.pem and key.pem: {error}"
        ) from error


def container_name(project_id: str, service: str) -> str:
    """`flops-<project>-<service>`, restricted to the characters container names allow."""
    name = f"flops-{project_id}-{service}"
    return re.sub(r"[^a-zA-Z0-9_.-]+", "-", name)[:200]


class DockerOrchestrator(Orchestrator):
    name = "docker"

    def __init__(
        self,
        base_url: str | None = None,
        network: str = "host",
        runs_dir: Path | None = None,
        user: str | None = None,
        timeout: int = 120,
        client: Any = None,
        extra_env: Mapping[str, str] | None = None,
        tls: TLSConfig | None = None,
    ) -> None:
        """Connect to the engine at `base_url` (with `tls` for a TCP endpoint), or use `client`.

        Raises `TransientOrchestratorError` when the engine cannot be reached.
        """
        from docker.client import DockerClient

        self.network = network
        self.runs_dir = runs_dir
        self.user = user
        self.extra_env = {**FLOWER_OFFLINE_ENV, **(extra_env or {})}
        if client is None and not base_url:
            raise OrchestratorError("the docker backend needs the engine's address (DOCKER_HOST)")
        try:
            self.client = client or DockerClient(base_url=base_url, timeout=timeout, tls=tls or False)
        except ENGINE_ERRORS as error:
            raise engine_error(f"cannot reach the container engine at {base_url}", error) from error

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ helpers
    def _ensure_image(self, image: str) -> Any:
        try:
            return self.client.images.get(image)
        except docker.errors.ImageNotFound:
            pass
        except ENGINE_ERRORS as error:
            raise engine_error(f"cannot look up image {image}", error) from error
        try:
            return self.client.images.pull(image)  # the package splits off the tag (default latest)
        except ENGINE_ERRORS as error:
            raise engine_error(f"cannot pull {image}", error) from error

    def run_user(self, image: Any) -> str:
        """Who the container runs as: `user`, else the image's user unless it is root, else 65534:65534."""
        if self.user:
            return self.user
        configured = str((getattr(image, "attrs", None) or {}).get("Config", {}).get("User") or "")
        return CONTAINER_USER if is_root_user(configured) else configured

    def _mounts(self, spec: ServiceSpec, user: str = CONTAINER_USER) -> list[Any]:
        from docker.types import Mount

        mounts = []
        run_dir = (self.runs_dir / spec.project_id).resolve() if self.runs_dir is not None else None
        for source, target in spec.read_only_mounts.items():
            if not Path(source).exists():
                raise OrchestratorError(f"{spec.name}: the folder to mount does not exist: {source}")
            resolved = Path(source).resolve()
            if resolved.is_dir() and not resolved.stat().st_mode & 0o005:
                _hand_over_private(resolved, user, run_dir)  # the actor's own keys and certificates
            mounts.append(Mount(target=target, source=str(resolved), type="bind", read_only=True))
        if run_dir is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            mounts.append(Mount(target=str(run_dir), source=str(run_dir), type="bind", read_only=False))
            _hand_over(run_dir, user)
        return mounts

    def _run_options(self, spec: ServiceSpec, user: str = CONTAINER_USER) -> dict[str, Any]:
        options: dict[str, Any] = {
            "name": container_name(spec.project_id, spec.name),
            "command": spec.command,
            "environment": {**self.extra_env, "HOME": CONTAINER_HOME, **spec.env},
            "labels": {PROJECT_LABEL: spec.project_id, SERVICE_LABEL: spec.name, ROLE_LABEL: spec.role},
            "mounts": self._mounts(spec, user),
            "detach": True,
            "network_mode": "host" if self.network == "host" else None,
            "network": None if self.network == "host" else self.network,
            "init": True,  # reaps Flower's helper processes, forwards stop signals
            # User code: not root, nothing to write but tmpfs, no capabilities, no privilege gain.
            "user": user,
            "read_only": True,
            "tmpfs": container_tmpfs(spec),
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
        }
        if self.network != "host" and spec.ports:
            options["ports"] = {f"{port}/tcp": port for port in spec.ports.values()}
        if spec.memory_mb:
            options["mem_limit"] = f"{int(spec.memory_mb)}m"
        if spec.vcpus:
            options["nano_cpus"] = int(spec.vcpus * 1e9)
        return {key: value for key, value in options.items() if value is not None}

    def _container(self, handle: ProcessHandle) -> Any:
        try:
            return self.client.containers.get(handle.ref)
        except docker.errors.NotFound:
            return None
        except ENGINE_ERRORS as error:
            raise engine_error(f"cannot look up {handle.name}", error) from error

    # ------------------------------------------------------------------ interface
    def deploy(self, spec: ServiceSpec) -> ProcessHandle:
        if not spec.image:
            raise OrchestratorError(f"{spec.name}: the docker backend runs images; the build gave none")
        name = container_name(spec.project_id, spec.name)
        try:
            existing = self.client.containers.get(name)
        except docker.errors.NotFound:
            existing = None
        except ENGINE_ERRORS as error:
            raise engine_error("cannot reach the container engine", error) from error
        if existing is not None:
            if existing.status in _RUNNING_STATES:
                raise OrchestratorError(f"{name} is already running (container {existing.short_id})")
            try:
                existing.remove(force=True)  # a finished one from an earlier attempt
            except docker.errors.NotFound:
                pass
            except ENGINE_ERRORS as error:
                raise engine_error(f"cannot remove the earlier {name}", error) from error
        image = self._ensure_image(spec.image)
        try:
            container = self.client.containers.run(spec.image, **self._run_options(spec, self.run_user(image)))
        except ENGINE_ERRORS as error:
            raise engine_error(f"cannot start {spec.name}", error) from error
        return ProcessHandle(name=spec.name, backend=self.name, ref=container.id, address=None)

    def status(self, handle: ProcessHandle) -> ServiceState:
        container = self._container(handle)
        if container is None:
            return ServiceState(status=ServiceStatus.GONE, detail="the container no longer exists")
        state = container.attrs.get("State", {})
        status = str(state.get("Status", container.status))
        if status in _RUNNING_STATES:
            return ServiceState(status=ServiceStatus.RUNNING, detail=status)
        code = state.get("ExitCode")
        detail = "out of memory (OOM killed)" if state.get("OOMKilled") else str(state.get("Error") or status)
        if code == 0:
            return ServiceState(status=ServiceStatus.EXITED, exit_code=0, detail=detail)
        return ServiceState(status=ServiceStatus.FAILED, exit_code=code, detail=detail)

    def logs(self, handle: ProcessHandle, tail: int = 200) -> str:
        container = self._container(handle)
        if container is None:
            return ""
        try:
            return bytes(container.logs(tail=tail)).decode("utf-8", errors="replace")
        except docker.errors.NotFound:
            return ""  # removed meanwhile
        except ENGINE_ERRORS as error:
            raise engine_error(f"cannot read the logs of {handle.name}", error) from error

    def undeploy(self, handle: ProcessHandle) -> None:
        container = self._container(handle)
        if container is not None:
            _remove(container)

    def undeploy_project(self, project_id: str) -> bool:
        """Remove every container labelled with `project_id`; whether there was any."""
        try:
            containers = self.client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project_id}"})
        except ENGINE_ERRORS as error:
            raise engine_error("cannot list containers", error) from error
        for container in containers:
            _remove(container)
        return bool(containers)


def is_root_user(user: str) -> bool:
    """Whether an image's `User` (name, uid, `user:group`) means root; empty means root too."""
    return user.split(":", 1)[0].strip() in _ROOT_USERS


def container_tmpfs(spec: ServiceSpec) -> dict[str, str]:
    """/tmp, and each writable path of the spec that is not under it: the only places a container writes."""
    folders = {"/tmp": TMPFS_OPTIONS}
    for path in spec.writable_paths:
        if not Path(path).is_relative_to("/tmp"):
            folders[path] = TMPFS_OPTIONS
    return folders


def _hand_over(folder: Path, user: str) -> None:
    """As root, give a bind-mounted run folder to the container's numeric user so it can write there."""
    uid, _, gid = user.partition(":")
    if os.geteuid() != 0 or not uid.isdigit() or (gid and not gid.isdigit()):
        return
    os.chown(folder, int(uid), int(gid or uid))


def _hand_over_private(folder: Path, user: str, run_dir: Path | None) -> None:
    """As root, give an actor's private folder (0700, files 0600: its keys and certificates) to the
    container's numeric user; below a mounted run folder, let that user through the folders
    above it too (0711: no listing)."""
    from flops.sandbox import give_tree

    uid, _, gid = user.partition(":")
    if os.geteuid() != 0 or not uid.isdigit() or (gid and not gid.isdigit()):
        return
    give_tree(folder, int(uid), int(gid or uid))
    if run_dir is None or not folder.is_relative_to(run_dir):
        return
    for parent in folder.parents:
        if parent == run_dir:
            break
        parent.chmod(parent.stat().st_mode & 0o777 | 0o711)


def _remove(container: Any) -> None:
    try:
        if container.status in _RUNNING_STATES:
            container.stop(timeout=STOP_TIMEOUT_S)
    except ENGINE_ERRORS:
        pass
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except ENGINE_ERRORS as error:
        raise engine_error(f"cannot remove container {container.short_id}", error) from error


def _reason(error: BaseException) -> str:
    """The engine's own explanation when it gave one, else the error's text."""
    return str(getattr(error, "explanation", None) or error)


def is_transient(error: BaseException) -> bool:
    """Whether the engine could not be asked (unreachable, timed out) or failed on its side (5xx).

    A 4xx (`ImageNotFound` and other refusals) is the engine's answer and stays permanent. The
    `docker` package wraps a refused connection in a plain `DockerException` when it first asks
    for the API version, so the cause is looked at too.
    """
    if isinstance(error, docker.errors.APIError):  # an HTTPError too: decide by its status first
        return error.is_server_error()
    if isinstance(error, requests.ConnectionError | requests.Timeout | ConnectionError | TimeoutError):
        return True
    cause = error.__cause__ or error.__context__
    return cause is not None and cause is not error and is_transient(cause)


def engine_error(action: str, error: BaseException) -> OrchestratorError:
    """`action` failed with the engine's `error`: a transient or a permanent `OrchestratorError`."""
    kind = TransientOrchestratorError if is_transient(error) else OrchestratorError
    return kind(f"{action}: {_reason(error)}")
