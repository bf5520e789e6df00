"""The aggregator's side of a statistics job: two query passes over the learners, combined exactly.

`combine_summaries` pools the nodes' first-pass figures: counts and sums add up, the sums of
squared deviations combine with the between-node term, `M2 = sum(M2_i + n_i (mean_i - mean)^2)`, so
mean and sample standard deviation equal those of the pooled records (within floating point); min
and max are the extremes; t-digests merge for quantiles. `histogram_edges` makes each feature's
common bin edges from the global min and max; `combine_histograms` adds the nodes' bin counts.
`run_statistics` drives both passes through a Flower grid (see `flops.statistics` for the messages).
"""

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, RecordDict
from flwr.common import MessageType
from flwr.serverapp import Grid

from aggregator.replies import reply_error
from flops.statistics import (
    STATISTICS_ANSWER_KEY,
    STATISTICS_EDGES_KEY,
    STATISTICS_PASS_KEY,
    STATISTICS_RECORD,
    FeatureResult,
    Histogram,
    NodeHistogram,
    NodeSummary,
    StatisticName,
    StatisticsRequest,
    StatisticsResult,
)


class StatisticsError(RuntimeError):
    """The job cannot produce a result; the message names the nodes and reasons."""


def combine_summaries(summaries: Iterable[NodeSummary], request: StatisticsRequest) -> StatisticsResult:
    """The first pass's global figures, per feature over the nodes that sent it; and each node's own."""
    result = StatisticsResult()
    pooled: dict[str, list[tuple[str, Any]]] = {}
    for summary in sorted(summaries, key=lambda s: s.node):
        result.nodes.append(summary.node)
        if summary.withheld:
            result.filtered[summary.node] = dict(summary.withheld)
        if summary.epsilon is not None:
            result.epsilon[summary.node] = summary.epsilon
        result.per_node[summary.node] = {}
        for feature, figures in summary.features.items():
            pooled.setdefault(feature, []).append((summary.node, figures))
            result.per_node[summary.node][feature] = _figures(
                figures.count, figures.sum, figures.m2, figures.min, figures.max, request
            )
    for feature, parts in sorted(pooled.items()):
        count = sum(figures.count for _, figures in parts)
        total = sum(figures.sum for _, figures in parts)
        mean = total / count if count > 0 else math.nan
        m2 = sum(
            figures.m2 + figures.count * ((figures.sum / figures.count if figures.count else 0.0) - mean) ** 2
            for _, figures in parts
        )
        minima = [figures.min for _, figures in parts if figures.min is not None]
        maxima = [figures.max for _, figures in parts if figures.max is not None]
        combined = _figures(count, total, m2, min(minima, default=None), max(maxima, default=None), request)
        combined.nodes = [node for node, _ in parts]
        digests = [figures.digest for _, figures in parts if figures.digest]
        if request.wants(StatisticName.QUANTILES) and digests:
            combined.quantiles = merged_quantiles(digests, request.quantiles)
        result.features[feature] = combined
    return result


def _figures(
    count: float, total: float, m2: float, low: float | None, high: float | None, request: StatisticsRequest
) -> FeatureResult:
    figures = FeatureResult()
    if request.wants(StatisticName.COUNT):
        figures.count = count
    if request.wants(StatisticName.SUM):
        figures.sum = total
    if request.wants(StatisticName.MEAN) and count > 0:
        figures.mean = total / count
    if request.wants(StatisticName.STDDEV) and count > 1:
        figures.stddev = math.sqrt(max(0.0, m2) / (count - 1))
    if request.wants(StatisticName.MIN):
        figures.min = low
    if request.wants(StatisticName.MAX):
        figures.max = high
    return figures


def merged_quantiles(digests: list[dict[str, Any]], quantiles: list[float]) -> dict[str, float]:
    from fastdigest import TDigest

    merged = TDigest.from_dict(digests[0])
    for digest in digests[1:]:
        merged = merged.merge(TDigest.from_dict(digest))
    return {f"{q:g}": float(merged.quantile(q)) for q in quantiles}


