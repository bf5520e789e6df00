"""MQTT connections for FLOps components (paho-mqtt), configured from the environment.

`FLOPS_MQTT_HOST` / `FLOPS_MQTT_PORT`, credentials from `FLOPS_MQTT_USERNAME` and
`FLOPS_MQTT_PASSWORD` or `FLOPS_MQTT_PASSWORD_FILE`, the client id an actor's user is bound
to in `FLOPS_MQTT_CLIENT_ID`, TLS with `FLOPS_MQTT_CA_FILE`. No defaults for credentials: an
unauthenticated broker is only for loopback. Each actor gets its own user from the manager
(`flops.mqtt_acl`). `MqttSettings.from_env` is the one reader of these variables; a service
calls it in its `main()` and passes the settings down.

Publishing is at least once: `EventPublisher` waits for the broker's PUBACK, and paho sends
an unacknowledged message again after a reconnect, so an event published while the broker
restarts still arrives (consumers drop duplicates by `event_id`).
"""

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel

from flops.events import Event

PUBLISH_TIMEOUT_S = 10.0
# How long `EventPublisher.close` waits for events the broker has not acknowledged yet.
DRAIN_TIMEOUT_S = 30.0
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 5


class MqttSettings(BaseModel):
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    # Where the password came from, so that children on this machine get the file, not the secret.
    password_file: str | None = None
    # The client id the broker binds this user to (actors: their username); None: any.
    client_id: str | None = None
    ca_file: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "MqttSettings | None":
        """Settings from `env` (a service's environment), or None when no broker is configured."""
        host = env.get("FLOPS_MQTT_HOST")
        if not host:
            return None
        password = env.get("FLOPS_MQTT_PASSWORD")
        password_file = env.get("FLOPS_MQTT_PASSWORD_FILE")
        if not password and password_file:
            password = Path(password_file).read_text(encoding="utf-8").strip()
        return cls(
            host=host,
            port=int(env.get("FLOPS_MQTT_PORT", "1883")),
            username=env.get("FLOPS_MQTT_USERNAME") or None,
            password=password or None,
            password_file=password_file or None,
            client_id=env.get("FLOPS_MQTT_CLIENT_ID") or None,
            ca_file=env.get("FLOPS_MQTT_CA_FILE") or None,
        )

    def env(self, same_filesystem: bool = True) -> dict[str, str]:
        """Environment that gives a child process these settings.

        On this machine the password travels as the path of its file; a container or a
        remote node cannot open that path, so it gets the password itself.
        """
        values = {"FLOPS_MQTT_HOST": self.host, "FLOPS_MQTT_PORT": str(self.port)}
        if self.username:
            values["FLOPS_MQTT_USERNAME"] = self.username
        if self.client_id:
            values["FLOPS_MQTT_CLIENT_ID"] = self.client_id
        if self.ca_file:
            values["FLOPS_MQTT_CA_FILE"] = self.ca_file
        if self.password_file and same_filesystem:
            values["FLOPS_MQTT_PASSWORD_FILE"] = self.password_file
        elif self.password:
            values["FLOPS_MQTT_PASSWORD"] = self.password
        return values


