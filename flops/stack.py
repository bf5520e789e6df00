"""The embedded stack behind `flops up`: broker, observatory and manager as background services.

Each runs in its own process group with its log under `FLOPS_HOME/stack/`; a state file
records what was started so `flops status` and `flops down` find it again. What `up` needs
from the environment comes in one `StackSettings`, read by the CLI command.
"""

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from flops.actors import manager_command
from flops.broker import MQTT_USER, BrokerKind, launch_broker, parse_broker_kind
from flops.client import ManagerClient, admin_token_file
from flops.config import flops_home
from flops.net import free_port, http_ok, wait_until
from flops.processes import ManagedProcess, group_alive, stop_group
from flops.tracking_server import ensure_tracking_server

MANAGER_PORT = 5072
OBSERVATORY_PORT = 7027
BROKER_PORT = 9027


class StackSettings(BaseModel):
    """Where the stack lives and its ports; a port left None is the usual one if free, else any free one.

    From FLOPS_HOME, FLOPS_MQTT_PORT, FLOPS_BROKER (`auto`: Mosquitto when installed, else the
    embedded amqtt broker; `mosquitto` or `embedded` to force one), FLOPS_OBSERVATORY_PORT,
    FLOPS_TRACKING_URI (an observatory elsewhere: none is started) and FLOPS_MANAGER_PORT.
    """

    home: Path
    broker_port: int | None = None
    broker: BrokerKind = "auto"
    observatory_port: int | None = None
    tracking_uri: str | None = None
    manager_port: int | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "StackSettings":
        return cls.model_validate(
            {
                "home": flops_home(env),
                "broker_port": env.get("FLOPS_MQTT_PORT") or None,
                "broker": parse_broker_kind(env.get("FLOPS_BROKER")),
                "observatory_port": env.get("FLOPS_OBSERVATORY_PORT") or None,
                "tracking_uri": env.get("FLOPS_TRACKING_URI") or None,
                "manager_port": env.get("FLOPS_MANAGER_PORT") or None,
            }
        )


def stack_dir(home: Path | None = None) -> Path:
    return (home or flops_home()) / "stack"


def state_file(home: Path | None = None) -> Path:
    return stack_dir(home) / "state.json"


def read_state(home: Path | None = None) -> dict[str, Any]:
    path = state_file(home)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _port(configured: int | None, preferred: int) -> int:
    if configured:
        return configured
    return preferred if _free(preferred) else free_port()


def _free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _broker_fits(state: dict[str, Any], settings: StackSettings) -> bool:
    """Whether the running broker is the kind `settings` asks for (`auto` takes either)."""
    kind = state.get("services", {}).get("broker", {}).get("kind", "mosquitto")
    return settings.broker in ("auto", kind)


def running_services(home: Path | None = None) -> dict[str, bool]:
    state = read_state(home)
    return {
        name: bool(info.get("pid")) and group_alive(int(info["pid"]))
        for name, info in state.get("services", {}).items()
    }


def up(settings: StackSettings) -> dict[str, Any]:
    """Start whatever of the stack is not running; the state with URLs."""
    home = settings.home
    state = read_state(home)
    if (
        state
        and all(running_services(home).values())
        and _broker_fits(state, settings)
        and ManagerClient(state["manager_url"]).health()
    ):
        return state
    down(home)
    directory = stack_dir(home)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    broker_port = _port(settings.broker_port, BROKER_PORT)
    broker = launch_broker(directory / "broker", broker_port, settings.broker)
    password_file = broker.password_file
    services: dict[str, Any] = {
        "broker": {
            "pid": broker.process.pid,
            "port": broker_port,
            "kind": broker.kind,
            "log": str(broker.process.log_path),
        }
    }
    tracking = settings.tracking_uri or f"http://127.0.0.1:{_port(settings.observatory_port, OBSERVATORY_PORT)}"
    try:
        observatory_pid = ensure_tracking_server(tracking, directory / "observatory")
    except BaseException:
        broker.process.stop()  # no state file names it yet: `flops down` would not find it
        raise
    if observatory_pid:
        services["observatory"] = {
            "pid": observatory_pid,
            "url": tracking,
            "log": str(directory / "observatory" / "observatory.log"),
        }
    manager_port = _port(settings.manager_port, MANAGER_PORT)
    env = {
        "FLOPS_HOME": str(home),
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
        "broker": broker.description,
        "admin_token_file": str(admin_token_file(home)),
        "services": services,
        "started_at": time.time(),
        "python": sys.executable,
    }
    state_file(home).write_text(json.dumps(state, indent=2), encoding="utf-8")
    if not wait_until(lambda: http_ok(url + "/") or not manager.running(), 60, 0.3):
        raise RuntimeError(f"the manager did not answer at {url}:\n{manager.log_tail()}")
    if not manager.running():
        raise RuntimeError(f"the manager failed to start:\n{manager.log_tail()}")
    return state


def down(home: Path | None = None) -> list[str]:
    """Stop the stack's services; the names of those that were running."""
    state = read_state(home)
    stopped = []
    for name in ("manager", "observatory", "broker"):
        info = state.get("services", {}).get(name)
        if info and info.get("pid") and group_alive(int(info["pid"])):
            stop_group(int(info["pid"]), grace=10)
            stopped.append(name)
    state_file(home).unlink(missing_ok=True)
    return stopped
