"""`flops stats` end to end: real SuperLink and SuperNodes answer both passes from their Parquet files.

breast_cancer over three hospitals (Dirichlet split, unequal sizes); one hospital's owner keeps a
policy with a minimum count above its size and a minimum bin size. The test pools the Parquet
files itself and checks the job's figures against them.
"""

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flops.data.partition import partition
from flops.data.privacy import write_privacy_policy
from flops.statistics import PrivacyPolicy
from tests.conftest import run_flops
from tests.manager_process import FINAL, Manager

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]

FEATURES = ["mean_radius", "mean_texture", "worst_area"]


@pytest.fixture(scope="module")
def hospitals(module_tmp: Callable[[str], Path]) -> Path:
    out = module_tmp("hospitals")
    partition("breast_cancer", 3, "hospitals", out, scheme="dirichlet", alpha=0.5)  # type: ignore[arg-type]
    return out


def pooled(nodes: list[Path]) -> pd.DataFrame:
    return pd.concat(
        [pd.read_parquet(file) for node in nodes for file in sorted((node / "hospitals").glob("*.parquet"))]
    )


def test_exact_figures_a_filtered_hospital_and_a_looser_request_refused(
    mlflow_server: str, hospitals: Path, flops_home: Path
) -> None:
    nodes = sorted(path for path in hospitals.iterdir() if path.is_dir())
    sizes = {node.name: len(pooled([node])) for node in nodes}
    small = min(sizes, key=sizes.__getitem__)
    write_privacy_policy(hospitals / small, PrivacyPolicy(min_count=sizes[small] + 1, min_bin_count=3))
    features = [option for feature in FEATURES for option in ("--feature", feature)]
    result = run_flops(
        "stats", "--data-dir", str(hospitals), "--nodes", "3", *features, "--bins", "10",
        "--tracking-uri", mlflow_server, "--project-id", "stats-e2e", "--name", "stats-e2e", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    statistics = summary["statistics"]
    assert statistics["filtered"] == {
        small: {f: f"{sizes[small]} record(s), fewer than the node's minimum of {sizes[small] + 1} (min_count)"
                for f in FEATURES}
    }  # fmt: skip
    contributing = [node for node in nodes if node.name != small]
    frame = pooled(contributing)
    for feature in FEATURES:
        values = frame[feature].to_numpy(dtype=np.float64)
        figures = statistics["features"][feature]
        assert figures["nodes"] == [node.name for node in contributing]
        assert figures["count"] == len(values)
        assert abs(figures["mean"] - values.mean()) <= 1e-9 * abs(values.mean())
        assert abs(figures["stddev"] - values.std(ddof=1)) <= 1e-9 * values.std(ddof=1)
        expected, _ = np.histogram(values, bins=np.asarray(figures["histogram"]["edges"]))
        assert figures["histogram"]["counts"] == expected.tolist()
    assert "filtered:" in result.stderr and small in result.stderr

    client = MlflowClient(mlflow_server)
    run = client.get_run(summary["parent_run_id"])
    assert run.data.tags["flops.role"] == "statistics"
    assert run.data.metrics["mean_radius.count"] == statistics["features"]["mean_radius"]["count"]
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert "statistics.json" in artifacts
    plots = {item.path for item in client.list_artifacts(run.info.run_id, "histograms")}
    assert plots == {f"histograms/{feature}.png" for feature in FEATURES}

    refused = run_flops(
        "stats", "--data-dir", str(hospitals), "--nodes", "3", "--feature", FEATURES[0], "--min-bin-count", "1",
        "--tracking-uri", mlflow_server, "--project-id", "stats-looser", "--json",
    )  # fmt: skip
    assert refused.returncode == 1
    error = json.loads(refused.stdout.strip().splitlines()[-1])["error"]
    assert f"{small}: the request would loosen the node's privacy policy (min_bin_count 1 < 3)" in error, error


def test_a_statistics_job_through_the_manager(mlflow_server: str, tmp_path: Path) -> None:
    """`"job": "statistics"`: no repository, no build; the result in the project's status."""
    manager = Manager(tmp_path / "home", mlflow_server)
    try:
        data = {"dataset_name": "breast_cancer", "number_of_partitions": 3, "data_tag": "bc"}
        assert manager.call("POST", "/api/flops/mocks", json={"mock_data_configuration": data}).status_code == 200
        nodes = sorted(path for path in (tmp_path / "home" / "nodes").iterdir() if path.is_dir())
        write_privacy_policy(nodes[2], PrivacyPolicy(min_count=1000))
        sla = {
            "customerID": "Admin", "job": "statistics", "project_name": "bc-statistics",
            "training_configuration": {"data_tags": ["bc"], "min_available_clients": 3, "min_fit_clients": 3},
            "statistics": {"features": ["mean_radius"], "statistics": ["count", "mean", "stddev"]},
        }  # fmt: skip
        answer = manager.call("POST", "/api/flops/projects", json=sla)
        assert answer.status_code == 200, answer.text
        project = manager.wait_for(answer.json()["project_id"], FINAL, timeout=300)
        assert project["status"] == "completed", (project["error"], manager.log())
        assert project["build"]["commit"] == "" and project["model"]["version"] is None
        statistics = project["statistics"]
        frame = pd.concat(
            [pd.read_parquet(file) for node in nodes[:2] for file in sorted((node / "bc").glob("*.parquet"))]
        )
        figures = statistics["features"]["mean_radius"]
        assert figures["count"] == len(frame) and figures["nodes"] == [nodes[0].name, nodes[1].name]
        assert abs(figures["mean"] - frame["mean_radius"].mean()) <= 1e-9 * frame["mean_radius"].mean()
        assert list(statistics["filtered"]) == [nodes[2].name]
        assert figures["histogram"] is None  # not asked for
        wrong = manager.call("POST", "/api/flops/projects", json={**sla, "backend": "oakestra"})
        assert wrong.status_code == 422 and "local backend" in wrong.json()["message"]
    finally:
        manager.stop()
