"""`python -m aggregator.superlink --control-token-file FILE [flower-superlink options]`.

Flower's SuperLink serves the Fleet API (SuperNodes), the Runtime API (SuperExec and the
ServerApp) and the Control API (`flwr run`, `flwr supernode register`, `flwr ls`, `flwr stop`)
on one port, and the Control API has no authentication of its own unless an OIDC plugin is
configured. Whoever reaches that port could register a key of their own and join the training,
list and stop runs, or read logs. This runs the same SuperLink with one more middleware in front
of it: every request that is not for the Fleet or Runtime API (which have SuperNode and SuperExec
authentication) must carry the aggregator's control token (`x-flops-control-token`), a random
value the aggregator writes to a 0600 file for this SuperLink alone. Anything else answers 403.
"""

import hmac
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

from aggregator.node_takeover import install as install_node_takeover
from flops.flower_polling import install as install_flower_hooks

CONTROL_TOKEN_HEADER = "x-flops-control-token"
# Routes with Flower's own authentication: SuperNodes (signed requests with registered keys)
# and SuperExec / app processes (the SuperExec secret, per-task tokens).
OPEN_PREFIXES = ("/v1/fleet/", "/v1/runtime/")
REFUSAL = b'{"detail": "this SuperLink\'s Control API answers only its own aggregator"}'

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ControlGuard:
    """ASGI middleware: everything but the Fleet and Runtime APIs needs the control token."""

    def __init__(self, app: ASGIApp, token: bytes) -> None:
        if not token:
            raise ValueError("the control token must not be empty")
        self.app = app
        self.token = token

    def allowed(self, scope: Scope) -> bool:
        path = str(scope.get("path", ""))
        if path.startswith(OPEN_PREFIXES) and "/.." not in path and "//" not in path:
            return True
        given = b""
        for name, value in scope.get("headers") or []:
            if name.lower() == CONTROL_TOKEN_HEADER.encode("ascii"):
                given = value
        return hmac.compare_digest(given, self.token)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http" or self.allowed(scope):
            await self.app(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 403,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(REFUSAL)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": REFUSAL})


def read_token(path: Path) -> bytes:
    token = path.read_bytes().strip()
    if not token:
        raise SystemExit(f"flops superlink: the control token file {path} is empty")
    return token


def install_guard(token: bytes) -> None:
    """Put `ControlGuard` outermost in the SuperLink's FastAPI app (flwr 1.41's extension hook)."""
    from flwr.superlink import extensions
    from starlette.middleware import Middleware

    flower_middleware = extensions.get_middleware

    def get_middleware() -> tuple[Middleware, ...]:
        return (Middleware(ControlGuard, token=token), *flower_middleware())

    extensions.get_middleware = get_middleware


def split_arguments(argv: list[str]) -> tuple[Path, list[str]]:
    """(the control token file, Flower's own arguments)."""
    rest: list[str] = []
    token_file: Path | None = None
    arguments = iter(argv)
    for argument in arguments:
        if argument == "--control-token-file":
            token_file = Path(next(arguments, ""))
        elif argument.startswith("--control-token-file="):
            token_file = Path(argument.partition("=")[2])
        else:
            rest.append(argument)
    if token_file is None or not str(token_file):
        raise SystemExit("flops superlink: --control-token-file FILE is required")
    return token_file, rest


def main(argv: list[str] | None = None) -> None:
    token_file, flower_arguments = split_arguments(sys.argv[1:] if argv is None else argv)
    install_guard(read_token(token_file))
    install_flower_hooks("superlink")  # patience with a loaded machine's ServerApp and SuperNodes
    install_node_takeover()  # a learner the manager restarted joins at once, under its node
    from flwr.superlink.cli.flower_superlink import flower_superlink

    sys.argv = ["flower-superlink", *flower_arguments]
    flower_superlink()


if __name__ == "__main__":
    main()
