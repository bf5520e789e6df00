"""The project record the manager keeps: desired state, observed state, history.

Kubernetes habit: `desired` says what the user wants (run or cancel), `status` what is;
events move `status` forward, the reconcile loop makes the world match `desired`.
"""

import time
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

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


class StageTiming(BaseModel):
    started_at: float
    ended_at: float | None = None

    @property
    def duration_s(self) -> float | None:
        return None if self.ended_at is None else self.ended_at - self.started_at


class ProjectError(BaseModel):
    stage: str
    message: str


class BuildResult(BaseModel):
    """What the image builder made: where the code and environments are, or image refs."""

    commit: str
    repo_dir: str
    learner_python: str | None = None
    aggregator_python: str | None = None
    images: dict[str, str] = Field(default_factory=dict)
    build_key: str = ""
    reused: bool = False
    stage_durations: dict[str, float] = Field(default_factory=dict)


class ProcessHandle(BaseModel):
    """Where a deployed component runs, so a restarted manager can find it again."""

    name: str
    backend: str
    ref: str  # pid / process group for local, container id, Oakestra service id
    log_path: str | None = None
    address: str | None = None
    active: bool = True
    started_at: float = Field(default_factory=time.time)


class EventRecord(BaseModel):
    time: float
    component: str
    event: str
    message: str = ""


class Project(BaseModel):
    project_id: str
    customer_id: str
    sla: dict[str, Any]
    desired: Literal["running", "cancelled"] = "running"
    status: ProjectStatus = ProjectStatus.SUBMITTED
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    stages: dict[str, StageTiming] = Field(default_factory=dict)
    error: ProjectError | None = None
    build: BuildResult | None = None
    deployment: list[ProcessHandle] = Field(default_factory=list)
    rounds: list[RoundReport] = Field(default_factory=list)
    training: TrainingSummary | None = None
    tracking_url: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    inference_url: str | None = None
    image_refs: dict[str, str] = Field(default_factory=dict)
    events: list[EventRecord] = Field(default_factory=list)
    seen_event_ids: list[str] = Field(default_factory=list)

    def parsed_sla(self) -> ProjectSLA:
        return ProjectSLA.model_validate(self.sla)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE_STATUSES
