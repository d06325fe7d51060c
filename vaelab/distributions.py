"""Observation models, priors and posteriors, all as ``torch.distributions`` objects.

Every distribution here is built with ``validate_args=False``: argument validation costs about
0.5 ms per forward pass (PERFORMANCE.md), and the networks that produce the parameters already
guarantee their ranges (logits are unconstrained, scales come from ``exp`` or ``softplus``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from .errors import ConfigError
from .registry import Registry

OBSERVATIONS: Registry[type["Observation"]] = Registry("likelihood")


def diagonal_gaussian(mean: Tensor, scale: Tensor, event_dims: int = 1) -> Independent:
    """A Gaussian with diagonal covariance whose last ``event_dims`` dimensions form one event."""
    return Independent(Normal(mean, scale, validate_args=False), event_dims, validate_args=False)


def standard_normal(loc: Tensor, scale: Tensor) -> Independent:
    """N(0, I) over a latent vector, from buffers ``loc`` (zeros) and ``scale`` (ones) of shape (D,)."""
    return diagonal_gaussian(loc, scale, 1)


class Observation(nn.Module):
    """Turns decoder outputs into p(x | z).

    The decoder produces ``params_per_dim`` numbers per data dimension, laid out as
    ``(*batch, params_per_dim, *event_shape)``; ``forward`` returns a distribution whose batch
    shape is ``batch`` and whose event shape is the data shape.
    """

    params_per_dim: int = 1

    def __init__(self, event_ndim: int) -> None:
        super().__init__()
        self.event_ndim = event_ndim

    def forward(self, out: Tensor) -> Distribution:  # pragma: no cover - abstract
        raise NotImplementedError


@OBSERVATIONS.register("bernoulli")
class BernoulliObservation(Observation):
    """Independent Bernoulli pixels with logits from the decoder; for binary data."""

    params_per_dim = 1

    def __init__(self, event_ndim: int, **unused: float) -> None:
        super().__init__(event_ndim)

    def forward(self, out: Tensor) -> Distribution:
        logits = out.squeeze(-self.event_ndim - 1)
        return Independent(
            Bernoulli(logits=logits, validate_args=False), self.event_ndim, validate_args=False
        )


@OBSERVATIONS.register("gaussian")
class GaussianObservation(Observation):
    """Gaussian with the decoder's mean and a fixed precision ``beta`` (variance 1/beta).

    This is the observation model of seed 000: log p(x|z) = -beta/2 ||x - G(z)||^2
    + dim(x)/2 log beta - dim(x)/2 log(2 pi).
    """

    params_per_dim = 1

    def __init__(self, event_ndim: int, obs_precision: float = 100.0, **unused: float) -> None:
        super().__init__(event_ndim)
        if not (obs_precision > 0 and math.isfinite(obs_precision)):
            raise ConfigError(
                f"--obs-precision must be a positive number, got {obs_precision}"
            )
        self.register_buffer("scale", torch.tensor(obs_precision**-0.5), persistent=False)

    def forward(self, out: Tensor) -> Distribution:
        mean = out.squeeze(-self.event_ndim - 1)
        return diagonal_gaussian(mean, self.scale.expand_as(mean), self.event_ndim)


@OBSERVATIONS.register("gaussian-learned")
class LearnedGaussianObservation(Observation):
    """Gaussian whose mean and per-dimension standard deviation both come from the decoder.

    The scale is ``softplus(raw) + min_scale``; the floor keeps the density finite on pixels that
    are constant in the training data (it is below the width of one grey level, 1/256).
    """

    params_per_dim = 2
    min_scale = 1e-3

    def __init__(self, event_ndim: int, **unused: float) -> None:
        super().__init__(event_ndim)

    def forward(self, out: Tensor) -> Distribution:
        axis = -self.event_ndim - 1
        mean, raw = out.unbind(axis)
        return diagonal_gaussian(mean, F.softplus(raw) + self.min_scale, self.event_ndim)


def build_observation(name: str, event_ndim: int, **options: float) -> Observation:
    """Builds the observation model registered as ``name`` for data with ``event_ndim`` dims."""
    return OBSERVATIONS[name](event_ndim, **options)
