"""The example ML repositories keep the contract and learn, in simulated FedAvg rounds.

No Flower processes: each round is done by hand, in process, the way learners and the
aggregator use a repository (a fresh `ModelManager()` per node and round, data loaded
through `load_dataset()` from the node's data directory, parameters averaged weighted by
the number of training examples).
"""

import importlib
import inspect
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from flops.data.node_data import DATA_DIR_ENV, DATA_TAGS_ENV
from flops.data.partition import Scheme, node_name, partition
from flops.ml_repo.contract import check_repository
from flops.ml_repo.inert_mlflow import inert_mlflow, is_inert

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Every example has modules of these names, so each test imports them afresh.
SHARED_MODULES = ("model_manager", "data_manager")
# Where the examples run in this process: no tracking files may appear here.
TRACKING_LEFTOVERS = ("mlruns", "mlflow.db")


@pytest.fixture
def load_example(monkeypatch: pytest.MonkeyPatch) -> Iterator:
    """Import an example's `model_manager` the way a learner does: from its folder, MLflow inert."""

    def forget() -> None:
        for name in SHARED_MODULES:
            sys.modules.pop(name, None)

    def load(name: str) -> ModuleType:
        forget()
        monkeypatch.syspath_prepend(str(EXAMPLES / name))
        with inert_mlflow():  # `import mlflow` in user code binds the learner's inert MLflow
            return importlib.import_module("model_manager")

    yield load
    forget()


