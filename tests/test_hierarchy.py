"""Hierarchical FL's logic without Flower: specs, the SLA, clusters of nodes per backend, the root's app.

The real runs (root and cluster SuperLinks, SuperNodes at both levels) are in
`tests/test_hierarchical_e2e.py`.
"""

import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from flops.app_bundle import SHIM_PACKAGE, build_app_dir
from flops.cli.train import TrainInputError, group_by_cluster
from flops.data.node_meta import NodeMeta, write_node_meta
from flops.sla import SLAError, parse_sla
from flops.training import SPEC_RUN_CONFIG_KEY, ClusterTask, Hierarchy, TrainingSpec
from flops_manager.models import Project
from flops_manager.nodes import LocalNode
from flops_manager.orchestration.addresses import AddressAllocator
from flops_manager.orchestration.base import OrchestratorError
from flops_manager.orchestration.local import LocalOrchestrator
from flops_manager.orchestration.oakestra import OakestraOrchestrator, OakestraSettings
from flops_manager.stages.deploy import group_clusters
from flops_manager.stages.errors import StageError
from flops_manager.store import open_store
from tests.oakestra_standin import OakestraStandin


def hierarchy(**fields: Any) -> Hierarchy:
    values: dict[str, Any] = {
        "clusters": ["cluster-1", "cluster-2"],
        "cluster_rounds": 3,
        "min_clusters": 2,
        "min_available_clients": 2,
        "min_fit_clients": 2,
        "min_evaluate_clients": 1,
        **fields,
    }
    return Hierarchy(**values)


def root_spec(**fields: Any) -> TrainingSpec:
    return TrainingSpec.hierarchical(hierarchy(**fields), 2, project_id="p-1", model_name="acme.digits")


def test_the_root_counts_clusters_and_a_cluster_spec_counts_learners() -> None:
    root = root_spec(min_clusters=1)
    assert (root.rounds, root.min_available_clients, root.min_fit_clients, root.min_evaluate_clients) == (2, 2, 1, 1)
    task = ClusterTask(cluster="cluster-2", cycle=2, evaluate_received=True)
    cluster = root.cluster_spec(task)
    assert cluster.hierarchy is None and cluster.cluster == task
    assert (cluster.rounds, cluster.min_available_clients, cluster.min_fit_clients) == (3, 2, 2)
    assert cluster.min_evaluate_clients == 1
    assert cluster.project_id == root.project_id and cluster.model_name == root.model_name
    assert task.folder == "cycle-2-train"
    with pytest.raises(ValueError, match="only a hierarchical"):
        cluster.cluster_spec(task)


def test_impossible_hierarchies_are_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="min_clusters \\(3\\) exceeds the 2 clusters"):
        hierarchy(min_clusters=3)
    with pytest.raises(ValidationError, match="cluster names repeat"):
        hierarchy(clusters=["a", "a"])
    with pytest.raises(ValidationError, match="min_fit_clients \\(3\\) exceeds min_available_clients"):
        hierarchy(min_fit_clients=3)
    with pytest.raises(ValidationError, match="not both"):
        TrainingSpec(project_id="p", model_name="m", hierarchy=hierarchy(), cluster=ClusterTask(cluster="a", cycle=1))


def sla(**configuration: Any) -> dict[str, Any]:
    return {
        "customerID": "acme",
        "ml_repo_url": "https://example.org/digits.git",
        "ml_model_flavor": "sklearn",
        "training_configuration": {"data_tags": ["digits"], **configuration},
    }


def test_flops_hierarchical_slas_are_accepted_and_min_clusters_needs_that_mode() -> None:
    parsed = parse_sla(sla(mode="hierarchical", training_cycles=2, training_rounds=3, min_clusters=1))
    assert parsed.training_configuration.mode.value == "hierarchical"
    assert parsed.training_configuration.min_clusters == 1
    assert parse_sla(sla(mode="hierarchical")).training_configuration.min_clusters == 0  # all
    with pytest.raises(SLAError, match="min_clusters and root_cluster are for mode 'hierarchical' only"):
        parse_sla(sla(min_clusters=1))
    with pytest.raises(SLAError, match="for mode 'hierarchical' only"):
        parse_sla(sla(root_cluster="munich"))


def test_the_roots_app_names_the_cluster_aggregators_clientapp(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "model_manager.py").write_text("class ModelManager: ...\n", encoding="utf-8")
    root = root_spec()
    root_app = build_app_dir(repo, tmp_path / "root-app", root)
    assert '"aggregator.cluster_client"' in (root_app / SHIM_PACKAGE / "client.py").read_text(encoding="utf-8")
    cluster_app = build_app_dir(repo, tmp_path / "cluster-app", root.cluster_spec(ClusterTask(cluster="a", cycle=1)))
    assert '"learner.client_app"' in (cluster_app / SHIM_PACKAGE / "client.py").read_text(encoding="utf-8")
    config = tomllib.loads((cluster_app / "pyproject.toml").read_text(encoding="utf-8"))
    shipped = TrainingSpec.model_validate_json(config["tool"]["flwr"]["app"]["config"][SPEC_RUN_CONFIG_KEY])
    assert shipped.cluster is not None and shipped.rounds == 3


