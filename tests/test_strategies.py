"""Strategy factory: every named strategy builds; bad parameters are named."""

import pytest

from aggregator.strategies import StrategyConfigError, build_strategy
from flops.training import StrategyConfig, StrategyName, TrainingSpec


def spec(name: StrategyName, **parameters: float) -> TrainingSpec:
    return TrainingSpec(
        project_id="p",
        model_name="m",
        min_available_clients=3,
        min_fit_clients=2,
        min_evaluate_clients=2,
        strategy=StrategyConfig(name=name, parameters=parameters),
    )


@pytest.mark.parametrize("name", list(StrategyName))
def test_each_strategy_builds_with_client_minimums(name: StrategyName) -> None:
    strategy = build_strategy(spec(name))
    assert type(strategy).__name__ == name.value
    assert strategy.min_available_nodes == 3  # type: ignore[attr-defined]
    assert strategy.min_train_nodes == 2  # type: ignore[attr-defined]


def test_parameters_reach_the_strategy() -> None:
    strategy = build_strategy(spec(StrategyName.FEDPROX, proximal_mu=0.3))
    assert strategy.proximal_mu == 0.3  # type: ignore[attr-defined]


def test_unknown_parameter_lists_the_accepted_ones() -> None:
    with pytest.raises(StrategyConfigError) as caught:
        build_strategy(spec(StrategyName.FEDADAM, learning_rate=0.1))
    assert "learning_rate" in str(caught.value) and "eta" in str(caught.value)


def test_client_minimums_must_fit() -> None:
    with pytest.raises(ValueError, match="min_fit_clients"):
        TrainingSpec(project_id="p", model_name="m", min_available_clients=1, min_fit_clients=2)
