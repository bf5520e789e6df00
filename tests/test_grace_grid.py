"""GraceGrid: a phase closes a grace after its minimum of successful replies, stragglers named, never fatal."""

import time
from collections.abc import Iterable
from pathlib import Path

import pytest
from flwr.app import Error, Message, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from aggregator.grace_grid import MAX_RESENDS, GraceGrid
from aggregator.server_app import TrainingSession
from flops.progress import ProgressLog
from flops.training import TrainingSpec

NEVER = None


@pytest.fixture(autouse=True)
def server_app_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """What Flower sets in a ServerApp process, which `Message(...)` reads."""
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class ScriptedGrid(Grid):
    """A grid whose node `n` replies `reply_after[n]` seconds after the push (NEVER: not at all),
    with an error reply for the nodes in `failing`; message ids are set on push as Flower's HttpGrid does."""

    def __init__(
        self,
        reply_after: dict[int, float | None],
        failing: frozenset[int] = frozenset(),
        names: dict[int, str] | None = None,
        unavailable: frozenset[int] = frozenset(),
        lost: dict[int, int] | None = None,
        offline_s: dict[int, float] | None = None,
    ) -> None:
        """`names`: the nodes' registered names; `unavailable`: nodes for which the SuperLink itself
        answers with an error (as for a node whose heartbeats stopped); `lost`: how many of a node's
        messages the SuperLink answers with "message unavailable" (taken over by a restarted
        SuperNode); `offline_s`: how long after the grid was made a node is not among the online ones."""
        self.reply_after = reply_after
        self.failing = failing
        self.names = names or {}
        self.unavailable = unavailable
        self.lost = dict(lost or {})
        self.offline_until = {node: time.monotonic() + s for node, s in (offline_s or {}).items()}
        self.sent_to: list[int] = []
        self.pushes = 0
        self.closed = False
        self._pushed_at = 0.0
        self._waiting: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        raise NotImplementedError

    @property
    def run(self) -> Run:
        raise NotImplementedError

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        now = time.monotonic()
        return [node for node in self.reply_after if self.offline_until.get(node, 0.0) <= now]

    def get_nodes(self) -> Iterable[NodeInfo]:
        return [NodeInfo(node_id=node, name=self.names.get(node, "")) for node in self.reply_after]

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        self.pushes += 1
        self._pushed_at = time.monotonic()
        ids = []
        for message in messages:
            message.metadata.__dict__["_message_id"] = message.object_id
            self._waiting[message.metadata.message_id] = message
            self.sent_to.append(message.metadata.dst_node_id)
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        elapsed = time.monotonic() - self._pushed_at
        replies = []
        for message_id in list(message_ids):
            message = self._waiting.get(message_id)
            if message is None:
                continue
            delay = self.reply_after[message.metadata.dst_node_id]
            if delay is not NEVER and elapsed >= delay:
                del self._waiting[message_id]
                node = message.metadata.dst_node_id
                if node in self.unavailable or self.lost.get(node, 0) > 0:
                    code, reason = (5, "Error: Node Unavailable") if node in self.unavailable else (3, "unavailable")
                    self.lost[node] = self.lost.get(node, 0) - 1
                    reply = Message(Error(code=code, reason=reason), reply_to=message)
                    reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
                    replies.append(reply)
                    continue
                content = Error(code=0, reason="boom") if node in self.failing else RecordDict()
                replies.append(Message(content, reply_to=message))
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        raise AssertionError("GraceGrid must run its own loop")

    def close(self) -> None:
        self.closed = True


def train_messages(grid: Grid | ScriptedGrid) -> list[Message]:
    """A message for each node online now, or for each node of a ScriptedGrid."""
    nodes = grid.reply_after if isinstance(grid, ScriptedGrid) else grid.get_node_ids()
    return [Message(RecordDict(), node_id, "train") for node_id in nodes]


def phase(grid: GraceGrid, timeout: float = 10.0) -> tuple[list[int], float]:
    """The nodes that replied to one train phase, and how long it took."""
    started = time.monotonic()
    replies = list(grid.send_and_receive(train_messages(grid), timeout=timeout))
    return sorted(reply.metadata.src_node_id for reply in replies), time.monotonic() - started


def test_all_replies_fast_return_at_once_with_all() -> None:
    grid = GraceGrid(ScriptedGrid({1: 0.0, 2: 0.02, 3: 0.04}), grace_s=5.0)
    grid.expect_replies(2)
    replied, took = phase(grid)
    assert replied == [1, 2, 3]
    assert grid.stragglers == []
    assert took < 1.0  # neither the grace nor the timeout


