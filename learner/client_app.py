"""The ClientApp every learner runs: Flower messages in, the user's ModelManager at work.

One message per round: a train message asks (EVALUATE_RECEIVED_KEY in its config) for the
model it carries, the global model of the round before, to be evaluated on the local data
before training; the reply then holds the trained parameters, the training's example count,
the local validation of the trained model and the evaluation of the received one
(`flops.training`'s GLOBAL_* keys). Evaluate messages remain for the last round and for
strategies that evaluate on other learners than they train on.

The user's module, its ModelManager and the node's data stay loaded between the messages of
one run when the process lives on (`learner.warm_clientapp`: one process per run, never
shared between runs, so nothing of one project's run is visible to another); in a process per
message (Flower's own `flwr-clientapp`) they are loaded for each message.
User code gets the inert MLflow (`learner.user_code.inert_tracking`) before it is imported.
"""

import json
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flops.data.privacy import read_privacy_policy
from flops.differential_privacy import UNIT_WEIGHT_KEY
from flops.explain import EXPLAIN_ANSWER_KEY, EXPLAIN_PASS, EXPLAIN_RECORD
from flops.ml_repo.loader import load_model_manager_class, user_code
from flops.statistics import STATISTICS_ANSWER_KEY, STATISTICS_EDGES_KEY, STATISTICS_PASS_KEY, STATISTICS_RECORD
from flops.training import (
    EVALUATE_RECEIVED_KEY,
    GLOBAL_ACCURACY_KEY,
    GLOBAL_EXAMPLES_KEY,
    GLOBAL_LOSS_KEY,
    PLATFORM_CONFIG_PREFIX,
    SPEC_RUN_CONFIG_KEY,
    TRAIN_SECONDS_KEY,
    TrainingSpec,
)
from learner.node_config import DATA_DIR_KEY, DATA_TAGS_KEY, NODE_NAME_KEY
from learner.privacy import differential_privacy_mod
from learner.statistics import node_frame, node_histogram, node_summary
from learner.user_code import ModelRunner, NodeContext, inert_tracking

app = ClientApp()

# The runner of the run this process serves: (run id, spec, node config) -> runner. One entry.
_loaded: dict[tuple[int, str, str], tuple[ModelRunner, TrainingSpec]] = {}


def node_context(context: Context, spec: TrainingSpec) -> NodeContext:
    node_config = context.node_config
    node_tags = [t for t in str(node_config.get(DATA_TAGS_KEY, "")).split(",") if t]
    return NodeContext(
        node_name=str(node_config.get(NODE_NAME_KEY, f"node-{context.node_id}")),
        data_dir=Path(str(node_config.get(DATA_DIR_KEY, "."))),
        data_tags=spec.data_tags or node_tags,
    )


def user_config(spec: TrainingSpec, config: ConfigRecord | None) -> dict[str, Any]:
    """Hyperparameters plus round information, with Flower's dashed keys as identifiers.

    The platform's own keys (PLATFORM_CONFIG_PREFIX) are left out: they are not the user's.
    """
    merged: dict[str, Any] = dict(spec.hyperparameters)
    for key, value in (config or {}).items():
        if not key.startswith(PLATFORM_CONFIG_PREFIX):
            merged[key.replace("-", "_")] = value
    return merged


def _runner(context: Context) -> tuple[ModelRunner, TrainingSpec]:
    """This run's runner: made (user code imported, data loaded on first use) once per run."""
    raw_spec = str(context.run_config[SPEC_RUN_CONFIG_KEY])
    key = (context.run_id, raw_spec, repr(sorted(context.node_config.items())))
    if key not in _loaded:
        spec = TrainingSpec.model_validate_json(raw_spec)
        node = node_context(context, spec)
        inert_tracking()
        with user_code(node.node_name):
            manager_class = load_model_manager_class()
        _loaded.clear()
        _loaded[key] = (ModelRunner(node, manager_class), spec)
    return _loaded[key]


@app.train(mods=[differential_privacy_mod])
def train(msg: Message, context: Context) -> Message:
    runner, spec = _runner(context)
    arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
    config = msg.content.config_records.get("config")
    evaluate_received = bool(config.get(EVALUATE_RECEIVED_KEY, False)) if config else False
    outcome = runner.train(arrays, user_config(spec, config), evaluate_received=evaluate_received)
    values: dict[str, int | float] = {
        "num-examples": outcome.num_examples,
        "local-loss": outcome.local_loss,
        "local-accuracy": outcome.local_accuracy,
        TRAIN_SECONDS_KEY: outcome.train_s,
    }
    if spec.differential_privacy is not None and spec.differential_privacy.central:
        values[UNIT_WEIGHT_KEY] = 1  # the aggregator's noise is calibrated to a uniform mean
    if outcome.received is not None:
        values |= {
            GLOBAL_LOSS_KEY: outcome.received.loss,
            GLOBAL_ACCURACY_KEY: outcome.received.accuracy,
            GLOBAL_EXAMPLES_KEY: outcome.received.num_examples,
        }
    metrics = MetricRecord(values)  # type: ignore[arg-type]
    content = RecordDict({"arrays": ArrayRecord(outcome.parameters), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """A statistics job's pass (`flops.statistics`): aggregates of the node's data through its owner's filters."""
    config = msg.content.config_records.get("config") or ConfigRecord()
    if config.get(STATISTICS_PASS_KEY) == EXPLAIN_PASS:
        runner, spec = _runner(context)
        if spec.explain is None:
            raise ValueError("this run was not asked to explain its model")
        arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
        answer = runner.explain(arrays, spec.explain).model_dump_json()
        return Message(content=RecordDict({EXPLAIN_RECORD: ConfigRecord({EXPLAIN_ANSWER_KEY: answer})}), reply_to=msg)
    spec = TrainingSpec.model_validate_json(str(context.run_config[SPEC_RUN_CONFIG_KEY]))
    if spec.statistics is None:
        raise ValueError("a query message belongs to a statistics job or an explanation, and this run is neither")
    node = node_context(context, spec)
    request = spec.statistics.model_copy(update={"data_tags": list(node.data_tags)})
    policy = read_privacy_policy(node.data_dir).tightened_by(request.privacy, node.node_name)
    frame = node_frame(node.data_dir, list(node.data_tags))
    if config.get(STATISTICS_PASS_KEY) == "histogram":
        edges = json.loads(str(config.get(STATISTICS_EDGES_KEY, "{}")))
        answer = node_histogram(node.node_name, frame, edges, policy).model_dump_json()
    else:
        answer = node_summary(node.node_name, frame, request, policy).model_dump_json()
    content = RecordDict({STATISTICS_RECORD: ConfigRecord({STATISTICS_ANSWER_KEY: answer})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    runner, _ = _runner(context)
    arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
    outcome = runner.evaluate(arrays)
    metrics = MetricRecord({"num-examples": outcome.num_examples, "loss": outcome.loss, "accuracy": outcome.accuracy})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
