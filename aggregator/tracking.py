"""MLflow tracking of one federated training, the way an ML engineer expects to find it.

One experiment per project *name* (the SLA's `project_name`, else the repository's name: the
same name as the registered model; under the manager both are `<customerID>.<name>`), tagged
as a model-training experiment; in it, per training, one `training-<project id>` run with the
parameters, system metrics, per-round curves (`step=round`) and the best model, registered in
the Model Registry; and one `round-N` run per round (FLOps's one row per round), a top-level run
so the runs table shows it as a row. Every run carries the project id as tag `flops.project_id`.
Only the aggregator imports this module.

The tracker acts as the identity its process is given (`FLOPS_TRACKING_CREDENTIALS_FILE`, a file
the manager writes, else MLflow's own MLFLOW_TRACKING_USERNAME/PASSWORD), and never waits on
MLflow for long: every HTTP call has a time-out (MLFLOW_HTTP_REQUEST_TIMEOUT, 10 s unless set) and
no hidden retries. When the server is away, rounds are kept and written, each once, when it
answers again; training goes on meanwhile. The end of the training (every round, the model)
waits for it, retrying every few seconds, but only until the server has been away for
`FLOPS_TRACKING_OUTAGE_LIMIT` seconds (120 unless set): then `TrackingUnavailableError` ("tracking
server at URL unreachable for N s") fails the training. A watcher thread looks at the server
every few seconds between rounds too, so an outage is noticed, and a training stopped, within
the limit plus about 20 s (a look, one request's time-out, Flower's 3 s poll) whatever a round
lasts: it raises the error in the training's thread, which ends as on any other failure.
"""

import ctypes
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import mlflow
import numpy as np
import requests
from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NOTE

from flops.explain import MODEL_URI_PATTERN, PARAMETERS_ARTIFACT, FeatureImportance
from flops.learner_records import flagged
from flops.statistics import StatisticsResult
from flops.tracking_auth import (
    CREDENTIALS_FILE_ENV,
    DEFAULT_OUTAGE_LIMIT_S,
    OUTAGE_LIMIT_ENV,
    credentials_env,
    read_credentials,
)
from flops.tracking_server import run_url
from flops.training import ClusterReport, ModelFlavor, ModelInput, RoundReport, TrainingSpec, calendar_alias

# MLflow 3's experiment kind: "custom_model_development" is the UI's "Machine learning" kind
# (the other kinds it knows: genai_development, finetuning, regression, ...).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
PROJECT_TAG = "flops.project_id"
ROLE_TAG = "flops.role"
ROUND_TAG = "flops.round"
CLUSTER_TAG = "flops.cluster"
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow's own: the UI nests a run under this one
# Every registered version also gets a calendar version (YEAR.MONTH.N, N from 1 each month and model)
# as this tag and as the alias `calendar_alias` makes of it, which clients can load by (models:/NAME@v2026-12-1).
CALENDAR_VERSION_TAG = "flops.calendar_version"
TRAINING_RUN_TAG = "flops.training_run_id"
EXPERIMENT_NOTE = (
    "Federated training with FLOps. Per training: one `training-<project id>` run with the "
    "parameters, the per-round curves (step = round), system metrics and the best model; one "
    "`round-N` run per round. Every run carries its project id as tag `flops.project_id`."
)

ROUND_METRICS = ("loss", "accuracy", "local_loss", "local_accuracy")
RETRY_INTERVAL_S = 3.0
# How often the watcher looks at the server between rounds, and how long one look may take.
WATCH_INTERVAL_S = 5.0
PROBE_TIMEOUT_S = 5.0
# MLflow's client waits minutes per call by default (a 120 s time-out, 7 retries with backoff):
# the outage limit above is the one bound, so each call gets one short try.
CLIENT_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}
T = TypeVar("T")


class TrackingUnavailableError(RuntimeError):
    """The tracking server has been unreachable for longer than the outage limit."""


def interrupt_thread(thread_id: int | None, error: BaseException) -> None:
    """Raise `error` (its type and message) in thread `thread_id` at its next Python instruction.

    The training's thread spends rounds waiting in Flower's polling loop (Python, sleeping
    between polls): this ends the wait with the tracking failure, which the ServerApp reports
    as any other failure of the training.
    """
    if thread_id is None:
        return
    message = str(error)

    def __init__(self: BaseException, *_: object) -> None:
        BaseException.__init__(self, message)

    interrupting = type(type(error).__name__, (type(error),), {"__init__": __init__})
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(interrupting))


