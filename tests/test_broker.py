"""The stack's MQTT broker, Mosquitto and the embedded amqtt one, really started on loopback.

Both must keep the same contract: the manager's user `flops` with the generated password, actor
users the manager issues, QoS 1 with PUBACK, persistent sessions that queue QoS 1 messages
while the client is away (the manager's subscription), a clean stop; and the password never on
a command line or in an environment. Attacks on the per-actor users are in
tests/test_event_trust.py.
"""

import os
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from flops import broker as broker_module
from flops.broker import (
    MQTT_USER,
    BrokerError,
    RunningBroker,
    choose_broker,
    launch_broker,
    mosquitto_binary,
    mosquitto_passwd_binary,
    parse_broker_kind,
)
from flops.events import Component, EventName, LearnerReport, all_projects_filter, decode_event, make_event
from flops.mqtt import EventPublisher, EventSubscriber, MqttSettings, publish_once
from flops.net import free_port, port_open, wait_until
from flops.stack import StackSettings, _broker_fits
from tests.broker_users import issue

HAVE_MOSQUITTO = bool(mosquitto_binary() and mosquitto_passwd_binary())
HAVE_AMQTT = broker_module.amqtt_version() is not None
KINDS = [
    pytest.param("mosquitto", marks=pytest.mark.skipif(not HAVE_MOSQUITTO, reason="Mosquitto is not installed")),
    pytest.param("embedded", marks=pytest.mark.skipif(not HAVE_AMQTT, reason="amqtt is not installed")),
]
TOPIC = "flops/projects/p1/learner/joined"


@pytest.fixture(params=KINDS)
def broker(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningBroker]:
    running = launch_broker(tmp_path / "broker", free_port(), request.param)
    try:
        yield running
    finally:
        running.process.stop()


