"""The embedded MQTT broker: Mosquitto on loopback, with a generated password.

No anonymous access even on one machine: `flops up` makes a random password, keeps it in a
0600 file, and hands components the file's path, never the password on a command line.
"""

import getpass
import secrets
import shutil
import subprocess
from pathlib import Path

from flops.net import port_open, wait_until
from flops.processes import ManagedProcess

MQTT_USER = "flops"


class BrokerError(RuntimeError):
    """No broker can be started here."""


def mosquitto_binary() -> str | None:
    for candidate in ("mosquitto", "/usr/sbin/mosquitto"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def write_broker_config(directory: Path, port: int) -> tuple[Path, Path]:
    """Config and password files for a loopback Mosquitto; the password file path is returned."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    password_file = directory / "mqtt-password"
    if not password_file.is_file():
        password_file.write_text(secrets.token_urlsafe(24), encoding="utf-8")
        password_file.chmod(0o600)
    password = password_file.read_text(encoding="utf-8").strip()
    passwd_db = directory / "mosquitto.passwd"
    passwd_db.unlink(missing_ok=True)
    passwd_tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
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


def start_broker(directory: Path, port: int) -> tuple[ManagedProcess, Path]:
    """Start Mosquitto on 127.0.0.1:`port`; the process and the password file."""
    binary = mosquitto_binary()
    if binary is None:
        raise BrokerError(
            "Mosquitto is not installed: `apt-get install mosquitto` (or point FLOPS_MQTT_HOST at a broker)"
        )
    config, password_file = write_broker_config(directory, port)
    process = ManagedProcess("broker", [binary, "-c", str(config)], directory / "broker.log")
    started = wait_until(lambda: port_open("127.0.0.1", port) or not process.running(), 15, 0.1)
    if not started or not process.running():
        process.stop()
        raise BrokerError(f"Mosquitto did not start on 127.0.0.1:{port}:\n{process.log_tail()}")
    return process, password_file
