"""Differential privacy on the learner: the Flower mod the run's spec asks for, around training.

`differential_privacy_mod` is a Flower mod on the train handler. Per run (the spec travels in the
run config) it is: nothing without differential privacy or in `server` mode (the aggregator
clips); `fixedclipping_mod` or `adaptiveclipping_mod` in `client` mode (the update leaves the
learner clipped to the norm the aggregator's wrapper sends); `LocalDpMod` in `local` mode, which
clips to `clipping_norm` and adds Gaussian noise of standard deviation `noise_multiplier *
clipping_norm` (`flops.differential_privacy`).
"""

import functools
import math

from flwr.app import Context, Message
from flwr.clientapp.mod import LocalDpMod, adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable, Mod

from flops.differential_privacy import Clipping, DifferentialPrivacy, PrivacyMode
from flops.training import SPEC_RUN_CONFIG_KEY, TrainingSpec


def local_dp_mod(privacy: DifferentialPrivacy) -> LocalDpMod:
    """Flower's LocalDpMod adding noise of std `noise_multiplier * clipping_norm` to the clipped update.

    LocalDpMod's std is `sensitivity * sqrt(2 ln(1.25 / delta)) / epsilon` (the classic Gaussian
    mechanism); with the sensitivity at the clipping norm, this epsilon gives that std.
    """
    epsilon = math.sqrt(2 * math.log(1.25 / privacy.delta)) / privacy.noise_multiplier
    return LocalDpMod(privacy.clipping_norm, privacy.clipping_norm, epsilon, privacy.delta)


def mod_for(privacy: DifferentialPrivacy | None) -> Mod | None:
    """The Flower mod that does the learner's part of `privacy`, or None when it has none."""
    if privacy is None or privacy.mode is PrivacyMode.SERVER:
        return None
    if privacy.mode is PrivacyMode.LOCAL:
        return local_dp_mod(privacy)
    return adaptiveclipping_mod if privacy.clipping is Clipping.ADAPTIVE else fixedclipping_mod


@functools.lru_cache(maxsize=1)
def run_mod(raw_spec: str) -> Mod | None:
    """The mod of one run's spec (the run config's JSON), made once per run, not per message."""
    return mod_for(TrainingSpec.model_validate_json(raw_spec).differential_privacy)


def differential_privacy_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Runs the train handler inside the mod of the run's differential privacy (if any)."""
    mod = run_mod(str(context.run_config[SPEC_RUN_CONFIG_KEY]))
    return call_next(msg, context) if mod is None else mod(msg, context, call_next)
