"""The orchestrator interface: deploy, status, logs, undeploy, undeploy_project.

A `ServiceSpec` says what to run (an image or a local environment, a command, environment,
ports, resources, placement); a backend turns it into processes, containers or Oakestra
services and hands back a `ProcessHandle` the store keeps, so a restarted manager can
find, watch and remove what it deployed.

Errors: every backend call raises `OrchestratorError` when retrying cannot help (a refused
spec, a 4xx, bad configuration, a missing executable) and `TransientOrchestratorError` (a
subclass) when the backend could not be asked or could not answer now (unreachable,
connection refused, 5xx, timeouts). The manager retries transient failures with backoff and
fails the project's stage on permanent ones; `error.transient` tells them apart.
"""

from abc import ABC, abstractmethod
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path

from pydantic import BaseModel, Field

from flops.data.node_meta import NodeMetaError, read_node_meta
from flops_manager.models import ProcessHandle


class OrchestratorError(RuntimeError):
    """A backend call failed for good (a refused spec, a 4xx, bad configuration): retrying cannot help.

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
    """One service to run: `image` for container backends, `command` always (run as given).

    `env` is the service's own settings and credentials, all of its environment a backend
    adds besides Flower's offline settings: never the manager's environment.

    What the service may touch, for backends that sandbox it (`flops.sandbox` on the local
    backend; container backends have the image's file system, read-only):
    `read_only_paths` (its code, environment, data folder, certificates) and `writable_paths`
    (its state folders), `secret_files` (keys and passwords, root's 0600 files: the service
    gets a private read-only copy at the same path, readable by its unprivileged uid).
    Everything else of the machine is hidden from it; the local backend adds a private HOME
    and the interpreter of `command`, and treats the files its environment names (`*_FILE`
    variables) as secret files. `read_only_mounts` (source to target) are a container's bind
    mounts.
    """

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
    read_only_paths: list[str] = Field(default_factory=list)
    writable_paths: list[str] = Field(default_factory=list)
    secret_files: list[str] = Field(default_factory=list)
    one_shot: bool = False


class ServiceStatus(StrEnum):
    RUNNING = "running"  # starting, scheduled or running: not finished yet
    EXITED = "exited"  # finished with exit code 0
    FAILED = "failed"  # finished otherwise, or could not be placed
    GONE = "gone"  # the backend no longer knows the service (removed, or lost while the manager was away)


class ServiceState(BaseModel):
    status: ServiceStatus
    exit_code: int | None = None
    detail: str = ""

    @property
    def finished(self) -> bool:
        return self.status is not ServiceStatus.RUNNING


class Orchestrator(ABC):
    """One way to run FL actors. Calls may come from several threads; handles outlive the process.

    Every method raises `TransientOrchestratorError` when the backend cannot be asked now and
    `OrchestratorError` when it refuses; neither is raised for a service that is simply gone.
    """

    name: str

    @abstractmethod
    def deploy(self, spec: ServiceSpec) -> ProcessHandle:
        """Start `spec` and return its handle (`backend` is this backend's `name`).

        Raises `OrchestratorError` for a spec this backend cannot run (no image where one is
        needed, a missing executable, a refused placement, a 4xx) and
        `TransientOrchestratorError` when the backend is unreachable, answers 5xx or times out.
        Nothing is left running when either is raised.
        """

    @abstractmethod
    def status(self, handle: ProcessHandle) -> ServiceState:
        """What the service is doing now; `GONE` only when the backend says it no longer exists.

        Raises `TransientOrchestratorError` when the backend cannot be asked: an unanswered
        question is never reported as a finished service.
        """

    @abstractmethod
    def logs(self, handle: ProcessHandle, tail: int = 200) -> str:
        """The last `tail` lines of the service's output; "" when there are none or it is gone.

        Raises `TransientOrchestratorError` when the backend cannot be asked.
        """

    @abstractmethod
    def undeploy(self, handle: ProcessHandle) -> None:
        """Stop and remove the service. Idempotent: a service already gone is not an error.

        Raises `TransientOrchestratorError` when the backend cannot be asked (the caller may
        retry) and `OrchestratorError` when it refuses the removal.
        """

    def undeploy_project(self, project_id: str) -> bool:
        """Remove everything this backend keeps for the project (an Oakestra application, the
        containers labelled with it); whether there was anything.

        The default: nothing is kept per project beyond its services, so there is nothing to
        release and the answer is False. Errors as for `undeploy`.
        """
        return False

    def node_clusters(self, nodes: Mapping[str, Path]) -> dict[str, list[str]]:
        """Hierarchical FL: the clusters of the nodes learners go to (node name -> its data folder),
        as cluster name -> node names, both sorted.

        The default (one machine, or containers on it): each node folder's `node.yaml`
        (`flops.data.node_meta`; cluster `default` without one). Raises `OrchestratorError` for a
        node whose metadata is invalid, or whose cluster the backend does not know.
        """
        clusters: dict[str, list[str]] = {}
        for name, folder in sorted(nodes.items()):
            try:
                cluster = read_node_meta(folder).cluster
            except NodeMetaError as error:
                raise OrchestratorError(str(error)) from error
            clusters.setdefault(cluster, []).append(name)
        return dict(sorted(clusters.items()))

    def cluster_placement(self, cluster: str) -> str | None:
        """The `ServiceSpec.node` that places a service in `cluster`; None (the default): no constraint."""
        return None

    def node_placement(self, node: str) -> str | None:
        """The `ServiceSpec.node` of a learner on the FLOps node `node` (the default: the node's name);
        None: the backend places it anywhere."""
        return node
