"""`flops explain`: explain a registered model on the nodes' data, on this machine, without the manager.

The same job an SLA with `"job": "explain"` runs (`flops.explain`): the repository is built as for
`flops train` (the learners need its ModelManager and `get_explanation_data()`), the aggregator
reads the parameters the model's training run kept in MLflow, and every learner explains them
on its own data; the averaged importances are printed and tracked in an `explanation` run of the
model's experiment. No record leaves a node.
"""

from datetime import UTC, datetime
from pathlib import Path

import typer
from pydantic import ValidationError
from rich.markup import escape

from flops.cli.train import (
    LocalTraining,
    TrainInputError,
    build_or_exit,
    console,
    node_data_dirs,
    repository_url,
    resolve_data_tags,
    show_progress,
)
from flops.config import flops_home, tracking_uri
from flops.explain import ExplainRequest, Method
from flops.tracking_server import TrackingServerError, ensure_tracking_server, run_url
from flops.training import TrainingSpec, TrainingSummary


def explain_command(
    repo: str = typer.Argument(..., help="the model's ML repository: a local folder or any git URL"),
    model: str = typer.Option(..., "--model", help="registered model: models:/NAME/VERSION or models:/NAME@ALIAS"),
    data_dir: Path = typer.Option(..., "--data-dir", help="folder with one data folder per node"),
    learners: int = typer.Option(2, "--learners", "-n", min=1),
    data_tags: list[str] = typer.Option([], "--data-tags", help="data tags to explain on"),
    method: str = typer.Option("auto", "--method", help="auto (SHAP where installed), shap or permutation"),
    max_samples: int = typer.Option(200, "--max-samples", help="records per node explained at most"),
    ref: str = typer.Option("", "--ref", help="branch, tag or commit of a git repository"),
    tracking: str = typer.Option("", "--tracking-uri", help="MLflow server (default: FLOPS_TRACKING_URI or :7027)"),
    project_id: str = typer.Option("", "--project-id", help="run id (default: explain + time)"),
    timeout: float = typer.Option(1800.0, "--timeout", help="overall limit in seconds"),
    build_timeout: float = typer.Option(1800.0, "--build-timeout", help="seconds the environments may take to build"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on the last line"),
    insecure_loopback: bool = typer.Option(False, "--insecure-loopback", help="experiments only: plain HTTP"),
) -> None:
    """Explain a registered model: each learner's feature attributions on its data, averaged."""
    home = flops_home()
    try:
        node_dirs = node_data_dirs(data_dir.resolve(), learners)
        tags = resolve_data_tags(node_dirs, [t for tag in data_tags for t in tag.split(",") if t])
        request = ExplainRequest(method=_method(method), max_samples=max_samples, model_uri=model)
    except (TrainInputError, ValidationError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    assert request.registered_name is not None
    repo_url = repository_url(repo)
    run_id = project_id or f"explain-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    state_dir = home / "runs" / run_id
    build = build_or_exit(repo_url, ref, run_id, state_dir, build_timeout)
    spec = TrainingSpec(
        project_id=run_id, model_name=request.registered_name, rounds=1, min_available_clients=learners,
        min_fit_clients=learners, min_evaluate_clients=learners, data_tags=tags, explain=request,
        repo_url=repo_url, repo_commit=build.commit,
    )  # fmt: skip
    uri = tracking or tracking_uri()
    try:
        ensure_tracking_server(uri, home / "observatory")
    except TrackingServerError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    console.print(f"explaining [bold]{model}[/bold] on {learners} learners, tags {', '.join(tags)}")
    job = LocalTraining(spec, build, node_dirs, uri, state_dir, insecure=insecure_loopback)
    try:
        job.start()
        summary = job.follow(lambda event: show_progress(event, 1), timeout)
    finally:
        job.stop()
    _finish(summary, uri, as_json)


def _method(value: str) -> Method:
    if value not in ("auto", "shap", "permutation"):
        raise ValueError(f"--method is auto, shap or permutation, not {value!r}")
    return value  # type: ignore[return-value]


def _finish(summary: TrainingSummary, uri: str, as_json: bool) -> None:
    explanation = summary.explanation
    if summary.status != "completed" or explanation is None:
        console.print(f"[red]explanation failed:[/red] {escape(summary.error or 'no result')}")
    else:
        records = ", ".join(f"{node} {count}" for node, count in explanation.examples.items())
        console.print(f"[green]completed[/green] in {summary.duration_s:.1f} s ({explanation.method}; {records})")
        for feature, value in list(explanation.importances.items())[:20]:
            console.print(f"  {feature:<32} {value:.4g}")
        if summary.experiment_id:
            console.print(f"MLflow: {run_url(uri, summary.experiment_id, summary.parent_run_id or '')}")
    if as_json:
        print(summary.model_dump_json())
    raise typer.Exit(0 if summary.status == "completed" else 1)
