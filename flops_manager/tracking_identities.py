"""The MLflow identities the manager hands out, as the tracking server's admin.

- Before a project's aggregator starts (`prepare_training`): the project's experiment and
  registered model exist (only the admin may create them), named `<customerID>.<name>` and
  tagged with their customer; the project's identity (`project-<id>`) holds EDIT on both and
  nothing else; the customer's identity (`customer-<id>`) holds READ on both. The project's
  credentials go to the aggregator as a file (local backend) or in its environment.
- After training (`serving_env`): the project's identity keeps READ on its model and experiment
  (the model's files are the experiment's artifacts), nothing else; the
  inference-image builder and the model server read the model with it, from their environment.
- `customer_login`: the customer's username and password for the MLflow UI (made at first use,
  kept 0600 under `FLOPS_HOME/tracking/`); deleting that file rotates the password.

Without an admin credentials file (`FLOPS_TRACKING_CREDENTIALS_FILE`) the tracking server is
taken to need no authentication: no identities, one log line says so.
"""

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flops.tracking_auth import (
    ADMIN_USERNAME,
    CREDENTIALS_FILE_ENV,
    OUTAGE_LIMIT_ENV,
    TrackingAdmin,
    TrackingAuthError,
    TrackingCredentials,
    credentials_env,
    customer_username,
    new_credentials,
    project_username,
    read_credentials,
    write_credentials,
)
from flops.training import TrainingSpec
from flops_manager.models import Project
from flops_manager.settings import ManagerSettings
from flops_manager.stages.errors import StageError, TransientStageError

log = logging.getLogger("flops.manager")
CUSTOMER_TAG = "flops.customer_id"
PROJECT_CREDENTIALS_FILE = "tracking-credentials.json"
_customer_lock = threading.Lock()
_warned_unauthenticated: list[bool] = []


@dataclass
class AggregatorTracking:
    """What the aggregator's service gets: the spec (its experiment named) and its environment."""

    spec: TrainingSpec
    env: dict[str, str] = field(default_factory=dict)


def tracking_admin(settings: ManagerSettings) -> TrackingAdmin | None:
    if settings.tracking_credentials_file is None:
        if not _warned_unauthenticated:
            _warned_unauthenticated.append(True)
            log.warning(
                "FLOPS_TRACKING_CREDENTIALS_FILE is not set: projects are tracked without MLflow identities, "
                "and whoever reaches %s reads every project's runs and models",
                settings.tracking_uri,
            )
        return None
    return TrackingAdmin(settings.tracking_uri, settings.tracking_credentials_file)


def _stage_error(stage: str, error: Exception) -> Exception:
    """A tracking server away for now is retried; a refusal or an unreadable admin file fails the stage."""
    if isinstance(error, TrackingAuthError) and error.transient:
        return TransientStageError(stage, str(error))
    return StageError(stage, f"{error}: check the manager's FLOPS_TRACKING_CREDENTIALS_FILE")


def project_credentials_file(run_dir: Path) -> Path:
    """Where the project's identity is kept (0600); the aggregator may read it, not write it."""
    return run_dir / PROJECT_CREDENTIALS_FILE


def _owner(resource: dict[str, Any], customer_id: str, what: str, name: str) -> str | None:
    """The customer the admin tagged `resource` with; refuses another customer's (dots in customer IDs
    could make two customers' `<customerID>.<name>` meet)."""
    tags = resource.get("tags") or []
    owner = next((tag.get("value") for tag in tags if tag.get("key") == CUSTOMER_TAG), None)
    if owner is not None and owner != customer_id:
        raise StageError(
            "deploying", f"the {what} name {name!r} is taken in the tracking server: give the project another name"
        )
    return owner


def _experiment(admin: TrackingAdmin, spec: TrainingSpec, customer_id: str) -> tuple[str, str]:
    """(name, id) of the project's experiment, made by the admin; a deleted one is left alone."""
    name = spec.experiment_name or spec.model_name
    experiment = admin.experiment(name)
    if experiment is not None and experiment.get("lifecycle_stage") == "deleted":
        name = f"{name} ({spec.project_id})"
        experiment = admin.experiment(name)
        if experiment is not None and experiment.get("lifecycle_stage") == "deleted":
            raise StageError("deploying", f"MLflow experiment {name!r} is deleted: restore or purge it")
    if experiment is None:
        return name, admin.create_experiment(name, {CUSTOMER_TAG: customer_id})
    experiment_id = str(experiment["experiment_id"])
    if _owner(experiment, customer_id, "experiment", name) is None:  # made before FLOps tagged: claim it
        admin.tag_experiment(experiment_id, CUSTOMER_TAG, customer_id)
    return name, experiment_id


