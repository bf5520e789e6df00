"""Multinomial logistic regression on 8x8 digits, trained federatedly with FedAvg."""

import warnings

import numpy as np
from data_manager import DataManager
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from flops.ml_repo import ModelManagerTemplate

NUM_CLASSES = 10
NUM_FEATURES = 64
CLASSES = np.arange(NUM_CLASSES)
# lbfgs iterations per local epoch: a few, so that nodes do not drift too far apart.
ITERATIONS_PER_EPOCH = 10


class ModelManager(ModelManagerTemplate):
    def __init__(self) -> None:
        self.model = LogisticRegression(C=1.0, max_iter=ITERATIONS_PER_EPOCH, warm_start=True)
        # Fixed shapes for all ten classes, so that every node and the aggregator agree
        # on the parameters FedAvg averages, whatever classes a node's data holds.
        self.model.classes_ = CLASSES
        self.model.coef_ = np.zeros((NUM_CLASSES, NUM_FEATURES))
        self.model.intercept_ = np.zeros(NUM_CLASSES)
        self.model.n_features_in_ = NUM_FEATURES
        self.train: tuple[np.ndarray, np.ndarray] | None = None
        self.test: tuple[np.ndarray, np.ndarray] | None = None

    def set_model_data(self) -> None:
        self.train, self.test = DataManager().get_data()

    def get_model(self) -> LogisticRegression:
        return self.model

    def get_model_parameters(self) -> list[np.ndarray]:
        return [self.model.coef_.copy(), self.model.intercept_.copy()]

    def set_model_parameters(self, parameters: list[np.ndarray]) -> None:
        coef, intercept = parameters
        self.model.coef_ = np.asarray(coef, dtype=np.float64).copy()
        self.model.intercept_ = np.asarray(intercept, dtype=np.float64).copy()

    def fit_model(self, config: dict | None = None) -> int:
        config = config or {}
        x, y = self._require(self.train)
        epochs = int(config.get("local_epochs", 1))
        self.model.max_iter = max(1, epochs) * ITERATIONS_PER_EPOCH
        self.model.C = float(config.get("C", 1.0))
        # A node may lack some classes (non-IID data). One zero-weight row per missing
        # class keeps `classes_` and the parameter shapes complete without biasing the fit.
        missing = np.setdiff1d(CLASSES, y)
        weights = np.ones(len(y))
        if missing.size:
            x = np.vstack([x, np.zeros((missing.size, x.shape[1]), dtype=x.dtype)])
            y = np.concatenate([y, missing])
            weights = np.concatenate([weights, np.zeros(missing.size)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(x, y, sample_weight=weights)
        return len(self.train[1])

    def evaluate_model(self) -> tuple[float, float, int]:
        x, y = self._require(self.test)
        probabilities = self.model.predict_proba(x)
        loss = log_loss(y, probabilities, labels=CLASSES)
        accuracy = float(np.mean(self.model.predict(x) == y))
        return float(loss), accuracy, len(y)

    def get_input_example(self) -> np.ndarray:
        """Two all-zero rows of the model's input: 64 pixel features scaled to [0, 1]."""
        return np.zeros((2, NUM_FEATURES), dtype=np.float32)

    @staticmethod
    def _require(split: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
        if split is None:
            raise RuntimeError("no data: call set_model_data() first")
        return split
