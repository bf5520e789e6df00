"""MQTT connections for FLOps components (paho-mqtt), configured from the environment.

`FLOPS_MQTT_HOST` / `FLOPS_MQTT_PORT`, credentials from `FLOPS_MQTT_USERNAME` and
`FLOPS_MQTT_PASSWORD` or `FLOPS_MQTT_PASSWORD_FILE`, TLS with `FLOPS_MQTT_CA_FILE`.
No defaults for credentials: an unauthenticated broker is only for loopback.
`MqttSettings.from_env` is the one reader of these variables; a service calls it in its
`main()` and passes the settings down.
"""

import threading
from collections.abc import Callable, Mapping
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from pydantic import BaseModel

from flops.events import Event

PUBLISH_TIMEOUT_S = 10.0


class MqttSettings(BaseModel):
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    # Where the password came from, so that children on this machine get the file, not the secret.
    password_file: str | None = None
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
        if self.ca_file:
            values["FLOPS_MQTT_CA_FILE"] = self.ca_file
        if self.password_file and same_filesystem:
            values["FLOPS_MQTT_PASSWORD_FILE"] = self.password_file
        elif self.password:
            values["FLOPS_MQTT_PASSWORD"] = self.password
        return values


def make_client(settings: MqttSettings, client_id: str = "", persistent: bool = False) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=not persistent,
        protocol=mqtt.MQTTv311,
    )
    if settings.username:
        client.username_pw_set(settings.username, settings.password)
    if settings.ca_file:
        client.tls_set(ca_certs=settings.ca_file)
    return client


class MqttUnavailable(ConnectionError):
    """The broker did not accept a connection in time."""


class EventPublisher:
    """Publishes events with QoS 1 and waits until the broker has them.

    Connects in the background and reconnects by itself, so a broker that starts a moment
    later or restarts does not lose the component's events.
    """

    def __init__(self, settings: MqttSettings) -> None:
        self.settings = settings
        self._connected = threading.Event()
        self._client = make_client(settings)
        self._client.on_connect = lambda *_args: self._connected.set()
        self._client.on_disconnect = lambda *_args: self._connected.clear()
        self._client.connect_async(settings.host, settings.port, keepalive=30)
        self._client.loop_start()

    def publish(self, event: Event) -> None:
        if not self._connected.wait(PUBLISH_TIMEOUT_S):
            raise MqttUnavailable(f"no MQTT broker at {self.settings.host}:{self.settings.port}")
        info = self._client.publish(event.topic, event.model_dump_json(), qos=1)
        info.wait_for_publish(timeout=PUBLISH_TIMEOUT_S)

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


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
    """A persistent-session subscriber: events published while it was away still arrive."""

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
        self._client.connect(settings.host, settings.port, keepalive=30)
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
