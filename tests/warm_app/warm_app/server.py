"""Sends `messages` train messages, one after the other, to every node; writes their replies' metrics."""

import json
import time

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    deadline = time.monotonic() + 60
    while not list(grid.get_node_ids()) and time.monotonic() < deadline:
        time.sleep(0.2)
    replies = []
    for _ in range(int(context.run_config["messages"])):
        nodes = list(grid.get_node_ids())
        messages = [
            Message(content=RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type="train")
            for node in nodes
        ]
        for reply in grid.send_and_receive(messages, timeout=120):
            replies.append(dict(reply.content.metric_records["metrics"]))
    with open(str(context.run_config["out"]), "w", encoding="utf-8") as out:
        json.dump({"run": context.run_id, "replies": replies}, out)
