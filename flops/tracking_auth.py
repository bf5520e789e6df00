"""Who may use the MLflow tracking server, and how each FLOps actor proves it.

The observatory runs MLflow's basic-auth app with workspaces on (only its admin may create
experiments or registered models) and `default_permission = NO_PERMISSIONS`: a request
without credentials answers 401, an identity sees only what it was granted. The identities:

- the admin (`ADMIN_USERNAME`), generated at the observatory's first start and written to a
  0600 file under its home; only the manager (and the embedded stack's owner) reads it;
- one identity per project (`project_username`), made by the manager at deploy: EDIT on the
  project's experiment and registered model only, while it trains; READ on the model and experiment after;
- one identity per customer (`customer_username`): READ on that customer's experiments and
  models, for the status links; `GET /api/flops/tracking` hands it to the customer.

Credentials travel as files (`write_credentials` / `read_credentials`, JSON, 0600) or in the
environment of the process that uses them (`credentials_env`), never in an argv or a log.
`TrackingAdmin` is the admin's client of MLflow's REST API (users, grants, experiments, models),
with a timeout on every call; it needs no MLflow installation.
"""

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import requests
from pydantic import BaseModel, Field

ADMIN_USERNAME = "flops-admin"
# The variable naming an identity's credentials file for the process that uses it.
CREDENTIALS_FILE_ENV = "FLOPS_TRACKING_CREDENTIALS_FILE"
# How long the aggregator waits for an unreachable tracking server before the training fails (s).
OUTAGE_LIMIT_ENV = "FLOPS_TRACKING_OUTAGE_LIMIT"
DEFAULT_OUTAGE_LIMIT_S = 120.0
# MLflow's own variables: every MLflow client of a process sends these as HTTP basic auth.
MLFLOW_USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
MLFLOW_PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
REQUEST_TIMEOUT_S = 15.0
Permission = Literal["READ", "USE", "EDIT", "MANAGE"]
ResourceType = Literal["experiment", "registered_model"]


class TrackingCredentials(BaseModel):
    """One MLflow identity: HTTP basic-auth username and password."""

    username: str = Field(min_length=1)
    password: str = Field(min_length=12, repr=False)

    def env(self) -> dict[str, str]:
        return credentials_env(self)


