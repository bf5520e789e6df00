"""Runs the user's ModelManager for Flower's messages: train (with or without first evaluating
the model received) and evaluate.

One `ModelRunner` keeps one ModelManager: it is made, and its data loaded (`set_model_data`),
for the first message and reused for every later one of the same run, the way FLOps's own
learners kept theirs for a whole training (see `learner.client_app` for what a run may reuse).

Kept free of Flower types so it can be tested directly. Every failure inside user code
becomes a `UserCodeError` that names the node, the place in the user's file and the
exception, because that is what the person reading the aggregator's error needs.

Learners never track: `inert_tracking()` gives user code an inert MLflow
(`flops.ml_repo.inert_mlflow`) before it is imported, even where the real one is importable.
"""

import inspect
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from flops.data.node_data import NodeDataSettings, missing_tags
from flops.explain import ExplainRequest, NodeImportance
from flops.ml_repo.inert_mlflow import install as install_inert_mlflow
from flops.ml_repo.loader import UserCodeError, user_code
from learner.explain import attributions

Arrays = list[NDArray[Any]]


@dataclass(frozen=True)
class NodeContext:
    node_name: str
    data_dir: Path
    data_tags: Sequence[str]


@dataclass
class EvaluateOutcome:
    loss: float
    accuracy: float
    num_examples: int


@dataclass
class TrainOutcome:
    parameters: Arrays
    num_examples: int
    local_loss: float
    local_accuracy: float
    local_eval_examples: int
    received: EvaluateOutcome | None = None  # the model received, evaluated before training
    train_s: float = 0.0  # the user's fit_model, in seconds


def inert_tracking() -> None:
    """From now on in this process, user code's `import mlflow` gets the inert MLflow.

    Also tells libraries that look for MLflow themselves (transformers' Trainer) to leave it
    alone. Idempotent; call it before the user's modules are imported.
    """
    os.environ.setdefault("DISABLE_MLFLOW_INTEGRATION", "TRUE")
    install_inert_mlflow()


def _accepts_config(method: Any) -> bool:
    try:
        return len(inspect.signature(method).parameters) >= 1
    except (TypeError, ValueError):
        return False


def proximal_step(local: Arrays, global_: Arrays, mu: float) -> Arrays:
    """The FedProx proximal operator applied to the locally trained parameters.

    argmin_w ||w - w_local||^2 / 2 + mu/2 ||w - w_global||^2 = (w_local + mu w_global)/(1+mu):
    for models whose training loop FLOps cannot reach (scikit-learn) this keeps local models
    near the global one exactly as the proximal term intends.
    """
    return [
        ((np.asarray(w, dtype=np.float64) + mu * np.asarray(g, dtype=np.float64)) / (1.0 + mu)).astype(
            np.asarray(w).dtype
        )
        for w, g in zip(local, global_, strict=True)
    ]


class ModelRunner:
    """One node's view of the user's ModelManager."""

    def __init__(self, node: NodeContext, manager_class: type) -> None:
        self.node = node
        self.manager_class = manager_class
        self._manager: Any = None

    def _loaded_manager(self) -> Any:
        if self._manager is None:
            self._manager = self._new_manager()
        return self._manager

    def _new_manager(self) -> Any:
        absent = missing_tags(self.node.data_dir, self.node.data_tags)
        if absent:
            raise UserCodeError(
                f"{self.node.node_name}: no data for tag(s) {', '.join(absent)} in {self.node.data_dir}"
            )
        # User code's load_dataset() takes no arguments: it finds the node's data in the environment.
        os.environ.update(NodeDataSettings(data_dir=self.node.data_dir, data_tags=list(self.node.data_tags)).env())
        with user_code(self.node.node_name):
            manager = self.manager_class()
            manager.set_model_data()
        return manager

    def train(self, parameters: Arrays, config: Mapping[str, Any], evaluate_received: bool = False) -> TrainOutcome:
        """Train from `parameters`; with `evaluate_received`, evaluate them on the local data first."""
        manager = self._loaded_manager()
        received = None
        with user_code(self.node.node_name):
            manager.set_model_parameters(parameters)
            if evaluate_received:
                loss, accuracy, examples = manager.evaluate_model()
                received = EvaluateOutcome(float(loss), float(accuracy), int(examples))
            fitting = time.monotonic()
            if _accepts_config(manager.fit_model):
                num_examples = int(manager.fit_model(dict(config)))
            else:
                num_examples = int(manager.fit_model())
            train_s = time.monotonic() - fitting
            trained = [np.asarray(p) for p in manager.get_model_parameters()]
            mu = float(config.get("proximal_mu", 0.0) or 0.0)
            if mu > 0 and not getattr(manager, "handles_proximal_term", False):
                trained = proximal_step(trained, parameters, mu)
                manager.set_model_parameters(trained)
            loss, accuracy, eval_examples = manager.evaluate_model()
        return TrainOutcome(trained, num_examples, float(loss), float(accuracy), int(eval_examples), received, train_s)

    def explain(self, parameters: Arrays, request: ExplainRequest) -> NodeImportance:
        """Feature attributions of the model with `parameters` on this node's data (`flops.explain`).

        The ModelManager gives the data to explain on with `get_explanation_data()`:
        `(features, labels, feature_names)`.
        """
        manager = self._loaded_manager()
        with user_code(self.node.node_name):
            data = getattr(manager, "get_explanation_data", None)
            if not callable(data):
                raise UserCodeError(
                    f"{self.node.node_name}: the ModelManager has no get_explanation_data() -> (features, labels, "
                    "feature_names), which explain_model needs (see docs/ml-repository.md)"
                )
            manager.set_model_parameters(parameters)
            x, y, names = data()
            return attributions(
                self.node.node_name, manager.get_model(), x, y, list(names), request.method, request.max_samples
            )

    def evaluate(self, parameters: Arrays) -> EvaluateOutcome:
        manager = self._loaded_manager()
        with user_code(self.node.node_name):
            manager.set_model_parameters(parameters)
            loss, accuracy, num_examples = manager.evaluate_model()
        return EvaluateOutcome(float(loss), float(accuracy), int(num_examples))