def node_folders(root: Path, clusters: list[str | None]) -> list[Path]:
    folders = []
    for index, cluster in enumerate(clusters, start=1):
        folder = root / f"node-{index}"
        folder.mkdir(parents=True)
        if cluster is not None:
            write_node_meta(folder, NodeMeta(cluster=cluster))
        folders.append(folder)
    return folders


def test_flops_train_uses_the_nodes_clusters_when_they_make_k_else_contiguous_blocks(tmp_path: Path) -> None:
    written = node_folders(tmp_path / "a", ["east", "west", "east", "west"])
    assert group_by_cluster(written, 2) == {"east": [0, 2], "west": [1, 3]}
    assert group_by_cluster(written, 4) == {f"cluster-{i}": [i - 1] for i in range(1, 5)}
    plain = node_folders(tmp_path / "b", [None, None, None])
    assert group_by_cluster(plain, 2) == {"cluster-1": [0, 1], "cluster-2": [2]}
    with pytest.raises(TrainInputError, match="every cluster needs a node"):
        group_by_cluster(plain, 4)
    (plain[0] / "node.yaml").write_text("cluster: Not A Label\n", encoding="utf-8")
    with pytest.raises(TrainInputError, match=r"node\.yaml"):
        group_by_cluster(plain, 2)


def test_local_clusters_come_from_node_metadata(tmp_path: Path) -> None:
    folders = node_folders(tmp_path, ["cluster-2", None, "cluster-2"])
    backend = LocalOrchestrator(tmp_path / "runs")
    nodes = {folder.name: folder for folder in folders}
    assert backend.node_clusters(nodes) == {"cluster-2": ["node-1", "node-3"], "default": ["node-2"]}
    assert backend.cluster_placement("cluster-2") is None
    (folders[1] / "node.yaml").write_text("cluster: [\n", encoding="utf-8")
    with pytest.raises(OrchestratorError, match=r"node-2/node\.yaml"):
        backend.node_clusters(nodes)


def test_oakestra_clusters_are_its_active_clusters_of_the_nodes_placements(tmp_path: Path) -> None:
    clusters = [
        {"_id": {"$oid": f"{i:024x}"}, "cluster_name": name, "cluster_location": "0,0,1", "active": active}
        for i, (name, active) in enumerate([("munich", True), ("garching", True), ("berlin", False)])
    ]
    store = open_store(None, tmp_path / "db")
    with OakestraStandin(username="u", password="secret-pw", clusters=clusters) as standin:
        placement = {"node-1": "munich", "node-2": "garching/worker7", "node-3": "munich", "node-4": "berlin"}
        settings = OakestraSettings(url=standin.url, username="u", password=SecretStr("secret-pw"), placement=placement)
        backend = OakestraOrchestrator(settings, AddressAllocator.from_store(store))
        assert backend.active_clusters() == ["garching", "munich"]
        three = {f"node-{i}": tmp_path for i in (1, 2, 3)}
        assert backend.node_clusters(three) == {"garching": ["node-2"], "munich": ["node-1", "node-3"]}
        assert backend.cluster_placement("munich") == "munich"
        inactive = r"cluster berlin, which is not active \(active: garching, munich\)"
        with pytest.raises(OrchestratorError, match=inactive):
            backend.node_clusters({**three, "node-4": tmp_path})
        with pytest.raises(OrchestratorError, match="node-9 has no Oakestra placement"):
            backend.node_clusters({"node-9": tmp_path})
        backend.client.close()
    store.close()


def test_deploy_refuses_clusters_that_cannot_reach_their_minimum_naming_them(tmp_path: Path) -> None:
    folders = node_folders(tmp_path, ["east", "east", "west"])
    nodes = [LocalNode(name=folder.name, data_dir=folder, tags=["digits"]) for folder in folders]
    backend = LocalOrchestrator(tmp_path / "runs")

    def project(**configuration: Any) -> Project:
        return Project(project_id="p-1", customer_id="acme", sla=parse_sla(sla(mode="hierarchical", **configuration)))

    assert group_clusters(backend, nodes, project()) == {"east": ["node-1", "node-2"], "west": ["node-3"]}
    with pytest.raises(StageError, match="but cluster west: node-3 hold"):
        group_clusters(backend, nodes, project(min_available_clients=2))
    with pytest.raises(StageError, match="min_clusters is 3, but the project's nodes form 2 cluster"):
        group_clusters(backend, nodes, project(min_clusters=3))
