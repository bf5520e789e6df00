"""What FLOps sends to and reads from Oakestra: SLA v2.0 documents, names, placement, statuses.

Pure functions over `ServiceSpec`s and Oakestra's documents; no HTTP. Names keep to Oakestra's
limits (alphanumeric, at most 10 characters for applications and namespaces), so they are
derived from hashes of the project id and the service name.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from flops_manager.models import ProcessHandle
from flops_manager.orchestration.base import OrchestratorError, ServiceSpec, ServiceState, ServiceStatus

SLA_VERSION = "v2.0"
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


class OakestraServiceSpec(ServiceSpec):
    """A `ServiceSpec` with Oakestra-only hints; the backend reads them with defaults from plain specs too."""

    instances: int = Field(default=1, ge=1, le=100)
    clusters: list[str] = Field(default_factory=list)
    addons: list[str] = Field(default_factory=list)
    vgpus: int = Field(default=0, ge=0)


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


def service_name(spec: ServiceSpec, taken: set[str]) -> str:
    """The spec's name made alphanumeric, shortened with a hash when too long or already `taken`."""
    base = _alnum(spec.name) or _alnum(spec.role) or "svc"
    if len(base) <= MAX_NAME and base not in taken:
        return base
    for attempt in range(1000):
        candidate = base[:6] + _digest(f"{spec.name}#{attempt}")[:4]
        if candidate not in taken:
            return candidate
    raise OrchestratorError(f"no free Oakestra service name for {spec.name}")


def split_ref(handle: ProcessHandle) -> tuple[str, str]:
    """(applicationID, microserviceID) of a handle's "<application>/<service>" ref."""
    app_id, _, service_id = handle.ref.partition("/")
    if not app_id or not service_id:
        raise OrchestratorError(f"{handle.name}: {handle.ref!r} is not an Oakestra '<application>/<service>' ref")
    return app_id, service_id


def application_sla(
    customer: str, project_id: str, app: OakestraApp, microservices: list[dict[str, Any]]
) -> dict[str, Any]:
    """An SLA v2.0 document: the project's application `app` (`app_id` "" for a new one) with `microservices`."""
    return {
        "sla_version": SLA_VERSION,
        "customerID": customer,
        "applications": [
            {
                "applicationID": app.app_id,
                "application_name": app.name,
                "application_namespace": app.namespace,
                "application_desc": application_description(project_id),
                "microservices": microservices,
            }
        ],
    }


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


@dataclass(frozen=True)
class VolumeSettings:
    """How `read_only_mounts` reach Oakestra workers: SLA `volumes` of a CSI driver the workers advertise.

    Oakestra has no host bind mounts; its SLA carries `volumes` (`volume_id`, `csi_driver`,
    `mount_path`, `config`, a string map given to the driver), and the scheduler places a service
    only on workers whose NodeEngine advertises that driver. `config` values may name the folder
    to mount as `{source}` (its path on the manager, e.g. below an NFS export of FLOPS_HOME).
    """

    csi_driver: str
    config: Mapping[str, str]


def check_deployable(spec: ServiceSpec, volumes: VolumeSettings | None = None) -> None:
    """Refuse what Oakestra cannot run: a service without an image, folders to mount without a CSI driver."""
    if not spec.image:
        raise OrchestratorError(
            f"{spec.name}: Oakestra runs container images and this service has none "
            "(build images with the image builder and push them to a registry the workers reach)"
        )
    if spec.read_only_mounts and volumes is None:
        raise OrchestratorError(
            f"{spec.name}: it needs {', '.join(sorted(spec.read_only_mounts))} mounted (its TLS certificates "
            "and keys, or data); Oakestra mounts folders only as CSI volumes: set FLOPS_OAKESTRA_VOLUME_CSI_DRIVER "
            "(and FLOPS_OAKESTRA_VOLUME_CONFIG) to a CSI driver the workers have (see docs/oakestra.md)"
        )


def volume_entries(spec: ServiceSpec, volumes: VolumeSettings | None) -> list[dict[str, Any]]:
    """One SLA volume per read-only mount: the driver, the path in the container, the driver's config."""
    if not spec.read_only_mounts or volumes is None:
        return []
    entries = []
    for source, target in sorted(spec.read_only_mounts.items()):
        config = {key: str(value).replace("{source}", source) for key, value in volumes.config.items()}
        entries.append(
            {
                "volume_id": "flops" + _digest(f"{spec.project_id}/{spec.name}/{source}")[:16],
                "csi_driver": volumes.csi_driver,
                "mount_path": target,
                "config": config,
            }
        )
    return entries


def microservice(
    spec: ServiceSpec,
    name: str,
    rr_ip: str,
    placement: Mapping[str, str] | None = None,
    volumes: VolumeSettings | None = None,
) -> dict[str, Any]:
    """The SLA v2.0 microservice for `spec`, named `name`, at round-robin address `rr_ip`."""
    check_deployable(spec, volumes)
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
    constraints = placement_constraints(spec, placement)
    if constraints:
        service["constraints"] = constraints
    mounts = volume_entries(spec, volumes)
    if mounts:
        service["volumes"] = mounts
    return service


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


def instance_logs(doc: Mapping[str, Any], tail: int) -> str:
    """The last `tail` lines of a service document's instance logs, each instance headed when several."""
    instances = [item for item in doc.get("instance_list") or [] if isinstance(item, dict)]
    lines: list[str] = []
    for item in instances:
        if len(instances) > 1:
            lines.append(f"--- instance {item.get('instance_number')} ---")
        lines.extend(str(item.get("logs") or "").splitlines())
    return "\n".join(lines[-tail:])


@dataclass(frozen=True)
class OakestraApp:
    """An Oakestra application as the backend refers to it."""

    app_id: str
    name: str
    namespace: str
