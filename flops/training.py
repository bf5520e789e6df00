"""What one federated training is asked to do, and what it reports at the end.

`TrainingSpec` travels from whoever starts a training (the `flops train` command, the
manager) to the aggregator's ServerApp and, through Flower's run config, to the learners.
It holds no secrets: learners see it.
"""

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from flops.differential_privacy import DifferentialPrivacy, PrivacySpent, RoundPrivacy, combination_error
from flops.explain import ExplainRequest, FeatureImportance
from flops.learner_records import LearnerRound
from flops.statistics import StatisticsRequest, StatisticsResult

SPEC_RUN_CONFIG_KEY = "flops-spec"

# One message per round: a train message whose config holds EVALUATE_RECEIVED_KEY = True asks the
# learner to evaluate the model it received (the global model of the round before) ahead of training;
# its reply then carries that evaluation under the GLOBAL_* metric keys beside the local ones.
EVALUATE_RECEIVED_KEY = "flops-evaluate-received"
GLOBAL_LOSS_KEY = "global-loss"
GLOBAL_ACCURACY_KEY = "global-accuracy"
GLOBAL_EXAMPLES_KEY = "global-examples"
TRAIN_SECONDS_KEY = "train-seconds"  # a train reply's time in the user's fit_model (per-learner records)
# Config keys with this prefix are the platform's, not hyperparameters: user code never sees them.
PLATFORM_CONFIG_PREFIX = "flops-"
DEFAULT_STRAGGLER_GRACE_S = 10.0
# A cluster aggregator's reply to the root carries its cluster's report (`ClusterReport` JSON)
# in a ConfigRecord under this name: aggregate figures per round and the learners' names.
CLUSTER_REPORT_RECORD = "flops-cluster"
CLUSTER_REPORT_KEY = "report"


def calendar_alias(calendar_version: str) -> str:
    """The Model Registry alias of a calendar version: `v2026-12-1` for `2026.12.1` (aliases hold no dots)."""
    return "v" + calendar_version.replace(".", "-")


class StrategyName(StrEnum):
    FEDAVG = "FedAvg"
    FEDPROX = "FedProx"
    FEDADAM = "FedAdam"
    FEDYOGI = "FedYogi"
    FEDADAGRAD = "FedAdagrad"
    FEDAVGM = "FedAvgM"
    FEDMEDIAN = "FedMedian"
    FEDTRIMMEDAVG = "FedTrimmedAvg"
    KRUM = "Krum"


class ModelFlavor(StrEnum):
    SKLEARN = "sklearn"
    PYTORCH = "pytorch"
    TENSORFLOW = "tensorflow"
    KERAS = "keras"


class StrategyConfig(BaseModel):
    """A Flower strategy by name, with keyword arguments for its constructor."""

    model_config = ConfigDict(extra="forbid")

    name: StrategyName = StrategyName.FEDAVG
    parameters: dict[str, float | int | bool | str] = Field(default_factory=dict)


class Hierarchy(BaseModel):
    """Hierarchical FL, as the root aggregator of a training runs it.

    The root's own `rounds` are the training cycles and its learners are the cluster aggregators
    (`clusters`); each cluster trains `cluster_rounds` rounds with its learners per cycle, with the
    per-cluster client minimums here. The root goes on while `min_clusters` clusters reply.
    """

    model_config = ConfigDict(extra="forbid")

    clusters: list[str] = Field(min_length=1)
    cluster_rounds: int = Field(ge=1, le=10_000)
    min_clusters: int = Field(ge=1)
    min_available_clients: int = Field(default=1, ge=1)
    min_fit_clients: int = Field(default=1, ge=1)
    min_evaluate_clients: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _fits(self) -> "Hierarchy":
        check_client_minimums(self)
        if len(set(self.clusters)) != len(self.clusters):
            raise ValueError(f"cluster names repeat: {self.clusters}")
        if self.min_clusters > len(self.clusters):
            raise ValueError(
                f"min_clusters ({self.min_clusters}) exceeds the {len(self.clusters)} clusters "
                f"({', '.join(self.clusters)}): lower min_clusters or add clusters"
            )
        return self


