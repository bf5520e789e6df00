"""The orchestrator interface: deploy, status, logs, undeploy.

A `ServiceSpec` says what to run (an image or a local environment, a command, environment,
ports, resources, placement); a backend turns it into processes, containers or Oakestra
services and hands back a `ProcessHandle` the store keeps, so a restarted manager can
find, watch and remove what it deployed.
"""

from abc import ABC, abstractmethod
from enum import StrEnum

from pydantic import BaseModel, Field

from flops_manager.models import ProcessHandle


class OrchestratorError(RuntimeError):
    """A backend call failed for good (a refused spec, a 4xx): retrying cannot help.

    The message says what failed and what to do. `transient` is False; see
    `TransientOrchestratorError` for failures worth retrying.
    """

    transient = False


class TransientOrchestratorError(OrchestratorError):
    """A backend call failed for now: the backend is unreachable, answered 5xx or timed out.

    The manager retries the stage with backoff and shows the reason in the project status.
    """

    transient = True


class ServiceSpec(BaseModel):
    project_id: str
    name: str
    role: str
    command: list[str]
    env: dict[str, str] = Field(default_factory=dict)
    image: str | None = None
    ports: dict[str, int] = Field(default_factory=dict)
    memory_mb: int | None = None
    vcpus: float | None = None
    node: str | None = None
    read_only_mounts: dict[str, str] = Field(default_factory=dict)
    one_shot: bool = False


class ServiceStatus(StrEnum):
    RUNNING = "running"
    EXITED = "exited"
    FAILED = "failed"
    GONE = "gone"


class ServiceState(BaseModel):
    status: ServiceStatus
    exit_code: int | None = None
    detail: str = ""

    @property
    def finished(self) -> bool:
        return self.status is not ServiceStatus.RUNNING


class Orchestrator(ABC):
    name: str

    @abstractmethod
    def deploy(self, spec: ServiceSpec) -> ProcessHandle: ...

    @abstractmethod
    def status(self, handle: ProcessHandle) -> ServiceState: ...

    @abstractmethod
    def logs(self, handle: ProcessHandle, tail: int = 200) -> str: ...

    @abstractmethod
    def undeploy(self, handle: ProcessHandle) -> None: ...
