"""`flops up` after a manager crash starts only what is down, and wires MLflow's admin to the manager;
`flops demo` starts no process with `--insecure`.

The real embedded stack (broker, observatory, manager) in a private FLOPS_HOME on free ports:
the manager is SIGKILLed, a second `flops up` must leave the healthy broker and observatory
running (the same processes) and start a manager that answers and can reach MLflow.
"""

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from flops.net import free_port, wait_until
from flops.processes import group_alive
from flops.tracking_auth import read_credentials
from tests.conftest import BIN, run_flops

pytestmark = pytest.mark.slow


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    home = tmp_path / "flops-home"
    env = {
        "FLOPS_HOME": str(home),
        "FLOPS_MQTT_PORT": str(free_port()),
        "FLOPS_OBSERVATORY_PORT": str(free_port()),
        "FLOPS_MANAGER_PORT": str(free_port()),
        "FLOPS_TRACKING_URI": "",
        "FLOPS_TRACKING_CREDENTIALS_FILE": "",
        "MLFLOW_TRACKING_USERNAME": "",
        "MLFLOW_TRACKING_PASSWORD": "",
        "FLOPS_TOKEN": "",
        "FLOPS_MANAGER_URL": "",
    }
    try:
        yield env
    finally:
        run_flops("down", env=env, timeout=120)


def state(env: dict[str, str]) -> dict[str, object]:
    return dict(json.loads((Path(env["FLOPS_HOME"]) / "stack" / "state.json").read_text()))


def pids(env: dict[str, str]) -> dict[str, int]:
    services = state(env)["services"]
    assert isinstance(services, dict)
    return {name: int(info["pid"]) for name, info in services.items()}


def test_up_after_a_manager_crash_restarts_the_manager_alone(stack_env: dict[str, str]) -> None:
    first = run_flops("up", env=stack_env, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    before = pids(stack_env)
    assert set(before) == {"broker", "observatory", "manager"}
    credentials_file = Path(str(state(stack_env)["tracking_credentials_file"]))
    admin = read_credentials(credentials_file)
    assert f"password in {credentials_file}" in first.stdout and admin.password not in first.stdout + first.stderr

    os.kill(before["manager"], signal.SIGKILL)
    assert wait_until(lambda: not group_alive(before["manager"]), 10)

    second = run_flops("up", env=stack_env, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    after = pids(stack_env)
    assert after["broker"] == before["broker"] and after["observatory"] == before["observatory"]
    assert after["manager"] != before["manager"] and group_alive(after["manager"])
    assert group_alive(after["broker"]) and group_alive(after["observatory"])

    # The new manager answers, holds MLflow's admin file (not the password) and shows the login.
    token = Path(str(state(stack_env)["admin_token_file"])).read_text().strip()
    url = str(state(stack_env)["manager_url"])
    login = requests.get(f"{url}/api/flops/tracking", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert login.status_code == 200, login.text
    assert login.json()["credentials_file"] == str(credentials_file) and login.json()["password"] is None
    assert f"dashboard:   {url}/ui" in first.stdout
    page = requests.get(f"{url}/ui/projects", timeout=30, allow_redirects=False)  # no session: the login form
    assert page.status_code == 303 and page.headers["Location"].startswith("/ui/login")
    tracking = str(state(stack_env)["tracking_url"])
    assert requests.get(f"{tracking}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10).status_code == 401
    allowed = requests.get(
        f"{tracking}/api/2.0/mlflow/experiments/search?max_results=1", auth=(admin.username, admin.password), timeout=10
    )
    assert allowed.status_code == 200

    third = run_flops("up", env=stack_env, timeout=120)  # everything runs: nothing is started
    assert third.returncode == 0 and pids(stack_env) == after


def test_the_default_demo_starts_no_process_with_insecure(stack_env: dict[str, str]) -> None:
    """`flops demo` as a user runs it: every process of the stack's trees, sampled while it trains."""
    demo = subprocess.Popen(
        [str(BIN / "flops"), "demo", "--rounds", "1"], env={**os.environ, **stack_env},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen: dict[int, list[str]] = {}
    deadline = time.monotonic() + 900
    try:
        while demo.poll() is None and time.monotonic() < deadline:
            roots = [demo.pid]
            if (Path(stack_env["FLOPS_HOME"]) / "stack" / "state.json").is_file():
                roots += list(pids(stack_env).values())
            for root in roots:
                try:
                    tree = [psutil.Process(root), *psutil.Process(root).children(recursive=True)]
                except psutil.Error:
                    continue
                for process in tree:
                    try:  # short-lived processes (builds, checks) end between listing and reading
                        seen[process.pid] = process.cmdline()
                    except psutil.Error:
                        continue
            time.sleep(0.5)
    finally:
        if demo.poll() is None:
            demo.kill()
        output = demo.communicate(timeout=60)[0]
    assert demo.returncode == 0, output[-3000:]
    names = {Path(part).name for command in seen.values() for part in command}  # sandboxed: after bwrap's options
    # The aggregator's SuperExec, and a learner's SuperNode (with its SuperExec in a thread).
    assert {"flower-superexec", "learner.warm_clientapp", "supernode"} <= names, names
    offenders = [command for command in seen.values() if "--insecure" in command]
    assert not offenders, offenders
