"""`flops train`: one federated training on this machine, from repository to registered model.

It builds the repository the way the manager does (the image builder's local target, run as
a subprocess: fetch, contract check, dependency file fitted to the platform, cached learner
and aggregator environments, reused at once when nothing changed), says which of the
repository's pins it relaxed, starts (when needed) the observatory, then the aggregator in
the aggregator environment and N learners in the learner environment (no MLflow there),
follows the aggregator's progress live and tears everything down at the end, whatever
happened. Bad input and failed builds are refused (exit 2) before any actor starts.

The learners reach the aggregator over TLS with a CA made for this run and each learner's own
key (`flops.pki`, under the run's folder), as in the manager; `--insecure-loopback` opts out.

`--clusters K` trains hierarchically: a root aggregator over K cluster aggregators, each with the
learners of its cluster (the nodes' `node.yaml` clusters when they form K clusters, else K
contiguous blocks), `--cycles` root rounds of `--rounds` cluster rounds each.
"""

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape

from flops.actors import aggregator_command, builder_command, learner_command
from flops.build import BuildOutcome, BuildResult
from flops.config import flops_home, tracking_uri
from flops.data.node_data import missing_tags
from flops.data.node_meta import NodeMetaError, assign_clusters, read_node_meta
from flops.data.partition import node_name
from flops.differential_privacy import Clipping, DifferentialPrivacy, PrivacyMode
from flops.explain import ExplainRequest
from flops.learner_records import flagged
from flops.net import free_port
from flops.pki import PKI_DIR, ProjectPKI
from flops.processes import ManagedProcess
from flops.progress import PROGRESS_FILE, ProgressEvent, ProgressFollower, read_summary
from flops.tracking_server import TrackingServerError, ensure_tracking_server, local_credentials_env, run_url
from flops.training import (
    Hierarchy,
    RoundReport,
    StrategyConfig,
    StrategyName,
    TrainingSpec,
    TrainingSummary,
    calendar_alias,
)

console = Console(stderr=True, soft_wrap=True)
BUILD_RESULT_FILE = "build-result.json"
BUILDER_PREFIX = "[builder] "


class TrainInputError(ValueError):
    """The request cannot start: the message says what is wrong and what to do."""


class BuildError(RuntimeError):
    """The repository's environments could not be built: the builder's whole reason."""


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


def group_by_cluster(node_dirs: list[Path], clusters: int) -> dict[str, list[int]]:
    """Learner indexes (into `node_dirs`) per cluster: the nodes' own `node.yaml` clusters when they
    make `clusters` clusters, else `clusters` contiguous blocks."""
    try:
        written = [read_node_meta(folder).cluster for folder in node_dirs]
    except NodeMetaError as error:
        raise TrainInputError(str(error)) from error
    if len(set(written)) != clusters:
        try:
            written = assign_clusters(len(node_dirs), clusters)
        except ValueError as error:
            raise TrainInputError(f"--clusters {clusters}: {error}") from error
    grouped: dict[str, list[int]] = {}
    for index, cluster in enumerate(written):
        grouped.setdefault(cluster, []).append(index)
    return dict(sorted(grouped.items()))