@pytest.fixture
def torch_one_thread() -> Iterator:
    """The CNN is tiny: one CPU thread is fastest, and steady on a busy machine."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits_nodes(module_tmp: Callable[[str], Path]) -> list[Path]:
    out = module_tmp("digits")
    partition("digits", 2, "digits", out, scheme=Scheme.IID)
    return [out / node_name(i) for i in (1, 2)]


@pytest.fixture(scope="module")
def hospital_nodes(module_tmp: Callable[[str], Path]) -> list[Path]:
    # The README's scenario: three hospitals, skewed diagnoses and unequal sizes.
    out = module_tmp("hospitals")
    partition("breast_cancer", 3, "hospitals", out, scheme=Scheme.DIRICHLET, alpha=0.5)
    return [out / node_name(i) for i in (1, 2, 3)]


def fit(manager, config: dict) -> int:
    """`fit_model(config)`, or `fit_model()` for repositories written without config."""
    if inspect.signature(manager.fit_model).parameters:
        return manager.fit_model(config)
    return manager.fit_model()


def fedavg(
    module: ModuleType,
    nodes: list[Path],
    tag: str,
    rounds: int,
    monkeypatch: pytest.MonkeyPatch,
    config: dict | None = None,
) -> tuple[list[np.ndarray], float]:
    """Run `rounds` rounds of FedAvg; the global parameters and their weighted accuracy."""
    monkeypatch.setenv(DATA_TAGS_ENV, tag)
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    # As the aggregator does: initial parameters from a manager without data.
    parameters = module.ModelManager().get_model_parameters()
    for server_round in range(1, rounds + 1):
        results = []
        for node in nodes:
            monkeypatch.setenv(DATA_DIR_ENV, str(node))
            manager = module.ModelManager()
            manager.set_model_data()
            manager.set_model_parameters(parameters)
            round_config = {"local_epochs": 1, **(config or {}), "server_round": server_round}
            examples = fit(manager, round_config)
            results.append(([np.asarray(p) for p in manager.get_model_parameters()], examples))
        total = sum(examples for _, examples in results)
        parameters = [sum(params[i] * examples for params, examples in results) / total for i in range(len(parameters))]

    evaluations = []
    for node in nodes:
        monkeypatch.setenv(DATA_DIR_ENV, str(node))
        manager = module.ModelManager()
        manager.set_model_data()
        manager.set_model_parameters(parameters)
        evaluations.append(manager.evaluate_model())
    accuracy = sum(acc * n for _, acc, n in evaluations) / sum(n for *_, n in evaluations)
    return parameters, float(accuracy)


def assert_fresh_shapes_match(module: ModuleType, trained: list[np.ndarray]) -> None:
    fresh = module.ModelManager().get_model_parameters()
    assert [np.shape(p) for p in fresh] == [np.shape(p) for p in trained]


@pytest.mark.parametrize("name", ["digits-sklearn", "digits-pytorch", "hospitals-sklearn", "digits-flops-style"])
def test_example_keeps_the_contract(name: str) -> None:
    check = check_repository(EXAMPLES / name)
    assert check.ok, check.problems
    assert check.dependency_file is not None
    assert (EXAMPLES / name / "data_manager.py").is_file()
    assert (EXAMPLES / name / "README.md").is_file()


def test_digits_sklearn_learns(load_example, digits_nodes, monkeypatch) -> None:
    module = load_example("digits-sklearn")
    parameters, accuracy = fedavg(module, digits_nodes, "digits", 3, monkeypatch)
    assert accuracy > 0.85
    assert_fresh_shapes_match(module, parameters)
    manager = module.ModelManager()
    example = manager.get_input_example()
    assert example.shape == (2, 64) and not example.any()
    assert manager.get_model().predict(example).shape == (2,)


def test_digits_flops_style_learns(load_example, digits_nodes, monkeypatch, tmp_path) -> None:
    """datasets 2.x-style `set_format("numpy")` + `reshape`, and `mlflow.autolog()` that does nothing."""
    monkeypatch.chdir(tmp_path)
    module = load_example("digits-flops-style")
    assert is_inert(module.mlflow)
    assert not inspect.signature(module.ModelManager.fit_model).parameters.keys() - {"self"}
    parameters, accuracy = fedavg(module, digits_nodes, "digits", 3, monkeypatch)
    assert accuracy > 0.85
    assert not [name for name in TRACKING_LEFTOVERS if (tmp_path / name).exists()]
    assert_fresh_shapes_match(module, parameters)


def test_hospitals_sklearn_learns(load_example, hospital_nodes, monkeypatch) -> None:
    module = load_example("hospitals-sklearn")
    parameters, accuracy = fedavg(module, hospital_nodes, "hospitals", 3, monkeypatch)
    assert accuracy > 0.85
    assert_fresh_shapes_match(module, parameters)
    # The logged model standardises by itself: it takes the raw features.
    manager = module.ModelManager()
    manager.set_model_parameters(parameters)
    assert manager.get_model().predict(manager.get_input_example()).shape == (2,)


def test_digits_pytorch_learns(load_example, digits_nodes, monkeypatch, torch_one_thread) -> None:
    torch = torch_one_thread
    monkeypatch.setenv("FLOPS_DEVICE", "cpu")
    module = load_example("digits-pytorch")
    parameters, accuracy = fedavg(module, digits_nodes, "digits", 2, monkeypatch)
    assert accuracy > 0.5
    assert_fresh_shapes_match(module, parameters)
    manager = module.ModelManager()
    assert manager.handles_proximal_term is True
    example = manager.get_input_example()
    assert example.shape == (2, 1, 8, 8) and example.dtype == np.float32
    with torch.no_grad():
        assert manager.get_model()(torch.from_numpy(example)).shape == (2, 10)


def test_digits_pytorch_proximal_term_pulls_towards_global(
    load_example, digits_nodes, monkeypatch, torch_one_thread
) -> None:
    monkeypatch.setenv("FLOPS_DEVICE", "cpu")
    monkeypatch.setenv(DATA_TAGS_ENV, "digits")
    monkeypatch.setenv(DATA_DIR_ENV, str(digits_nodes[0]))
    module = load_example("digits-pytorch")
    start = module.ModelManager().get_model_parameters()

    def drift(mu: float) -> float:
        manager = module.ModelManager()
        manager.set_model_data()
        manager.set_model_parameters(start)
        manager.fit_model({"local_epochs": 1, "server_round": 1, "proximal_mu": mu})
        trained = manager.get_model_parameters()
        return float(sum(np.sum((a - b) ** 2) for a, b in zip(trained, start, strict=True)))

    assert drift(10.0) < drift(0.0)
