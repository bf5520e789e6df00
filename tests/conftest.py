"""Shared fixtures: real servers on loopback with free ports, stopped after use."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from flops.actors import observatory_command
from flops.data.partition import partition
from flops.net import free_port, http_ok, wait_until
from flops.processes import ManagedProcess
from flops.runtime_env import FLOWER_OFFLINE_ENV

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
BIN = Path(sys.executable).parent

os.environ.update(FLOWER_OFFLINE_ENV)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (the observatory) with SQLite and local artefacts."""
    home = tmp_path_factory.mktemp("observatory")
    port = free_port()
    process = ManagedProcess("observatory", observatory_command("127.0.0.1", port, home), home / "observatory.log")
    uri = f"http://127.0.0.1:{port}"
    try:
        assert wait_until(lambda: http_ok(f"{uri}/health") or not process.running(), 120, 0.5), process.log_tail()
        assert process.running(), process.log_tail()
        yield uri
    finally:
        process.stop()


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
    names = ("flower-", "flwr-", "flops-learner", "flops-aggregator")
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
        f"processes left behind: {flower_processes() - before}"
    )


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
