"""Containers end to end: an SLA with `backend: docker` from POST to a served model.

Real tools only: a real manager whose builder makes OCI images with buildah (chroot
isolation) and pushes them to a loopback Registry v2, whose docker backend runs them
through Podman's Docker-compatible API, a real broker and MLflow server on the host. The
tests run in file order and share what they make (images, the trained model). Timings and sizes are printed
at the end of the session and written to containers-report.json in the session folder.
"""

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from sklearn.datasets import load_digits

from bench.image_sizes import compressed_sizes, image_size
from flops.build import BuildOutcome
from flops.net import free_port, wait_until
from image_builder.oci.mounts import build_settings
from image_builder.oci.options import OciOptions
from image_builder.settings import BuilderSettings
from tests.conftest import EXAMPLES, ROOT
from tests.containers_env import (
    BASE_IMAGE,
    PACKAGES,
    ContainerWorld,
    Stopwatch,
    enable_arm64_emulation,
    install_packages,
    missing_tools,
)
from tests.manager_process import FINAL, Manager, git, make_git_repo, sla

pytestmark = [pytest.mark.slow, pytest.mark.containers]

CUSTOMER = "acme"
MB = 1_000_000


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    numbers: dict[str, Any] = {"cpus": os.cpu_count(), "load_at_start": os.getloadavg()[0]}
    yield numbers
    path = tmp_path_factory.getbasetemp() / "containers-report.json"
    path.write_text(json.dumps(numbers, indent=2), encoding="utf-8")
    print(f"\ncontainer measurements ({path}):\n{json.dumps(numbers, indent=2)}")


@pytest.fixture(scope="module")
def world(module_tmp: Callable[[str], Path], report: dict[str, Any]) -> Iterator[ContainerWorld]:
    if sys.platform != "linux":
        pytest.skip("containers need Linux")
    problem = install_packages(missing_tools(PACKAGES))
    if problem:
        pytest.skip(problem)
    clock = Stopwatch()
    world = ContainerWorld.start(module_tmp("containers"))
    try:
        world.import_base_image()
        report["storage_driver"] = world.driver
        report["world_setup_s"] = clock.elapsed
        yield world
    finally:
        world.stop()


@pytest.fixture(scope="module")
def digits_repo(module_tmp: Callable[[str], Path]) -> Path:
    return make_git_repo(EXAMPLES / "digits-sklearn", module_tmp("repos") / "digits-sklearn")


@pytest.fixture(scope="module")
def manager(world: ContainerWorld, mlflow_server: str, module_tmp: Callable[[str], Path]) -> Iterator[Manager]:
    """A manager whose docker backend is Podman's API and whose images go to the loopback registry."""
    home = module_tmp("manager-home")
    instance = Manager(home, mlflow_server, extra_env={
        "DOCKER_HOST": world.socket, "FLOPS_REGISTRY": world.registry, "FLOPS_REGISTRY_TLS_VERIFY": "0",
        "FLOPS_BASE_IMAGE": BASE_IMAGE,
    })  # fmt: skip
    try:
        instance.add_mock_nodes(CUSTOMER)
        yield instance
    finally:
        instance.stop()


def docker_sla(repo: Path, rounds: int = 2, **extra: Any) -> dict[str, Any]:
    return sla(
        repo, rounds=rounds, backend="docker", customerID=CUSTOMER,
        resource_constraints={"memory": 1024, "vcpus": 1}, **extra,
    )  # fmt: skip


def project_containers(world: ContainerWorld, project_id: str) -> list[dict[str, Any]]:
    """`podman inspect` of every container labelled with the project."""
    listed = world.podman("ps", "-a", "-q", "--filter", f"label=flops.project={project_id}")
    ids = listed.stdout.split()
    return json.loads(world.podman("inspect", *ids).stdout) if ids else []


def run_builder(world: ContainerWorld, repo: Path, cache: Path, *extra: str) -> tuple[dict[str, Any], str, float]:
    result_file = cache.parent / "result.json"
    result_file.unlink(missing_ok=True)
    clock = Stopwatch()
    completed = subprocess.run(
        [
            sys.executable, "-m", "image_builder.main", "--target", "oci", "--project-id", "containers",
            "--repo-url", str(repo), "--cache-dir", str(cache), "--result-file", str(result_file),
            "--registry", world.registry, "--no-tls-verify", "--base-image", BASE_IMAGE, "--customer", CUSTOMER,
            *extra,
        ],
        capture_output=True, text=True, timeout=1500, check=False, cwd=ROOT,
    )  # fmt: skip
    elapsed = clock.elapsed
    output = completed.stdout + completed.stderr
    assert completed.returncode == 0, output[-4000:]
    result = BuildOutcome.model_validate_json(result_file.read_text()).result
    assert result is not None, output[-4000:]
    return result.model_dump(mode="json"), output, elapsed