def prepare_training(
    settings: ManagerSettings, project: Project, spec: TrainingSpec, run_dir: Path, *, files: bool
) -> AggregatorTracking:
    """The project's experiment, model and identity before its aggregator starts (see the module's doc).

    `files`: the aggregator reads this machine's files (local backend); otherwise it gets the
    credentials in its environment.
    """
    admin = tracking_admin(settings)
    env = {OUTAGE_LIMIT_ENV: str(settings.tracking_outage_limit_s)}
    if admin is None:
        return AggregatorTracking(spec, env)
    customer = project.customer_id
    try:
        name, experiment_id = _experiment(admin, spec, customer)
        model = admin.registered_model(spec.model_name)
        explain_job = spec.explain is not None and spec.explain.model_uri is not None
        if model is None and explain_job:
            raise StageError("deploying", f"no registered model {spec.model_name!r} to explain: train it first")
        if model is None:
            admin.create_registered_model(spec.model_name, {CUSTOMER_TAG: customer})
        elif _owner(model, customer, "model", spec.model_name) is None:
            admin.tag_registered_model(spec.model_name, CUSTOMER_TAG, customer)
        identity = new_credentials(project_username(project.project_id))
        admin.ensure_user(identity)
        admin.grant(identity.username, "experiment", experiment_id, "EDIT")
        admin.grant(identity.username, "registered_model", spec.model_name, "EDIT")
        reader = _customer_credentials(settings, admin, customer)
        admin.grant(reader.username, "experiment", experiment_id, "READ")
        admin.grant(reader.username, "registered_model", spec.model_name, "READ")
    except (TrackingAuthError, ValueError) as error:
        raise _stage_error("deploying", error) from error
    path = write_credentials(project_credentials_file(run_dir), identity)
    # Elsewhere the aggregator cannot read this machine's files: the credentials come in its
    # environment (and a file path it might inherit is blanked).
    env.update({CREDENTIALS_FILE_ENV: str(path)} if files else {CREDENTIALS_FILE_ENV: "", **credentials_env(identity)})
    log.info("project %s tracks as MLflow user %s in experiment %s", project.project_id, identity.username, name)
    return AggregatorTracking(spec.model_copy(update={"experiment_name": name}), env)


def serving_env(settings: ManagerSettings, project: Project, run_dir: Path) -> dict[str, str]:
    """The environment that lets the inference builder or model server read the project's model.

    The project's identity is cut down to READ on its registered model and experiment first (its training is over).
    """
    admin = tracking_admin(settings)
    path = project_credentials_file(run_dir)
    if admin is None or not path.is_file() or not project.model_name:
        return {}
    try:
        identity = read_credentials(path)
        admin.grant(identity.username, "registered_model", project.model_name, "READ")
        if project.training is not None and project.training.experiment_id:
            # The model's files are the experiment's artifacts: MLflow's artifact proxy checks READ there.
            admin.grant(identity.username, "experiment", project.training.experiment_id, "READ")
    except (TrackingAuthError, ValueError) as error:
        raise _stage_error("post_training", error) from error
    return credentials_env(identity)


def retire_project(settings: ManagerSettings, project: Project, run_dir: Path) -> None:
    """A project that ended without a model to serve: its identity is removed (best effort)."""
    admin = tracking_admin(settings)
    if admin is None:
        return
    try:
        admin.delete_user(project_username(project.project_id))
    except (TrackingAuthError, ValueError) as error:
        log.warning("could not remove the MLflow user of project %s: %s", project.project_id, error)
    project_credentials_file(run_dir).unlink(missing_ok=True)


def _customer_file(settings: ManagerSettings, customer_id: str) -> Path:
    return settings.home / "tracking" / "customers" / f"{customer_id}.json"


def _customer_credentials(settings: ManagerSettings, admin: TrackingAdmin, customer_id: str) -> TrackingCredentials:
    """The customer's MLflow identity: made (or re-made in a fresh auth database) on first use."""
    path = _customer_file(settings, customer_id)
    with _customer_lock:
        if path.is_file():
            credentials = read_credentials(path)
            if not admin.user_exists(credentials.username):
                admin.create_user(credentials)
            return credentials
        credentials = new_credentials(customer_username(customer_id))
        admin.ensure_user(credentials)  # an existing user (its file deleted: a rotation) gets the new password
        write_credentials(path, credentials)
        return credentials


def customer_login(settings: ManagerSettings, customer_id: str | None) -> dict[str, Any]:
    """What `GET /api/flops/tracking` answers: the server, and how the caller logs in to its UI.

    A customer gets its own username and password; the admin (`customer_id` None) the MLflow
    admin's username and where its credentials file is (the password stays in that file).
    Raises `TrackingAuthError` when the tracking server cannot be asked.
    """
    answer: dict[str, Any] = {"tracking_server_url": settings.tracking_uri}
    admin = tracking_admin(settings)
    if admin is None:
        return answer  # FLOps's answer: the server alone, no login
    if customer_id is None:
        return {
            **answer,
            "authentication": "basic",
            "username": ADMIN_USERNAME,
            "password": None,
            "credentials_file": str(settings.tracking_credentials_file),
        }
    try:
        credentials = _customer_credentials(settings, admin, customer_id)
    except ValueError as error:
        raise TrackingAuthError(500, str(error)) from error
    return {**answer, "authentication": "basic", "username": credentials.username, "password": credentials.password}
