"""Observation models, priors and posteriors, all as ``torch.distributions`` objects.

Every distribution here is built with ``validate_args=False``: argument validation costs about
0.5 ms per forward pass (PERFORMANCE.md), and the networks that produce the parameters already
guarantee their ranges (logits are unconstrained, scales come from ``exp`` or ``softplus``).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, MultivariateNormal, Normal, kl_divergence

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


# -- posteriors with their parameters cut from the graph -------------------------------------


@functools.singledispatch
def stop_gradient(q: Distribution) -> Distribution:
    """The same distribution with its parameters detached from the autograd graph.

    ``stop_gradient(q).log_prob(z)`` has the value of ``q.log_prob(z)`` but passes gradient only
    through ``z``: the path derivative used by the STL and DReG estimators (Roeder et al. 2017;
    Tucker et al. 2018). A new posterior family registers its own rule with
    ``@stop_gradient.register``.
    """
    raise ConfigError(
        f"the stl/dreg/score gradient estimators need a posterior whose parameters can be "
        f"detached; {type(q).__name__} has no stop_gradient rule (use --grad-estimator reparam)"
    )


@stop_gradient.register
def _(q: Independent) -> Distribution:
    return Independent(stop_gradient(q.base_dist), q.reinterpreted_batch_ndims, validate_args=False)


@stop_gradient.register
def _(q: Normal) -> Distribution:
    return Normal(q.loc.detach(), q.scale.detach(), validate_args=False)


@stop_gradient.register
def _(q: MultivariateNormal) -> Distribution:
    return MultivariateNormal(q.loc.detach(), scale_tril=q.scale_tril.detach(), validate_args=False)


def is_diagonal_gaussian(q: Distribution) -> bool:
    """Whether q is a Gaussian with diagonal covariance over a latent vector (``diagonal_gaussian``)."""
    return isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1


def diagonal_gaussian_log_prob_matrix(z: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """log N(z_i; mu_k, diag(s_k^2)) for every z_i (N, D) and every (mu_k, s_k) (K, D): shape (N, K).

    The square expanded into two matrix products, -1/2 [z^2 . p_k - 2 z . (mu_k p_k) + mu_k^2 . p_k]
    - sum log s_k - D/2 log 2 pi with p_k = 1/s_k^2: O((N + K) D) memory instead of the (N, K, D)
    tensor of differences that broadcasting ``log_prob`` builds. Computed in the inputs' dtype.
    """
    prec = scale.pow(-2)  # (K, D)
    const = (loc.square() * prec).sum(-1) + 2 * scale.log().sum(-1) + loc.shape[-1] * math.log(2 * math.pi)
    return -0.5 * (z.square() @ prec.T - 2 * z @ (loc * prec).T + const)


def kl_per_dimension(q: Distribution, prior: Distribution) -> Tensor:
    """KL(q(z_d|x) || p(z_d)) for each latent dimension d, shape (B, D).

    Defined when both are products over dimensions (``Independent`` of a one-dimensional family
    with a registered closed form), as for the diagonal Gaussian posterior and N(0, I) prior;
    the per-dimension KLs then sum to the total KL. Free bits and the KL-per-dimension
    diagnostic need it.
    """
    if not (isinstance(q, Independent) and isinstance(prior, Independent)):
        raise ConfigError(
            f"KL per latent dimension needs a factorized posterior and prior, got "
            f"{type(q).__name__} and {type(prior).__name__}"
        )
    try:
        return kl_divergence(q.base_dist, prior.base_dist)
    except NotImplementedError:
        raise ConfigError(
            f"no closed-form KL between {type(q.base_dist).__name__} and "
            f"{type(prior.base_dist).__name__} per dimension"
        ) from None