@pytest.fixture(scope="module")
def completed(world: ContainerWorld, manager: Manager, digits_repo: Path, report: dict[str, Any]) -> dict[str, Any]:
    """A `backend: docker` project from POST to a served model; containers inspected while training."""
    clock = Stopwatch()
    answer = manager.call("POST", "/api/flops/projects", json=docker_sla(
        digits_repo, post_training_steps=["build_image_for_trained_model", "deploy_trained_model_image"],
    ))  # fmt: skip
    assert answer.status_code == 200, answer.text
    project_id = answer.json()["project_id"]
    running = manager.wait_for(project_id, ("training", *FINAL), timeout=1500)
    while_training = project_containers(world, project_id) if running["status"] == "training" else []
    project = manager.wait_for(project_id, FINAL, timeout=900)
    report["docker_project_s"] = clock.elapsed
    report["docker_project_stages"] = {name: t["duration_s"] for name, t in project["stages"].items()}
    report["cold_build_stage_durations"] = (project.get("build") or {}).get("stage_durations")
    return {"project": project, "while_training": while_training, "after": project_containers(world, project_id)}


@pytest.mark.timeout(2700)
def test_docker_backend_trains_and_serves_the_model(
    world: ContainerWorld, completed: dict[str, Any], manager: Manager
) -> None:
    project = completed["project"]
    assert project["status"] == "completed", (project["error"], manager.log())
    assert [r["round"] for r in project["rounds"]] == [1, 2] and project["rounds"][-1]["accuracy"] > 0.8
    assert project["build"]["reused"] is False and project["build"]["repo_dir"] == "/app"
    images = project["image_refs"]
    commit12 = project["build"]["commit"][:12]
    for role in ("learner", "aggregator"):
        pattern = rf"{re.escape(world.registry)}/{CUSTOMER}/digits-sklearn/{role}:{commit12}-[0-9a-f]{{12}}"
        assert re.fullmatch(pattern, images[role]), images
    version = project["model"]["version"]
    assert images["inference"] == f"{world.registry}/{CUSTOMER}/digits-sklearn/inference:{version}"

    # Two learner containers and an aggregator container trained, with the SLA's limits and read-only data.
    training = {c["Config"]["Labels"]["flops.service"]: c for c in completed["while_training"]}
    assert {"aggregator", "learner-node-1", "learner-node-2"} <= set(training), sorted(training)
    learner = training["learner-node-1"]
    assert learner["Config"]["Image"].endswith(images["learner"].split("/", 1)[1]), learner["Config"]["Image"]
    assert learner["HostConfig"]["Memory"] == 1024 * 2**20 and learner["HostConfig"]["NanoCpus"] == 10**9
    # The project's tag folder of its node only, read-only: not the node folder with other tags beside it.
    data_mounts = [m for m in learner["Mounts"] if "/node-1" in m["Destination"] and "/pki/" not in m["Destination"]]
    assert [m["Destination"].rsplit("/", 2)[-2:] for m in data_mounts] == [["node-1", "digits"]], learner["Mounts"]
    assert data_mounts[0]["RW"] is False
    backends = {h["name"]: h["backend"] for h in project["deployment"]}
    assert backends["aggregator"] == backends["learner-node-1"] == backends["inference"] == "docker"
    # Training containers are gone; the model server stays.
    assert [c["Config"]["Labels"]["flops.service"] for c in completed["after"]] == ["inference"]

    digits = load_digits()
    features = (digits.images.reshape(len(digits.images), -1) / 16.0)[:50]
    response = requests.post(project["inference_url"], json={"inputs": features.tolist()}, timeout=60)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert sum(int(p) == int(t) for p, t in zip(predictions, digits.target[:50], strict=True)) >= 40
    server = completed["after"][0]
    assert server["Config"]["User"] not in ("", "0", "root"), server["Config"]["User"]