def configure_client(env: MutableMapping[str, str]) -> None:
    """Time-outs for every MLflow call of this process, and the identity its credentials file names."""
    for name, value in CLIENT_ENV_DEFAULTS.items():
        env.setdefault(name, value)
    path = env.get(CREDENTIALS_FILE_ENV)
    if path:
        env.update(credentials_env(read_credentials(Path(path))))


def outage_limit(env: MutableMapping[str, str]) -> float:
    raw = env.get(OUTAGE_LIMIT_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_OUTAGE_LIMIT_S
    except ValueError:
        raise ValueError(f"{OUTAGE_LIMIT_ENV} is {raw!r}: give the seconds as a number") from None


def is_unavailable(error: BaseException) -> bool:
    """The server away or failing for now (no answer, a time-out, 5xx or 429), not a refusal."""
    if isinstance(error, MlflowException):
        status = error.get_http_status_code()
        return status >= 500 or status == 429
    return isinstance(error, (requests.RequestException, ConnectionError, TimeoutError))


@dataclass
class LoggedModel:
    model_uri: str
    registered_name: str | None
    registered_version: str | None
    input: ModelInput | None = None
    calendar_version: str | None = None


def training_params(spec: TrainingSpec) -> dict[str, str]:
    if spec.statistics is not None:
        request = spec.statistics
        return {
            "job": "statistics",
            "data_tags": ",".join(spec.data_tags),
            "features": ",".join(request.features) or "(all numeric)",
            "statistics": ",".join(request.statistics),
            "bins": str(request.bins),
            "quantiles": ",".join(f"{q:g}" for q in request.quantiles),
        }
    params: dict[str, Any] = {
        "strategy": spec.strategy.name.value,
        "rounds": spec.rounds,
        "min_available_clients": spec.min_available_clients,
        "min_fit_clients": spec.min_fit_clients,
        "min_evaluate_clients": spec.min_evaluate_clients,
        "data_tags": ",".join(spec.data_tags),
        "model_flavor": spec.model_flavor.value,
        "best_model_metric": spec.best_model_metric,
        "repo_url": spec.repo_url,
        "repo_commit": spec.repo_commit,
    }
    if spec.hierarchy is not None:
        hierarchy = spec.hierarchy
        params.update(
            {
                "mode": "hierarchical",
                "training_cycles": spec.rounds,
                "training_rounds": hierarchy.cluster_rounds,
                "clusters": ",".join(hierarchy.clusters),
                "min_clusters": hierarchy.min_clusters,
                "min_available_clients": hierarchy.min_available_clients,
                "min_fit_clients": hierarchy.min_fit_clients,
                "min_evaluate_clients": hierarchy.min_evaluate_clients,
            }
        )
    if spec.differential_privacy is not None:
        params.update({f"dp.{k}": v for k, v in spec.differential_privacy.model_dump(mode="json").items()})
    params.update({f"strategy.{k}": v for k, v in spec.strategy.parameters.items()})
    params.update({f"hp.{k}": v for k, v in spec.hyperparameters.items()})
    return {key: str(value) for key, value in params.items()}


def job_role(spec: TrainingSpec) -> str:
    """The `flops.role` of a job's run: training, statistics or explanation (an explain job)."""
    if spec.statistics is not None:
        return "statistics"
    return "explanation" if spec.explain is not None and spec.explain.model_uri else "training"


def registered_parameters(client: MlflowClient, model_uri: str, folder: Path) -> tuple[list[np.ndarray], str]:
    """The parameters of the registered model `model_uri` (models:/NAME/VERSION or models:/NAME@ALIAS),
    as its training run kept them, and the version; a clear error where there are none."""
    match = re.match(MODEL_URI_PATTERN, model_uri)
    if match is None:
        raise ValueError(f"{model_uri} is no registered model URI: models:/NAME/VERSION or models:/NAME@ALIAS")
    name, reference = match.group(1), match.group(2)
    try:
        if reference.startswith("@"):
            version = client.get_model_version_by_alias(name, reference[1:])
        else:
            version = client.get_model_version(name, reference[1:])
    except MlflowException as error:
        raise ValueError(f"{model_uri}: no such registered model version ({error.error_code})") from error
    if not version.run_id:
        raise ValueError(f"{model_uri} was not registered by a FLOps training (no run): nothing to explain")
    try:
        local = client.download_artifacts(version.run_id, f"{PARAMETERS_ARTIFACT}/best.npz", str(folder))
    except MlflowException as error:
        raise ValueError(
            f"{model_uri}: its training run {version.run_id} kept no parameters ({PARAMETERS_ARTIFACT}/best.npz); "
            "models registered by FLOps before explain jobs existed cannot be explained: train again"
        ) from error
    with np.load(local) as saved:
        return [saved[f"arr_{index}"] for index in range(len(saved.files))], str(version.version)


METRICS_PER_BATCH = 900  # MLflow takes at most 1000 metrics in one log_batch
LEARNER_METRICS = (
    "examples", "global_loss", "global_accuracy", "local_loss", "local_accuracy", "train_s", "update_norm",
    "distance_to_aggregate",
)  # fmt: skip


def round_metrics(report: RoundReport) -> dict[str, float]:
    metrics = {name: getattr(report, name) for name in ROUND_METRICS}
    values = {name: float(value) for name, value in metrics.items() if value is not None}
    values["learners"] = float(report.learners)
    values["failures"] = float(len(report.failures))
    values["stragglers"] = float(len(report.stragglers))
    values["round_duration_s"] = report.duration_s
    for record in report.per_learner:  # each learner's figures, its name in the key
        figures = {name: getattr(record, name) for name in LEARNER_METRICS}
        values.update({f"learner.{record.learner}.{k}": float(v) for k, v in figures.items() if v is not None})
        values[f"learner.{record.learner}.flagged"] = float(bool(record.flags))
    values["outliers"] = float(sum(1 for record in report.per_learner if record.flags))
    if report.privacy is not None:
        values["dp_epsilon"] = report.privacy.epsilon
        values["dp_clipping_norm"] = report.privacy.clipping_norm
        if report.privacy.max_update_norm is not None:
            values["dp_max_update_norm"] = report.privacy.max_update_norm
    return values


@dataclass
class _RoundWrite:
    """How far one round's tracking got, so a retry goes on where it stopped and writes nothing twice."""

    report: RoundReport
    timestamp_ms: int
    run_id: str | None = None
    tried_create: bool = False
    logged: bool = False
    terminated: bool = False
    clusters: set[str] = field(default_factory=set)  # cluster runs written completely
    curves: bool = False


@dataclass
class _Outage:
    since: float | None = None
    last_error: str = ""
    gave_up: bool = False
    failed_calls: int = 0
    error: "TrackingUnavailableError | None" = None


class MlflowTracker:
    """Owns the `training-<project id>` run of one training (`parent_run_id`) from start to end.

    Uses the explicit client API rather than MLflow's thread-local "active run", so the run can
    be opened in a background thread while the first round already trains. While the server is
    away the tracker keeps what it could not write (`pending_rounds`); see the module's doc.
    """

    def __init__(
        self,
        spec: TrainingSpec,
        tracking_uri: str,
        outage_limit_s: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        watch_interval_s: float = WATCH_INTERVAL_S,
    ) -> None:
        configure_client(os.environ)
        self.spec = spec
        self.tracking_uri = tracking_uri
        self.outage_limit_s = outage_limit(os.environ) if outage_limit_s is None else outage_limit_s
        self._clock = clock
        self._sleep = sleep
        mlflow.set_tracking_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri)
        self.experiment_id: str | None = None
        self.parent_run_id: str | None = None
        self._tried_parent = False
        self._params_logged = False
        self._system_metrics: SystemMetricsMonitor | None = None
        self._rounds: dict[int, _RoundWrite] = {}
        self._finishing = False
        self.outage = _Outage()
        self._lock = threading.RLock()
        self._blocking = 0  # a call of the training's own thread is waiting for the server
        self._training_thread = threading.main_thread().ident
        self._stop = threading.Event()
        self._attempt(self._open)
        self._watcher = threading.Thread(
            target=self._watch, args=(watch_interval_s,), name="tracking-watch", daemon=True
        )
        self._watcher.start()

    # ------------------------------------------------------------ the outage bound
    def _attempt(self, action: Callable[[], T]) -> tuple[bool, T | None]:
        """Run `action` once: (True, result), or (False, None) while the server is away within the limit."""
        with self._lock:
            return self._attempt_locked(action)

    def _attempt_locked(self, action: Callable[[], T]) -> tuple[bool, T | None]:
        if self.outage.gave_up and self.outage.error is not None:
            raise self.outage.error
        try:
            result = action()
        except Exception as error:
            if not is_unavailable(error):
                raise
            now = self._clock()
            if self.outage.since is None:
                self.outage.since = now
                print(f"flops-aggregator: tracking server at {self.tracking_uri} unreachable: {error}", flush=True)
            self.outage.last_error = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
            self.outage.failed_calls += 1
            away = now - self.outage.since
            if away >= self.outage_limit_s:
                self.outage.gave_up = True
                self.outage.error = TrackingUnavailableError(
                    f"tracking server at {self.tracking_uri} unreachable for {away:.0f} s "
                    f"(limit {self.outage_limit_s:.0f} s, {OUTAGE_LIMIT_ENV}): {self.outage.last_error}; "
                    "start it again (or check its address) and retrain"
                )
                raise self.outage.error from error
            return False, None
        if self.outage.since is not None:
            print(
                f"flops-aggregator: tracking server at {self.tracking_uri} answers again after "
                f"{self._clock() - self.outage.since:.0f} s",
                flush=True,
            )
            self.outage.since = None
        return True, result

    def _until_done(self, action: Callable[[], T]) -> T:
        """`action`, retried every few seconds while the server is away; raises once it is away too long."""
        self._blocking += 1
        try:
            while True:
                done, result = self._attempt(action)
                if done:
                    return result  # type: ignore[return-value]
                since = self.outage.since
                left = self.outage_limit_s - (self._clock() - since) if since is not None else RETRY_INTERVAL_S
                self._sleep(max(0.1, min(RETRY_INTERVAL_S, left)))
        finally:
            self._blocking -= 1

    # ------------------------------------------------------------ the watcher
    def _watch(self, interval: float) -> None:
        """While the training runs: notice the server going away even between rounds (its /health),
        write what is pending as soon as it is back, and stop the training once it is away too long."""
        while not self._stop.wait(interval):
            with self._lock:
                if self._finishing or self.outage.gave_up:  # the training's thread has heard already
                    return
                try:
                    self._attempt_locked(self._flush if self._needs_flush() else self._probe)
                    continue
                except TrackingUnavailableError as error:
                    failure: BaseException = error
                    waiting = self._blocking > 0  # that call raises it itself, at its next try
                except Exception as error:  # a refusal: the training's own calls report it
                    print(f"flops-aggregator: tracking check failed: {type(error).__name__}: {error}", flush=True)
                    continue
            if not waiting:
                interrupt_thread(self._training_thread, failure)
            return

    def _needs_flush(self) -> bool:
        return self.parent_run_id is None or bool(self.pending_rounds)

    def _probe(self) -> None:
        requests.get(f"{self.tracking_uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).raise_for_status()

    @property
    def pending_rounds(self) -> list[int]:
        """Rounds reported but not yet (completely) written to the server."""
        return sorted(n for n, write in self._rounds.items() if not write.curves)

    # ---------------------------------------------------------------- the runs
    def _open(self) -> None:
        """The experiment, the training run and its parameters; each step once, resumable."""
        if self.experiment_id is None:
            self.experiment_id = open_experiment(self.client, self.spec)
        if self.parent_run_id is None:
            role = job_role(self.spec)
            existing = self._find_run({ROLE_TAG: role}) if self._tried_parent else None
            self._tried_parent = True
            if existing is None:
                tags = {PROJECT_TAG: self.spec.project_id, ROLE_TAG: role}
                name = f"{role}-{self.spec.project_id}"
                existing = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            self.parent_run_id = existing
        if not self._params_logged:
            params = [Param(key, value) for key, value in training_params(self.spec).items()]
            self.client.log_batch(self.parent_run_id, params=params)
            self._params_logged = True
        if self._system_metrics is None and not self._finishing:
            self._system_metrics = SystemMetricsMonitor(self.parent_run_id, tracking_uri=self.tracking_uri)
            self._system_metrics.start()

    def _find_run(self, tags: dict[str, str]) -> str | None:
        """This project's run with `tags`, if an earlier try created it without hearing back."""
        assert self.experiment_id is not None
        conditions = [f"tags.`{PROJECT_TAG}` = '{self.spec.project_id}'"]
        conditions += [f"tags.`{key}` = '{value}'" for key, value in tags.items()]
        runs = self.client.search_runs([self.experiment_id], " and ".join(conditions), max_results=1)
        return str(runs[0].info.run_id) if runs else None

    def _flush(self) -> None:
        self._open()
        for number in self.pending_rounds:
            self._write_round(self._rounds[number])

    def _write_round(self, write: _RoundWrite) -> None:
        assert self.experiment_id is not None and self.parent_run_id is not None
        report = write.report
        cycles = self.spec.hierarchy is not None
        if write.run_id is None:
            round_tags = {ROLE_TAG: "round", ROUND_TAG: str(report.round), TRAINING_RUN_TAG: self.parent_run_id}
            found = self._find_run(round_tags) if write.tried_create else None
            write.tried_create = True
            if found is None:
                tags = {PROJECT_TAG: self.spec.project_id, **round_tags}
                if cycles:
                    tags[PARENT_RUN_TAG] = self.parent_run_id
                if report.failures:
                    tags["flops.failures"] = "; ".join(report.failures)[:5000]
                if report.stragglers:
                    tags["flops.stragglers"] = ", ".join(report.stragglers)[:5000]
                outliers = flagged(report.per_learner)
                if outliers:
                    tags["flops.outliers"] = "; ".join(f"{n}: {', '.join(f)}" for n, f in outliers.items())[:5000]
                name = f"{'cycle' if cycles else 'round'}-{report.round}"
                found = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            write.run_id = found
        for cluster in report.clusters:
            if cluster.cluster not in write.clusters:
                self._write_cluster(write, cluster)
                write.clusters.add(cluster.cluster)
        points = [Metric(key, value, write.timestamp_ms, report.round) for key, value in round_metrics(report).items()]
        batches = [points[offset : offset + METRICS_PER_BATCH] for offset in range(0, len(points), METRICS_PER_BATCH)]
        if not write.logged:
            self.client.log_batch(write.run_id, metrics=batches[0], params=[Param("round", str(report.round))])
            for batch in batches[1:]:
                self.client.log_batch(write.run_id, metrics=batch)
            write.logged = True
        if not write.terminated:
            self.client.set_terminated(write.run_id, "FINISHED")
            write.terminated = True
        for batch in batches:  # the same points again are not doubled
            self.client.log_batch(self.parent_run_id, metrics=batch)
        write.curves = True
        report.run_id = write.run_id

    def _write_cluster(self, write: _RoundWrite, cluster: ClusterReport) -> None:
        """The run of one cluster's part of a cycle, nested under the cycle's run (resumable, never twice)."""
        assert self.experiment_id is not None and write.run_id is not None
        cycle = write.report.round
        cluster_tags = {ROLE_TAG: "cluster", ROUND_TAG: str(cycle), CLUSTER_TAG: cluster.cluster}
        run_id = self._find_run(cluster_tags)
        if run_id is None:
            tags = {PROJECT_TAG: self.spec.project_id, PARENT_RUN_TAG: write.run_id, **cluster_tags}
            if cluster.error:
                tags["flops.error"] = cluster.error[:5000]
            name = f"cycle-{cycle}/{cluster.cluster}"
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
        points = [
            Metric(key, value, write.timestamp_ms, report.round)
            for report in cluster.rounds
            for key, value in round_metrics(report).items()
        ]
        received = {"received_loss": cluster.received_loss, "received_accuracy": cluster.received_accuracy}
        points += [Metric(key, value, write.timestamp_ms, 0) for key, value in received.items() if value is not None]
        params = [Param("cluster", cluster.cluster), Param("learners", ",".join(cluster.learners)[:6000] or "-")]
        self.client.log_batch(run_id, metrics=points, params=params)
        self.client.set_terminated(run_id, "FAILED" if cluster.error else "FINISHED")

    def log_round(self, report: RoundReport) -> str | None:
        """One `round-N` run, and the round's point on the training run's curves (both at step N).

        Sets and returns `report.run_id`; None while the server is away (written when it is back).
        """
        self._training_thread = threading.get_ident()  # the thread to stop if the server stays away
        if report.round not in self._rounds:
            self._rounds[report.round] = _RoundWrite(report=report, timestamp_ms=int(time.time() * 1000))
        self._attempt(self._flush)
        return report.run_id

    def log_model(
        self,
        model: Any,
        input_example: Any | None,
        best: RoundReport,
        code_paths: list[str],
        parameters: list[np.ndarray],
    ) -> LoggedModel:
        """Every pending round, then the best model logged and registered; `code_paths` carry the user's
        modules, and the training run keeps the model's `parameters` (PARAMETERS_ARTIFACT) for explain jobs."""
        self._until_done(self._flush)
        assert self.parent_run_id is not None
        parent_run_id = self.parent_run_id
        now = int(time.time() * 1000)
        best_metrics = {"best_round": float(best.round)} | {
            f"best_{k}": v for k, v in round_metrics(best).items() if k in ROUND_METRICS
        }
        best_points = [Metric(key, value, now, 0) for key, value in best_metrics.items()]
        self._until_done(lambda: self.client.log_batch(parent_run_id, metrics=best_points))
        signature = _signature(model, self.spec.model_flavor, input_example)
        flavor = _flavor_module(self.spec.model_flavor)
        options: dict[str, Any] = {}
        if self.spec.model_flavor is ModelFlavor.PYTORCH:
            # A pickled module loads with any batch size; pt2 would fix the example's shape.
            options["serialization_format"] = "pickle"

        def log() -> Any:
            # Flavors log into the active run: make the parent active in this thread for the call.
            with mlflow.start_run(run_id=parent_run_id):
                return flavor.log_model(
                    model,
                    name="model",
                    signature=signature,
                    pip_requirements=flavor.get_default_pip_requirements(),
                    code_paths=code_paths or None,
                    **options,
                )

        info = self._until_done(log)
        with tempfile.TemporaryDirectory(prefix="flops-parameters-") as folder:
            saved = Path(folder) / "best.npz"
            np.savez(saved, *parameters)
            self._until_done(lambda: self.client.log_artifact(parent_run_id, str(saved), PARAMETERS_ARTIFACT))
        version, calendar = self._until_done(lambda: self._register(info.model_uri, getattr(info, "model_id", None)))
        return LoggedModel(
            model_uri=info.model_uri,
            registered_name=self.spec.model_name,
            registered_version=version,
            input=model_input(signature),
            calendar_version=calendar,
        )

    def _register(self, model_uri: str, model_id: str | None) -> tuple[str, str]:
        """A new version of the registered model for the logged model (the one a lost answer already made),
        with its calendar version; (version, calendar version)."""
        name = self.spec.model_name
        try:
            self.client.get_registered_model(name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(name)  # only where this identity may create models
        version: Any = None
        for existing in self.client.search_model_versions(f"name = '{name}' and run_id = '{self.parent_run_id}'"):
            if existing.source == model_uri or (model_id and getattr(existing, "model_id", None) == model_id):
                version = existing
        if version is None:
            version = self.client.create_model_version(
                name, source=model_uri, run_id=self.parent_run_id, model_id=model_id
            )
        calendar = (version.tags or {}).get(CALENDAR_VERSION_TAG)
        if calendar is None:
            calendar = self._tag_calendar_version(name, str(version.version))
        return str(version.version), str(calendar)

    def _tag_calendar_version(self, name: str, version: str) -> str:
        """Tag `version` of model `name` with the next calendar version of this month and alias it."""
        taken = [
            str(existing.tags[CALENDAR_VERSION_TAG])
            for existing in self.client.search_model_versions(f"name = '{name}'")
            if CALENDAR_VERSION_TAG in (existing.tags or {})
        ]
        calendar = next_calendar_version(taken, datetime.now(UTC))
        self.client.set_model_version_tag(name, version, CALENDAR_VERSION_TAG, calendar)
        self.client.set_registered_model_alias(name, calendar_alias(calendar), version)
        return calendar

    def log_statistics(self, result: StatisticsResult) -> None:
        """A statistics job's result: the whole result as JSON, each feature's figures as metrics, and a
        plot per feature (the global histogram, each node's over it) where matplotlib is installed."""
        self._until_done(self._open)
        run_id = self.parent_run_id
        assert run_id is not None
        now = int(time.time() * 1000)
        points = [
            Metric(f"{feature}.{name}", float(value), now, 0)
            for feature, figures in result.features.items()
            for name in ("count", "sum", "mean", "stddev", "min", "max")
            if (value := getattr(figures, name)) is not None and np.isfinite(value)
        ]
        for offset in range(0, len(points), METRICS_PER_BATCH):
            chunk = points[offset : offset + METRICS_PER_BATCH]
            self._until_done(lambda chunk=chunk: self.client.log_batch(run_id, metrics=chunk))  # type: ignore[misc]
        self._until_done(lambda: self.client.log_dict(run_id, result.model_dump(mode="json"), "statistics.json"))
        for feature, figure in statistics_figures(result):
            self._until_done(lambda f=figure, n=feature: self.client.log_figure(run_id, f, f"histograms/{n}.png"))  # type: ignore[misc]

    def log_explanation(self, importance: FeatureImportance) -> None:
        """The model's explanation: JSON, one metric per feature (`importance.<feature>`), a bar chart."""
        run_id = self.parent_run_id
        assert run_id is not None
        now = int(time.time() * 1000)
        points = [Metric(f"importance.{feature}", value, now, 0) for feature, value in importance.importances.items()]
        self._until_done(lambda: self.client.log_batch(run_id, metrics=points[:900]))
        self._until_done(lambda: self.client.log_dict(run_id, importance.model_dump(mode="json"), "explanation.json"))
        figure = importance_figure(importance)
        if figure is not None:
            self._until_done(lambda: self.client.log_figure(run_id, figure, "explanation/importance.png"))

    def finish(self, succeeded: bool, error: str | None = None) -> None:
        """End the training run; a successful training's rounds are all written first.

        After a failure (or once the server was away too long) one try only: the training's
        outcome is FLOps's to report, and nothing waits on MLflow for it.
        """
        self._finishing = True
        self._stop.set()
        if self._system_metrics is not None:
            self._system_metrics.finish()

        def end() -> None:
            self._flush()
            assert self.parent_run_id is not None
            if error:
                self.client.set_tag(self.parent_run_id, "flops.error", error[:5000])
            self.client.set_terminated(self.parent_run_id, "FINISHED" if succeeded else "FAILED")

        if succeeded and not self.outage.gave_up:
            self._until_done(end)
            return
        if self.outage.gave_up:
            return
        try:
            self._attempt(end)
        except Exception as failure:  # the training's own failure is the one to report
            print(f"flops-aggregator: could not mark the training run failed in MLflow: {failure}", flush=True)

    def run_url(self) -> str:
        return run_url(self.tracking_uri, self.experiment_id or "", self.parent_run_id or "")


def importance_figure(importance: FeatureImportance, top: int = 20) -> Any:
    """A horizontal bar chart of the `top` features' importances; None without matplotlib."""
    pyplot = _pyplot()
    if pyplot is None:
        return None
    shown = list(importance.importances.items())[:top][::-1]
    figure, axes = pyplot.subplots(figsize=(6, 0.3 * len(shown) + 1.2))
    axes.barh([name for name, _ in shown], [value for _, value in shown])
    axes.set_xlabel(f"mean |attribution| ({importance.method}), weighted over nodes")
    figure.tight_layout()
    return figure


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot
    except ImportError:
        return None
    return pyplot


def statistics_figures(result: StatisticsResult) -> list[tuple[str, Any]]:
    """(feature, matplotlib figure) of each feature's histograms; none without matplotlib."""
    pyplot = _pyplot()
    if pyplot is None:
        return []
    figures = []
    for feature, figures_of in result.features.items():
        histogram = figures_of.histogram
        if histogram is None:
            continue
        figure, axes = pyplot.subplots(figsize=(6, 3.5))
        edges = np.asarray(histogram.edges)
        axes.bar(edges[:-1], histogram.counts, width=np.diff(edges), align="edge", alpha=0.4, label="all nodes")
        for node, own in sorted(figures_of.node_histograms.items()):
            axes.step(edges[:-1], own.counts, where="post", label=node)
        axes.set_title(feature)
        axes.set_ylabel("records")
        axes.legend(fontsize="small")
        figure.tight_layout()
        figures.append((re.sub(r"[^A-Za-z0-9_.-]", "_", feature), figure))
    return figures


def next_calendar_version(taken: Iterable[str], now: datetime) -> str:
    """`YEAR.MONTH.N`: N one more than the highest of this month among `taken` (1 in a new month)."""
    prefix = f"{now.year}.{now.month}."
    numbers = [
        int(value[len(prefix) :]) for value in taken if value.startswith(prefix) and value[len(prefix) :].isdigit()
    ]
    return f"{prefix}{max(numbers, default=0) + 1}"


def experiment_name(spec: TrainingSpec) -> str:
    return spec.experiment_name or spec.model_name


def open_experiment(client: MlflowClient, spec: TrainingSpec) -> str:
    """The id of the project's experiment, created (or tagged) as a model-training experiment.

    Projects with the same name share the experiment, as they share the registered model: each
    training is its own `training-<project id>` run. An experiment of that name that was
    deleted in MLflow is left alone: the training goes to `<name> (<project id>)` instead.
    Behind the observatory's authentication only its admin creates experiments: the manager
    makes the project's before the aggregator starts, and names it in the spec.
    """
    name = experiment_name(spec)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None and experiment.lifecycle_stage == "deleted":
        name = f"{name} ({spec.project_id})"
        experiment = client.get_experiment_by_name(name)
        if experiment is not None and experiment.lifecycle_stage == "deleted":
            raise MlflowException(
                f"MLflow experiment {name!r} is deleted: restore it (`mlflow experiments restore "
                f"--experiment-id {experiment.experiment_id}`) or purge it (`mlflow gc`)"
            )
    if experiment is None:
        tags = {
            EXPERIMENT_KIND_TAG: MODEL_TRAINING_KIND,
            PROJECT_TAG: spec.project_id,
            MLFLOW_RUN_NOTE: EXPERIMENT_NOTE,
        }
        try:
            return str(client.create_experiment(name, tags=tags))
        except MlflowException as error:  # another training created it in the meantime, or not ours to create
            experiment = client.get_experiment_by_name(name)
            if experiment is None and error.error_code == "PERMISSION_DENIED":
                raise MlflowException(
                    f"MLflow experiment {name!r} does not exist and this identity may not create it: "
                    "under the manager, the manager creates it at deploy (check its log)"
                ) from None
            if experiment is None:
                raise error from None
    experiment_id = str(experiment.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND)
    if MLFLOW_RUN_NOTE not in experiment.tags:
        client.set_experiment_tag(experiment_id, MLFLOW_RUN_NOTE, EXPERIMENT_NOTE)
    client.set_experiment_tag(experiment_id, PROJECT_TAG, spec.project_id)  # the latest project trained here
    return experiment_id


def _flavor_module(flavor: ModelFlavor) -> Any:
    if flavor is ModelFlavor.SKLEARN:
        import mlflow.sklearn

        return mlflow.sklearn
    if flavor is ModelFlavor.PYTORCH:
        import mlflow.pytorch

        return mlflow.pytorch
    import mlflow.tensorflow

    return mlflow.tensorflow


def model_input(signature: Any) -> ModelInput | None:
    """The input a signature describes: one tensor's shape and type, or a table's columns."""
    schema = getattr(signature, "inputs", None)
    if schema is None or not schema.inputs:
        return None
    if schema.is_tensor_spec():
        spec = schema.inputs[0]
        return ModelInput(shape=[int(n) for n in spec.shape], dtype=_type_name(spec.type))
    return ModelInput(shape=[-1, len(schema.inputs)], dtype=_type_name(schema.inputs[0].type))


def _type_name(kind: Any) -> str:
    """`float64` for a NumPy dtype, `double` for an MLflow column type."""
    return str(getattr(kind, "name", kind))


def _input_width(model: Any) -> int | None:
    """Fitted estimators know their width; FLOps-style managers set linear weights (`coef_`) by hand."""
    if hasattr(model, "n_features_in_"):
        return int(model.n_features_in_)
    coef = getattr(model, "coef_", None)
    return int(np.shape(coef)[-1]) if coef is not None and np.ndim(coef) >= 1 else None


def _signature(model: Any, flavor: ModelFlavor, example: Any | None) -> Any:
    """A signature from a synthetic input example: no node data reaches the aggregator."""
    width = _input_width(model) if example is None and flavor is ModelFlavor.SKLEARN else None
    if width:
        example = np.zeros((2, width))
    if example is None:
        return None
    try:
        if flavor is ModelFlavor.PYTORCH:
            import torch

            model.eval()
            with torch.no_grad():
                output = model(torch.as_tensor(example)).cpu().numpy()
        else:
            output = model.predict(example)
        return infer_signature(example, output)
    except Exception:
        return None
