"""What the dashboard shows of a project, computed from the stored record alone.

Contract: pure functions from a `Project` (as the API reads it) to page models; the templates
only lay them out. Every figure here is one the API already returns (`project_view`, the
learners view): the page shows nothing the token's owner could not read through the API.
"""

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field

from flops.learner_records import LearnerRound
from flops.sla import Job, TrainingMode
from flops_manager.models import ACTIVE_STATUSES, Project, ProjectStatus

LIFECYCLE = [status.value for status in ACTIVE_STATUSES if status is not ProjectStatus.SUBMITTED]
BAR_COUNT = 20  # the most features or bins a bar chart shows


def clock(timestamp: float | None) -> str:
    """A UTC wall-clock time for a table cell; "" for none."""
    if timestamp is None:
        return ""
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def figure(value: float | None, digits: int = 4) -> str:
    return "" if value is None else f"{value:.{digits}g}"


def planned_rounds(project: Project) -> int:
    """The rounds the project's training runs (cycles in hierarchical mode); 0 for a job without rounds."""
    sla = project.sla
    if sla.job is not Job.TRAINING:
        return 0
    config = sla.training_configuration
    return config.training_cycles if config.mode is TrainingMode.HIERARCHICAL else config.training_rounds


class ProjectRow(BaseModel):
    """A line of the projects list."""

    project_id: str
    customer_id: str
    name: str
    job: str
    status: str
    stage: str
    rounds_done: int
    rounds_planned: int
    progress_percent: int
    created: str
    active: bool


def project_row(project: Project) -> ProjectRow:
    done = sum(1 for report in project.rounds if report.finished)
    planned = planned_rounds(project)
    final = project.status is ProjectStatus.COMPLETED
    percent = 100 if final else int(100 * min(done, planned) / planned) if planned else 0
    return ProjectRow(
        project_id=project.project_id,
        customer_id=project.customer_id,
        name=project.model_name or project.sla.project_name or "",
        job=project.sla.job.value,
        status=project.status.value,
        stage=current_stage(project),
        rounds_done=done,
        rounds_planned=planned,
        progress_percent=percent,
        created=clock(project.created_at),
        active=project.active,
    )


def current_stage(project: Project) -> str:
    """The stage a project is in; for a failed one, the stage that failed; for a cancelled one, the last it began."""
    if project.error is not None:
        return project.error.stage
    if project.status is ProjectStatus.CANCELLED:
        begun = [name for name in LIFECYCLE if name in project.stages]
        return begun[-1] if begun else ProjectStatus.SUBMITTED.value
    return project.status.value


class StageStep(BaseModel):
    stage: str
    state: str = Field(description="done, running, failed, cancelled or pending")
    started: str = ""
    duration: str = ""
    duration_s: float | None = None


def timeline(project: Project) -> list[StageStep]:
    """Each lifecycle stage with its start and duration, in lifecycle order."""
    steps = []
    failed_stage = project.error.stage if project.error is not None else None
    for name in LIFECYCLE:
        timing = project.stages.get(name)
        if timing is None:
            steps.append(StageStep(stage=name, state="pending"))
            continue
        if timing.ended_at is None and project.active:
            state = "running"
        elif name == failed_stage:
            state = "failed"
        elif timing.ended_at is None or (project.status is ProjectStatus.CANCELLED and name == current_stage(project)):
            state = "cancelled" if project.status is ProjectStatus.CANCELLED else "done"
        else:
            state = "done"
        elapsed = timing.duration_s
        steps.append(
            StageStep(
                stage=name, state=state, started=clock(timing.started_at), duration=duration(elapsed),
                duration_s=elapsed,
            )
        )  # fmt: skip
    return steps


class LearnerRow(BaseModel):
    """A learner: whether it is online, when it was last seen, its latest figures, and its flags."""

    name: str
    online: bool
    last_seen: str
    rounds: int
    examples: int | None = None
    global_loss: str = ""
    global_accuracy: str = ""
    local_loss: str = ""
    local_accuracy: str = ""
    train_s: str = ""
    update_norm: str = ""
    distance_to_aggregate: str = ""
    failure: str = ""
    flags: list[str] = Field(default_factory=list, description="the latest round's flags, described")
    flagged_rounds: list[int] = Field(default_factory=list)