def make_client(settings: MqttSettings, client_id: str = "", persistent: bool = False) -> mqtt.Client:
    """A paho client for `settings`; its id is `client_id`, else the one the user is bound to, else random."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id or settings.client_id or "",
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
    )
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.ca_file:
        client.tls_set(ca_certs=settings.ca_file)
    client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
    return client


class MqttUnavailable(ConnectionError):
    """The broker did not accept a connection in time."""


class EventPublisher:
    """Publishes events with QoS 1 and waits until the broker has them (its PUBACK).

    Connects in the background and reconnects by itself; a message the broker has not
    acknowledged is sent again after a reconnect, as long as the publisher lives. So a broker
    that starts a moment later or restarts does not lose the component's events: `publish`
    raises `MqttUnavailable` after `timeout_s` without a PUBACK, but the event stays queued,
    and `close` waits up to `drain_s` for every event still unacknowledged.
    """

    def __init__(
        self, settings: MqttSettings, timeout_s: float = PUBLISH_TIMEOUT_S, drain_s: float = DRAIN_TIMEOUT_S
    ) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self.drain_s = drain_s
        self._connected = threading.Event()
        self._pending: list[mqtt.MQTTMessageInfo] = []
        self._lock = threading.Lock()
        self._client = make_client(settings)
        self._client.on_connect = self._handle_connect
        self._client.on_disconnect = lambda *_args: self._connected.clear()
        self._client.connect_async(settings.host, settings.port, keepalive=30)
        self._client.loop_start()

    def _handle_connect(self, _c: object, _u: object, _f: object, reason: object, _p: object = None) -> None:
        if not getattr(reason, "is_failure", False):
            self._connected.set()

    def publish(self, event: Event) -> None:
        """Publish `event` (QoS 1); returns once the broker acknowledged it."""
        if not self._connected.wait(self.timeout_s):
            raise MqttUnavailable(
                f"no MQTT broker accepted {self.settings.username or 'an anonymous client'} at "
                f"{self.settings.host}:{self.settings.port} within {self.timeout_s:.0f} s"
            )
        with self._lock:
            info = self._client.publish(event.topic, event.model_dump_json(), qos=1)
            self._pending = [p for p in self._pending if not _is_acknowledged(p)] + [info]
        if not _acknowledged(info, self.timeout_s):
            raise MqttUnavailable(
                f"the broker at {self.settings.host}:{self.settings.port} did not acknowledge {event.topic} "
                f"within {self.timeout_s:.0f} s; it is sent again when the connection is back"
            )

    def close(self) -> None:
        """Wait (up to `drain_s`) for unacknowledged events, then disconnect."""
        deadline = time.monotonic() + self.drain_s
        with self._lock:
            pending = list(self._pending)
        for info in pending:
            _acknowledged(info, max(0.0, deadline - time.monotonic()))
        self._client.disconnect()
        self._client.loop_stop()


def _is_acknowledged(info: mqtt.MQTTMessageInfo) -> bool:
    try:
        return info.is_published()
    except RuntimeError:
        # Published while disconnected: paho keeps the message and sends it after the reconnect,
        # but its `rc` stays "not connected"; the acknowledgement still marks it published.
        return bool(getattr(info, "_published", False))


def _acknowledged(info: mqtt.MQTTMessageInfo, timeout_s: float) -> bool:
    """Whether the broker acknowledged the message within `timeout_s` (across reconnects)."""
    deadline = time.monotonic() + timeout_s
    while not _is_acknowledged(info):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True


def publish_once(event: Event, settings: MqttSettings | None) -> bool:
    """Publish one event with the service's broker `settings`; None (no broker): nothing, False."""
    if settings is None:
        return False
    publisher = EventPublisher(settings)
    try:
        publisher.publish(event)
    finally:
        publisher.close()
    return True


class EventSubscriber:
    """A persistent-session subscriber: events published while it was away (or while the broker
    restarted, its sessions persisted) still arrive; it reconnects and subscribes again by itself."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        topic_filter: str,
        on_message: Callable[[str, bytes], None],
    ) -> None:
        self.connected = threading.Event()
        self._client = make_client(settings, client_id=client_id, persistent=True)
        self._topic_filter = topic_filter
        self._on_message = on_message
        self._client.on_connect = self._handle_connect
        self._client.on_message = lambda _c, _u, message: self._on_message(message.topic, bytes(message.payload))
        self._client.on_disconnect = lambda *_args: self.connected.clear()
        # In the background: a broker that is down now (restarting) is reached once it is back.
        self._client.connect_async(settings.host, settings.port, keepalive=30)
        self._client.loop_start()

    def _handle_connect(
        self, client: mqtt.Client, _userdata: object, _flags: object, reason: object, _props: object = None
    ) -> None:
        if not getattr(reason, "is_failure", False):
            client.subscribe(self._topic_filter, qos=1)
            self.connected.set()

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()
