import warnings
from typing import Any

import mlflow
import numpy as np
from data_manager import DataManager
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from flops_utils.ml_repo_templates import ModelManagerTemplate

N_CLASSES = 10  # digits 0-9
N_FEATURES = 64  # 8x8 pixels


class ModelManager(ModelManagerTemplate):
    def __init__(self):
        # FLOps repositories turn on MLflow's autologging; on a learner these calls do nothing.
        mlflow.autolog()
        self.model = LogisticRegression(
            max_iter=10,  # local lbfgs iterations per round
            warm_start=True,  # start from the global weights instead of from scratch
        )
        # Setting initial parameters, akin to model.compile for keras models
        self._set_init_params()

    def _set_init_params(self) -> None:
        """Zero parameters for all classes.

        The parameters only exist after `fit()`, but the aggregator asks for initial ones
        before any learner has trained. Reference: Flower's sklearn-logreg-mnist example.
        """
        self.model.classes_ = np.arange(N_CLASSES)
        self.model.coef_ = np.zeros((N_CLASSES, N_FEATURES))
        self.model.intercept_ = np.zeros((N_CLASSES,))

    def set_model_data(self) -> None:
        (self.x_train, self.x_test), (self.y_train, self.y_test) = DataManager().get_data()

    def get_model(self) -> Any:
        return self.model

    def get_model_parameters(self) -> Any:
        return [self.model.coef_, self.model.intercept_]

    def set_model_parameters(self, parameters) -> None:
        self.model.coef_ = parameters[0]
        self.model.intercept_ = parameters[1]

    def fit_model(self) -> int:
        # A node without some digits would shrink classes_ and the parameters: give every
        # missing class one zero-weight row, so that shapes stay the same on all nodes.
        missing = np.setdiff1d(np.arange(N_CLASSES), self.y_train)
        x = np.vstack([self.x_train, np.zeros((len(missing), N_FEATURES))])
        y = np.concatenate([self.y_train, missing])
        weights = np.concatenate([np.ones(len(self.y_train)), np.zeros(len(missing))])
        # Ignore convergence failure due to few local iterations
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.model.fit(x, y, sample_weight=weights)
        mlflow.log_metric("train_examples", len(self.x_train))
        return len(self.x_train)

    def evaluate_model(self) -> tuple[Any, Any, int]:
        probabilities = self.model.predict_proba(self.x_test)
        loss = log_loss(self.y_test, probabilities, labels=np.arange(N_CLASSES))
        accuracy = self.model.score(self.x_test, self.y_test)
        return loss, accuracy, len(self.x_test)