def test_minimum_reached_waits_the_grace_then_names_the_slow_one() -> None:
    grid = GraceGrid(ScriptedGrid({1: 0.0, 2: 0.05, 3: 5.0}), grace_s=0.3)
    grid.expect_replies(2)
    replied, took = phase(grid)
    assert replied == [1, 2]
    assert grid.stragglers == [3]
    assert 0.3 <= took < 2.0


def test_fewer_than_the_minimum_waits_until_the_timeout() -> None:
    grid = GraceGrid(ScriptedGrid({1: 0.0, 2: NEVER, 3: NEVER}), grace_s=0.1)
    grid.expect_replies(2)
    replied, took = phase(grid, timeout=0.6)
    assert replied == [1]
    assert grid.stragglers == [2, 3]
    assert 0.6 <= took < 2.5


def test_grace_zero_returns_as_soon_as_the_minimum_arrived() -> None:
    grid = GraceGrid(ScriptedGrid({1: 0.0, 2: 0.2, 3: 5.0}), grace_s=0.0)
    grid.expect_replies(2)
    replied, took = phase(grid)
    assert replied == [1, 2]
    assert grid.stragglers == [3]
    assert 0.2 <= took < 1.5


def test_error_replies_do_not_count_towards_the_minimum() -> None:
    grid = GraceGrid(ScriptedGrid({1: 0.0, 2: 0.0, 3: 0.3}, failing=frozenset({1})), grace_s=0.0)
    grid.expect_replies(2)
    replied, took = phase(grid)
    assert replied == [1, 2, 3]  # the failed reply too: the session records it as a failure
    assert grid.stragglers == []
    assert 0.3 <= took < 1.5


def test_without_an_expectation_a_phase_waits_for_every_reply_and_an_expectation_holds_once() -> None:
    grid = GraceGrid(ScriptedGrid({1: 0.0, 2: 0.3}), grace_s=0.0)
    grid.expect_replies(1)
    assert phase(grid)[0] == [1]
    replied, took = phase(grid)  # no expectation: Flower's behaviour
    assert replied == [1, 2]
    assert took >= 0.3


def test_no_messages_return_at_once_without_a_push() -> None:
    inner = ScriptedGrid({1: 0.0})
    grid = GraceGrid(inner, grace_s=1.0)
    grid.expect_replies(1)
    assert list(grid.send_and_receive([], timeout=5.0)) == []
    assert inner.pushes == 0 and grid.stragglers == []


def test_everything_else_is_the_wrapped_grid() -> None:
    inner = ScriptedGrid({4: 0.0, 7: 0.0})
    grid = GraceGrid(inner, grace_s=1.0)
    assert list(grid.get_node_ids()) == [4, 7]
    assert [node.node_id for node in grid.get_nodes()] == [4, 7]
    grid.close()  # not part of Flower's Grid: passed through
    assert inner.closed


def test_the_session_records_stragglers_apart_from_failures(tmp_path: Path) -> None:
    inner = ScriptedGrid({1: 0.0, 2: 0.0, 3: NEVER}, failing=frozenset({2}))
    grid = GraceGrid(inner, grace_s=0.0)
    session = TrainingSession(TrainingSpec(project_id="p", model_name="m"), ProgressLog(tmp_path), None, grid)
    grid.expect_replies(1)
    replies = list(grid.send_and_receive(train_messages(grid), timeout=0.3))
    ok = session.accept_replies(1, replies, minimum=1, phase="training")
    assert [reply.metadata.src_node_id for reply in ok] == [1]
    report = session.report(1)
    assert report.stragglers == ["3"]
    assert report.failures == ["2: boom"]  # the node's id where it has no registered name


