"""The embedded MQTT broker: amqtt on loopback, for machines without Mosquitto.

`flops up` starts it (through `flops.broker`) as `python -m flops.embedded_broker CONFIG`, CONFIG
being a 0600 JSON file that names the port and the password file: the password itself is never
on a command line or in an environment. It keeps the contract of FLOps's Mosquitto setup:
MQTT 3.1.1 on 127.0.0.1 only, one user (`flops`) whose password is the content of the 0600
file, no anonymous clients, QoS 1 with PUBACK, persistent sessions (`clean_session=False`)
whose QoS 1 messages queue while the client is away, keepalive, all in memory (Mosquitto runs
with `persistence false` too). Verified with amqtt 0.11.4 (`flops.broker.AMQTT_REQUIREMENT`).

The password is compared as is with `hmac.compare_digest`, read from the same 0600 file the
components read: no hash format of amqtt's (passlib in 0.11, pwdlib in 0.12) is involved.
"""

import argparse
import asyncio
import hmac
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker, Server
from amqtt.contexts import BaseContext
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin
from amqtt.session import Session
from pydantic import BaseModel, Field

from flops.broker import MQTT_USER

PLUGIN_PATH = "flops.embedded_broker.PasswordFileAuth"


class EmbeddedBrokerConfig(BaseModel):
    """What the broker process reads from its config file."""

    host: str = "127.0.0.1"
    port: int = Field(gt=0, lt=65536)
    username: str = MQTT_USER
    password_file: Path


class PasswordFileAuth(BaseAuthPlugin):
    """One user, whose password is the content of a file; everything else is refused."""

    @dataclass
    class Config:
        password_file: str = ""
        username: str = MQTT_USER

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        config = self.config
        self._username = config.username.encode("utf-8")
        self._password = Path(config.password_file).read_text(encoding="utf-8").strip().encode("utf-8")
        if not self._password:
            raise ValueError(f"the password file {config.password_file} is empty")

    async def authenticate(self, *, session: Session) -> bool:
        if not session.username or session.password is None:
            self.context.logger.info("refused a client without username or password")
            return False
        user_ok = hmac.compare_digest(session.username.encode("utf-8"), self._username)
        password_ok = hmac.compare_digest(str(session.password).encode("utf-8"), self._password)
        if user_ok and password_ok:
            return True
        self.context.logger.info("refused a client: wrong username or password")
        return False


class RefusingBroker(Broker):
    """amqtt's broker, answering a refused client with CONNACK 5 (not authorized) as Mosquitto does.

    amqtt 0.11 only closes the connection, which paho reports as an unspecified error; with the
    CONNACK, a client with a wrong password says "Not authorized".
    """

    async def _handle_client_session(
        self,
        reader: ReaderAdapter,
        writer: WriterAdapter,
        client_session: Session,
        handler: BrokerProtocolHandler,
        server: Server,
        listener_name: str,
    ) -> None:
        if not await self._authenticate(client_session, self.listeners_config[listener_name]):
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            return
        await super()._handle_client_session(reader, writer, client_session, handler, server, listener_name)


def broker_config(config: EmbeddedBrokerConfig) -> dict[str, object]:
    """amqtt 0.11's broker configuration: one TCP listener, our authentication plugin only.

    Leaving out amqtt's default plugins drops its anonymous access, its `$SYS` topics and its
    packet logger (which would write CONNECT packets, passwords included, at debug level).
    """
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{config.host}:{config.port}"}},
        "plugins": {PLUGIN_PATH: {"password_file": str(config.password_file), "username": config.username}},
    }


async def serve(config: EmbeddedBrokerConfig) -> None:
    """Run the broker until SIGTERM or SIGINT, then shut it down."""
    broker = RefusingBroker(broker_config(config))
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    logging.getLogger(__name__).info("embedded MQTT broker listening on %s:%d", config.host, config.port)
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flops.embedded_broker", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="JSON file: host, port, username, password_file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)
    config = EmbeddedBrokerConfig.model_validate_json(args.config.read_text(encoding="utf-8"))
    try:
        asyncio.run(serve(config))
    except Exception as error:  # startup errors: the port taken, the password file unreadable
        print(f"embedded MQTT broker failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
