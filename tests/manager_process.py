"""A real manager process for end-to-end tests, and what they submit to it."""

import os
import secrets
import signal
import time
from pathlib import Path
from typing import Any

import requests

from flops.actors import manager_command
from flops.broker import MQTT_USER, start_broker
from flops.net import free_port, http_ok, wait_until
from flops.processes import ManagedProcess
from flops_manager.sources import join_roots
from tests.git_repos import git, make_git_repo

__all__ = ["FINAL", "Manager", "git", "make_git_repo", "repo_root_above", "sla"]

FINAL = ("completed", "failed", "cancelled")


def repo_root_above(path: Path) -> Path:
    """pytest's temporary root above `path` (where tests make their repositories), else its parent."""
    for parent in path.resolve().parents:
        if parent.name.startswith("pytest-") and not parent.name.startswith("pytest-of-"):
            return parent
    return path.resolve().parent


class Manager:
    """A real manager process with its broker; restartable."""

    def __init__(self, home: Path, tracking: str, extra_env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = "flops_" + secrets.token_urlsafe(24)
        broker_port = free_port()
        self.broker, password_file = start_broker(home / "broker", broker_port)
        self.env = {
            "FLOPS_HOME": str(home),
            "FLOPS_MQTT_HOST": "127.0.0.1",
            "FLOPS_MQTT_PORT": str(broker_port),
            "FLOPS_MQTT_USERNAME": MQTT_USER,
            "FLOPS_MQTT_PASSWORD_FILE": str(password_file),
            "FLOPS_TRACKING_URI": tracking,
            "FLOPS_MANAGER_PORT": str(self.port),
            "FLOPS_ADMIN_TOKEN": self.admin_token,
            "FLOPS_RECONCILE_INTERVAL": "0.5",
            # The tests' git repositories are local folders under pytest's temporary root: the
            # manager takes local sources only under roots it is given (never its own home).
            "FLOPS_REPO_LOCAL_ROOTS": join_roots([repo_root_above(home)]),
            **(extra_env or {}),
        }
        self.process: ManagedProcess | None = None
        self.start()

    def start(self) -> None:
        process = ManagedProcess("manager", manager_command(), self.home / "manager.log", env=self.env)
        self.process = process
        assert wait_until(lambda: http_ok(self.url + "/") or not process.running(), 60), self.log()

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)  # the manager alone, not its FL actors
        self.process.wait(10)

    def log(self) -> str:
        return (self.home / "manager.log").read_text(errors="replace")[-4000:]

    def call(self, method: str, path: str, token: str | None = "admin", **kwargs: Any) -> requests.Response:
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {self.admin_token if token == 'admin' else token}"
        return requests.request(method, self.url + path, headers=headers, timeout=60, **kwargs)

    def wait_for(self, project_id: str, statuses: tuple[str, ...], timeout: float = 400) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            project = self.call("GET", f"/api/flops/projects/{project_id}").json()
            if project["status"] in statuses:
                return project
            time.sleep(0.5)
        raise AssertionError(f"{project_id} stuck at {project['status']}:\n{self.log()}")

    def add_mock_nodes(self, customer: str | None = None, partitions: int = 2) -> None:
        """Node folders with digits under tag `digits`, made by the manager's mocks endpoint."""
        data = {"dataset_name": "digits", "number_of_partitions": partitions, "data_tag": "digits"}
        body: dict[str, Any] = {"mock_data_configuration": data}
        if customer:
            body["customerID"] = customer
        answer = self.call("POST", "/api/flops/mocks", json=body)
        assert answer.status_code == 200, answer.text

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
        self.broker.stop()


def sla(repo: Path, rounds: int = 3, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "customerID": "Admin",
        "ml_repo_url": str(repo),
        "ml_model_flavor": "sklearn",
        "training_configuration": {
            "data_tags": ["digits"], "training_rounds": rounds,
            "min_available_clients": 2, "min_fit_clients": 2, "min_evaluate_clients": 2,
        },
    }  # fmt: skip
    document.update(extra)
    return document
