"""`flops train` end to end: real SuperLink/SuperNode processes and a real MLflow server."""

import json
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits

from flops.data.partition import partition
from tests.conftest import EXAMPLES, run_flops

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]


def summary_of(result_stdout: str) -> dict:
    return json.loads(result_stdout.strip().splitlines()[-1])


def test_digits_sklearn_two_learners_three_rounds(mlflow_server: str, digits_nodes: Path, flops_home: Path) -> None:
    result = run_flops(
        "train", str(EXAMPLES / "digits-sklearn"), "--data-dir", str(digits_nodes),
        "--learners", "2", "--rounds", "3", "--tracking-uri", mlflow_server,
        "--project-id", "digits-e2e", "--model-name", "digits-e2e", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert summary["status"] == "completed"
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3]
    assert summary["rounds"][2]["accuracy"] > 0.85
    assert "round 3/3" in result.stderr

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("digits-e2e")
    assert experiment is not None
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{summary['parent_run_id']}'")
    assert sorted(run.info.run_name for run in children) == ["round-1", "round-2", "round-3"]
    for run in children:
        assert {"loss", "accuracy", "local_accuracy", "learners", "round_duration_s"} <= set(run.data.metrics)
    parent = client.get_run(summary["parent_run_id"])
    assert parent.data.params["strategy"] == "FedAvg" and parent.data.params["rounds"] == "3"
    curve = client.get_metric_history(parent.info.run_id, "accuracy")
    assert sorted(m.step for m in curve) == [1, 2, 3]

    version = client.get_model_version("digits-e2e", summary["registered_model_version"])
    assert version.name == "digits-e2e"
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/digits-e2e/{version.version}")
    digits = load_digits()
    features = (digits.images.reshape(len(digits.images), -1) / 16.0).astype(np.float32)
    predictions = np.asarray(model.predict(features[:200]))
    assert (predictions == digits.target[:200]).mean() > 0.85


def test_pytorch_example_trains_two_rounds(mlflow_server: str, digits_nodes: Path, flops_home: Path) -> None:
    result = run_flops(
        "train", str(EXAMPLES / "digits-pytorch"), "--data-dir", str(digits_nodes),
        "--learners", "2", "--rounds", "2", "--flavor", "pytorch", "--tracking-uri", mlflow_server,
        "--project-id", "digits-torch-e2e", "--hp", "local_epochs=1", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert len(summary["rounds"]) == 2 and summary["rounds"][1]["accuracy"] > 0.5
    for module in ("model_manager", "data_manager"):  # other tests' user code in this process
        sys.modules.pop(module, None)
    mlflow.set_tracking_uri(mlflow_server)
    model = mlflow.pyfunc.load_model(f"models:/digits-pytorch/{summary['registered_model_version']}")
    images = (load_digits().images[:16] / 16.0).astype(np.float32)[:, None, :, :]
    assert np.asarray(model.predict(images)).shape == (16, 10)


def test_flops_style_repository_runs_unmodified(mlflow_server: str, digits_nodes: Path, flops_home: Path) -> None:
    result = run_flops(
        "train", str(EXAMPLES / "digits-flops-style"), "--data-dir", str(digits_nodes),
        "--learners", "2", "--rounds", "2", "--strategy", "FedProx", "--strategy-param", "proximal_mu=0.1",
        "--tracking-uri", mlflow_server, "--project-id", "flops-style-e2e", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert summary["status"] == "completed" and summary["registered_model_version"]


def test_invalid_repository_is_refused_before_anything_starts(
    tmp_path: Path, digits_nodes: Path, flops_home: Path
) -> None:
    (tmp_path / "model_manager.py").write_text("class ModelManager:\n    pass\n")
    result = run_flops(
        "train",
        str(tmp_path),
        "--data-dir",
        str(digits_nodes),
        "--tracking-uri",
        "http://127.0.0.1:9",
    )
    assert result.returncode == 2
    assert "fit_model()" in result.stderr and "dependency file" in result.stderr


def test_missing_data_tag_is_refused(digits_nodes: Path, flops_home: Path) -> None:
    result = run_flops(
        "train",
        str(EXAMPLES / "digits-sklearn"),
        "--data-dir",
        str(digits_nodes),
        "--data-tags",
        "mnist",
    )
    assert result.returncode == 2
    assert "no data for tag(s) mnist" in result.stderr


def test_user_code_exception_ends_training_with_its_summary(
    mlflow_server: str, tmp_path: Path, digits_nodes: Path, flops_home: Path
) -> None:
    repo = tmp_path / "broken"
    repo.mkdir()
    source = (EXAMPLES / "digits-sklearn" / "model_manager.py").read_text()
    marker = "    def fit_model(self, config: dict | None = None) -> int:\n"
    assert marker in source
    source = source.replace(marker, marker + "        raise RuntimeError('diverged on purpose')\n")
    (repo / "model_manager.py").write_text(source)
    for name in ("data_manager.py", "requirements.txt"):
        (repo / name).write_text((EXAMPLES / "digits-sklearn" / name).read_text())
    result = run_flops(
        "train", str(repo), "--data-dir", str(digits_nodes), "--rounds", "2",
        "--tracking-uri", mlflow_server, "--json",
    )  # fmt: skip
    assert result.returncode == 1
    summary = summary_of(result.stdout)
    assert summary["status"] == "failed"
    assert (
        "model_manager.py:" in summary["error"]
        and "in fit_model: RuntimeError: diverged on purpose" in summary["error"]
    )
    run = MlflowClient(mlflow_server).get_run(summary["parent_run_id"])
    assert run.info.status == "FAILED"


def test_too_few_learners_times_out_clearly(mlflow_server: str, tmp_path: Path, flops_home: Path) -> None:
    partition("digits", 1, "digits", tmp_path)
    result = run_flops(
        "train", str(EXAMPLES / "digits-sklearn"), "--data-dir", str(tmp_path), "--learners", "1",
        "--min-available-clients", "2", "--learner-timeout", "8", "--tracking-uri", mlflow_server, "--json",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    error = summary_of(result.stdout)["error"]
    assert "only 1 of 2 required learners joined within 8 s" in error
