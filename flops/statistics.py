"""Federated statistics: what a statistics job asks, what each node may send, what comes back.

A statistics job (`TrainingSpec.statistics`, the SLA's `"job": "statistics"`) runs in two passes
of Flower query messages, both answered by the learners from their node's data, without user code:

1. `summary`: per feature the node's count, sum, sum of squared deviations from its mean (M2), min,
   max and, for quantiles, a t-digest (`NodeSummary`). The aggregator pools them exactly: count and
   sum add up, M2 combines with the between-node term (Chan et al.), so mean and standard deviation
   equal those of the pooled records; digests merge.
2. `histogram`: per feature the node's counts on the common bin edges the aggregator made from the
   global min and max (`NodeHistogram`); the global histogram is their sum.

No record leaves a node. What a node sends passes its data owner's filters first (`PrivacyPolicy`,
the node's `privacy.yaml`, see `flops.data.privacy`): a feature with fewer records than `min_count`
is withheld (the node says so, and why), histogram bins and digest centroids below `min_bin_count`
records are removed, and optional noise (Laplace or Gaussian, with the stated epsilon) is added to
what it sends. A request can tighten a node's policy (`StatisticsRequest.privacy`), never loosen it.
"""

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The Flower query messages of a statistics job: the pass in the config, the answer's JSON in a ConfigRecord.
STATISTICS_PASS_KEY = "flops-statistics-pass"
STATISTICS_EDGES_KEY = "flops-statistics-edges"
STATISTICS_RECORD = "flops-statistics"
STATISTICS_ANSWER_KEY = "answer"


class StatisticName(StrEnum):
    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    STDDEV = "stddev"
    MIN = "min"
    MAX = "max"
    HISTOGRAM = "histogram"
    QUANTILES = "quantiles"


class PolicyError(ValueError):
    """A request that would loosen a node's privacy policy, or a policy file that is invalid."""


class Noise(BaseModel):
    """Noise a node adds to what it sends: `epsilon` for the whole answer (split over its figures)."""

    model_config = ConfigDict(extra="forbid")

    mechanism: Literal["laplace", "gaussian"] = "laplace"
    epsilon: float = Field(gt=0, le=100)
    delta: float = Field(default=1e-5, gt=0, lt=1, description="gaussian only")


class PrivacyPolicy(BaseModel):
    """A data owner's filters on what leaves the node."""

    model_config = ConfigDict(extra="forbid")

    min_count: int = Field(default=1, ge=1, description="fewer records of a feature: the node sends nothing of it")
    min_bin_count: int = Field(
        default=1, ge=1, description="histogram bins and quantile-sketch centroids with fewer records are removed"
    )
    noise: Noise | None = None

    def tightened_by(self, request: "PrivacyRequest | None", node: str = "this node") -> "PrivacyPolicy":
        """The policy a request gets: this one, tightened by what `request` asks; `PolicyError` where it
        would loosen it (a lower minimum, a larger epsilon)."""
        if request is None:
            return self
        looser = []
        if request.min_count and request.min_count < self.min_count:
            looser.append(f"min_count {request.min_count} < {self.min_count}")
        if request.min_bin_count and request.min_bin_count < self.min_bin_count:
            looser.append(f"min_bin_count {request.min_bin_count} < {self.min_bin_count}")
        if request.noise is not None and self.noise is not None and request.noise.epsilon > self.noise.epsilon:
            looser.append(f"noise epsilon {request.noise.epsilon} > {self.noise.epsilon}")
        if looser:
            raise PolicyError(
                f"{node}: the request would loosen the node's privacy policy ({'; '.join(looser)}): a request "
                "may only tighten it; ask for at least the node's values or leave them out"
            )
        return PrivacyPolicy(
            min_count=max(self.min_count, request.min_count),
            min_bin_count=max(self.min_bin_count, request.min_bin_count),
            noise=request.noise if request.noise is not None else self.noise,
        )


