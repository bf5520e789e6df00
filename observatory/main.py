"""`flops-observatory`: an MLflow tracking server with FLOps's defaults, behind authentication.

Defaults are for one machine: loopback, port 7027, SQLite as backend store and a local
artefact folder served through the tracking server (clients never need the folder).
Production points the backend at PostgreSQL and the artefacts at an object store.

MLflow runs its basic-auth app with workspaces on: every request but `/health` needs
credentials (401 without), a user sees only what it was granted (`default_permission =
NO_PERMISSIONS`) and only the admin creates experiments and registered models. There are no
default credentials: at the first start the admin (`flops-admin`) gets a random password,
written with the Flask session key and the auth configuration under HOME (0700, files 0600):

    HOME/admin-credentials.json   {"username": "flops-admin", "password": ...}: the manager's
    HOME/basic_auth.ini           MLflow's auth configuration (MLFLOW_AUTH_CONFIG_PATH)
    HOME/basic_auth.db            MLflow's users and grants (FLOPS_OBSERVATORY_AUTH_DB_URI moves it)

`flops-observatory --rotate-admin-password` gives the running server's admin a new password
and rewrites the credentials file; the manager reads the file at every use.
"""

import argparse
import configparser
import os
import secrets
import sys
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel

from flops.runtime_env import process_env
from flops.tracking_auth import (
    ADMIN_USERNAME,
    TrackingAdmin,
    TrackingAuthError,
    TrackingCredentials,
    new_credentials,
    read_credentials,
    write_credentials,
)
from flops.tracking_server import AUTH_DB_FILE, admin_credentials_file

DEFAULT_PORT = 7027
DEFAULT_HOME = Path.home() / ".flops" / "observatory"
AUTH_CONFIG_FILE = "basic_auth.ini"
SECRET_KEY_FILE = "flask-secret-key"
AUTH_CACHE_TTL_S = 30
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
    auth_database_uri: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ObservatorySettings":
        return cls(
            host=env.get("FLOPS_OBSERVATORY_HOST") or "127.0.0.1",
            port=int(env.get("FLOPS_OBSERVATORY_PORT") or DEFAULT_PORT),
            home=Path(env.get("FLOPS_OBSERVATORY_HOME") or DEFAULT_HOME),
            backend_store_uri=env.get("FLOPS_OBSERVATORY_BACKEND_URI") or None,
            artifacts_destination=env.get("FLOPS_OBSERVATORY_ARTIFACTS") or None,
            auth_database_uri=env.get("FLOPS_OBSERVATORY_AUTH_DB_URI") or None,
        )


def parse_args(argv: list[str] | None = None, defaults: ObservatorySettings | None = None) -> argparse.Namespace:
    defaults = defaults or ObservatorySettings()
    parser = argparse.ArgumentParser(
        prog="flops-observatory", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default=defaults.host)
    parser.add_argument("--port", type=int, default=defaults.port)
    parser.add_argument("--home", type=Path, default=defaults.home)
    parser.add_argument(
        "--backend-store-uri", default=defaults.backend_store_uri, help="default: sqlite:///HOME/mlflow.db"
    )
    parser.add_argument(
        "--artifacts-destination", default=defaults.artifacts_destination, help="default: HOME/artifacts"
    )
    parser.add_argument(
        "--auth-database-uri",
        default=defaults.auth_database_uri,
        help=f"users and grants; default: HOME/{AUTH_DB_FILE}",
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--rotate-admin-password",
        action="store_true",
        help="give the running server's admin a new password, rewrite HOME's credentials file, and exit",
    )
    return parser.parse_args(argv)


def _private_file(path: Path) -> str:
    """The content of `path`, created 0600 with a new random secret when missing."""
    if not path.is_file():
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(secrets.token_urlsafe(32))
    return path.read_text(encoding="utf-8").strip()


