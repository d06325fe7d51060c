"""Schedules for the KL weight: one mechanism for every objective and model.

A schedule maps training time t, in epochs (fractional: t = 2.5 is the middle of epoch 3), to
the factor ``kl_scale`` in [0, 1] that objectives put on the KL part of their bound (see
``objectives``). The trainer asks for the options at every optimizer step and passes them to the
objective; it knows nothing about what they mean, and because a schedule is a pure function of
t, a resumed run sees exactly the weights an uninterrupted one would.
"""

from __future__ import annotations

import math
from typing import Callable

from ..core.errors import ConfigError
from ..core.registry import Registry

Schedule = Callable[[float], float]
SCHEDULES: Registry[Callable[..., Schedule]] = Registry("kl schedule")


@SCHEDULES.register("constant")
def constant(**unused: float) -> Schedule:
    """kl_scale = 1 throughout."""
    return lambda t: 1.0


@SCHEDULES.register("warmup")
def warmup(*, epochs: float, **unused: float) -> Schedule:
    """Linear KL warm-up from 0 to 1 over the first ``epochs`` epochs, then 1 (Bowman et al. 2016;
    Sønderby et al. 2016): kl_scale(t) = min(1, t / epochs)."""
    if not epochs > 0:
        raise ConfigError(f"kl_warmup= must be a positive number of epochs, got {epochs}")
    return lambda t: min(1.0, max(0.0, t) / epochs)


@SCHEDULES.register("cyclical")
def cyclical(*, cycles: int, total: float, ratio: float = 0.5, **unused: float) -> Schedule:
    """Cyclical annealing (Fu et al. 2019): training time is cut into ``cycles`` equal periods;
    within each, kl_scale rises linearly from 0 to 1 over the first ``ratio`` of the period and
    stays at 1 for the rest: kl_scale(t) = min(1, tau / ratio), tau = (t mod P) / P, P = total / cycles.
    """
    if cycles < 1:
        raise ConfigError(f"kl_cycles= must be a positive number of cycles, got {cycles}")
    if not 0 < ratio <= 1:
        raise ConfigError(f"the rising part of a cycle must be in (0, 1], got {ratio}")
    period = total / cycles

    def scale(t: float) -> float:
        tau = math.fmod(max(0.0, t), period) / period
        return min(1.0, tau / ratio)

    return scale


def kl_schedule(*, warmup: float = 0, cycles: int = 0, epochs: float = 1) -> Schedule:
    """The schedule a run's configuration asks for: ``kl_warmup= N`` or ``kl_cycles= C`` over
    ``epochs`` epochs, or the constant 1."""
    if warmup and cycles:
        raise ConfigError("kl_warmup= and kl_cycles= are two different schedules; choose one")
    if warmup:
        return SCHEDULES["warmup"](epochs=warmup)
    if cycles:
        return SCHEDULES["cyclical"](cycles=cycles, total=epochs)
    return SCHEDULES["constant"]()
