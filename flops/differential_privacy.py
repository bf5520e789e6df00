"""Differential privacy of a training: what the SLA asks for, and the privacy the training spent.

Contract, by `mode` (Flower's wrappers and mods do the work, `aggregator.privacy` and
`learner.privacy` choose them):

- `server`: the aggregator clips each learner's update (its parameters minus the round's global
  model) to `clipping_norm`, averages the updates uniformly and adds Gaussian noise of standard
  deviation `noise_multiplier * clipping_norm / min_fit_clients` to the mean
  (`DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping`). The learners see their updates
  unclipped; the aggregator and whoever gets the model see only the noisy mean.
- `client`: the learners clip (`fixedclipping_mod`, `adaptiveclipping_mod`), the aggregator
  averages uniformly and adds the same noise (`DifferentialPrivacyClientSide*Clipping`): no
  update leaves a learner unclipped.
- `local`: each learner clips and adds noise of standard deviation `noise_multiplier *
  clipping_norm` to its own update before it sends it (`LocalDpMod`): the aggregator itself sees
  only noisy updates. It needs far more noise for the same model quality.

With `clipping: adaptive` the clipping norm follows the `target_clipped_quantile` of the update
norms (Andrew et al., 2019); Flower then splits the noise between the updates and the noisy
count of clipped updates so that each round is still one Gaussian release of `noise_multiplier`.

Accounting: every round is one release of a Gaussian mechanism with `noise_multiplier`, at the
level of a learner's whole data, with every learner taking part (no sampling amplification is
claimed). `privacy_spent(rounds)` composes them with a Rényi-DP accountant (Flower's
`RdpAccountant`, over Google's `dp-accounting`) and reports epsilon at `delta`. Averaging over
more than `min_fit_clients` replies only adds noise relative to the updates, so the epsilon is an
upper bound. Training and evaluation metrics are aggregates outside this accounting.
"""

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, model_validator

UNIT_WEIGHT_KEY = "flops-unit-weight"
"""A train reply's weight under central DP: 1 for every learner (the noise assumes a uniform mean)."""

DP_STRATEGIES = ("FedAvg", "FedProx", "FedAvgM", "FedAdam", "FedYogi", "FedAdagrad")
"""Strategies whose aggregate is the (noised) mean of the updates, or a server optimiser's step on it."""


class PrivacyMode(StrEnum):
    SERVER = "server"
    CLIENT = "client"
    LOCAL = "local"


class Clipping(StrEnum):
    FIXED = "fixed"
    ADAPTIVE = "adaptive"


class DifferentialPrivacy(BaseModel):
    """`privacy.differential_privacy` of an SLA (see the module's contract)."""

    model_config = ConfigDict(extra="forbid")

    mode: PrivacyMode = Field(description="server or client side clipping with central noise, or local noise")
    clipping: Clipping = Field(default=Clipping.FIXED, description="fixed, or adaptive (server and client modes)")
    noise_multiplier: float = Field(gt=0, le=1_000, description="noise standard deviation per unit of clipping norm")
    clipping_norm: float = Field(gt=0, description="L2 norm an update is clipped to (adaptive: the initial one)")
    delta: float = Field(default=1e-5, gt=0, lt=1, description="the delta at which epsilon is reported")
    target_clipped_quantile: float = Field(default=0.5, ge=0, le=1, description="adaptive: share of updates to clip")
    clip_norm_lr: float = Field(default=0.2, gt=0, description="adaptive: learning rate of the clipping norm")
    clipped_count_stddev: float | None = Field(
        default=None,
        gt=0,
        description="adaptive: noise on the count of clipped updates; default: the larger of learners/20 and "
        "noise_multiplier (the updates then get 1.15 times the noise)",
    )

    @model_validator(mode="after")
    def _local_clips_fixed(self) -> "DifferentialPrivacy":
        if self.mode is PrivacyMode.LOCAL and self.clipping is Clipping.ADAPTIVE:
            raise ValueError("mode 'local' clips at a fixed norm (Flower's LocalDpMod): remove clipping 'adaptive'")
        return self

    def count_stddev(self, learners: int) -> float:
        """Adaptive clipping's noise on the clipped count. Flower's default, learners/20 (Andrew et al.,
        for cohorts of hundreds), must exceed noise_multiplier/2, which a few learners never reach."""
        if self.clipped_count_stddev is not None:
            return self.clipped_count_stddev
        return max(learners / 20, self.noise_multiplier)

    @property
    def central(self) -> bool:
        """Whether the aggregator adds the noise (server and client modes)."""
        return self.mode is not PrivacyMode.LOCAL


class PrivacySpent(BaseModel):
    """The privacy a training spent after `rounds` rounds: (epsilon, delta)-DP per learner."""

    epsilon: float
    delta: float
    rounds: int
    noise_multiplier: float
    mode: PrivacyMode
    accountant: str = "rdp (dp-accounting)"


class RoundPrivacy(BaseModel):
    """One round under differential privacy: what it clipped to, the largest update it averaged, and
    the epsilon spent so far (this round included)."""

    epsilon: float
    delta: float
    clipping_norm: float = Field(description="the norm this round's updates were clipped to")
    max_update_norm: float | None = Field(
        default=None, description="the largest L2 norm of the updates averaged (central modes: at most clipping_norm)"
    )


def combination_error(privacy: DifferentialPrivacy, strategy: str, hierarchical: bool) -> str | None:
    """Why `privacy` cannot go with this strategy or mode, or None when it can."""
    if hierarchical:
        return "differential privacy is not available in hierarchical mode yet: train classic, or remove it"
    if strategy not in DP_STRATEGIES:
        return (
            f"strategy {strategy} cannot combine with differential privacy: its aggregate is not a mean, so the "
            f"noise would not cover one learner's influence; use one of {', '.join(DP_STRATEGIES)}"
        )
    return None


def privacy_spent(privacy: DifferentialPrivacy, rounds: int) -> PrivacySpent:
    """Epsilon at `privacy.delta` after `rounds` Gaussian releases of `privacy.noise_multiplier`."""
    from flwr.supercore.privacy_accounting import (
        GaussianPrivacyEvent,
        NeighboringRelation,
        PrivacyConfig,
        SamplingMethod,
    )
    from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant

    accountant = RdpAccountant(
        PrivacyConfig(
            target_delta=privacy.delta,
            population_size=1,
            neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
            sampling_method=SamplingMethod.NO_AMPLIFICATION,
        )
    )
    if rounds > 0:
        event = GaussianPrivacyEvent(noise_multiplier=privacy.noise_multiplier, sample_size=1, population_size=1)
        accountant.compose(event, count=rounds)
    epsilon = accountant.get_privacy_spent().epsilon if rounds > 0 else 0.0
    return PrivacySpent(
        epsilon=epsilon,
        delta=privacy.delta,
        rounds=rounds,
        noise_multiplier=privacy.noise_multiplier,
        mode=privacy.mode,
    )