def prepare_auth(home: Path, auth_database_uri: str | None = None) -> tuple[Path, TrackingCredentials, str]:
    """HOME's auth configuration, admin credentials and Flask secret key, made at the first start.

    HOME and everything the observatory writes there are private to this user (0700 / 0600).
    """
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    home.chmod(0o700)
    credentials_file = admin_credentials_file(home)
    if credentials_file.is_file():
        admin = read_credentials(credentials_file)
    elif auth_database_uri is None and (home / AUTH_DB_FILE).is_file():
        raise SystemExit(
            f"flops-observatory: {home / AUTH_DB_FILE} holds users but their admin's credentials file "
            f"{credentials_file} is gone: restore it, or remove {AUTH_DB_FILE} (its users and grants) to start afresh"
        )
    else:
        admin = new_credentials(ADMIN_USERNAME)
        write_credentials(credentials_file, admin)
    secret_key = _private_file(home / SECRET_KEY_FILE)
    config = configparser.ConfigParser()
    config["mlflow"] = {
        # Nobody sees anything unless granted; the admin's password never enters this file
        # (it comes in the server's environment, and MLflow uses it only to create the admin).
        "default_permission": "NO_PERMISSIONS",
        "database_uri": auth_database_uri or f"sqlite:///{home / AUTH_DB_FILE}",
        "admin_username": admin.username,
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
        # Without a cache every request hashes its password (PBKDF2, ~0.5 s of CPU on a small
        # machine). A changed or deleted user is seen at once by the worker that changed it,
        # by other workers within this many seconds.
        "auth_cache_ttl_seconds": str(AUTH_CACHE_TTL_S),
    }
    config_file = home / AUTH_CONFIG_FILE
    descriptor = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        config.write(handle)
    return config_file, admin, secret_key


def server_command(args: argparse.Namespace) -> list[str]:
    home: Path = args.home.resolve()
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    backend = args.backend_store_uri or f"sqlite:///{home / 'mlflow.db'}"
    artifacts = args.artifacts_destination or str(home / "artifacts")
    mlflow_cli = Path(sys.executable).parent / "mlflow"
    command = [
        str(mlflow_cli) if mlflow_cli.exists() else "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--enable-workspaces",
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


def server_env(env: Mapping[str, str], auth: tuple[Path, TrackingCredentials, str] | None = None) -> dict[str, str]:
    """`env` with FLOPS's MLflow server defaults where `env` does not set them, and the auth app's settings."""
    merged = {**SERVER_ENV_DEFAULTS, **env}
    if auth is not None:
        config_file, admin, secret_key = auth
        merged.update(
            {
                "MLFLOW_AUTH_CONFIG_PATH": str(config_file),
                "MLFLOW_AUTH_ADMIN_USERNAME": admin.username,
                "MLFLOW_AUTH_ADMIN_PASSWORD": admin.password,
                "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key,
            }
        )
    # This server's own clients (none) must not act as whoever started it.
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        merged.pop(name, None)
    return merged


def rotate_admin_password(home: Path, tracking_uri: str) -> TrackingCredentials:
    """A new admin password on the server at `tracking_uri`, then in HOME's credentials file."""
    credentials_file = admin_credentials_file(home)
    current = read_credentials(credentials_file)
    rotated = new_credentials(current.username)
    TrackingAdmin(tracking_uri, credentials_file).set_password(rotated)
    write_credentials(credentials_file, rotated)
    return rotated


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, ObservatorySettings.from_env(os.environ))
    home: Path = args.home.resolve()
    if args.rotate_admin_password:
        uri = f"http://{'127.0.0.1' if args.host in ('0.0.0.0', '::') else args.host}:{args.port}"
        try:
            rotate_admin_password(home, uri)
        except (TrackingAuthError, ValueError) as error:
            raise SystemExit(f"flops-observatory: {error}") from error
        print(f"flops-observatory: new admin password in {admin_credentials_file(home)}", flush=True)
        return
    auth = prepare_auth(home, args.auth_database_uri)
    command = server_command(args)
    print(
        f"flops-observatory: MLflow on http://{args.host}:{args.port}, basic auth; "
        f"admin credentials in {admin_credentials_file(home)}",
        flush=True,
    )
    os.umask(0o077)  # MLflow's databases and artefacts: this user's alone
    os.execve(command[0], command, server_env(process_env(), auth))


if __name__ == "__main__":
    main()
