"""The stack's MQTT broker on loopback: Mosquitto, or amqtt embedded; per-actor users, persistent.

No anonymous access even on one machine: `flops up` makes a random password for the manager
(user `flops`), keeps it in a 0600 file, and hands the manager the file's path, never the
password on a command line. Every actor gets its own user, made by the manager through the
dynamic-security API (`flops.mqtt_acl`); both brokers keep those users hashed in
`dynamic-security.json` next to the config, and persist their sessions and queued QoS 1
messages under the same folder, so a restarted broker keeps both.

Which broker runs is `FLOPS_BROKER` (read in `flops.stack.StackSettings`): `auto` (the default)
prefers Mosquitto (with its dynamic-security plugin) and falls back to the embedded amqtt
broker (`flops.embedded_broker`, the `broker` extra) when either is missing; `mosquitto` and
`embedded` force one.
"""

import getpass
import glob
import importlib.metadata
import importlib.util
import json
import os
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from packaging.requirements import Requirement

from flops.mqtt_acl import MANAGER_USER, with_manager
from flops.net import wait_until
from flops.processes import ManagedProcess

MQTT_USER = MANAGER_USER
DYNSEC_FILE = "dynamic-security.json"
# Where Debian, Alpine (the eclipse-mosquitto image) and source builds put the plugin.
DYNSEC_PLUGIN_PATHS = (
    "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/*-linux-gnu/mosquitto_dynamic_security.so",
    "/usr/lib/mosquitto_dynamic_security.so",
    "/usr/local/lib/mosquitto_dynamic_security.so",
)
BrokerKind = Literal["auto", "mosquitto", "embedded"]
BROKER_KINDS: tuple[str, ...] = get_args(BrokerKind)
# The amqtt releases the embedded broker is verified with (0.12 needs a typer that flwr refuses).
AMQTT_REQUIREMENT = "amqtt>=0.11.4,<0.12"
INSTALL_MOSQUITTO = "`apt-get install mosquitto` (it brings the dynamic-security plugin)"
INSTALL_AMQTT = f"`.venv/bin/pip install '{AMQTT_REQUIREMENT}'` (the `broker` extra of FLOps)"


class BrokerError(RuntimeError):
    """No broker can be started here."""


@dataclass
class RunningBroker:
    """A started broker: its process, the manager's password file, and what it is."""

    process: ManagedProcess
    port: int
    password_file: Path
    kind: Literal["mosquitto", "embedded"]
    description: str
    directory: Path | None = None


def parse_broker_kind(value: str | None) -> BrokerKind:
    """`FLOPS_BROKER`'s value as a kind; unset or empty is `auto`."""
    kind = (value or "auto").strip().lower()
    if kind not in BROKER_KINDS:
        raise BrokerError(f"FLOPS_BROKER={value!r} is not one of {', '.join(BROKER_KINDS)}")
    return kind  # type: ignore[return-value]


def _installed(name: str, debian_path: str) -> str | None:
    """`name` on PATH, else where Debian's package puts it (sbin is often not on a user's PATH)."""
    return shutil.which(name) or shutil.which(debian_path)


def mosquitto_binary() -> str | None:
    return _installed("mosquitto", "/usr/sbin/mosquitto")


def mosquitto_passwd_binary() -> str | None:
    return _installed("mosquitto_passwd", "/usr/bin/mosquitto_passwd")


def dynsec_plugin() -> str | None:
    """Mosquitto's dynamic-security plugin (FLOPS_MOSQUITTO_DYNSEC_PLUGIN, else where packages put it)."""
    configured = os.environ.get("FLOPS_MOSQUITTO_DYNSEC_PLUGIN")
    if configured:
        return configured if Path(configured).is_file() else None
    for pattern in DYNSEC_PLUGIN_PATHS:
        found = sorted(glob.glob(pattern))
        if found:
            return found[0]
    return None


def amqtt_version() -> str | None:
    """The installed amqtt's version, or None when it is not installed."""
    if importlib.util.find_spec("amqtt") is None:
        return None
    try:
        return importlib.metadata.version("amqtt")
    except importlib.metadata.PackageNotFoundError:
        return None


def _amqtt_supported(version: str) -> bool:
    return Requirement(AMQTT_REQUIREMENT).specifier.contains(version, prereleases=True)


def choose_broker(kind: BrokerKind = "auto") -> tuple[Literal["mosquitto", "embedded"], str]:
    """Which broker to start for `kind`: ("mosquitto", its binary) or ("embedded", amqtt's version)."""
    if kind in ("auto", "mosquitto"):
        binary, plugin = mosquitto_binary(), dynsec_plugin()
        if binary and plugin:
            return "mosquitto", binary
        if kind == "mosquitto":
            missing = "mosquitto" if not binary else "its dynamic-security plugin (mosquitto_dynamic_security.so)"
            raise BrokerError(
                f"FLOPS_BROKER=mosquitto, but {missing} is not installed: {INSTALL_MOSQUITTO} "
                "(or set FLOPS_MOSQUITTO_DYNSEC_PLUGIN to the plugin's path), "
                "or FLOPS_BROKER=embedded for the embedded broker"
            )
    version = amqtt_version()
    if version and _amqtt_supported(version):
        return "embedded", version
    if version:
        problem = f"amqtt {version} is installed, but the embedded broker is verified with {AMQTT_REQUIREMENT}"
    else:
        problem = "the Python package amqtt is not installed"
    if kind == "embedded":
        raise BrokerError(f"FLOPS_BROKER=embedded, but {problem}: {INSTALL_AMQTT}")
    raise BrokerError(
        f"no MQTT broker can be started: Mosquitto is not installed and {problem}. "
        f"Install either: {INSTALL_MOSQUITTO}, or {INSTALL_AMQTT}"
    )


