"""A SuperNode activated again under its key takes its node over; ActivateNode must be signed by that key.

Runs Flower's own in-memory LinkState and Fleet handlers in this process, with and without the hooks.
"""

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from flwr.app import Message, RecordDict
from flwr.common.constant import NOOP_ACCOUNT_NAME, NOOP_FLWR_AID, SUPERLINK_NODE_ID, ErrorCode
from flwr.proto.fleet_pb2 import ActivateNodeRequest
from flwr.server.superlink.fleet.grpc_rere import node_auth_server_interceptor as auth
from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
from flwr.supercore.constant import NOOP_FEDERATION_ID, NodeStatus, TaskType
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes
from flwr.supercore.task_identity import TaskIdentity
from flwr.superlink.federation.noop_federation_manager import NoOpFederationManager
from flwr.superlink.servicer.fleet import fleet_handlers

from aggregator import node_takeover

HEARTBEAT_S = 30.0


def new_key() -> bytes:
    return public_key_to_bytes(generate_key_pairs()[1])


class Link:
    """Flower's in-memory LinkState with one run and one registered node."""

    def __init__(self) -> None:
        self.state = InMemoryLinkState(NoOpFederationManager(), ObjectStoreFactory().store())
        self.key = new_key()
        self.node = self.state.create_node(NOOP_FLWR_AID, NOOP_ACCOUNT_NAME, self.key, HEARTBEAT_S)
        self.run = self.state.create_run(None, None, None, {}, NOOP_FEDERATION_ID, None, None, TaskType.SERVER_APP)

    def activate(self) -> int:
        """The Fleet API's ActivateNode, as a starting SuperNode calls it."""
        request = ActivateNodeRequest(public_key=self.key, heartbeat_interval=HEARTBEAT_S)
        return int(fleet_handlers.activate_node(request=request, state=self.state).node_id)

    def send(self, group: str) -> str:
        """A ServerApp's message to the node (its id)."""
        message = Message(RecordDict(), self.node, "train", group_id=group)
        message.metadata.__dict__["_message_id"] = message.object_id  # as the ServerApp's grid sets it
        message_id = self.state.store_message_ins(message)
        assert message_id, "Flower refused the message"
        return message_id

    def status(self) -> str:
        return str(self.state.get_node_info(node_ids=[self.node])[0].status)


@pytest.fixture
def link(monkeypatch: pytest.MonkeyPatch) -> Iterator[Link]:
    made = Link()
    monkeypatch.setattr(TaskIdentity, "_run_id", made.run)  # what a ServerApp process has set
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
    monkeypatch.setattr(TaskIdentity, "_task_id", made.state.run_ids[made.run].run.primary_task_id)
    yield made


@pytest.fixture
def hooked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hooks installed for one test; monkeypatch puts Flower's own functions back after it."""
    monkeypatch.setattr(fleet_handlers, "activate_node", fleet_handlers.activate_node)
    monkeypatch.setattr(auth.NodeAuthServerInterceptor, "_wrap_method_handler",
                        auth.NodeAuthServerInterceptor._wrap_method_handler)  # fmt: skip
    assert node_takeover.install()


def test_without_the_hook_flower_refuses_a_node_that_is_still_online(link: Link) -> None:
    link.activate()
    with pytest.raises(Exception, match="could not be activated"):
        link.activate()


@pytest.mark.usefixtures("hooked")
def test_a_node_activated_again_while_online_is_taken_over_and_its_pulled_message_reported_lost(
    link: Link,
) -> None:
    assert link.activate() == link.node
    pulled = link.send("1")
    assert [m.metadata.message_id for m in link.state.get_message_ins(link.node, None)] == [pulled]
    waiting = link.send("2")  # not pulled by the instance that died: the new one pulls it
    assert link.activate() == link.node  # the restarted SuperNode: same key, same node, at once
    assert link.status() == NodeStatus.ONLINE
    [lost] = link.state.get_message_res({pulled}, link.run)
    assert lost.has_error() and lost.error.code == ErrorCode.MESSAGE_UNAVAILABLE
    assert lost.metadata.reply_to_message_id == pulled  # GraceGrid knows which node to send it to again
    assert [m.metadata.message_id for m in link.state.get_message_ins(link.node, None)] == [waiting]


@pytest.mark.usefixtures("hooked")
def test_a_node_that_is_offline_or_new_is_activated_as_flower_does(link: Link) -> None:
    assert link.activate() == link.node  # registered, never online: nothing to take over
    link.state.deactivate_node(link.node)
    message = link.send("1")
    assert link.activate() == link.node
    assert [m.metadata.message_id for m in link.state.get_message_ins(link.node, None)] == [message]
    assert node_takeover.take_over(link.state, new_key()) == set()  # an unknown key takes nothing over


class Refused(Exception):
    pass


class Context:
    """The part of a gRPC servicer context the handler uses."""

    def abort(self, code: grpc.StatusCode, details: str) -> Any:
        raise Refused(f"{code.name}: {details}")


@pytest.mark.usefixtures("hooked")
def test_activate_node_must_be_signed_by_the_key_it_activates() -> None:
    signer, victim = new_key(), new_key()
    flower = grpc.unary_unary_rpc_method_handler(lambda request, context: "activated")
    interceptor = auth.NodeAuthServerInterceptor(state_factory=None)  # type: ignore[arg-type]
    handler = interceptor._wrap_method_handler(flower, signer)
    own = ActivateNodeRequest(public_key=signer, heartbeat_interval=HEARTBEAT_S)
    assert handler.unary_unary(own, Context()) == "activated"
    with pytest.raises(Refused, match="UNAUTHENTICATED: ActivateNode must be signed by the key it activates"):
        handler.unary_unary(ActivateNodeRequest(public_key=victim, heartbeat_interval=HEARTBEAT_S), Context())
