"""Builds the Flower strategy an SLA names, with the project's client minimums.

Strategy parameters are checked against the strategy's constructor, so a typo in an SLA
fails before training with the list of parameters that exist.
"""

import inspect
from typing import Any

from flwr.serverapp import strategy as flower_strategies
from flwr.serverapp.strategy import Strategy

from aggregator.privacy import private_strategy
from flops.training import StrategyName, TrainingSpec

# Set from the SLA's client minimums; not user-settable per strategy.
MANAGED_PARAMETERS = ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes")
INTERNAL_PARAMETERS = (
    "self",
    "weighted_by_key",
    "arrayrecord_key",
    "configrecord_key",
    "train_metrics_aggr_fn",
    "evaluate_metrics_aggr_fn",
)


class StrategyConfigError(ValueError):
    """The SLA's strategy parameters do not fit the strategy."""


def strategy_class(name: StrategyName) -> type[Strategy]:
    cls = getattr(flower_strategies, name.value)
    assert issubclass(cls, Strategy)
    return cls


def tunable_parameters(cls: type[Strategy]) -> list[str]:
    """Constructor parameters an SLA may set for `cls`."""
    signature = inspect.signature(cls.__init__)
    return [name for name in signature.parameters if name not in INTERNAL_PARAMETERS and name not in MANAGED_PARAMETERS]


def strategy_kwargs(spec: TrainingSpec, cls: type[Strategy]) -> dict[str, Any]:
    allowed = tunable_parameters(cls)
    unknown = sorted(set(spec.strategy.parameters) - set(allowed))
    if unknown:
        raise StrategyConfigError(
            f"strategy {spec.strategy.name.value} has no parameter(s) {', '.join(unknown)}; "
            f"it accepts: {', '.join(allowed) or 'none'}"
        )
    kwargs: dict[str, Any] = dict(spec.strategy.parameters)
    kwargs.update(
        min_available_nodes=spec.min_available_clients,
        min_train_nodes=spec.min_fit_clients,
        min_evaluate_nodes=spec.min_evaluate_clients,
    )
    return kwargs


def build_strategy(spec: TrainingSpec, base: type | None = None) -> Strategy:
    """The strategy for `spec`; with `base`, a subclass of it mixing `base` in first.

    Under central differential privacy it is Flower's DP wrapper around the strategy, with `base`
    mixed into the wrapper (`aggregator.privacy.private_strategy`).
    """
    cls = strategy_class(spec.strategy.name)
    privacy = spec.differential_privacy
    try:
        kwargs = strategy_kwargs(spec, cls)
        if privacy is not None and privacy.central:
            return private_strategy(privacy, cls, kwargs, spec.min_fit_clients, base)
        if base is not None:
            cls = type(f"{base.__name__}{cls.__name__}", (base, cls), {})
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        if isinstance(error, StrategyConfigError):
            raise
        raise StrategyConfigError(f"strategy {spec.strategy.name.value}: {error}") from error
