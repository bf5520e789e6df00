"""The ServerApp: waits for learners, runs the strategy, tracks and checkpoints every round.

Settings that are the aggregator's alone (where state goes, the tracking server, the
broker) come from the environment of `flops-aggregator`, which Flower passes down to this
process and `main` reads once; the training itself comes from the run config, which
learners see too.

User code never tracks here either: the user's modules are imported while the inert MLflow
(`flops.ml_repo.inert_mlflow`) answers `import mlflow`, so an `mlflow.autolog()` or
`mlflow.log_metric()` in them does nothing, and only `aggregator.tracking` uses the real one.
`flops-aggregator` also points MLFLOW_TRACKING_URI at the tracking server (without one: a
folder in the state directory), so nothing can write `mlruns/` or `mlflow.db` into the cwd.
"""

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from aggregator.environment import ServerAppSettings
from aggregator.explain import combine_importances
from aggregator.grace_grid import GraceGrid
from aggregator.privacy import update_norm
from aggregator.replies import reply_error
from aggregator.statistics import StatisticsError, run_statistics
from aggregator.strategies import build_strategy
from flops.app_bundle import SHIM_PACKAGE
from flops.differential_privacy import RoundPrivacy, privacy_spent
from flops.events import AggregatorFinished, AggregatorStarted, Component, EventName, make_event
from flops.explain import EXPLAIN_ANSWER_KEY, EXPLAIN_PASS, EXPLAIN_RECORD, FeatureImportance, NodeImportance
from flops.flower_polling import install as install_adaptive_polling
from flops.flower_polling import retry_timeouts
from flops.learner_records import LearnerRound, flag_outliers
from flops.ml_repo.inert_mlflow import inert_mlflow
from flops.ml_repo.loader import UserCodeError, load_model_manager_class, user_code
from flops.mqtt import EventPublisher, MqttSettings
from flops.progress import ProgressEvent, ProgressLog
from flops.statistics import STATISTICS_PASS_KEY
from flops.training import (
    CLUSTER_REPORT_KEY,
    CLUSTER_REPORT_RECORD,
    EVALUATE_RECEIVED_KEY,
    GLOBAL_ACCURACY_KEY,
    GLOBAL_EXAMPLES_KEY,
    GLOBAL_LOSS_KEY,
    SPEC_RUN_CONFIG_KEY,
    TRAIN_SECONDS_KEY,
    ClusterReport,
    RoundReport,
    TrainingSpec,
    TrainingSummary,
)

KEPT_CHECKPOINTS = 2
# A cluster aggregator's run (`spec.cluster`) starts from the root's parameters in this file of its
# state folder and leaves its cluster model (the last round's aggregate) in the other.
INITIAL_PARAMETERS_FILE = "initial.npz"
FINAL_PARAMETERS_FILE = "final.npz"
# The summary's `extra` key of a cluster run's evaluation of the parameters it received.
RECEIVED_EVALUATION_KEY = "received_evaluation"

app = ServerApp()


class TrainingError(RuntimeError):
    """Training cannot go on; the message says why and what to do."""


def _open_tracker(spec: TrainingSpec, tracking_uri: str) -> Any:
    from aggregator.tracking import MlflowTracker

    return MlflowTracker(spec, tracking_uri)


def event_forwarder(project_id: str, mqtt: MqttSettings | None) -> Callable[[ProgressEvent], None] | None:
    """Publishes progress as aggregator events when there is a broker; None without one."""
    if mqtt is None:
        return None
    publisher = EventPublisher(mqtt)

    def forward(progress: ProgressEvent) -> None:
        if progress.kind == "started":
            started = AggregatorStarted(learners=int(progress.data.get("learners", 0)))
            publisher.publish(make_event(project_id, Component.AGGREGATOR, EventName.STARTED, started))
        elif progress.kind == "round" and progress.round is not None:
            publisher.publish(make_event(project_id, Component.AGGREGATOR, EventName.ROUND, progress.round))
        elif progress.kind == "finished":
            finished = AggregatorFinished(summary=TrainingSummary.model_validate(progress.data["summary"]))
            completed = finished.summary.status == "completed"
            name = EventName.SUCCEEDED if completed else EventName.FAILED
            error = None if completed else progress.message
            try:
                publisher.publish(make_event(project_id, Component.AGGREGATOR, name, finished, error))
            finally:
                publisher.close()

    return forward