class ClusterTask(BaseModel):
    """What one run of a cluster aggregator's SuperLink does for a message of the root.

    `train`: `rounds` rounds from the root's parameters, the first round's learners also
    evaluating those parameters when `evaluate_received`; `evaluate`: one evaluation of them.
    """

    model_config = ConfigDict(extra="forbid")

    cluster: str = Field(min_length=1, max_length=63)
    cycle: int = Field(ge=1)
    task: Literal["train", "evaluate"] = "train"
    evaluate_received: bool = False

    @property
    def folder(self) -> str:
        """Where the run keeps its state under the cluster aggregator's state folder."""
        return f"cycle-{self.cycle}-{self.task}"


class ClusterReport(BaseModel):
    """One cluster's part of a cycle, as its aggregator reports it to the root.

    Aggregates only: per-round figures over the cluster's learners and the learners' names.
    """

    cluster: str
    cycle: int
    rounds: list["RoundReport"] = Field(default_factory=list)
    learners: list[str] = Field(default_factory=list)
    train_examples: int = 0
    loss: float | None = None
    accuracy: float | None = None
    received_loss: float | None = None
    received_accuracy: float | None = None
    error: str | None = None
    duration_s: float = 0.0


class TrainingSpec(BaseModel):
    """One federated training: rounds, client minimums, strategy, data and model.

    Hierarchical FL: the root's spec has `hierarchy` (its `rounds` are the cycles, its client
    minimums count clusters: `TrainingSpec.hierarchical`); a cluster aggregator runs each of the
    root's messages as a training of its own, `cluster_spec` (with `cluster` set).
    """

    model_config = ConfigDict(extra="forbid")

    project_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model_name: str = Field(min_length=1, description="Model Registry name for the best model")
    experiment_name: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="MLflow experiment the training is tracked in; default: `model_name` (the project's name)",
    )
    model_flavor: ModelFlavor = ModelFlavor.SKLEARN
    rounds: int = Field(default=3, ge=1, le=10_000)
    min_available_clients: int = Field(default=1, ge=1)
    min_fit_clients: int = Field(default=1, ge=1)
    min_evaluate_clients: int = Field(default=1, ge=1)
    data_tags: list[str] = Field(default_factory=list)
    strategy: StrategyConfig = Field(default_factory=StrategyConfig)
    hyperparameters: dict[str, float | int | bool | str] = Field(default_factory=dict)
    best_model_metric: Literal["accuracy", "loss"] = "accuracy"
    learner_wait_timeout: float = Field(default=300.0, gt=0)
    round_timeout: float = Field(default=3600.0, gt=0)
    straggler_grace_s: float = Field(
        default=DEFAULT_STRAGGLER_GRACE_S,
        ge=0,
        description=(
            "seconds a phase of a round (train, evaluate) waits for the remaining replies once it has "
            "the successful replies it needs; the learners still silent then are the round's stragglers"
        ),
    )
    repo_url: str = ""
    repo_commit: str = ""
    hierarchy: Hierarchy | None = None
    cluster: ClusterTask | None = None
    statistics: StatisticsRequest | None = Field(
        default=None, description="a statistics job (flops.statistics) instead of a training"
    )
    explain: ExplainRequest | None = Field(
        default=None, description="after training, explain the best model on the learners (flops.explain)"
    )
    differential_privacy: DifferentialPrivacy | None = Field(
        default=None, description="clip and noise the updates (flops.differential_privacy)"
    )

    @model_validator(mode="after")
    def _client_minimums_fit(self) -> "TrainingSpec":
        check_client_minimums(self)
        if self.hierarchy is not None and self.cluster is not None:
            raise ValueError("a spec is the root's (hierarchy) or a cluster's (cluster), not both")
        if self.statistics is not None and (self.hierarchy is not None or self.cluster is not None):
            raise ValueError("statistics jobs are not hierarchical")
        if self.explain is not None and self.hierarchy is not None:
            raise ValueError("explain_model is not available in hierarchical mode yet: train classic to explain")
        explain_job = self.explain is not None and self.explain.model_uri is not None
        if explain_job and (self.statistics or self.differential_privacy or self.cluster):
            raise ValueError("an explain job (explain.model_uri) trains nothing: no statistics, DP or clusters")
        if self.differential_privacy is not None:
            if self.statistics is not None:
                raise ValueError("differential_privacy is for trainings; a statistics job has its nodes' noise")
            hierarchical = self.hierarchy is not None or self.cluster is not None
            error = combination_error(self.differential_privacy, self.strategy.name.value, hierarchical)
            if error:
                raise ValueError(error)
        return self

    @classmethod
    def hierarchical(cls, hierarchy: Hierarchy, cycles: int, **fields: Any) -> "TrainingSpec":
        """The root's spec: `cycles` rounds over the cluster aggregators, all of which it waits for."""
        clusters = len(hierarchy.clusters)
        return cls(
            rounds=cycles,
            min_available_clients=clusters,
            min_fit_clients=hierarchy.min_clusters,
            min_evaluate_clients=hierarchy.min_clusters,
            hierarchy=hierarchy,
            **fields,
        )

    def cluster_spec(self, task: ClusterTask) -> "TrainingSpec":
        """What the cluster aggregator of `task.cluster` runs for one message of this root spec."""
        if self.hierarchy is None:
            raise ValueError("only a hierarchical (root) spec has cluster specs")
        hierarchy = self.hierarchy
        return self.model_copy(
            update={
                "rounds": hierarchy.cluster_rounds,
                "min_available_clients": hierarchy.min_available_clients,
                "min_fit_clients": hierarchy.min_fit_clients,
                "min_evaluate_clients": hierarchy.min_evaluate_clients,
                "hierarchy": None,
                "cluster": task,
            }
        )


