"""Deploy: place learners where the data is and start the aggregator and the learners.

Each actor's command line comes from `flops.actors`; `ActorPlan` only says how the actors run
on the project's backend (this machine's build environments, or the images' console scripts
with the code inside the image).

Hierarchical FL (`mode: hierarchical`): the placed nodes are grouped by cluster (the backend's
`node_clusters`: node metadata locally and on docker, Oakestra's active clusters there); one
cluster aggregator (`aggregator-<cluster>`, placed in its cluster) per cluster joins the root
aggregator, and each learner dials its cluster's aggregator. Only the root gets the tracking
identity and a broker user.
"""

import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flops.actors import aggregator_command, learner_command
from flops.build import IMAGE_APP_DIR, BuildResult
from flops.data.privacy import PRIVACY_FILE
from flops.events import Component
from flops.explain import ExplainRequest
from flops.net import free_port
from flops.pki import SuperNodeCredentials
from flops.sla import Job, PostTrainingStep, TrainingMode
from flops.tracking_auth import CREDENTIALS_FILE_ENV
from flops.training import Hierarchy, TrainingSpec
from flops_manager.models import ProcessHandle, Project, ProjectStatus, registry_name
from flops_manager.nodes import LocalNode, PlacementError, discover_nodes, place_learners
from flops_manager.orchestration.base import Orchestrator, OrchestratorError, ServiceSpec
from flops_manager.settings import ManagerSettings
from flops_manager.stages import training
from flops_manager.stages.context import StageContext
from flops_manager.stages.credentials import actor_mqtt_env
from flops_manager.stages.errors import StageError
from flops_manager.stages.flower_tls import FlowerCredentials, check_dialled, container_mounts, issue
from flops_manager.tracking_identities import prepare_training

log = logging.getLogger("flops.manager")
STAGE = "deploying"
AGGREGATOR = "aggregator"
SPEC_FILE = "spec.json"


def training_spec(project: Project, build: BuildResult, clusters: Sequence[str] = ()) -> TrainingSpec:
    """What the aggregator runs: the SLA's training configuration at the built commit.

    `clusters` (hierarchical mode): the clusters' names; the spec is then the root's.
    """
    sla = project.sla
    config = sla.training_configuration
    common: dict[str, Any] = {
        "project_id": project.project_id,
        "model_name": registry_name(project.customer_id, sla),  # `<customerID>.<name>` in MLflow
        "model_flavor": sla.ml_model_flavor,
        "data_tags": config.data_tags,
        "strategy": sla.strategy,
        "hyperparameters": sla.hyperparameters,
        "best_model_metric": sla.best_model_metric,
        "learner_wait_timeout": sla.learner_wait_timeout,
        "straggler_grace_s": sla.straggler_grace_s,
        "repo_url": sla.ml_repo_url,
        "repo_commit": build.commit,
    }
    if sla.job is Job.STATISTICS:
        common["statistics"] = sla.statistics_request()
    if PostTrainingStep.EXPLAIN in sla.post_training_steps:
        common["explain"] = ExplainRequest()
    if sla.job is Job.EXPLAIN and sla.explain is not None and sla.explain.registered_name:
        common["explain"] = sla.explain
        common["model_name"] = sla.explain.registered_name  # its experiment, and the model it reads
    if sla.privacy.differential_privacy is not None:
        common["differential_privacy"] = sla.privacy.differential_privacy
    if config.mode is TrainingMode.HIERARCHICAL:
        hierarchy = Hierarchy(
            clusters=list(clusters),
            cluster_rounds=config.training_rounds,
            min_clusters=config.min_clusters or len(clusters),
            min_available_clients=config.min_available_clients,
            min_fit_clients=config.min_fit_clients,
            min_evaluate_clients=config.min_evaluate_clients,
        )
        return TrainingSpec.hierarchical(hierarchy, config.training_cycles, **common)
    return TrainingSpec(
        rounds=config.training_rounds,
        min_available_clients=config.min_available_clients,
        min_fit_clients=config.min_fit_clients,
        min_evaluate_clients=config.min_evaluate_clients,
        **common,
    )


