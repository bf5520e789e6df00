"""`flops train` end to end: the image builder, real SuperLink/SuperNode processes and a real MLflow server."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import numpy as np
import psutil
import pytest
from mlflow.tracking import MlflowClient
from sklearn.datasets import load_digits

from flops.data.partition import partition
from flops.ml_repo.loader import load_model_manager_class
from learner.user_code import ModelRunner, NodeContext
from tests.conftest import BIN, EXAMPLES, run_flops

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftover_processes")]


@pytest.fixture(scope="module")
def flops_home(module_tmp: Callable[[str], Path]) -> Iterator[Path]:
    """One FLOPS_HOME for the module: `flops train` builds environments there, and reuses them."""
    home = module_tmp("train-home") / "flops-home"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FLOPS_HOME", str(home))
        yield home


def summary_of(result_stdout: str) -> dict:
    return json.loads(result_stdout.strip().splitlines()[-1])


def run_flops_in(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "flops"), *args], capture_output=True, text=True, timeout=900, cwd=cwd, env=dict(os.environ)
    )


# digits-sklearn, the way FLOps repositories track: MLflow at import time and inside fit.
TRACKING_PRELUDE = """
import mlflow
import mlflow.sklearn
from mlflow.models import infer_signature

mlflow.autolog()
mlflow.sklearn.autolog(log_models=False)
"""
TRACKING_FIT = """        mlflow.set_experiment("learner-side")
        with mlflow.start_run(run_name="local-fit"):
            mlflow.log_params({"C": 1.0})
            mlflow.log_metric("rows", 1.0)
            mlflow.set_tag("side", "learner")
            infer_signature(None, None)
"""
TRACKING_INIT = """        with mlflow.start_run(run_name="stray"):  # the aggregator builds one too
            mlflow.log_param("created", 1)
"""


def evaluate_on_nodes(repo: Path, nodes: list[Path], parameters: list[np.ndarray]) -> tuple[float, float]:
    """Loss and accuracy of `parameters` evaluated by `repo`'s ModelManager on each node, weighted by examples."""
    saved_env, saved_path = dict(os.environ), list(sys.path)
    sys.path.insert(0, str(repo))
    for module in ("model_manager", "data_manager"):
        sys.modules.pop(module, None)
    try:
        manager_class = load_model_manager_class()
        outcomes = [
            ModelRunner(NodeContext(node.name, node, ["digits"]), manager_class).evaluate(parameters) for node in nodes
        ]
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.path[:] = saved_path
        for module in ("model_manager", "data_manager"):
            sys.modules.pop(module, None)
    examples = sum(o.num_examples for o in outcomes)
    return (
        sum(o.loss * o.num_examples for o in outcomes) / examples,
        sum(o.accuracy * o.num_examples for o in outcomes) / examples,
    )


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
    # One message per round: round 2's global loss and accuracy came with round 3's train replies,
    # and are what evaluating round 2's aggregated parameters on the nodes' data gives.
    checkpoint = np.load(flops_home / "runs" / "digits-e2e" / "checkpoints" / "round-2.npz")
    parameters = [checkpoint[f"arr_{i}"] for i in range(len(checkpoint.files))]
    loss, accuracy = evaluate_on_nodes(
        EXAMPLES / "digits-sklearn", [d for d in sorted(digits_nodes.iterdir()) if d.is_dir()], parameters
    )
    assert summary["rounds"][1]["loss"] == pytest.approx(loss, rel=1e-9)
    assert summary["rounds"][1]["accuracy"] == pytest.approx(accuracy, rel=1e-9)
    assert summary["rounds"][1]["local_loss"] != pytest.approx(loss, rel=1e-6)  # local: the trained models

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("digits-e2e")
    assert experiment is not None
    # Round runs are top-level rows, linked to the training run by a tag (aggregator/tracking.py).
    children = client.search_runs(
        [experiment.experiment_id], f"tags.`flops.training_run_id` = '{summary['parent_run_id']}'"
    )
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


