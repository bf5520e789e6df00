"""Plain Flower ClientApp: the same user-code calls FLOps makes, without FLOps around them."""

import os

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _manager(context: Context):  # type: ignore[no-untyped-def]
    os.environ["FLOPS_DATA_DIR"] = str(context.node_config["data-dir"])
    os.environ["FLOPS_DATA_TAGS"] = "digits"
    from model_manager import ModelManager

    manager = ModelManager()
    manager.set_model_data()
    return manager


@app.train()
def train(msg: Message, context: Context) -> Message:
    manager = _manager(context)
    manager.set_model_parameters(msg.content["arrays"].to_numpy_ndarrays())
    examples = manager.fit_model({})
    metrics = MetricRecord({"num-examples": examples})
    content = RecordDict({"arrays": ArrayRecord(manager.get_model_parameters()), "metrics": metrics})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    manager = _manager(context)
    manager.set_model_parameters(msg.content["arrays"].to_numpy_ndarrays())
    loss, accuracy, examples = manager.evaluate_model()
    metrics = MetricRecord({"num-examples": examples, "loss": loss, "accuracy": accuracy})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