def group_clusters(orchestrator: Orchestrator, nodes: list[LocalNode], project: Project) -> dict[str, list[str]]:
    """Hierarchical mode: the placed nodes' clusters (cluster -> node names); every cluster must be able
    to reach its minimum of learners, and there must be at least `min_clusters` clusters."""
    config = project.sla.training_configuration
    try:
        clusters = orchestrator.node_clusters({node.name: node.data_dir for node in nodes})
    except OrchestratorError as error:
        if error.transient:
            raise
        raise StageError(STAGE, f"cannot group the learners' nodes into clusters: {error}") from error
    small = {name: members for name, members in clusters.items() if len(members) < config.min_available_clients}
    if small:
        listing = "; ".join(f"cluster {name}: {', '.join(members)}" for name, members in sorted(small.items()))
        raise StageError(
            STAGE,
            f"min_available_clients is {config.min_available_clients} per cluster, but {listing} hold(s) fewer "
            "nodes with the project's data: lower min_available_clients, or put more nodes in those clusters "
            "(node.yaml, `flops data partition --clusters`)",
        )
    if config.min_clusters > len(clusters):
        raise StageError(
            STAGE,
            f"min_clusters is {config.min_clusters}, but the project's nodes form {len(clusters)} cluster(s) "
            f"({', '.join(clusters)}): lower min_clusters or add clusters",
        )
    return clusters


@dataclass(frozen=True)
class ActorPlan:
    """How the FL actors run on one backend.

    Locally the actors are the build's environments and folders on this machine; on container
    backends they are the images' console scripts, with the code inside the image.
    """

    backend: str
    repo_dir: str
    aggregator_python: str | None = None
    learner_python: str | None = None
    images: dict[str, str] = field(default_factory=dict)
    remote_data_root: str | None = None

    @classmethod
    def for_backend(cls, backend: str, build: BuildResult, settings: ManagerSettings) -> "ActorPlan":
        if backend == "local":
            return cls(
                backend=backend,
                repo_dir=build.repo_dir,
                aggregator_python=build.aggregator_python or sys.executable,
                learner_python=build.learner_python or sys.executable,
            )
        images = dict(build.images)
        repo_dir = IMAGE_APP_DIR
        if not images and settings.placeholder_images:
            # Only for stand-ins that run commands on this machine: name an image, use local code.
            tag = build.commit[:12] or "local"
            images = {role: f"localhost/flops/{role}:{tag}" for role in ("aggregator", "learner")}
            repo_dir = build.repo_dir
        return cls(backend=backend, repo_dir=repo_dir, images=images, remote_data_root=settings.remote_data_root)

    @property
    def local(self) -> bool:
        """Actors are processes of this machine's environments, not an image's console scripts."""
        return self.backend == "local"

    @property
    def in_image(self) -> bool:
        return not self.local

    def data_mounts(self, node: LocalNode, tags: Sequence[str]) -> dict[str, str]:
        """Containers on this machine see the project's tag folders of the node, read-only, at the same paths."""
        if self.backend != "docker" or self.remote_data_root:
            return {}
        return {path: path for path in self.data_paths(node, tags)}

    def data_paths(self, node: LocalNode, tags: Sequence[str]) -> list[str]:
        """What of a node a learner may read: the folders of the project's tags only, never the
        node's other tags (another customer's data may lie beside them), and the owner's privacy
        policy when there is one (statistics jobs filter by it)."""
        policy = node.data_dir / PRIVACY_FILE
        return [str(node.data_dir / tag) for tag in tags] + ([str(policy)] if policy.is_file() else [])

    def data_dir(self, node: LocalNode) -> str:
        if self.remote_data_root:
            return f"{self.remote_data_root.rstrip('/')}/{node.name}"
        return str(node.data_dir)


def reconcile(ctx: StageContext, project: Project) -> bool:
    """deploying: deploy the actors once; the project trains once the aggregator says so (or ends)."""
    if project.training_started_at is not None or project.rounds or project.training is not None:
        return ctx.store.transition(project.project_id, ProjectStatus.TRAINING, now=ctx.clock())
    aggregator = project.handle(AGGREGATOR)
    if aggregator is None:
        deploy_actors(ctx, project)
        return False
    # An aggregator that ends before it reports a start still ends the training.
    return training.watch_aggregator(ctx, project, aggregator)