@pytest.mark.timeout(900)
def test_images_are_slim_non_root_and_learners_have_no_mlflow(
    world: ContainerWorld, completed: dict[str, Any], report: dict[str, Any]
) -> None:
    images = completed["project"]["image_refs"]
    for role, ref in images.items():
        pulled = world.podman("pull", "-q", ref)
        assert pulled.returncode == 0, pulled.stderr
        report[f"{role}_image_mb"] = round(image_size(ref, world.driver) / MB)
        report[f"{role}_image_compressed_mb"] = round(compressed_sizes(ref, tls_verify=False)["linux/amd64"] / MB)
    learner, aggregator = images["learner"], images["aggregator"]
    no_mlflow = world.podman("run", "--rm", "--network", "host", learner, "python", "-c", "import mlflow")
    assert no_mlflow.returncode != 0 and "No module named 'mlflow'" in no_mlflow.stderr
    for ref in images.values():
        uid = world.podman("run", "--rm", "--network", "host", ref, "id", "-u")
        assert uid.returncode == 0 and uid.stdout.strip() not in ("", "0"), uid
    tracking = world.podman("run", "--rm", "--network", "host", aggregator, "python", "-c", "import mlflow, aggregator")
    assert tracking.returncode == 0, tracking.stderr
    # No compilers, no pip caches, no build settings in the image; code owned by root.
    leftovers = world.podman(
        "run", "--rm", "--network", "host", learner, "sh", "-c",
        "ls /usr/bin/gcc /usr/bin/cc 2>/dev/null; ls -A /root/.cache /home/flops/.cache/pip 2>/dev/null;"
        " cat /run/flops-build/pip.conf 2>/dev/null; stat -c %u /app/model_manager.py",
    )  # fmt: skip
    assert leftovers.stdout.split() == ["0"], leftovers.stdout
    # Bytecode for what learners import (flwr, the user's scikit-learn), in a folder the user owns.
    compiled = world.podman(
        "run", "--rm", "--network", "host", learner, "sh", "-c",
        "cd /home/flops/.cache/pycache/opt/flops/lib/python3*/site-packages && stat -c %u . &&"
        " ls flwr/supernode sklearn/linear_model scipy/stats | grep -c pyc",
    )  # fmt: skip
    owner, count = compiled.stdout.split()
    assert owner == "10001" and int(count) > 20, compiled
    assert report["learner_image_mb"] < 600, report


@pytest.mark.timeout(900)
def test_second_submit_skips_the_build_and_cancel_removes_containers(
    world: ContainerWorld, completed: dict[str, Any], manager: Manager, digits_repo: Path, report: dict[str, Any]
) -> None:
    clock = Stopwatch()
    answer = manager.call("POST", "/api/flops/projects", json=docker_sla(digits_repo, rounds=50))
    assert answer.status_code == 200, answer.text
    project_id = answer.json()["project_id"]
    project = manager.wait_for(project_id, ("training", *FINAL), timeout=600)
    report["warm_post_to_training_s"] = clock.elapsed
    assert project["status"] == "training", project["error"]
    assert project["build"]["reused"] is True
    assert project["image_refs"] == {r: completed["project"]["image_refs"][r] for r in ("learner", "aggregator")}
    report["warm_build_stage_s"] = project["stages"]["building"]["duration_s"]
    assert len(project_containers(world, project_id)) == 3
    assert manager.call("DELETE", f"/api/flops/projects/{project_id}").status_code == 202
    assert manager.wait_for(project_id, FINAL, timeout=120)["status"] == "cancelled"
    assert project_containers(world, project_id) == []


