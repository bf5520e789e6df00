"""What the API (and the dashboard) show of a project: state, timings, rounds, links; no internals."""

from typing import Any

from flops.tracking_server import experiment_url, run_url
from flops.training import calendar_alias
from flops_manager.models import Project


def project_view(project: Project, full: bool = False) -> dict[str, Any]:
    """What the API shows of a project: state, timings, rounds, links; no internals."""
    view: dict[str, Any] = {
        "project_id": project.project_id,
        "customer_id": project.customer_id,
        "status": project.status.value,
        "created_at": project.created_at,
        "updated_at": project.updated_at,
        "rounds_done": sum(1 for report in project.rounds if report.finished),
        "error": project.error.model_dump() if project.error else None,
        "model": {"name": project.model_name, "version": project.model_version},
    }
    if project.retry is not None:  # a transient error the manager retries: stage, attempts, next attempt, reason
        view["retry"] = project.retry.model_dump(mode="json")
    if not full:
        return view
    training = project.training
    calendar = training.registered_model_calendar_version if training else None
    view.update(
        {
            "sla": project.sla.model_dump(mode="json", by_alias=True),
            "stages": {
                name: {"started_at": t.started_at, "ended_at": t.ended_at, "duration_s": t.duration_s}
                for name, t in project.stages.items()
            },
            "rounds": [r.model_dump(mode="json") for r in project.rounds],
            "tracking": {
                "url": project.tracking_url,
                "experiment_id": training.experiment_id if training else None,
                "run_id": training.parent_run_id if training else None,
                "experiment_url": (
                    experiment_url(project.tracking_url, training.experiment_id)
                    if project.tracking_url and training and training.experiment_id else None
                ),
                "run_url": (
                    run_url(project.tracking_url, training.experiment_id, training.parent_run_id)
                    if project.tracking_url and training and training.experiment_id and training.parent_run_id
                    else None
                ),
            },
            "model": {
                "name": project.model_name,
                "version": project.model_version,
                "uri": training.model_uri if training else None,
                "input": training.model_input.model_dump() if training and training.model_input else None,
                "registered_uri": (
                    f"models:/{project.model_name}/{project.model_version}" if project.model_version else None
                ),
                "calendar_version": calendar,
                "calendar_uri": f"models:/{project.model_name}@{calendar_alias(calendar)}" if calendar else None,
            },
            "build": project.build.model_dump(mode="json") if project.build else None,
            "statistics": training.statistics.model_dump(mode="json") if training and training.statistics else None,
            "explanation": training.explanation.model_dump(mode="json") if training and training.explanation else None,
            "privacy": training.privacy.model_dump(mode="json") if training and training.privacy else None,
            "inference_url": project.inference_url,
            "image_refs": project.image_refs,
            "components": sorted({h.name for h in project.deployment}),
            "deployment": [h.model_dump(mode="json", exclude={"log_path", "sandbox_pid"}) for h in project.deployment],
        }
    )  # fmt: skip
    return view
