"""Forged events, as a hostile customer sends them, against a real broker and the manager's controller.

Each actor has its own MQTT user, valid only for its project's, its component's topic; the
manager (its real `Controller.receive` on a real persistent subscription) reads the events.
Attacks, on Mosquitto with dynamic security and on the embedded amqtt broker alike:

- project A's learner publishes `flops/projects/B/aggregator/succeeded`: the broker refuses
  it (MQTT 5 PUBACK "Not authorized" on Mosquitto, a dropped connection on the embedded
  broker), logs it, and B's record is unchanged;
- an actor publishes for another component of its own project: refused;
- A's aggregator sends, on its own topic, an envelope that claims B: the manager refuses and logs it;
- anonymous, wrong password, another user's client id (the manager's session): refused, and
  the manager's session keeps its events; a will message for B's topic: never delivered;
- an actor subscribes to every project's events, or makes itself a user over `$CONTROL`: refused;
- after the project ends its users are revoked: connected clients are dropped, new ones refused;
- the broker restarts with an event queued for the away manager, or while an actor publishes:
  the event arrives, once.
"""

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from flops.broker import MQTT_USER, RunningBroker, launch_broker
from flops.events import (
    AggregatorFinished,
    AggregatorStarted,
    Component,
    Event,
    EventName,
    LearnerReport,
    all_projects_filter,
    make_event,
)
from flops.mqtt import EventPublisher, EventSubscriber, MqttSettings
from flops.mqtt_acl import CONTROL_TOPIC
from flops.net import free_port, wait_until
from flops.sla import ProjectSLA
from flops.training import RoundReport, TrainingSummary
from flops_manager.controller import Controller
from flops_manager.credentials import ActorCredentials
from flops_manager.models import ProcessHandle, Project, ProjectStatus
from flops_manager.settings import ManagerSettings
from flops_manager.store import ProjectStore, open_store
from tests.broker_users import manager_settings
from tests.test_broker import HAVE_AMQTT, HAVE_MOSQUITTO
from tests.test_controller import FakeOrchestrator

KINDS = [
    pytest.param("mosquitto", marks=pytest.mark.skipif(not HAVE_MOSQUITTO, reason="Mosquitto is not installed")),
    pytest.param("embedded", marks=pytest.mark.skipif(not HAVE_AMQTT, reason="amqtt is not installed")),
]
A, B = "aaaaaaaaaaaa", "bbbbbbbbbbbb"


class Attacker:
    """A raw paho client: MQTT 5 where the broker speaks it (Mosquitto), else 3.1.1."""

    def __init__(
        self,
        broker: RunningBroker,
        settings: MqttSettings | None,
        *,
        client_id: str | None = None,
        password: str | None = None,
        clean: bool = True,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        self.v5 = broker.kind == "mosquitto"
        protocol = mqtt.MQTTv5 if self.v5 else mqtt.MQTTv311
        chosen_id = client_id if client_id is not None else (settings.client_id if settings else "") or ""
        session = None if self.v5 else clean  # MQTT 5 says it at CONNECT (clean_start)
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=chosen_id, protocol=protocol, clean_session=session
        )
        if settings is not None:
            self.client.username_pw_set(settings.username, password if password is not None else settings.password)
        if will:
            self.client.will_set(will[0], will[1], qos=1)
        self.client.reconnect_delay_set(30, 60)  # an attacker that was thrown out stays out for the test
        self.answered = threading.Event()
        self.dropped = threading.Event()
        self.reason: object = None
        self.acks: dict[int, str] = {}
        self.subacks: list[str] = []
        self.messages: list[str] = []
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = lambda _c, _u, mid, reason, _p: self.acks.__setitem__(mid, str(reason))
        self.client.on_subscribe = lambda _c, _u, _m, reasons, _p: self.subacks.extend(str(r) for r in reasons)
        self.client.on_message = lambda _c, _u, m: self.messages.append(m.topic)
        start = clean if self.v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY
        self.client.connect("127.0.0.1", broker.port, keepalive=30, clean_start=start)
        self.client.loop_start()
        self.answered.wait(10)

    def _on_connect(self, _c: object, _u: object, _f: object, reason: object, _p: object = None) -> None:
        self.reason = reason
        self.answered.set()

    def _on_disconnect(self, *_args: object) -> None:
        self.dropped.set()
        self.answered.set()

    @property
    def accepted(self) -> bool:
        return self.reason is not None and not getattr(self.reason, "is_failure", True)

    def publish(self, topic: str, body: bytes) -> int:
        info = self.client.publish(topic, body, qos=1)
        return info.mid

    def refused(self, mid: int) -> bool:
        """The broker told this client its message was refused: a negative PUBACK, or it dropped us."""
        if self.v5:
            return wait_until(lambda: mid in self.acks, 5, 0.05) and self.acks[mid] == "Not authorized"
        return self.dropped.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@dataclass
