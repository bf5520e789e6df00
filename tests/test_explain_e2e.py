"""`flops train --explain` end to end: three hospitals explain the best model on their own records.

The averaged importances must rank the top features as the same model explained on the pooled
records does (the test pools the hospitals' Parquet files itself); MLflow holds the explanation.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flops.data.partition import partition
from flops.ml_repo.loader import load_model_manager_class
from flops.training import calendar_alias
from learner.explain import attributions
from tests.conftest import EXAMPLES, run_flops

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]
EXAMPLE = EXAMPLES / "hospitals-sklearn"


def pooled_model_and_records(
    parameters: list[np.ndarray], nodes: list[Path]
) -> tuple[object, np.ndarray, np.ndarray, list[str]]:
    sys.path.insert(0, str(EXAMPLE))
    try:
        for module in ("model_manager", "data_manager"):
            sys.modules.pop(module, None)
        from data_manager import FEATURES  # type: ignore[import-not-found]

        manager = load_model_manager_class()()
        manager.set_model_parameters(parameters)
        model = manager.get_model()
    finally:
        sys.path.remove(str(EXAMPLE))
        for module in ("model_manager", "data_manager"):
            sys.modules.pop(module, None)
    frame = pd.concat([pd.read_parquet(f) for node in nodes for f in sorted((node / "hospitals").glob("*.parquet"))])
    return model, frame[list(FEATURES)].to_numpy(np.float64), frame["label"].to_numpy(), list(FEATURES)


def test_the_hospitals_explanation_ranks_the_pooled_top_features(
    mlflow_server: str, flops_home: Path, tmp_path: Path
) -> None:
    partition("breast_cancer", 3, "hospitals", tmp_path / "nodes", scheme="dirichlet", alpha=0.5)  # type: ignore[arg-type]
    result = run_flops(
        "train", str(EXAMPLE), "--data-dir", str(tmp_path / "nodes"), "--learners", "3", "--rounds", "4",
        "--hp", "local_epochs=3", "--explain", "--tracking-uri", mlflow_server, "--project-id", "explain-e2e",
        "--model-name", "explain-e2e", "--json", timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    explanation = summary["explanation"]
    assert sorted(explanation["per_node"]) == ["node-1", "node-2", "node-3"]
    assert "feature importance (" in result.stderr
    best = np.load(flops_home / "runs" / "explain-e2e" / "checkpoints" / "best.npz")
    nodes = sorted(path for path in (tmp_path / "nodes").iterdir() if path.is_dir())
    model, x, y, names = pooled_model_and_records([best[f"arr_{i}"] for i in range(len(best.files))], nodes)
    method = explanation["method"]
    assert method == "shap"  # the example's environment has shap
    pooled = attributions("pooled", model, x, y, names, method, max_samples=len(y))
    pooled_top = sorted(pooled.importances, key=pooled.importances.__getitem__, reverse=True)[:5]
    assert len(set(list(explanation["importances"])[:5]) & set(pooled_top)) >= 3, (explanation, pooled_top)

    client = MlflowClient(mlflow_server)
    run_id = summary["parent_run_id"]
    assert {"explanation.json"} <= {item.path for item in client.list_artifacts(run_id)}
    assert [item.path for item in client.list_artifacts(run_id, "explanation")] == ["explanation/importance.png"]
    top = next(iter(explanation["importances"]))
    assert client.get_run(run_id).data.metrics[f"importance.{top}"] == pytest.approx(explanation["importances"][top])

    # The same model explained again as a job of its own, by its calendar alias: the learners get the
    # parameters the training run kept, the explanation is tracked in a run of its own.
    alias = calendar_alias(summary["registered_model_calendar_version"])
    explained = run_flops(
        "explain", str(EXAMPLE), "--model", f"models:/explain-e2e@{alias}", "--data-dir", str(tmp_path / "nodes"),
        "--learners", "3", "--tracking-uri", mlflow_server, "--project-id", "explain-job", "--json", timeout=900,
    )  # fmt: skip
    assert explained.returncode == 0, explained.stderr[-3000:]
    job = json.loads(explained.stdout.strip().splitlines()[-1])["explanation"]
    assert job["model_uri"] == f"models:/explain-e2e@{alias}"
    assert sorted(job["per_node"]) == ["node-1", "node-2", "node-3"] and job["method"] == "shap"
    assert len(set(list(job["importances"])[:5]) & set(pooled_top)) >= 3, (job, pooled_top)
    kept = client.download_artifacts(run_id, "parameters/best.npz", str(tmp_path))
    with np.load(kept) as saved:
        assert all(np.array_equal(saved[name], best[name]) for name in best.files), "the registered model's parameters"
    runs = client.search_runs([client.get_run(run_id).info.experiment_id], "tags.`flops.role` = 'explanation'")
    assert [r.info.run_name for r in runs] == ["explanation-explain-job"]
    assert "explanation.json" in {item.path for item in client.list_artifacts(runs[0].info.run_id)}

    missing = run_flops(
        "explain", str(EXAMPLE), "--model", "models:/explain-e2e/99", "--data-dir", str(tmp_path / "nodes"),
        "--learners", "3", "--tracking-uri", mlflow_server, "--project-id", "explain-missing", timeout=600,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "models:/explain-e2e/99: no such registered model version" in missing.stderr