def test_flops_style_repository_runs_unmodified(
    mlflow_server: str, digits_nodes: Path, flops_home: Path, tmp_path: Path
) -> None:
    """set_format("numpy") + reshape, mlflow.autolog() in model_manager.py, a Python 3.10 conda.yaml."""
    result = run_flops(
        "train", str(EXAMPLES / "digits-flops-style"), "--data-dir", str(digits_nodes),
        "--learners", "2", "--rounds", "3", "--tracking-uri", mlflow_server, "--project-id", "flops-style-e2e",
        "--json", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    summary = summary_of(result.stdout)
    assert summary["status"] == "completed" and summary["registered_model_version"]
    assert [r["round"] for r in summary["rounds"]] == [1, 2, 3] and summary["final_accuracy"] > 0.8
    # Its conda.yaml pins Python 3.10, MLflow 2 and pins that clash with the platform: each is named.
    warnings = [line for line in result.stderr.splitlines() if line.startswith("dependency warning:")]
    for pin in ("python=3.10.14", "mlflow==2.12.2", "scipy==1.11.4", "tqdm==4.65.0", "protobuf==3.20.3"):
        assert any(pin in line for line in warnings), result.stderr[-3000:]
    assert not [p for p in tmp_path.iterdir() if p.name in ("mlruns", "mlflow.db")]  # autolog did nothing


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


@pytest.fixture
def tracking_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "tracking-digits"
    shutil.copytree(EXAMPLES / "digits-sklearn", repo, ignore=shutil.ignore_patterns("__pycache__", ".flops"))
    source = (repo / "model_manager.py").read_text()
    fit = "    def fit_model(self, config: dict | None = None) -> int:\n"
    init = "    def __init__(self) -> None:\n"
    assert fit in source and init in source
    source = source.replace("import numpy as np\n", "import numpy as np\n" + TRACKING_PRELUDE, 1)
    source = source.replace(fit, fit + TRACKING_FIT).replace(init, init + TRACKING_INIT)
    (repo / "model_manager.py").write_text(source)
    return repo


def test_train_builds_the_environments_and_user_tracking_is_inert(
    mlflow_server: str, tracking_repo: Path, digits_nodes: Path, flops_home: Path, tmp_path: Path
) -> None:
    """Learners run in the built learner environment (no MLflow), the aggregator in its own; again: reused."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    common = ["--data-dir", str(digits_nodes), "--learners", "2", "--tracking-uri", mlflow_server, "--json"]
    started = time.monotonic()
    first = run_flops_in(cwd, "train", str(tracking_repo), *common, "--rounds", "2", "--project-id", "inert-1")
    first_s = time.monotonic() - started
    assert first.returncode == 0, first.stderr[-4000:]
    summary = summary_of(first.stdout)
    assert summary["status"] == "completed" and summary["final_accuracy"] > 0.8, summary
    built = re.search(r"environments (built|reused) in ([\d.]+) s: learners (\S+), aggregator (\S+)", first.stderr)
    assert built is not None, first.stderr[-3000:]
    learner_python, aggregator_python = Path(built.group(3)), Path(built.group(4))
    envs = flops_home / "builds" / "envs"
    assert learner_python.parent.parent.parent == envs and learner_python.parent.parent.name.startswith("learner-")
    assert aggregator_python.parent.parent.name.startswith("aggregator-")
    # Each learner process ran that interpreter, which cannot import the real MLflow.
    logs = flops_home / "runs" / "inert-1" / "logs"
    for node in ("node-1", "node-2"):
        assert f"(python {learner_python})" in (logs / f"{node}.log").read_text()
    probe = "import importlib.util as u; print(u.find_spec('mlflow') is None, u.find_spec('sklearn') is not None)"
    assert subprocess.run([learner_python, "-c", probe], capture_output=True, text=True).stdout.split() == [
        "True",
        "True",
    ]
    # Nothing of the user's tracking went anywhere: no local store, no stray runs on the server.
    assert list(cwd.iterdir()) == []
    assert not (flops_home / "runs" / "inert-1" / "user-mlruns").exists()
    client = MlflowClient(mlflow_server)
    experiments = [experiment.experiment_id for experiment in client.search_experiments()]
    for name in ("stray", "local-fit"):
        assert client.search_runs(experiments, f"attributes.run_name = '{name}'") == []
    assert client.get_experiment_by_name("learner-side") is None

    started = time.monotonic()
    again = run_flops_in(cwd, "train", str(tracking_repo), *common, "--rounds", "1", "--project-id", "inert-2")
    print(f"flops train: first run (2 rounds) {first_s:.1f} s, second (1 round) {time.monotonic() - started:.1f} s")
    assert again.returncode == 0, again.stderr[-4000:]
    reused = re.search(r"environments reused in ([\d.]+) s: learners (\S+),", again.stderr)
    assert reused is not None, again.stderr[-3000:]
    assert Path(reused.group(2)) == learner_python
    assert float(reused.group(1)) < 30, reused.group(0)
    assert list(cwd.iterdir()) == []


def test_failed_build_prints_the_whole_reason_and_starts_nothing(
    tmp_path: Path, digits_nodes: Path, flops_home: Path
) -> None:
    repo = tmp_path / "unresolvable"
    shutil.copytree(EXAMPLES / "digits-sklearn", repo, ignore=shutil.ignore_patterns("__pycache__", ".flops"))
    (repo / "requirements.txt").write_text("numpy\nscikit-learn\nflops-no-such-package-anywhere==9.9.9\n")
    result = run_flops(
        "train", str(repo), "--data-dir", str(digits_nodes), "--tracking-uri", "http://127.0.0.1:9",
        "--project-id", "unbuildable",
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "error: the build failed at" in result.stderr
    assert "flops-no-such-package-anywhere" in result.stderr
    assert "training unbuildable" not in result.stderr and "observatory started" not in result.stderr
    builders = [
        process.pid
        for process in psutil.process_iter(["cmdline"])
        if "image_builder.main" in " ".join(process.info["cmdline"] or [])
        and "unbuildable" in " ".join(process.info["cmdline"] or [])
    ]
    assert builders == []
