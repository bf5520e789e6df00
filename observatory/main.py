"""`flops-observatory`: an MLflow tracking server with FLOps's defaults.

Defaults are for one machine: loopback, port 7027, SQLite as backend store and a local
artefact folder served through the tracking server (clients never need the folder).
Production points the backend at PostgreSQL and the artefacts at an object store.
"""

import argparse
import os
import sys
from pathlib import Path

from flops.runtime_env import process_env

DEFAULT_PORT = 7027
DEFAULT_HOME = Path.home() / ".flops" / "observatory"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="flops-observatory", description=__doc__)
    parser.add_argument("--host", default=os.environ.get("FLOPS_OBSERVATORY_HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("FLOPS_OBSERVATORY_PORT", DEFAULT_PORT)))
    parser.add_argument("--home", type=Path, default=Path(os.environ.get("FLOPS_OBSERVATORY_HOME", DEFAULT_HOME)))
    parser.add_argument(
        "--backend-store-uri",
        default=os.environ.get("FLOPS_OBSERVATORY_BACKEND_URI"),
        help="default: sqlite:///HOME/mlflow.db",
    )
    parser.add_argument(
        "--artifacts-destination",
        default=os.environ.get("FLOPS_OBSERVATORY_ARTIFACTS"),
        help="default: HOME/artifacts",
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


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    command = server_command(args)
    print(f"flops-observatory: MLflow on http://{args.host}:{args.port}", flush=True)
    os.execve(command[0], command, process_env())


if __name__ == "__main__":
    main()
