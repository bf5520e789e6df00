"""A small client for the manager's REST API, used by the CLI (and by anyone scripting FLOps).

Where to talk to and with which token: `FLOPS_MANAGER_URL`, `FLOPS_TOKEN` or
`FLOPS_TOKEN_FILE`; on the machine that runs `flops up`, the local admin token file.
`ManagerClient.from_env` reads them (the CLI, once per command); the constructor reads nothing.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from flops.config import flops_home

DEFAULT_MANAGER_URL = "http://127.0.0.1:5072"
# A dry run fetches and checks the repository before it answers (the manager bounds it).
DRY_RUN_TIMEOUT_S = 300.0


class ManagerError(RuntimeError):
    def __init__(self, status: int, message: str, details: Any = None) -> None:
        super().__init__(f"{message} (HTTP {status})")
        self.status = status
        self.message = message
        self.details = details


def admin_token_file(home: Path) -> Path:
    """Where the embedded stack's manager (FLOPS_HOME `home`) reveals the admin token it generated."""
    return home / "manager" / "admin-token"


def default_token(env: Mapping[str, str]) -> str | None:
    """`FLOPS_TOKEN`, else the content of `FLOPS_TOKEN_FILE`, else the local admin token file's."""
    if env.get("FLOPS_TOKEN"):
        return env["FLOPS_TOKEN"]
    token_file = env.get("FLOPS_TOKEN_FILE")
    path = Path(token_file) if token_file else admin_token_file(flops_home(env))
    return path.read_text(encoding="utf-8").strip() if path.is_file() else None


class ManagerClient:
    def __init__(self, base_url: str | None = None, token: str | None = None, timeout: float = 30.0) -> None:
        self.base_url = (base_url or DEFAULT_MANAGER_URL).rstrip("/")
        self.token = token
        self.timeout = timeout

    @classmethod
    def from_env(cls, env: Mapping[str, str], base_url: str | None = None) -> "ManagerClient":
        """A client for `base_url` (else `FLOPS_MANAGER_URL`) with the token `env` names."""
        return cls(base_url or env.get("FLOPS_MANAGER_URL"), default_token(env))

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = kwargs.pop("headers", {})
        timeout = kwargs.pop("timeout", self.timeout)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            response = requests.request(method, f"{self.base_url}{path}", headers=headers, timeout=timeout, **kwargs)
        except requests.ConnectionError as error:
            raise ManagerError(0, f"no FLOps manager answers at {self.base_url}: start it with `flops up`") from error
        try:
            body = response.json()
        except ValueError:
            body = {"message": response.text}
        if response.status_code >= 400:
            raise ManagerError(response.status_code, body.get("message", "error"), body.get("details"))
        return body

    def health(self) -> bool:
        try:
            return bool(self._request("GET", "/").get("message") == "ok")
        except ManagerError:
            return False

    def submit(self, sla: str | dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
        """Start a project (`{"project_id", "status_url"}`), or with `dry_run` only check the SLA and
        its repository (`{"valid": true, "commit", ...}`); a refusal raises `ManagerError`."""
        options: dict[str, Any] = {"params": {"dry_run": "1"}, "timeout": DRY_RUN_TIMEOUT_S} if dry_run else {}
        if isinstance(sla, dict):
            return dict(self._request("POST", "/api/flops/projects", json=sla, **options))
        headers = {"Content-Type": "application/json"}
        return dict(self._request("POST", "/api/flops/projects", data=sla, headers=headers, **options))

    def projects(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else None
        return list(self._request("GET", "/api/flops/projects", params=params))

    def project(self, project_id: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/flops/projects/{project_id}"))

    def events(self, project_id: str) -> list[dict[str, Any]]:
        return list(self._request("GET", f"/api/flops/projects/{project_id}/events"))

    def logs(self, project_id: str, component: str | None = None, tail: int = 200) -> dict[str, str]:
        params: dict[str, Any] = {"tail": tail}
        if component:
            params["component"] = component
        return dict(self._request("GET", f"/api/flops/projects/{project_id}/logs", params=params))

    def cancel(self, project_id: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/api/flops/projects/{project_id}"))

    def tracking(self) -> str:
        return str(self._request("GET", "/api/flops/tracking")["tracking_server_url"])

    def tracking_login(self) -> dict[str, Any]:
        """The tracking server, and how this token's customer logs in to it (username, password)."""
        return dict(self._request("GET", "/api/flops/tracking"))

    def mocks(self, dataset: str, partitions: int, tag: str, customer_id: str = "Admin") -> dict[str, int]:
        body = {
            "customerID": customer_id,
            "mock_data_configuration": {
                "dataset_name": dataset,
                "number_of_partitions": partitions,
                "data_tag": tag,
            },
        }
        return dict(self._request("POST", "/api/flops/mocks", json=body)["nodes"])

    def create_token(self, customer_id: str) -> str:
        return str(self.issue_token(customer_id)["token"])

    def issue_token(self, customer_id: str) -> dict[str, Any]:
        """A new customer token (admin): `{customer_id, token, token_id}`; the token is shown only now."""
        return dict(self._request("POST", "/api/flops/tokens", json={"customer_id": customer_id}))

    def tokens(self) -> list[dict[str, Any]]:
        """The token records (admin): id, customer, role, creation time; never a token."""
        return list(self._request("GET", "/api/flops/tokens"))

    def revoke_token(self, token_id: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/api/flops/tokens/{token_id}"))
