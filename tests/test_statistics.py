"""Federated statistics without Flower: node answers through their owners' filters, combined exactly.

The job through real SuperLink and SuperNodes (`flops stats`) is in tests/test_statistics_e2e.py.
"""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from aggregator.statistics import combine_histograms, combine_summaries, histogram_edges
from flops.data.privacy import read_privacy_policy, write_privacy_policy
from flops.statistics import Noise, PolicyError, PrivacyPolicy, PrivacyRequest, StatisticName, StatisticsRequest
from learner.statistics import node_histogram, node_summary

FEATURES = ["mean radius", "mean texture", "worst area"]


def hospitals() -> dict[str, pd.DataFrame]:
    """breast_cancer over three unequal hospitals."""
    frame = load_breast_cancer(as_frame=True).frame
    return {"node-1": frame.iloc[:300], "node-2": frame.iloc[300:520], "node-3": frame.iloc[520:]}


def run_job(
    frames: dict[str, pd.DataFrame], request: StatisticsRequest, policies: dict[str, PrivacyPolicy] | None = None
):
    policies = policies or {}
    summaries = [
        node_summary(node, frame, request, policies.get(node, PrivacyPolicy()).tightened_by(request.privacy, node))
        for node, frame in frames.items()
    ]
    result = combine_summaries(summaries, request)
    edges = histogram_edges(result, summaries, request.bins)
    histograms = [
        node_histogram(node, frame, edges, policies.get(node, PrivacyPolicy()).tightened_by(request.privacy, node))
        for node, frame in frames.items()
    ]
    combine_histograms(result, histograms, edges)
    return result, histograms


def test_global_figures_equal_the_pooled_records_within_1e_9() -> None:
    frames = hospitals()
    request = StatisticsRequest(features=FEATURES, bins=12)
    result, _ = run_job(frames, request)
    pooled = pd.concat(frames.values())
    for feature in FEATURES:
        values = pooled[feature].to_numpy(dtype=np.float64)
        figures = result.features[feature]
        assert figures.count == len(values)
        assert figures.sum == pytest.approx(values.sum(), rel=1e-12)
        assert abs(figures.mean - values.mean()) <= 1e-9 * max(1.0, abs(values.mean()))
        assert abs(figures.stddev - values.std(ddof=1)) <= 1e-9 * max(1.0, values.std(ddof=1))
        assert (figures.min, figures.max) == (values.min(), values.max())
        assert figures.histogram is not None
        expected, _ = np.histogram(values, bins=np.asarray(figures.histogram.edges))
        assert figures.histogram.counts == expected.tolist()
        assert sorted(figures.node_histograms) == ["node-1", "node-2", "node-3"]
        assert figures.nodes == ["node-1", "node-2", "node-3"]
        # Quantiles from merged t-digests: close to the pooled ones (a sketch, not exact).
        for q, value in figures.quantiles.items():
            assert value == pytest.approx(np.quantile(values, float(q)), rel=0.05)


def test_a_node_below_its_min_count_sends_nothing_of_the_feature_and_says_so() -> None:
    frames = hospitals()  # node-3 holds 49 records
    request = StatisticsRequest(features=FEATURES)
    result, histograms = run_job(frames, request, {"node-3": PrivacyPolicy(min_count=50)})
    assert result.filtered["node-3"] == {
        feature: "49 record(s), fewer than the node's minimum of 50 (min_count)" for feature in FEATURES
    }
    for feature in FEATURES:
        assert result.features[feature].nodes == ["node-1", "node-2"]
        assert result.features[feature].count == 520
        assert "node-3" not in result.features[feature].node_histograms
    assert next(h for h in histograms if h.node == "node-3").counts == {}


