"""Observation models, priors and posteriors, all as ``torch.distributions`` objects.

Every distribution here is built with ``validate_args=False``: argument validation costs about
0.5 ms per forward pass on our CPUs, and the networks that produce the parameters already
guarantee their ranges (logits are unconstrained, scales come from ``exp`` or ``softplus``).
"""

from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Distribution,
    Independent,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from ..core import sharding
from ..core.errors import ConfigError
from ..core.registry import Registry, keywords

OBSERVATIONS: Registry[type["Observation"]] = Registry("likelihood")


def full_precision(t: Tensor) -> Tensor:
    """``t`` in fp32 when a network computed it in half precision (under mixed-precision
    autocast), else unchanged: densities, KL terms and log-sum-exp are computed from it in fp32."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def fp32_inputs(module: nn.Module, args: tuple) -> tuple:
    # a forward pre-hook of the distribution heads: the networks' outputs enter them in fp32
    return tuple(full_precision(a) if isinstance(a, Tensor) else a for a in args)


def diagonal_gaussian(mean: Tensor, scale: Tensor, event_dims: int = 1) -> Independent:
    """A Gaussian with diagonal covariance whose last ``event_dims`` dimensions form one event."""
    return Independent(Normal(mean, scale, validate_args=False), event_dims, validate_args=False)


class PosteriorNormal(Normal):
    """``Normal`` whose batch dimension indexes the examples of a data batch (q(z|x)): its
    noise comes from ``sharding.standard_normal``, so a batch split over processes draws what
    one process would. Unsplit, ``rsample`` draws exactly as ``Normal``'s; ``sample`` is
    ``rsample`` without the gradient path (the same draws either way)."""

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        shape = self._extended_shape(sample_shape)  # (*S, B, D): the batch after the sample dims
        eps = sharding.standard_normal(shape, len(sample_shape), self.loc)
        return self.loc + eps * self.scale

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


class PosteriorMultivariateNormal(MultivariateNormal):
    """``MultivariateNormal`` over a batch of examples, with ``PosteriorNormal``'s noise."""

    def rsample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        shape = self._extended_shape(sample_shape)  # (*S, B, D)
        eps = sharding.standard_normal(shape, len(sample_shape), self.loc)
        return self.loc + torch.matmul(self._unbroadcasted_scale_tril, eps.unsqueeze(-1)).squeeze(-1)

    def sample(self, sample_shape: Sequence[int] = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)


def posterior_gaussian(mean: Tensor, scale: Tensor) -> Independent:
    """q(z|x) = N(mean, diag(scale^2)) for a batch of examples (B, D): a diagonal Gaussian whose
    draws stay the same when the batch is split over processes."""
    return Independent(PosteriorNormal(mean, scale, validate_args=False), 1, validate_args=False)


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
        self.register_forward_pre_hook(fp32_inputs)

    def forward(self, out: Tensor) -> Distribution:  # pragma: no cover - abstract
        raise NotImplementedError


@OBSERVATIONS.register("bernoulli")
class BernoulliObservation(Observation):
    """Independent Bernoulli pixels with logits from the decoder; for binary data."""

    params_per_dim = 1

    def __init__(self, event_ndim: int) -> None:
        super().__init__(event_ndim)

    def forward(self, out: Tensor) -> Distribution:
        logits = out.squeeze(-self.event_ndim - 1)
        return IndependentBernoulli(logits, self.event_ndim)


