"""Bounds and losses as pure functions of (model, x): each returns per-example tensors [B].

Reduction to a scalar happens in one place, the trainer (DESIGN.md). Every result carries
``objective`` (what training maximizes) and ``bound`` (the true lower bound on log p(x) that is
logged and used for model selection); they differ, e.g., for beta != 1.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable, NamedTuple

from torch import Tensor
from torch.distributions import Distribution, kl_divergence

from .errors import ConfigError
from .estimators import Particles, sample_particles
from .registry import Registry

OBJECTIVES: Registry[Callable[..., "ELBO"]] = Registry("objective")
KL_MODES = ("analytic", "mc")


class ELBO(NamedTuple):
    """Per-example evidence lower bound and its parts, each of shape [B]."""

    objective: Tensor  # reconstruction - beta * kl: what the trainer maximizes
    bound: Tensor  # reconstruction - kl: the ELBO itself, a lower bound on log p(x)
    reconstruction: Tensor  # E_q[log p(x|z)]
    kl: Tensor  # KL(q(z|x) || p(z))


def kl_to_prior(q: Distribution, prior: Distribution, particles: Particles | None = None) -> Tensor:
    """KL(q || p) in closed form through the ``kl_divergence`` registry, or, where no closed form
    is registered, the Monte-Carlo estimate mean_k[log q(z_k) - log p(z_k)] over ``particles``."""
    try:
        return kl_divergence(q, prior)
    except NotImplementedError:
        if particles is None:
            raise
        return (particles.log_qz - particles.log_pz).mean(0)


@OBJECTIVES.register("elbo")
def elbo(model, x: Tensor, *, beta: float = 1.0, k: int = 1, kl: str = "analytic") -> ELBO:
    """The evidence lower bound E_q[log p(x|z)] - KL(q(z|x) || p(z)) (Kingma & Welling 2014),
    with the KL weighted by ``beta`` in the objective (beta-VAE, Higgins et al. 2017).

    Args:
        model: exposes ``prior()``, ``encode(x)``, ``decode(z)``.
        x: a batch (B, *event_shape).
        beta: weight of the KL term in ``objective``.
        k: reparameterized samples averaged in the Monte-Carlo terms.
        kl: "analytic" (closed form, falling back to Monte Carlo where none is registered) or "mc".
    Returns:
        ``ELBO`` of per-example tensors [B].
    """
    if kl not in KL_MODES:
        raise ConfigError(f"unknown kl mode {kl!r}; choose one of: {', '.join(KL_MODES)}")
    p = sample_particles(model, x, k)
    reconstruction = p.log_px_z.mean(0)
    if kl == "analytic":
        kl_term = kl_to_prior(p.q, model.prior(), p)
    else:
        kl_term = (p.log_qz - p.log_pz).mean(0)
    return ELBO(
        objective=reconstruction - beta * kl_term,
        bound=reconstruction - kl_term,
        reconstruction=reconstruction,
        kl=kl_term,
    )


def get_objective(name: str, **options: object) -> Callable[..., NamedTuple]:
    """The objective registered as ``name`` bound to the options it accepts, as ``f(model, x)``.

    Options an objective does not take (``k`` for a single-sample objective, say) are dropped, so
    one configuration can serve every objective.
    """
    fn = OBJECTIVES[name]
    accepted = inspect.signature(fn).parameters
    bound = {k: v for k, v in options.items() if k in accepted}
    return functools.partial(fn, **bound)
