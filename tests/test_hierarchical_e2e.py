"""Hierarchical FL end to end with `flops train --clusters`: real SuperLinks and SuperNodes at both levels.

A root aggregator over two cluster aggregators, each the SuperLink of two learners (digits over four
nodes, `node.yaml` clusters), two cycles of two rounds; then a cluster killed mid-cycle. The same
through the manager and the Oakestra stand-in is in `tests/test_hierarchical_manager.py`.
"""

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest
from mlflow.tracking import MlflowClient

from flops.data.partition import partition
from flops.net import wait_until
from flops.progress import PROGRESS_FILE
from tests.conftest import BIN, EXAMPLES
from tests.test_train_e2e import evaluate_on_nodes

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]


@pytest.fixture(scope="module")
def flops_home(module_tmp: Callable[[str], Path]) -> Iterator[Path]:
    home = module_tmp("hfl-home") / "flops-home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOPS_HOME", str(home))
        yield home


@pytest.fixture(scope="module")
def cluster_nodes(module_tmp: Callable[[str], Path]) -> Path:
    """digits over node-1..node-4 under tag `digits`; node-1, node-2 in cluster-1, node-3, node-4 in cluster-2."""
    out = module_tmp("hfl-data")
    partition("digits", 4, "digits", out, clusters=2)
    return out


def train(flops_home: Path, mlflow_server: str, project: str, *options: str, rounds: int = 2) -> subprocess.Popen[str]:
    command = [
        str(BIN / "flops"), "train", str(EXAMPLES / "digits-sklearn"), "--learners", "4", "--clusters", "2",
        "--cycles", "2", "--rounds", str(rounds), "--tracking-uri", mlflow_server, "--project-id", project,
        "--model-name", project, "--json", *options,
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ))


