"""The ClientApp of a cluster aggregator: each message of the root becomes a training of its cluster.

Contract (hierarchical FL, `TrainingSpec.hierarchy`):

- train (cycle c, the root's parameters): the cluster's SuperLink runs `cluster_rounds` rounds with
  the cluster's learners from those parameters (`TrainingSpec.cluster_spec`, a Flower run of its
  own, whose ServerApp is `aggregator.server_app` in cluster mode: no tracking, no events). When the
  root asks for the received model to be evaluated (one message per round), the learners of the
  cluster's first round evaluate it before training. The reply holds the cluster model (the last
  round's aggregate), `num-examples` (the examples behind it: the last round's training examples),
  the cluster model's evaluation on the cluster (`local-loss`, `local-accuracy`), the received
  model's (`global-*` keys), and the cluster's `ClusterReport` (per-round aggregates, learner names)
  in the config record `CLUSTER_REPORT_RECORD`.
- evaluate (the root's final model): one evaluate phase over the cluster's learners; `num-examples`,
  `loss` and `accuracy` weighted over the cluster.

A cluster run that fails raises an error naming the cluster and the reason; Flower sends it to the
root as the cluster's failed reply. Nothing here talks to MLflow or holds a record of a learner.
"""

import os
import shutil
import time

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from aggregator.cluster_context import ClusterContext
from aggregator.control import ControlAPI
from aggregator.main import follow, submit
from aggregator.server_app import (
    FINAL_PARAMETERS_FILE,
    INITIAL_PARAMETERS_FILE,
    RECEIVED_EVALUATION_KEY,
    load_parameters,
)
from flops.app_bundle import build_app_dir
from flops.net import port_open
from flops.training import (
    CLUSTER_REPORT_KEY,
    CLUSTER_REPORT_RECORD,
    EVALUATE_RECEIVED_KEY,
    GLOBAL_ACCURACY_KEY,
    GLOBAL_EXAMPLES_KEY,
    GLOBAL_LOSS_KEY,
    SPEC_RUN_CONFIG_KEY,
    ClusterReport,
    ClusterTask,
    TrainingSpec,
    TrainingSummary,
)

app = ClientApp()


class ClusterRunError(RuntimeError):
    """The cluster's part of a cycle failed; the message names the cluster."""


def run_in_cluster(
    context: ClusterContext, spec: TrainingSpec, parameters: list[np.ndarray]
) -> tuple[TrainingSummary, list[np.ndarray] | None]:
    """One run of the cluster's SuperLink for `spec` (a cluster spec), from `parameters`; its summary and model."""
    assert spec.cluster is not None
    folder = context.state_dir / spec.cluster.folder
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    np.savez(folder / INITIAL_PARAMETERS_FILE, *parameters)
    app_dir = build_app_dir(context.repo, folder / "app", spec)
    os.environ["FLWR_HOME"] = str(context.flwr_home)  # the CLI's connection: this cluster's SuperLink
    control = ControlAPI(context.superlink, context.ca_file, context.control_token_file)
    host, _, port = context.superlink.rpartition(":")

    def gone() -> str | None:
        return None if port_open(host, int(port)) else f"the SuperLink of cluster {context.cluster} is gone"

    where = f"cluster {context.cluster}"
    try:
        run_id = submit(app_dir, control)
    except RuntimeError as error:
        raise ClusterRunError(f"{where}: {error}") from error
    outcome = follow(control, run_id, folder, gone, spec.round_timeout * max(1, spec.rounds))
    if isinstance(outcome, str):
        raise ClusterRunError(f"{where}: {outcome}")
    if outcome.status != "completed":
        raise ClusterRunError(f"{where}: {outcome.error or 'its training failed'}")
    final = folder / FINAL_PARAMETERS_FILE
    return outcome, load_parameters(final) if final.is_file() else None


def cluster_report(context: ClusterContext, task: ClusterTask, summary: TrainingSummary, took: float) -> ClusterReport:
    received = summary.extra.get(RECEIVED_EVALUATION_KEY) or {}
    last = summary.rounds[-1] if summary.rounds else None
    return ClusterReport(
        cluster=context.cluster,
        cycle=task.cycle,
        rounds=summary.rounds,
        learners=sorted({name for report in summary.rounds for name in report.participants}),
        train_examples=last.train_examples if last else 0,
        loss=summary.final_loss,
        accuracy=summary.final_accuracy,
        received_loss=received.get("loss"),
        received_accuracy=received.get("accuracy"),
        duration_s=took,
    )


@app.train()
def train(msg: Message, context: Context) -> Message:
    cluster = ClusterContext.from_env(os.environ)
    root = TrainingSpec.model_validate_json(str(context.run_config[SPEC_RUN_CONFIG_KEY]))
    config = msg.content.config_records.get("config") or ConfigRecord()
    task = ClusterTask(
        cluster=cluster.cluster,
        cycle=int(config.get("server-round", 1)),  # type: ignore[arg-type]
        evaluate_received=bool(config.get(EVALUATE_RECEIVED_KEY, False)),
    )
    started = time.time()
    parameters = msg.content.array_records["arrays"].to_numpy_ndarrays()
    summary, model = run_in_cluster(cluster, root.cluster_spec(task), parameters)
    if model is None:
        raise ClusterRunError(f"cluster {cluster.cluster}: its training left no model")
    report = cluster_report(cluster, task, summary, time.time() - started)
    values: dict[str, int | float] = {"num-examples": report.train_examples}
    if report.loss is not None and report.accuracy is not None:
        values |= {"local-loss": report.loss, "local-accuracy": report.accuracy}
    received = summary.extra.get(RECEIVED_EVALUATION_KEY) or {}
    if received.get("examples") and received.get("loss") is not None:
        values |= {
            GLOBAL_LOSS_KEY: float(received["loss"]),
            GLOBAL_ACCURACY_KEY: float(received.get("accuracy") or 0.0),
            GLOBAL_EXAMPLES_KEY: int(received["examples"]),
        }
    content = RecordDict(
        {
            "arrays": ArrayRecord(model),
            "metrics": MetricRecord(values),  # type: ignore[arg-type]
            CLUSTER_REPORT_RECORD: ConfigRecord({CLUSTER_REPORT_KEY: report.model_dump_json()}),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cluster = ClusterContext.from_env(os.environ)
    root = TrainingSpec.model_validate_json(str(context.run_config[SPEC_RUN_CONFIG_KEY]))
    config = msg.content.config_records.get("config") or ConfigRecord()
    task = ClusterTask(cluster=cluster.cluster, cycle=int(config.get("server-round", 1)), task="evaluate")  # type: ignore[arg-type]
    parameters = msg.content.array_records["arrays"].to_numpy_ndarrays()
    summary, _ = run_in_cluster(cluster, root.cluster_spec(task), parameters)
    report = summary.rounds[0] if summary.rounds else None
    if report is None or report.loss is None:
        raise ClusterRunError(f"cluster {cluster.cluster}: its evaluation returned no figures")
    metrics = MetricRecord(
        {"num-examples": report.eval_examples, "loss": report.loss, "accuracy": report.accuracy or 0.0}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