def check_client_minimums(config: Any) -> None:
    """Refuse `min_fit_clients` or `min_evaluate_clients` above `min_available_clients` (SLA and spec alike)."""
    for field in ("min_fit_clients", "min_evaluate_clients"):
        if getattr(config, field) > config.min_available_clients:
            raise ValueError(
                f"{field} ({getattr(config, field)}) exceeds min_available_clients "
                f"({config.min_available_clients}): raise min_available_clients or lower {field}"
            )


class RoundReport(BaseModel):
    """The aggregate outcome of one round, as tracked and shown live."""

    round: int
    loss: float | None = None
    accuracy: float | None = None
    local_loss: float | None = None
    local_accuracy: float | None = None
    train_examples: int = 0
    eval_examples: int = 0
    learners: int = 0
    failures: list[str] = Field(default_factory=list)
    stragglers: list[str] = Field(
        default_factory=list,
        description="learners (node ids) sent a message that had not replied when its phase closed",
    )
    duration_s: float = 0.0
    run_id: str | None = None
    participants: list[str] = Field(
        default_factory=list, description="the learners (names, else node ids) whose training replies were used"
    )
    clusters: list[ClusterReport] = Field(
        default_factory=list, description="hierarchical FL: each cluster's part of this cycle"
    )
    privacy: RoundPrivacy | None = Field(default=None, description="differential privacy: clipping and epsilon")
    per_learner: list[LearnerRound] = Field(
        default_factory=list, description="each learner's figures in this round, with its outlier flags"
    )

    @property
    def finished(self) -> bool:
        """The round aggregated and evaluated: the aggregator sets its duration only then.

        A round in which too few learners succeeded is reported too, with its failures, but it
        produced no model and does not count as done.
        """
        return self.duration_s > 0


ClusterReport.model_rebuild()


class ModelInput(BaseModel):
    """What the registered model takes, from its signature: a batch of `shape` (-1: any size)."""

    shape: list[int]
    dtype: str


class TrainingSummary(BaseModel):
    """The end of a training, printed by `flops train --json` and kept by the manager."""

    status: Literal["completed", "failed"]
    project_id: str
    error: str | None = None
    rounds: list[RoundReport] = Field(default_factory=list)
    final_loss: float | None = None
    final_accuracy: float | None = None
    best_round: int | None = None
    experiment_id: str | None = None
    parent_run_id: str | None = None
    round_run_ids: list[str] = Field(default_factory=list)
    model_uri: str | None = None
    registered_model_name: str | None = None
    registered_model_version: str | None = None
    registered_model_calendar_version: str | None = Field(
        default=None, description="YEAR.MONTH.N of the registered version; alias vYEAR-MONTH-N"
    )
    model_input: ModelInput | None = None
    tracking_uri: str | None = None
    duration_s: float = 0.0
    statistics: StatisticsResult | None = None
    explanation: FeatureImportance | None = None
    privacy: PrivacySpent | None = Field(default=None, description="differential privacy: epsilon of the model")
    extra: dict[str, Any] = Field(default_factory=dict)
