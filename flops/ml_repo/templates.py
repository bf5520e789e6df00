"""Base classes for user code, the same as FLOps's `flops_utils.ml_repo_templates`.

Subclassing them is optional: FLOps only needs the methods to exist (the validator checks
that), but the templates document the contract and let linters help the user.
"""

from abc import ABC, abstractmethod
from typing import Any


class DataManagerTemplate(ABC):
    """Loads the node's data (through `load_dataset()`) and prepares it for the model."""

    @abstractmethod
    def _prepare_data(self) -> Any:
        """Call `load_dataset()` and preprocess what it returns."""

    @abstractmethod
    def get_data(self) -> tuple[Any, Any]:
        """Prepared data for training and evaluation, e.g. `(train, test)`."""


class ModelManagerTemplate(ABC):
    """Owns the model: parameters in and out, local training and evaluation.

    The aggregator instantiates it too, without data, to get the initial parameters and the
    model object to log; so `__init__` must not load data. Learners call `set_model_data()`.
    """

    @abstractmethod
    def set_model_data(self) -> None:
        """Load the node's data (learners only), e.g. `DataManager().get_data()`."""

    @abstractmethod
    def get_model(self) -> Any:
        """The model object itself (logged to MLflow with the project's flavor)."""

    @abstractmethod
    def get_model_parameters(self) -> Any:
        """The parameters as a list of NumPy arrays."""

    @abstractmethod
    def set_model_parameters(self, parameters: Any) -> None:
        """Load a list of NumPy arrays as produced by `get_model_parameters()`."""

    @abstractmethod
    def fit_model(self) -> int:
        """Train on local data; return the number of training examples used.

        May accept one argument, a `config` dict with the project's hyperparameters and
        round information (`server_round`, and `proximal_mu` under FedProx).
        """

    @abstractmethod
    def evaluate_model(self) -> tuple[Any, Any, int]:
        """Evaluate on local test data: `(loss, accuracy, number_of_test_examples)`."""