class World:
    broker: RunningBroker
    store: ProjectStore
    controller: Controller
    subscriber: EventSubscriber
    received: list[str]
    subscriber_callback: Callable[[str, bytes], None]

    def project(self, project_id: str) -> Project:
        project = self.store.get(project_id)
        assert project is not None
        return project

    def issue(self, project_id: str, component: Component, name: str | None = None) -> MqttSettings:
        return credentials(self.controller).issue(project_id, component, name)

    def broker_log(self) -> str:
        return self.broker.process.log_path.read_text(encoding="utf-8", errors="replace")

    def arrives(self, event: Event, settings: MqttSettings) -> None:
        """A legitimate event through the same broker reaches the manager (so an earlier forged one would have)."""
        client = Attacker(self.broker, settings)
        try:
            assert client.accepted, client.reason
            client.publish(event.topic, event.model_dump_json().encode())
            assert wait_until(lambda: event.event_id in self.project(event.project_id).seen_event_ids, 10, 0.05)
        finally:
            client.close()


def credentials(controller: Controller) -> ActorCredentials:
    """The issuer of actor users a manager with a password-protected broker has."""
    issuer = controller.context.credentials
    assert issuer is not None
    return issuer


def training_project(project_id: str) -> Project:
    sla = ProjectSLA.model_validate(
        {"customerID": project_id, "ml_repo_url": "https://git.example.com/x.git", "ml_model_flavor": "sklearn"}
    )
    handles = [ProcessHandle(name=name, backend="local", ref=name) for name in ("aggregator", "learner-n1")]
    return Project(project_id=project_id, customer_id=project_id, sla=sla, status=ProjectStatus.TRAINING,
                   deployment=handles)  # fmt: skip


def invented_success(project_id: str) -> Event:
    summary = TrainingSummary(status="completed", project_id=project_id, final_accuracy=0.999,
                              rounds=[RoundReport(round=1, accuracy=0.999)], registered_model_name="attacker-model",
                              registered_model_version="1")  # fmt: skip
    return make_event(project_id, Component.AGGREGATOR, EventName.SUCCEEDED, AggregatorFinished(summary=summary))


@pytest.fixture(params=KINDS)
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    broker = launch_broker(tmp_path / "broker", free_port(), request.param)
    store = open_store(None, tmp_path / "store")
    settings = ManagerSettings(home=tmp_path / "home", mqtt=manager_settings(broker),
                               tracking_uri="http://127.0.0.1:1", nodes_dir=tmp_path / "nodes")  # fmt: skip
    controller = Controller(store, {"local": FakeOrchestrator()}, settings)
    received: list[str] = []

    def receive(topic: str, body: bytes) -> None:  # the manager's own handler, counting what arrives
        received.append(topic)
        controller.receive(topic, body)

    subscriber = EventSubscriber(settings.mqtt, "flops-manager", all_projects_filter(), receive)
    made = World(broker, store, controller, subscriber, received, receive)
    for project_id in (A, B):
        store.insert(training_project(project_id))
    try:
        assert subscriber.connected.wait(10), broker.process.log_tail()
        time.sleep(0.3)  # the SUBACK
        yield made
    finally:
        made.subscriber.close()
        credentials(controller).close()
        store.close()
        made.broker.process.stop()