def finish(process: subprocess.Popen[str], timeout: float = 600) -> tuple[int, dict, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, json.loads(out.strip().splitlines()[-1]), err


def test_two_clusters_two_cycles_of_two_rounds(mlflow_server: str, cluster_nodes: Path, flops_home: Path) -> None:
    code, summary, err = finish(
        train(flops_home, mlflow_server, "hfl-e2e", "--data-dir", str(cluster_nodes)), timeout=900
    )
    assert code == 0, err[-4000:]
    assert summary["status"] == "completed"
    assert [cycle["round"] for cycle in summary["rounds"]] == [1, 2]
    assert summary["final_accuracy"] > 0.85
    assert "cycle 2/2" in err and "cluster-2: 2 rounds" in err
    for cycle in summary["rounds"]:
        assert cycle["participants"] == ["cluster-1", "cluster-2"]
        assert [c["cluster"] for c in cycle["clusters"]] == ["cluster-1", "cluster-2"]
        first, second = cycle["clusters"]
        assert first["learners"] == ["node-1", "node-2"] and second["learners"] == ["node-3", "node-4"]
        for cluster in cycle["clusters"]:
            assert [r["round"] for r in cluster["rounds"]] == [1, 2]
            assert all(r["accuracy"] is not None and r["learners"] == 2 for r in cluster["rounds"])
            assert cluster["error"] is None
        # Examples behind the root's aggregate: each cluster's last round, over its own learners.
        assert cycle["train_examples"] == sum(c["train_examples"] for c in cycle["clusters"])
    # Cycle 1's global model was evaluated by cycle 2's first cluster rounds, on every node: the
    # figures equal evaluating the root's cycle-1 checkpoint on the four nodes' data ourselves.
    checkpoint = np.load(flops_home / "runs" / "hfl-e2e" / "checkpoints" / "round-1.npz")
    parameters = [checkpoint[f"arr_{i}"] for i in range(len(checkpoint.files))]
    nodes = sorted(d for d in cluster_nodes.iterdir() if d.is_dir())
    loss, accuracy = evaluate_on_nodes(EXAMPLES / "digits-sklearn", nodes, parameters)
    assert summary["rounds"][0]["loss"] == pytest.approx(loss, rel=1e-9)
    assert summary["rounds"][0]["accuracy"] == pytest.approx(accuracy, rel=1e-9)
    assert summary["rounds"][1]["clusters"][0]["received_accuracy"] is not None

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("hfl-e2e")
    assert experiment is not None
    parent = summary["parent_run_id"]
    cycles = client.search_runs([experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(run.info.run_name for run in cycles) == ["cycle-1", "cycle-2"]
    for cycle_run in cycles:
        assert {"loss", "accuracy", "learners"} <= set(cycle_run.data.metrics)
        clusters = client.search_runs(
            [experiment.experiment_id], f"tags.`mlflow.parentRunId` = '{cycle_run.info.run_id}'"
        )
        names = sorted(run.info.run_name for run in clusters)
        assert names == [f"{cycle_run.info.run_name}/cluster-1", f"{cycle_run.info.run_name}/cluster-2"]
        for cluster_run in clusters:
            history = client.get_metric_history(cluster_run.info.run_id, "accuracy")
            assert sorted(point.step for point in history) == [1, 2]
            assert cluster_run.data.params["learners"] in ("node-1,node-2", "node-3,node-4")
    parent_run = client.get_run(parent)
    assert parent_run.data.params["mode"] == "hierarchical" and parent_run.data.params["training_cycles"] == "2"
    assert summary["registered_model_name"] == "hfl-e2e" and summary["registered_model_version"]
    # Learners and cluster aggregators never track: only the root's runs are in MLflow.
    everything = client.search_runs([experiment.experiment_id])
    assert len(everything) == 1 + 2 + 4


def cluster_aggregator(name: str, state: Path) -> psutil.Process | None:
    """The `flops-aggregator --cluster NAME` process of the training in `state`."""
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if "--cluster" in cmdline and name in cmdline and any(str(state) in part for part in cmdline):
            return process
    return None


def kill_in_second_cycle(state: Path, cluster: str) -> None:
    """Once the cluster trains cycle 2 (its run's folder is there), kill its aggregator with all it started."""
    cycle_two = state / "clusters" / cluster / "cycle-2-train"
    assert wait_until(cycle_two.is_dir, 400), _read(state / PROGRESS_FILE)
    process = cluster_aggregator(cluster, state)
    assert process is not None, "the cluster aggregator is not running"
    os.killpg(process.pid, signal.SIGKILL)  # its own process group: SuperLink, SuperNode, their apps


def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8") if path.is_file() else ""


def test_a_cluster_killed_mid_cycle_with_min_clusters_one_is_recorded(
    mlflow_server: str, cluster_nodes: Path, flops_home: Path
) -> None:
    process = train(flops_home, mlflow_server, "hfl-lose-one", "--data-dir", str(cluster_nodes), "--min-clusters", "1")
    kill_in_second_cycle(flops_home / "runs" / "hfl-lose-one", "cluster-2")
    code, summary, err = finish(process)
    assert code == 0, err[-4000:]
    assert summary["status"] == "completed"
    second = summary["rounds"][1]
    assert second["participants"] == ["cluster-1"]
    lost = [c for c in second["clusters"] if c["cluster"] == "cluster-2"]
    assert lost and lost[0]["error"], second
    assert any("cluster-2" in entry for entry in second["failures"] + second["stragglers"]), second
    client = MlflowClient(mlflow_server)
    cycle_run = client.get_run(second["run_id"])
    assert "cluster-2" in cycle_run.data.tags.get("flops.failures", "") + cycle_run.data.tags.get(
        "flops.stragglers", ""
    )


def test_a_cluster_killed_mid_cycle_fails_the_training_by_default_naming_it(
    mlflow_server: str, cluster_nodes: Path, flops_home: Path
) -> None:
    started = time.monotonic()
    process = train(flops_home, mlflow_server, "hfl-lose-all", "--data-dir", str(cluster_nodes), rounds=1)
    kill_in_second_cycle(flops_home / "runs" / "hfl-lose-all", "cluster-1")
    code, summary, _ = finish(process)
    assert code == 1
    assert summary["status"] == "failed"
    assert "cluster(s) lost (cluster-1)" in summary["error"] and "min_clusters" in summary["error"], summary["error"]
    assert time.monotonic() - started < 500