class TrainingSession:
    """Everything one training keeps between rounds: reports, best model, tracking."""

    def __init__(self, spec: TrainingSpec, progress: ProgressLog, tracking_uri: str | None, grid: GraceGrid) -> None:
        self.spec = spec
        self.grid = grid
        self.state_dir = progress.state_dir
        self.progress = progress
        self.checkpoints = self.state_dir / "checkpoints"
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.reports: dict[int, RoundReport] = {}
        self.round_started_at: dict[int, float] = {}
        self.best: tuple[RoundReport, list[np.ndarray]] | None = None
        self.one_message_rounds = False  # set by `run_training` from the strategy
        self.unpublished: dict[int, list[np.ndarray]] = {}  # aggregated, global model not evaluated yet
        # A cluster run whose first round also evaluates the root's parameters (`ClusterTask.evaluate_received`).
        self.evaluates_initial = spec.cluster is not None and spec.cluster.evaluate_received
        self.received: dict[str, float | int | None] | None = None  # that evaluation, weighted over the cluster
        self.last_parameters: list[np.ndarray] | None = None
        self.node_names: dict[int, str] = {}
        self.missing: list[tuple[str, str]] = []  # the last phase's (node, reason) without a successful reply
        self.learner_rounds: dict[int, dict[str, LearnerRound]] = {}  # round -> learner -> its figures
        self.sent_parameters: list[np.ndarray] = []  # what the current round's train messages carried
        # MLflow is imported and the runs opened in the background: the first round does not
        # need them until it ends, and they cost seconds at start-up.
        self.tracking_uri = tracking_uri
        self._tracker: Future[Any] | None = None

    def open_tracker(self) -> None:
        """Start opening the MLflow runs in the background (import and HTTP take seconds)."""
        if self.tracking_uri and self._tracker is None:
            self._tracker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tracking").submit(
                _open_tracker, self.spec, self.tracking_uri
            )

    @property
    def tracker(self) -> Any:
        """The MLflow tracker (waits for it to open), or None without tracking."""
        if self._tracker is None:
            return None
        try:
            return self._tracker.result()
        except Exception as error:
            raise TrainingError(f"MLflow tracking failed: {type(error).__name__}: {error}") from error

    def tracker_if_open(self) -> Any:
        """The tracker when it opened fine, else None: for reporting a failure."""
        try:
            return self.tracker
        except TrainingError:
            return None

    def report(self, server_round: int) -> RoundReport:
        return self.reports.setdefault(server_round, RoundReport(round=server_round))

    def accept_replies(self, server_round: int, replies: list[Message], minimum: int, phase: str) -> list[Message]:
        """The successful replies; stop the training when fewer than `minimum` succeeded.

        Records the phase's failed replies and its stragglers (the learners the grid stopped waiting for).
        """
        ok = [reply for reply in replies if not reply.has_error()]
        failures = [self.failure(reply) for reply in replies if reply.has_error()]
        stragglers = [self.node_name(node_id) for node_id in self.grid.stragglers]
        self.missing = [self.named_failure(reply) for reply in replies if reply.has_error()]
        self.missing += [(name, "no reply before the phase closed (straggler)") for name in stragglers]
        report = self.report(server_round)
        report.failures.extend(failures)
        report.stragglers.extend(stragglers)
        if len(ok) < minimum:
            actors = "clusters" if self.spec.hierarchy is not None else "learners"
            silent = [f"{name}: no reply in time" for name in stragglers]
            detail = "; ".join(failures + silent) or f"{actors} did not answer in time"
            raise TrainingError(
                f"{self.round_word} {server_round} {phase}: {len(ok)} of the required {minimum} {actors} "
                f"succeeded: {detail}"
            )
        return ok

    @property
    def round_word(self) -> str:
        return "cycle" if self.spec.hierarchy is not None else "round"

    def node_name(self, node_id: int) -> str:
        """A learner's (or cluster's) registered name, else its node id."""
        if node_id not in self.node_names:
            with contextlib.suppress(Exception):  # names are a nicety: Flower's node list may be away
                self.node_names.update({node.node_id: node.name for node in self.grid.get_nodes() if node.name})
        return self.node_names.get(node_id, str(node_id))

    def named_failure(self, reply: Message) -> tuple[str, str]:
        """(the name of the node a failed reply was for, or "", the reason)."""
        node = self.grid.destination(reply)
        return (self.node_name(node) if node is not None else ""), reply_error(reply)

    def failure(self, reply: Message) -> str:
        """A failed reply's reason, prefixed with the name of the node it was for (unless it names it)."""
        name, reason = self.named_failure(reply)
        return reason if not name or reason.startswith((f"{name}:", f"cluster {name}:")) else f"{name}: {reason}"

    def participants(self, replies: list[Message]) -> list[str]:
        return sorted(self.node_name(reply.metadata.src_node_id) for reply in replies)

    def learner_round(self, server_round: int, name: str) -> LearnerRound:
        return self.learner_rounds.setdefault(server_round, {}).setdefault(name, LearnerRound(learner=name))

    def record_training(self, server_round: int, replies: list[Message], aggregated: ArrayRecord | None) -> None:
        """Each learner's training figures of `server_round`: examples, local loss and accuracy, time,
        its update's norm and distance to the averaged update; the learners that failed, with why."""
        sent = self.sent_parameters
        average = aggregated.to_numpy_ndarrays() if aggregated is not None else None
        for reply in replies:
            record = self.learner_round(server_round, self.node_name(reply.metadata.src_node_id))
            metrics = next(iter(reply.content.metric_records.values()), MetricRecord())
            record.examples = int(_metric(metrics, "num-examples") or 0)
            record.local_loss = _metric(metrics, "local-loss")
            record.local_accuracy = _metric(metrics, "local-accuracy")
            record.train_s = _metric(metrics, TRAIN_SECONDS_KEY)
            arrays = next(iter(reply.content.array_records.values()), None)
            if arrays is not None and sent:
                trained = arrays.to_numpy_ndarrays()
                record.update_norm = update_norm(trained, sent)
                # The distance of its update to the averaged update: of its parameters to the aggregate.
                record.distance_to_aggregate = update_norm(trained, average) if average is not None else None
        for name, reason in self.missing:
            self.learner_round(server_round, name or "?").failure = reason

    def record_global(self, server_round: int, replies: list[Message], loss_key: str, accuracy_key: str) -> None:
        """Each learner's loss and accuracy of round `server_round`'s global model on its data."""
        for reply in replies:
            record = self.learner_round(server_round, self.node_name(reply.metadata.src_node_id))
            metrics = next(iter(reply.content.metric_records.values()), MetricRecord())
            record.global_loss = _metric(metrics, loss_key)
            record.global_accuracy = _metric(metrics, accuracy_key)

    def round_finished(self, server_round: int, arrays: ArrayRecord) -> None:
        """Round `server_round` aggregated: checkpoint it, and publish it once its global model is evaluated.

        With one message per round the global model of round r is evaluated by the train replies
        of round r+1 (`received_evaluation`), so a round before the last is published then.
        """
        report = self.report(server_round)
        report.duration_s = time.time() - self.round_started_at.get(server_round, time.time())
        parameters = arrays.to_numpy_ndarrays()
        self._checkpoint(server_round, parameters)
        self.last_parameters = parameters
        self.unpublished[server_round] = parameters
        if not self.evaluated_later(server_round):
            self.publish(server_round)

    def evaluated_later(self, server_round: int) -> bool:
        """Whether the global model of `server_round` is evaluated by the next round's train replies."""
        return self.one_message_rounds and 1 <= server_round < self.spec.rounds

    def received_evaluation(self, server_round: int, replies: list[Message]) -> None:
        """The global model of `server_round` as the next round's learners evaluated it; publishes the round."""
        report = self.report(server_round)
        report.loss, report.accuracy, report.eval_examples = received_figures(replies)
        self.publish(server_round)

    def publish(self, server_round: int) -> None:
        """Track and announce a round, and keep its model when it is the best so far."""
        parameters = self.unpublished.pop(server_round, None)
        if parameters is None:
            return
        report = self.report(server_round)
        learners = self.learner_rounds.pop(server_round, {})
        report.per_learner = flag_outliers([learners[name] for name in sorted(learners)])
        if self.tracker is not None:
            self.tracker.log_round(report)  # sets report.run_id; later while MLflow is away (buffered)
        if self.best is None or self._better(report, self.best[0]):
            self.best = (report, [p.copy() for p in parameters])
        self.progress.emit(ProgressEvent(kind="round", round=report))

    def publish_unevaluated(self) -> None:
        """A training that stops: the rounds whose global model no next round evaluated, as they are."""
        if self._tracker is not None and self.tracker_if_open() is None:
            self.unpublished.clear()  # tracking is what failed: report the rounds in the summary only
        for server_round in sorted(self.unpublished):
            self.publish(server_round)

    def _better(self, candidate: RoundReport, incumbent: RoundReport) -> bool:
        def key(report: RoundReport) -> tuple[float, float]:
            loss = report.loss if report.loss is not None else float("inf")
            accuracy = report.accuracy if report.accuracy is not None else float("-inf")
            if self.spec.best_model_metric == "loss":
                return (-loss, accuracy)
            return (accuracy, -loss)

        return key(candidate) > key(incumbent)

    def _checkpoint(self, server_round: int, parameters: list[np.ndarray]) -> None:
        path = self.checkpoints / f"round-{server_round}.npz"
        np.savez(path, *parameters)
        stale = self.checkpoints / f"round-{server_round - KEPT_CHECKPOINTS}.npz"
        stale.unlink(missing_ok=True)


