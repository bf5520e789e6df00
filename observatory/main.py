"""`flops-observatory`: an MLflow tracking server with FLOps's defaults.

Defaults are for one machine: loopback, port 7027, SQLite as backend store and a local
artefact folder served through the tracking server (clients never need the folder).
Production points the backend at PostgreSQL and the artefacts at an object store.
"""

import argparse
import os
import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from flops.runtime_env import process_env

DEFAULT_PORT = 7027
DEFAULT_HOME = Path.home() / ".flops" / "observatory"
# MLflow 3 starts eight job-runner processes for its GenAI features (judges, issue detection,
# trace roll-ups), about 1.5 GB together, unless told not to. Model training uses none of
# them; a deployment that wants them sets MLFLOW_SERVER_ENABLE_JOB_EXECUTION=true.
SERVER_ENV_DEFAULTS: Mapping[str, str] = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class ObservatorySettings(BaseModel):
    """The defaults of the command line, from `FLOPS_OBSERVATORY_*` (read once, in `main`)."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    home: Path = DEFAULT_HOME
    backend_store_uri: str | None = None
    artifacts_destination: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ObservatorySettings":
        return cls(
            host=env.get("FLOPS_OBSERVATORY_HOST") or "127.0.0.1",
            port=int(env.get("FLOPS_OBSERVATORY_PORT") or DEFAULT_PORT),
            home=Path(env.get("FLOPS_OBSERVATORY_HOME") or DEFAULT_HOME),
            backend_store_uri=env.get("FLOPS_OBSERVATORY_BACKEND_URI") or None,
            artifacts_destination=env.get("FLOPS_OBSERVATORY_ARTIFACTS") or None,
        )


def parse_args(argv: list[str] | None = None, defaults: ObservatorySettings | None = None) -> argparse.Namespace:
    defaults = defaults or ObservatorySettings()
    parser = argparse.ArgumentParser(prog="flops-observatory", description=__doc__)
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--home", type=Path, default=defaults.home)
    parser.add_argument(
        "--backend-store-uri", default=defaults.backend_store_uri, help="default: sqlite:///HOME/mlflow.db"
    )
    parser.add_argument(
        "--artifacts-destination", default=defaults.artifacts_destination, help="default: HOME/artifacts"
    )
    parser.add_argument("--workers", type=int, default=1)
    return parser.parse_args(argv)


def server_command(args: argparse.Namespace) -> list[str]:
    home: Path = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    backend = args.backend_store_uri or f"sqlite:///{home / 'mlflow.db'}"
    artifacts = args.artifacts_destination or str(home / "artifacts")
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    command = [
        str(mlflow_cli) if mlflow_cli.exists() else "mlflow",
        "server",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--backend-store-uri",
        backend,
        "--artifacts-destination",
        artifacts,
        "--serve-artifacts",
        "--workers",
        str(args.workers),
    ]
    if args.host not in ("127.0.0.1", "localhost"):
        command += ["--allowed-hosts", "*"]
    return command


def server_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with FLOps's MLflow server defaults where `env` does not set them."""
    return {**SERVER_ENV_DEFAULTS, **env}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, ObservatorySettings.from_env(os.environ))
    command = server_command(args)
    print(f"flops-observatory: MLflow on http://{args.host}:{args.port}", flush=True)
    os.execve(command[0], command, server_env(process_env()))


if __name__ == "__main__":
    main()