class IndependentBernoulli(Independent):
    """``Independent(Bernoulli(logits), event_ndim)`` whose ``log_prob`` is one fused expression,
    ``bernoulli_log_prob``, instead of the elementwise binary cross-entropy and a sum."""

    def __init__(self, logits: Tensor, event_ndim: int) -> None:
        super().__init__(Bernoulli(logits=logits, validate_args=False), event_ndim, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return bernoulli_log_prob(self.base_dist.logits, value, self.reinterpreted_batch_ndims)


def bernoulli_log_prob(logits: Tensor, x: Tensor, event_ndim: int) -> Tensor:
    """sum over the last ``event_ndim`` dimensions of log Bernoulli(x; sigmoid(l)) = x l - softplus(l).

    The same value as the binary cross-entropy with logits (which computes (1 - x) l + softplus(-l)
    elementwise), for any x in [0, 1], in two passes over the logits instead of about five. When
    x is shared by many rows of logits (K >= 8 particles of an example: logits (*S, *x.shape)), the
    sum of x l is a matrix-vector product per example, which never forms the (*S, *x.shape) product.
    """
    lead = logits.dim() - x.dim()
    n = math.prod(logits.shape[:lead]) if lead > 0 else 1
    if n >= 8 and logits.shape[lead:] == x.shape and x.dim() > event_ndim:
        d = math.prod(x.shape[-event_ndim:]) if event_ndim else 1
        m = x.numel() // d
        rows = logits.reshape(n, m, d).transpose(0, 1)  # (m, n, d): the particles of each example
        xl = torch.bmm(rows, x.reshape(m, d, 1).to(logits.dtype)).reshape(m, n).T.reshape(logits.shape[: logits.dim() - event_ndim])
        return xl - _sum_last(F.softplus(logits), event_ndim)
    # one row of logits per x: the fused kernel of the binary cross-entropy (and its backward) wins
    return -_sum_last(F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype).expand_as(logits), reduction="none"), event_ndim)


def _sum_last(t: Tensor, n: int) -> Tensor:
    return t.sum(tuple(range(-n, 0))) if n else t


@OBSERVATIONS.register("gaussian")
class GaussianObservation(Observation):
    """Gaussian with the decoder's mean and a fixed precision ``beta`` (variance 1/beta).

    This is the observation model of seed 000: log p(x|z) = -beta/2 ||x - G(z)||^2
    + dim(x)/2 log beta - dim(x)/2 log(2 pi).
    """

    params_per_dim = 1

    def __init__(self, event_ndim: int, obs_precision: float = 100.0) -> None:
        super().__init__(event_ndim)
        if not (obs_precision > 0 and math.isfinite(obs_precision)):
            raise ConfigError(
                f"obs_precision= must be a positive number, got {obs_precision}"
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

    def __init__(self, event_ndim: int) -> None:
        super().__init__(event_ndim)

    def forward(self, out: Tensor) -> Distribution:
        axis = -self.event_ndim - 1
        mean, raw = out.unbind(axis)
        return diagonal_gaussian(mean, F.softplus(raw) + self.min_scale, self.event_ndim)


def build_observation(name: str, event_ndim: int, *, obs_precision: float = 100.0) -> Observation:
    """Builds the observation model registered as ``name`` for data with ``event_ndim`` dims;
    ``obs_precision`` goes to the model that has a fixed precision (``gaussian``)."""
    cls = OBSERVATIONS[name]
    options = {"obs_precision": obs_precision} if "obs_precision" in keywords(cls) else {}
    return cls(event_ndim, **options)


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
        f"detached; {type(q).__name__} has no stop_gradient rule (use grad_estimator= reparam)"
    )


@stop_gradient.register
def _(q: Independent) -> Distribution:
    return Independent(stop_gradient(q.base_dist), q.reinterpreted_batch_ndims, validate_args=False)


@stop_gradient.register
def _(q: Normal) -> Distribution:
    return type(q)(q.loc.detach(), q.scale.detach(), validate_args=False)


@stop_gradient.register
def _(q: MultivariateNormal) -> Distribution:
    return type(q)(q.loc.detach(), scale_tril=q.scale_tril.detach(), validate_args=False)


def is_diagonal_gaussian(q: Distribution) -> bool:
    """Whether q is a Gaussian with diagonal covariance over a latent vector (``diagonal_gaussian``)."""
    return isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1


_DEVICES_WITHOUT_FLOAT64 = frozenset({"mps"})