class RoundHooks:
    """Mixed in before a Flower strategy: sees every round's replies and results.

    Each phase tells the session's `GraceGrid` the successful replies it needs (what
    `accept_replies` checks), so the phase stops waiting for stragglers a grace after it has them.

    With `session.one_message_rounds` a round is one message per learner: the train message of
    round r+1 asks for the global model of round r to be evaluated first, and only the last
    round has an evaluate phase of its own.
    """

    session: TrainingSession
    min_train_nodes: int
    min_evaluate_nodes: int

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.session.round_started_at[server_round] = time.time()
        evaluate_received = self.session.evaluated_later(server_round - 1) or (
            server_round == 1 and self.session.evaluates_initial
        )
        config = ConfigRecord({**config, EVALUATE_RECEIVED_KEY: evaluate_received})
        self.session.sent_parameters = arrays.to_numpy_ndarrays()
        self.session.grid.expect_replies(self.min_train_nodes)
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        ok = self.session.accept_replies(server_round, list(replies), self.min_train_nodes, "training")
        if self.session.evaluated_later(server_round - 1):
            self.session.record_global(server_round - 1, ok, GLOBAL_LOSS_KEY, GLOBAL_ACCURACY_KEY)
            self.session.received_evaluation(server_round - 1, ok)
        elif server_round == 1 and self.session.evaluates_initial:
            loss, accuracy, examples = received_figures(ok)
            self.session.received = {"loss": loss, "accuracy": accuracy, "examples": examples}
        clipping_norm = getattr(self, "clipping_norm", None)  # DP: what this round clips to (adaptive: it moves)
        arrays, metrics = super().aggregate_train(server_round, ok)  # type: ignore[misc]
        self.session.record_training(server_round, ok, arrays)
        report = self.session.report(server_round)
        privacy = self.session.spec.differential_privacy
        if privacy is not None and arrays is not None:
            norms = getattr(getattr(self, "strategy", None), "update_norms", {}).get(server_round)
            report.privacy = RoundPrivacy(
                epsilon=privacy_spent(privacy, server_round).epsilon,
                delta=privacy.delta,
                clipping_norm=privacy.clipping_norm if clipping_norm is None else clipping_norm,
                max_update_norm=max(norms) if norms else None,
            )
        report.learners = len(ok)
        report.participants = self.session.participants(ok)
        if self.session.spec.hierarchy is not None:
            lost = [
                ClusterReport(cluster=name or "?", cycle=server_round, error=reason)
                for name, reason in self.session.missing
            ]
            report.clusters = sorted([*cluster_reports(ok), *lost], key=lambda cluster: cluster.cluster)
        if metrics is not None:
            report.train_examples = _examples(ok)
            report.local_loss = _metric(metrics, "local-loss")
            report.local_accuracy = _metric(metrics, "local-accuracy")
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.session.evaluated_later(server_round):
            return []
        self.session.grid.expect_replies(self.min_evaluate_nodes)
        return super().configure_evaluate(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        if self.session.evaluated_later(server_round):
            return None
        ok = self.session.accept_replies(server_round, list(replies), self.min_evaluate_nodes, "evaluation")
        self.session.record_global(server_round, ok, "loss", "accuracy")
        metrics = super().aggregate_evaluate(server_round, ok)  # type: ignore[misc]
        report = self.session.report(server_round)
        if metrics is not None:
            report.eval_examples = _examples(ok)
            report.loss = _metric(metrics, "loss")
            report.accuracy = _metric(metrics, "accuracy")
        return metrics


def one_message_rounds(strategy: Any) -> bool:
    """Whether the learners that train a round may also evaluate the global model before it.

    Only when the strategy samples training and evaluation alike (same fraction, same minimum):
    otherwise evaluation keeps its own phase each round, on the learners the strategy picks for it.
    """
    fraction_train = getattr(strategy, "fraction_train", None)
    fraction_evaluate = getattr(strategy, "fraction_evaluate", None)
    return (
        fraction_train is not None
        and fraction_train == fraction_evaluate
        and getattr(strategy, "min_train_nodes", None) == getattr(strategy, "min_evaluate_nodes", None)
    )


def user_code_paths(manager_class: type) -> list[str]:
    """The user's modules and packages beside `model_manager.py`, to ship with the model."""
    module = sys.modules.get(manager_class.__module__)
    if module is None or not getattr(module, "__file__", None):
        return []
    root = Path(str(module.__file__)).parent
    paths = [p for p in root.glob("*.py")]
    paths += [p for p in root.iterdir() if (p / "__init__.py").is_file() and p.name != SHIM_PACKAGE]
    return sorted(str(p) for p in paths)


def _examples(replies: list[Message], key: str = "num-examples") -> int:
    counts = [reply.content.metric_records["metrics"].get(key, 0) for reply in replies]
    return int(sum(c for c in counts if isinstance(c, int | float)))


def _metric(metrics: MetricRecord, key: str) -> float | None:
    value = metrics.get(key)
    return float(value) if isinstance(value, int | float) else None


def received_figures(replies: list[Message]) -> tuple[float | None, float | None, int]:
    """(loss, accuracy, examples) of the model the replies' learners evaluated before training.

    Weighted by the examples evaluated, as Flower's strategies weight an evaluate phase.
    """
    examples = _examples(replies, GLOBAL_EXAMPLES_KEY)
    received = MetricRecord()
    if examples:  # Flower divides by the total weight
        received = aggregate_metricrecords([reply.content for reply in replies], GLOBAL_EXAMPLES_KEY)
    return _metric(received, GLOBAL_LOSS_KEY), _metric(received, GLOBAL_ACCURACY_KEY), examples


def cluster_reports(replies: list[Message]) -> list[ClusterReport]:
    """The cluster reports a root's train replies carry (`CLUSTER_REPORT_RECORD`), sorted by cluster."""
    reports = []
    for reply in replies:
        record = reply.content.config_records.get(CLUSTER_REPORT_RECORD)
        raw = record.get(CLUSTER_REPORT_KEY) if record is not None else None
        if isinstance(raw, str):
            reports.append(ClusterReport.model_validate_json(raw))
    return sorted(reports, key=lambda report: report.cluster)


def wait_for_learners(grid: Grid, spec: TrainingSpec, progress: ProgressLog) -> int:
    deadline = time.monotonic() + spec.learner_wait_timeout
    announced = -1
    actors = "cluster aggregators" if spec.hierarchy is not None else "learners"
    where = f" of cluster {spec.cluster.cluster}" if spec.cluster is not None else ""
    while (joined := len(list(grid.get_node_ids()))) < spec.min_available_clients:
        if joined != announced:
            progress.emit(
                ProgressEvent(
                    kind="waiting",
                    message=f"{joined} of {spec.min_available_clients} {actors}{where} joined",
                    data={"joined": joined, "required": spec.min_available_clients},
                )
            )
            announced = joined
        if time.monotonic() >= deadline:
            remedy = "check the cluster aggregators' logs" if spec.hierarchy else "lower min_available_clients"
            raise TrainingError(
                f"only {joined} of {spec.min_available_clients} required {actors}{where} joined within "
                f"{spec.learner_wait_timeout:.0f} s: start more {actors} (check their logs) or {remedy}"
            )
        time.sleep(0.5)
    return joined


@app.main()
def main(grid: Grid, context: Context) -> None:
    install_adaptive_polling("grid")
    # The grid and its retries were made before this function runs: they get the hook themselves.
    retry_timeouts(getattr(grid, "_retry_invoker", None))
    spec = TrainingSpec.model_validate_json(str(context.run_config[SPEC_RUN_CONFIG_KEY]))
    settings = ServerAppSettings.from_env(os.environ)
    state_dir = settings.state_dir or Path.cwd() / ".flops" / spec.project_id
    if spec.cluster is not None:  # one run of a cluster aggregator: its own folder, no tracking, no events
        run_training(grid, spec, state_dir / spec.cluster.folder, None)
        return
    if spec.statistics is not None:
        run_job(grid, spec, state_dir, settings.tracking_uri, settings.mqtt, statistics_answer)
        return
    if spec.explain is not None and spec.explain.model_uri:
        run_job(grid, spec, state_dir, settings.tracking_uri, settings.mqtt, explanation_answer)
        return
    run_training(grid, spec, state_dir, settings.tracking_uri, settings.mqtt)


def run_job(
    grid: Grid,
    spec: TrainingSpec,
    state_dir: Path,
    tracking_uri: str | None,
    mqtt: MqttSettings | None,
    answer: Callable[[TrainingSession], TrainingSummary],
) -> TrainingSummary:
    """A job of passes over the learners instead of rounds (statistics, explanation): once the
    learners joined, `answer` asks them and tracks its result; progress and failures as a training's."""
    started = time.time()
    progress = ProgressLog(state_dir, event_forwarder(spec.project_id, mqtt))
    session = TrainingSession(spec, progress, tracking_uri, GraceGrid(grid, spec.straggler_grace_s))
    try:
        joined = wait_for_learners(grid, spec, progress)
        progress.emit(ProgressEvent(kind="started", message=f"{joined} learners joined", data={"learners": joined}))
        session.open_tracker()
        summary = answer(session)
    except Exception as error:
        _report_failure(spec, session, progress, error, started, tracking_uri)
        raise
    _fill_tracking(summary, session)
    summary.duration_s = time.time() - started
    _finish(session, progress, summary)
    return summary


def statistics_answer(session: TrainingSession) -> TrainingSummary:
    """A statistics job (`flops.statistics`): both passes over the learners, the result tracked."""
    spec = session.spec
    assert spec.statistics is not None
    request = spec.statistics.model_copy(update={"min_nodes": max(spec.statistics.min_nodes, spec.min_fit_clients)})
    result = run_statistics(session.grid, request, spec.round_timeout, session.node_name)
    if session.tracker is not None:
        session.tracker.log_statistics(result)
    return TrainingSummary(status="completed", project_id=spec.project_id, statistics=result)


def explanation_answer(session: TrainingSession) -> TrainingSummary:
    """An explain job (`flops.explain`): the registered model's parameters, as its training run kept
    them, explained by every learner on its data; the explanation tracked in a run of its own."""
    spec = session.spec
    assert spec.explain is not None and spec.explain.model_uri is not None
    model_uri = spec.explain.model_uri
    # The tracker (opened, and MLflow imported, in the background by `run_job`) lends its client:
    # importing MLflow here too, while that thread imports it, fails with a half-initialized module.
    tracker = session.tracker
    if tracker is None:
        raise TrainingError(f"an explain job reads {model_uri} from MLflow, and this aggregator has no tracking")
    from aggregator.tracking import registered_parameters  # MLflow: imported once the tracker is open

    try:
        parameters, version = registered_parameters(tracker.client, model_uri, session.state_dir)
    except ValueError as error:
        raise TrainingError(str(error)) from error
    session.progress.emit(ProgressEvent(kind="model", message=f"explaining {model_uri} (version {version})"))
    explanation = explain_model(session.grid, spec, parameters, session.node_name)
    explanation.model_uri = model_uri
    tracker.log_explanation(explanation)
    return TrainingSummary(
        status="completed", project_id=spec.project_id, explanation=explanation, tracking_uri=session.tracking_uri
    )


def run_training(
    grid: Grid, spec: TrainingSpec, state_dir: Path, tracking_uri: str | None, mqtt: MqttSettings | None = None
) -> TrainingSummary:
    """One training from the first round to the summary; progress to `state_dir` and, with `mqtt`, as events."""
    started = time.time()
    progress = ProgressLog(state_dir, event_forwarder(spec.project_id, mqtt))
    session: TrainingSession | None = None
    try:
        grace_grid = GraceGrid(grid, spec.straggler_grace_s)
        session = TrainingSession(spec, progress, tracking_uri, grace_grid)
        manager_class: type | None = None
        if spec.cluster is not None:  # the root's parameters, which the cluster aggregator received
            initial = load_parameters(state_dir / INITIAL_PARAMETERS_FILE)
        else:
            # User code imported here binds the inert MLflow (`import mlflow; mlflow.autolog()` at the
            # top of model_manager.py): it never tracks, the platform's own tracking is the real MLflow.
            with user_code("aggregator"), inert_mlflow():
                manager_class = load_model_manager_class()
                initial = [np.asarray(p) for p in manager_class().get_model_parameters()]
        strategy = build_strategy(spec, base=RoundHooks)
        strategy.session = session  # type: ignore[attr-defined]
        session.one_message_rounds = one_message_rounds(strategy)
        joined = wait_for_learners(grid, spec, progress)
        actors = "cluster aggregators" if spec.hierarchy is not None else "learners"
        progress.emit(ProgressEvent(kind="started", message=f"{joined} {actors} joined", data={"learners": joined}))
        session.open_tracker()
        if spec.cluster is not None and spec.cluster.task == "evaluate":
            summary = _evaluated_summary(spec, session, strategy, grace_grid, initial, started)
            _finish(session, progress, summary)
            return summary

        def end_of_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if server_round > 0:
                assert session is not None
                session.round_finished(server_round, arrays)
            return None

        strategy.start(
            grid=grace_grid,
            initial_arrays=ArrayRecord(initial),
            num_rounds=spec.rounds,
            timeout=spec.round_timeout,
            train_config=ConfigRecord(dict(spec.hyperparameters)),
            evaluate_fn=end_of_round,
        )
        if manager_class is None:
            summary = _cluster_summary(spec, session, started)
        else:
            summary = _completed_summary(spec, session, manager_class, started, tracking_uri)
            if spec.explain is not None and session.best is not None:
                summary.explanation = explain_model(grace_grid, spec, session.best[1], session.node_name)
                if session.tracker is not None:
                    session.tracker.log_explanation(summary.explanation)
                summary.duration_s = time.time() - started
    except Exception as error:
        _report_failure(spec, session, progress, error, started, tracking_uri)
        raise
    _finish(session, progress, summary)
    return summary


def _completed_summary(
    spec: TrainingSpec,
    session: TrainingSession,
    manager_class: type,
    started: float,
    tracking_uri: str | None,
) -> TrainingSummary:
    rounds = [session.reports[r] for r in sorted(session.reports)]
    summary = TrainingSummary(status="completed", project_id=spec.project_id, rounds=rounds, tracking_uri=tracking_uri)
    if rounds:
        summary.final_loss, summary.final_accuracy = rounds[-1].loss, rounds[-1].accuracy
    if spec.differential_privacy is not None:
        summary.privacy = privacy_spent(spec.differential_privacy, len(rounds))
    if session.best is not None:
        best_report, best_parameters = session.best
        summary.best_round = best_report.round
        with user_code("aggregator"):
            manager = manager_class()
            manager.set_model_parameters(best_parameters)
            model = manager.get_model()
            example_fn = getattr(manager, "get_input_example", None)
            example = example_fn() if callable(example_fn) else None
        np.savez(session.checkpoints / "best.npz", *best_parameters)
        if session.tracker is not None:
            logged = session.tracker.log_model(
                model, example, best_report, user_code_paths(manager_class), best_parameters
            )
            summary.model_uri = logged.model_uri
            summary.registered_model_name = logged.registered_name
            summary.registered_model_version = logged.registered_version
            summary.registered_model_calendar_version = logged.calendar_version
            summary.model_input = logged.input
            session.progress.emit(ProgressEvent(kind="model", message=logged.model_uri))
    _fill_tracking(summary, session)
    summary.duration_s = time.time() - started
    return summary


def explain_model(
    grid: Grid, spec: TrainingSpec, parameters: list[np.ndarray], name_of: Callable[[int], str]
) -> FeatureImportance:
    """The post-training step `explain_model`: every learner explains `parameters` on its data (`flops.explain`)."""
    content = RecordDict(
        {"arrays": ArrayRecord(parameters), "config": ConfigRecord({STATISTICS_PASS_KEY: EXPLAIN_PASS})}
    )
    nodes = list(grid.get_node_ids())
    messages = [grid.create_message(content, MessageType.QUERY, node, "explain") for node in nodes]
    answers, failures = [], []
    for reply in grid.send_and_receive(messages, timeout=spec.round_timeout):
        if reply.has_error():
            failures.append(f"{name_of(reply.metadata.src_node_id)}: {reply_error(reply)}")
            continue
        record = reply.content.config_records.get(EXPLAIN_RECORD)
        if record is not None and isinstance(record.get(EXPLAIN_ANSWER_KEY), str):
            answers.append(NodeImportance.model_validate_json(str(record[EXPLAIN_ANSWER_KEY])))
    if len(answers) < spec.min_evaluate_clients:
        detail = "; ".join(failures) or "the learners did not answer in time"
        raise TrainingError(
            f"explain_model: {len(answers)} of {spec.min_evaluate_clients} learners explained: {detail}"
        )
    return combine_importances(answers)


def load_parameters(path: Path) -> list[np.ndarray]:
    """Parameters saved with `np.savez(path, *parameters)`, in their order."""
    with np.load(path) as saved:
        return [saved[f"arr_{index}"] for index in range(len(saved.files))]


def _cluster_summary(spec: TrainingSpec, session: TrainingSession, started: float) -> TrainingSummary:
    """A cluster run's end: its rounds, its model (the last round's aggregate) beside the summary."""
    if session.last_parameters is None:
        raise TrainingError("the cluster's training ended without an aggregated model")
    np.savez(session.state_dir / FINAL_PARAMETERS_FILE, *session.last_parameters)
    rounds = [session.reports[r] for r in sorted(session.reports)]
    summary = TrainingSummary(status="completed", project_id=spec.project_id, rounds=rounds)
    summary.final_loss, summary.final_accuracy = rounds[-1].loss, rounds[-1].accuracy
    if session.received is not None:
        summary.extra[RECEIVED_EVALUATION_KEY] = session.received
    summary.duration_s = time.time() - started
    return summary


def _evaluated_summary(
    spec: TrainingSpec,
    session: TrainingSession,
    strategy: Any,
    grid: GraceGrid,
    arrays: list[np.ndarray],
    started: float,
) -> TrainingSummary:
    """A cluster run that only evaluates the parameters it received: one evaluate phase, round 1."""
    session.one_message_rounds = False  # the phase of its own, on the learners the strategy picks
    messages = strategy.configure_evaluate(1, ArrayRecord(arrays), ConfigRecord(), grid)
    replies = list(grid.send_and_receive(messages, timeout=spec.round_timeout))
    strategy.aggregate_evaluate(1, replies)
    report = session.report(1)
    report.participants = session.participants([reply for reply in replies if not reply.has_error()])
    summary = TrainingSummary(status="completed", project_id=spec.project_id, rounds=[report])
    summary.final_loss, summary.final_accuracy = report.loss, report.accuracy
    summary.duration_s = time.time() - started
    return summary


# Failures whose message is the whole story for the user; any other names its exception type too.
EXPLAINED_FAILURES = (TrainingError, UserCodeError, StatisticsError, ValueError)


def _report_failure(
    spec: TrainingSpec,
    session: TrainingSession | None,
    progress: ProgressLog,
    error: Exception,
    started: float,
    tracking_uri: str | None,
) -> None:
    """Summarize, track and announce a training or job that stopped with `error`."""
    message = str(error) if isinstance(error, EXPLAINED_FAILURES) else f"{type(error).__name__}: {error}"
    _finish(session, progress, _failed_summary(spec, session, message, started, tracking_uri))


def _failed_summary(
    spec: TrainingSpec,
    session: TrainingSession | None,
    error: str,
    started: float,
    tracking_uri: str | None,
) -> TrainingSummary:
    summary = TrainingSummary(status="failed", project_id=spec.project_id, error=error, tracking_uri=tracking_uri)
    if session is not None:
        session.publish_unevaluated()
        summary.rounds = [session.reports[r] for r in sorted(session.reports) if r in session.reports]
        _fill_tracking(summary, session)
    summary.duration_s = time.time() - started
    return summary


def _fill_tracking(summary: TrainingSummary, session: TrainingSession) -> None:
    tracker = session.tracker_if_open()
    if tracker is not None:
        summary.experiment_id = tracker.experiment_id
        summary.parent_run_id = tracker.parent_run_id
        summary.round_run_ids = [report.run_id for report in summary.rounds if report.run_id]


def _finish(session: TrainingSession | None, progress: ProgressLog, summary: TrainingSummary) -> None:
    tracker = session.tracker_if_open() if session is not None else None
    if tracker is not None:
        tracker.finish(summary.status == "completed", summary.error)
    progress.write_summary(summary)
    progress.emit(
        ProgressEvent(
            kind="finished",
            message=summary.error or summary.status,
            data={"status": summary.status, "summary": summary.model_dump(mode="json")},
        )
    )
