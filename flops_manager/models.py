"""The project record the manager keeps: desired state, observed state, history.

Kubernetes habit: `desired` says what the user wants (run or cancel), `status` what is;
events move `status` forward, the reconcile loop makes the world match `desired`.
"""

import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, field_serializer

from flops.build import BuildFailure, BuildResult
from flops.sla import ProjectSLA
from flops.training import RoundReport, TrainingSummary


class ProjectStatus(StrEnum):
    SUBMITTED = "submitted"
    BUILDING = "building"
    DEPLOYING = "deploying"
    TRAINING = "training"
    POST_TRAINING = "post_training"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES = (
    ProjectStatus.SUBMITTED,
    ProjectStatus.BUILDING,
    ProjectStatus.DEPLOYING,
    ProjectStatus.TRAINING,
    ProjectStatus.POST_TRAINING,
)
FINAL_STATUSES = (ProjectStatus.COMPLETED, ProjectStatus.FAILED, ProjectStatus.CANCELLED)
# The order the lifecycle moves through; an event never moves a project backwards.
STATUS_ORDER = {status: index for index, status in enumerate(ProjectStatus)}


def default_model_name(sla: ProjectSLA) -> str:
    """The name of a project, as FLOps named it: its `project_name`, else the repository's name.

    Images are named after it (with the customer as a separate part); in MLflow it is prefixed
    with the customer (`registry_name`).
    """
    if sla.project_name:
        return sla.project_name
    name = sla.ml_repo_url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".git")
    return name or "flops-model"


def registry_name(customer_id: str, sla: ProjectSLA) -> str:
    """The project's registered model and experiment in MLflow: `<customerID>.<name>`.

    Registered model names are global in MLflow; the customer prefix keeps two customers'
    models apart in the registry and in `models:/` URIs (`models:/acme.digits/3`), while a
    customer's projects with one name still share one model (versions 1, 2, ...), as in FLOps.
    """
    return f"{customer_id}.{default_model_name(sla)}"


class StageTiming(BaseModel):
    started_at: float
    ended_at: float | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


class ProjectError(BaseModel):
    stage: str
    message: str


class RetryState(BaseModel):
    """A stage that failed for now and will be tried again (a backend unreachable, a 5xx, a timeout)."""

    stage: str
    attempts: int
    first_failed_at: float
    next_attempt_at: float
    reason: str


class ProcessHandle(BaseModel):
    """Where a deployed component runs, so a restarted manager can find it again."""

    name: str
    backend: str
    ref: str  # pid / process group for local, container id, Oakestra service id
    log_path: str | None = None
    address: str | None = None
    active: bool = True
    started_at: float = Field(default_factory=time.time)
    sandbox_pid: int | None = None  # local backend: the sandbox's PID-namespace init (`flops.sandbox`)


class EventRecord(BaseModel):
    time: float
    component: str
    event: str
    message: str = ""
    node: str | None = None  # learner events: the learner's node
    round: int | None = None  # round events: the round reported


class Project(BaseModel):
    """One project: what the user asked for (`sla`, `desired`), where it is, and the facts recorded so far.

    Events only record facts (`build`, `build_failure`, `training_started_at`, `rounds`,
    `training`); the controller reads them and moves `status` forward.
    """

    project_id: str
    customer_id: str
    sla: ProjectSLA
    desired: Literal["running", "cancelled"] = "running"
    status: ProjectStatus = ProjectStatus.SUBMITTED
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    stages: dict[str, StageTiming] = Field(default_factory=dict)
    error: ProjectError | None = None
    retry: RetryState | None = None
    build: BuildResult | None = None
    build_failure: BuildFailure | None = None
    deployment: list[ProcessHandle] = Field(default_factory=list)
    training_started_at: float | None = None
    rounds: list[RoundReport] = Field(default_factory=list)
    training: TrainingSummary | None = None
    tracking_url: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    inference_url: str | None = None
    image_refs: dict[str, str] = Field(default_factory=dict)
    events: list[EventRecord] = Field(default_factory=list)
    seen_event_ids: list[str] = Field(default_factory=list)

    @field_serializer("sla")
    def _sla_with_its_field_names(self, sla: ProjectSLA) -> dict[str, Any]:
        """Stored and shown under the SLA's own names (`customerID`), as the user wrote them."""
        return sla.model_dump(mode="json", by_alias=True)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    def handle(self, name: str) -> ProcessHandle | None:
        """The active deployed component called `name`, if any."""
        for handle in self.deployment:
            if handle.name == name and handle.active:
                return handle
        return None