class PrivacyRequest(BaseModel):
    """What a request asks of every node's policy; 0 and no noise: what the node's policy says."""

    model_config = ConfigDict(extra="forbid")

    min_count: int = Field(default=0, ge=0)
    min_bin_count: int = Field(default=0, ge=0)
    noise: Noise | None = None


class StatisticsRequest(BaseModel):
    """What a statistics job computes: features (default: every numeric column but the label), statistics, bins."""

    model_config = ConfigDict(extra="forbid")

    data_tags: list[str] = Field(default_factory=list)
    features: list[str] = Field(default_factory=list)
    statistics: list[StatisticName] = Field(default_factory=lambda: list(StatisticName))
    bins: int = Field(default=10, ge=1, le=1000)
    quantiles: list[float] = Field(default_factory=lambda: [0.25, 0.5, 0.75])
    privacy: PrivacyRequest | None = Field(default=None, description="tightens every node's policy")
    min_nodes: int = Field(default=1, ge=1, description="nodes that must answer")

    @field_validator("quantiles")
    @classmethod
    def _fractions(cls, values: list[float]) -> list[float]:
        if any(not 0.0 <= value <= 1.0 for value in values):
            raise ValueError("quantiles are fractions between 0 and 1, e.g. [0.25, 0.5, 0.75]")
        return sorted(set(values))

    @model_validator(mode="after")
    def _something(self) -> "StatisticsRequest":
        if not self.statistics:
            raise ValueError("name at least one statistic: count, sum, mean, stddev, min, max, histogram, quantiles")
        return self

    def wants(self, *names: StatisticName) -> bool:
        return any(name in self.statistics for name in names)


class FeatureSummary(BaseModel):
    """One node's first-pass figures of one feature (after its filters and noise)."""

    count: float
    sum: float
    m2: float = Field(description="sum of squared deviations from the node's own mean")
    min: float | None = None
    max: float | None = None
    digest: dict[str, Any] | None = Field(default=None, description="fastdigest TDigest.to_dict(), centroids merged")


class NodeSummary(BaseModel):
    node: str
    features: dict[str, FeatureSummary] = Field(default_factory=dict)
    withheld: dict[str, str] = Field(default_factory=dict, description="feature -> why the node sent nothing of it")
    epsilon: float | None = Field(default=None, description="the noise's epsilon per pass, when the node adds noise")


class NodeHistogram(BaseModel):
    node: str
    counts: dict[str, dict[int, float]] = Field(default_factory=dict, description="feature -> bin index -> count")
    removed_bins: dict[str, int] = Field(default_factory=dict, description="feature -> bins below min_bin_count")


class Histogram(BaseModel):
    edges: list[float]
    counts: list[float]


class FeatureResult(BaseModel):
    """The global figures of one feature, over the nodes that sent it."""

    count: float | None = None
    sum: float | None = None
    mean: float | None = None
    stddev: float | None = None
    min: float | None = None
    max: float | None = None
    histogram: Histogram | None = None
    node_histograms: dict[str, Histogram] = Field(default_factory=dict)
    quantiles: dict[str, float] = Field(default_factory=dict)
    nodes: list[str] = Field(default_factory=list, description="the nodes whose figures are in it")


class StatisticsResult(BaseModel):
    """A statistics job's answer: per feature the global figures; per node what it withheld and its noise."""

    features: dict[str, FeatureResult] = Field(default_factory=dict)
    per_node: dict[str, dict[str, FeatureResult]] = Field(default_factory=dict)
    filtered: dict[str, dict[str, str]] = Field(
        default_factory=dict, description="node -> feature -> why it sent nothing of that feature"
    )
    removed_bins: dict[str, dict[str, int]] = Field(default_factory=dict, description="node -> feature -> bins")
    epsilon: dict[str, float] = Field(default_factory=dict, description="node -> the epsilon its noise spent")
    nodes: list[str] = Field(default_factory=list)
