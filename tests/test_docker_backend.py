"""The docker backend's configuration and the refusals that come before anything is deployed.

The end-to-end path with real containers is in test_containers.py; these run everywhere.
"""

import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest
import requests
from docker.client import DockerClient
from flask.testing import FlaskClient

from flops.mqtt import MqttSettings
from flops_manager.api import MIN_CONTAINER_MEMORY_MB, create_app
from flops_manager.auth import TokenService
from flops_manager.controller import Controller
from flops_manager.models import ProcessHandle
from flops_manager.orchestration import (
    ENABLE_HINTS,
    OrchestrationSettings,
    OrchestratorError,
    ServiceSpec,
    TransientOrchestratorError,
    build_orchestrators,
)
from flops_manager.orchestration.base import ServiceStatus
from flops_manager.orchestration.docker import DockerOrchestrator, container_name, engine_error, tls_config
from flops_manager.orchestration.local import LocalOrchestrator
from flops_manager.orchestration.oakestra import OakestraConfigError, OakestraOrchestrator
from flops_manager.settings import ImageSettings, ManagerSettings
from flops_manager.sources import SourcePolicy
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


def test_containers_get_the_broker_password_itself(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    settings = MqttSettings(host="127.0.0.1", port=1883, username="flops", password="s3cret", password_file=str(secret))
    assert settings.env()["FLOPS_MQTT_PASSWORD_FILE"] == str(secret) and "FLOPS_MQTT_PASSWORD" not in settings.env()
    remote = settings.env(same_filesystem=False)
    assert remote["FLOPS_MQTT_PASSWORD"] == "s3cret" and "FLOPS_MQTT_PASSWORD_FILE" not in remote


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        return int(probe.getsockname()[1])


def test_an_unreachable_engine_is_a_clear_transient_error(tmp_path: Path, store: ProjectStore) -> None:
    missing_socket = f"unix://{tmp_path}/no-engine.sock"
    with pytest.raises(TransientOrchestratorError, match="cannot reach the container engine at unix://"):
        DockerOrchestrator(missing_socket)
    with pytest.raises(TransientOrchestratorError, match=r"cannot reach the container engine at tcp://127\.0\.0\.1"):
        DockerOrchestrator(f"tcp://127.0.0.1:{closed_port()}", timeout=5)
    settings = OrchestrationSettings.from_env({"DOCKER_HOST": missing_socket})
    with pytest.raises(SystemExit, match="start the engine or unset DOCKER_HOST"):
        build_orchestrators(settings, tmp_path / "runs", store)


def test_an_engine_gone_after_start_up_is_transient_not_gone(tmp_path: Path) -> None:
    # A client that does not ask the engine's version at once, like one made while the engine still ran.
    client = DockerClient(base_url=f"tcp://127.0.0.1:{closed_port()}", version="1.41", timeout=5)
    orchestrator = DockerOrchestrator(client=client)
    handle = ProcessHandle(name="learner-node-1", backend="docker", ref="0123456789ab")
    with pytest.raises(TransientOrchestratorError, match="cannot look up learner-node-1"):
        orchestrator.status(handle)
    with pytest.raises(TransientOrchestratorError):
        orchestrator.logs(handle)
    with pytest.raises(TransientOrchestratorError):
        orchestrator.undeploy_project("p")
    spec = ServiceSpec(project_id="p", name="learner", role="learner", command=["x"], image="img:1")
    with pytest.raises(TransientOrchestratorError, match="cannot reach the container engine"):
        orchestrator.deploy(spec)
    client.close()


def api_error(status: int, cls: type[docker.errors.APIError] = docker.errors.APIError) -> docker.errors.APIError:
    response = requests.Response()
    response.status_code = status
    return cls(f"HTTP {status}", response=response, explanation=f"the engine says {status}")


def test_engine_errors_are_classified() -> None:
    for error in (api_error(500), api_error(503), requests.ConnectionError("refused"), requests.ReadTimeout("slow")):
        assert isinstance(engine_error("cannot start x", error), TransientOrchestratorError), error
    for error in (api_error(400), api_error(409), api_error(404, docker.errors.ImageNotFound)):
        classified = engine_error("cannot start x", error)
        assert not classified.transient, error
    assert "the engine says 404" in str(engine_error("cannot pull img:1", api_error(404, docker.errors.ImageNotFound)))
    # the package's own wrapper around a refused connection (its first version request)
    try:
        try:
            raise requests.ConnectionError("Connection refused")
        except requests.ConnectionError as cause:
            raise docker.errors.DockerException("Error while fetching server API version") from cause
    except docker.errors.DockerException as wrapped:
        assert engine_error("cannot reach the container engine", wrapped).transient
    assert not engine_error("x", docker.errors.DockerException("bad TLS parameters")).transient


def test_docker_tls_follows_dockers_variables(tmp_path: Path) -> None:
    assert tls_config(False, None) is None
    with pytest.raises(OrchestratorError, match=r"DOCKER_CERT_PATH .* must hold"):
        tls_config(True, tmp_path)
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    config = tls_config(True, tmp_path)
    assert config is not None and config.verify is True and config.cert == (
        str(tmp_path / "cert.pem"), str(tmp_path / "key.pem"),
    )  # fmt: skip
    settings = OrchestrationSettings.from_env(
        {"DOCKER_HOST": "tcp://engine.example:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(tmp_path)}
    )
    assert settings.docker_tls_verify and settings.docker_cert_path == tmp_path
    assert not OrchestrationSettings.from_env({"DOCKER_TLS_VERIFY": ""}).docker_tls_verify


def test_a_process_that_cannot_start_is_permanent(tmp_path: Path) -> None:
    orchestrator = LocalOrchestrator(tmp_path / "runs")
    missing = ServiceSpec(project_id="p", name="learner", role="learner", command=[str(tmp_path / "no-such-program")])
    with pytest.raises(OrchestratorError, match=r"cannot start learner .*no-such-program") as error:
        orchestrator.deploy(missing)
    assert not error.value.transient
    handle = orchestrator.deploy(ServiceSpec(project_id="p", name="ok", role="x", command=[sys.executable, "-c", ""]))
    orchestrator.undeploy(handle)
    assert orchestrator.status(handle).status is not ServiceStatus.RUNNING
    assert orchestrator.undeploy_project("p") is False  # the interface's default: nothing kept per project


def test_orchestration_settings_enable_only_what_is_configured(tmp_path: Path, store: ProjectStore) -> None:
    nothing = OrchestrationSettings.from_env({"HOME": "/root"})
    assert nothing.enabled == ["local"] and nothing.oakestra is None and nothing.docker_host is None
    assert list(build_orchestrators(nothing, tmp_path / "runs", store)) == ["local"]
    with pytest.raises(OakestraConfigError, match="FLOPS_OAKESTRA_URL"):
        OrchestrationSettings.from_env({"FLOPS_OAKESTRA_USERNAME": "u", "FLOPS_OAKESTRA_PASSWORD": "p"})
    env = {"FLOPS_OAKESTRA_URL": "http://127.0.0.1:1", "FLOPS_OAKESTRA_USERNAME": "u", "FLOPS_OAKESTRA_PASSWORD": "p"}
    oakestra = OrchestrationSettings.from_env(env)
    assert oakestra.enabled == ["local", "oakestra"]
    backends = build_orchestrators(oakestra, tmp_path / "runs", store)  # nothing is called before a deploy
    assert isinstance(backends["oakestra"], OakestraOrchestrator)
    assert "DOCKER_HOST" in ENABLE_HINTS["docker"] and "FLOPS_OAKESTRA_URL" in ENABLE_HINTS["oakestra"]


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
        sources=SourcePolicy(local_roots=[EXAMPLES]),  # the example repositories, as local paths
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
    return create_app(Controller(store, orchestrators, settings), tokens).test_client()


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
    body = answer.get_json()
    assert answer.status_code == 422 and body is not None
    assert "FLOPS_REGISTRY" in body["message"] and body["details"] == {"field": "backend"}
    assert store.list(None, None) == []


def test_docker_projects_need_room_for_an_fl_actor(tmp_path: Path, store: ProjectStore) -> None:
    client = api(tmp_path, store, ImageSettings(registry="127.0.0.1:5000"))
    answer = client.post(
        "/api/flops/projects", json=docker_sla(), headers={"Authorization": f"Bearer {ADMIN}"}
    )  # the SLA default, 100 MB, would be each container's limit
    body = answer.get_json()
    assert answer.status_code == 422 and body is not None, body
    assert "resource_constraints.memory" in body["message"]
    assert body["details"]["minimum"] == MIN_CONTAINER_MEMORY_MB
    assert store.list(None, None) == []
