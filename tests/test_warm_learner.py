"""Warm learners: one ClientApp process per run serves all of the run's messages, and no other run's.

A real SuperLink, a real `flops-learner` (SuperNode + the warm SuperExec of
`learner.warm_clientapp`) and `flwr run` of tests/warm_app twice: each reply says which process
served it, how many messages that process had served, and how many of them were another run's.
"""

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flwr
import pytest

from flops.net import free_port, port_open, wait_until
from flops.processes import ManagedProcess
from learner import warm_clientapp
from tests.plain_flower import BIN, flower_home, flwr_run_command, start_superlink

APP = Path(__file__).resolve().parent / "warm_app"
MESSAGES = 3


@pytest.fixture
def superlink_and_learner(tmp_path: Path, digits_nodes: Path) -> Iterator[dict[str, str]]:
    """An insecure loopback SuperLink with one flops-learner; the env for `flwr run` against it."""
    port = free_port()
    env = flower_home(tmp_path / "flwr-home", "local", port)
    superlink = start_superlink(port, tmp_path / "superlink.log", env)
    learner = ManagedProcess(
        "learner",
        [str(BIN / "flops-learner"), "--insecure", "--superlink", f"127.0.0.1:{port}",
         "--data-dir", str(digits_nodes / "node-1"), "--data-tags", "digits", "--node-name", "node-1"],
        tmp_path / "learner.log", env=env,
    )  # fmt: skip
    try:
        assert wait_until(lambda: port_open("127.0.0.1", port), 60), superlink.log_tail()
        yield {**os.environ, **env}
    finally:
        learner.stop()
        superlink.stop()


def flwr_run(app: Path, env: dict[str, str], out: Path) -> dict[str, Any]:
    config = f'messages={MESSAGES} out="{out}"'
    started = subprocess.run(
        flwr_run_command(app, "local", config), env=env, capture_output=True, text=True, timeout=120
    )
    assert started.returncode == 0, started.stdout + started.stderr
    assert wait_until(out.is_file, 180, 0.2), f"run did not finish: no {out}"
    return json.loads(out.read_text())


def test_a_run_keeps_one_warm_process_and_the_next_run_gets_a_fresh_one(
    no_leftover_processes: None, tmp_path: Path, superlink_and_learner: dict[str, str]
) -> None:
    app = tmp_path / "warm_app"
    shutil.copytree(APP, app)
    first = flwr_run(app, superlink_and_learner, tmp_path / "first.json")
    second = flwr_run(app, superlink_and_learner, tmp_path / "second.json")
    assert first["run"] != second["run"]
    for result in (first, second):
        replies = result["replies"]
        assert len(replies) == MESSAGES
        assert len({reply["pid"] for reply in replies}) == 1, f"one process serves a run: {replies}"
        assert [reply["served"] for reply in replies] == list(range(1, MESSAGES + 1)), "its module state lives on"
        assert all(reply["other-runs"] == 0 for reply in replies), "it never served another run"
    assert first["replies"][0]["pid"] != second["replies"][0]["pid"]


def test_the_hook_fails_loudly_when_flower_moves_the_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    module = pytest.importorskip(warm_clientapp.SUPEREXEC_MODULE)
    monkeypatch.delattr(module, "AutoExecPlugin")
    with pytest.raises(RuntimeError, match="AutoExecPlugin"):
        warm_clientapp.install()


def test_the_hook_applies_to_the_pinned_flower_only(monkeypatch: pytest.MonkeyPatch) -> None:
    module = pytest.importorskip(warm_clientapp.SUPEREXEC_MODULE)
    before = module.AutoExecPlugin
    monkeypatch.setattr(flwr, "__version__", "0.0.0")
    assert warm_clientapp.install() is False
    assert module.AutoExecPlugin is before
