"""A Flower grid whose phases do not wait for stragglers once they have the replies they need.

Flower's strategies send each phase of a round (train, evaluate) with `grid.send_and_receive`,
which waits for every reply or the round's timeout: one slow learner holds up the round, and a
reply that comes after the SuperLink dropped its objects fails it. `GraceGrid` wraps the grid
the ServerApp is given and changes only `send_and_receive`.

Contract of `GraceGrid.send_and_receive(messages, timeout=...)`: it pushes the messages, then
pulls replies until one of

- every pushed message has a reply (successful or not);
- `timeout` passed (None: no limit), as with Flower's grid;
- the phase has `minimum` successful replies (error replies do not count: they do not help the
  round) and `grace_s` more seconds passed (0: it closes as soon as the minimum is there).

`minimum` is what `expect_replies` announced for this call; it holds for one call only, and a
call with none announced waits for every reply, as Flower's grid does. When the call returns,
`stragglers` holds the node ids of the messages that had no reply by then; their late replies
are never pulled, so they cannot fail a later phase. An empty `messages` returns [] at once.
`destination(reply)` names the node a reply answers for, also for the error replies the SuperLink
itself makes (a node that stopped sending heartbeats: "Node Unavailable").
Everything else (nodes, run, push and pull, attributes such as `close`) is the wrapped grid's.
"""

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from flops.flower_polling import Backoff


class GraceGrid(Grid):
    """`grid`, with phases that close `grace_s` seconds after their announced minimum of replies arrived."""

    def __init__(self, grid: Grid, grace_s: float) -> None:
        if grace_s < 0:
            raise ValueError(f"grace_s must be >= 0, got {grace_s}")
        self.grid = grid
        self.grace_s = grace_s
        self.stragglers: list[int] = []
        self._minimum: int | None = None
        self._sent: dict[str, int] = {}  # message id -> destination node, of the last call

    def destination(self, reply: Message) -> int | None:
        """The node `reply` answers for: its sender, or for the SuperLink's own error replies the
        destination of the message it answers."""
        if reply.metadata.src_node_id != SUPERLINK_NODE_ID:
            return reply.metadata.src_node_id
        return self._sent.get(reply.metadata.reply_to_message_id)

    def expect_replies(self, minimum: int) -> None:
        """The next `send_and_receive` may close `grace_s` after `minimum` successful replies."""
        self._minimum = minimum

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        minimum, self._minimum = self._minimum, None
        self.stragglers = []
        messages = list(messages)
        if not messages:
            return []
        message_ids = list(self.grid.push_messages(messages))
        # Flower's HttpGrid names a message it could not push None: it will never be answered.
        pending = {
            message_id: message.metadata.dst_node_id
            for message_id, message in zip(message_ids, messages, strict=False)
            if message_id
        }
        self._sent = dict(pending)
        del messages
        deadline = None if timeout is None else time.monotonic() + timeout
        grace_ends: float | None = None
        replies: list[Message] = []
        backoff = Backoff(floor=0.01, ceiling=3.0)  # Flower polls every 3 s; soon after a reply, faster
        while pending:
            pulled = list(self.grid.pull_messages(list(pending)))
            if pulled:
                backoff.reset()
            for reply in pulled:
                pending.pop(reply.metadata.reply_to_message_id, None)
            replies.extend(pulled)
            now = time.monotonic()
            if grace_ends is None and minimum is not None and _successes(replies) >= minimum:
                grace_ends = now + self.grace_s
            closes = min((t for t in (deadline, grace_ends) if t is not None), default=None)
            if not pending or (closes is not None and now >= closes):
                break
            time.sleep(backoff.interval() if closes is None else min(backoff.interval(), closes - now))
        self.stragglers = sorted(pending.values())
        return replies

    def set_run(self, run: Run) -> None:
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        return self.grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self.grid.pull_messages(message_ids)

    def __getattr__(self, name: str) -> Any:
        if name == "grid":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.grid, name)


def _successes(replies: list[Message]) -> int:
    return sum(1 for reply in replies if not reply.has_error())
