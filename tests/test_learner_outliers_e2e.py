"""One learner of four trains on shuffled labels: the round names it, and no other learner.

Real SuperLink, SuperNodes and MLflow (`flops train`): the per-learner records of each round
(examples, losses, update norm, distance to the aggregate) and the outlier flags in the summary,
in the CLI's output and in MLflow (metrics with the learner's name in the key, a tag naming it).
"""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flops.data.partition import partition
from tests.conftest import EXAMPLES, run_flops

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]


def test_a_learner_on_shuffled_labels_is_flagged_from_its_first_round(
    mlflow_server: str, flops_home: Path, tmp_path: Path
) -> None:
    nodes = tmp_path / "nodes"
    partition("digits", 4, "digits", nodes)
    for part in (nodes / "node-3" / "digits").glob("*.parquet"):
        frame = pd.read_parquet(part)
        frame["label"] = np.random.default_rng(3).permutation(frame["label"].to_numpy())
        frame.to_parquet(part)
    result = run_flops(
        "train", str(EXAMPLES / "digits-sklearn"), "--data-dir", str(nodes), "--learners", "4", "--rounds", "2",
        "--tracking-uri", mlflow_server, "--project-id", "outliers-e2e", "--model-name", "outliers-e2e", "--json",
        timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    for report in summary["rounds"]:
        records = {record["learner"]: record for record in report["per_learner"]}
        assert sorted(records) == ["node-1", "node-2", "node-3", "node-4"]
        assert [name for name, record in records.items() if record["flags"]] == ["node-3"], report["per_learner"]
        figures = {flag["figure"] for flag in records["node-3"]["flags"]}
        assert "local_loss" in figures or "global_loss" in figures
        for record in records.values():
            assert record["examples"] > 0 and record["update_norm"] > 0 and record["train_s"] >= 0
            assert record["distance_to_aggregate"] is not None and record["global_loss"] is not None
    assert "outlier: node-3: " in result.stderr

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("outliers-e2e")
    assert experiment is not None
    first = client.search_runs([experiment.experiment_id], "attributes.run_name = 'round-1'")[0]
    assert first.data.metrics["learner.node-3.flagged"] == 1.0 and first.data.metrics["learner.node-1.flagged"] == 0.0
    assert first.data.metrics["outliers"] == 1.0
    assert first.data.tags["flops.outliers"].startswith("node-3: ")
    assert first.data.metrics["learner.node-3.local_loss"] > 2 * first.data.metrics["learner.node-1.local_loss"]
