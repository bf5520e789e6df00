"""TLS and node identity on the Flower links, tested as the attacks of a hostile customer.

A real SuperLink and real SuperNodes, started by the real aggregator and learner code from the
commands `flops.actors` builds (and, at the end, by the manager): a SuperNode started by hand
with a key of its own is refused and the run completes with the registered learners only; the
rogue cannot register itself through the Control API, nor take the ServerApp's task through the
Runtime API; plain HTTP and another project's CA fail; the certificate names what learners dial;
no process of a training carries `--insecure`.
"""

import contextlib
import json
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aggregator.main import check_security, parse_args
from aggregator.superlink import CONTROL_TOKEN_HEADER, ControlGuard
from flops.actors import aggregator_command, learner_command
from flops.net import free_port, port_open, wait_until
from flops.pki import (
    LOOPBACK_HOSTS,
    PKI_DIR,
    ProjectPKI,
    certificate_names,
    covers,
    file_stem,
)
from flops.processes import ManagedProcess, stop_group
from flops.runtime_env import process_env
from flops.training import TrainingSpec
from flops_manager.stages.flower_tls import superlink_hosts
from tests.conftest import BIN, EXAMPLES

# What Flower prints for a SuperNode the SuperLink did not admit (its process then exits 1).
NOT_ADMITTED = "Exit Code: 305"


# -- the project's key material ----------------------------------------------------------------------


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}


def test_project_pki_files_are_private_and_each_actor_gets_only_its_own(tmp_path: Path) -> None:
    pki = ProjectPKI(tmp_path / PKI_DIR, "proj-a")
    link = pki.superlink(["10.30.200.7"], ["node-1", "node-2"])
    node = pki.supernode("node-1")
    for name, mode in modes(tmp_path / PKI_DIR).items():
        assert mode == (0o700 if (tmp_path / PKI_DIR / name).is_dir() else 0o600), name
    # The aggregator's folder: its certificate and key, the CA certificate, the learners' public keys.
    assert sorted(p.name for p in link.folder.rglob("*")) == sorted(
        ["ca.pem", "superlink.pem", "superlink.key", "supernodes", "node-1.pub", "node-2.pub"]
    )
    # A learner's folder: the CA certificate and its own key pair; never the CA key or another's key.
    assert sorted(p.name for p in node.folder.iterdir()) == ["ca.pem", "supernode.key", "supernode.pub"]
    ca_key = (tmp_path / PKI_DIR / "ca" / "ca.key").read_bytes()
    for folder in (link.folder, node.folder):
        assert all(p.read_bytes() != ca_key for p in folder.rglob("*") if p.is_file())
    assert node.private_key.read_bytes() != pki.supernode("node-2").private_key.read_bytes()


def test_supernode_keys_are_p384_in_openssh_format_as_flower_wants(tmp_path: Path) -> None:
    node = ProjectPKI(tmp_path, "proj-a").supernode("node-1")
    private = serialization.load_ssh_private_key(node.private_key.read_bytes(), password=None)
    public = serialization.load_ssh_public_key(node.public_key.read_bytes())
    assert isinstance(private, ec.EllipticCurvePrivateKey) and isinstance(public, ec.EllipticCurvePublicKey)
    assert private.curve.name == public.curve.name == "secp384r1"
    assert node.public_key.read_bytes().startswith(b"ecdsa-sha2-nistp384 ")
    # Flower's own loader for `--auth-supernode-private-key` takes it.
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    assert public_key_to_bytes(public) == public_key_to_bytes(private.public_key())


