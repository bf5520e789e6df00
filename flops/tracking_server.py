"""Makes sure an MLflow tracking server answers, starting the observatory when it may; links into its UI.

Only a loopback HTTP address is started automatically: a remote tracking server that does
not answer is a configuration error for the user to fix, not something to paper over. An
observatory requires credentials; its admin's are in `admin_credentials_file(home)`.
"""

import os
import signal
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlparse

import requests

from flops.actors import observatory_command
from flops.net import http_ok, wait_until
from flops.processes import ManagedProcess
from flops.tracking_auth import CREDENTIALS_FILE_ENV, MLFLOW_USERNAME_ENV, read_credentials

LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
START_TIMEOUT_S = 90.0
# MLflow 3's UI has two modes, "GenAI" (its default, per browser) and "Model training"; this
# query opens a link in the latter, on the runs table, whatever the browser last chose. The
# observatory runs with workspaces (so only its admin creates experiments), all in MLflow's
# `default` one; a user granted single experiments has no workspace to pick, so links name it.
UI_MODEL_TRAINING_QUERY = "workflowType=machine_learning&workspace=default"
ADMIN_CREDENTIALS_FILE = "admin-credentials.json"
AUTH_DB_FILE = "basic_auth.db"


class TrackingServerError(RuntimeError):
    """The tracking server neither answers nor can be started here."""


def experiment_url(tracking_uri: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of an experiment, in the UI's model-training mode."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs?{UI_MODEL_TRAINING_QUERY}"


def run_url(tracking_uri: str, experiment_id: str, run_id: str) -> str:
    """The MLflow UI's page of one run, in the UI's model-training mode."""
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{UI_MODEL_TRAINING_QUERY}"


def admin_credentials_file(home: Path) -> Path:
    """Where the observatory with home `home` keeps its admin's credentials (JSON, 0600)."""
    return home / ADMIN_CREDENTIALS_FILE


def local_credentials_env(uri: str, home: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """For a process of this user that tracks to `uri`: the admin credentials file of an observatory
    FLOps started here for it (`flops train`'s or the stack's), unless `env` names credentials already."""
    env = os.environ if env is None else env
    if env.get(CREDENTIALS_FILE_ENV) or env.get(MLFLOW_USERNAME_ENV) or urlparse(uri).hostname not in LOOPBACK_HOSTS:
        return {}
    for candidate in (home / "observatory", home / "stack" / "observatory"):
        path = admin_credentials_file(candidate)
        try:
            credentials = read_credentials(path)
            answer = requests.get(
                uri.rstrip("/") + "/api/2.0/mlflow/users/current",
                auth=(credentials.username, credentials.password),
                timeout=5,
            )
        except (ValueError, requests.RequestException):
            continue
        if answer.status_code == 200:
            return {CREDENTIALS_FILE_ENV: str(path)}
    return {}


def tracking_healthy(uri: str) -> bool:
    return http_ok(uri.rstrip("/") + "/health")


def ensure_tracking_server(uri: str, home: Path) -> int | None:
    """Start the observatory for `uri` unless it answers; the started PID, or None."""
    if tracking_healthy(uri):
        return None
    parsed = urlparse(uri)
    if parsed.scheme != "http" or parsed.hostname not in LOOPBACK_HOSTS or not parsed.port:
        raise TrackingServerError(
            f"no MLflow tracking server answers at {uri}; start it, or use a loopback "
            "address such as http://127.0.0.1:7027 so FLOps starts one for you"
        )
    process = ManagedProcess(
        "observatory",
        observatory_command(parsed.hostname, parsed.port, home),
        home / "observatory.log",
    )
    (home / "observatory.pid").write_text(str(process.pid), encoding="utf-8")
    if not wait_until(lambda: tracking_healthy(uri) or not process.running(), START_TIMEOUT_S, 0.5):
        process.stop()
        raise TrackingServerError(f"the observatory did not answer at {uri} within {START_TIMEOUT_S:.0f} s")
    if not process.running():
        raise TrackingServerError(f"the observatory failed to start:\n{process.log_tail()}")
    return process.pid


def stop_tracking_server(home: Path) -> bool:
    """Stop an observatory started by `ensure_tracking_server`; whether one was running."""
    pid_file = home / "observatory.pid"
    if not pid_file.is_file():
        return False
    pid = int(pid_file.read_text(encoding="utf-8").strip())
    pid_file.unlink()
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True
