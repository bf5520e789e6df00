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
from tests.git_repos import make_git_repo
from tests.manager_process import FINAL, Manager, sla

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


def test_an_explain_job_through_the_manager_explains_the_customers_registered_model(
    mlflow_server: str, tmp_path: Path
) -> None:
    """A training registers Admin.hospitals v1; `"job": "explain"` explains it on the nodes' data."""
    repo = make_git_repo(EXAMPLE, tmp_path / "repos" / "hospitals")
    manager = Manager(tmp_path / "home", mlflow_server)
    try:
        data = {"dataset_name": "breast_cancer", "number_of_partitions": 3, "data_tag": "hospitals"}
        assert manager.call("POST", "/api/flops/mocks", json={"mock_data_configuration": data}).status_code == 200
        configuration = {"data_tags": ["hospitals"], "training_rounds": 2, "min_available_clients": 3,
                         "min_fit_clients": 3, "min_evaluate_clients": 3}  # fmt: skip
        training = sla(repo, project_name="hospitals", training_configuration=configuration)
        trained = manager.wait_for(
            manager.call("POST", "/api/flops/projects", json=training).json()["project_id"], FINAL, timeout=900
        )
        assert trained["status"] == "completed", (trained["error"], manager.log())
        model_uri = f"models:/Admin.hospitals/{trained['model']['version']}"
        job = sla(repo, project_name="hospitals", training_configuration=configuration, job="explain",
                  explain={"model_uri": model_uri, "max_samples": 50})  # fmt: skip
        answer = manager.call("POST", "/api/flops/projects", json=job)
        assert answer.status_code == 200, answer.text
        explained = manager.wait_for(answer.json()["project_id"], FINAL, timeout=900)
        assert explained["status"] == "completed", (explained["error"], manager.log())
        explanation = explained["explanation"]
        assert explanation["model_uri"] == model_uri and len(explanation["per_node"]) == 3
        assert explained["model"]["version"] is None, "an explain job registers no model"
        missing = {**job, "explain": {"model_uri": "models:/Admin.never-trained/1"}, "project_name": "never-trained"}
        refused = manager.wait_for(
            manager.call("POST", "/api/flops/projects", json=missing).json()["project_id"], FINAL, timeout=600
        )
        assert (
            refused["status"] == "failed" and "no registered model 'Admin.never-trained'" in refused["error"]["message"]
        )
    finally:
        manager.stop()
