"""The aggregator's calls to its own SuperLink's Control API, with the control token.

Registering the project's learners (`flwr supernode register`), submitting the run (`flwr run`,
the CLI's own code) and asking its status (`flwr ls`) all run in this process, through Flower's
Control API client with one more interceptor that adds the token `aggregator.superlink`'s guard
wants. The token is read from its file and never leaves this process and the SuperLink's.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aggregator.superlink import CONTROL_TOKEN_HEADER


class ControlTokenInterceptor:
    """Adds the control token to every Control API request."""

    def __init__(self, token: str) -> None:
        self.token = token

    def intercept(self, context: Any, call_next: Any) -> Any:
        context.request.headers[CONTROL_TOKEN_HEADER] = self.token
        return call_next(context)


@dataclass(frozen=True)
class ControlAPI:
    """The SuperLink at `address` (TLS against `ca_file`, or plain HTTP when None)."""

    address: str
    ca_file: Path | None
    token_file: Path

    def token(self) -> str:
        return self.token_file.read_text(encoding="ascii").strip()

    def client(self) -> Any:
        """Flower's Control API client for this SuperLink, sending the control token."""
        from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
        from flwr.supercore.control import ControlHttpClient
        from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor

        return ControlHttpClient.from_server_address(
            server_address=self.address,
            insecure=self.ca_file is None,
            root_certificates=str(self.ca_file) if self.ca_file else None,
            interceptors=[
                CliClientHttpInterceptor(),
                RuntimeVersionHttpInterceptor(component_name="flwr CLI"),
                ControlTokenInterceptor(self.token()),
            ],
        )

    @contextmanager
    def session(self) -> Iterator[Any]:
        client = self.client()
        try:
            yield client
        finally:
            client.close()

    def register_supernodes(self, keys_dir: Path) -> list[str]:
        """Register every `<name>.pub` (OpenSSH) in `keys_dir`; the names registered."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from flwr.proto.control_pb2 import RegisterNodeRequest
        from flwr.supercore.primitives.asymmetric import public_key_to_bytes

        names = []
        with self.session() as client:
            for key_file in sorted(keys_dir.glob("*.pub")):
                try:
                    key = serialization.load_ssh_public_key(key_file.read_bytes())
                except ValueError as error:
                    raise RuntimeError(f"{key_file} is not an OpenSSH public key: {error}") from error
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    raise RuntimeError(f"{key_file} is not an elliptic-curve key, which Flower's node auth needs")
                client.RegisterNode(RegisterNodeRequest(public_key=public_key_to_bytes(key), name=key_file.stem))
                names.append(key_file.stem)
        return names

    def run_status(self, run_id: int) -> str | None:
        """`pending`, `running`, `finished:completed` ... as `flwr ls` shows it, then the SuperLink's
        details if it gave any (`finished:failed: No heartbeat received from the task`); None if unknown."""
        from flwr.proto.control_pb2 import ListRunsRequest

        try:
            with self.session() as client:
                response = client.ListRuns(ListRunsRequest(run_id=run_id))
        except Exception:  # the SuperLink is busy or going away: the caller asks again later
            return None
        run = response.run_dict.get(run_id)
        if run is None:
            return None
        status, sub_status, details = run.status.status, run.status.sub_status, run.status.details
        shown = f"{status}:{sub_status}" if sub_status else str(status)
        return f"{shown}: {details}" if details else shown

    @contextmanager
    def for_flwr_cli(self) -> Iterator[None]:
        """While inside, Flower's CLI code in this process (`flwr run`) talks to this SuperLink with the token.

        The CLI reads the connection from FLWR_HOME's config.toml, which the aggregator writes for this
        SuperLink alone; only the client it builds from it is replaced.
        """
        # `flwr.cli.run.run` is also the name of the function the package exports: ask for the module.
        run_module = importlib.import_module("flwr.cli.run.run")
        name = "init_http_client_from_connection"
        original = getattr(run_module, name)

        def init_client(connection: Any, auth_plugin: Any = None) -> Any:
            del connection, auth_plugin  # the same SuperLink; the token replaces Flower's account login
            return self.client()

        setattr(run_module, name, init_client)
        try:
            yield
        finally:
            setattr(run_module, name, original)
