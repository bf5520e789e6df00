"""The stack's MQTT broker on loopback, with a generated password: Mosquitto, or amqtt embedded.

No anonymous access even on one machine: `flops up` makes a random password, keeps it in a
0600 file, and hands components the file's path, never the password on a command line.

Which broker runs is `FLOPS_BROKER` (read in `flops.stack.StackSettings`): `auto` (the default)
prefers Mosquitto and falls back to the embedded amqtt broker (`flops.embedded_broker`, the
`broker` extra) when no `mosquitto` binary is found; `mosquitto` and `embedded` force one.
"""

import getpass
import importlib.metadata
import importlib.util
import json
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from packaging.requirements import Requirement

from flops.net import port_open, wait_until
from flops.processes import ManagedProcess

MQTT_USER = "flops"
BrokerKind = Literal["auto", "mosquitto", "embedded"]
BROKER_KINDS: tuple[str, ...] = get_args(BrokerKind)
# The amqtt releases the embedded broker is verified with (0.12 needs a typer that flwr refuses).
AMQTT_REQUIREMENT = "amqtt>=0.11.4,<0.12"
INSTALL_MOSQUITTO = "`apt-get install mosquitto` (it brings mosquitto_passwd)"
INSTALL_AMQTT = f"`.venv/bin/pip install '{AMQTT_REQUIREMENT}'` (the `broker` extra of FLOps)"


class BrokerError(RuntimeError):
    """No broker can be started here."""


@dataclass
class RunningBroker:
    """A started broker: its process, the password file clients read, and what it is."""

    process: ManagedProcess
    port: int
    password_file: Path
    kind: Literal["mosquitto", "embedded"]
    description: str


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
        binary, passwd = mosquitto_binary(), mosquitto_passwd_binary()
        if binary and passwd:
            return "mosquitto", binary
        if kind == "mosquitto":
            missing = "mosquitto" if not binary else "mosquitto_passwd"
            raise BrokerError(
                f"FLOPS_BROKER=mosquitto, but {missing} is not installed: {INSTALL_MOSQUITTO}, "
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


def write_broker_config(directory: Path, port: int) -> tuple[Path, Path]:
    """Config and password files for a loopback Mosquitto; the password file path is returned."""
    password_file = ensure_password_file(directory)
    password = password_file.read_text(encoding="utf-8").strip()
    passwd_db = directory / "mosquitto.passwd"
    passwd_db.unlink(missing_ok=True)
    passwd_tool = mosquitto_passwd_binary() or "/usr/bin/mosquitto_passwd"
    subprocess.run([passwd_tool, "-b", "-c", str(passwd_db), MQTT_USER, password], check=True, capture_output=True)
    passwd_db.chmod(0o600)
    config = directory / "mosquitto.conf"
    config.write_text(
        "\n".join(
            [
                f"listener {port} 127.0.0.1",
                # Keep the starting user: Mosquitto started as root would otherwise switch to
                # `mosquitto`, which cannot read FLOps's private (0600) files.
                f"user {getpass.getuser()}",
                "allow_anonymous false",
                f"password_file {passwd_db}",
                "persistence false",
                "max_queued_messages 10000",
                "log_dest stdout",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return config, password_file


def write_embedded_config(directory: Path, port: int) -> tuple[Path, Path]:
    """Config (0600 JSON) and password files for the embedded broker; no secret in the config."""
    password_file = ensure_password_file(directory)
    config = directory / "embedded-broker.json"
    config.write_text(
        json.dumps({"host": "127.0.0.1", "port": port, "username": MQTT_USER, "password_file": str(password_file)}),
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
        reason = "FLOPS_BROKER=embedded" if kind == "embedded" else "no Mosquitto found"
        description = f"embedded amqtt {detail} broker ({reason})"
    name = "Mosquitto" if chosen == "mosquitto" else "the embedded MQTT broker"
    process = ManagedProcess("broker", command, directory / "broker.log")
    started = wait_until(lambda: port_open("127.0.0.1", port) or not process.running(), 30, 0.1)
    if not started or not process.running():
        process.stop()
        raise BrokerError(f"{name} did not start on 127.0.0.1:{port}:\n{process.log_tail()}")
    return RunningBroker(process, port, password_file, chosen, description)


def start_broker(directory: Path, port: int, kind: BrokerKind = "auto") -> tuple[ManagedProcess, Path]:
    """Start a broker on 127.0.0.1:`port`; the process and the password file."""
    broker = launch_broker(directory, port, kind)
    return broker.process, broker.password_file
