"""`OakestraOrchestrator`: FL actors as Oakestra microservices, one Oakestra application per project.

Each `ServiceSpec` (observatory, builder, aggregator, learners, inference server) becomes one
SLA v2.0 microservice added to the project's application with `POST /api/service/`, then one
instance per `POST /api/service/<id>/instance`. A `ProcessHandle` keeps
"<applicationID>/<microserviceID>" in `ref` and the service's round-robin address in `address`,
so a restarted manager can find, watch and remove what it deployed.

Addresses: the manager assigns every service's `rr_ip` (10.30.x.y) itself, from an
`AddressAllocator` that records each address in the database and never hands one out twice, so
the aggregator's address is known before it runs and can be given to the learners.
`reserve_address` hands it out even before the service is deployed (the deploy stage puts it
in the aggregator's TLS certificate); `deploy` then uses the reservation.

Mounts: a spec's `read_only_mounts` (an actor's certificates and keys) become SLA `volumes` of
the CSI driver in `FLOPS_OAKESTRA_VOLUME_CSI_DRIVER`; without one such a spec is refused.

Hierarchical FL: the clusters are Oakestra's active clusters (`GET /api/clusters/active`); a
learner's cluster is the one its node is placed in (`FLOPS_OAKESTRA_PLACEMENT`), and each cluster
aggregator is placed in its cluster with a `direct` constraint.

Errors come from `OakestraClient`: unreachable, timeouts and 5xx are transient, refusals
permanent with Oakestra's message; `failed_services` in an HTTP 200 answer is a refusal too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests

from flops_manager.models import ProcessHandle
from flops_manager.orchestration.addresses import AddressAllocator, AddressError
from flops_manager.orchestration.base import Orchestrator, OrchestratorError, ServiceSpec, ServiceState, ServiceStatus
from flops_manager.orchestration.oakestra.client import OakestraAPIError, OakestraClient, error_message, mongo_id
from flops_manager.orchestration.oakestra.payload import (
    OakestraApp,
    VolumeSettings,
    application_description,
    application_name,
    application_namespace,
    application_sla,
    check_deployable,
    instance_logs,
    map_status,
    microservice,
    service_name,
    split_ref,
)
from flops_manager.orchestration.oakestra.settings import OakestraSettings


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
        self._reserved: dict[str, str] = {}
        self._reserved_lock = threading.Lock()
        self.volumes = (
            VolumeSettings(settings.volume_csi_driver, dict(settings.volume_config))
            if settings.volume_csi_driver
            else None
        )

    @classmethod
    def for_store(cls, settings: OakestraSettings, store: Any) -> OakestraOrchestrator:
        """The backend for `settings`, allocating addresses in the `ProjectStore` `store`'s database."""
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
                    apps = self._create_app(project_id, OakestraApp("", name, namespace))
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

    def _create_app(self, project_id: str, app: OakestraApp) -> list[dict[str, Any]]:
        try:
            # The answer lists ALL the caller's applications, not just the new one.
            apps = self.client.request(
                "POST", "/api/application/", application_sla(self.settings.username, project_id, app, [])
            )
        except OakestraAPIError as error:
            if error.status_code == 409:
                raise _Conflict from error
            raise
        return [item for item in apps or [] if isinstance(item, dict)]

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

    def reserve_address(self, project_id: str, service: str) -> str:
        """The rr_ip the project's `service` will get when deployed, allocated now (the same one until then)."""
        owner = f"{project_id}/{service}"
        with self._reserved_lock:
            if owner not in self._reserved:
                try:
                    self._reserved[owner] = self.allocator.allocate(owner)
                except AddressError as error:
                    raise OrchestratorError(f"{service}: {error}") from error
            return self._reserved[owner]

    def deploy(self, spec: ServiceSpec) -> ProcessHandle:
        instances = int(getattr(spec, "instances", 1) or 1)
        check_deployable(spec, self.volumes)  # before anything is created or allocated
        app = self.application(spec.project_id, create=True)
        assert app is not None
        name = service_name(spec, self._service_names(app.app_id))
        owner = f"{spec.project_id}/{spec.name}"
        with self._reserved_lock:
            reserved = self._reserved.pop(owner, None)
        try:
            rr_ip = reserved or self.allocator.allocate(owner)
        except AddressError as error:
            raise OrchestratorError(f"{spec.name}: {error}") from error
        try:
            document = microservice(spec, name, rr_ip, self.settings.placement, self.volumes)
            result = self.client.request(
                "POST", "/api/service/", application_sla(self.settings.username, spec.project_id, app, [document])
            )
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

    def active_clusters(self) -> list[str]:
        """The names of Oakestra's active clusters."""
        answer = self.client.request("GET", "/api/clusters/active", auth=False)
        documents = answer if isinstance(answer, list) else []
        return sorted(str(c["cluster_name"]) for c in documents if isinstance(c, dict) and c.get("cluster_name"))

    def node_clusters(self, nodes: Mapping[str, Path]) -> dict[str, list[str]]:
        """Each node's cluster is the Oakestra cluster its placement names; every one must be active."""
        active = set(self.active_clusters())
        clusters: dict[str, list[str]] = {}
        for name in sorted(nodes):
            placement = self.settings.placement.get(name, "")
            cluster = placement.split(",")[0].partition("/")[0].strip()
            if not cluster:
                raise OrchestratorError(
                    f"node {name} has no Oakestra placement: name its cluster in FLOPS_OAKESTRA_PLACEMENT "
                    f'(e.g. {{"{name}": "cluster1"}}) for hierarchical training'
                )
            if cluster not in active:
                listing = ", ".join(sorted(active)) or "none"
                raise OrchestratorError(
                    f"node {name} is placed in Oakestra cluster {cluster}, which is not active (active: {listing})"
                )
            clusters.setdefault(cluster, []).append(name)
        return dict(sorted(clusters.items()))

    def cluster_placement(self, cluster: str) -> str | None:
        return cluster

    def node_placement(self, node: str) -> str | None:
        """A node's placement where FLOPS_OAKESTRA_PLACEMENT names one; else anywhere (a FLOps node name is
        no Oakestra cluster: as a constraint it would never be scheduled)."""
        return node if node in self.settings.placement else None

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
        return "" if doc is None else instance_logs(doc, tail)

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