def ensure_password_file(directory: Path) -> Path:
    """The broker's password file (0600), made with a random password on first use."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    password_file = directory / "mqtt-password"
    if not password_file.is_file():
        password_file.write_text(secrets.token_urlsafe(24), encoding="utf-8")
    password_file.chmod(0o600)
    return password_file


def write_dynsec_config(directory: Path, password: str) -> Path:
    """The brokers' user database (0600): the manager with `password`, actor users kept as they are."""
    path = directory / DYNSEC_FILE
    current = None
    if path.is_file():
        try:
            current = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            current = None  # unreadable: start again from the manager alone
    partial = path.with_suffix(".tmp")
    partial.write_text(json.dumps(with_manager(current, password), indent=2), encoding="utf-8")
    partial.chmod(0o600)
    partial.replace(path)
    return path


def write_broker_config(directory: Path, port: int) -> tuple[Path, Path]:
    """Config, user database and password file for a loopback Mosquitto; the password file path is returned."""
    password_file = ensure_password_file(directory)
    password = password_file.read_text(encoding="utf-8").strip()
    dynsec = write_dynsec_config(directory, password)
    plugin = dynsec_plugin()
    if plugin is None:
        raise BrokerError(f"Mosquitto's dynamic-security plugin is not installed: {INSTALL_MOSQUITTO}")
    config = directory / "mosquitto.conf"
    config.write_text(
        "\n".join(
            [
                f"listener {port} 127.0.0.1",
                # Keep the starting user: Mosquitto started as root would otherwise switch to
                # `mosquitto`, which cannot read FLOps's private (0600) files.
                f"user {getpass.getuser()}",
                "allow_anonymous false",
                f"plugin {plugin}",
                f"plugin_opt_config_file {dynsec}",
                # Sessions and queued QoS 1 messages survive a restart: saved on every change.
                "persistence true",
                f"persistence_location {directory}/",
                "autosave_on_changes true",
                "autosave_interval 1",
                "max_queued_messages 10000",
                "log_dest stdout",
                "log_type error",
                "log_type warning",
                "log_type notice",
                "log_type information",
                "log_type subscribe",
                "log_type debug",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return config, password_file


def write_embedded_config(directory: Path, port: int) -> tuple[Path, Path]:
    """Config (0600 JSON), user database and password file for the embedded broker; no secret in the config."""
    password_file = ensure_password_file(directory)
    dynsec = write_dynsec_config(directory, password_file.read_text(encoding="utf-8").strip())
    config = directory / "embedded-broker.json"
    config.write_text(
        json.dumps(
            {
                "host": "127.0.0.1",
                "port": port,
                "dynsec_file": str(dynsec),
                "sessions_file": str(directory / "embedded-sessions.json"),
            }
        ),
        encoding="utf-8",
    )
    config.chmod(0o600)
    return config, password_file


def embedded_broker_command(config: Path) -> list[str]:
    return [sys.executable, "-m", "flops.embedded_broker", str(config)]


def launch_broker(directory: Path, port: int, kind: BrokerKind = "auto") -> RunningBroker:
    """Start the broker `kind` chooses on 127.0.0.1:`port`, its files under `directory`."""
    chosen, detail = choose_broker(kind)
    if chosen == "mosquitto":
        config, password_file = write_broker_config(directory, port)
        command = [detail, "-c", str(config)]
        description = f"Mosquitto ({detail})"
    else:
        config, password_file = write_embedded_config(directory, port)
        command = embedded_broker_command(config)
        reason = "FLOPS_BROKER=embedded" if kind == "embedded" else "no Mosquitto found, or no dynamic-security plugin"
        description = f"embedded amqtt {detail} broker ({reason})"
    name = "Mosquitto" if chosen == "mosquitto" else "the embedded MQTT broker"
    process = ManagedProcess("broker", command, directory / "broker.log")
    started = wait_until(lambda: process.listens_on(port) or not process.running(), 30, 0.1)
    if not started or not process.running():
        process.stop()
        raise BrokerError(f"{name} did not start on 127.0.0.1:{port}:\n{process.log_tail()}")
    return RunningBroker(process, port, password_file, chosen, description, directory)


def start_broker(directory: Path, port: int, kind: BrokerKind = "auto") -> tuple[ManagedProcess, Path]:
    """Start a broker on 127.0.0.1:`port`; the process and the password file."""
    broker = launch_broker(directory, port, kind)
    return broker.process, broker.password_file
