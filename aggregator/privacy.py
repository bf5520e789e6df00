"""Differential privacy on the aggregator: Flower's DP wrapper around the SLA's strategy.

`private_strategy` builds, for the central modes (`flops.differential_privacy`), Flower's
`DifferentialPrivacy{Server,Client}Side{Fixed,Adaptive}Clipping` around the strategy the SLA
names, which then averages the updates uniformly (`UNIT_WEIGHT_KEY`: the noise is calibrated to
a uniform mean; evaluations stay weighted by their examples). `base` (the ServerApp's
`RoundHooks`) is mixed in outside the wrapper, so the wrapper sees only the successful replies a
round accepted (it would skip a round's aggregation on any failed one), and `UpdateNorms`
inside it, so each round's report can show the norms of the updates that were really averaged.
In `local` mode the learners add the noise themselves and the strategy stays as it is.

The noise assumes `min_fit_clients` updates (`num_sampled_clients`); a round that averages more
adds more noise than it needs, never less.
"""

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords
from flwr.supercore.differential_privacy import get_norm

from flops.differential_privacy import UNIT_WEIGHT_KEY, Clipping, DifferentialPrivacy, PrivacyMode

WRAPPERS: dict[tuple[PrivacyMode, Clipping], type[Strategy]] = {
    (PrivacyMode.SERVER, Clipping.FIXED): DifferentialPrivacyServerSideFixedClipping,
    (PrivacyMode.SERVER, Clipping.ADAPTIVE): DifferentialPrivacyServerSideAdaptiveClipping,
    (PrivacyMode.CLIENT, Clipping.FIXED): DifferentialPrivacyClientSideFixedClipping,
    (PrivacyMode.CLIENT, Clipping.ADAPTIVE): DifferentialPrivacyClientSideAdaptiveClipping,
}


class UpdateNorms:
    """Mixed in before a strategy: the L2 norm of each update it aggregates, by round."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.update_norms: dict[int, list[float]] = {}
        self._global: list[np.ndarray] = []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._global = arrays.to_numpy_ndarrays()
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        self.update_norms[server_round] = [
            update_norm(record.to_numpy_ndarrays(), self._global)
            for reply in replies
            if not reply.has_error()
            for record in reply.content.array_records.values()
        ]
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]


class EvaluationByExamples:
    """Mixed in before a strategy that averages updates uniformly: evaluations stay weighted by their
    examples (the strategy's `weighted_by_key` is the unit weight, which evaluate replies lack)."""

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        contents = [reply.content for reply in replies if not reply.has_error()]
        return aggregate_metricrecords(contents, "num-examples") if contents else None


def update_norm(parameters: list[np.ndarray], global_parameters: list[np.ndarray]) -> float:
    """The L2 norm of an update (parameters minus the global ones, all arrays flattened together)."""
    return get_norm([np.subtract(new, old) for new, old in zip(parameters, global_parameters, strict=True)])


def private_strategy(
    privacy: DifferentialPrivacy,
    strategy_class: type[Strategy],
    kwargs: dict[str, Any],
    num_sampled_clients: int,
    base: type | None,
) -> Strategy:
    """`strategy_class(**kwargs)` measured (`UpdateNorms`) and averaging uniformly, inside the DP
    wrapper of `privacy.mode` and `privacy.clipping`, with `base` mixed in outside; the returned
    object also has the inner strategy's client minimums and sampling fractions."""
    measured = type(f"Measured{strategy_class.__name__}", (UpdateNorms, EvaluationByExamples, strategy_class), {})
    inner = measured(**kwargs, weighted_by_key=UNIT_WEIGHT_KEY)
    wrapper = WRAPPERS[(privacy.mode, privacy.clipping)]
    cls = wrapper if base is None else type(f"{base.__name__}{wrapper.__name__}", (base, wrapper), {})
    if privacy.clipping is Clipping.ADAPTIVE:
        strategy = cls(
            inner,
            privacy.noise_multiplier,
            num_sampled_clients,
            initial_clipping_norm=privacy.clipping_norm,
            target_clipped_quantile=privacy.target_clipped_quantile,
            clip_norm_lr=privacy.clip_norm_lr,
            clipped_count_stddev=privacy.count_stddev(num_sampled_clients),
        )
    else:
        strategy = cls(inner, privacy.noise_multiplier, privacy.clipping_norm, num_sampled_clients)
    for name in ("min_available_nodes", "min_train_nodes", "min_evaluate_nodes", "fraction_train", "fraction_evaluate"):
        setattr(strategy, name, getattr(inner, name))
    return strategy
