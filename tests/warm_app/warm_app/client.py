"""Replies with what its process remembers: its pid, the messages it served, the runs it saw."""

import os

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()
SEEN: list[int] = []  # run id of every message this process served: module state a run could leak


@app.train()
def train(msg: Message, context: Context) -> Message:
    SEEN.append(context.run_id)
    metrics = MetricRecord(
        {"pid": os.getpid(), "served": len(SEEN), "other-runs": sum(1 for run in SEEN if run != context.run_id)}
    )
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)
