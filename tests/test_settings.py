"""Configuration is read once, from the mapping a service's main() hands in: never from os.environ."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from flops.stack import StackSettings
from flops_manager.settings import ManagerSettings


def test_manager_settings_come_from_the_given_mapping_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOPS_MANAGER_PORT", "1")  # the process environment must not leak in
    monkeypatch.setenv("FLOPS_HOME", str(tmp_path / "elsewhere"))
    env = {
        "FLOPS_HOME": str(tmp_path / "home"),
        "FLOPS_MQTT_HOST": "broker.example",
        "FLOPS_MQTT_PORT": "8883",
        "FLOPS_MANAGER_PORT": "6000",
        "FLOPS_TRACKING_URI": "http://mlflow.example:7027",
        "FLOPS_RETRY_GIVE_UP": "30",
        "FLOPS_REGISTRY": "registry.example:5000",
    }
    settings = ManagerSettings.from_env(env)
    assert settings.home == tmp_path / "home" and settings.port == 6000
    assert settings.mqtt.host == "broker.example" and settings.mqtt.port == 8883
    assert settings.tracking_uri == "http://mlflow.example:7027" and settings.retry_give_up_s == 30
    assert settings.images is not None and settings.images.registry == "registry.example:5000"
    assert settings.nodes_dir == tmp_path / "home" / "nodes"
    assert settings.orchestration.enabled == ["local"]


def test_a_manager_without_a_broker_is_told_how_to_configure_one(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="FLOPS_MQTT_HOST"):
        ManagerSettings.from_env({"FLOPS_HOME": str(tmp_path)})


def test_stack_settings_take_ports_from_the_mapping_and_name_a_bad_one(tmp_path: Path) -> None:
    settings = StackSettings.from_env({"FLOPS_HOME": str(tmp_path), "FLOPS_MQTT_PORT": "9100"})
    assert (settings.home, settings.broker_port, settings.manager_port, settings.tracking_uri) == (
        tmp_path, 9100, None, None,
    )  # fmt: skip
    with pytest.raises(ValidationError, match="manager_port"):
        StackSettings.from_env({"FLOPS_HOME": str(tmp_path), "FLOPS_MANAGER_PORT": "many"})
