"""Priors p(z) for the VAE (``--prior``).

- ``standard``: N(0, I), fixed (the default).
- ``mog:K``: a learned mixture of K diagonal Gaussians (weights, means and scales trained with
  the model).
- ``vamp:K``: the VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z | u_k), the
  encoder's own posterior at K learned pseudo-inputs u_k.

A prior is a module called with the model (the VampPrior needs its encoder) and returns a
``torch.distributions`` object with batch shape () and event shape (latent_dim,). Mixtures have no
closed-form KL to the posterior: the objectives fall back to the Monte-Carlo KL from the same
particles (``objectives.kl_to_prior``), and nothing else changes.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, MixtureSameFamily

from ..core.errors import ConfigError
from ..core.registry import Registry, keywords
from .observation import (
    diagonal_gaussian_log_prob_matrix,
    is_diagonal_gaussian,
    standard_normal,
)
from .posteriors import parse_spec

PRIORS: Registry[Callable[..., "Prior"]] = Registry("prior")


class DiagonalGaussianMixture(Distribution):
    """sum_k pi_k N(mu_k, diag(s_k^2)) over vectors, with ``log_prob`` as one float64 matrix
    product (``distributions.diagonal_gaussian_log_prob_matrix``).

    Equivalent to ``MixtureSameFamily(Categorical, Independent(Normal))``, whose ``log_prob``
    builds a (..., K, D) tensor of differences; the VampPrior's training step (K=500) ran 2.3-3.3x
    faster with this one (``benchmarks/bench_vamp.py``).
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, logits: Tensor, loc: Tensor, scale: Tensor) -> None:
        super().__init__(torch.Size(), loc.shape[-1:], validate_args=False)
        self.logits, self.loc, self.scale = logits, loc, scale

    @property
    def weights(self) -> Tensor:
        return self.logits.softmax(-1)

    @property
    def mean(self) -> Tensor:
        return self.weights @ self.loc

    def log_prob(self, value: Tensor) -> Tensor:
        components = diagonal_gaussian_log_prob_matrix(value, self.loc, self.scale)  # (..., K)
        return torch.logsumexp(components + self.logits.log_softmax(-1), dim=-1)

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape)
            index = torch.multinomial(self.weights, max(1, shape.numel()), replacement=True).view(shape)
            return self.loc[index] + self.scale[index] * torch.randn(*shape, self.loc.shape[-1], dtype=self.loc.dtype, device=self.loc.device)

    def expand(self, batch_shape, _instance=None):  # for the prior proposal of the evaluator
        return Expanded(self, torch.Size(batch_shape))


class Expanded(Distribution):
    """A batch of copies of a batch-less distribution (``Distribution.expand`` for our mixture)."""

    arg_constraints: dict = {}

    def __init__(self, base: Distribution, batch_shape: torch.Size) -> None:
        super().__init__(batch_shape, base.event_shape, validate_args=False)
        self.base = base

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        return self.base.sample(torch.Size(sample_shape) + self.batch_shape)

    rsample = sample  # no gradient path: the evaluator's prior proposal needs none

    def log_prob(self, value: Tensor) -> Tensor:
        return self.base.log_prob(value)

    @property
    def mean(self) -> Tensor:
        return self.base.mean.expand(*self.batch_shape, *self.event_shape)


class Prior(nn.Module):
    """p(z); ``forward(model)`` returns the distribution."""

    def through_encoder(self, model: Any) -> Distribution | None:
        """p(z) with the prior's own parameters detached, so that its gradient reaches only the
        model's encoder, for a prior the encoder builds (the VampPrior); None for a prior that
        does not depend on the encoder. PIWAE needs it to give that dependence the encoder's
        weights."""
        return None


def check_prior(spec: str) -> tuple[str, int | None]:
    """Validates a ``--prior`` value; returns (name, components or None)."""
    name, k = parse_spec(spec, "prior")
    PRIORS[name]  # raises ConfigError listing the priors
    if name == "standard" and k is not None:
        raise ConfigError("prior= standard takes no ':K' (mixtures do: mog:K, vamp:K)")
    if name != "standard" and k is None:
        raise ConfigError(f"prior= {name} needs a number of components, e.g. {name}:10")
    return name, k


def build_prior(spec: str, latent_dim: int, event_shape: tuple[int, ...]) -> Prior:
    """The prior named by ``spec`` ("standard", "mog:K", "vamp:K")."""
    name, k = check_prior(spec)
    if k is None:
        return PRIORS[name](latent_dim)
    cls = PRIORS[name]
    # only a prior made of data-shaped parameters (the VampPrior's pseudo-inputs) takes the shape
    return cls(latent_dim, k, **({"event_shape": tuple(event_shape)} if "event_shape" in keywords(cls) else {}))


@PRIORS.register("standard")
class StandardNormalPrior(Prior):
    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        # buffers, not parameters: fixed, but they follow the model's device and dtype
        self.register_buffer("loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(latent_dim), persistent=False)

    def forward(self, model: Any = None) -> Distribution:
        return standard_normal(self.loc, self.scale)


@PRIORS.register("mog")
class MixturePrior(Prior):
    """sum_k pi_k N(mu_k, diag(s_k^2)) with learned logits, means and log-scales. The means start
    at N(0, I) draws and the scales at 1, so the initial prior is close to N(0, 2 I)."""

    def __init__(self, latent_dim: int, components: int) -> None:
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(components))
        self.means = nn.Parameter(torch.randn(components, latent_dim))
        self.log_scales = nn.Parameter(torch.zeros(components, latent_dim))

    def forward(self, model: Any = None) -> Distribution:
        return DiagonalGaussianMixture(self.logits, self.means, self.log_scales.exp())


@PRIORS.register("vamp")
class VampPrior(Prior):
    """(1/K) sum_k q(z | u_k) with K learned pseudo-inputs u_k of the data's shape.

    The pseudo-inputs start at 0.5 plus N(0, 0.01^2) noise (mid-grey images for data in [0, 1])
    and are trained as free parameters with the rest of the model; their encoder posteriors are
    recomputed on every call, so the prior follows the encoder as it trains.
    """

    def __init__(self, latent_dim: int, components: int, *, event_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.pseudo_inputs = nn.Parameter(0.5 + 0.01 * torch.randn(components, *event_shape))

    def forward(self, model: Any) -> Distribution:
        return self._mixture(model, self.pseudo_inputs)

    def through_encoder(self, model: Any) -> Distribution:
        return self._mixture(model, self.pseudo_inputs.detach())

    def _mixture(self, model: Any, pseudo_inputs: Tensor) -> Distribution:
        components = model.encode(pseudo_inputs)  # batch (K,)
        logits = pseudo_inputs.new_zeros(pseudo_inputs.shape[0])
        if is_diagonal_gaussian(components):
            return DiagonalGaussianMixture(logits, components.base_dist.loc, components.base_dist.scale)
        return MixtureSameFamily(Categorical(logits=logits, validate_args=False), components, validate_args=False)

