"""A node's side of a statistics job: its figures from its own data, through its owner's filters.

`node_summary` answers the first pass, `node_histogram` the second (`flops.statistics` says what
each holds and how the aggregator combines them). Both read the node's Parquet files of the job's
data tags (no user code runs), apply the policy (the node's `privacy.yaml`, tightened by the
request), and return aggregates only: with `min_bin_count` k > 1 even min and max are the means of
the k smallest and largest values, and sketch centroids hold k records or more.

Noise: with a policy's `noise`, each figure gets Laplace (scale sensitivity / epsilon) or Gaussian
(sigma from the classic analytic bound) noise; the epsilon is split evenly over the figures a pass
sends per feature (count, sum, M2, min, max: 5; a histogram's bins: 1, they are disjoint). The
sensitivities use the largest absolute value of the feature at this node as its bound.
"""

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from flops.data.node_data import tag_files
from flops.statistics import (
    FeatureSummary,
    NodeHistogram,
    NodeSummary,
    PrivacyPolicy,
    StatisticName,
    StatisticsRequest,
)

LABEL_COLUMNS = ("label",)
DIGEST_CENTROIDS = 100
SUMMARY_FIGURES = 5  # count, sum, M2, min, max: the summary pass's epsilon is split over them


def node_frame(data_dir: Path, tags: list[str]) -> pd.DataFrame:
    """Every record of the node's data for `tags`."""
    files = [file for tag in tags for file in tag_files(data_dir, tag)]
    if not files:
        return pd.DataFrame()
    return pd.concat([pd.read_parquet(file) for file in files], ignore_index=True)


def features_of(frame: pd.DataFrame, request: StatisticsRequest) -> list[str]:
    """The requested features, else every numeric column but the label."""
    if request.features:
        return list(request.features)
    numeric = [name for name in frame.columns if pd.api.types.is_numeric_dtype(frame[name])]
    return [name for name in numeric if name not in LABEL_COLUMNS]


def values_of(frame: pd.DataFrame, feature: str) -> NDArray[np.float64] | None:
    if feature not in frame.columns or not pd.api.types.is_numeric_dtype(frame[feature]):
        return None
    return frame[feature].dropna().to_numpy(dtype=np.float64)


class Noiser:
    """Adds a policy's noise to figures; `epsilon` is what one figure of a pass gets."""

    def __init__(self, policy: PrivacyPolicy, figures: int, rng: np.random.Generator | None = None) -> None:
        self.noise = policy.noise
        self.epsilon = policy.noise.epsilon / figures if policy.noise else None
        self.rng = rng or np.random.default_rng()

    def __call__(self, value: float, sensitivity: float) -> float:
        if self.noise is None or self.epsilon is None:
            return value
        if self.noise.mechanism == "laplace":
            return float(value + self.rng.laplace(0.0, sensitivity / self.epsilon))
        sigma = sensitivity * math.sqrt(2 * math.log(1.25 / self.noise.delta)) / self.epsilon
        return float(value + self.rng.normal(0.0, sigma))


def extremes(values: NDArray[np.float64], group: int) -> tuple[float, float]:
    """Min and max; with `group` > 1 the means of the `group` smallest and largest values, so no single
    record's value is sent (the histogram's outer bins then take the tails: `node_histogram` clips)."""
    if group <= 1 or len(values) == 0:
        return float(values.min()), float(values.max())
    ordered = np.sort(values)
    size = min(group, len(ordered))
    return float(ordered[:size].mean()), float(ordered[-size:].mean())


def merged_digest(values: NDArray[np.float64], min_weight: int) -> dict[str, Any]:
    """A t-digest of `values` whose centroids each hold at least `min_weight` records (neighbours merged),
    and whose min and max are those of the first and last centroid, not of single records."""
    from fastdigest import TDigest

    digest: dict[str, Any] = dict(TDigest.from_values(values.tolist(), max_centroids=DIGEST_CENTROIDS).to_dict())
    merged: list[dict[str, float]] = []
    for centroid in digest["centroids"]:
        if merged and merged[-1]["c"] < min_weight:
            last = merged[-1]
            weight = last["c"] + centroid["c"]
            merged[-1] = {"m": (last["m"] * last["c"] + centroid["m"] * centroid["c"]) / weight, "c": weight}
        else:
            merged.append(dict(centroid))
    while len(merged) > 1 and merged[-1]["c"] < min_weight:  # the tail: into its neighbour
        last = merged.pop()
        before = merged[-1]
        weight = before["c"] + last["c"]
        merged[-1] = {"m": (before["m"] * before["c"] + last["m"] * last["c"]) / weight, "c": weight}
    if min_weight > 1:
        digest["min"], digest["max"] = merged[0]["m"], merged[-1]["m"]
    digest["centroids"] = merged
    return dict(digest)


def node_summary(
    node: str,
    frame: pd.DataFrame,
    request: StatisticsRequest,
    policy: PrivacyPolicy,
    rng: np.random.Generator | None = None,
) -> NodeSummary:
    """The first pass: per feature count, sum, M2, min, max (and a digest for quantiles), filtered."""
    noise = Noiser(policy, SUMMARY_FIGURES, rng)
    summary = NodeSummary(node=node, epsilon=policy.noise.epsilon if policy.noise else None)
    for feature in features_of(frame, request):
        values = values_of(frame, feature)
        if values is None:
            summary.withheld[feature] = "not a numeric column of this node's data"
            continue
        if len(values) < policy.min_count:
            summary.withheld[feature] = (
                f"{len(values)} record(s), fewer than the node's minimum of {policy.min_count} (min_count)"
            )
            continue
        bound = float(np.max(np.abs(values))) if len(values) else 0.0
        mean = float(values.mean()) if len(values) else 0.0
        count = noise(float(len(values)), 1.0)
        total = noise(float(values.sum()), bound)
        m2 = max(0.0, noise(float(((values - mean) ** 2).sum()), bound * bound))
        figures = FeatureSummary(count=count, sum=total, m2=m2)
        if request.wants(StatisticName.MIN, StatisticName.HISTOGRAM):
            low, high = extremes(values, policy.min_bin_count)
            figures.min, figures.max = noise(low, bound), noise(high, bound)
        if request.wants(StatisticName.QUANTILES) and len(values) >= policy.min_bin_count:
            figures.digest = merged_digest(values, policy.min_bin_count)
        summary.features[feature] = figures
    return summary


def node_histogram(
    node: str,
    frame: pd.DataFrame,
    edges: dict[str, list[float]],
    policy: PrivacyPolicy,
    rng: np.random.Generator | None = None,
) -> NodeHistogram:
    """The second pass: counts on the common `edges`, bins below `min_bin_count` removed (after noise)."""
    noise = Noiser(policy, 1, rng)
    answer = NodeHistogram(node=node)
    for feature, feature_edges in edges.items():
        values = values_of(frame, feature)
        if values is None or len(values) < policy.min_count:
            continue
        bins = np.asarray(feature_edges, dtype=np.float64)
        # Edges span the nodes' reported extremes, which may be group means: the tails go to the outer bins.
        counts, _ = np.histogram(np.clip(values, bins[0], bins[-1]), bins=bins)
        kept: dict[int, float] = {}
        removed = 0
        for index, count in enumerate(counts.tolist()):
            noisy = max(0.0, round(noise(float(count), 1.0))) if policy.noise else float(count)
            if count == 0 and noisy == 0:
                continue
            if noisy < policy.min_bin_count:
                removed += 1
                continue
            kept[index] = noisy
        answer.counts[feature] = kept
        if removed:
            answer.removed_bins[feature] = removed
    return answer
