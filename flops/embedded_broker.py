"""The embedded MQTT broker: amqtt on loopback, for machines without Mosquitto.

`flops up` starts it (through `flops.broker`) as `python -m flops.embedded_broker CONFIG`, CONFIG
being a 0600 JSON file that names the port, the user database and the session file: no
password is ever on a command line or in an environment. It keeps the contract of FLOps's
Mosquitto setup (`flops.mqtt_acl`):

- Users and ACLs as Mosquitto's dynamic-security plugin keeps them: the same JSON file
  (PBKDF2-SHA512 hashes), the same `$CONTROL/dynamic-security/v1` commands for the ones FLOps
  uses (createRole, deleteRole, createClient, deleteClient, setClientPassword, getClient,
  listClients), answered on `.../response`. Only a user whose role allows publishing to the
  control topic may send them; deleting a user disconnects its clients.
- A client is authenticated before anything of its session is touched: a wrong password
  cannot drop or take over another client's session, and a user bound to a client id
  connects only with that id. A refused client gets CONNACK 5 (not authorized).
- PUBLISH, SUBSCRIBE and delivery are checked against the user's roles; a refused PUBLISH
  (or a will message to a topic the user may not publish) is logged and the client is
  disconnected (MQTT 3.1.1 has no negative PUBACK).
- MQTT 3.1.1, QoS 1 with PUBACK, persistent sessions (`clean_session=False`) whose QoS 1
  messages queue while the client is away; sessions, subscriptions and queued messages are
  saved to the session file every second and at shutdown, and restored at start, so a
  restarted broker still delivers what it had accepted.

Verified with amqtt 0.11.4 (`flops.broker.AMQTT_REQUIREMENT`); the overridden broker methods
are amqtt 0.11's.
"""

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import secrets
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from amqtt.adapters import ReaderAdapter, WriterAdapter
from amqtt.broker import Broker, RetainedApplicationMessage
from amqtt.contexts import Action, BaseContext
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session
from amqtt.utils import gen_client_id
from pydantic import BaseModel, Field

from flops.mqtt_acl import (
    CONTROL_RESPONSE_TOPIC,
    CONTROL_TOPIC,
    DEFAULT_ACL_ACCESS,
    filter_covered,
    hash_password,
    password_matches,
    topic_matches,
)

PLUGIN_PATH = "flops.embedded_broker.DynamicSecurity"
SAVE_INTERVAL_S = 1.0
LITERAL_TYPES = ("subscribeLiteral", "unsubscribeLiteral")
log = logging.getLogger("flops.embedded_broker")


class EmbeddedBrokerConfig(BaseModel):
    """What the broker process reads from its config file."""

    host: str = "127.0.0.1"
    port: int = Field(gt=0, lt=65536)
    dynsec_file: Path
    sessions_file: Path | None = None


class ControlError(ValueError):
    """A dynamic-security command that cannot be carried out; the message is the response's error."""


