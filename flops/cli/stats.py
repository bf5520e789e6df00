"""`flops stats`: a federated statistics job on this machine, without the manager.

The same job a `"job": "statistics"` SLA runs: an aggregator and one learner per node folder
(real SuperLink and SuperNodes, TLS with a CA made for the run), two passes of aggregates through
each node's privacy policy (`privacy.yaml` beside its tag folders; `--min-count`, `--min-bin-count`
and `--epsilon` tighten it, never loosen it), the result tracked in MLflow (JSON, metrics, a
histogram plot per feature) and printed. No repository and no build: no user code runs.
"""

import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from flops.build import BuildResult
from flops.cli.train import LocalTraining, TrainInputError, console, node_data_dirs, resolve_data_tags
from flops.config import flops_home, tracking_uri
from flops.statistics import Noise, PrivacyRequest, StatisticName, StatisticsRequest, StatisticsResult
from flops.tracking_server import TrackingServerError, ensure_tracking_server, run_url
from flops.training import TrainingSpec, TrainingSummary


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.6g}"


def print_result(result: StatisticsResult) -> None:
    table = Table(title=f"federated statistics over {', '.join(result.nodes)}")
    quantiles = sorted({q for figures in result.features.values() for q in figures.quantiles}, key=float)
    for column in ("feature", "count", "mean", "stddev", "min", "max", *(f"q{q}" for q in quantiles), "nodes"):
        table.add_column(column, justify="left" if column in ("feature", "nodes") else "right")
    for feature, figures in result.features.items():
        table.add_row(
            feature, _fmt(figures.count), _fmt(figures.mean), _fmt(figures.stddev), _fmt(figures.min),
            _fmt(figures.max), *(_fmt(figures.quantiles.get(q)) for q in quantiles), ", ".join(figures.nodes),
        )  # fmt: skip
    console.print(table)
    for node, withheld in result.filtered.items():
        for feature, reason in withheld.items():
            console.print(f"[yellow]filtered:[/yellow] {node} sent nothing of {feature}: {escape(reason)}")
    for node, features in result.removed_bins.items():
        listing = ", ".join(f"{feature} ({count})" for feature, count in features.items())
        console.print(f"[yellow]filtered:[/yellow] {node} removed small histogram bins of {listing}")
    for node, epsilon in result.epsilon.items():
        console.print(f"noise: {node} added noise with epsilon {epsilon:g} per pass")


def stats_command(
    data_dir: Path = typer.Option(..., "--data-dir", help="folder with one data folder per node"),
    nodes: int = typer.Option(2, "--nodes", "-n", min=1, help="node folders to ask (one learner each)"),
    data_tags: list[str] = typer.Option([], "--data-tags", help="data tags to describe"),
    feature: list[str] = typer.Option([], "--feature", "-f", help="a feature (column), repeatable; default: all"),
    statistic: list[StatisticName] = typer.Option([], "--stat", help="a statistic, repeatable; default: all"),
    bins: int = typer.Option(10, "--bins", min=1, max=1000),
    quantile: list[float] = typer.Option([], "--quantile", help="a quantile in [0, 1], repeatable"),
    min_count: int = typer.Option(0, "--min-count", min=0, help="tighten every node's min_count"),
    min_bin_count: int = typer.Option(0, "--min-bin-count", min=0, help="tighten every node's min_bin_count"),
    epsilon: float = typer.Option(0.0, "--epsilon", min=0.0, help="noise with this epsilon on every node"),
    mechanism: str = typer.Option("laplace", "--noise", help="laplace or gaussian (with --epsilon)"),
    tracking: str = typer.Option("", "--tracking-uri", help="MLflow server (default: FLOPS_TRACKING_URI or :7027)"),
    project_id: str = typer.Option("", "--project-id", help="run id (default: stats + time)"),
    name: str = typer.Option("statistics", "--name", help="MLflow experiment"),
    timeout: float = typer.Option(900.0, "--timeout", help="overall limit in seconds"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on the last line"),
    insecure_loopback: bool = typer.Option(False, "--insecure-loopback", help="experiments only: plain HTTP"),
) -> None:
    """Describe the nodes' data federatedly: count, mean, stddev, min, max, histograms, quantiles per feature."""
    home = flops_home()
    try:
        node_dirs = node_data_dirs(data_dir.resolve(), nodes)
        tags = resolve_data_tags(node_dirs, [t for tag in data_tags for t in tag.split(",") if t])
        # Only what is given tightens the nodes' policies (`PrivacyPolicy.tightened_by`).
        tightened: dict[str, object] = {"min_count": min_count, "min_bin_count": min_bin_count}
        if epsilon:
            tightened["noise"] = Noise(mechanism=_mechanism(mechanism), epsilon=epsilon)
        given = {key: value for key, value in tightened.items() if value}
        privacy = PrivacyRequest.model_validate(given) if given else None
        request = StatisticsRequest(
            data_tags=tags, features=feature, statistics=statistic or list(StatisticName), bins=bins,
            quantiles=quantile or [0.25, 0.5, 0.75], privacy=privacy, min_nodes=nodes,
        )  # fmt: skip
    except (TrainInputError, ValidationError, ValueError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    run_id = project_id or f"stats-{datetime.now(UTC).strftime('%Y%m%d-%H%M%S')}"
    state_dir = home / "runs" / run_id
    no_code = state_dir / "no-code"  # the app needs a folder of code: a statistics job has none
    no_code.mkdir(parents=True, exist_ok=True)
    build = BuildResult(
        commit="", repo_dir=str(no_code), learner_python=sys.executable, aggregator_python=sys.executable
    )
    spec = TrainingSpec(
        project_id=run_id, model_name=name, experiment_name=name, rounds=1, min_available_clients=nodes,
        min_fit_clients=nodes, min_evaluate_clients=nodes, data_tags=tags, statistics=request,
    )  # fmt: skip
    uri = tracking or tracking_uri()
    try:
        ensure_tracking_server(uri, home / "observatory")
    except TrackingServerError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    console.print(f"statistics [bold]{run_id}[/bold] over {nodes} nodes, tags {', '.join(tags)}")
    job = LocalTraining(spec, build, node_dirs, uri, state_dir, insecure=insecure_loopback)
    started = time.monotonic()
    try:
        job.start()
        summary = job.follow(lambda event: None, timeout)
    finally:
        job.stop()
    _finish(summary, uri, time.monotonic() - started, as_json)


def _mechanism(value: str) -> Literal["laplace", "gaussian"]:
    if value not in ("laplace", "gaussian"):
        raise ValueError(f"--noise is laplace or gaussian, not {value!r}")
    return "laplace" if value == "laplace" else "gaussian"


def _finish(summary: TrainingSummary, uri: str, took: float, as_json: bool) -> None:
    if summary.status != "completed" or summary.statistics is None:
        console.print(f"[red]statistics failed:[/red] {escape(summary.error or 'no result')}")
    else:
        print_result(summary.statistics)
        console.print(f"[green]completed[/green] in {took:.1f} s")
        if summary.experiment_id:
            console.print(f"MLflow: {run_url(uri, summary.experiment_id, summary.parent_run_id or '')}")
    if as_json:
        print(summary.model_dump_json())
    raise typer.Exit(0 if summary.status == "completed" else 1)