class LocalTraining:
    """The processes of one training on this machine, and their teardown.

    `clusters` (hierarchical FL, the spec's `hierarchy`): learner indexes per cluster; each cluster
    gets an aggregator of its own, which joins the root aggregator.
    """

    def __init__(
        self,
        spec: TrainingSpec,
        build: BuildResult,
        node_dirs: list[Path],
        tracking: str,
        state_dir: Path,
        *,
        insecure: bool = False,
        clusters: dict[str, list[int]] | None = None,
    ):
        self.spec = spec
        self.build = build
        self.node_dirs = node_dirs
        self.tracking = tracking
        self.state_dir = state_dir
        self.insecure = insecure
        self.clusters = clusters or {}
        self.aggregator: ManagedProcess | None = None
        self.cluster_aggregators: dict[str, ManagedProcess] = {}
        self.learners: list[ManagedProcess] = []
        self.learner_cluster: dict[str, str] = {}

    def start(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for stale in (PROGRESS_FILE, "summary.json"):
            (self.state_dir / stale).unlink(missing_ok=True)
        spec_file = self.state_dir / "spec.json"
        spec_file.write_text(self.spec.model_dump_json(indent=2), encoding="utf-8")
        port = free_port()
        names = [node_name(index) for index in range(1, len(self.node_dirs) + 1)]
        pki = None if self.insecure else ProjectPKI(self.state_dir / PKI_DIR, self.spec.project_id)
        root_nodes = list(self.clusters) or names  # the root's SuperNodes: cluster aggregators, else learners
        self.aggregator = ManagedProcess(
            "aggregator",
            aggregator_command(
                spec_file=spec_file,
                repo=self.build.repo_dir,
                state_dir=self.state_dir,
                port=port,
                tracking_uri=self.tracking,
                python=self.build.aggregator_python,
                tls=pki.superlink(["127.0.0.1"], root_nodes) if pki else None,
                insecure=self.insecure,
            ),
            self.state_dir / "logs" / "aggregator.log",
            env=local_credentials_env(self.tracking, flops_home()),  # an observatory FLOps started: its admin
        )
        superlink_of = dict.fromkeys(names, f"127.0.0.1:{port}")
        for cluster, members in self.clusters.items():
            cluster_port = free_port()
            member_names = [names[index] for index in members]
            self.cluster_aggregators[cluster] = ManagedProcess(
                f"aggregator-{cluster}",
                aggregator_command(
                    spec_file=spec_file,
                    repo=self.build.repo_dir,
                    state_dir=self.state_dir / "clusters" / cluster,
                    port=cluster_port,
                    tracking_uri="",  # only the root tracks
                    python=self.build.aggregator_python,
                    tls=pki.superlink(["127.0.0.1"], member_names, cluster=cluster) if pki else None,
                    insecure=self.insecure,
                    cluster=cluster,
                    root_superlink=f"127.0.0.1:{port}",
                    root_identity=pki.supernode(cluster) if pki else None,
                ),
                self.state_dir / "logs" / f"aggregator-{cluster}.log",
            )
            for name in member_names:
                superlink_of[name] = f"127.0.0.1:{cluster_port}"
                self.learner_cluster[name] = cluster
        for name, folder in zip(names, self.node_dirs, strict=True):
            self.learners.append(
                ManagedProcess(
                    name,
                    learner_command(
                        superlink_of[name],
                        folder,
                        self.spec.data_tags,
                        name,
                        python=self.build.learner_python,
                        identity=pki.supernode(name) if pki else None,
                        insecure=self.insecure,
                    ),
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
            lost = self.lost_clusters() if self.clusters else None
            if lost:
                return self._failed(lost)
            dead = [learner for learner in self.learners if not learner.running()]
            alive = len(self.learners) - len(dead)
            if not self.clusters and dead and alive < self.spec.min_available_clients:
                details = "\n".join(f"{p.name} (exit {p.returncode()}): {p.log_tail(5)}" for p in dead)
                return self._failed(
                    f"{len(dead)} learner(s) stopped; {alive} left of the {self.spec.min_available_clients} "
                    f"required:\n{details}"
                )
            time.sleep(0.3)
        return self._failed(f"training did not finish within {timeout:.0f} s")

    def lost_clusters(self) -> str | None:
        """Why the training cannot finish when fewer clusters than `min_clusters` can still take part
        (their aggregator stopped, or too few of their learners run); None while enough can."""
        assert self.spec.hierarchy is not None
        reasons: dict[str, str] = {}
        for cluster, aggregator in self.cluster_aggregators.items():
            if not aggregator.running():
                reasons[cluster] = f"its aggregator stopped (exit {aggregator.returncode()}): {aggregator.log_tail(3)}"
                continue
            members = [p for p in self.learners if self.learner_cluster.get(p.name) == cluster]
            alive = sum(1 for p in members if p.running())
            if alive < self.spec.hierarchy.min_available_clients:
                reasons[cluster] = (
                    f"{alive} of its learners run, {self.spec.hierarchy.min_available_clients} are required"
                )
        left = len(self.cluster_aggregators) - len(reasons)
        if not reasons or left >= self.spec.hierarchy.min_clusters:
            return None
        listing = "\n".join(f"cluster {cluster}: {reason}" for cluster, reason in sorted(reasons.items()))
        return (
            f"{len(reasons)} cluster(s) lost ({', '.join(sorted(reasons))}); {left} left of the "
            f"{self.spec.hierarchy.min_clusters} required (min_clusters):\n{listing}"
        )

    def _failed(self, error: str) -> TrainingSummary:
        return TrainingSummary(status="failed", project_id=self.spec.project_id, error=error)

    def stop(self) -> None:
        aggregators = [*self.cluster_aggregators.values(), *([self.aggregator] if self.aggregator else [])]
        for process in [*self.learners, *aggregators]:
            process.stop()


def build_environments(
    repo: str, ref: str, project_id: str, cache_dir: Path, state_dir: Path, timeout: float
) -> BuildResult:
    """Run the image builder's local target, as the manager does; its result, or `BuildError`.

    Its progress lines are shown as they come (stage markers and warnings aside: the result's
    `dependency_warnings` are shown once, after it; a failure's come with its reason), its
    whole output goes to `state_dir/logs/builder.log`. The builder stops with this function,
    whatever happens: nothing is left running.
    """
    result_file = state_dir / BUILD_RESULT_FILE
    result_file.unlink(missing_ok=True)
    log_path = state_dir / "logs" / "builder.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_bytes(b"")
    command = builder_command(project_id, repo, ref or None, cache_dir, result_file)
    # No events: this build belongs to no manager's project, whatever broker the shell names.
    builder = ManagedProcess("builder", command, log_path, env={"FLOPS_MQTT_HOST": ""})
    warnings: list[str] = []
    offset = 0
    deadline = time.monotonic() + timeout
    try:
        while True:
            finished = not builder.running()
            offset = _show_builder_lines(log_path, offset, warnings)
            if finished:
                break
            if time.monotonic() > deadline:
                raise BuildError(f"the build did not finish within {timeout:.0f} s (log: {log_path})")
            time.sleep(0.1)
    finally:
        builder.stop()
    outcome = _read_outcome(result_file)
    if outcome is None:
        raise BuildError(
            f"the builder exited with code {builder.returncode()} without a result:\n{builder.log_tail(15)}"
        )
    if outcome.failure is not None:
        relaxed = "".join(f"\n  warning: {warning}" for warning in warnings)
        raise BuildError(f"the build failed at {outcome.failure.stage}: {outcome.failure.error}{relaxed}")
    assert outcome.result is not None
    if not outcome.result.learner_python or not outcome.result.aggregator_python:
        raise BuildError("the builder's result names no learner or aggregator environment")
    return outcome.result


def _show_builder_lines(log_path: Path, offset: int, warnings: list[str]) -> int:
    """Print the builder's new progress lines; collect its warnings; the new offset."""
    with log_path.open("rb") as log:
        log.seek(offset)
        chunk = log.read()
    complete = chunk.rfind(b"\n") + 1
    for raw in chunk[:complete].decode("utf-8", errors="replace").splitlines():
        if not raw.startswith(BUILDER_PREFIX):
            continue
        line = raw.removeprefix(BUILDER_PREFIX)
        if line.startswith("warning: "):
            warnings.append(line.removeprefix("warning: "))
        elif not line.endswith(": started") and ": done in " not in line and not line.startswith("FAILED"):
            console.print(f"[dim]build: {escape(line)}[/dim]", highlight=False)
    return offset + complete


def _read_outcome(path: Path) -> BuildOutcome | None:
    try:
        return BuildOutcome.model_validate_json(path.read_text(encoding="utf-8"))
    except (OSError, ValidationError):
        return None


def repository_url(repo: str) -> str:
    """A local folder's absolute path, or the URL as given."""
    local = Path(repo).expanduser()
    return str(local.resolve()) if local.is_dir() else repo


def build_or_exit(repo_url: str, ref: str, run_id: str, state_dir: Path, build_timeout: float) -> BuildResult:
    """The repository's environments, built (or reused) as the manager builds them, and shown; a
    failed build prints the builder's whole reason and exits 2."""
    started = time.monotonic()
    try:
        build = build_environments(repo_url, ref, run_id, flops_home() / "builds", state_dir, build_timeout)
    except BuildError as error:
        console.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise typer.Exit(2) from error
    show_build(build, time.monotonic() - started)
    return build


def show_build(build: BuildResult, elapsed: float) -> None:
    verb = "reused" if build.reused else "built"
    console.print(
        f"environments {verb} in {elapsed:.1f} s: learners {build.learner_python}, "
        f"aggregator {build.aggregator_python}",
        highlight=False,
    )
    # The pins the builder relaxed (and other dependency-file notes), as the manager records them.
    for warning in build.dependency_warnings:
        console.print(f"[yellow]dependency warning:[/yellow] {escape(str(warning))}", highlight=False)


def show_progress(event: ProgressEvent, rounds: int, hierarchical: bool = False) -> None:
    if event.kind == "round" and event.round is not None:
        report: RoundReport = event.round
        word, actors = ("cycle", "clusters") if hierarchical else ("round", "learners")
        console.print(
            f"{word} {report.round}/{rounds}  accuracy {_fmt(report.accuracy)}  loss {_fmt(report.loss)}  "
            f"local accuracy {_fmt(report.local_accuracy)}  {actors} {report.learners}  "
            f"{report.duration_s:.1f} s"
        )
        for learner, reasons in flagged(report.per_learner).items():
            console.print(f"  [yellow]outlier:[/yellow] {learner}: {'; '.join(reasons)}")
        if report.privacy is not None:
            privacy = report.privacy
            largest = "" if privacy.max_update_norm is None else f", largest update {privacy.max_update_norm:.4g}"
            console.print(
                f"  privacy: epsilon {privacy.epsilon:.3f} at delta {privacy.delta:g}, "
                f"clipped to {privacy.clipping_norm:.4g}{largest}"
            )
        for cluster in report.clusters:
            console.print(
                f"  {cluster.cluster}: {len(cluster.rounds)} rounds, accuracy {_fmt(cluster.accuracy)}, "
                f"learners {', '.join(cluster.learners) or '-'}  {cluster.duration_s:.1f} s"
            )
        for failure in report.failures:
            console.print(f"  [red]failed:[/red] {escape(failure)}")
    elif event.message and event.kind != "round":
        console.print(f"[dim]{event.kind}:[/dim] {event.message}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def train_command(
    repo: str = typer.Argument(..., help="ML repository: a local folder or any git URL"),
    data_dir: Path = typer.Option(..., "--data-dir", help="folder with one data folder per node"),
    learners: int = typer.Option(2, "--learners", "-n", min=1),
    min_available: int = typer.Option(0, "--min-available-clients", help="learners to wait for (default: all)"),
    rounds: int = typer.Option(3, "--rounds", "-r", min=1, help="rounds (with --clusters: per cluster and cycle)"),
    clusters: int = typer.Option(0, "--clusters", min=0, help="train hierarchically with K cluster aggregators"),
    cycles: int = typer.Option(1, "--cycles", min=1, help="with --clusters: rounds between root and clusters"),
    min_clusters: int = typer.Option(0, "--min-clusters", min=0, help="with --clusters: clusters to go on with"),
    strategy: StrategyName = typer.Option(StrategyName.FEDAVG, "--strategy"),
    strategy_param: list[str] = typer.Option([], "--strategy-param", help="key=value, repeatable"),
    hyperparameter: list[str] = typer.Option([], "--hp", help="key=value for user code, repeatable"),
    data_tags: list[str] = typer.Option([], "--data-tags", help="data tags to train on"),
    ref: str = typer.Option("", "--ref", help="branch, tag or commit of a git repository"),
    tracking: str = typer.Option("", "--tracking-uri", help="MLflow server (default: FLOPS_TRACKING_URI or :7027)"),
    flavor: str = typer.Option("sklearn", "--flavor", help="sklearn, pytorch, keras"),
    model_name: str = typer.Option("", "--model-name", help="Model Registry name (default: repo name)"),
    project_id: str = typer.Option("", "--project-id", help="run id, tag flops.project_id (default: repo + time)"),
    experiment: str = typer.Option("", "--experiment", help="MLflow experiment (default: the model name)"),
    learner_timeout: float = typer.Option(120.0, "--learner-timeout", help="seconds to wait for learners"),
    timeout: float = typer.Option(3600.0, "--timeout", help="overall limit in seconds"),
    build_timeout: float = typer.Option(1800.0, "--build-timeout", help="seconds the environments may take to build"),
    explain: bool = typer.Option(False, "--explain", help="after training, explain the best model on the learners"),
    dp: PrivacyMode | None = typer.Option(None, "--dp", help="differential privacy: server, client or local"),
    noise_multiplier: float = typer.Option(1.0, "--noise-multiplier", help="with --dp: noise std per clipping norm"),
    clipping_norm: float = typer.Option(1.0, "--clipping-norm", help="with --dp: L2 norm updates are clipped to"),
    dp_delta: float = typer.Option(1e-5, "--dp-delta", help="with --dp: the delta epsilon is reported at"),
    adaptive_clipping: bool = typer.Option(False, "--adaptive-clipping", help="with --dp server|client"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as JSON on the last line"),
    insecure_loopback: bool = typer.Option(
        False,
        "--insecure-loopback",
        help="experiments only: plain HTTP between aggregator and learners and no learner identity "
        "(default: TLS with a CA made for this run and a key per learner)",
    ),
) -> None:
    """Train REPO federatedly with N local learners and track it in MLflow."""
    home = flops_home()
    try:
        node_dirs = node_data_dirs(data_dir.resolve(), learners)
        tags = resolve_data_tags(node_dirs, [t for tag in data_tags for t in tag.split(",") if t])
        strategy_parameters = parse_assignments(strategy_param, "--strategy-param")
        hyperparameters = parse_assignments(hyperparameter, "--hp")
        grouped = group_by_cluster(node_dirs, clusters) if clusters else {}
    except TrainInputError as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    repo_url = repository_url(repo)
    name = model_name or Path(repo_url.rstrip("/")).name.removesuffix(".git") or "model"
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    run_id = project_id or f"{name}-{stamp}"
    state_dir = home / "runs" / run_id
    build = build_or_exit(repo_url, ref, run_id, state_dir, build_timeout)
    try:
        common: dict[str, Any] = {
            "project_id": run_id,
            "model_name": name,
            "experiment_name": experiment or None,
            "model_flavor": flavor,
            "data_tags": tags,
            "strategy": StrategyConfig(name=strategy, parameters=strategy_parameters),
            "hyperparameters": hyperparameters,
            "learner_wait_timeout": learner_timeout,
            "repo_url": repo_url,
            "repo_commit": build.commit,
            "explain": ExplainRequest() if explain else None,
            "differential_privacy": None
            if dp is None
            else DifferentialPrivacy(
                mode=dp,
                clipping=Clipping.ADAPTIVE if adaptive_clipping else Clipping.FIXED,
                noise_multiplier=noise_multiplier,
                clipping_norm=clipping_norm,
                delta=dp_delta,
            ),
        }
        if grouped:
            per_cluster = min_available or min(len(members) for members in grouped.values())
            hierarchy = Hierarchy(
                clusters=list(grouped),
                cluster_rounds=rounds,
                min_clusters=min_clusters or len(grouped),
                min_available_clients=per_cluster,
                min_fit_clients=per_cluster,
                min_evaluate_clients=per_cluster,
            )
            spec = TrainingSpec.hierarchical(hierarchy, cycles, **common)
        else:
            spec = TrainingSpec(
                rounds=rounds,
                min_available_clients=min_available or learners,
                min_fit_clients=min_available or learners,
                min_evaluate_clients=min_available or learners,
                **common,
            )
        uri = tracking or tracking_uri()
        started_pid = ensure_tracking_server(uri, home / "observatory")
    except (TrackingServerError, ValidationError) as error:
        console.print(f"[red]error:[/red] {error}")
        raise typer.Exit(2) from error
    if started_pid:
        console.print(f"observatory started at {uri} (pid {started_pid}); it keeps running for the UI")
    if grouped:
        layout = ", ".join(f"{cluster}: {len(members)}" for cluster, members in grouped.items())
        console.print(
            f"training [bold]{spec.project_id}[/bold] hierarchically: {cycles} cycles x {rounds} rounds, "
            f"{len(grouped)} clusters ({layout} learners), {strategy.value}"
        )
    else:
        console.print(
            f"training [bold]{spec.project_id}[/bold]: {learners} learners x {rounds} rounds, {strategy.value}"
        )
    if insecure_loopback:
        console.print("[yellow]warning:[/yellow] --insecure-loopback: plain HTTP, any SuperNode may join")
    training = LocalTraining(spec, build, node_dirs, uri, state_dir, insecure=insecure_loopback, clusters=grouped)
    try:
        training.start()
        summary = training.follow(lambda event: show_progress(event, spec.rounds, hierarchical=bool(grouped)), timeout)
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
        name, calendar = summary.registered_model_name, summary.registered_model_calendar_version
        shown = f"model: models:/{name}/{summary.registered_model_version}"
        if calendar:
            shown += f" (calendar version {calendar}: models:/{name}@{calendar_alias(calendar)})"
        console.print(shown)
    if summary.privacy is not None:
        spent = summary.privacy
        console.print(
            f"differential privacy ({spent.mode.value}): epsilon {spent.epsilon:.3f} at delta {spent.delta:g} "
            f"after {spent.rounds} rounds, noise multiplier {spent.noise_multiplier:g}"
        )
    if summary.explanation is not None:
        top = ", ".join(f"{name} {value:.4g}" for name, value in list(summary.explanation.importances.items())[:10])
        console.print(f"feature importance ({summary.explanation.method}): {top}")
    if summary.experiment_id:
        console.print(f"MLflow: {run_url(uri, summary.experiment_id, summary.parent_run_id or '')}")