class UserDatabase:
    """Mosquitto dynamic-security's users and roles, read from and saved to its JSON file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        config = json.loads(path.read_text(encoding="utf-8"))
        self.clients: dict[str, dict[str, Any]] = {c["username"]: c for c in config.get("clients", [])}
        self.roles: dict[str, dict[str, Any]] = {r["rolename"]: r for r in config.get("roles", [])}
        self.groups: list[Any] = config.get("groups", [])
        self.default_access: dict[str, bool] = {**DEFAULT_ACL_ACCESS, **config.get("defaultACLAccess", {})}

    def save(self) -> None:
        document = {
            "clients": list(self.clients.values()),
            "roles": list(self.roles.values()),
            "groups": self.groups,
            "defaultACLAccess": self.default_access,
        }
        partial = self.path.with_suffix(".tmp")
        partial.write_text(json.dumps(document, indent=2), encoding="utf-8")
        partial.chmod(0o600)
        partial.replace(self.path)

    def authenticate(self, username: str | None, password: str | None, client_id: str | None) -> str | None:
        """None when the user may connect, else why not (for the log; the client only hears 'not authorized')."""
        if not username or password is None:
            return "no username or password"
        client = self.clients.get(username)
        # Hash even for an unknown user, so that timing does not tell which users exist.
        entry = client or {**hash_password(secrets.token_hex(8)), "username": username}
        if not password_matches(entry, str(password)) or client is None:
            return f"wrong username or password (user {username!r})"
        if client.get("disabled"):
            return f"user {username!r} is disabled"
        bound = client.get("clientid")
        if bound and bound != client_id:
            return f"user {username!r} may only connect as client id {bound!r}, not {client_id!r}"
        return None

    def allowed(self, username: str | None, acltype: str, topic: str) -> bool:
        """Whether `username`'s roles allow `acltype` on `topic` (a filter for subscriptions)."""
        client = self.clients.get(username or "")
        if client is None:
            return False
        matches = filter_covered if acltype in ("subscribePattern", "unsubscribePattern") else topic_matches
        rules: list[tuple[int, bool]] = []
        for index, link in enumerate(client.get("roles", [])):
            role = self.roles.get(link.get("rolename", ""))
            for rule in (role or {}).get("acls", []):
                kind, rule_topic = rule.get("acltype"), rule.get("topic", "")
                literal = kind in LITERAL_TYPES and kind.replace("Literal", "Pattern") == acltype
                if (kind == acltype and matches(rule_topic, topic)) or (literal and rule_topic == topic):
                    rules.append((int(rule.get("priority", 0)) * 1000 - index, bool(rule.get("allow", True))))
        if rules:
            return max(rules)[1]
        default_key = {"subscribePattern": "subscribe", "unsubscribePattern": "unsubscribe"}.get(acltype, acltype)
        return bool(self.default_access.get(default_key, False))

    # ----------------------------------------------------------------- commands
    def run(self, command: dict[str, Any]) -> dict[str, Any] | None:
        """Carry out one command; the response's `data`, if any. Raises `ControlError`."""
        name = command.get("command")
        if name == "createRole":
            rolename = _required(command, "rolename")
            if rolename in self.roles:
                raise ControlError("Role already exists")
            acls = [_acl(rule) for rule in command.get("acls", [])]
            self.roles[rolename] = {"rolename": rolename, "acls": acls}
            return None
        if name == "deleteRole":
            rolename = _required(command, "rolename")
            if self.roles.pop(rolename, None) is None:
                raise ControlError("Role not found")
            for entry in self.clients.values():
                entry["roles"] = [r for r in entry.get("roles", []) if r.get("rolename") != rolename]
            return None
        if name == "createClient":
            username = _required(command, "username")
            if username in self.clients:
                raise ControlError("Client already exists")
            roles = [{"rolename": r["rolename"]} for r in command.get("roles", []) if isinstance(r, dict)]
            if any(r["rolename"] not in self.roles for r in roles):
                raise ControlError("Role not found")
            client: dict[str, Any] = {"username": username, "roles": roles}
            if command.get("clientid"):
                client["clientid"] = str(command["clientid"])
            if command.get("password") is not None:
                client.update(hash_password(str(command["password"])))
            self.clients[username] = client
            return None
        if name == "deleteClient":
            if self.clients.pop(_required(command, "username"), None) is None:
                raise ControlError("Client not found")
            return None
        if name == "setClientPassword":
            client = self._client(command)
            client.update(hash_password(str(_required(command, "password"))))
            return None
        if name == "getClient":
            client = self._client(command)
            shown = {k: v for k, v in client.items() if k not in ("password", "salt", "iterations")}
            return {"client": {**shown, "groups": []}}
        if name == "listClients":
            return {"totalCount": len(self.clients), "clients": sorted(self.clients)}
        raise ControlError("Unknown command")

    def _client(self, command: dict[str, Any]) -> dict[str, Any]:
        client = self.clients.get(_required(command, "username"))
        if client is None:
            raise ControlError("Client not found")
        return client


def _required(command: dict[str, Any], key: str) -> str:
    value = command.get(key)
    if not isinstance(value, str) or not value:
        raise ControlError(f"Invalid/missing {key}")
    return value


def _acl(rule: Any) -> dict[str, Any]:
    if not isinstance(rule, dict) or not isinstance(rule.get("acltype"), str) or not isinstance(rule.get("topic"), str):
        raise ControlError("Invalid ACL")
    return {
        "acltype": rule["acltype"],
        "topic": rule["topic"],
        "priority": int(rule.get("priority", 0)),
        "allow": bool(rule.get("allow", True)),
    }


class DynamicSecurity(BaseAuthPlugin, BaseTopicPlugin):
    """amqtt plugin: authentication and topic ACLs from the dynamic-security user database."""

    @dataclass
    class Config:
        dynsec_file: str = ""

    def __init__(self, context: BaseContext) -> None:
        super().__init__(context)
        self.users = UserDatabase(Path(self.config.dynsec_file))

    async def authenticate(self, *, session: Session) -> bool:
        refusal = self.users.authenticate(session.username, session.password, session.client_id)
        will = session.will_topic if session.will_flag else None
        if refusal is None and will and not self.users.allowed(session.username, "publishClientSend", will):
            refusal = f"user {session.username!r} may not publish its will to {will!r}"
        if refusal is not None:
            log.warning("refused client %r from %s: %s", session.client_id, session.remote_address, refusal)
            return False
        return True

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        if session is None or topic is None:
            return False
        acltype = (
            {
                Action.PUBLISH: "publishClientSend",
                Action.SUBSCRIBE: "subscribePattern",
                Action.RECEIVE: "publishClientReceive",
            }.get(action)
            if action is not None
            else None
        )
        allowed = acltype is not None and self.users.allowed(session.username, acltype, topic)
        if not allowed and action is Action.SUBSCRIBE:
            log.warning("denied SUBSCRIBE of %r (user %r) to %r", session.client_id, session.username, topic)
        return allowed


