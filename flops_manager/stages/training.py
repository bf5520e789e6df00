"""Training: follow the aggregator until its summary is recorded, then tear the FL actors down.

The summary arrives as aggregator/succeeded or aggregator/failed, or, when the aggregator
exits without one, from its state folder (local) or as a failure with its log tail. While
the aggregator runs, a learner that stopped is started again (`stages.restarts`). Once a
summary is recorded the actors go (the model server stays), their MQTT users are revoked,
and the project fails or moves on to post-training.
"""

import logging
from typing import Any

from flops.progress import read_summary
from flops.training import RoundReport, TrainingSummary
from flops_manager.models import ProcessHandle, Project, ProjectStatus
from flops_manager.stages import teardown
from flops_manager.stages.context import StageContext
from flops_manager.stages.errors import StageError
from flops_manager.stages.restarts import keep_learners

log = logging.getLogger("flops.manager")
STAGE = "training"
AGGREGATOR = "aggregator"
# A remote aggregator's result comes as an event, which may trail its exit a little.
REMOTE_RESULT_GRACE_S = 20.0
TRAINING_STATUSES = (ProjectStatus.DEPLOYING, ProjectStatus.TRAINING)


# A project is one document in the store (MongoDB: at most 16 MB): it keeps the per-learner records
# of its newest rounds up to this many records; MLflow keeps them all (`learner.<name>.*` metrics).
KEPT_LEARNER_RECORDS = 10_000


def stored_rounds(rounds: list[RoundReport]) -> list[dict[str, Any]]:
    """`rounds` as stored: the oldest rounds' per-learner records dropped beyond KEPT_LEARNER_RECORDS."""
    kept, stored = 0, []
    for report in sorted(rounds, key=lambda r: r.round, reverse=True):
        kept += len(report.per_learner)
        exclude = {"per_learner"} if kept > KEPT_LEARNER_RECORDS else None
        stored.append(report.model_dump(mode="json", exclude=exclude))
    return stored[::-1]


def summary_changes(project: Project, summary: TrainingSummary) -> dict[str, Any]:
    """The store fields that record a finished training (its rounds, the registered model)."""
    rounds = summary.rounds or project.rounds
    changes: dict[str, Any] = {
        "training": summary.model_dump(mode="json", exclude={"rounds"}),  # its rounds: the project's, stored once
        "rounds": stored_rounds(rounds),
    }
    if summary.registered_model_name:
        changes["model_name"] = summary.registered_model_name
        changes["model_version"] = summary.registered_model_version
    return changes


def round_changes(project: Project, report: RoundReport) -> dict[str, Any]:
    """The store field that records one more round (a round reported again replaces itself)."""
    rounds = [r for r in project.rounds if r.round != report.round] + [report]
    return {"rounds": stored_rounds(rounds)}


def reconcile(ctx: StageContext, project: Project) -> bool:
    """training: wait for the summary; then tear down and fail, or go on to post-training."""
    if project.training is None:
        aggregator = project.handle(AGGREGATOR)
        if aggregator is None:
            raise StageError(STAGE, "the aggregator is not deployed and no training result was recorded")
        return watch_aggregator(ctx, project, aggregator)
    teardown.remove_services(ctx, project, keep_inference=True, strict=True)
    summary = project.training
    if summary.status != "completed":
        raise StageError(STAGE, summary.error or "training failed")
    return ctx.store.transition(project.project_id, ProjectStatus.POST_TRAINING, now=ctx.clock())


def watch_aggregator(ctx: StageContext, project: Project, aggregator: ProcessHandle) -> bool:
    """Record the summary of an aggregator that has exited; True when one was recorded."""
    orchestrator = ctx.orchestrators.get(aggregator.backend) or ctx.orchestrator(project)
    state = orchestrator.status(aggregator)
    if not state.finished:
        if read_summary(ctx.run_dir(project.project_id) / AGGREGATOR) is None:  # learners end with the training
            keep_learners(ctx, project)
        return False
    summary = read_summary(ctx.run_dir(project.project_id) / AGGREGATOR)
    if summary is None:
        gone_at = ctx.aggregator_gone_at.setdefault(project.project_id, ctx.clock())
        if aggregator.backend != "local" and ctx.clock() - gone_at < REMOTE_RESULT_GRACE_S:
            return False
        tail = orchestrator.logs(aggregator, tail=15)
        summary = TrainingSummary(
            status="failed",
            project_id=project.project_id,
            error=f"the aggregator exited without a result ({state.detail or state.exit_code}):\n{tail}",
        )
    ctx.store.update(project.project_id, summary_changes(project, summary))
    ctx.aggregator_gone_at.pop(project.project_id, None)
    return True