def diagonal_gaussian_log_prob_matrix(
    z: Tensor, loc: Tensor, scale: Tensor, *, float64: bool | None = None
) -> Tensor:
    """log N(z_i; mu_k, diag(s_k^2)) for every z_i (..., D) and every (mu_k, s_k) (K, D): shape (..., K).

    The square is expanded, sum_d (z_d - mu_kd)^2 p_kd = z^2 . p_k - 2 z . (mu_k p_k) + mu_k^2 . p_k
    with p_k = 1/s_k^2, so the whole matrix is one matrix product over 2D features plus a
    per-component constant: O((N + K) D) memory instead of the (N, K, D) tensor of differences
    that broadcasting ``Normal.log_prob`` builds, and a fraction of its time.

    The expansion cancels: near a component its terms are of size sum_d (z_d^2 + mu_d^2) / s_d^2
    while their sum is of size D, so float32 arithmetic loses about 6e-8 of the terms' size, which
    grows to whole nats once posteriors sharpen (with 50 latents and 500 components: 0.002 nats
    at scale 0.1, 0.3 at 0.01, 2.5 at 0.003). The product is
    therefore formed in float64 (absolute error about 1e-16 of the terms' size, negligible unless
    |mu| / s approaches 1e6) and only the result is rounded to the inputs' dtype: in float32 the
    entries agree with a float64 evaluation to float32 rounding. float64 also keeps the product
    away from reduced-precision matrix units (TF32, autocast), which would make the cancellation
    worse; autocast leaves float64 operands alone.

    Args:
        z: points, shape (..., D).
        loc: component means, shape (K, D).
        scale: component standard deviations, shape (K, D), positive.
        float64: True: the float64 product above; False: the differences (z_i - mu_k) / s_k in
            chunks of components, in at least float32: as accurate as broadcasting
            ``Normal.log_prob`` without needing float64, but several times slower (far more on
            large batches); None (default): float64 except on devices without it (Apple MPS).

    Returns:
        Log-densities of shape (..., K), in the promoted dtype of the inputs, on their device.
    """
    dtype = torch.promote_types(torch.promote_types(z.dtype, loc.dtype), scale.dtype)
    if float64 is None:
        float64 = z.device.type not in _DEVICES_WITHOUT_FLOAT64
    dim = loc.shape[-1]
    if not float64:
        return _log_prob_matrix_by_differences(z, loc, scale).to(dtype)
    z, loc, scale = z.double(), loc.double(), scale.double()
    prec = scale.pow(-2)  # (K, D)
    loc_prec = loc * prec
    const = -0.5 * (loc_prec * loc).sum(-1) - scale.log().sum(-1) - 0.5 * dim * math.log(2 * math.pi)  # (K,)
    features = torch.cat([z.square(), z], -1).reshape(-1, 2 * dim)  # (N, 2D)
    weights = torch.cat([-0.5 * prec, loc_prec], -1)  # (K, 2D)
    out = torch.addmm(const, features, weights.T)  # (N, K)
    return out.view(*z.shape[:-1], loc.shape[0]).to(dtype)


def _log_prob_matrix_by_differences(z: Tensor, loc: Tensor, scale: Tensor, budget: int = 1 << 22) -> Tensor:
    """``diagonal_gaussian_log_prob_matrix`` from standardized differences, at most ``budget``
    elements of the (..., K, D) tensor at a time; computed in float32 or wider."""
    work = torch.promote_types(torch.promote_types(z.dtype, loc.dtype), scale.dtype)
    work = torch.promote_types(work, torch.float32)
    z, loc, scale = z.to(work), loc.to(work), scale.to(work)
    inv_scale = scale.reciprocal()  # (K, D)
    const = scale.log().sum(-1) + 0.5 * loc.shape[-1] * math.log(2 * math.pi)  # (K,)
    chunk = max(1, budget // max(1, z[..., :1].numel() * loc.shape[-1]))
    z = z.unsqueeze(-2)  # (..., 1, D)
    parts = [
        -0.5 * ((z - m) * r).square().sum(-1) - c  # (..., chunk)
        for m, r, c in zip(loc.split(chunk), inv_scale.split(chunk), const.split(chunk))
    ]
    return torch.cat(parts, -1)


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