def deploy_actors(ctx: StageContext, project: Project) -> None:
    """The aggregator (with hierarchical mode: the root, then one per cluster), then one learner per
    placed node; nothing stays deployed if one fails."""
    if project.build is None:
        raise StageError(STAGE, "no build is recorded for this project")
    sla = project.sla
    config = sla.training_configuration
    orchestrator = ctx.orchestrator(project)
    try:
        nodes = place_learners(discover_nodes(ctx.settings.nodes_dir), config.data_tags, config.min_available_clients)
    except PlacementError as error:
        raise StageError(STAGE, str(error)) from error
    hierarchical = config.mode is TrainingMode.HIERARCHICAL
    clusters = group_clusters(orchestrator, nodes, project) if hierarchical else {}
    spec = training_spec(project, project.build, list(clusters))
    run_dir = ctx.run_dir(project.project_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    tracking = prepare_training(ctx.settings, project, spec, run_dir, files=orchestrator.name == "local")
    spec = tracking.spec  # its experiment, model and MLflow identity made
    (run_dir / SPEC_FILE).write_text(spec.model_dump_json(indent=2), encoding="utf-8")
    plan = ActorPlan.for_backend(orchestrator.name, project.build, ctx.settings)
    port = free_port()
    mqtt_env = actor_mqtt_env(ctx, project.project_id, Component.AGGREGATOR, stage=STAGE)  # its own MQTT user
    resources: dict[str, Any] = {
        "memory_mb": sla.resource_constraints.memory,
        "vcpus": sla.resource_constraints.vcpus,
    }
    state_dir = str(run_dir / "aggregator") if plan.local else f"/tmp/flops-{project.project_id}"
    # All the aggregator may touch besides the system (its sandbox hides the rest): add a path per line.
    aggregator_reads = [plan.repo_dir]
    aggregator_reads += [tracking.env[CREDENTIALS_FILE_ENV]] if tracking.env.get(CREDENTIALS_FILE_ENV) else []
    aggregator_writes = [state_dir]
    # TLS and node identity on the Flower links (flops.pki): the SuperLink's files, a key per SuperNode
    # (the learners', or in hierarchical mode the cluster aggregators').
    root_nodes = list(clusters) if hierarchical else [n.name for n in nodes]
    flower = issue(orchestrator, project.project_id, run_dir, AGGREGATOR, root_nodes, stage=STAGE)
    aggregator_reads += [str(flower.superlink.folder)]
    aggregator = ServiceSpec(
        project_id=project.project_id, name=AGGREGATOR, role=AGGREGATOR, image=plan.images.get("aggregator"),
        command=aggregator_command(
            spec_json=spec.model_dump_json(), repo=plan.repo_dir,
            state_dir=state_dir,
            host="127.0.0.1" if plan.local else "0.0.0.0", port=port, tracking_uri=ctx.settings.tracking_uri,
            python=plan.aggregator_python, in_image=plan.in_image, tls=flower.superlink,
        ),
        env={**mqtt_env, **tracking.env}, ports={"superlink": port}, **resources,
        node=orchestrator.cluster_placement(config.root_cluster) if config.root_cluster else None,
        read_only_paths=aggregator_reads, writable_paths=aggregator_writes,
        read_only_mounts=container_mounts(plan.backend, flower.superlink.folder),
    )  # fmt: skip
    handles: list[ProcessHandle] = []
    try:
        handles.append(orchestrator.deploy(aggregator))
        superlink = f"{handles[0].address or '127.0.0.1'}:{port}"
        check_dialled(flower, handles[0].address or "127.0.0.1", stage=STAGE)
        dials = dict.fromkeys((node.name for node in nodes), superlink)
        identities = {node.name: flower for node in nodes}  # whose SuperLink knows each learner's key
        for cluster, members in clusters.items():
            cluster_superlink, cluster_flower = deploy_cluster_aggregator(
                ctx, project, orchestrator, plan, spec, cluster, members, superlink, flower.supernode(cluster),
                resources, handles,
            )  # fmt: skip
            dials.update(dict.fromkeys(members, cluster_superlink))
            identities.update(dict.fromkeys(members, cluster_flower))
        for node in nodes:
            identity = identities[node.name].supernode(node.name)
            learner = ServiceSpec(
                project_id=project.project_id, name=f"learner-{node.name}", role="learner",
                node=orchestrator.node_placement(node.name),
                image=plan.images.get("learner"),
                command=learner_command(
                    dials[node.name], plan.data_dir(node), config.data_tags, node.name,
                    python=plan.learner_python, in_image=plan.in_image, identity=identity,
                ),
                env={
                    **actor_mqtt_env(ctx, project.project_id, Component.LEARNER, node.name, stage=STAGE),
                    "FLOPS_PROJECT_ID": project.project_id,
                },
                read_only_mounts={
                    **plan.data_mounts(node, config.data_tags), **container_mounts(plan.backend, identity.folder)
                },
                **resources,
                # its project's tags of its node's data, its own key
                read_only_paths=[*plan.data_paths(node, config.data_tags), str(identity.folder)],
            )  # fmt: skip
            handles.append(orchestrator.deploy(learner))
    except Exception:
        undeploy_quietly(orchestrator, handles)
        raise
    ctx.add_handles(project.project_id, handles)


def cluster_service(cluster: str) -> str:
    """The service name of a cluster's aggregator."""
    return f"{AGGREGATOR}-{cluster}"


def deploy_cluster_aggregator(
    ctx: StageContext,
    project: Project,
    orchestrator: Orchestrator,
    plan: ActorPlan,
    spec: TrainingSpec,
    cluster: str,
    members: list[str],
    root_superlink: str,
    root_identity: SuperNodeCredentials,
    resources: dict[str, Any],
    handles: list[ProcessHandle],
) -> tuple[str, FlowerCredentials]:
    """The aggregator of `cluster`, placed in it: a SuperLink for `members` and a SuperNode of the root.
    Appends its handle to `handles`; the address its learners dial and their credentials."""
    run_dir = ctx.run_dir(project.project_id)
    service = cluster_service(cluster)
    flower = issue(orchestrator, project.project_id, run_dir, service, members, stage=STAGE, cluster=cluster)
    port = free_port()
    state_dir = str(run_dir / "clusters" / cluster) if plan.local else f"/tmp/flops-{project.project_id}-{cluster}"
    command = aggregator_command(
        spec_json=spec.model_dump_json(), repo=plan.repo_dir, state_dir=state_dir,
        host="127.0.0.1" if plan.local else "0.0.0.0", port=port, tracking_uri="",  # only the root tracks
        python=plan.aggregator_python, in_image=plan.in_image, tls=flower.superlink,
        cluster=cluster, root_superlink=root_superlink, root_identity=root_identity,
    )  # fmt: skip
    aggregator = ServiceSpec(
        project_id=project.project_id, name=service, role="cluster-aggregator", image=plan.images.get("aggregator"),
        command=command, ports={"superlink": port}, node=orchestrator.cluster_placement(cluster), **resources,
        read_only_paths=[plan.repo_dir, str(flower.superlink.folder), str(root_identity.folder)],
        writable_paths=[state_dir],
        read_only_mounts=container_mounts(plan.backend, flower.superlink.folder, root_identity.folder),
    )  # fmt: skip
    handle = orchestrator.deploy(aggregator)
    handles.append(handle)
    check_dialled(flower, handle.address or "127.0.0.1", stage=STAGE)
    return f"{handle.address or '127.0.0.1'}:{port}", flower


def undeploy_quietly(orchestrator: Orchestrator, handles: list[ProcessHandle]) -> None:
    """Remove what a failed deployment started; the deployment's own error is the one to report."""
    for handle in handles:
        try:
            orchestrator.undeploy(handle)
        except OrchestratorError as error:
            log.warning("undeploy %s after a failed deployment: %s", handle.name, error)
