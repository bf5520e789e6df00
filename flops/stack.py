"""The embedded stack behind `flops up`: broker, observatory and manager as background services.

Each runs in its own process group with its log under `FLOPS_HOME/stack/`; a state file
records what was started so `flops status` and `flops down` find it again.
"""

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from flops.actors import manager_command
from flops.broker import MQTT_USER, start_broker
from flops.client import ManagerClient, admin_token_file
from flops.config import flops_home
from flops.net import free_port, http_ok, wait_until
from flops.processes import ManagedProcess, group_alive, stop_group
from flops.tracking_server import ensure_tracking_server

MANAGER_PORT = 5072
OBSERVATORY_PORT = 7027
BROKER_PORT = 9027


def stack_dir() -> Path:
    return flops_home() / "stack"


def state_file() -> Path:
    return stack_dir() / "state.json"


def read_state() -> dict[str, Any]:
    path = state_file()
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _port(env: str, preferred: int) -> int:
    if os.environ.get(env):
        return int(os.environ[env])
    return preferred if _free(preferred) else free_port()


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def running_services() -> dict[str, bool]:
    state = read_state()
    return {
        name: bool(info.get("pid")) and group_alive(int(info["pid"]))
        for name, info in state.get("services", {}).items()
    }


def up() -> dict[str, Any]:
    """Start whatever of the stack is not running; the state with URLs."""
    state = read_state()
    if state and all(running_services().values()) and ManagerClient(state["manager_url"]).health():
        return state
    down()
    directory = stack_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    broker_port = _port("FLOPS_MQTT_PORT", BROKER_PORT)
    broker, password_file = start_broker(directory / "broker", broker_port)
    services: dict[str, Any] = {"broker": {"pid": broker.pid, "port": broker_port, "log": str(broker.log_path)}}
    tracking = (
        os.environ.get("FLOPS_TRACKING_URI") or f"http://127.0.0.1:{_port('FLOPS_OBSERVATORY_PORT', OBSERVATORY_PORT)}"
    )
    observatory_pid = ensure_tracking_server(tracking, directory / "observatory")
    if observatory_pid:
        services["observatory"] = {
            "pid": observatory_pid,
            "url": tracking,
            "log": str(directory / "observatory" / "observatory.log"),
        }
    manager_port = _port("FLOPS_MANAGER_PORT", MANAGER_PORT)
    env = {
        "FLOPS_HOME": str(flops_home()),
        "FLOPS_MQTT_HOST": "127.0.0.1",
        "FLOPS_MQTT_PORT": str(broker_port),
        "FLOPS_MQTT_USERNAME": MQTT_USER,
        "FLOPS_MQTT_PASSWORD_FILE": str(password_file),
        "FLOPS_TRACKING_URI": tracking,
        "FLOPS_MANAGER_PORT": str(manager_port),
    }
    manager = ManagedProcess("manager", manager_command(), directory / "manager.log", env=env)
    services["manager"] = {"pid": manager.pid, "port": manager_port, "log": str(manager.log_path)}
    url = f"http://127.0.0.1:{manager_port}"
    state = {
        "manager_url": url,
        "tracking_url": tracking,
        "mqtt": f"127.0.0.1:{broker_port}",
        "admin_token_file": str(admin_token_file()),
        "services": services,
        "started_at": time.time(),
        "python": sys.executable,
    }
    state_file().write_text(json.dumps(state, indent=2), encoding="utf-8")
    if not wait_until(lambda: http_ok(url + "/") or not manager.running(), 60, 0.3):
        raise RuntimeError(f"the manager did not answer at {url}:\n{manager.log_tail()}")
    if not manager.running():
        raise RuntimeError(f"the manager failed to start:\n{manager.log_tail()}")
    return state


def down() -> list[str]:
    """Stop the stack's services; the names of those that were running."""
    state = read_state()
    stopped = []
    for name in ("manager", "observatory", "broker"):
        info = state.get("services", {}).get(name)
        if info and info.get("pid") and group_alive(int(info["pid"])):
            stop_group(int(info["pid"]), grace=10)
            stopped.append(name)
    state_file().unlink(missing_ok=True)
    return stopped
