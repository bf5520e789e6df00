"""A learner's feature attributions of a model on its own data (see `flops.explain`).

Kept free of Flower: `attributions` takes the model and the node's data and returns per-feature
mean absolute attributions, with SHAP when the `shap` package is installed (and asked for or
`auto`), else scikit-learn's permutation importance.
"""

import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from flops.explain import Method, NodeImportance

SEED = 0


def prediction_function(model: Any) -> Callable[[Any], Any]:
    """What SHAP explains: the positive class's probability for a binary classifier, else the prediction."""
    if hasattr(model, "predict_proba"):

        def positive(data: Any) -> Any:
            probabilities = np.asarray(model.predict_proba(data))
            return probabilities[:, -1] if probabilities.ndim == 2 and probabilities.shape[1] == 2 else probabilities

        return positive
    return model.predict


def shap_importances(model: Any, x: np.ndarray) -> np.ndarray:
    import shap

    background = shap.maskers.Independent(x, max_samples=min(100, len(x)))
    explainer = shap.explainers.Permutation(prediction_function(model), background, seed=SEED)
    values = np.asarray(explainer(x).values)
    if values.ndim == 3:  # one column per class: the mean over classes
        values = np.abs(values).mean(axis=2)
    return np.abs(values).mean(axis=0)


def permutation_importances(model: Any, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from sklearn.inspection import permutation_importance

    # A classifier's log loss moves with every feature; its accuracy hardly does once it is near 1.
    scoring = "neg_log_loss" if hasattr(model, "predict_proba") else None
    result = permutation_importance(model, x, y, scoring=scoring, n_repeats=5, random_state=SEED)
    return np.asarray(result.importances_mean)


def attributions(
    node: str, model: Any, x: Any, y: Any, names: Sequence[str], method: Method, max_samples: int
) -> NodeImportance:
    """Per-feature mean absolute attributions of `model` on the node's first `max_samples` records."""
    x, y = np.asarray(x)[:max_samples], np.asarray(y)[:max_samples]
    if x.ndim != 2 or x.shape[1] != len(names):
        raise ValueError(
            f"get_explanation_data() gave features of shape {x.shape} and {len(names)} names: "
            "give a 2-D array with one name per column"
        )
    use_shap = method == "shap" or (method == "auto" and importlib.util.find_spec("shap") is not None)
    values = shap_importances(model, x) if use_shap else permutation_importances(model, x, y)
    return NodeImportance(
        node=node,
        method="shap" if use_shap else "permutation",
        examples=len(x),
        importances={name: float(value) for name, value in zip(names, values, strict=True)},
    )
