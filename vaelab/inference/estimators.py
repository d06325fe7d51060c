"""Importance weights and gradient estimators: the one place where particles z_k ~ q(z|x) are
drawn and scored.

Every bound in ``objectives`` and the evaluator's log-likelihood estimate are reductions of the
log-weights log w_k = log p(x, z_k) - log q(z_k | x) computed here .

Gradient estimators (``GRAD_ESTIMATORS``) differ only in how the encoder parameters phi receive
gradient; the decoder always gets the plain (reparameterized) gradient of the objective:

- ``reparam``: the total derivative of log w_k through z_k = g(eps, phi) and through q's density.
- ``stl``: "sticking the landing" (Roeder et al. 2017): log q is evaluated with phi detached, so
  phi gets gradient only along the path through z_k. The dropped score term has expectation zero
  for the ELBO, so there STL is unbiased; inside an importance-weighted bound (K > 1) each score
  is multiplied by a weight that depends on the particles, the term no longer averages to zero,
  and STL is biased (Tucker et al. 2018).
- ``dreg``: doubly reparameterized (Tucker et al. 2018): the path derivative with the importance
  weights w~_k replaced by w~_k^2 (``route_path_gradient``), unbiased for the IWAE encoder
  gradient and with a signal-to-noise ratio that does not vanish as K grows.
- ``score``: the score-function (REINFORCE) estimator (Williams 1992), which needs no
  reparameterization: z is drawn without a gradient path and phi learns from f(z) grad log q(z).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..core.errors import ConfigError
from ..distributions.observation import stop_gradient

GRAD_ESTIMATORS = ("reparam", "stl", "dreg", "score")


class cached_property:  # noqa: N801 - used as functools.cached_property is
    """``functools.cached_property`` without its lock: computed on first use, then kept in the
    instance's ``__dict__``. The lock (Python < 3.12) stops ``torch.compile`` from tracing through
    the training step's particles, splitting its graph in three."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn
        self.name = fn.__name__
        self.__doc__ = fn.__doc__

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        value = self.fn(obj)
        obj.__dict__[self.name] = value
        return value


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
    prior: Distribution | None = None  # p(z), when the caller already built it (else model.prior())

    @cached_property
    def likelihood(self) -> Distribution:
        """p(x|z_k), batch shape (k, B)."""
        return self.model.decode(self.z)

    @cached_property
    def log_px_z(self) -> Tensor:  # (k, B)
        return self.likelihood.log_prob(self.x)

    @cached_property
    def log_pz(self) -> Tensor:  # (k, B)
        prior = self.prior if self.prior is not None else self.model.prior()
        return prior.log_prob(self.z)

    @cached_property
    def log_qz(self) -> Tensor:  # (k, B)
        return self.q.log_prob(self.z)

    @cached_property
    def log_qz_path(self) -> Tensor:  # (k, B)
        """log q(z_k|x) with q's parameters detached: same value, gradient only through z_k."""
        return stop_gradient(self.q).log_prob(self.z)

    @property
    def log_weights(self) -> Tensor:  # (k, B)
        return self.log_px_z + self.log_pz - self.log_qz


def sample_particles(
    model,
    x: Tensor,
    k: int = 1,
    q: Distribution | None = None,
    *,
    reparameterized: bool = True,
    prior: Distribution | None = None,
) -> Particles:
    """Draws k particles z ~ q(z|x) per example of x.

    Args:
        model: exposes ``prior()``, ``encode(x)`` and ``decode(z)``.
        x: a batch (B, *event_shape).
        k: particles per example.
        q: a proposal to use instead of ``model.encode(x)`` (batch shape (B,)).
        reparameterized: draw z = g(eps, phi) with a gradient path to q's parameters (``rsample``);
            False draws z without one (``sample``), for the score-function estimator.
        prior: p(z) if already built (a VampPrior runs the encoder to build it), else
            ``model.prior()`` is called when log p(z) is first needed.
    Returns:
        ``Particles`` with z of shape (k, B, latent_dim).
    """
    if q is None:
        q = model.encode(x)
    z = q.rsample((k,)) if reparameterized else q.sample((k,))
    return Particles(model=model, x=x, q=q, z=z, prior=prior)


