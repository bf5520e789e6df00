"""MLflow tracking of one federated training, the way an ML engineer expects to find it.

One experiment per project *name* (the SLA's `project_name`, else the repository's name: the
same name as the registered model), tagged as a model-training experiment; in it, per
training, one `training-<project id>` run with the parameters, system metrics, per-round curves
(`step=round`) and the best model, registered in the Model Registry; and one `round-N` run per
round (FLOps's one row per round), a top-level run so the runs table shows it as a row. Every
run carries the project id as tag `flops.project_id`. Only the aggregator imports this module.
"""

import time
from dataclasses import dataclass
from typing import Any

import mlflow
import numpy as np
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from flops.tracking_server import run_url
from flops.training import ModelFlavor, ModelInput, RoundReport, TrainingSpec

# MLflow 3's experiment kind: "custom_model_development" is the UI's "Machine learning" kind
# (the other kinds it knows: genai_development, finetuning, regression, ...).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
PROJECT_TAG = "flops.project_id"
ROLE_TAG = "flops.role"
ROUND_TAG = "flops.round"
TRAINING_RUN_TAG = "flops.training_run_id"
EXPERIMENT_NOTE = (
    "Federated training with FLOps. Per training: one `training-<project id>` run with the "
    "parameters, the per-round curves (step = round), system metrics and the best model; one "
    "`round-N` run per round. Every run carries its project id as tag `flops.project_id`."
)

ROUND_METRICS = ("loss", "accuracy", "local_loss", "local_accuracy")


@dataclass
class LoggedModel:
    model_uri: str
    registered_name: str | None
    registered_version: str | None
    input: ModelInput | None = None


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
    """Owns the `training-<project id>` run of one training (`parent_run_id`) from start to end.

    Uses the explicit client API rather than MLflow's thread-local "active run", so the run can
    be opened in a background thread while the first round already trains.
    """

    def __init__(self, spec: TrainingSpec, tracking_uri: str) -> None:
        self.spec = spec
        self.tracking_uri = tracking_uri
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        self.experiment_id: str = open_experiment(self.client, spec)
        tags = {PROJECT_TAG: spec.project_id, ROLE_TAG: "training"}
        run = self.client.create_run(self.experiment_id, run_name=f"training-{spec.project_id}", tags=tags)
        self.parent_run_id: str = run.info.run_id
        params = [Param(key, value) for key, value in training_params(spec).items()]
        self.client.log_batch(self.parent_run_id, params=params)
        self._system_metrics = SystemMetricsMonitor(self.parent_run_id, tracking_uri=tracking_uri)
        self._system_metrics.start()

    def log_round(self, report: RoundReport) -> str:
        """One `round-N` run, and the round's point on the training run's curves (both at step N)."""
        metrics = round_metrics(report)
        tags = {
            PROJECT_TAG: self.spec.project_id,
            ROLE_TAG: "round",
            ROUND_TAG: str(report.round),
            TRAINING_RUN_TAG: self.parent_run_id,
        }
        if report.failures:
            tags["flops.failures"] = "; ".join(report.failures)[:5000]
        round_run = self.client.create_run(self.experiment_id, run_name=f"round-{report.round}", tags=tags)
        now = int(time.time() * 1000)
        points = [Metric(key, value, now, report.round) for key, value in metrics.items()]
        self.client.log_batch(round_run.info.run_id, metrics=points, params=[Param("round", str(report.round))])
        self.client.set_terminated(round_run.info.run_id, "FINISHED")
        self.client.log_batch(self.parent_run_id, metrics=points)
        return str(round_run.info.run_id)

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
            input=model_input(signature),
        )

    def finish(self, succeeded: bool, error: str | None = None) -> None:
        self._system_metrics.finish()
        if error:
            self.client.set_tag(self.parent_run_id, "flops.error", error[:5000])
        self.client.set_terminated(self.parent_run_id, "FINISHED" if succeeded else "FAILED")

    def run_url(self) -> str:
        return run_url(self.tracking_uri, self.experiment_id, self.parent_run_id)


def experiment_name(spec: TrainingSpec) -> str:
    return spec.experiment_name or spec.model_name


def open_experiment(client: MlflowClient, spec: TrainingSpec) -> str:
    """The id of the project's experiment, created (or tagged) as a model-training experiment.

    Projects with the same name share the experiment, as they share the registered model: each
    training is its own `training-<project id>` run. An experiment of that name that was
    deleted in MLflow is left alone: the training goes to `<name> (<project id>)` instead.
    """
    name = experiment_name(spec)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        name = f"{name} ({spec.project_id})"
        experiment = client.get_experiment_by_name(name)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise MlflowException(
                f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore "
                f"--experiment-id {experiment.experiment_id}`) or purge it (`mlflow gc`)"
            )
    if experiment is None:
        tags = {
            EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND,
            PROJECT_TAG: spec.project_id,
            MLFLOW_RUN_NOTE: EXPERIMENT_NOTE,
        }
        try:
            return str(client.create_experiment(name, tags=tags))
        except MlflowException as error:  # another training created it in the meantime
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise error from None
    experiment_id = str(experiment.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    client.set_experiment_tag(experiment_id, PROJECT_TAG, spec.project_id)  # the latest project trained here
    return experiment_id


def _flavor_module(flavor: ModelFlavor) -> Any:
    if flavor is ModelFlavor.SKLEARN:
        import mlflow.sklearn

        return mlflow.sklearn
    if flavor is ModelFlavor.PYTORCH:
        import mlflow.pytorch

        return mlflow.pytorch
    import mlflow.tensorflow

    return mlflow.tensorflow


def model_input(signature: Any) -> ModelInput | None:
    """The input a signature describes: one tensor's shape and type, or a table's columns."""
    schema = getattr(signature, "inputs", None)
    if schema is None or not schema.inputs:
        return None
    if schema.is_tensor_spec():
        spec = schema.inputs[0]
        return ModelInput(shape=[int(n) for n in spec.shape], dtype=_type_name(spec.type))
    return ModelInput(shape=[-1, len(schema.inputs)], dtype=_type_name(schema.inputs[0].type))


def _type_name(kind: Any) -> str:
    """`float64` for a NumPy dtype, `double` for an MLflow column type."""
    return str(getattr(kind, "name", kind))


def _input_width(model: Any) -> int | None:
    """Fitted estimators know their width; FLOps-style managers set linear weights (`coef_`) by hand."""
    if hasattr(model, "n_features_in_"):
        return int(model.n_features_in_)
    coef = getattr(model, "coef_", None)
    return int(np.shape(coef)[-1]) if coef is not None and np.ndim(coef) >= 1 else None


def _signature(model: Any, flavor: ModelFlavor, example: Any | None) -> Any:
    """A signature from a synthetic input example: no node data reaches the aggregator."""
    width = _input_width(model) if example is None and flavor is ModelFlavor.SKLEARN else None
    if width:
        example = np.zeros((2, width))
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