def unchanged(before: Project, after: Project) -> bool:
    fields = ("status", "training", "rounds", "model_name", "model_version", "error")
    return all(getattr(before, f) == getattr(after, f) for f in fields)


def test_another_projects_learner_cannot_complete_my_project(world: World) -> None:
    before = world.project(B)
    attacker_settings = world.issue(A, Component.LEARNER, "n1")
    attacker = Attacker(world.broker, attacker_settings)
    try:
        assert attacker.accepted, attacker.reason
        forged = invented_success(B)
        mid = attacker.publish(forged.topic, forged.model_dump_json().encode())
        assert attacker.refused(mid), (attacker.acks, attacker.dropped.is_set())
    finally:
        attacker.close()
    # B's own aggregator still gets through: had the forged event passed, it would have arrived first.
    world.arrives(
        make_event(B, Component.AGGREGATOR, EventName.ROUND, RoundReport(round=1)), world.issue(B, Component.AGGREGATOR)
    )
    after = world.project(B)
    assert after.training is None and after.status is ProjectStatus.TRAINING
    assert [r.round for r in after.rounds] == [1] and after.model_name == before.model_name
    assert forged.event_id not in after.seen_event_ids and forged.topic not in world.received
    log = world.broker_log()
    assert "flops/projects/bbbbbbbbbbbb/aggregator/succeeded" in log and f"{A}.learner.n1" in log
    assert "denied publish" in log.lower()


def test_an_actor_cannot_publish_for_another_component_of_its_own_project(world: World) -> None:
    before = world.project(B)
    learner = world.issue(B, Component.LEARNER, "n1")
    for component, event in ((Component.AGGREGATOR, EventName.SUCCEEDED), (Component.BUILDER, EventName.FAILED)):
        attacker = Attacker(world.broker, learner)
        try:
            assert attacker.accepted, attacker.reason
            forged = invented_success(B) if component is Component.AGGREGATOR else Event(
                project_id=B, component=component, event=event, payload={"stage": "check"}, error="forged"
            )  # fmt: skip
            assert attacker.refused(attacker.publish(forged.topic, forged.model_dump_json().encode()))
        finally:
            attacker.close()
    # Its own topic works: the user is valid, only the topics are limited.
    joined = make_event(B, Component.LEARNER, EventName.JOINED, LearnerReport(node="n1"))
    world.arrives(joined, learner)
    assert unchanged(before, world.project(B))


