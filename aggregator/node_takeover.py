"""A SuperNode started again under its key takes its node over at once (hooks into Flower 1.41's SuperLink).

Flower activates a node only when it is registered or offline. A learner that died and that the
manager started again (same key, same node) is refused ("could not be activated") until the dead
instance's heartbeats expire: `NODE_PATIENCE` heartbeat intervals, about 2 minutes. And the
messages the dead instance had pulled keep a delivered mark with no reply, so the ServerApp waits
for them until the round's timeout.

Contract, once `install()` ran in the SuperLink's process:

- `Fleet.ActivateNode` for a node that is online takes the node over: the node goes offline
  (Flower's `deactivate_node`), the messages delivered to it that have no reply are deleted,
  then Flower's own activation runs. The ServerApp's next pull gets Flower's "message
  unavailable" error for each deleted message, and `aggregator.grace_grid.GraceGrid` sends it
  again to the new instance: the round goes on with the learner's work, not without it.
- `Fleet.ActivateNode` is accepted only signed by the key it activates. Flower checks the
  request's signature against the key in its metadata, not that this is the key in the request:
  without this check, any SuperNode could take any other's node over. (Without SuperNode
  authentication, `--insecure`, the Fleet API has no identities at all: local development only.)
- Only Flower's in-memory LinkState (the one `aggregator.main` runs) is taken over; another
  LinkState gets Flower's own behaviour. On a Flower version other than `FLOWER_VERSION`,
  `install` changes nothing and logs a warning.
"""

import logging
from typing import Any

import flwr

from flops.flower_polling import FLOWER_VERSION

log = logging.getLogger(__name__)


def take_over(state: Any, public_key: bytes) -> set[str]:
    """Take the online node of `public_key` offline and delete its unanswered delivered messages (their ids)."""
    from flwr.server.superlink.linkstate.in_memory_linkstate import InMemoryLinkState
    from flwr.supercore.constant import NodeStatus

    if not isinstance(state, InMemoryLinkState):
        return set()
    with state.lock:
        node_id = state.get_node_id_by_public_key(public_key)
        if node_id is None:
            return set()
        infos = state.get_node_info(node_ids=[node_id])  # tags a node whose heartbeats expired offline
        if not infos or infos[0].status != NodeStatus.ONLINE:
            return set()
        state.deactivate_node(node_id)
        unanswered = {
            message_id
            for message_id, message in state.message_ins_store.items()
            if message.metadata.dst_node_id == node_id
            and message.metadata.delivered_at
            and message_id not in state.message_ins_id_to_message_res_id
        }
        state.delete_messages(unanswered)
    log.warning(
        "node %s activated again while online: taken over by the new instance; %d unanswered message(s) dropped",
        node_id,
        len(unanswered),
    )
    return unanswered


def install() -> bool:
    """Hook ActivateNode in this (SuperLink) process; False on another Flower version."""
    if flwr.__version__ != FLOWER_VERSION:
        log.warning("Flower %s is not %s: restarted SuperNodes wait for their heartbeats", flwr.__version__,
                    FLOWER_VERSION)  # fmt: skip
        return False
    import grpc
    from flwr.proto.fleet_pb2 import ActivateNodeRequest
    from flwr.server.superlink.fleet.grpc_rere import node_auth_server_interceptor as auth
    from flwr.superlink.servicer.fleet import fleet_handlers

    flower_activate = fleet_handlers.activate_node

    def activate_node(request: ActivateNodeRequest, state: Any) -> Any:
        take_over(state, request.public_key)
        return flower_activate(request=request, state=state)

    fleet_handlers.activate_node = activate_node

    flower_wrap = auth.NodeAuthServerInterceptor._wrap_method_handler

    def wrap_method_handler(self: Any, method_handler: Any, received_public_key: bytes) -> Any:
        wrapped = flower_wrap(self, method_handler, received_public_key)

        def handler(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, ActivateNodeRequest) and request.public_key != received_public_key:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "ActivateNode must be signed by the key it activates")
            return wrapped.unary_unary(request, context)

        return grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=wrapped.request_deserializer,
            response_serializer=wrapped.response_serializer,
        )

    auth.NodeAuthServerInterceptor._wrap_method_handler = wrap_method_handler  # type: ignore[method-assign]
    return True
