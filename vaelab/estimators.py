"""Importance weights: the one place where particles z_k ~ q(z|x) are drawn and scored.

Every bound in ``objectives`` and the evaluator's log-likelihood estimate are reductions of the
log-weights log w_k = log p(x, z_k) - log q(z_k | x) computed here (DESIGN.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from torch import Tensor
from torch.distributions import Distribution


@dataclass
class Particles:
    """k reparameterized samples per example and the densities the bounds need.

    The log-densities are computed on first use only: the analytic-KL ELBO needs log p(x|z)
    alone, so the training hot path never pays for log q(z|x) or log p(z).
    """

    model: object
    x: Tensor  # (B, *event)
    q: Distribution  # q(z|x), batch (B,)
    z: Tensor  # (k, B, D)

    @cached_property
    def likelihood(self) -> Distribution:
        """p(x|z_k), batch shape (k, B)."""
        return self.model.decode(self.z)

    @cached_property
    def log_px_z(self) -> Tensor:  # (k, B)
        return self.likelihood.log_prob(self.x)

    @cached_property
    def log_pz(self) -> Tensor:  # (k, B)
        return self.model.prior().log_prob(self.z)

    @cached_property
    def log_qz(self) -> Tensor:  # (k, B)
        return self.q.log_prob(self.z)

    @property
    def log_weights(self) -> Tensor:  # (k, B)
        return self.log_px_z + self.log_pz - self.log_qz


def sample_particles(model, x: Tensor, k: int = 1, q: Distribution | None = None) -> Particles:
    """Draws k reparameterized particles z ~ q(z|x) per example of x.

    Args:
        model: exposes ``prior()``, ``encode(x)`` and ``decode(z)``.
        x: a batch (B, *event_shape).
        k: particles per example.
        q: a proposal to use instead of ``model.encode(x)`` (batch shape (B,)).
    Returns:
        ``Particles`` with z of shape (k, B, latent_dim).
    """
    if q is None:
        q = model.encode(x)
    return Particles(model=model, x=x, q=q, z=q.rsample((k,)))


def log_weights(model, x: Tensor, k: int) -> Tensor:
    """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), reparameterized; shape (k, B)."""
    return sample_particles(model, x, k).log_weights