def learner_rows(project: Project) -> list[LearnerRow]:
    """One row per learner the project has had: placed, joined, or named in a round."""
    latest: dict[str, tuple[int, LearnerRound]] = {}
    taken: dict[str, int] = {}
    flagged: dict[str, list[int]] = {}
    for report in project.rounds:
        for record in report.per_learner:
            latest[record.learner] = (report.round, record)
            if record.failure is None:
                taken[record.learner] = taken.get(record.learner, 0) + 1
            if record.flags:
                flagged.setdefault(record.learner, []).append(report.round)
    round_times = {event.round: event.time for event in project.events if event.round is not None}
    seen: dict[str, float] = {}
    learner_failure: dict[str, str] = {}
    for event in project.events:
        if event.node is None:
            continue
        seen[event.node] = max(seen.get(event.node, 0.0), event.time)
        if event.event == "failed":
            learner_failure[event.node] = event.message
        elif event.event == "joined":
            learner_failure.pop(event.node, None)
    for name, (number, record) in latest.items():
        if record.failure is None and number in round_times:
            seen[name] = max(seen.get(name, 0.0), round_times[number])
    placed = {
        handle.name.removeprefix("learner-"): handle.active
        for handle in project.deployment
        if handle.name.startswith("learner-")
    }
    rows = []
    for name in sorted(set(placed) | set(latest) | set(seen)):
        row = LearnerRow(
            name=name,
            online=project.active and placed.get(name, False) and name not in learner_failure,
            last_seen=clock(seen.get(name)),
            rounds=taken.get(name, 0),
            failure=learner_failure.get(name, ""),
            flagged_rounds=flagged.get(name, []),
        )
        if name in latest:
            _, record = latest[name]
            row.examples = record.examples
            row.global_loss = figure(record.global_loss)
            row.global_accuracy = figure(record.global_accuracy)
            row.local_loss = figure(record.local_loss)
            row.local_accuracy = figure(record.local_accuracy)
            row.train_s = figure(record.train_s, 3)
            row.update_norm = figure(record.update_norm)
            row.distance_to_aggregate = figure(record.distance_to_aggregate)
            row.failure = record.failure or row.failure
            row.flags = [flag.describe() for flag in record.flags]
        rows.append(row)
    return rows


class ClusterRow(BaseModel):
    cluster: str
    learners: list[str]
    rounds: int
    accuracy: str
    loss: str
    duration: str
    error: str = ""


def cluster_rows(project: Project) -> tuple[int | None, list[ClusterRow]]:
    """Hierarchical projects: each cluster's part of the latest cycle that has clusters."""
    for report in reversed(project.rounds):
        if report.clusters:
            return report.round, [
                ClusterRow(
                    cluster=cluster.cluster, learners=cluster.learners, rounds=len(cluster.rounds),
                    accuracy=figure(cluster.accuracy), loss=figure(cluster.loss), duration=duration(cluster.duration_s),
                    error=cluster.error or "",
                )
                for cluster in report.clusters
            ]  # fmt: skip
    return None, []


class Bar(BaseModel):
    label: str
    value: float
    text: str
    width_percent: float = Field(description="the bar's length relative to the largest bar")


def bars(values: dict[str, float], limit: int | None = BAR_COUNT) -> list[Bar]:
    """The largest `limit` values (by magnitude) as bars, largest first; all of them in their order when
    `limit` is None (a histogram's bins)."""
    items = list(values.items())
    ordered = items if limit is None else sorted(items, key=lambda item: abs(item[1]), reverse=True)[:limit]
    largest = max((abs(value) for _, value in ordered), default=0.0) or 1.0
    return [
        Bar(label=label, value=value, text=figure(value), width_percent=round(100 * abs(value) / largest, 1))
        for label, value in ordered
    ]


class FeatureStatistics(BaseModel):
    feature: str
    count: str
    mean: str
    stddev: str
    minimum: str
    maximum: str
    quantiles: str
    nodes: int
    histogram: list[Bar] = Field(default_factory=list)


def statistics_rows(project: Project) -> list[FeatureStatistics]:
    """A statistics job's (or a project's) federated statistics, per feature, with its histogram."""
    result = project.training.statistics if project.training else None
    if result is None:
        return []
    rows = []
    for name, feature in result.features.items():
        histogram = []
        if feature.histogram is not None:
            edges = feature.histogram.edges
            labelled = {
                f"{edges[index]:.3g}..{edges[index + 1]:.3g}": count
                for index, count in enumerate(feature.histogram.counts)
                if index + 1 < len(edges)
            }
            histogram = bars(labelled, limit=None)
        rows.append(
            FeatureStatistics(
                feature=name, count=figure(feature.count, 6), mean=figure(feature.mean), stddev=figure(feature.stddev),
                minimum=figure(feature.min), maximum=figure(feature.max),
                quantiles=", ".join(f"{q}: {figure(v)}" for q, v in feature.quantiles.items()),
                nodes=len(feature.nodes), histogram=histogram,
            )
        )  # fmt: skip
    return rows


class Importance(BaseModel):
    method: str
    model_uri: str | None
    examples: int
    bars: list[Bar]


def importance(project: Project) -> Importance | None:
    """The federated feature importances (explain step or job), the largest first."""
    explanation = project.training.explanation if project.training else None
    if explanation is None or not explanation.importances:
        return None
    return Importance(
        method=explanation.method,
        model_uri=explanation.model_uri,
        examples=sum(explanation.examples.values()),
        bars=bars(explanation.importances),
    )


def page_context(project: Project, view: dict[str, Any]) -> dict[str, Any]:
    """Everything the project page shows; `view` is the API's full `project_view` of the project."""
    cycle, clusters = cluster_rows(project)
    return {
        "project": view,
        "row": project_row(project),
        "final": not project.active,
        "timeline": timeline(project),
        "learners": learner_rows(project),
        "cluster_cycle": cycle,
        "clusters": clusters,
        "statistics": statistics_rows(project),
        "importance": importance(project),
    }
