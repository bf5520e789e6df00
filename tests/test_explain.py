"""Federated explainability without Flower: attributions per hospital, averaged by examples, against the pooled data.

The post-training step through real learners (`flops train --explain`) is in tests/test_explain_e2e.py.
"""

import itertools

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from aggregator.explain import combine_importances
from flops.explain import ExplainRequest, NodeImportance
from flops.sla import Job, SLAError, parse_sla
from learner.explain import attributions


def hospitals_and_model() -> tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray, list[str], object]:
    data = load_breast_cancer()
    x, y, names = data.data, data.target, list(data.feature_names)
    order = np.random.default_rng(7).permutation(len(y))
    x, y = x[order], y[order]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    bounds = [0, 300, 460, len(y)]  # three hospitals of unequal size
    parts = [(x[a:b], y[a:b]) for a, b in itertools.pairwise(bounds)]
    return parts, x, y, names, model


@pytest.mark.parametrize("method", ["permutation", "shap"])
def test_averaged_importances_rank_the_pooled_top_features(method: str) -> None:
    parts, x, y, names, model = hospitals_and_model()
    nodes = [
        attributions(f"hospital-{i}", model, px, py, names, method, max_samples=400)  # type: ignore[arg-type]
        for i, (px, py) in enumerate(parts, start=1)
    ]
    assert {node.method for node in nodes} == {method}
    combined = combine_importances(nodes)
    pooled = attributions("pooled", model, x, y, names, method, max_samples=len(y))  # type: ignore[arg-type]
    pooled_top = sorted(pooled.importances, key=pooled.importances.__getitem__, reverse=True)[:5]
    overlap = set(combined.top(5)) & set(pooled_top)
    assert len(overlap) >= 3, (combined.top(5), pooled_top)
    assert combined.examples == {"hospital-1": 300, "hospital-2": 160, "hospital-3": 109}
    values = list(combined.importances.values())
    assert values == sorted(values, reverse=True) and values[0] > 0


def test_the_average_is_weighted_by_examples() -> None:
    answers = [
        NodeImportance(node="a", method="shap", examples=30, importances={"f": 1.0, "g": 0.0}),
        NodeImportance(node="b", method="shap", examples=10, importances={"f": 0.0, "g": 2.0}),
    ]
    combined = combine_importances(answers)
    assert combined.importances == {"f": 0.75, "g": 0.5}
    assert combined.method == "shap" and combined.per_node["b"] == {"f": 0.0, "g": 2.0}


def test_features_and_names_must_match() -> None:
    parts, _, _, names, model = hospitals_and_model()
    with pytest.raises(ValueError, match="one name per column"):
        attributions("h", model, parts[0][0], parts[0][1], names[:-1], "permutation", 100)


def explain_job_sla(**fields: object) -> dict[str, object]:
    return {
        "job": "explain",
        "ml_repo_url": "https://git.example/acme/hospitals.git",
        "ml_model_flavor": "sklearn",
        "explain": {"model_uri": "models:/acme.hospitals/2"},
        **fields,
    }


def test_an_explain_job_sla_names_a_registered_model_and_its_repository() -> None:
    sla = parse_sla(explain_job_sla())
    assert sla.job is Job.EXPLAIN and sla.job.runs_code and not Job.STATISTICS.runs_code
    assert sla.explain is not None and sla.explain.registered_name == "acme.hospitals"
    assert ExplainRequest(model_uri="models:/acme.hospitals@v2026-12-1").registered_name == "acme.hospitals"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"explain": {"method": "shap"}}, "an explain job needs explain.model_uri"),
        ({"explain": {"model_uri": "runs:/0a1b/model"}}, "is no registered model"),
        ({"explain": {"model_uri": "models:/acme.hospitals"}}, "is no registered model"),
        ({"ml_repo_url": ""}, "an explain job needs the model's repository"),
        ({"backend": "docker"}, "explain jobs run on the local backend"),
        ({"post_training_steps": ["explain_model"]}, "registers no model"),
        ({"job": "training"}, "explain is for job 'explain'"),
    ],
)
def test_an_explain_job_sla_is_refused_with_what_is_wrong(fields: dict[str, object], message: str) -> None:
    with pytest.raises(SLAError, match=message):
        parse_sla(explain_job_sla(**fields))
