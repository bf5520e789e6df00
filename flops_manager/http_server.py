"""The API's HTTP server: waitress with bounded connections and timeouts a slow client cannot stretch.

waitress closes a connection only after `channel_timeout` seconds *without* a byte, so a
client that sends its headers one byte a second keeps its connection (and, with enough of
them, every connection slot) for ever. `make_server` adds a deadline for receiving a whole
request (`ApiLimits.request_timeout_s`): a request still incomplete after it is dropped,
however busily it trickles. Checked every `cleanup_interval_s`.
"""

import types
from typing import Any

from waitress.server import create_server

from flops_manager.limits import ApiLimits


def make_server(app: Any, host: str, port: int, limits: ApiLimits, **extra: Any) -> Any:
    """A waitress server for `app` (not yet running: call `.run()`, stop with `.close()`)."""
    server = create_server(app, host=host, port=port, ident="flops-manager", **limits.waitress_options(), **extra)
    started: dict[int, tuple[int, float]] = {}  # channel -> (the request being received, first seen)
    original = server.maintenance

    def maintenance(self: Any, now: float) -> None:
        original(now)
        live = set()
        for channel in list(self.active_channels.values()):
            request = getattr(channel, "request", None)
            if channel.requests:  # being answered
                continue
            if request is None:  # between requests; one that never sent a byte has the same deadline
                silent = channel.last_activity == channel.creation_time
                if silent and now - channel.creation_time > limits.request_timeout_s:
                    channel.will_close = True
                continue
            key = id(channel)
            live.add(key)
            seen = started.get(key)
            if seen is None or seen[0] != id(request):
                # A new request on this channel: it started at the channel's creation if this is
                # the first, else now (keep-alive connections are checked from their next request).
                first = channel.creation_time if seen is None else now
                started[key] = (id(request), first)
            elif now - seen[1] > limits.request_timeout_s:
                channel.will_close = True
        for key in set(started) - live:
            del started[key]

    server.maintenance = types.MethodType(maintenance, server)
    return server
