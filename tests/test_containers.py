"""Containers end to end: OCI images built and pushed, FL training in containers, a served model.

Real tools only: buildah (chroot isolation), a loopback Registry v2, Podman's Docker API
driven through DockerOrchestrator, a real MLflow server on the host. The tests run in file
order and share what they make (images, the trained model). Timings and sizes are printed
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from flops.net import free_port, http_ok, wait_until
from flops.training import TrainingSpec
from flops_manager.orchestration.base import ServiceSpec, ServiceStatus
from flops_manager.orchestration.docker import DockerOrchestrator
from image_builder.oci import (
    OciOptions,
    build_inference_image,
    build_settings,
    compressed_sizes,
    image_size,
    pip_settings_from_host,
)
from tests.conftest import EXAMPLES, ROOT
from tests.containers_env import (
    BASE_IMAGE,
    PACKAGES,
    ContainerWorld,
    Stopwatch,
    enable_arm64_emulation,
    git,
    install_packages,
    make_git_repo,
    missing_tools,
)

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
def world(tmp_path_factory: pytest.TempPathFactory, report: dict[str, Any]) -> Iterator[ContainerWorld]:
    if sys.platform != "linux":
        pytest.skip("containers need Linux")
    problem = install_packages(missing_tools(PACKAGES))
    if problem:
        pytest.skip(problem)
    clock = Stopwatch()
    world = ContainerWorld.start(tmp_path_factory.mktemp("containers"))
    try:
        world.import_base_image()
        report["storage_driver"] = world.driver
        report["world_setup_s"] = clock.elapsed
        yield world
    finally:
        world.stop()


@pytest.fixture(scope="module")
def digits_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_git_repo(EXAMPLES / "digits-sklearn", tmp_path_factory.mktemp("repos") / "digits-sklearn")


@pytest.fixture(scope="module")
def builder_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("builder-cache")


def run_builder(world: ContainerWorld, repo: Path, cache: Path, *extra: str) -> tuple[dict[str, Any], str, float]:
    result_file = cache / "result.json"
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
    return json.loads(result_file.read_text()), output, elapsed


@pytest.fixture(scope="module")
def built(world: ContainerWorld, digits_repo: Path, builder_cache: Path, report: dict[str, Any]) -> dict[str, Any]:
    result, output, elapsed = run_builder(world, digits_repo, builder_cache)
    report["cold_amd64_build_s"] = elapsed
    report["cold_stage_durations"] = result["stage_durations"]
    result["log"] = output
    return result


@pytest.mark.timeout(1800)
def test_cold_build_pushes_learner_and_aggregator(
    world: ContainerWorld, built: dict[str, Any], report: dict[str, Any]
) -> None:
    images = built["images"]
    commit12 = built["commit"][:12]
    for role in ("learner", "aggregator"):
        assert re.fullmatch(rf"{re.escape(world.registry)}/{CUSTOMER}/digits-sklearn/{role}:{commit12}-[0-9a-f]{{12}}",
                            images[role]), images  # fmt: skip
    assert built["reused"] is False and built["repo_dir"] == "/app"
    for role, ref in images.items():
        pulled = world.podman("pull", "-q", ref)
        assert pulled.returncode == 0, pulled.stderr
        report[f"{role}_image_mb"] = round(image_size(ref) / MB)
        report[f"{role}_image_compressed_mb"] = round(compressed_sizes(ref, tls_verify=False)["linux/amd64"] / MB)

    learner, aggregator = images["learner"], images["aggregator"]
    no_mlflow = world.podman("run", "--rm", "--network", "host", learner, "python", "-c", "import mlflow")
    assert no_mlflow.returncode != 0 and "No module named 'mlflow'" in no_mlflow.stderr
    for ref in (learner, aggregator):
        uid = world.podman("run", "--rm", "--network", "host", ref, "id", "-u")
        assert uid.returncode == 0 and uid.stdout.strip() not in ("", "0"), uid
    tracking = world.podman("run", "--rm", "--network", "host", aggregator, "python", "-c", "import mlflow, aggregator")
    assert tracking.returncode == 0, tracking.stderr
    # No compilers, no pip caches, no build settings in the image; code owned by root.
    leftovers = world.podman(
        "run", "--rm", "--network", "host", learner, "sh", "-c",
        "ls /usr/bin/gcc /usr/bin/cc 2>/dev/null; ls -A /root/.cache /home/flops/.cache 2>/dev/null;"
        " cat /run/flops-build/pip.conf 2>/dev/null; stat -c %u /app/model_manager.py",
    )  # fmt: skip
    assert leftovers.stdout.split() == ["0"], leftovers.stdout


@pytest.mark.timeout(600)
def test_same_commit_is_not_built_again(
    world: ContainerWorld, built: dict[str, Any], digits_repo: Path, builder_cache: Path, report: dict[str, Any]
) -> None:
    result, output, elapsed = run_builder(world, digits_repo, builder_cache)
    report["warm_skipped_s"] = elapsed
    assert result["reused"] is True and result["images"] == built["images"]
    assert "build skipped" in output and "buildah" not in output


@pytest.mark.timeout(900)
def test_code_only_change_reuses_the_dependency_layer(
    world: ContainerWorld, built: dict[str, Any], digits_repo: Path, builder_cache: Path, report: dict[str, Any]
) -> None:
    manager = digits_repo / "model_manager.py"
    manager.write_text("# a comment that changes nothing\n" + manager.read_text(encoding="utf-8"), encoding="utf-8")
    git(digits_repo, "commit", "-q", "-am", "comment only")
    result, output, elapsed = run_builder(world, digits_repo, builder_cache)
    report["code_only_rebuild_s"] = elapsed
    report["code_only_stage_durations"] = result["stage_durations"]
    assert result["reused"] is False
    assert result["images"]["learner"] != built["images"]["learner"]
    assert result["oci"]["tag"].split("-")[1] == built["oci"]["tag"].split("-")[1]  # same build configuration
    for role in ("learner", "aggregator"):
        assert result["oci"]["cache"][role]["dependencies_cached"] == 1, output[-3000:]
    step = re.search(r"STEP \d+/\d+: RUN python3 -m venv .*requirements-base\.txt.*\n\s*--> Using cache", output)
    assert step, "the dependency step was not taken from the cache"
    assert "Resolved" not in output and "Collecting" not in output  # nothing was installed
    assert elapsed < 180, f"code-only rebuild took {elapsed} s"


@pytest.fixture(scope="module")
def trained(
    world: ContainerWorld,
    built: dict[str, Any],
    mlflow_server: str,
    digits_nodes: Path,
    tmp_path_factory: pytest.TempPathFactory,
    report: dict[str, Any],
) -> dict[str, Any]:
    """2 learner containers + 1 aggregator container train digits for 2 rounds."""
    runs = tmp_path_factory.mktemp("runs")
    project = f"containers-{int(time.time())}"
    run_dir = runs / project
    (run_dir / "aggregator").mkdir(parents=True)
    for folder in (run_dir, run_dir / "aggregator"):
        os.chown(folder, 10001, 10001)  # the images' user writes the state folder
    spec = TrainingSpec(
        project_id=project, model_name="digits-containers", rounds=2, min_available_clients=2,
        min_fit_clients=2, min_evaluate_clients=2, data_tags=["digits"],
    )  # fmt: skip
    (run_dir / "spec.json").write_text(spec.model_dump_json(indent=2), encoding="utf-8")
    orchestrator = DockerOrchestrator(world.socket, runs_dir=runs)
    port = free_port()
    services = [
        ServiceSpec(
            project_id=project, name="aggregator", role="aggregator", image=built["images"]["aggregator"],
            command=[
                "flops-aggregator", "--spec", str(run_dir / "spec.json"), "--repo", "/app",
                "--state-dir", str(run_dir / "aggregator"), "--port", str(port), "--tracking-uri", mlflow_server,
                "--insecure",
            ],
            ports={"superlink": port}, memory_mb=2048, vcpus=1.0,
        )
    ]  # fmt: skip
    for node in ("node-1", "node-2"):
        services.append(
            ServiceSpec(
                project_id=project, name=f"learner-{node}", role="learner", image=built["images"]["learner"],
                command=[
                    "flops-learner", "--superlink", f"127.0.0.1:{port}", "--data-dir", "/data",
                    "--data-tags", "digits", "--node-name", node, "--insecure",
                ],
                read_only_mounts={str(digits_nodes / node): "/data"}, memory_mb=1024, vcpus=1.0,
            )
        )  # fmt: skip
    clock = Stopwatch()
    handles = [orchestrator.deploy(service) for service in services]
    try:
        inspected = {
            handle.name: orchestrator.client.containers.get(handle.ref).attrs["HostConfig"] for handle in handles
        }
        finished = wait_until(lambda: orchestrator.status(handles[0]).finished, 900, 2)
        state = orchestrator.status(handles[0])
        logs = {handle.name: orchestrator.logs(handle, tail=40) for handle in handles}
        report["container_training_s"] = clock.elapsed
        summary_file = run_dir / "aggregator" / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else None
        labels = orchestrator.client.containers.get(handles[1].ref).labels
    finally:
        removed = orchestrator.undeploy_project(project)
    left = orchestrator.client.containers.list(all=True, filters={"label": f"flops.project={project}"})
    orchestrator.close()
    return {
        "finished": finished, "state": state, "logs": logs, "summary": summary, "removed": removed, "left": left,
        "labels": labels, "host_config": inspected, "tracking_uri": mlflow_server,
    }  # fmt: skip


@pytest.mark.timeout(1200)
def test_training_in_containers_through_the_docker_backend(trained: dict[str, Any]) -> None:
    assert trained["finished"], trained["logs"]
    assert trained["state"].status is ServiceStatus.EXITED, (trained["state"], trained["logs"])
    summary = trained["summary"]
    assert summary is not None, trained["logs"]
    assert summary["status"] == "completed", summary.get("error")
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    assert summary["rounds"][-1]["learners"] == 2 and summary["final_accuracy"] > 0.8
    assert summary["registered_model_version"]
    assert trained["labels"]["flops.service"] == "learner-node-1" and trained["labels"]["flops.project"]
    learner = trained["host_config"]["learner-node-1"]
    assert learner["Memory"] == 1024 * 2**20 and learner["NanoCpus"] == 10**9
    binds = json.dumps(learner.get("Mounts") or learner.get("Binds") or [])
    assert "/data" in binds and ("ro" in binds or "ReadOnly" in binds)
    assert trained["removed"] is True and trained["left"] == []


@pytest.mark.timeout(1200)
def test_inference_image_serves_the_registered_model(
    world: ContainerWorld, trained: dict[str, Any], builder_cache: Path, report: dict[str, Any]
) -> None:
    summary = trained["summary"]
    assert summary and summary["registered_model_version"], "training gave no model"
    options = OciOptions(
        registry=world.registry, tls_verify=False, base_image=BASE_IMAGE, **pip_settings_from_host()
    )  # fmt: skip
    clock = Stopwatch()
    ref = build_inference_image(
        trained["tracking_uri"], f"models:/{summary['registered_model_name']}/{summary['registered_model_version']}",
        world.registry, CUSTOMER, "digits", options, cache_dir=builder_cache,
    )  # fmt: skip
    report["inference_build_s"] = clock.elapsed
    assert ref == f"{world.registry}/{CUSTOMER}/digits/inference:{summary['registered_model_version']}"
    assert world.podman("pull", "-q", ref).returncode == 0
    report["inference_image_mb"] = round(image_size(ref) / MB)
    report["inference_image_compressed_mb"] = round(compressed_sizes(ref, tls_verify=False)["linux/amd64"] / MB)

    port = free_port()
    name = f"flops-inference-test-{port}"
    started = world.podman(
        "run", "-d", "--init", "--name", name, "--network", "host", ref,
        "mlflow", "models", "serve", "-m", "/model", "-h", "127.0.0.1", "-p", str(port), "--env-manager", "local",
    )  # fmt: skip
    assert started.returncode == 0, started.stderr
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: http_ok(f"{url}/ping"), 120, 1), world.podman("logs", name).stdout[-2000:]
        from sklearn.datasets import load_digits

        digits = load_digits()
        features = (digits.images.reshape(len(digits.images), -1) / 16.0)[:50]
        response = requests.post(f"{url}/invocations", json={"inputs": features.tolist()}, timeout=60)
        assert response.status_code == 200, response.text
        predictions = response.json()["predictions"]
        assert len(predictions) == 50
        assert sum(int(p) == int(t) for p, t in zip(predictions, digits.target[:50], strict=True)) >= 40
        user = world.podman("exec", name, "id", "-u")
        assert user.stdout.strip() != "0"
    finally:
        world.podman("rm", "--force", "--time", "2", name)


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

    options = OciOptions(registry=world.registry, tls_verify=False, **pip_settings_from_host())
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
    world: ContainerWorld, digits_repo: Path, tmp_path_factory: pytest.TempPathFactory, report: dict[str, Any]
) -> None:
    problem = enable_arm64_emulation()
    if problem:
        pytest.skip(problem)
    clock = Stopwatch()
    world.import_base_image("arm64", f"{BASE_IMAGE}-arm64")
    world.run("podman", "tag", BASE_IMAGE, f"{BASE_IMAGE}-amd64")
    report["arm64_base_image_s"] = clock.elapsed
    cache = tmp_path_factory.mktemp("builder-cache-arm64")
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