def test_failures_stragglers_and_participants_are_named_by_the_nodes_registered_names(tmp_path: Path) -> None:
    names = {11: "cluster-1", 12: "cluster-2", 13: "cluster-3", 14: "cluster-4"}
    inner = ScriptedGrid(
        {11: 0.0, 12: 0.0, 13: 0.0, 14: NEVER}, failing=frozenset({12}), names=names, unavailable=frozenset({13})
    )
    grid = GraceGrid(inner, grace_s=0.0)
    session = TrainingSession(TrainingSpec(project_id="p", model_name="m"), ProgressLog(tmp_path), None, grid)
    grid.expect_replies(1)
    replies = list(grid.send_and_receive(train_messages(grid), timeout=0.3))
    # The SuperLink's own error reply names no node: the grid knows which message it answers.
    assert sorted(grid.destination(reply) or 0 for reply in replies) == [11, 12, 13]
    ok = session.accept_replies(1, replies, minimum=1, phase="training")
    report = session.report(1)
    assert session.participants(ok) == ["cluster-1"]
    assert report.failures == ["cluster-2: boom", "cluster-3: Error: Node Unavailable"]
    assert report.stragglers == ["cluster-4"]
    assert session.missing == [
        ("cluster-2", "boom"),
        ("cluster-3", "Error: Node Unavailable"),
        ("cluster-4", "no reply before the phase closed (straggler)"),
    ]
    with pytest.raises(Exception, match="round 2 training: 1 of the required 2 learners succeeded: cluster-2: boom"):
        grid.expect_replies(2)
        session.accept_replies(2, list(grid.send_and_receive(train_messages(grid), timeout=0.3)), 2, "training")


def test_a_message_lost_with_its_learner_is_sent_again_once_the_learner_is_back() -> None:
    inner = ScriptedGrid({1: 0.0, 2: 0.0}, lost={2: 1}, offline_s={2: 0.3})
    grid = GraceGrid(inner, grace_s=0.0)
    grid.expect_replies(2)
    started = time.monotonic()
    replies = list(grid.send_and_receive(train_messages(inner), timeout=10.0))
    took = time.monotonic() - started
    assert sorted(reply.metadata.src_node_id for reply in replies) == [1, 2]
    assert not any(reply.has_error() for reply in replies)
    assert inner.sent_to.count(2) == 2 and inner.sent_to.count(1) == 1
    assert grid.stragglers == []
    assert 0.3 <= took < 5.0  # it waited for node 2 to be online again, not for the timeout


def test_a_learner_that_does_not_come_back_leaves_its_error_when_the_phase_closes() -> None:
    inner = ScriptedGrid({1: 0.0, 2: 0.0}, lost={2: 1}, offline_s={2: 60.0})
    grid = GraceGrid(inner, grace_s=0.0)
    grid.expect_replies(2)
    started = time.monotonic()
    replies = list(grid.send_and_receive(train_messages(inner), timeout=0.5))
    assert 0.5 <= time.monotonic() - started < 3.0
    assert sorted(grid.destination(reply) or 0 for reply in replies) == [1, 2]
    [error] = [reply for reply in replies if reply.has_error()]
    assert grid.destination(error) == 2 and error.error.reason == "unavailable"
    assert inner.sent_to.count(2) == 1 and grid.stragglers == []


def test_a_learners_own_failure_and_a_node_gone_for_good_are_not_sent_again_endlessly() -> None:
    inner = ScriptedGrid({1: 0.0, 2: 0.0, 3: 0.0}, failing=frozenset({1}), lost={2: 99})
    grid = GraceGrid(inner, grace_s=0.0)
    grid.expect_replies(3)
    started = time.monotonic()
    replies = list(grid.send_and_receive(train_messages(grid), timeout=5.0))
    assert time.monotonic() - started < 3.0  # every message answered for good: no wait for the timeout
    assert inner.sent_to.count(1) == 1  # its ClientApp failed: sending it again would fail again
    assert inner.sent_to.count(2) == 1 + MAX_RESENDS
    assert sorted(grid.destination(reply) or 0 for reply in replies) == [1, 2, 3]
    assert [r.metadata.src_node_id for r in replies if not r.has_error()] == [3]


def test_an_unanswered_resend_keeps_the_error_not_a_straggler() -> None:
    inner = ScriptedGrid({1: 0.0, 2: 0.0}, lost={2: 1})
    inner.reply_after[2] = 0.0
    grid = GraceGrid(inner, grace_s=0.0)
    grid.expect_replies(2)
    inner_pull = inner.pull_messages

    def slow_after_the_loss(message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(inner_pull(message_ids))
        if inner.lost.get(2, 0) <= 0:
            inner.reply_after[2] = NEVER  # the resent message is never answered
        return replies

    inner.pull_messages = slow_after_the_loss  # type: ignore[method-assign]
    replies = list(grid.send_and_receive(train_messages(grid), timeout=0.4))
    assert inner.sent_to.count(2) == 2
    assert [grid.destination(r) for r in replies if r.has_error()] == [2]
    assert grid.stragglers == []
