"""The aggregator's side of federated explainability: the nodes' attributions, averaged by examples."""

from collections.abc import Iterable

from flops.explain import FeatureImportance, NodeImportance


def combine_importances(answers: Iterable[NodeImportance]) -> FeatureImportance:
    """Per feature the examples-weighted mean of the nodes' mean absolute attributions, descending."""
    answers = sorted(answers, key=lambda answer: answer.node)
    total = sum(answer.examples for answer in answers)
    if not answers or total <= 0:
        raise ValueError("no node explained the model on any example")
    features = list(answers[0].importances)
    mean = {
        feature: sum(answer.importances.get(feature, 0.0) * answer.examples for answer in answers) / total
        for feature in features
    }
    methods = sorted({answer.method for answer in answers})
    return FeatureImportance(
        method="+".join(methods),
        importances=dict(sorted(mean.items(), key=lambda item: item[1], reverse=True)),
        per_node={answer.node: answer.importances for answer in answers},
        examples={answer.node: answer.examples for answer in answers},
    )
