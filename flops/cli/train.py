"""`flops train`: one federated training on this machine, from repository to registered model.

It starts (when needed) the observatory, then the aggregator and N learners as processes,
follows the aggregator's progress live and tears everything down at the end, whatever
happened. Bad input is refused before any process starts.
"""

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console

from flops.actors import aggregator_command, learner_command
from flops.config import flops_home, tracking_uri
from flops.data.node_data import missing_tags
from flops.data.partition import node_name
from flops.ml_repo.contract import ContractError, validate_repository
from flops.ml_repo.source import RepositoryError, fetch_repository
from flops.net import free_port
from flops.processes import ManagedProcess
from flops.progress import PROGRESS_FILE, ProgressEvent, ProgressFollower, read_summary
from flops.tracking_server import TrackingServerError, ensure_tracking_server
from flops.training import RoundReport, StrategyConfig, StrategyName, TrainingSpec, TrainingSummary

console = Console(stderr=True, soft_wrap=True)


class TrainInputError(ValueError):
    """The request cannot start: the message says what is wrong and what to do."""


def parse_assignments(pairs: list[str], option: str) -> dict[str, Any]:
    """`key=value` pairs with JSON-typed values (`lr=0.1`, `epochs=2`, `name=x`)."""
    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise TrainInputError(f"{option} expects key=value, got '{pair}'")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    return values


def node_data_dirs(data_dir: Path, count: int) -> list[Path]:
    """Learner i reads `data_dir/node-i`, or else the i-th node folder in name order."""
    if not data_dir.is_dir():
        raise TrainInputError(f"data directory {data_dir} does not exist; create it with `flops data partition`")
    named = [data_dir / node_name(i) for i in range(1, count + 1)]
    if all(path.is_dir() for path in named):
        return named
    folders = sorted(path for path in data_dir.iterdir() if path.is_dir())
    if len(folders) < count:
        raise TrainInputError(
            f"{data_dir} holds {len(folders)} node folder(s) but {count} learners were asked for; "
            "partition the data over more nodes or start fewer learners"
        )
    return folders[:count]


def resolve_data_tags(node_dirs: list[Path], requested: list[str]) -> list[str]:
    if requested:
        for folder in node_dirs:
            absent = missing_tags(folder, requested)
            if absent:
                raise TrainInputError(
                    f"node folder {folder} has no data for tag(s) {', '.join(absent)}; "
                    "partition data for that tag or pass other --data-tags"
                )
        return requested
    common = set.intersection(*({p.name for p in folder.iterdir() if p.is_dir()} for folder in node_dirs))
    tags = sorted(tag for tag in common if not missing_tags(node_dirs[0], [tag]))
    if not tags:
        raise TrainInputError(f"the node folders share no data tag; name one with --data-tags ({node_dirs[0]})")
    return tags


class LocalTraining:
    """The processes of one training on this machine, and their teardown."""

    def __init__(self, spec: TrainingSpec, repo: Path, node_dirs: list[Path], tracking: str, state_dir: Path):
        self.spec = spec
        self.repo = repo
        self.node_dirs = node_dirs
        self.tracking = tracking
        self.state_dir = state_dir
        self.aggregator: ManagedProcess | None = None
        self.learners: list[ManagedProcess] = []

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for stale in (PROGRESS_FILE, "summary.json"):
            (self.state_dir / stale).unlink(missing_ok=True)
        spec_file = self.state_dir / "spec.json"
        spec_file.write_text(self.spec.model_dump_json(indent=2), encoding="utf-8")
        port = free_port()
        self.aggregator = ManagedProcess(
            "aggregator",
            aggregator_command(
                spec_file=spec_file, repo=self.repo, state_dir=self.state_dir, port=port, tracking_uri=self.tracking
            ),
            self.state_dir / "logs" / "aggregator.log",
        )
        for index, folder in enumerate(self.node_dirs, start=1):
            name = node_name(index)
            self.learners.append(
                ManagedProcess(
                    name,
                    learner_command(f"127.0.0.1:{port}", folder, self.spec.data_tags, name),
                    self.state_dir / "logs" / f"{name}.log",
                )
            )

    def follow(self, on_event: Any, timeout: float) -> TrainingSummary:
        """Feed progress events to `on_event` until the aggregator ends; the summary."""
        assert self.aggregator is not None
        follower = ProgressFollower(self.state_dir / PROGRESS_FILE)
        deadline = time.monotonic() + timeout
        started = False
        while time.monotonic() < deadline:
            for event in follower.new_events():
                started = started or event.kind in ("started", "round")
                on_event(event)
            if not self.aggregator.running():
                for event in follower.new_events():
                    on_event(event)
                code, tail = self.aggregator.returncode(), self.aggregator.log_tail()
                return read_summary(self.state_dir) or self._failed(f"aggregator exited with code {code}:\n{tail}")
            dead = [learner for learner in self.learners if not learner.running()]
            alive = len(self.learners) - len(dead)
            if dead and alive < self.spec.min_available_clients:
                details = "\n".join(f"{p.name} (exit {p.returncode()}): {p.log_tail(5)}" for p in dead)
                return self._failed(
                    f"{len(dead)} learner(s) stopped; {alive} left of the {self.spec.min_available_clients} "
                    f"required:\n{details}"
                )
            time.sleep(0.3)
        return self._failed(f"training did not finish within {timeout:.0f} s")

    def _failed(self, error: str) -> TrainingSummary:
        return TrainingSummary(status="failed", project_id=self.spec.project_id, error=error)

    def stop(self) -> None:
        for process in [*self.learners, *([self.aggregator] if self.aggregator else [])]:
            process.stop()


