"""`flops-learner`: check the node's data, then run a Flower SuperNode until it ends.

The check runs before Flower starts so that a node without data for the project's tags
fails at once with a message that says so, instead of failing every round later.

Secure by default: the SuperNode dials the SuperLink over TLS, trusting only the project's CA
(`--root-certificates`), and proves its identity with its own key (`--auth-supernode-private-key`),
which the project's aggregator registered. Its own Runtime API (for the ClientApp processes, on
loopback) serves TLS too, with a certificate made for this start only, and answers only the
SuperExec that holds the shared secret: it runs in a thread of the SuperNode's process and hands
each message to the run's warm ClientApp process (`learner.warm_clientapp`). A SuperLink that
refuses the learner (its key is not registered yet: the aggregator registers right after its
SuperLink opens) is asked again for `--join-timeout` seconds. `--insecure` (plain HTTP, no
identity) is an explicit opt-in for loopback experiments.
"""

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import NoReturn

from pydantic import BaseModel

from flops.data.node_data import missing_tags
from flops.events import Component, EventName, LearnerReport, make_event
from flops.flower_runtime import new_secret_file
from flops.mqtt import MqttSettings, publish_once
from flops.net import free_port, is_loopback
from flops.pki import ProjectPKI
from flops.runtime_env import process_env
from learner.node_config import DATA_DIR_KEY, DATA_TAGS_KEY, NODE_NAME_KEY

# Flower's exit code when the SuperNode could not be admitted: refused activation (unknown key)
# or a TLS handshake that failed. Flower's process exits 1 for every error: the code is read
# from the "Exit Code: N" line it prints.
SUPERNODE_CONNECTION_ERROR = 305
CONNECTION_ERROR_LINE = f"Exit Code: {SUPERNODE_CONNECTION_ERROR}".encode()
# The SuperNode's own API could not bind the port this learner picked: another process took it between
# the pick and the bind (many learners starting at once). The attempt is made again on a new port.
PORT_TAKEN_LINE = b"address already in use"
PORT_TAKEN = -98
PORT_RETRIES = 5
JOIN_RETRY_S = 2.0
# The SuperNode, with its SuperExec in the same process and one warm ClientApp process per run.
WARM_SUPERNODE = [sys.executable, "-m", "learner.warm_clientapp", "supernode"]


class LearnerSettings(BaseModel):
    """What the manager tells a learner through its environment: the project and the broker."""

    project_id: str | None = None
    mqtt: MqttSettings | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "LearnerSettings":
        return cls(project_id=env.get("FLOPS_PROJECT_ID") or None, mqtt=MqttSettings.from_env(env))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flops-learner", description=__doc__)
    parser.add_argument("--superlink", required=True, help="aggregator address HOST:PORT")
    parser.add_argument("--data-dir", required=True, type=Path, help="this node's data folder")
    parser.add_argument("--data-tags", default="", help="comma-separated data tags to require")
    parser.add_argument("--node-name", default=os.uname().nodename)
    parser.add_argument("--host", default="127.0.0.1", help="host of the SuperNode's own API")
    parser.add_argument("--port", type=int, default=0, help="SuperNode API port (0: a free one)")
    parser.add_argument("--root-certificates", type=Path, help="the project's CA: the only one the SuperLink may use")
    parser.add_argument(
        "--auth-supernode-private-key", type=Path, help="this learner's identity key (P-384, OpenSSH format)"
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="opt-in for loopback experiments: plain HTTP to the SuperLink and no identity",
    )
    parser.add_argument(
        "--join-timeout", type=float, default=120.0, help="seconds to keep asking a SuperLink that refuses this node"
    )
    return parser.parse_args(argv)


def check_security(args: argparse.Namespace) -> str | None:
    """What is wrong with the TLS / identity options; None when they are complete."""
    if args.insecure:
        if args.root_certificates or args.auth_supernode_private_key:
            return "--insecure cannot be combined with --root-certificates or --auth-supernode-private-key"
        host = args.superlink.rpartition(":")[0]
        if not is_loopback(host):
            return (
                f"--insecure is only for experiments on loopback, not towards {host}: give --root-certificates "
                "and --auth-supernode-private-key"
            )
        return None
    if not args.root_certificates or not args.auth_supernode_private_key:
        return (
            "give --root-certificates (the project's CA) and --auth-supernode-private-key (this learner's key), "
            "or --insecure for a loopback experiment"
        )
    for path in (args.root_certificates, args.auth_supernode_private_key):
        if not path.is_file():
            return f"{path} does not exist or is not a file"
    return None


def supernode_command(args: argparse.Namespace, port: int, runtime_tls: Path, secret_file: Path) -> list[str]:
    """The SuperNode: TLS and identity towards the SuperLink, TLS and the secret on its own Runtime API.

    `runtime_tls` holds a CA, certificate and key (`ProjectPKI.superlink` layout) for the Runtime API.
    """
    node_config = (
        f'{NODE_NAME_KEY}="{args.node_name}" '
        f'{DATA_DIR_KEY}="{args.data_dir.resolve()}" '
        f'{DATA_TAGS_KEY}="{args.data_tags}"'
    )
    command = [
        *WARM_SUPERNODE,
        "--superlink", args.superlink,
        "--host", args.host,
        "--port", str(port),
        "--node-config", node_config,
        "--isolation", "process",
        "--superexec-auth-secret-file", str(secret_file),
        "--ssl-certfile", str(runtime_tls / "superlink.pem"),
        "--ssl-keyfile", str(runtime_tls / "superlink.key"),
        "--ssl-ca-certfile", str(runtime_tls / "ca.pem"),
    ]  # fmt: skip
    if args.insecure:
        return [*command, "--insecure"]
    return [
        *command,
        "--root-certificates", str(args.root_certificates),
        "--auth-supernode-private-key", str(args.auth_supernode_private_key),
    ]  # fmt: skip


