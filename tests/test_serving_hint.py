"""The serving hint `flops watch` prints: a request shaped by the registered model's signature."""

import json
import shlex

import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from sklearn.linear_model import LogisticRegression

from aggregator.tracking import _signature, model_input
from flops.cli.projects import serving_hint
from flops.training import ModelFlavor, ModelInput


def body_of(hint: str) -> object:
    return json.loads(shlex.split(hint.removeprefix("serving: "))[-1])


def test_the_hint_is_a_request_of_the_models_own_width() -> None:
    for width in (4, 30, 64):
        hint = serving_hint("http://127.0.0.1:1/invocations", {"shape": [-1, width], "dtype": "float64"})
        assert body_of(hint) == {"inputs": [[0.0] * width]}
    assert "64 pixel" not in serving_hint("http://h/invocations", {"shape": [-1, 30], "dtype": "float64"})


def test_large_or_unknown_inputs_are_described_not_spelt_out() -> None:
    image = serving_hint("http://h/invocations", {"shape": [-1, 3, 32, 32], "dtype": "float32"})
    assert "[n, 3, 32, 32] (float32)" in image
    assert "no signature" in serving_hint("http://h/invocations", None)


def test_the_input_comes_from_the_signature_even_for_hand_set_weights() -> None:
    """A FLOps-style manager sets coef_ without fitting: its width still gives the signature."""
    model = LogisticRegression()
    model.classes_, model.coef_, model.intercept_ = np.arange(3), np.zeros((3, 13)), np.zeros(3)
    assert model_input(_signature(model, ModelFlavor.SKLEARN, None)) == ModelInput(shape=[-1, 13], dtype="float64")
    table = infer_signature(pd.DataFrame({"age": [1.0], "bmi": [2.0]}), np.array([1]))
    assert model_input(table) == ModelInput(shape=[-1, 2], dtype="double")
    assert model_input(None) is None