class TrackingAuthError(RuntimeError):
    """The tracking server refused or failed an admin request; `status` is its HTTP status (0: unreachable)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def transient(self) -> bool:
        """Whether trying later may help: the server away, a time-out, a 5xx or 429 answer."""
        return self.status == 0 or self.status >= 500 or self.status == 429


def new_password() -> str:
    return secrets.token_urlsafe(24)


def project_username(project_id: str) -> str:
    return f"project-{project_id}"


def customer_username(customer_id: str) -> str:
    return f"customer-{customer_id}"


def credentials_env(credentials: TrackingCredentials | None) -> dict[str, str]:
    """The environment an MLflow client process needs to act as `credentials` (nothing for None)."""
    if credentials is None:
        return {}
    return {MLFLOW_USERNAME_ENV: credentials.username, MLFLOW_PASSWORD_ENV: credentials.password}


def write_credentials(path: Path, credentials: TrackingCredentials) -> Path:
    """Write `credentials` to `path` readable by this user only (created 0600, replaced atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(credentials.model_dump_json())
    os.replace(temporary, path)
    return path


def read_credentials(path: Path) -> TrackingCredentials:
    """The credentials in `path`; `ValueError` naming the file when it is missing or malformed."""
    try:
        return TrackingCredentials.model_validate_json(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ValueError(f"cannot read the tracking credentials file {path}: {error.strerror}") from error
    except ValueError as error:
        raise ValueError(f"the tracking credentials file {path} is not a username/password JSON object") from error


def credentials_from_env(env: Mapping[str, str]) -> TrackingCredentials | None:
    """The credentials `env` names: the file in `FLOPS_TRACKING_CREDENTIALS_FILE`, else MLflow's two variables."""
    path = env.get(CREDENTIALS_FILE_ENV)
    if path:
        return read_credentials(Path(path))
    username, password = env.get(MLFLOW_USERNAME_ENV), env.get(MLFLOW_PASSWORD_ENV)
    if username and password and len(password) >= 12:
        return TrackingCredentials(username=username, password=password)
    return None


class TrackingAdmin:
    """The admin's client of MLflow's REST API: users, grants, experiments, registered models.

    The admin's credentials are read from `credentials_file` at every call, so a rotated
    password is picked up without a restart.
    """

    def __init__(self, tracking_uri: str, credentials_file: Path, timeout: float = REQUEST_TIMEOUT_S) -> None:
        self.tracking_uri = tracking_uri.rstrip("/")
        self.credentials_file = credentials_file
        self.timeout = timeout

    def _call(self, method: str, path: str, *, allow: tuple[int, ...] = (), **kwargs: Any) -> requests.Response:
        credentials = read_credentials(self.credentials_file)
        url = f"{self.tracking_uri}{path}"
        try:
            response = requests.request(
                method, url, auth=(credentials.username, credentials.password), timeout=self.timeout, **kwargs
            )
        except requests.RequestException as error:
            raise TrackingAuthError(0, f"tracking server at {self.tracking_uri} unreachable: {error}") from error
        if response.status_code >= 400 and response.status_code not in allow:
            raise TrackingAuthError(
                response.status_code,
                f"tracking server at {self.tracking_uri} answered {method} {path} with "
                f"{response.status_code}: {response.text[:300]}",
            )
        return response

    # ------------------------------------------------------------------ users
    def user_exists(self, username: str) -> bool:
        response = self._call("GET", "/api/2.0/mlflow/users/get", params={"username": username}, allow=(404,))
        return response.status_code != 404

    def create_user(self, credentials: TrackingCredentials) -> None:
        self._call("POST", "/api/2.0/mlflow/users/create", json=credentials.model_dump())

    def set_password(self, credentials: TrackingCredentials) -> None:
        self._call("PATCH", "/api/2.0/mlflow/users/update-password", json=credentials.model_dump())

    def ensure_user(self, credentials: TrackingCredentials) -> None:
        """`credentials.username` exists with `credentials.password` (created, or its password set)."""
        if self.user_exists(credentials.username):
            self.set_password(credentials)
        else:
            self.create_user(credentials)

    def delete_user(self, username: str) -> None:
        self._call("DELETE", "/api/2.0/mlflow/users/delete", json={"username": username}, allow=(404,))

    # ----------------------------------------------------------------- grants
    def grant(self, username: str, resource_type: ResourceType, resource_id: str, permission: Permission) -> None:
        """`username` holds exactly `permission` on the resource (an earlier grant there is replaced)."""
        self.revoke(username, resource_type, resource_id)
        body = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
        self._call("POST", "/api/3.0/mlflow/users/permissions/grant", json={**body, "permission": permission})

    def revoke(self, username: str, resource_type: ResourceType, resource_id: str) -> None:
        body = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
        self._call("POST", "/api/3.0/mlflow/users/permissions/revoke", json=body, allow=(404,))

    def permission(self, username: str, resource_type: ResourceType, resource_id: str) -> str | None:
        """The permission `username` holds on the resource as MLflow resolves it (None: none)."""
        params = {"username": username, "resource_type": resource_type, "resource_id": resource_id}
        response = self._call("GET", "/api/3.0/mlflow/users/permissions/get", params=params, allow=(404,))
        if response.status_code == 404:
            return None
        return response.json().get("permission")

    # ------------------------------------------------ experiments and models
    def experiment(self, name: str) -> dict[str, Any] | None:
        """The experiment called `name` (active or deleted), or None."""
        response = self._call(
            "GET", "/api/2.0/mlflow/experiments/get-by-name", params={"experiment_name": name}, allow=(404,)
        )
        return None if response.status_code == 404 else dict(response.json()["experiment"])

    def create_experiment(self, name: str, tags: Mapping[str, str]) -> str:
        body = {"name": name, "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        return str(self._call("POST", "/api/2.0/mlflow/experiments/create", json=body).json()["experiment_id"])

    def tag_experiment(self, experiment_id: str, key: str, value: str) -> None:
        body = {"experiment_id": experiment_id, "key": key, "value": value}
        self._call("POST", "/api/2.0/mlflow/experiments/set-experiment-tag", json=body)

    def tag_registered_model(self, name: str, key: str, value: str) -> None:
        self._call("POST", "/api/2.0/mlflow/registered-models/set-tag", json={"name": name, "key": key, "value": value})

    def registered_model(self, name: str) -> dict[str, Any] | None:
        response = self._call("GET", "/api/2.0/mlflow/registered-models/get", params={"name": name}, allow=(404,))
        return None if response.status_code == 404 else dict(response.json()["registered_model"])

    def create_registered_model(self, name: str, tags: Mapping[str, str]) -> None:
        body = {"name": name, "tags": [{"key": k, "value": v} for k, v in tags.items()]}
        response = self._call("POST", "/api/2.0/mlflow/registered-models/create", json=body, allow=(400,))
        if response.status_code == 400 and "RESOURCE_ALREADY_EXISTS" not in response.text:
            raise TrackingAuthError(400, f"tracking server refused registered model {name!r}: {response.text[:300]}")


def new_credentials(username: str) -> TrackingCredentials:
    return TrackingCredentials(username=username, password=new_password())