def test_superlink_certificate_names_every_address_learners_dial_and_nothing_else(tmp_path: Path) -> None:
    link = ProjectPKI(tmp_path, "proj-a").superlink(["10.30.200.7", "flops-proj-a-aggregator"], [])
    names = certificate_names(link.cert)
    assert sorted(names) == sorted(["10.30.200.7", "flops-proj-a-aggregator", *LOOPBACK_HOSTS])
    for host in ("10.30.200.7", "127.0.0.1", "localhost", "[::1]", "FLOPS-proj-a-aggregator"):
        assert covers(link.cert, host), host
    for host in ("10.30.200.8", "aggregator.evil.example", "*.example"):
        assert not covers(link.cert, host), host
    cert = x509.load_pem_x509_certificate(link.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(link.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_certificate_is_reissued_when_addresses_change_and_kept_otherwise(tmp_path: Path) -> None:
    pki = ProjectPKI(tmp_path, "proj-a")
    first = pki.superlink(["10.30.200.7"], ["node-1"]).cert.read_bytes()
    assert pki.superlink(["10.30.200.7"], ["node-1"]).cert.read_bytes() == first
    moved = pki.superlink(["10.30.200.9"], ["node-1"])
    assert moved.cert.read_bytes() != first and covers(moved.cert, "10.30.200.9")
    assert not covers(moved.cert, "10.30.200.7")
    # Learners that left are no longer admitted; a kept learner keeps its identity.
    key = pki.supernode("node-1").private_key.read_bytes()
    link = pki.superlink(["10.30.200.9"], ["node-2"])
    assert [p.name for p in link.supernode_keys.iterdir()] == ["node-2.pub"]
    assert pki.supernode("node-1").private_key.read_bytes() == key


def test_a_ca_near_its_end_is_replaced_with_a_new_one(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    old = ProjectPKI(tmp_path, "proj-a", lifetime=timedelta(days=3))
    old_ca = old.superlink([], ["node-1"]).ca_cert.read_bytes()
    later = ProjectPKI(tmp_path, "proj-a", lifetime=timedelta(days=3), clock=lambda: now + timedelta(days=2))
    link = later.superlink([], ["node-1"])
    assert link.ca_cert.read_bytes() != old_ca
    x509.load_pem_x509_certificate(link.cert.read_bytes()).verify_directly_issued_by(
        x509.load_pem_x509_certificate(link.ca_cert.read_bytes())
    )
    assert later.supernode("node-1").ca_cert.read_bytes() == link.ca_cert.read_bytes()


def test_unsafe_node_names_become_hashed_file_names() -> None:
    assert file_stem("node-1") == "node-1"
    for name in ("../../etc", "a/b", ".", "", "x" * 80):
        stem = file_stem(name)
        assert "/" not in stem and stem not in (".", "..") and 0 < len(stem) <= 64, name


# -- opting out is explicit, and only for loopback -----------------------------------------------------


def test_actor_commands_carry_no_insecure_unless_asked(tmp_path: Path) -> None:
    pki = ProjectPKI(tmp_path, "proj-a")
    link, node = pki.superlink([], ["node-1"]), pki.supernode("node-1")
    aggregator = aggregator_command(
        repo="/r", state_dir="/s", port=1, tracking_uri="", spec_json="{}", tls=link
    )  # fmt: skip
    learner = learner_command("127.0.0.1:1", "/d", ["t"], "node-1", identity=node)
    assert "--insecure" not in aggregator and "--insecure" not in learner
    assert aggregator[aggregator.index("--ssl-keyfile") + 1] == str(link.key)
    assert aggregator[aggregator.index("--supernode-keys") + 1] == str(link.supernode_keys)
    assert learner[learner.index("--auth-supernode-private-key") + 1] == str(node.private_key)
    # Paths only: no key material in an argv.
    for argument in (*aggregator, *learner):
        assert "PRIVATE KEY" not in argument and "BEGIN" not in argument
    with pytest.raises(ValueError, match="insecure=True"):
        aggregator_command(repo="/r", state_dir="/s", port=1, tracking_uri="", spec_json="{}")
    with pytest.raises(ValueError, match="insecure=True"):
        learner_command("127.0.0.1:1", "/d", ["t"], "node-1")
    assert "--insecure" in learner_command("127.0.0.1:1", "/d", ["t"], "n", insecure=True)


def test_aggregator_refuses_plain_http_on_a_non_loopback_address(tmp_path: Path) -> None:
    base = ["--spec-json", "{}", "--repo", str(tmp_path), "--state-dir", str(tmp_path)]
    assert "only for experiments on loopback" in str(
        check_security(parse_args([*base, "--insecure", "--host", "0.0.0.0"]))
    )
    assert check_security(parse_args([*base, "--insecure", "--host", "127.0.0.1"])) is None
    assert "--ssl-certfile" in str(check_security(parse_args(base)))
    done = subprocess.run(
        [sys.executable, "-m", "aggregator.main", *base, "--insecure", "--host", "10.30.1.2"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode != 0 and "only for experiments on loopback" in done.stderr


def test_a_learner_refuses_plain_http_towards_a_non_loopback_superlink(tmp_path: Path) -> None:
    from learner.main import check_security as learner_check
    from learner.main import parse_args as learner_args

    base = ["--data-dir", str(tmp_path), "--insecure"]
    assert "only for experiments on loopback" in str(
        learner_check(learner_args([*base, "--superlink", "10.3.0.7:9092"]))
    )
    for loopback in ("127.0.0.1:9092", "localhost:9092", "[::1]:9092"):
        assert learner_check(learner_args([*base, "--superlink", loopback])) is None, loopback


async def _call(path: str, headers: list[tuple[bytes, bytes]]) -> int:
    """The status the guard (token "s3cret") gives a request: 200 when it reached the app behind it."""
    reached: list[str] = []
    sent: list[dict[str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard = ControlGuard(app, token=b"s3cret")
    await guard({"type": "http", "path": path, "headers": headers}, receive, send)
    return 200 if reached else int(sent[0]["status"])


def test_control_guard_lets_only_the_token_through_to_the_control_api() -> None:
    import asyncio

    token = [(CONTROL_TOKEN_HEADER.encode(), b"s3cret")]
    for path in ("/v1/control/register-node", "/v1/control/start-run", "/docs", "/", "/v1/fleet/../control/x"):
        assert asyncio.run(_call(path, [])) == 403, path
        assert asyncio.run(_call(path, [(CONTROL_TOKEN_HEADER.encode(), b"s3cre")])) == 403, path
    assert asyncio.run(_call("/v1/control/register-node", token)) == 200
    assert asyncio.run(_call("/v1/fleet/pull-messages", [])) == 200  # signed by SuperNodes
    assert asyncio.run(_call("/v1/runtime/acquire-task", [])) == 200  # SuperExec's secret


def test_superlink_names_on_each_backend_include_the_reserved_oakestra_address() -> None:
    class Local:
        name = "local"

    class Docker:
        name = "docker"

    class Oakestra:
        name = "oakestra"

        def reserve_address(self, project_id: str, service: str) -> str:
            return "10.30.150.3"

    assert superlink_hosts(Local(), "p1", "aggregator") == list(LOOPBACK_HOSTS)  # type: ignore[arg-type]
    assert "flops-p1-aggregator" in superlink_hosts(Docker(), "p1", "aggregator")  # type: ignore[arg-type]
    assert superlink_hosts(Oakestra(), "p1", "aggregator")[0] == "10.30.150.3"  # type: ignore[arg-type]


# -- attacks on a real training ---------------------------------------------------------------------


def tree_cmdlines(pids: list[int]) -> dict[int, list[str]]:
    """The argv of every live process at or below `pids`."""
    found: dict[int, list[str]] = {}
    for pid in pids:
        try:
            root = psutil.Process(pid)
            family = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for process in family:  # one that just ended (or a zombie) must not hide the others
            with contextlib.suppress(psutil.Error):
                found[process.pid] = process.cmdline()
    return found


@dataclass
class Training:
    """A real 2 learners x 1 round training, the attacks made while it ran, and what they got."""

    root: Path
    port: int
    pki: ProjectPKI
    aggregator: ManagedProcess
    learners: list[ManagedProcess]
    cmdlines: dict[int, list[str]] = field(default_factory=dict)
    observed: dict[str, Any] = field(default_factory=dict)

    @property
    def ca(self) -> Path:
        return self.root / PKI_DIR / "superlink" / "ca.pem"

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"


@dataclass
class Exited:
    returncode: int
    output: str


def hand_started_supernode(training: Training, name: str, *args: str) -> Exited:
    """`flower-supernode` started by hand against the training's SuperLink: its exit code and output (60 s at most).

    Its SuperExec child may outlive it for a moment: the whole session is stopped afterwards.
    """
    command = [str(BIN / "flower-supernode"), "--superlink", f"127.0.0.1:{training.port}", "--port", str(free_port())]
    log = training.root / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, *args], stdout=output, stderr=subprocess.STDOUT, env=process_env(), start_new_session=True
        )
    try:
        code = process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        code = -1
    finally:
        stop_group(process.pid, grace=5)
    text = log.read_text(errors="replace")
    assert code != -1, f"{name} was neither admitted nor refused within 60 s:\n{text[-2000:]}"
    return Exited(code, text)


def protobuf_post(url: str, message: Any, verify: Path | bool) -> requests.Response:
    return requests.post(
        url,
        data=message.SerializeToString(),
        headers={"Content-Type": "application/protobuf"},
        verify=str(verify) if isinstance(verify, Path) else verify,
        timeout=30,
    )


def attack(training: Training) -> None:
    """What a hostile customer on the network tries while the training runs."""
    from flwr.proto.control_pb2 import ListRunsRequest, RegisterNodeRequest
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    rogue = ProjectPKI(training.root / "rogue", "rogue").supernode("node-1")  # a key nobody registered
    rogue_key = serialization.load_ssh_public_key(rogue.public_key.read_bytes())
    seen = training.observed
    # 1. Register its own key through the Control API (on the same port), then join with it.
    seen["register"] = protobuf_post(
        training.url("/v1/control/register-node"),
        RegisterNodeRequest(public_key=public_key_to_bytes(rogue_key), name="rogue"),  # type: ignore[arg-type]
        training.ca,
    ).status_code
    seen["list_runs"] = protobuf_post(training.url("/v1/control/list-runs"), ListRunsRequest(), training.ca).status_code
    # 2. Take the ServerApp's task (and with it the app, the customer's code) from the Runtime API.
    seen["acquire_task"] = protobuf_post(
        training.url("/v1/runtime/acquire-task"), AcquireTaskRequest(), training.ca
    ).status_code
    # 3. A SuperNode started by hand with its unregistered key, trusting the project's CA.
    seen["rogue"] = hand_started_supernode(
        training,
        "rogue",
        "--root-certificates",
        str(training.ca),
        "--auth-supernode-private-key",
        str(rogue.private_key),
    )
    # 4. A SuperNode that trusts another project's CA (with a key this project registered).
    seen["other_ca"] = hand_started_supernode(
        training, "other-ca", "--root-certificates", str(rogue.ca_cert),
        "--auth-supernode-private-key", str(training.pki.supernode("node-1").private_key),
    )  # fmt: skip
    # 5. Plain HTTP: a Flower client without TLS, and a plain request.
    seen["plain_supernode"] = hand_started_supernode(
        training, "plain", "--insecure", "--max-retries", "2", "--max-wait-time", "15"
    )
    try:
        answer = requests.post(f"http://127.0.0.1:{training.port}/v1/control/list-runs", timeout=10)
        seen["plain_http"] = answer.status_code
    except requests.RequestException as error:
        seen["plain_http"] = type(error).__name__


@pytest.fixture(scope="module")
def training(digits_nodes: Path, module_tmp: Callable[[str], Path]) -> Iterator[Training]:
    root = module_tmp("tls-training")
    spec = TrainingSpec(
        project_id="tls-attacks", model_name="tls-attacks", rounds=1, data_tags=["digits"],
        min_available_clients=2, min_fit_clients=2, min_evaluate_clients=2, learner_wait_timeout=120,
    )  # fmt: skip
    pki = ProjectPKI(root / PKI_DIR, spec.project_id)
    names = ["node-1", "node-2"]
    link = pki.superlink(["127.0.0.1"], names)
    port = free_port()
    # The learners first: they keep asking until the aggregator has registered their keys.
    learners = [
        ManagedProcess(
            name,
            learner_command(
                f"127.0.0.1:{port}",
                digits_nodes / name,
                ["digits"],
                name,
                python=sys.executable,
                identity=pki.supernode(name),
            ),
            root / f"{name}.log",
            env={"FLOPS_MQTT_HOST": ""},
        )
        for name in names
    ]
    aggregator = ManagedProcess(
        "aggregator",
        aggregator_command(
            spec_json=spec.model_dump_json(), repo=EXAMPLES / "digits-sklearn", state_dir=root / "aggregator",
            port=port, tracking_uri="", python=sys.executable, tls=link,
        ),
        root / "aggregator.log",
        env={"FLOPS_MQTT_HOST": ""},
    )  # fmt: skip
    result = Training(root, port, pki, aggregator, learners)
    try:
        assert wait_until(lambda: port_open("127.0.0.1", port) or not aggregator.running(), 120), aggregator.log_tail()
        assert aggregator.running(), aggregator.log_tail()
        pids = [aggregator.pid, *(learner.pid for learner in learners)]

        def sample() -> None:  # during the attacks too: a round takes seconds now
            deadline = time.monotonic() + 480
            while aggregator.running() and time.monotonic() < deadline:
                result.cmdlines.update(tree_cmdlines(pids))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        attack(result)
        sampler.join(480)
        assert not aggregator.running(), "the training did not end within 8 minutes"
        yield result
    finally:
        for process in (*learners, aggregator):
            process.stop()


def summary(training: Training) -> dict[str, Any]:
    return json.loads((training.root / "aggregator" / "summary.json").read_text())


@pytest.mark.slow
def test_the_run_completes_with_the_registered_learners_only(training: Training) -> None:
    result = summary(training)
    assert result["status"] == "completed", (result["error"], training.aggregator.log_tail(40))
    assert [r["learners"] for r in result["rounds"]] == [2]
    assert result["final_accuracy"] > 0.8
    log = (training.root / "aggregator" / "superlink.log").read_text(errors="replace")
    assert log.count("[Fleet.ActivateNode] Activated node_id") == 2, "only the two registered learners joined"


@pytest.mark.slow
def test_a_hand_started_supernode_with_its_own_key_is_refused_and_gets_nothing(training: Training) -> None:
    rogue = training.observed["rogue"]
    assert rogue.returncode != 0 and NOT_ADMITTED in rogue.output, rogue.output[-2000:]
    output = rogue.output
    assert "Failed to activate SuperNode" in output
    # No task, no app: a ClientApp never ran and no FAB was fetched for it.
    for word in ("Received:", "flwr-clientapp", "Pulling", "fab"):
        assert word not in output, word
    log = (training.root / "aggregator" / "superlink.log").read_text(errors="replace")
    assert "No SuperNode found with the given public key" in log


@pytest.mark.slow
def test_the_rogue_cannot_register_itself_or_take_the_serverapp_task(training: Training) -> None:
    assert training.observed["register"] == 403, "the Control API took a key from a stranger"
    assert training.observed["list_runs"] == 403
    assert training.observed["acquire_task"] in (401, 403), training.observed["acquire_task"]


@pytest.mark.slow
def test_plain_http_and_another_projects_ca_fail(training: Training) -> None:
    other = training.observed["other_ca"]
    assert other.returncode != 0 and NOT_ADMITTED in other.output, other.output[-2000:]
    assert "CERTIFICATE_VERIFY_FAILED" in other.output
    plain = training.observed["plain_supernode"]
    assert plain.returncode != 0 and "Activated" not in plain.output
    assert training.observed["plain_http"] in ("ConnectionError", 400), training.observed["plain_http"]


@pytest.mark.slow
def test_the_certificate_covers_the_dialled_address(training: Training) -> None:
    """The learners dialled 127.0.0.1 and verified the name; a client dialling another name refuses it."""
    assert "127.0.0.1" in certificate_names(training.root / PKI_DIR / "superlink" / "superlink.pem")
    assert "joining 127.0.0.1:" in training.learners[0].log_path.read_text(errors="replace")
    context = ssl.create_default_context(cafile=str(training.ca))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    folder = training.root / PKI_DIR / "superlink"
    server.load_cert_chain(folder / "superlink.pem", folder / "superlink.key")  # the SuperLink's own pair
    for host, accepted in (("127.0.0.1", True), ("localhost", True), ("aggregator.other.example", False)):
        assert handshake(server, context, host) is accepted, host


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, host: str) -> bool:
    """Whether a client verifying `host` completes a TLS handshake with `server` (on loopback)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:

        def serve() -> None:
            connection, _ = listener.accept()
            with contextlib.suppress(ssl.SSLError, OSError), server.wrap_socket(connection, server_side=True):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(listener.getsockname()) as raw:
            try:
                with client.wrap_socket(raw, server_hostname=host):
                    result = True
            except ssl.SSLCertVerificationError:
                result = False
        thread.join(10)
        return result


@pytest.mark.slow
def test_no_process_of_the_training_runs_insecure(training: Training) -> None:
    commands = list(training.cmdlines.values())
    flower = [c for c in commands if any("flower-" in part or "flwr-" in part for part in c)]
    names = {Path(part).name for c in flower for part in c}
    assert "flower-superexec" in names, names  # the aggregator's
    # A learner's SuperNode, with its SuperExec in a thread (its ClientApp workers are checked too when
    # a sample catches them).
    warm = [c[c.index("learner.warm_clientapp") + 1] for c in commands if "learner.warm_clientapp" in c]
    assert "supernode" in warm, warm
    assert any("aggregator.superlink" in c for c in commands)
    offenders = [c for c in commands if "--insecure" in c]
    assert not offenders, offenders
    assert any("--enable-supernode-auth" in c for c in commands)
    for command in commands:
        assert not any("PRIVATE KEY" in part for part in command)