@pytest.mark.timeout(1200)
def test_hierarchical_project_runs_a_container_per_cluster_aggregator(
    world: ContainerWorld, completed: dict[str, Any], manager: Manager, digits_repo: Path, report: dict[str, Any]
) -> None:
    """Issue 14 on docker: node.yaml decides the clusters; each cluster aggregator is a container of the
    aggregator image that its learners' containers dial, and that dials the root's container."""
    data = {"dataset_name": "digits", "number_of_partitions": 4, "data_tag": "hdigits", "number_of_clusters": 2}
    body = {"customerID": CUSTOMER, "mock_data_configuration": data}
    assert manager.call("POST", "/api/flops/mocks", json=body).status_code == 200
    document = docker_sla(digits_repo, rounds=2)
    document["training_configuration"].update({"mode": "hierarchical", "training_cycles": 2, "data_tags": ["hdigits"]})
    clock = Stopwatch()
    answer = manager.call("POST", "/api/flops/projects", json=document)
    assert answer.status_code == 200, answer.text
    project_id = answer.json()["project_id"]
    running = manager.wait_for(project_id, ("training", *FINAL), timeout=600)
    while_training = project_containers(world, project_id) if running["status"] == "training" else []
    project = manager.wait_for(project_id, FINAL, timeout=900)
    report["docker_hierarchical_project_s"] = clock.elapsed
    assert project["status"] == "completed", (project["error"], manager.log())
    assert project["build"]["reused"] is True
    assert [cycle["round"] for cycle in project["rounds"]] == [1, 2] and project["rounds"][-1]["accuracy"] > 0.8
    clusters = {c["cluster"]: c["learners"] for c in project["rounds"][-1]["clusters"]}
    assert clusters == {"cluster-1": ["node-1", "node-2"], "cluster-2": ["node-3", "node-4"]}
    services = {c["Config"]["Labels"]["flops.service"]: c for c in while_training}
    expected = {"aggregator", "aggregator-cluster-1", "aggregator-cluster-2"} | {
        f"learner-node-{i}" for i in range(1, 5)
    }
    assert expected <= set(services), sorted(services)
    aggregator_image = project["image_refs"]["aggregator"].split("/", 1)[1]
    assert services["aggregator-cluster-1"]["Config"]["Image"].endswith(aggregator_image)
    assert project_containers(world, project_id) == []


@pytest.mark.timeout(900)
def test_code_only_change_reuses_the_dependency_layer(
    world: ContainerWorld, completed: dict[str, Any], manager: Manager, digits_repo: Path, report: dict[str, Any]
) -> None:
    model_manager = digits_repo / "model_manager.py"
    model_manager.write_text("# a comment that changes nothing\n" + model_manager.read_text(encoding="utf-8"))
    git(digits_repo, "commit", "-q", "-am", "comment only")
    result, output, elapsed = run_builder(world, digits_repo, manager.home / "builds")
    report["code_only_rebuild_s"] = elapsed
    report["code_only_stage_durations"] = result["stage_durations"]
    built = completed["project"]["image_refs"]["learner"]
    assert result["reused"] is False and result["images"]["learner"] != built
    assert result["oci"]["tag"].split("-")[1] == built.rsplit("-", 1)[1]  # same build configuration
    for role in ("learner", "aggregator"):
        assert result["oci"]["cache"][role]["dependencies_cached"] == 1, output[-3000:]
    step = re.search(r"STEP \d+/\d+: RUN .*requirements-base\.txt.*\n\s*--> Using cache", output)
    assert step, "the dependency step was not taken from the cache"
    assert "Resolved" not in output and "Collecting" not in output  # nothing was installed


