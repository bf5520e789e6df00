"""A plain, insecure loopback Flower deployment for tests and benchmarks: SuperLink, FLWR_HOME, `flwr run`.

Flower 1.41's SuperLink serves every API on one port. `flwr run` is Flower's own code called in a
subprocess (`flwr.cli.run.run.run`), as the aggregator calls it: the `flwr` console script needs a
newer typer than the one amqtt allows beside it.
"""

import sys
from pathlib import Path

from flops.processes import ManagedProcess

BIN = Path(sys.executable).parent
FLWR_RUN = """
import sys
from flwr.cli.run.run import run
run(app=sys.argv[1], superlink=sys.argv[2], federation=None, run_config_overrides=[sys.argv[3]],
    federation_config_overrides=None, stream=False, output_format="default")
"""


def flower_home(home: Path, name: str, port: int) -> dict[str, str]:
    """FLWR_HOME at `home` with SuperLink connection `name` to 127.0.0.1:`port` (insecure); its env."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{name}"\n\n[superlink.{name}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    return {"FLWR_HOME": str(home)}


def start_superlink(port: int, log_path: Path, env: dict[str, str]) -> ManagedProcess:
    return ManagedProcess(
        "superlink",
        [str(BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port", str(port),
         "--disable-runtime-dependency-installation"],
        log_path, env=env,
    )  # fmt: skip


def flwr_run_command(app: Path, superlink: str, run_config: str) -> list[str]:
    """The command that submits `app` to the SuperLink connection `superlink` with `run_config` overrides."""
    return [sys.executable, "-c", FLWR_RUN, str(app), superlink, run_config]
