"""MQTT identities on a real test broker: the manager's settings, and actor users it issues."""

from flops.broker import MQTT_USER, RunningBroker
from flops.events import Component
from flops.mqtt import MqttSettings
from flops_manager.credentials import ActorCredentials


def manager_settings(broker: RunningBroker) -> MqttSettings:
    password = broker.password_file.read_text(encoding="utf-8").strip()
    return MqttSettings(host="127.0.0.1", port=broker.port, username=MQTT_USER, password=password)


def issue(broker: RunningBroker, project_id: str, component: Component | str, name: str | None = None) -> MqttSettings:
    """A new actor user, made the way the manager makes them (its control connection)."""
    credentials = ActorCredentials(manager_settings(broker))
    try:
        return credentials.issue(project_id, component, name)
    finally:
        credentials.close()