def _show(event: ProgressEvent, rounds: int) -> None:
    if event.kind == "round" and event.round is not None:
        report: RoundReport = event.round
        console.print(
            f"round {report.round}/{rounds}  accuracy {_fmt(report.accuracy)}  loss {_fmt(report.loss)}  "
            f"local accuracy {_fmt(report.local_accuracy)}  learners {report.learners}  "
            f"{report.duration_s:.1f} s"
        )
    elif event.message and event.kind != "round":
        console.print(f"[dim]{event.kind}:[/dim] {event.message}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def train_command(
    repo: str = typer.Argument(..., help="ML repository: a local folder or any git URL"),
    data_dir: Path = typer.Option(..., "--data-dir", help="folder with one data folder per node"),
    learners: int = typer.Option(2, "--learners", "-n", min=1),
    min_available: int = typer.Option(0, "--min-available-clients", help="learners to wait for (default: all)"),
    rounds: int = typer.Option(3, "--rounds", "-r", min=1),
    strategy: StrategyName = typer.Option(StrategyName.FEDAVG, "--strategy"),
    strategy_param: list[str] = typer.Option([], "--strategy-param", help="key=value, repeatable"),
    hyperparameter: list[str] = typer.Option([], "--hp", help="key=value for user code, repeatable"),
    data_tags: list[str] = typer.Option([], "--data-tags", help="data tags to train on"),
    ref: str = typer.Option("", "--ref", help="branch, tag or commit of a git repository"),
    tracking: str = typer.Option("", "--tracking-uri", help="MLflow server (default: FLOPS_TRACKING_URI or :7027)"),
    flavor: str = typer.Option("sklearn", "--flavor", help="sklearn, pytorch, keras"),
    model_name: str = typer.Option("", "--model-name", help="Model Registry name (default: repo name)"),
    project_id: str = typer.Option("", "--project-id", help="experiment name (default: repo + time)"),
    learner_timeout: float = typer.Option(120.0, "--learner-timeout", help="seconds to wait for learners"),
    timeout: float = typer.Option(3600.0, "--timeout", help="overall limit in seconds"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on the last line"),
) -> None:
    """Train REPO federatedly with N local learners and track it in MLflow."""
    home = flops_home()
    try:
        fetched = fetch_repository(repo, ref or None, home / "repos")
        validate_repository(fetched.path)
        node_dirs = node_data_dirs(data_dir.resolve(), learners)
        tags = resolve_data_tags(node_dirs, [t for tag in data_tags for t in tag.split(",") if t])
        name = model_name or Path(fetched.url.rstrip("/")).name.removesuffix(".git") or "model"
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        spec = TrainingSpec(
            project_id=project_id or f"{name}-{stamp}",
            model_name=name,
            model_flavor=flavor,  # type: ignore[arg-type]
            rounds=rounds,
            min_available_clients=min_available or learners,
            min_fit_clients=min_available or learners,
            min_evaluate_clients=min_available or learners,
            data_tags=tags,
            strategy=StrategyConfig(name=strategy, parameters=parse_assignments(strategy_param, "--strategy-param")),
            hyperparameters=parse_assignments(hyperparameter, "--hp"),
            learner_wait_timeout=learner_timeout,
            repo_url=fetched.url,
            repo_commit=fetched.commit,
        )
        uri = tracking or tracking_uri()
        started_pid = ensure_tracking_server(uri, home / "observatory")
    except (
        TrainInputError,
        ContractError,
        RepositoryError,
        TrackingServerError,
        ValidationError,
    ) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    if started_pid:
        console.print(f"observatory started at {uri} (pid {started_pid}); it keeps running for the UI")
    console.print(f"training [bold]{spec.project_id}[/bold]: {learners} learners x {rounds} rounds, {strategy.value}")
    training = LocalTraining(spec, fetched.path, node_dirs, uri, home / "runs" / spec.project_id)
    try:
        training.start()
        summary = training.follow(lambda event: _show(event, rounds), timeout)
    finally:
        training.stop()
    _print_summary(summary, uri)
    if as_json:
        print(summary.model_dump_json())
    raise typer.Exit(0 if summary.status == "completed" else 1)


def _print_summary(summary: TrainingSummary, uri: str) -> None:
    if summary.status != "completed":
        console.print(f"[red]training failed:[/red] {summary.error}")
        return
    console.print(
        f"[green]completed[/green] in {summary.duration_s:.1f} s: accuracy {_fmt(summary.final_accuracy)}, "
        f"loss {_fmt(summary.final_loss)}; best round {summary.best_round}"
    )
    if summary.registered_model_name:
        console.print(f"model: models:/{summary.registered_model_name}/{summary.registered_model_version}")
    if summary.experiment_id:
        console.print(f"MLflow: {uri}/#/experiments/{summary.experiment_id}/runs/{summary.parent_run_id}")
