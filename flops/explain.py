"""Federated explainability: feature attributions of the global model, computed where the data is.

After a training (the post-training step `explain_model`, `TrainingSpec.explain`), the aggregator
sends the best model's parameters to every learner in a Flower query message
(`EXPLAIN_PASS`); each learner loads them into the user's ModelManager and computes, on its own
data (`get_explanation_data()` of the ModelManager: features, labels, feature names), the mean
absolute attribution of every feature: SHAP values (the `shap` package, a permutation explainer
over the model's prediction) where `shap` is installed in the learner's environment, else
scikit-learn's permutation importance (the drop of the model's score when a feature is shuffled).
It replies with those per-feature means and its number of examples only. The aggregator averages
them weighted by examples (`FeatureImportance`). No record leaves a node.
"""

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EXPLAIN_PASS = "explain"
EXPLAIN_RECORD = "flops-explain"
EXPLAIN_ANSWER_KEY = "answer"

Method = Literal["auto", "shap", "permutation"]


PARAMETERS_ARTIFACT = "parameters"
"""Where a training run keeps its registered model's parameters (`best.npz`), for explain jobs."""
MODEL_URI_PATTERN = r"^models:/([^/@\s]+)(/[0-9]+|@[A-Za-z0-9_-]+)$"


class ExplainRequest(BaseModel):
    """Explain a model on the learners: after a training (its best model), or, with `model_uri`, as a
    job of its own over a registered model (the parameters its training run kept)."""

    model_config = ConfigDict(extra="forbid")

    method: Method = "auto"
    max_samples: int = Field(default=200, ge=10, le=100_000, description="records per node explained at most")
    model_uri: str | None = Field(
        default=None, description="an explain job's registered model: models:/NAME/VERSION or models:/NAME@ALIAS"
    )

    @field_validator("model_uri")
    @classmethod
    def _registered_model(cls, uri: str | None) -> str | None:
        if uri is not None and not re.match(MODEL_URI_PATTERN, uri):
            raise ValueError(f"model_uri {uri!r} is no registered model: models:/NAME/VERSION or models:/NAME@ALIAS")
        return uri

    @property
    def registered_name(self) -> str | None:
        """The registered model's name in `model_uri`."""
        match = re.match(MODEL_URI_PATTERN, self.model_uri or "")
        return match.group(1) if match else None


class NodeImportance(BaseModel):
    node: str
    method: Literal["shap", "permutation"]
    examples: int
    importances: dict[str, float]


class FeatureImportance(BaseModel):
    """Mean absolute attributions per feature, averaged over the nodes weighted by their examples."""

    method: str
    model_uri: str | None = Field(default=None, description="the registered model explained (an explain job)")
    importances: dict[str, float] = Field(default_factory=dict, description="feature -> importance, descending")
    per_node: dict[str, dict[str, float]] = Field(default_factory=dict)
    examples: dict[str, int] = Field(default_factory=dict)

    def top(self, count: int) -> list[str]:
        return list(self.importances)[:count]
