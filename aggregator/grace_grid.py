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
call with none announced waits for every reply, as Flower's grid does.

A message lost with its learner (the SuperLink's own error reply: "node unavailable" for a node
whose heartbeats stopped, "message unavailable" for one a restarted SuperNode took over, see
`aggregator.node_takeover`) is sent again, with the same content, once that node is online again
(the manager restarts a learner that died), at most `MAX_RESENDS` times per node and call, while
the phase is open. The error reply counts only when the phase closes before an answer to the resent
message came. When the call returns,
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
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from flops.flower_polling import Backoff

LOST_WITH_THE_NODE = (ErrorCode.NODE_UNAVAILABLE, ErrorCode.MESSAGE_UNAVAILABLE)
"""The SuperLink's error replies for a message whose learner went away, not for a learner's failure."""
MAX_RESENDS = 2
"""How often one call sends a lost message again to the same node."""


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
        sent = {message_id: message for message_id, message in zip(message_ids, messages, strict=False) if message_id}
        pending = {message_id: message.metadata.dst_node_id for message_id, message in sent.items()}
        self._sent = dict(pending)
        del messages
        deadline = None if timeout is None else time.monotonic() + timeout
        grace_ends: float | None = None
        replies: list[Message] = []
        lost: dict[int, tuple[Message, Message]] = {}  # node -> (its message, the SuperLink's error reply)
        standing: dict[str, Message] = {}  # a message sent again -> the error reply that stands until it is answered
        resends: dict[int, int] = {}
        backoff = Backoff(floor=0.01, ceiling=3.0)  # Flower polls every 3 s; soon after a reply, faster
        while pending or lost:
            pulled = list(self.grid.pull_messages(list(pending))) if pending else []
            if pulled:
                backoff.reset()
            for reply in pulled:
                message_id = reply.metadata.reply_to_message_id
                node = pending.pop(message_id, None)
                standing.pop(message_id, None)
                if node is not None and self._lost(reply) and resends.get(node, 0) < MAX_RESENDS:
                    lost[node] = (sent[message_id], reply)
                else:
                    replies.append(reply)
            now = time.monotonic()
            if grace_ends is None and minimum is not None and _successes(replies) >= minimum:
                grace_ends = now + self.grace_s
            closes = min((t for t in (deadline, grace_ends) if t is not None), default=None)
            if closes is not None and now >= closes:
                break
            if lost:
                self._send_again(lost, resends, sent, pending, standing)
            waiting = any(resends.get(node, 0) < MAX_RESENDS for node in lost)  # for a node to come back
            if not pending and (not waiting or closes is None):
                break
            time.sleep(backoff.interval() if closes is None else min(backoff.interval(), closes - now))
        # A lost message's error stands where no answer to it came back in time.
        replies.extend(reply for _, reply in lost.values())
        replies.extend(standing[message_id] for message_id in list(pending) if message_id in standing)
        self.stragglers = sorted(node for message_id, node in pending.items() if message_id not in standing)
        return replies

    @staticmethod
    def _lost(reply: Message) -> bool:
        return (
            reply.has_error()
            and reply.metadata.src_node_id == SUPERLINK_NODE_ID
            and (reply.error.code in LOST_WITH_THE_NODE)
        )

    def _send_again(
        self,
        lost: dict[int, tuple[Message, Message]],
        resends: dict[int, int],
        sent: dict[str, Message],
        pending: dict[str, int],
        standing: dict[str, Message],
    ) -> None:
        """Push the lost messages of the nodes that are online again; move them back to `pending`."""
        online = set(self.grid.get_node_ids())
        back = [node for node in lost if node in online and resends.get(node, 0) < MAX_RESENDS]
        if not back:
            return
        again, errors = [], []
        for node in back:
            message, error = lost.pop(node)
            errors.append((message, error))
            metadata = message.metadata
            again.append(
                Message(message.content, node, metadata.message_type, ttl=metadata.ttl, group_id=metadata.group_id)
            )
            resends[node] = resends.get(node, 0) + 1
        for message_id, message, (first, error) in zip(self.grid.push_messages(again), again, errors, strict=False):
            if not message_id:  # not pushed: the error stands
                lost[message.metadata.dst_node_id] = (first, error)
                continue
            sent[message_id] = message
            standing[message_id] = error
            pending[message_id] = self._sent[message_id] = message.metadata.dst_node_id

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
