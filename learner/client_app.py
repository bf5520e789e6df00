"""The ClientApp every learner runs: Flower messages in, the user's ModelManager at work.

Flower starts a fresh process per message, so the user's module is imported and the node's
data loaded for each one; nothing is cached between rounds on purpose (no state to leak).
User code gets the inert MLflow (`learner.user_code.inert_tracking`) before it is imported.
"""

from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from flops.ml_repo.loader import load_model_manager_class, user_code
from flops.training import SPEC_RUN_CONFIG_KEY, TrainingSpec
from learner.user_code import ModelRunner, NodeContext, inert_tracking

# Keys of the node config that `flops-learner` sets on its SuperNode.
NODE_NAME_KEY = "node-name"
DATA_DIR_KEY = "data-dir"
DATA_TAGS_KEY = "data-tags"

app = ClientApp()


def node_context(context: Context, spec: TrainingSpec) -> NodeContext:
    node_config = context.node_config
    node_tags = [t for t in str(node_config.get(DATA_TAGS_KEY, "")).split(",") if t]
    return NodeContext(
        node_name=str(node_config.get(NODE_NAME_KEY, f"node-{context.node_id}")),
        data_dir=Path(str(node_config.get(DATA_DIR_KEY, "."))),
        data_tags=spec.data_tags or node_tags,
    )


def user_config(spec: TrainingSpec, config: ConfigRecord | None) -> dict[str, Any]:
    """Hyperparameters plus round information, with Flower's dashed keys as identifiers."""
    merged: dict[str, Any] = dict(spec.hyperparameters)
    for key, value in (config or {}).items():
        merged[key.replace("-", "_")] = value
    return merged


def _runner(context: Context) -> tuple[ModelRunner, TrainingSpec]:
    spec = TrainingSpec.model_validate_json(str(context.run_config[SPEC_RUN_CONFIG_KEY]))
    node = node_context(context, spec)
    inert_tracking()
    with user_code(node.node_name):
        manager_class = load_model_manager_class()
    return ModelRunner(node, manager_class), spec


@app.train()
def train(msg: Message, context: Context) -> Message:
    runner, spec = _runner(context)
    arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
    config = msg.content.config_records.get("config")
    outcome = runner.train(arrays, user_config(spec, config))
    metrics = MetricRecord(
        {
            "num-examples": outcome.num_examples,
            "local-loss": outcome.local_loss,
            "local-accuracy": outcome.local_accuracy,
        }
    )
    content = RecordDict({"arrays": ArrayRecord(outcome.parameters), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    runner, _ = _runner(context)
    arrays = msg.content.array_records["arrays"].to_numpy_ndarrays()
    outcome = runner.evaluate(arrays)
    metrics = MetricRecord({"num-examples": outcome.num_examples, "loss": outcome.loss, "accuracy": outcome.accuracy})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
