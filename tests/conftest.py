"""Shared fixtures: real servers on loopback with free ports, stopped after use."""

import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from flops.actors import observatory_command
from flops.data.partition import partition
from flops.net import free_port, http_ok, wait_until
from flops.processes import ManagedProcess
from flops.runtime_env import FLOWER_OFFLINE_ENV
from flops.tracking_auth import CREDENTIALS_FILE_ENV, MLFLOW_PASSWORD_ENV, MLFLOW_USERNAME_ENV, read_credentials
from flops.tracking_server import admin_credentials_file

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent

os.environ.update(FLOWER_OFFLINE_ENV)
ADMIN_ENV = (MLFLOW_USERNAME_ENV, MLFLOW_PASSWORD_ENV, CREDENTIALS_FILE_ENV)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (the observatory) with SQLite and local artefacts.

    It requires credentials: this test process, and what it starts (managers, `flops train`),
    act as its admin (MLflow's variables, and the admin file a manager is given).
    """
    home = tmp_path_factory.mktemp("observatory")
    port = free_port()
    process = ManagedProcess("observatory", observatory_command("127.0.0.1", port, home), home / "observatory.log")
    uri = f"http://127.0.0.1:{port}"
    saved = {name: os.environ.get(name) for name in ADMIN_ENV}
    try:
        assert wait_until(lambda: http_ok(f"{uri}/health") or not process.running(), 120, 0.5), process.log_tail()
        assert process.running(), process.log_tail()
        admin_file = admin_credentials_file(home)
        os.environ.update({**read_credentials(admin_file).env(), CREDENTIALS_FILE_ENV: str(admin_file)})
        yield uri
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        process.stop()


@pytest.fixture(scope="module")
def module_tmp(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Path]]:
    """`tmp_path_factory.mktemp` for a module's fixtures: the folders go when the module ends with no test failed.

    A module's homes hold its built environments (about 1 GB each) and container storage;
    kept to the end of the run, they filled a CI machine's disk. A failed module's stay for
    reading (as `tmp_path_retention_policy = "failed"` keeps a failed test's `tmp_path`).
    """
    made: list[Path] = []
    failed_before = request.session.testsfailed

    def mktemp(name: str) -> Path:
        made.append(tmp_path_factory.mktemp(name))
        return made[-1]

    yield mktemp
    if request.session.testsfailed == failed_before:
        for path in made:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def digits_nodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """digits split IID over node-1 and node-2 under tag `digits`."""
    out = tmp_path_factory.mktemp("digits-data")
    partition("digits", 2, "digits", out)
    return out


@pytest.fixture
def flops_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "flops-home"
    monkeypatch.setenv("FLOPS_HOME", str(home))
    return home


def flower_processes() -> set[int]:
    """PIDs of Flower and FLOps actor processes running now."""
    names = ("flower-", "flwr-", "flops-learner", "flops-aggregator", "learner.warm_clientapp")
    found = set()
    for proc in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or [])
            if proc.info["status"] != psutil.STATUS_ZOMBIE and any(n in cmdline for n in names):
                found.add(proc.info["pid"])
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture
def no_leftover_processes() -> Iterator[None]:
    """Fail the test if it leaves Flower or FLOps actor processes behind."""
    before = flower_processes()
    yield
    assert wait_until(lambda: not (flower_processes() - before), 10), (
        f"processes left behind: {[_cmdline(pid) for pid in flower_processes() - before]}"
    )


def _cmdline(pid: int) -> str:
    try:
        return f"{pid}: {' '.join(psutil.Process(pid).cmdline())[:300]}"
    except psutil.Error:
        return f"{pid}: gone"


def run_flops(
    *args: str, env: dict[str, str] | None = None, timeout: float = 600, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "flops"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
        cwd=cwd,
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Container tests (buildah, podman, a registry) run unless FLOPS_TEST_CONTAINERS=0 opts out."""
    if os.environ.get("FLOPS_TEST_CONTAINERS", "1") != "0":
        return
    skip = pytest.mark.skip(reason="FLOPS_TEST_CONTAINERS=0: not building or running images")
    for item in items:
        if "containers" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def silent_git_server() -> Iterator[str]:
    """An HTTP address that accepts connections and never answers, like a hung git server."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/user/model.git"
    finally:
        stop.set()
        thread.join(5)
        for connection in accepted:
            connection.close()
        listener.close()
