"""The docker backend's configuration and the refusals that come before anything is deployed.

The end-to-end path with real containers is in test_containers.py; these run everywhere.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from flops.mqtt import MqttSettings
from flops_manager.api import MIN_CONTAINER_MEMORY_MB, create_app
from flops_manager.auth import TokenService
from flops_manager.lifecycle import Controller
from flops_manager.main import build_orchestrators
from flops_manager.orchestration.base import OrchestratorError, ServiceSpec
from flops_manager.orchestration.docker import DockerOrchestrator, container_name
from flops_manager.orchestration.local import LocalOrchestrator
from flops_manager.settings import ImageSettings, ManagerSettings
from flops_manager.store import ProjectStore, open_store
from image_builder.main import parse_args
from image_builder.oci import options_from_args
from tests.conftest import EXAMPLES

ADMIN = "flops_test-admin-token-for-the-docker-backend"


def test_image_settings_come_from_the_environment_and_the_builder_accepts_them(tmp_path: Path) -> None:
    assert ImageSettings.from_env({}) is None
    auth = tmp_path / "auth.json"
    settings = ImageSettings.from_env({
        "FLOPS_REGISTRY": "registry.example.com:5073/flops", "FLOPS_REGISTRY_TLS_VERIFY": "false",
        "FLOPS_REGISTRY_AUTH_FILE": str(auth), "FLOPS_BASE_IMAGE": "localhost/flops/python:3.11",
    })  # fmt: skip
    assert settings is not None and settings.tls_verify is False and settings.engine == "buildah"
    args = parse_args(["--project-id", "p", "--repo-url", "x", "--target", "oci", *settings.builder_args()])
    options = options_from_args(args)
    assert options.registry == "registry.example.com:5073/flops"
    assert options.tls_verify is False and options.registry_auth_file == auth
    assert options.base_image == "localhost/flops/python:3.11"
    verified = ImageSettings.from_env({"FLOPS_REGISTRY": "r.example.com"})
    assert verified is not None and options_from_args(parse_args(
        ["--project-id", "p", "--repo-url", "x", "--target", "oci", *verified.builder_args()]
    )).tls_verify is True  # fmt: skip


def test_containers_get_the_broker_password_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    monkeypatch.setenv("FLOPS_MQTT_PASSWORD_FILE", str(secret))
    settings = MqttSettings(host="127.0.0.1", port=1883, username="flops", password="s3cret")
    assert settings.env()["FLOPS_MQTT_PASSWORD_FILE"] == str(secret) and "FLOPS_MQTT_PASSWORD" not in settings.env()
    remote = settings.env(same_filesystem=False)
    assert remote["FLOPS_MQTT_PASSWORD"] == "s3cret" and "FLOPS_MQTT_PASSWORD_FILE" not in remote


def test_an_unreachable_engine_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    socket = f"unix://{tmp_path}/no-engine.sock"
    with pytest.raises(OrchestratorError, match="cannot reach the container engine at unix://"):
        DockerOrchestrator(socket)
    monkeypatch.setenv("DOCKER_HOST", socket)
    settings = manager_settings(tmp_path)
    store = open_store(None, tmp_path / "db")
    try:
        with pytest.raises(SystemExit, match="start the engine or unset DOCKER_HOST"):
            build_orchestrators(settings, store)
    finally:
        store.close()


def test_container_names_are_valid_for_any_project_and_service() -> None:
    assert container_name("ab12", "learner-node 1/x") == "flops-ab12-learner-node-1-x"


def test_a_service_without_an_image_is_refused(tmp_path: Path) -> None:
    orchestrator = DockerOrchestrator(client=object())
    spec = ServiceSpec(project_id="p", name="learner-node-1", role="learner", command=["flops-learner"])
    with pytest.raises(OrchestratorError, match="the docker backend runs images"):
        orchestrator.deploy(spec)


def manager_settings(tmp_path: Path, images: ImageSettings | None = None) -> ManagerSettings:
    return ManagerSettings(
        home=tmp_path / "home", mqtt=MqttSettings(host="127.0.0.1"), tracking_uri="http://127.0.0.1:1",
        nodes_dir=tmp_path / "nodes", images=images, admin_token=ADMIN,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ProjectStore]:
    opened = open_store(None, tmp_path / "db")
    yield opened
    opened.close()


def api(tmp_path: Path, store: ProjectStore, images: ImageSettings | None) -> FlaskClient:
    settings = manager_settings(tmp_path, images)
    orchestrators = {"local": LocalOrchestrator(settings.runs_dir), "docker": DockerOrchestrator(client=object())}
    tokens = TokenService(store)
    tokens.ensure_admin_token(ADMIN, None, tmp_path / "admin-token")
    return create_app(Controller(store, orchestrators, settings), tokens).test_client()  # type: ignore[arg-type]


def docker_sla(**extra: Any) -> dict[str, Any]:
    return {
        "customerID": "acme", "ml_repo_url": str(EXAMPLES / "digits-sklearn"), "ml_model_flavor": "sklearn",
        "backend": "docker", "training_configuration": {"data_tags": ["digits"]}, **extra,
    }  # fmt: skip


def test_docker_projects_need_a_registry(tmp_path: Path, store: ProjectStore) -> None:
    answer = api(tmp_path, store, None).post(
        "/api/flops/projects", json=docker_sla(resource_constraints={"memory": 1024}),
        headers={"Authorization": f"Bearer {ADMIN}"},
    )  # fmt: skip
    assert answer.status_code == 422
    assert "FLOPS_REGISTRY" in answer.json["message"] and answer.json["details"] == {"field": "backend"}
    assert store.list(None, None) == []


def test_docker_projects_need_room_for_an_fl_actor(tmp_path: Path, store: ProjectStore) -> None:
    client = api(tmp_path, store, ImageSettings(registry="127.0.0.1:5000"))
    answer = client.post(
        "/api/flops/projects", json=docker_sla(), headers={"Authorization": f"Bearer {ADMIN}"}
    )  # the SLA default, 100 MB, would be each container's limit
    assert answer.status_code == 422, answer.json
    assert "resource_constraints.memory" in answer.json["message"]
    assert answer.json["details"]["minimum"] == MIN_CONTAINER_MEMORY_MB
    assert store.list(None, None) == []