@pytest.mark.timeout(1200)
def test_compose_suite_is_valid_and_its_images_build(world: ContainerWorld, report: dict[str, Any]) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    services = compose["services"]
    assert {"manager", "mongodb", "mosquitto", "observatory", "postgres", "registry"} <= set(services)
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    for variable in ("FLOPS_MONGO_PASSWORD", "FLOPS_MQTT_PASSWORD", "FLOPS_POSTGRES_PASSWORD"):
        uses = re.findall(r"\$\{" + variable + r"([^}]*)\}", text)
        assert uses and all(use.startswith(":?") for use in uses), (variable, uses)
    assert "allow_anonymous false" in (ROOT / "docker" / "mosquitto" / "mosquitto.conf").read_text()
    assert "--artifacts-destination" in services["observatory"]["command"]
    assert services["observatory"]["environment"]["FLOPS_OBSERVATORY_BACKEND_URI"].startswith("postgresql")
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("${FLOPS_BIND:-127.0.0.1}:"), port

    options = OciOptions(registry=world.registry, tls_verify=False, **BuilderSettings.from_env().host_pip_options())
    clock = Stopwatch()
    for target in ("observatory", "manager"):
        with build_settings(options, "linux/amd64") as volumes:
            mounts = [arg for host, inside in volumes for arg in ("-v", f"{host}:{inside}:ro")]
            built = world.run(
                "buildah", "bud", "--isolation", "chroot", "--layers", "--network", "host", "--target", target,
                "--build-arg", f"BASE_IMAGE={BASE_IMAGE}", *mounts, "-f", str(ROOT / "docker" / "Dockerfile"),
                "-t", f"localhost/flops/{target}:test", str(ROOT), timeout=1100,
            )  # fmt: skip
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-2000:]
    report["compose_images_build_s"] = clock.elapsed
    help_text = world.podman(
        "run", "--rm", "--network", "host", "localhost/flops/observatory:test", "flops-observatory", "--help"
    )
    assert help_text.returncode == 0 and "MLflow" in help_text.stdout
    manager_uid = world.podman("run", "--rm", "--network", "host", "localhost/flops/manager:test", "id", "-u")
    assert manager_uid.stdout.strip() == "10001"

    # The broker configuration really refuses anonymous clients (host Mosquitto, same files).
    if shutil.which("mosquitto") and shutil.which("mosquitto_passwd"):
        folder = Path(tempfile.mkdtemp(prefix="flops-broker-"))  # the broker's user must reach it
        try:
            folder.chmod(0o755)
            _check_broker_config(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _check_broker_config(folder: Path) -> None:
    import paho.mqtt.client as mqtt

    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = (ROOT / "docker" / "mosquitto" / "mosquitto.conf").read_text(encoding="utf-8")
    config = config.replace("listener 1883", f"listener {port} 127.0.0.1").replace("/mosquitto/data", str(folder))
    (folder / "mosquitto.conf").write_text(config, encoding="utf-8")
    (folder / "passwd").touch(mode=0o600)
    subprocess.run(["mosquitto_passwd", "-b", str(folder / "passwd"), "flops", "s3cret-test"], check=True)
    with contextlib.suppress(LookupError, OSError):  # as the entrypoint does: the broker drops to this user
        for path in (folder, folder / "passwd"):
            shutil.chown(path, "mosquitto", "mosquitto")
    broker = subprocess.Popen(
        ["mosquitto", "-c", str(folder / "mosquitto.conf")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        started = wait_until(
            lambda: _connects(mqtt, port, None, None) is not None or broker.poll() is not None, 10, 0.2
        )
        assert started and broker.poll() is None, broker.communicate(timeout=5)[0]
        assert _connects(mqtt, port, None, None) is False
        assert _connects(mqtt, port, "flops", "wrong") is False
        assert _connects(mqtt, port, "flops", "s3cret-test") is True
    finally:
        broker.terminate()
        broker.wait(timeout=10)


def _connects(mqtt: Any, port: int, user: str | None, password: str | None) -> bool | None:
    """True: accepted; False: refused; None: nothing listening yet."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if user:
        client.username_pw_set(user, password)
    try:
        code = client.connect("127.0.0.1", port, keepalive=5)
    except OSError:
        return None
    result: dict[str, Any] = {}
    client.on_connect = lambda _c, _u, _f, reason, _p: result.setdefault("reason", reason)
    deadline = time.monotonic() + 5
    while "reason" not in result and time.monotonic() < deadline and code == 0:
        client.loop(timeout=0.2)
    client.disconnect()
    return bool(result) and not result["reason"].is_failure


@pytest.mark.timeout(3600)
@pytest.mark.skipif(not os.environ.get("FLOPS_TEST_ARM64"), reason="set FLOPS_TEST_ARM64=1: emulated arm64 is slow")
def test_multi_arch_manifest_with_emulated_arm64(
    world: ContainerWorld, digits_repo: Path, module_tmp: Callable[[str], Path], report: dict[str, Any]
) -> None:
    problem = enable_arm64_emulation()
    if problem:
        pytest.skip(problem)
    clock = Stopwatch()
    world.import_base_image("arm64", f"{BASE_IMAGE}-arm64")
    world.run("podman", "tag", BASE_IMAGE, f"{BASE_IMAGE}-amd64")
    report["arm64_base_image_s"] = clock.elapsed
    cache = module_tmp("builder-cache-arm64")
    result, _output, elapsed = run_builder(
        world, digits_repo, cache, "--platforms", "linux/amd64,linux/arm64", "--base-image", f"{BASE_IMAGE}-{{arch}}"
    )
    report["amd64_arm64_build_s"] = elapsed
    report["arm64_stage_durations"] = result["stage_durations"]
    for role, ref in result["images"].items():
        sizes = compressed_sizes(ref, tls_verify=False)
        assert set(sizes) == {"linux/amd64", "linux/arm64"}, sizes
        report[f"{role}_arm64_compressed_mb"] = round(sizes["linux/arm64"] / MB)
    arch = world.podman(
        "run", "--rm", "--platform", "linux/arm64", result["images"]["learner"], "python", "-c",
        "import platform, flwr; print(platform.machine())",
    )  # fmt: skip
    assert arch.stdout.strip() == "aarch64", arch.stderr