def test_an_envelope_that_claims_another_project_is_refused_by_the_manager(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    before = world.project(B)
    aggregator_a = world.issue(A, Component.AGGREGATOR)
    forged = invented_success(B)  # B's envelope, sent where A's aggregator may publish
    client = Attacker(world.broker, aggregator_a)
    try:
        assert client.accepted, client.reason
        with caplog.at_level(logging.WARNING, logger="flops.manager"):
            client.publish(f"flops/projects/{A}/aggregator/succeeded", forged.model_dump_json().encode())
            assert wait_until(lambda: "refused a forged event" in caplog.text, 10, 0.05), caplog.text
    finally:
        client.close()
    assert f"flops/projects/{A}/aggregator/succeeded" in caplog.text and f"project {B}" in caplog.text
    assert unchanged(before, world.project(B))
    assert world.project(A).training is None and forged.event_id not in world.project(A).seen_event_ids


def test_anonymous_wrong_passwords_and_borrowed_client_ids_are_refused(world: World) -> None:
    learner = world.issue(A, Component.LEARNER, "n1")
    manager = manager_settings(world.broker)
    attempts = {
        "anonymous": Attacker(world.broker, None),
        "wrong password": Attacker(world.broker, learner, password="guessed"),
        "manager, wrong password": Attacker(world.broker, manager, password="guessed", client_id="flops-manager"),
        "learner as the manager's client id": Attacker(world.broker, learner, client_id="flops-manager"),
        "learner as another learner": Attacker(world.broker, learner, client_id=f"{A}.learner.n2"),
        "unknown user": Attacker(world.broker, MqttSettings(host="x", username="flops-admin", password="x")),
    }
    for name, attempt in attempts.items():
        try:
            assert attempt.answered.is_set(), f"{name}: no answer"
            assert not attempt.accepted, f"{name} was let in"
            assert "Not authorized" in str(attempt.reason) or "not authorized" in str(attempt.reason).lower(), (
                name, attempt.reason
            )  # fmt: skip
        finally:
            attempt.close()
    # None of them dropped or took over the manager's session: its events still arrive.
    world.arrives(make_event(A, Component.LEARNER, EventName.JOINED, LearnerReport(node="n1")), learner)
    assert world.subscriber.connected.is_set()


def test_a_will_message_for_another_project_is_never_delivered(world: World) -> None:
    before = world.project(B)
    learner = world.issue(A, Component.LEARNER, "n1")
    forged = invented_success(B)
    attacker = Attacker(world.broker, learner, will=(forged.topic, forged.model_dump_json().encode()))
    if attacker.accepted:  # the embedded broker refuses the CONNECT already
        sock = attacker.client.socket()
        assert sock is not None
        sock.close()  # dies without DISCONNECT: the broker would send the will
        attacker.client.loop_stop()
    world.arrives(make_event(A, Component.LEARNER, EventName.JOINED, LearnerReport(node="n1")), learner)
    time.sleep(1)
    assert forged.topic not in world.received and unchanged(before, world.project(B))


def test_an_actor_can_neither_read_events_nor_make_itself_a_user(world: World) -> None:
    learner = world.issue(A, Component.LEARNER, "n1")
    spy = Attacker(world.broker, learner)
    try:
        assert spy.accepted, spy.reason
        spy.client.subscribe([("flops/projects/#", 1), (f"flops/projects/{A}/learner/+", 1)])
        assert wait_until(lambda: len(spy.subacks) == 2 or spy.dropped.is_set(), 5, 0.05)
        assert all(r != "Granted QoS 1" for r in spy.subacks), spy.subacks
        world.arrives(make_event(B, Component.AGGREGATOR, EventName.ROUND, RoundReport(round=1)),
                      world.issue(B, Component.AGGREGATOR))  # fmt: skip
        time.sleep(0.5)
        assert spy.messages == []
    finally:
        spy.close()
    intruder = Attacker(world.broker, learner)
    try:
        command = (
            '{"commands":[{"command":"createClient","username":"mallory","password":"pw",'
            '"roles":[{"rolename":"flops-manager"}]}]}'
        )
        assert intruder.refused(intruder.publish(CONTROL_TOPIC, command.encode()))
    finally:
        intruder.close()
    mallory = Attacker(world.broker, MqttSettings(host="x", username="mallory", password="pw"))
    assert not mallory.accepted
    mallory.close()


def test_a_projects_users_are_revoked_when_it_ends(world: World) -> None:
    learner = world.issue(B, Component.LEARNER, "n1")
    aggregator = world.issue(B, Component.AGGREGATOR)
    other = world.issue(A, Component.LEARNER, "n1")
    connected = Attacker(world.broker, learner)
    try:
        assert connected.accepted
        world.controller.fail(world.project(B), "training", "cancelled by the test")  # teardown: revokes
        assert connected.dropped.wait(10), "a revoked user's connection stayed open"
    finally:
        connected.close()
    assert world.project(B).status is ProjectStatus.FAILED
    for settings in (learner, aggregator):
        again = Attacker(world.broker, settings)
        try:
            assert not again.accepted, f"{settings.username} still connects after its project ended"
        finally:
            again.close()
    # Another project's users are untouched.
    world.arrives(make_event(A, Component.LEARNER, EventName.JOINED, LearnerReport(node="n1")), other)


def test_no_user_and_no_password_is_left_in_the_clear(world: World) -> None:
    learner = world.issue(A, Component.LEARNER, "n1")
    assert learner.password and learner.username == f"{A}.learner.n1" and learner.client_id == learner.username
    assert learner.password not in world.broker_log()
    for path in (world.broker.directory or Path()).iterdir():
        if path.is_file() and path.name != "mqtt-password":
            assert learner.password not in path.read_text(encoding="utf-8", errors="replace"), path
    dynsec = (world.broker.directory or Path()) / "dynamic-security.json"
    assert learner.username in dynsec.read_text(encoding="utf-8") and oct(dynsec.stat().st_mode)[-3:] == "600"
    assert MQTT_USER == "flops"


# ------------------------------------------------------------------------- broker restarts
def restart_broker(world: World) -> None:
    """Stop the broker (SIGTERM) and start it again on the same port with the same folder."""
    directory = world.broker.directory
    assert directory is not None
    world.broker.process.stop(grace=10)
    world.broker = launch_broker(directory, world.broker.port, world.broker.kind)


def received_once(world: World, event: Event, timeout: float = 15) -> None:
    assert wait_until(lambda: event.event_id in world.project(event.project_id).seen_event_ids, timeout, 0.05), (
        world.received, world.broker.process.log_tail()
    )  # fmt: skip
    time.sleep(2)  # a second delivery would come now
    project = world.project(event.project_id)
    assert project.seen_event_ids.count(event.event_id) == 1
    assert world.received.count(event.topic) == 1, world.received


def test_an_event_queued_for_the_away_manager_survives_a_broker_restart(world: World) -> None:
    """Published while the manager is away (PUBACKed, queued in its session), then the broker restarts."""
    aggregator = world.issue(B, Component.AGGREGATOR)
    world.subscriber.close()  # the manager is away; its persistent session queues QoS 1 events
    time.sleep(0.5)
    event = make_event(B, Component.AGGREGATOR, EventName.ROUND, RoundReport(round=1, accuracy=0.5))
    publisher = EventPublisher(aggregator)
    try:
        publisher.publish(event)  # returns on the broker's PUBACK
    finally:
        publisher.close()
    restart_broker(world)
    world.subscriber = EventSubscriber(manager_settings(world.broker), "flops-manager", all_projects_filter(),
                                       world.subscriber_callback)  # fmt: skip
    received_once(world, event)
    assert [r.round for r in world.project(B).rounds] == [1]


def test_an_event_published_while_the_broker_restarts_arrives_once(world: World) -> None:
    """The actor publishes while the broker is down; its publisher resends after the reconnect."""
    aggregator = world.issue(B, Component.AGGREGATOR)
    publisher = EventPublisher(aggregator, timeout_s=60)
    event = make_event(B, Component.AGGREGATOR, EventName.ROUND, RoundReport(round=2, accuracy=0.6))
    try:
        publisher.publish(make_event(B, Component.AGGREGATOR, EventName.STARTED, AggregatorStarted(learners=2)))
        directory = world.broker.directory
        assert directory is not None
        world.broker.process.stop(grace=10)
        done = threading.Event()
        errors: list[BaseException] = []

        def publish() -> None:
            try:
                publisher.publish(event)
            except BaseException as error:  # reported by the test below
                errors.append(error)
            done.set()

        threading.Thread(target=publish, daemon=True).start()
        time.sleep(1.5)
        assert not done.is_set(), "publish returned while the broker was down"
        world.broker = launch_broker(directory, world.broker.port, world.broker.kind)
        assert done.wait(30) and not errors, errors
        # The manager stayed connected through the restart: it reconnected and resubscribed by itself.
        received_once(world, event, timeout=30)
    finally:
        publisher.close()
