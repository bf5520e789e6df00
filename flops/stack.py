"""The embedded stack behind `flops up`: broker, observatory and manager as background services.

Each runs in its own process group with its log under `FLOPS_HOME/stack/`; a state file
records what was started so `flops status` and `flops down` find it again, and so a second
`flops up` starts only what is down. The manager gets the observatory's admin credentials as
a file path (`FLOPS_TRACKING_CREDENTIALS_FILE`), never the password. What `up` needs
from the environment comes in one `StackSettings`, read by the CLI command.
"""

import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import BaseModel

from flops.actors import manager_command
from flops.broker import MQTT_USER, BrokerKind, launch_broker, parse_broker_kind
from flops.client import ManagerClient, admin_token_file
from flops.config import ensure_private_home, flops_home
from flops.net import free_port, http_ok, wait_until
from flops.processes import ManagedProcess, group_alive, stop_group
from flops.tracking_auth import CREDENTIALS_FILE_ENV
from flops.tracking_server import admin_credentials_file, ensure_tracking_server

MANAGER_PORT = 5072
OBSERVATORY_PORT = 7027
BROKER_PORT = 9027


class StackSettings(BaseModel):
    """Where the stack lives and its ports; a port left None is the usual one if free, else any free one.

    From FLOPS_HOME, FLOPS_MQTT_PORT, FLOPS_BROKER (`auto`: Mosquitto when installed, else the
    embedded amqtt broker; `mosquitto` or `embedded` to force one), FLOPS_OBSERVATORY_PORT,
    FLOPS_TRACKING_URI (an observatory elsewhere: none is started; its admin's credentials file
    in FLOPS_TRACKING_CREDENTIALS_FILE) and FLOPS_MANAGER_PORT.
    """

    home: Path
    broker_port: int | None = None
    broker: BrokerKind = "auto"
    observatory_port: int | None = None
    tracking_uri: str | None = None
    tracking_credentials_file: Path | None = None
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
                "tracking_credentials_file": env.get(CREDENTIALS_FILE_ENV) or None,
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


def _stop(services: dict[str, Any], name: str) -> None:
    """Stop service `name` if it still runs, and forget it."""
    info = services.pop(name, None)
    if info and info.get("pid") and group_alive(int(info["pid"])):
        stop_group(int(info["pid"]), grace=10)


def _observatory_port(state: dict[str, Any], settings: StackSettings) -> int:
    """The port the observatory had (links and the manager keep working), else the usual one or any."""
    if settings.observatory_port:
        return settings.observatory_port
    previous = urlparse(str(state.get("tracking_url") or "")).port
    if previous and _free(previous):
        return previous
    return _port(None, OBSERVATORY_PORT)


def up(settings: StackSettings) -> dict[str, Any]:
    """Start whatever of the stack is not running and keep what runs; the state with URLs.

    After one service died (the manager killed, say) `up` starts that one alone: a broker
    and an observatory that still run keep their processes, ports and data. The manager is
    started again when it does not answer, or when the broker or the tracking address changed.
    """
    home = settings.home
    state = read_state(home)
    alive = running_services(home)
    services: dict[str, Any] = dict(state.get("services", {}))
    directory = stack_dir(home)
    ensure_private_home(home)  # 0700: the store, tokens and passwords live below
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fresh: list[str] = []
    broker_info = services.get("broker") or {}
    if not (alive.get("broker") and _broker_fits(state, settings) and broker_info.get("password_file")):
        _stop(services, "broker")
        broker_port = _port(settings.broker_port, BROKER_PORT)
        broker = launch_broker(directory / "broker", broker_port, settings.broker)
        broker_info = {
            "pid": broker.process.pid,
            "port": broker_port,
            "kind": broker.kind,
            "log": str(broker.process.log_path),
            "password_file": str(broker.password_file),
            "description": broker.description,
        }
        services["broker"] = broker_info
        fresh.append("broker")
    observatory_home = directory / "observatory"
    tracking = settings.tracking_uri or ""
    credentials_file = settings.tracking_credentials_file
    try:
        if tracking:
            _stop(services, "observatory")  # an observatory elsewhere: ours is not needed
        elif alive.get("observatory") and state.get("tracking_url"):
            tracking = str(state["tracking_url"])
        else:
            _stop(services, "observatory")
            tracking = f"http://127.0.0.1:{_observatory_port(state, settings)}"
            observatory_pid = ensure_tracking_server(tracking, observatory_home)
            if observatory_pid:
                services["observatory"] = {
                    "pid": observatory_pid,
                    "url": tracking,
                    "log": str(observatory_home / "observatory.log"),
                }
                fresh.append("observatory")
        if not settings.tracking_uri and credentials_file is None:
            credentials_file = admin_credentials_file(observatory_home)
    except BaseException:
        for name in fresh:  # no state file names them yet: `flops down` would not find them
            _stop(services, name)
        raise
    url = str(state.get("manager_url") or "")
    keep_manager = (
        alive.get("manager")
        and "broker" not in fresh
        and tracking == state.get("tracking_url")
        and bool(url)
        and ManagerClient(url).health()
    )
    manager: ManagedProcess | None = None
    if not keep_manager:
        _stop(services, "manager")
        manager_port = _port(settings.manager_port, MANAGER_PORT)
        env = {
            "FLOPS_HOME": str(home),
            "FLOPS_MQTT_HOST": "127.0.0.1",
            "FLOPS_MQTT_PORT": str(broker_info["port"]),
            "FLOPS_MQTT_USERNAME": MQTT_USER,
            "FLOPS_MQTT_PASSWORD_FILE": str(broker_info["password_file"]),
            "FLOPS_TRACKING_URI": tracking,
            "FLOPS_MANAGER_PORT": str(manager_port),
        }
        if credentials_file is not None:
            env[CREDENTIALS_FILE_ENV] = str(credentials_file)
        manager = ManagedProcess("manager", manager_command(), directory / "manager.log", env=env)
        services["manager"] = {"pid": manager.pid, "port": manager_port, "log": str(manager.log_path)}
        url = f"http://127.0.0.1:{manager_port}"
    state = {
        "manager_url": url,
        "tracking_url": tracking,
        "tracking_credentials_file": str(credentials_file) if credentials_file else None,
        "mqtt": f"127.0.0.1:{broker_info['port']}",
        "broker": broker_info.get("description") or state.get("broker"),
        "admin_token_file": str(admin_token_file(home)),
        "services": services,
        "started_at": state.get("started_at") if state and not fresh and keep_manager else time.time(),
        "python": sys.executable,
    }
    state_file(home).write_text(json.dumps(state, indent=2), encoding="utf-8")
    if manager is not None:
        started = manager
        if not wait_until(lambda: http_ok(url + "/") or not started.running(), 60, 0.3):
            raise RuntimeError(f"the manager did not answer at {url}:\n{started.log_tail()}")
        if not started.running():
            raise RuntimeError(f"the manager failed to start:\n{started.log_tail()}")
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