def histogram_edges(result: StatisticsResult, summaries: Iterable[NodeSummary], bins: int) -> dict[str, list[float]]:
    """Common bin edges per feature: `bins` equal bins from the global min to the global max."""
    lows: dict[str, float] = {}
    highs: dict[str, float] = {}
    for summary in summaries:
        for feature, figures in summary.features.items():
            if figures.min is not None and figures.max is not None:
                lows[feature] = min(lows.get(feature, figures.min), figures.min)
                highs[feature] = max(highs.get(feature, figures.max), figures.max)
    edges = {}
    for feature in result.features:
        if feature in lows:
            low, high = lows[feature], highs[feature]
            high = high if high > low else low + 1.0  # one value everywhere: one bin around it
            edges[feature] = np.linspace(low, high, bins + 1).tolist()
    return edges


def combine_histograms(
    result: StatisticsResult, histograms: Iterable[NodeHistogram], edges: dict[str, list[float]]
) -> None:
    """Add the nodes' bin counts into `result` (global and per node)."""
    totals = {feature: np.zeros(len(feature_edges) - 1) for feature, feature_edges in edges.items()}
    for histogram in sorted(histograms, key=lambda h: h.node):
        if histogram.removed_bins:
            result.removed_bins[histogram.node] = dict(histogram.removed_bins)
        for feature, counts in histogram.counts.items():
            if feature not in totals:
                continue
            own = np.zeros_like(totals[feature])
            for index, count in counts.items():
                own[int(index)] = count
            totals[feature] += own
            node_figures = result.per_node.setdefault(histogram.node, {}).setdefault(feature, FeatureResult())
            node_figures.histogram = Histogram(edges=edges[feature], counts=own.tolist())
            result.features[feature].node_histograms[histogram.node] = node_figures.histogram
    for feature, total in totals.items():
        result.features[feature].histogram = Histogram(edges=edges[feature], counts=total.tolist())


def ask(
    grid: Grid, config: dict[str, Any], minimum: int, timeout: float, name_of: Callable[[int], str]
) -> dict[str, str]:
    """One query pass to every node: node name -> its answer's JSON; StatisticsError below `minimum` answers."""
    nodes = list(grid.get_node_ids())
    messages = [
        grid.create_message(RecordDict({"config": ConfigRecord(config)}), MessageType.QUERY, node, "statistics")
        for node in nodes
    ]
    answers: dict[str, str] = {}
    failures: list[str] = []
    for reply in grid.send_and_receive(messages, timeout=timeout):
        name = name_of(reply.metadata.src_node_id)
        if reply.has_error():
            reason = reply_error(reply)
            failures.append(reason if reason.startswith(f"{name}:") else f"{name}: {reason}")
            continue
        record = reply.content.config_records.get(STATISTICS_RECORD)
        answer = record.get(STATISTICS_ANSWER_KEY) if record is not None else None
        if isinstance(answer, str):
            answers[name] = answer
    if len(answers) < minimum:
        detail = "; ".join(failures) or "the others did not answer in time"
        raise StatisticsError(
            f"{config[STATISTICS_PASS_KEY]} pass: {len(answers)} of the required {minimum} nodes answered: {detail}"
        )
    return answers


def run_statistics(
    grid: Grid, request: StatisticsRequest, timeout: float, name_of: Callable[[int], str]
) -> StatisticsResult:
    """Both passes over the learners; the combined result."""
    first = ask(grid, {STATISTICS_PASS_KEY: "summary"}, request.min_nodes, timeout, name_of)
    summaries = [NodeSummary.model_validate_json(answer) for answer in first.values()]
    result = combine_summaries(summaries, request)
    if request.wants(StatisticName.HISTOGRAM):
        edges = histogram_edges(result, summaries, request.bins)
        if edges:
            config = {STATISTICS_PASS_KEY: "histogram", STATISTICS_EDGES_KEY: json.dumps(edges)}
            second = ask(grid, config, request.min_nodes, timeout, name_of)
            combine_histograms(result, [NodeHistogram.model_validate_json(a) for a in second.values()], edges)
    return result