class Client:
    """A paho client that records its CONNACK and what it receives."""

    def __init__(
        self, port: int, username: str | None, password: str | None, client_id: str = "", clean: bool = True
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean, protocol=mqtt.MQTTv311
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.answered = threading.Event()
        self.reason: object = None
        self.messages: list[tuple[str, bytes, int]] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_args: self.answered.set()
        self.client.on_message = lambda _c, _u, m: self.messages.append((m.topic, bytes(m.payload), m.qos))
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        self.answered.wait(10)

    def _on_connect(self, _c: object, _u: object, _f: object, reason: object, _p: object = None) -> None:
        self.reason = reason
        self.answered.set()

    @property
    def accepted(self) -> bool:
        return self.reason is not None and not getattr(self.reason, "is_failure", True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def password(running: RunningBroker) -> str:
    return running.password_file.read_text(encoding="utf-8").strip()


def test_the_right_password_publishes_and_subscribes_at_qos_1(broker: RunningBroker) -> None:
    port = broker.port
    learner = issue(broker, "p1", Component.LEARNER, "n1")
    subscriber = Client(port, MQTT_USER, password(broker), client_id="test-sub", clean=False)
    publisher = Client(port, learner.username, learner.password, client_id=learner.client_id or "")
    try:
        assert subscriber.accepted and publisher.accepted, (subscriber.reason, publisher.reason)
        result, _mid = subscriber.client.subscribe("flops/projects/+/+/+", qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.3)  # the SUBACK
        info = publisher.client.publish(TOPIC, b"first", qos=1)
        info.wait_for_publish(timeout=5)
        assert info.is_published(), "no PUBACK"
        assert wait_until(lambda: len(subscriber.messages) == 1, 5, 0.05), subscriber.messages
        assert subscriber.messages == [(TOPIC, b"first", 1)]
        # Away with a persistent session: QoS 1 messages wait for the subscriber's return.
        subscriber.close()
        time.sleep(0.3)
        info = publisher.client.publish(TOPIC, b"while away", qos=1)
        info.wait_for_publish(timeout=5)
        assert info.is_published()
        back = Client(port, MQTT_USER, password(broker), client_id="test-sub", clean=False)
        try:
            assert back.accepted, back.reason
            assert wait_until(lambda: len(back.messages) == 1, 5, 0.05), back.messages
            assert back.messages == [(TOPIC, b"while away", 1)]
        finally:
            back.close()
    finally:
        publisher.close()


@pytest.mark.parametrize(
    ("username", "secret"), [(None, None), (MQTT_USER, "wrong"), (MQTT_USER, ""), ("someone", "RIGHT")]
)
def test_wrong_credentials_and_anonymous_clients_are_refused(
    broker: RunningBroker, username: str | None, secret: str | None
) -> None:
    given = password(broker) if secret == "RIGHT" else secret
    client = Client(broker.port, username, given)
    try:
        assert client.answered.is_set(), "the broker did not answer"
        assert not client.accepted
        assert "Not authorized" in str(client.reason), client.reason  # CONNACK 5, as Mosquitto answers
    finally:
        client.close()


def test_the_password_is_private(broker: RunningBroker) -> None:
    secret = password(broker)
    assert stat.S_IMODE(broker.password_file.stat().st_mode) == 0o600
    process = psutil.Process(broker.process.pid)
    assert secret not in " ".join(process.cmdline())
    assert not any(secret in value for value in process.environ().values())
    for path in broker.password_file.parent.iterdir():  # the config files name the password file only
        if path != broker.password_file and path.is_file():
            assert secret not in path.read_text(encoding="utf-8", errors="replace"), path
    client = Client(broker.port, MQTT_USER, secret)  # a logged CONNECT would show it
    client.close()
    assert secret not in broker.process.log_path.read_text(errors="replace")


def test_the_broker_stops_cleanly(broker: RunningBroker) -> None:
    port = broker.port
    client = Client(port, MQTT_USER, password(broker))
    assert client.accepted
    started = time.monotonic()
    broker.process.stop(grace=10)
    assert time.monotonic() - started < 5
    assert broker.process.returncode() == 0, broker.process.log_tail()
    assert not port_open("127.0.0.1", port)
    client.client.loop_stop()


@pytest.mark.skipif(not HAVE_AMQTT, reason="amqtt is not installed")
def test_the_embedded_broker_carries_the_platforms_own_clients(tmp_path: Path) -> None:
    """EventPublisher / publish_once / EventSubscriber, as manager, builder and aggregator use them."""
    port = free_port()
    running = launch_broker(tmp_path / "broker", port, "embedded")
    settings = MqttSettings.from_env(
        {
            "FLOPS_MQTT_HOST": "127.0.0.1",
            "FLOPS_MQTT_PORT": str(port),
            "FLOPS_MQTT_USERNAME": MQTT_USER,
            "FLOPS_MQTT_PASSWORD_FILE": str(running.password_file),
        }
    )
    assert settings is not None
    learner = issue(running, "p1", Component.LEARNER)
    received: list[tuple[str, bytes]] = []
    subscriber = EventSubscriber(
        settings, "flops-manager-test", all_projects_filter(), lambda t, b: received.append((t, b))
    )
    publisher = EventPublisher(learner)
    try:
        assert subscriber.connected.wait(10)
        time.sleep(0.3)
        events = [
            make_event("p1", Component.LEARNER, EventName.JOINED, LearnerReport(node=f"node-{i}")) for i in range(3)
        ]
        for event in events[:2]:
            publisher.publish(event)
        assert publish_once(events[2], learner)
        assert wait_until(lambda: len(received) == 3, 10, 0.05), received
        decoded = [decode_event(topic, body) for topic, body in received]
        assert sorted(e.event_id for e in decoded) == sorted(e.event_id for e in events)
        # The manager restarts: what was published meanwhile reaches it under the same client id.
        subscriber.close()
        time.sleep(0.3)
        later = make_event("p1", Component.LEARNER, EventName.FAILED, LearnerReport(node="node-9"), error="boom")
        publisher.publish(later)
        received.clear()
        subscriber = EventSubscriber(
            settings, "flops-manager-test", all_projects_filter(), lambda t, b: received.append((t, b))
        )
        assert subscriber.connected.wait(10)
        assert wait_until(lambda: len(received) == 1, 10, 0.05), received
        assert decode_event(*received[0]).event_id == later.event_id
    finally:
        subscriber.close()
        publisher.close()
        running.process.stop()
    # A wrong password: the platform's client never counts as connected.
    wrong = settings.model_copy(update={"password": "wrong"})
    running = launch_broker(tmp_path / "broker", port, "embedded")
    try:
        refused = EventSubscriber(wrong, "intruder", all_projects_filter(), lambda t, b: None)
        assert not refused.connected.wait(2)
        refused.close()
    finally:
        running.process.stop()


@pytest.mark.skipif(not HAVE_AMQTT, reason="amqtt is not installed")
def test_auto_falls_back_to_the_embedded_broker_without_mosquitto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker_module.shutil, "which", lambda _name: None)  # PATH and /usr/sbin alike
    assert choose_broker("auto")[0] == "embedded"
    running = launch_broker(tmp_path / "broker", free_port(), "auto")
    try:
        assert running.kind == "embedded"
        assert "no Mosquitto found" in running.description and "amqtt" in running.description
        client = Client(running.port, MQTT_USER, password(running))
        assert client.accepted
        client.close()
    finally:
        running.process.stop()
    with pytest.raises(BrokerError, match="apt-get install mosquitto"):
        choose_broker("mosquitto")


def test_auto_prefers_mosquitto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_module.shutil, "which", lambda name: f"/opt/bin/{os.path.basename(name)}")
    assert choose_broker("auto") == ("mosquitto", "/opt/bin/mosquitto")


