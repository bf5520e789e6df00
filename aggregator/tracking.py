"""MLflow tracking of one federated training, the way an ML engineer expects to find it.

One experiment per project; a parent run per training carrying the parameters, system
metrics and per-round curves (`step=round`); one nested child run per round (FLOps's one row
per round); the best global model logged with its flavor, a signature and requirements, and
registered in the Model Registry. Only the aggregator imports this module.
"""

import time
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric, Param
from mlflow.models import infer_signature
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from flops.training import ModelFlavor, RoundReport, TrainingSpec

ROUND_METRICS = ("loss", "accuracy", "local_loss", "local_accuracy")


@dataclass
class LoggedModel:
    model_uri: str
    registered_name: str | None
    registered_version: str | None


def training_params(spec: TrainingSpec) -> dict[str, str]:
    params: dict[str, Any] = {
        "strategy": spec.strategy.name.value,
        "rounds": spec.rounds,
        "min_available_clients": spec.min_available_clients,
        "min_fit_clients": spec.min_fit_clients,
        "min_evaluate_clients": spec.min_evaluate_clients,
        "data_tags": ",".join(spec.data_tags),
        "model_flavor": spec.model_flavor.value,
        "best_model_metric": spec.best_model_metric,
        "repo_url": spec.repo_url,
        "repo_commit": spec.repo_commit,
    }
    params.update({f"strategy.{k}": v for k, v in spec.strategy.parameters.items()})
    params.update({f"hp.{k}": v for k, v in spec.hyperparameters.items()})
    return {key: str(value) for key, value in params.items()}


def round_metrics(report: RoundReport) -> dict[str, float]:
    metrics = {name: getattr(report, name) for name in ROUND_METRICS}
    values = {name: float(value) for name, value in metrics.items() if value is not None}
    values["learners"] = float(report.learners)
    values["failures"] = float(len(report.failures))
    values["round_duration_s"] = report.duration_s
    return values


class MlflowTracker:
    """Owns the parent run of one training from start to end.

    Uses the explicit client API rather than MLflow's thread-local "active run", so the run can
    be opened in a background thread while the first round already trains.
    """

    def __init__(self, spec: TrainingSpec, tracking_uri: str) -> None:
        self.spec = spec
        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        experiment = self.client.get_experiment_by_name(spec.project_id)
        self.experiment_id: str = (
            experiment.experiment_id if experiment else self.client.create_experiment(spec.project_id)
        )
        tags = {"flops.project_id": spec.project_id, "flops.role": "training"}
        run = self.client.create_run(self.experiment_id, run_name="training", tags=tags)
        self.parent_run_id: str = run.info.run_id
        params = [Param(key, value) for key, value in training_params(spec).items()]
        self.client.log_batch(self.parent_run_id, params=params)
        self._system_metrics = SystemMetricsMonitor(self.parent_run_id, tracking_uri=tracking_uri)
        self._system_metrics.start()

    def log_round(self, report: RoundReport) -> str:
        metrics = round_metrics(report)
        tags = {
            MLFLOW_PARENT_RUN_ID: self.parent_run_id,
            "flops.project_id": self.spec.project_id,
            "flops.round": str(report.round),
        }
        if report.failures:
            tags["flops.failures"] = "; ".join(report.failures)[:5000]
        child = self.client.create_run(self.experiment_id, run_name=f"round-{report.round}", tags=tags)
        now = int(time.time() * 1000)
        self.client.log_batch(
            child.info.run_id,
            metrics=[Metric(key, value, now, 0) for key, value in metrics.items()],
            params=[Param("round", str(report.round))],
        )
        self.client.set_terminated(child.info.run_id, "FINISHED")
        self.client.log_batch(
            self.parent_run_id, metrics=[Metric(key, value, now, report.round) for key, value in metrics.items()]
        )
        return str(child.info.run_id)

    def log_model(self, model: Any, input_example: Any | None, best: RoundReport, code_paths: list[str]) -> LoggedModel:
        """Log and register the best model; `code_paths` carry the user's modules along."""
        now = int(time.time() * 1000)
        best_metrics = {"best_round": float(best.round)} | {
            f"best_{k}": v for k, v in round_metrics(best).items() if k in ROUND_METRICS
        }
        self.client.log_batch(self.parent_run_id, metrics=[Metric(k, v, now, 0) for k, v in best_metrics.items()])
        signature = _signature(model, self.spec.model_flavor, input_example)
        flavor = _flavor_module(self.spec.model_flavor)
        options: dict[str, Any] = {}
        if self.spec.model_flavor is ModelFlavor.PYTORCH:
            # A pickled module loads with any batch size; pt2 would fix the example's shape.
            options["serialization_format"] = "pickle"
        # Flavors log into the active run: make the parent active in this thread for the call.
        with mlflow.start_run(run_id=self.parent_run_id):
            info = flavor.log_model(
                model,
                name="model",
                signature=signature,
                registered_model_name=self.spec.model_name,
                pip_requirements=flavor.get_default_pip_requirements(),
                code_paths=code_paths or None,
                **options,
            )
        version = info.registered_model_version
        return LoggedModel(
            model_uri=info.model_uri,
            registered_name=self.spec.model_name if version is not None else None,
            registered_version=str(version) if version is not None else None,
        )

    def finish(self, succeeded: bool, error: str | None = None) -> None:
        self._system_metrics.finish()
        if error:
            self.client.set_tag(self.parent_run_id, "flops.error", error[:5000])
        self.client.set_terminated(self.parent_run_id, "FINISHED" if succeeded else "FAILED")

    def run_url(self) -> str:
        return f"{self.tracking_uri}/#/experiments/{self.experiment_id}/runs/{self.parent_run_id}"


def _flavor_module(flavor: ModelFlavor) -> Any:
    if flavor is ModelFlavor.SKLEARN:
        import mlflow.sklearn

        return mlflow.sklearn
    if flavor is ModelFlavor.PYTORCH:
        import mlflow.pytorch

        return mlflow.pytorch
    import mlflow.tensorflow

    return mlflow.tensorflow


def _signature(model: Any, flavor: ModelFlavor, example: Any | None) -> Any:
    """A signature from a synthetic input example: no node data reaches the aggregator."""
    if example is None and flavor is ModelFlavor.SKLEARN and hasattr(model, "n_features_in_"):
        example = np.zeros((2, int(model.n_features_in_)))
    if example is None:
        return None
    try:
        if flavor is ModelFlavor.PYTORCH:
            import torch

            model.eval()
            with torch.no_grad():
                output = model(torch.as_tensor(example)).cpu().numpy()
        else:
            output = model.predict(example)
        return infer_signature(example, output)
    except Exception:
        return None