class FlopsBroker(Broker):
    """amqtt 0.11's broker, hardened as the module doc says, with sessions kept across restarts."""

    def __init__(self, config: dict[str, Any], sessions_file: Path | None = None) -> None:
        super().__init__(config)
        self.sessions_file = sessions_file
        self._saved = ""

    @property
    def security(self) -> DynamicSecurity:
        for plugin in self.plugins_manager.plugins:
            if isinstance(plugin, DynamicSecurity):
                return plugin
        raise RuntimeError("the dynamic-security plugin is not loaded")

    # ---------------------------------------------------------- authentication
    async def _initialize_client_session(
        self, reader: ReaderAdapter, writer: WriterAdapter, remote_address: str, remote_port: int
    ) -> tuple[BrokerProtocolHandler, Session]:
        """amqtt's, but authenticating before any existing session is dropped or resumed."""
        try:
            handler, session = await BrokerProtocolHandler.init_from_connect(reader, writer, self.plugins_manager)
        except (AMQTTError, NoDataError) as error:
            raise AMQTTError(f"{remote_address}:{remote_port}: no CONNECT: {error}") from error
        except MQTTError:
            await writer.close()
            raise
        session.remote_address, session.remote_port = remote_address, remote_port
        if session.clean_session and not session.client_id:
            session.client_id = gen_client_id()
        existing = self._sessions.get(session.client_id or "", (None, None))[0]
        taken = existing is not None and existing.username != session.username
        authenticated = await self._authenticate(session, None)
        if not authenticated or taken:
            if authenticated:
                log.warning("refused client %r (user %r): the session belongs to another user", session.client_id,
                            session.username)  # fmt: skip
            await ConnackPacket.build(0, NOT_AUTHORIZED).to_stream(writer)
            await writer.close()
            raise AMQTTError(f"client {session.client_id!r} from {remote_address}: not authorized")
        if session.clean_session:
            await self._delete_session(session.client_id or "")
            session.parent = 0
        elif existing is not None:
            for key in ("will_flag", "will_message", "will_topic", "will_qos", "keep_alive", "username", "password"):
                setattr(existing, key, getattr(session, key))
            existing.remote_address, existing.remote_port = remote_address, remote_port
            session, existing.parent = existing, 1
        else:
            session.parent = 0
        delay = self.config.get("timeout-disconnect-delay", 0)
        if session.keep_alive > 0 and isinstance(delay, int):
            session.keep_alive += delay
        return handler, session

    # -------------------------------------------------------------- publishing
    async def _handle_message_delivery(
        self, client_session: Session, handler: BrokerProtocolHandler, wait_deliver: asyncio.Future[Any]
    ) -> bool:
        message = wait_deliver.result()
        topic = getattr(message, "topic", None)
        if topic == CONTROL_TOPIC:
            if self.security.users.allowed(client_session.username, "publishClientSend", CONTROL_TOPIC):
                await self._control(client_session, bytes(message.data or b""))
                return True
        elif (
            not topic  # amqtt's own checks refuse what is no topic at all
            or topic.startswith("$")
            or "#" in topic
            or "+" in topic
            or await self._topic_filtering(client_session, topic=topic, action=Action.PUBLISH)
        ):
            return await super()._handle_message_delivery(client_session, handler, wait_deliver)
        log.warning("denied PUBLISH from %r (user %r) to %r: not authorized, disconnecting it",
                    client_session.client_id, client_session.username, topic)  # fmt: skip
        await handler.handle_connection_closed()
        return True

    async def _control(self, session: Session, body: bytes) -> None:
        users = self.security.users
        responses: list[dict[str, Any]] = []
        try:
            commands = json.loads(body)["commands"]
            if not isinstance(commands, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            commands = []
            responses.append({"command": "Unknown command", "error": "Invalid/missing commands"})
        changed, deleted = False, []
        for command in commands:
            if not isinstance(command, dict):
                continue
            response: dict[str, Any] = {"command": command.get("command", "Unknown command")}
            if "correlationData" in command:
                response["correlationData"] = command["correlationData"]
            try:
                data = users.run(command)
                if data is not None:
                    response["data"] = data
                changed = changed or command.get("command") not in ("getClient", "listClients")
                if command.get("command") == "deleteClient":
                    deleted.append(command["username"])
                log.info("dynsec: %s | %s | %s", session.username, response["command"],
                         command.get("username") or command.get("rolename") or "")  # fmt: skip
            except ControlError as error:
                response["error"] = str(error)
            responses.append(response)
        if changed:
            users.save()
        for username in deleted:  # a revoked user's clients go at once, as Mosquitto does
            for other, other_handler in list(self._sessions.values()):
                if other.username == username and other.transitions.state == "connected":
                    await other_handler.handle_connection_closed()
        await self._broadcast_message(None, CONTROL_RESPONSE_TOPIC, json.dumps({"responses": responses}).encode(), 1)

    # ------------------------------------------------------------- persistence
    def snapshot(self) -> str:
        """The persistent sessions, their subscriptions and undelivered QoS 1 messages, as JSON."""
        sessions = []
        for client_id, (session, _handler) in sorted(self._sessions.items()):
            if session.clean_session or session.is_anonymous:
                continue
            filters = [
                [topic_filter, qos]
                for topic_filter, subscribers in self._subscriptions.items()
                for subscriber, qos in subscribers
                if subscriber.client_id == client_id
            ]
            pending = [*session.inflight_out.values(), *list(session.retained_messages._queue)]
            messages = [
                {"topic": m.topic, "qos": m.qos, "data": base64.b64encode(bytes(m.data or b"")).decode("ascii")}
                for m in pending
                if m.qos
            ]
            sessions.append(
                {"client_id": client_id, "username": session.username, "subscriptions": filters, "messages": messages}
            )
        return json.dumps({"sessions": sessions}, indent=1)

    def save_sessions(self) -> None:
        if self.sessions_file is None:
            return
        text = self.snapshot()
        if text == self._saved:
            return
        partial = self.sessions_file.with_suffix(".tmp")
        partial.write_text(text, encoding="utf-8")
        partial.chmod(0o600)
        partial.replace(self.sessions_file)
        self._saved = text

    def restore_sessions(self) -> None:
        if self.sessions_file is None or not self.sessions_file.is_file():
            return
        try:
            saved = json.loads(self.sessions_file.read_text(encoding="utf-8"))["sessions"]
        except (ValueError, KeyError, OSError) as error:
            log.warning("cannot read the saved sessions %s, starting without them: %s", self.sessions_file, error)
            return
        count = 0
        for entry in saved:
            handler, session = self.create_offline_session(entry["client_id"])
            session.clean_session = False
            session.username = entry.get("username")
            self._sessions[session.client_id or ""] = (session, handler)
            for topic_filter, qos in entry.get("subscriptions", []):
                self._subscriptions.setdefault(topic_filter, []).append((session, int(qos)))
            for message in entry.get("messages", []):
                data = base64.b64decode(message["data"])
                queued = RetainedApplicationMessage(None, message["topic"], data, message["qos"])
                session.retained_messages.put_nowait(queued)
                count += 1
        self._saved = self.snapshot()
        log.info("restored %d sessions with %d queued messages from %s", len(saved), count, self.sessions_file)

    async def _start_listeners(self) -> None:
        self.restore_sessions()  # before any client can connect
        await super()._start_listeners()


def broker_config(config: EmbeddedBrokerConfig) -> dict[str, Any]:
    """amqtt 0.11's broker configuration: one TCP listener, our security plugin only.

    Leaving out amqtt's default plugins drops its anonymous access, its `$SYS` topics and its
    packet logger (which would write CONNECT packets, passwords included, at debug level).
    """
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{config.host}:{config.port}"}},
        "plugins": {PLUGIN_PATH: {"dynsec_file": str(config.dynsec_file)}},
    }


async def serve(config: EmbeddedBrokerConfig) -> None:
    """Run the broker until SIGTERM or SIGINT, saving sessions every second; then save and shut down."""
    broker = FlopsBroker(broker_config(config), config.sessions_file)
    await broker.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("embedded MQTT broker listening on %s:%d", config.host, config.port)
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), SAVE_INTERVAL_S)
        try:
            broker.save_sessions()
        except OSError as error:
            log.warning("cannot save the sessions to %s: %s", config.sessions_file, error)
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flops.embedded_broker", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="JSON file: host, port, dynsec_file, sessions_file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("transitions").setLevel(logging.WARNING)
    config = EmbeddedBrokerConfig.model_validate_json(args.config.read_text(encoding="utf-8"))
    try:
        asyncio.run(serve(config))
    except Exception as error:  # startup errors: the port taken, the user database unreadable
        print(f"embedded MQTT broker failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    # Run the importable module's main: amqtt loads the plugin by its dotted path, which must be
    # the same class the broker looks for, not a second copy in `__main__`.
    from flops.embedded_broker import main as module_main

    sys.exit(module_main())