def log_weights(model: nn.Module, x: Tensor, k: int) -> Tensor:
    """log p(x, z_k) - log q(z_k|x) for z_k ~ q(z|x), reparameterized; shape (k, B)."""
    return sample_particles(model, x, k).log_weights


def check_estimator(name: str, objective: str, allowed: tuple[str, ...]) -> None:
    """Raises ConfigError unless ``name`` is a known estimator that ``objective`` supports."""
    if name not in GRAD_ESTIMATORS:
        raise ConfigError(f"unknown grad estimator {name!r}; choose one of: {', '.join(GRAD_ESTIMATORS)}")
    if name not in allowed:
        raise ConfigError(
            f"grad_estimator= {name} is not available for objective= {objective}; "
            f"choose one of: {', '.join(allowed)}"
        )


def route_path_gradient(p: Particles, weights: Tensor, encoder_weights: Tensor) -> None:
    """Makes the encoder see ``encoder_weights`` where the objective's gradient has ``weights``.

    The gradient of an objective sum_k a_k log w_k (a_k detached) reaches z_k as
    a_k d log w_k / d z_k; a hook on z rescales it to e_k d log w_k / d z_k, so phi, which sees
    log w_k only through z_k when log q is detached (``Particles.log_qz_path``), gets the path
    gradient sum_k e_k (d log w_k / d z_k)(d z_k / d phi), while the decoder keeps a_k. One
    forward and one backward pass; DReG uses e_k = w~_k^2 where a_k = w~_k.

    The rescaling is exact only where a_k carries the signal: a particle whose a_k is 0 (or
    underflows) passes no gradient to rescale, so callers must keep a_k > 0 wherever e_k matters
    (``objectives`` floors the pooled weights of PIWAE for this reason).

    Args:
        p: particles whose z carries the reparameterization path (no-op without one).
        weights: a_k, shape (k, B), the weights the objective's gradient gives log w_k.
        encoder_weights: e_k, shape (k, B), or (k, B, D) to weight each latent coordinate of
            the path separately (free bits leaves some coordinates without a score term).
    """
    if not p.z.requires_grad:
        return
    a, e = weights.detach(), encoder_weights.detach()
    if e.dim() == a.dim() + 1:
        a = a.unsqueeze(-1)
    # Where a_k is 0 the incoming gradient is 0 too; such particles carry no signal.
    ratio = torch.where(a > 0, e / a.clamp_min(torch.finfo(a.dtype).tiny), torch.zeros_like(e))
    if ratio.dim() == p.z.dim() - 1:
        ratio = ratio.unsqueeze(-1)
    p.z.register_hook(lambda grad: grad * ratio)


def score_function_surrogate(f: Tensor, log_q: Tensor) -> Tensor:
    """A per-example surrogate whose gradient w.r.t. q's parameters is the score-function estimate
    mean_k (f_k - b_k) grad log q(z_k|x); its value is zero.

    Args:
        f: (k, B) the integrand at z_k (drawn without a reparameterization path).
        log_q: (k, B) log q(z_k|x) with q's parameters attached.
    The baseline b_k is the mean of f over the other k - 1 particles (leave-one-out, unbiased
    because it does not depend on z_k); with k = 1 there is none: plain REINFORCE.
    """
    k = f.shape[0]
    f = f.detach()
    baseline = (f.sum(0, keepdim=True) - f) / (k - 1) if k > 1 else torch.zeros_like(f)
    s = ((f - baseline) * log_q).mean(0)
    return s - s.detach()


def effective_sample_size(log_w: Tensor) -> Tensor:
    """Normalized effective sample size of importance weights, (sum w)^2 / (K sum w^2), in
    [1/K, 1] (Kong 1992); log_w has shape (K, B), the result (B,)."""
    k = log_w.shape[0]
    return (2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0)).exp() / k