def test_no_returned_bin_holds_fewer_records_than_its_nodes_minimum() -> None:
    frames = hospitals()
    request = StatisticsRequest(features=FEATURES, bins=30)
    minimums = {"node-1": 3, "node-2": 8, "node-3": 5}
    policies = {node: PrivacyPolicy(min_bin_count=minimum) for node, minimum in minimums.items()}
    result, histograms = run_job(frames, request, policies)
    removed = 0
    for histogram in histograms:
        for counts in histogram.counts.values():
            assert all(count >= minimums[histogram.node] for count in counts.values()), histogram
        removed += sum(histogram.removed_bins.values())
    assert removed > 0 and result.removed_bins  # the tails of 30 bins are thin: some bins went
    # The tails are in the outer bins, not lost: every node's records are counted.
    for histogram in histograms:
        node = histogram.node
        kept = sum(sum(counts.values()) for counts in histogram.counts.values())
        dropped_somewhere = bool(result.removed_bins.get(node))
        assert dropped_somewhere or kept == len(frames[node]) * len(FEATURES)
    # Extremes are the means of the k smallest and largest values, not a record's own.
    summary = node_summary("node-2", frames["node-2"], request, policies["node-2"])
    radius = np.sort(frames["node-2"]["mean radius"].to_numpy())
    assert summary.features["mean radius"].min == pytest.approx(radius[:8].mean())
    assert summary.features["mean radius"].max == pytest.approx(radius[-8:].mean())
    # Sketch centroids hold at least the node's minimum too (no single record's value in them).
    summary = node_summary("node-2", frames["node-2"], request, policies["node-2"])
    for figures in summary.features.values():
        assert figures.digest is not None
        assert all(centroid["c"] >= 8 for centroid in figures.digest["centroids"])


def test_a_request_may_tighten_a_policy_never_loosen_it() -> None:
    node = PrivacyPolicy(min_count=10, min_bin_count=5, noise=Noise(epsilon=1.0))
    tighter = node.tightened_by(PrivacyRequest(min_count=20, noise=Noise(epsilon=0.5)), "node-1")
    assert (tighter.min_count, tighter.min_bin_count, tighter.noise.epsilon) == (20, 5, 0.5)
    assert node.tightened_by(PrivacyRequest(min_bin_count=6), "node-1").min_count == 10
    assert node.tightened_by(PrivacyRequest(), "node-1") == node  # nothing asked: the node's own
    with pytest.raises(PolicyError, match=r"node-1: the request would loosen .*min_count 2 < 10"):
        node.tightened_by(PrivacyRequest(min_count=2), "node-1")
    with pytest.raises(PolicyError, match=r"noise epsilon 5\.0 > 1\.0"):
        node.tightened_by(PrivacyRequest(noise=Noise(epsilon=5.0)), "node-1")


def test_with_noise_repeated_jobs_differ_and_the_epsilon_is_reported() -> None:
    frames = hospitals()
    request = StatisticsRequest(features=["mean radius"], statistics=[StatisticName.COUNT, StatisticName.MEAN])
    noisy = {node: PrivacyPolicy(noise=Noise(mechanism="laplace", epsilon=0.5)) for node in frames}
    first, _ = run_job(frames, request, noisy)
    second, _ = run_job(frames, request, noisy)
    assert first.features["mean radius"].count != second.features["mean radius"].count
    assert first.epsilon == {"node-1": 0.5, "node-2": 0.5, "node-3": 0.5}
    exact, _ = run_job(frames, request)
    assert exact.epsilon == {} and exact.features["mean radius"].count == 569
    assert abs(first.features["mean radius"].count - 569) < 200  # noise, not nonsense
    gaussian = {"node-1": PrivacyPolicy(noise=Noise(mechanism="gaussian", epsilon=1.0, delta=1e-5))}
    assert run_job({"node-1": frames["node-1"]}, request, gaussian)[0].epsilon == {"node-1": 1.0}


def test_the_policy_file_is_the_data_owners_and_a_bad_one_is_named(tmp_path: Path) -> None:
    assert read_privacy_policy(tmp_path) == PrivacyPolicy()
    write_privacy_policy(tmp_path, PrivacyPolicy(min_count=10, noise=Noise(epsilon=2.0)))
    assert read_privacy_policy(tmp_path).noise == Noise(epsilon=2.0)
    (tmp_path / "privacy.yaml").write_text("min_count: -3\n", encoding="utf-8")
    with pytest.raises(PolicyError, match=r"privacy\.yaml: not a valid privacy policy"):
        read_privacy_policy(tmp_path)