def test_neither_broker_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_module.shutil, "which", lambda _name: None)
    monkeypatch.setattr(broker_module, "amqtt_version", lambda: None)
    with pytest.raises(BrokerError) as error:
        choose_broker("auto")
    assert "apt-get install mosquitto" in str(error.value) and "amqtt" in str(error.value)
    with pytest.raises(BrokerError, match="FLOPS_BROKER=embedded, but the Python package amqtt is not installed"):
        choose_broker("embedded")
    monkeypatch.setattr(broker_module, "amqtt_version", lambda: "0.13.0")
    with pytest.raises(BrokerError, match=r"amqtt 0\.13\.0 is installed, but .*verified with amqtt>=0\.11\.4,<0\.12"):
        choose_broker("embedded")


def test_flops_broker_is_read_once_in_the_stack_settings(tmp_path: Path) -> None:
    env = {"FLOPS_HOME": str(tmp_path)}
    assert StackSettings.from_env(env).broker == "auto"
    assert StackSettings.from_env({**env, "FLOPS_BROKER": "Embedded"}).broker == "embedded"
    assert StackSettings.from_env({**env, "FLOPS_BROKER": "mosquitto"}).broker == "mosquitto"
    with pytest.raises(BrokerError, match="FLOPS_BROKER='rabbitmq' is not one of auto, mosquitto, embedded"):
        StackSettings.from_env({**env, "FLOPS_BROKER": "rabbitmq"})
    assert parse_broker_kind("") == "auto"


def test_flops_up_restarts_a_running_stack_whose_broker_is_not_the_one_asked_for(tmp_path: Path) -> None:
    mosquitto_state = {"services": {"broker": {"kind": "mosquitto"}}}
    embedded_state = {"services": {"broker": {"kind": "embedded"}}}
    settings = {kind: StackSettings(home=tmp_path, broker=kind) for kind in ("auto", "mosquitto", "embedded")}
    assert _broker_fits(mosquitto_state, settings["auto"]) and _broker_fits(embedded_state, settings["auto"])
    assert _broker_fits(mosquitto_state, settings["mosquitto"])
    assert not _broker_fits(mosquitto_state, settings["embedded"])
    assert not _broker_fits(embedded_state, settings["mosquitto"])