class Flower:
    """The SuperNode (with its SuperExec and ClientApp workers) of one attempt to join."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen[bytes]] = []
        self.stopping = False
        self.stopped_by = 0  # the signal that stopped this learner

    def start(self, command: list[str], relay: bool = False) -> subprocess.Popen[bytes]:
        """Start `command`; `relay`: its output through a pipe, copied to ours line by line (`relay_output`)."""
        output = subprocess.PIPE if relay else None
        process = subprocess.Popen(
            command,
            env=process_env(),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if relay else None,
        )
        self.processes.append(process)
        return process

    def stop(self, grace: float = 5.0) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
        deadline = time.monotonic() + grace
        for process in reversed(self.processes):
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()

    def attempt(self, args: argparse.Namespace) -> int:
        """Run the SuperNode until it exits; its exit code."""
        with tempfile.TemporaryDirectory(prefix="flops-learner-") as private:
            folder = Path(private)
            secret = new_secret_file(folder / "superexec-secret")
            # A certificate for this start only: the Runtime API is this node's own, on loopback.
            runtime = ProjectPKI(folder / "runtime", f"{args.node_name} runtime").superlink([args.host], [])
            port = args.port or free_port(args.host)
            supernode = self.start(supernode_command(args, port, runtime.folder, secret), relay=True)
            refused, port_taken = threading.Event(), threading.Event()
            relay = threading.Thread(target=relay_output, args=(supernode, refused, port_taken), daemon=True)
            relay.start()
            try:
                code = supernode.wait()
                relay.join(5)
                if code and port_taken.is_set() and not args.port:
                    return PORT_TAKEN
                return SUPERNODE_CONNECTION_ERROR if code and refused.is_set() else code
            finally:
                self.stop()


def relay_output(process: subprocess.Popen[bytes], refused: threading.Event, port_taken: threading.Event) -> None:
    """Copy the SuperNode's output to this process's; set `refused` when Flower says it was not admitted,
    `port_taken` when its own API could not bind its port."""
    assert process.stdout is not None
    for line in process.stdout:
        if CONNECTION_ERROR_LINE in line:
            refused.set()
        if PORT_TAKEN_LINE in line:
            port_taken.set()
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()


def run_flower(args: argparse.Namespace) -> int:
    """Join, and ask again while the SuperLink refuses this node, up to `--join-timeout` seconds."""
    flower = Flower()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Only ask the SuperNode to stop: the handler may run inside `Popen.wait` of that process, whose
        # lock a second wait here could not take (it would spin until the grace is over). The attempt's
        # own wait sees the SuperNode end and stops the rest.
        flower.stopping = True
        flower.stopped_by = signum
        running = [process for process in flower.processes if process.poll() is None]
        for process in running:
            process.terminate()
        if not running:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    deadline = time.monotonic() + args.join_timeout
    ports_tried = 0
    while True:
        code = flower.attempt(args)
        if flower.stopping:
            return 128 + flower.stopped_by
        if code == PORT_TAKEN and ports_tried < PORT_RETRIES:
            ports_tried += 1
            print(f"flops-learner {args.node_name}: its API port was taken meanwhile; starting on another", flush=True)
            continue
        code = 1 if code == PORT_TAKEN else code
        if code != SUPERNODE_CONNECTION_ERROR:
            return code
        if time.monotonic() >= deadline:
            print(
                f"flops-learner {args.node_name}: the SuperLink at {args.superlink} refused this node for "
                f"{args.join_timeout:.0f} s: it does not know this node's key, or its certificate is not "
                "signed by this project's CA (see Flower's messages above)",
                flush=True,
            )
            return code
        print(f"flops-learner {args.node_name}: not admitted yet; asking again in {JOIN_RETRY_S:.0f} s", flush=True)
        time.sleep(JOIN_RETRY_S)


def report(settings: LearnerSettings, node_name: str, event: EventName, error: str | None = None) -> None:
    """Tell the manager, when there is one (a project id and a broker)."""
    if settings.project_id is None or settings.mqtt is None:
        return
    message = make_event(settings.project_id, Component.LEARNER, event, LearnerReport(node=node_name), error)
    try:
        publish_once(message, settings.mqtt)
    except OSError as failure:
        print(f"flops-learner: could not publish {event.value}: {failure}", flush=True)


def fail(settings: LearnerSettings, node_name: str, message: str) -> NoReturn:
    report(settings, node_name, EventName.FAILED, message)
    raise SystemExit(f"flops-learner {node_name}: {message}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    settings = LearnerSettings.from_env(os.environ)
    problem = check_security(args)
    if problem:
        fail(settings, args.node_name, problem)
    tags = [tag for tag in args.data_tags.split(",") if tag]
    if not args.data_dir.is_dir():
        fail(settings, args.node_name, f"data directory {args.data_dir} does not exist")
    absent = missing_tags(args.data_dir, tags)
    if absent:
        fail(
            settings,
            args.node_name,
            f"no data for tag(s) {', '.join(absent)} in {args.data_dir}; "
            "partition data there with `flops data partition` first",
        )
    report(settings, args.node_name, EventName.JOINED)
    mode = "PLAIN HTTP (--insecure)" if args.insecure else "TLS, own key"
    print(f"flops-learner {args.node_name}: joining {args.superlink}, {mode} (python {sys.executable})", flush=True)
    raise SystemExit(run_flower(args))


if __name__ == "__main__":
    main()
