"""Breast-cancer diagnosis across hospitals: standardisation + logistic regression, FedAvg.

The features span five orders of magnitude (areas in the hundreds, smoothness around 0.1),
so they are standardised. Each hospital computes the statistics for that on its own data;
what leaves the hospital are its per-feature mean and mean of squares, which FedAvg
(a weighted mean by number of examples) turns into the exact statistics of all hospitals
together. Standardising with those, rather than with each hospital's own, matters when
the hospitals see different mixes of diagnoses: a locally centred feature means something
different in each. The logged model is a pipeline that takes the raw features.
"""

import warnings

import numpy as np
from data_manager import FEATURES, DataManager
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from flops.ml_repo import ModelManagerTemplate

CLASSES = np.array([0, 1])  # 0: malignant, 1: benign
NUM_FEATURES = len(FEATURES)
# lbfgs iterations per local epoch: a few, so that hospitals do not drift too far apart.
ITERATIONS_PER_EPOCH = 10

Split = tuple[np.ndarray, np.ndarray]


class ModelManager(ModelManagerTemplate):
    def __init__(self) -> None:
        classifier = LogisticRegression(C=1.0, max_iter=ITERATIONS_PER_EPOCH, warm_start=True)
        # A binary model has one row of coefficients. Fixing the shapes here lets the
        # aggregator's fresh ModelManager() and every hospital agree on them.
        classifier.classes_ = CLASSES
        classifier.coef_ = np.zeros((1, NUM_FEATURES))
        classifier.intercept_ = np.zeros(1)
        classifier.n_features_in_ = NUM_FEATURES
        self.scaler = StandardScaler()
        self.classifier = classifier
        self.model = Pipeline([("scaler", self.scaler), ("classifier", self.classifier)])
        # Feature mean and mean of squares; all zeros until the first round has pooled them.
        self.moments = [np.zeros(NUM_FEATURES), np.zeros(NUM_FEATURES)]
        self._use_moments(*self.moments)
        self.train: Split | None = None
        self.test: Split | None = None

    def set_model_data(self) -> None:
        self.train, self.test = DataManager().get_data()

    def get_model(self) -> Pipeline:
        return self.model

    def get_model_parameters(self) -> list[np.ndarray]:
        return [
            self.classifier.coef_.copy(),
            self.classifier.intercept_.copy(),
            *(moment.copy() for moment in self.moments),
        ]

    def set_model_parameters(self, parameters: list[np.ndarray]) -> None:
        coef, intercept, mean, square_mean = (np.asarray(p, dtype=np.float64) for p in parameters)
        self.classifier.coef_ = coef.reshape(1, NUM_FEATURES).copy()
        self.classifier.intercept_ = intercept.reshape(1).copy()
        self.moments = [mean.copy(), square_mean.copy()]
        self._use_moments(mean, square_mean)

    def fit_model(self, config: dict | None = None) -> int:
        config = config or {}
        x, y = _require(self.train)
        self.classifier.max_iter = max(1, int(config.get("local_epochs", 1))) * ITERATIONS_PER_EPOCH
        self.classifier.C = float(config.get("C", 1.0))
        local_moments = [x.mean(axis=0), np.square(x).mean(axis=0)]
        if not self._pooled():
            # First round: no pooled statistics yet, so standardise with this hospital's.
            self._use_moments(*local_moments)
        # Skewed (non-IID) splits can leave a small hospital with one diagnosis only; a
        # zero-weight row of the other class keeps the model binary without biasing it.
        features = self.scaler.transform(x)
        missing = np.setdiff1d(CLASSES, y)
        weights = np.ones(len(y))
        if missing.size:
            features = np.vstack([features, np.zeros((missing.size, NUM_FEATURES))])
            y = np.concatenate([y, missing])
            weights = np.concatenate([weights, np.zeros(missing.size)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.classifier.fit(features, y, sample_weight=weights)
        # FedAvg weights each hospital's moments by its number of examples: pooled moments.
        self.moments = local_moments
        return len(self.train[1])

    def evaluate_model(self) -> tuple[float, float, int]:
        x, y = _require(self.test)
        loss = log_loss(y, self.model.predict_proba(x), labels=CLASSES)
        accuracy = float(np.mean(self.model.predict(x) == y))
        return float(loss), accuracy, len(y)

    def get_explanation_data(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """What FLOps's explain_model attributes the model's decisions on: every record of this hospital."""
        (x_train, y_train), (x_test, y_test) = _require(self.train), _require(self.test)
        return np.vstack([x_train, x_test]), np.concatenate([y_train, y_test]), list(FEATURES)

    def get_input_example(self) -> np.ndarray:
        """Two all-zero rows of the model's input: the 30 raw features in FEATURES order."""
        return np.zeros((2, NUM_FEATURES), dtype=np.float64)

    def _pooled(self) -> bool:
        return bool(np.any(self.moments[1] > 0))

    def _use_moments(self, mean: np.ndarray, square_mean: np.ndarray) -> None:
        """Set the scaler from a mean and mean of squares (identity while they are unknown)."""
        variance = np.maximum(square_mean - np.square(mean), 0.0)
        scale = np.sqrt(variance)
        scale[scale == 0] = 1.0
        self.scaler.mean_ = mean.copy()
        self.scaler.var_ = variance
        self.scaler.scale_ = scale
        self.scaler.n_features_in_ = NUM_FEATURES
        self.scaler.n_samples_seen_ = 0


def _require(split: Split | None) -> Split:
    if split is None:
        raise RuntimeError("no data: call set_model_data() first")
    return split
