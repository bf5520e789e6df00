"""The `docker` backend: FL actors as containers of a Docker Engine (or Podman's Docker API).

It talks to the engine through the `docker` package at DOCKER_HOST (or a given base URL):
`unix:///var/run/docker.sock`, or Podman's compatible socket from
`podman system service --time=0 unix:///PATH/podman.sock`. A `ServiceSpec` must name an
image (the OCI target of the image builder makes them); the image is pulled when missing,
then run detached as `flops-<project>-<service>` with the labels `flops.project` and
`flops.service`, the spec's environment, its read-only mounts (node data into learners),
memory and CPU limits. Networking is the host's by default (the aggregator's port is then
reachable on the node as it is for the local backend) or a named network.

Project run folders can be bind-mounted read-write at the same path (`runs_dir`), so the
commands the manager builds for the local backend (spec file, state folder) work unchanged
inside the containers. Containers run as the image's user (non-root in FLOps images)
unless `user` says otherwise; bind-mounted folders must be writable by that user.
"""

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker.errors
import requests

from flops.runtime_env import FLOWER_OFFLINE_ENV
from flops_manager.models import ProcessHandle
from flops_manager.orchestration.base import (
    Orchestrator,
    OrchestratorError,
    ServiceSpec,
    ServiceState,
    ServiceStatus,
)

PROJECT_LABEL = "flops.project"
SERVICE_LABEL = "flops.service"
ROLE_LABEL = "flops.role"
STOP_TIMEOUT_S = 10
_RUNNING_STATES = frozenset({"created", "running", "restarting", "paused"})
# What the engine's API can raise: its own errors, and the transport's when it is unreachable.
ENGINE_ERRORS = (docker.errors.DockerException, requests.RequestException)


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
    ) -> None:
        """`base_url` None: DOCKER_HOST and the other DOCKER_* variables decide."""
        from docker.client import DockerClient, from_env

        self.network = network
        self.runs_dir = runs_dir
        self.user = user
        self.extra_env = {**FLOWER_OFFLINE_ENV, **(extra_env or {})}
        try:
            self.client = client or (
                DockerClient(base_url=base_url, timeout=timeout) if base_url else from_env(timeout=timeout)
            )
        except ENGINE_ERRORS as error:
            raise OrchestratorError(
                f"cannot reach the container engine at {base_url or 'DOCKER_HOST'}: {error}"
            ) from error

    def close(self) -> None:
        self.client.close()

    # ------------------------------------------------------------------ helpers
    def _ensure_image(self, image: str) -> None:
        try:
            self.client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except ENGINE_ERRORS as error:
            raise OrchestratorError(f"cannot look up image {image}: {_reason(error)}") from error
        try:
            self.client.images.pull(image)  # the package splits off the tag (default latest)
        except ENGINE_ERRORS as error:
            raise OrchestratorError(f"cannot pull {image}: {_reason(error)}") from error

    def _mounts(self, spec: ServiceSpec) -> list[Any]:
        from docker.types import Mount

        mounts = []
        for source, target in spec.read_only_mounts.items():
            if not Path(source).exists():
                raise OrchestratorError(f"{spec.name}: the folder to mount does not exist: {source}")
            mounts.append(Mount(target=target, source=str(Path(source).resolve()), type="bind", read_only=True))
        if self.runs_dir is not None:
            run_dir = (self.runs_dir / spec.project_id).resolve()
            run_dir.mkdir(parents=True, exist_ok=True)
            mounts.append(Mount(target=str(run_dir), source=str(run_dir), type="bind", read_only=False))
        return mounts

    def _run_options(self, spec: ServiceSpec) -> dict[str, Any]:
        options: dict[str, Any] = {
            "name": container_name(spec.project_id, spec.name),
            "command": spec.command,
            "environment": {**self.extra_env, **spec.env},
            "labels": {PROJECT_LABEL: spec.project_id, SERVICE_LABEL: spec.name, ROLE_LABEL: spec.role},
            "mounts": self._mounts(spec),
            "detach": True,
            "network_mode": "host" if self.network == "host" else None,
            "network": None if self.network == "host" else self.network,
            "init": True,  # reaps Flower's helper processes, forwards stop signals
        }
        if self.network != "host" and spec.ports:
            options["ports"] = {f"{port}/tcp": port for port in spec.ports.values()}
        if spec.memory_mb:
            options["mem_limit"] = f"{int(spec.memory_mb)}m"
        if spec.vcpus:
            options["nano_cpus"] = int(spec.vcpus * 1e9)
        if self.user:
            options["user"] = self.user
        return {key: value for key, value in options.items() if value is not None}

    def _container(self, handle: ProcessHandle) -> Any:
        try:
            return self.client.containers.get(handle.ref)
        except docker.errors.NotFound:
            return None
        except ENGINE_ERRORS as error:
            raise OrchestratorError(f"cannot look up {handle.name}: {_reason(error)}") from error

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
            raise OrchestratorError(f"cannot reach the container engine: {_reason(error)}") from error
        if existing is not None:
            if existing.status in _RUNNING_STATES:
                raise OrchestratorError(f"{name} is already running (container {existing.short_id})")
            existing.remove(force=True)  # a finished one from an earlier attempt
        self._ensure_image(spec.image)
        try:
            container = self.client.containers.run(spec.image, **self._run_options(spec))
        except ENGINE_ERRORS as error:
            raise OrchestratorError(f"cannot start {spec.name}: {_reason(error)}") from error
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
        except ENGINE_ERRORS:
            return ""

    def undeploy(self, handle: ProcessHandle) -> None:
        container = self._container(handle)
        if container is not None:
            _remove(container)

    def undeploy_project(self, project_id: str) -> bool:
        """Remove every container labelled with `project_id`; whether there was any."""
        try:
            containers = self.client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project_id}"})
        except ENGINE_ERRORS as error:
            raise OrchestratorError(f"cannot list containers: {_reason(error)}") from error
        for container in containers:
            _remove(container)
        return bool(containers)


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
        raise OrchestratorError(f"cannot remove container {container.short_id}: {_reason(error)}") from error


def _reason(error: Exception) -> str:
    """The engine's own explanation when it gave one, else the error's text."""
    return str(getattr(error, "explanation", None) or error)
