"""Hierarchical FL through the manager: the local backend, and the Oakestra stand-in with two active clusters.

One manager serves both (local is always enabled; Oakestra through the stand-in, which runs the
services on this machine), so the repository is built once. Four mock nodes: `node.yaml` puts
node-1, node-2 in cluster-1 and node-3, node-4 in cluster-2 (the local backend's clusters); on
Oakestra the same nodes are placed in the stand-in's clusters `munich` and `garching`.
"""

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import EXAMPLES
from tests.manager_process import FINAL, Manager, make_git_repo, sla
from tests.oakestra_standin import OakestraStandin

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]

OAKESTRA_CLUSTERS = {"munich": ["node-1", "node-2"], "garching": ["node-3", "node-4"]}


@pytest.fixture(scope="module")
def standin(module_tmp: Callable[[str], Path]) -> Iterator[OakestraStandin]:
    clusters = [
        {"_id": {"$oid": f"{index + 1:024x}"}, "cluster_name": name, "cluster_location": "48.1,11.6,1000",
         "active": True, "memory_in_mb": 16000, "total_cpu_cores": 16}
        for index, name in enumerate([*OAKESTRA_CLUSTERS, "berlin"])
    ]  # fmt: skip
    clusters[-1]["active"] = False
    server = OakestraStandin(run_locally=True, work_dir=module_tmp("standin"), clusters=clusters)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def manager(mlflow_server: str, standin: OakestraStandin, module_tmp: Callable[[str], Path]) -> Iterator[Manager]:
    home = module_tmp("hfl-manager-home")
    secret = home / "oakestra-password"
    secret.write_text("stand-in-secret")
    placement = {node: cluster for cluster, nodes in OAKESTRA_CLUSTERS.items() for node in nodes}
    extra = {
        "FLOPS_OAKESTRA_URL": standin.url,
        "FLOPS_OAKESTRA_USERNAME": "flops",
        "FLOPS_OAKESTRA_PASSWORD_FILE": str(secret),
        "FLOPS_OAKESTRA_INSECURE": "1",
        "FLOPS_OAKESTRA_PLACEMENT": json.dumps(placement),
        "FLOPS_OAKESTRA_VOLUME_CSI_DRIVER": "standin.csi.flops",
        "FLOPS_PLACEHOLDER_IMAGES": "1",
    }
    instance = Manager(home, mlflow_server, extra_env=extra)
    try:
        data = {"dataset_name": "digits", "number_of_partitions": 4, "data_tag": "digits", "number_of_clusters": 2}
        answer = instance.call("POST", "/api/flops/mocks", json={"mock_data_configuration": data})
        assert answer.status_code == 200, answer.text
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="module")
def repo(module_tmp: Callable[[str], Path]) -> Path:
    return make_git_repo(EXAMPLES / "digits-sklearn", module_tmp("hfl-repos") / "digits-sklearn")


def hierarchical_sla(repo: Path, **extra: Any) -> dict[str, Any]:
    document = sla(repo, rounds=2, project_name="hfl-digits", **extra)
    document["training_configuration"].update({"mode": "hierarchical", "training_cycles": 2})
    return document


def check_tree(project: dict[str, Any], clusters: dict[str, list[str]]) -> None:
    """The project's status: cycles, then clusters with their learners and rounds."""
    assert [cycle["round"] for cycle in project["rounds"]] == [1, 2]
    for cycle in project["rounds"]:
        assert {c["cluster"]: c["learners"] for c in cycle["clusters"]} == clusters
        for cluster in cycle["clusters"]:
            assert [r["round"] for r in cluster["rounds"]] == [1, 2] and cluster["accuracy"] is not None
    assert project["rounds"][-1]["accuracy"] > 0.85


def test_two_clusters_through_the_manager_on_the_local_backend(manager: Manager, repo: Path) -> None:
    answer = manager.call("POST", "/api/flops/projects", json=hierarchical_sla(repo))
    assert answer.status_code == 200, answer.text
    project = manager.wait_for(answer.json()["project_id"], FINAL, timeout=900)
    assert project["status"] == "completed", (project["error"], manager.log())
    check_tree(project, {"cluster-1": ["node-1", "node-2"], "cluster-2": ["node-3", "node-4"]})
    actors = [handle for handle in project["deployment"] if handle["name"].startswith(("aggregator", "learner"))]
    aggregators = sorted(handle["name"] for handle in actors if handle["name"].startswith("aggregator"))
    assert aggregators == ["aggregator", "aggregator-cluster-1", "aggregator-cluster-2"]
    assert not any(handle["active"] for handle in actors)
    assert project["model"]["registered_uri"].startswith("models:/Admin.hfl-digits/")
    client = MlflowClient(manager.env["FLOPS_TRACKING_URI"])
    parent = project["tracking"]["run_id"]
    experiment_id = project["tracking"]["experiment_id"]
    cycles = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(run.info.run_name for run in cycles) == ["cycle-1", "cycle-2"]
    for cycle in cycles:
        nested = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{cycle.info.run_id}'")
        assert sorted(run.data.tags["flops.cluster"] for run in nested) == ["cluster-1", "cluster-2"]


def test_two_oakestra_clusters_each_with_its_aggregator_and_learners(
    manager: Manager, standin: OakestraStandin, repo: Path
) -> None:
    document = hierarchical_sla(repo, backend="oakestra")
    document["training_configuration"]["root_cluster"] = "munich"
    answer = manager.call("POST", "/api/flops/projects", json=document)
    assert answer.status_code == 200, answer.text
    project = manager.wait_for(answer.json()["project_id"], FINAL, timeout=900)
    assert project["status"] == "completed", (project["error"], manager.log())
    check_tree(project, OAKESTRA_CLUSTERS)
    services = [r.body["applications"][0]["microservices"][0] for r in standin.requests if r.path == "/api/service/"]
    placed = {actor(service): placed_in(service) for service in services if actor(service)}
    assert placed["root"] == "munich"  # where the SLA says (root_cluster); no constraint by default
    assert placed["cluster munich"] == "munich" and placed["cluster garching"] == "garching"
    for cluster, nodes in OAKESTRA_CLUSTERS.items():
        for node in nodes:
            assert placed[f"learner {node}"] == cluster
    assert not standin.apps, "the application is deleted when the project ends"


def actor(service: dict[str, Any]) -> str:
    """ "root", "cluster NAME" or "learner NODE" for the FL actors' services, "" for the rest."""
    command = service["cmd"]
    if command[0] == "flops-aggregator":
        return f"cluster {command[command.index('--cluster') + 1]}" if "--cluster" in command else "root"
    if command[0] == "flops-learner":
        return f"learner {command[command.index('--node-name') + 1]}"
    return ""


def placed_in(service: dict[str, Any]) -> str | None:
    """The one cluster a service's SLA constraints place it in (`direct`, or `clusters` allowing one); None: any."""
    for constraint in service.get("constraints") or []:
        if constraint["type"] == "direct":
            return str(constraint["cluster"])
        if constraint["type"] == "clusters" and len(constraint["allowed"]) == 1:
            return str(constraint["allowed"][0])
    return None
