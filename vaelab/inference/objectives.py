"""Bounds and losses as pure functions of (model, x): each returns per-example tensors [B].

Reduction to a scalar happens in one place, the trainer. Every result is a ``Bound``
with ``objective`` (what training maximizes, and whose gradient is the chosen estimator's) and
``bound`` (the true lower bound on log p(x) that is logged and used for model selection); they
differ for beta != 1, during KL warm-up, with free bits, and for PIWAE's encoder.

All importance-weighted objectives are reductions of the log-weights log w_k of
``estimators.sample_particles`` (Burda et al. 2015; Rainforth et al. 2018):

    L_K   = log (1/K) sum_k w_k                         iwae
    MIWAE = (1/M) sum_m L_K^(m)                          miwae: M independent groups of K
    CIWAE = beta ELBO + (1 - beta) L_K                   ciwae
    PIWAE : decoder trained on L_{MK}, encoder on MIWAE  piwae

Collapse remedies act on every objective through two options: ``kl_scale`` multiplies the KL
part log q(z|x) - log p(z) (KL warm-up and cyclical schedules set it per step), and
``free_bits`` lambda keeps the KL pressure off latent dimensions whose batch-mean KL is below
lambda nats (Kingma et al. 2016).
"""

from __future__ import annotations

import functools
import inspect
import math
from typing import Callable, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

from ..core import sharding
from ..core.errors import ConfigError
from ..core.registry import Registry, check_keywords
from ..distributions.observation import kl_per_dimension, stop_gradient
from .estimators import (
    Particles,
    check_estimator,
    route_path_gradient,
    sample_particles,
    score_function_surrogate,
)

OBJECTIVES: Registry[Callable[..., "Bound"]] = Registry("objective")


def declare(*, grad_estimators: tuple[str, ...]) -> Callable:
    """Marks an objective with what it supports, for the configuration and the objective itself
    to check against: ``grad_estimators``, the gradient estimators it implements."""

    def mark(objective: Callable) -> Callable:
        objective.grad_estimators = tuple(grad_estimators)
        return objective

    return mark


def supported_estimators(name: str) -> tuple[str, ...]:
    """The gradient estimators the objective registered as ``name`` declares."""
    return OBJECTIVES[name].grad_estimators
KL_MODES = ("analytic", "mc")
WEIGHTED_ESTIMATORS = ("reparam", "stl", "dreg")  # what the importance-weighted family implements


class Bound(NamedTuple):
    """Per-example results of an objective, each of shape [B]."""

    objective: Tensor  # what the trainer maximizes (its gradient is the estimator's)
    bound: Tensor  # the true lower bound on log p(x): logged, and used for model selection
    reconstruction: Tensor  # E_q[log p(x|z)], averaged over the particles
    kl: Tensor  # KL(q(z|x) || p(z))


ELBO = Bound  # the name the foundation release used


def closed_form_kl(q: Distribution, prior: Distribution) -> Tensor | None:
    """KL(q || p) through the ``kl_divergence`` registry, or None where no closed form is
    registered (flows, mixture priors)."""
    try:
        return kl_divergence(q, prior)
    except NotImplementedError:
        return None


def kl_to_prior(q: Distribution, prior: Distribution, particles: Particles | None = None) -> Tensor:
    """KL(q || p) in closed form through the ``kl_divergence`` registry, or, where no closed form
    is registered, the Monte-Carlo estimate mean_k[log q(z_k) - log p(z_k)] over ``particles``."""
    kl = closed_form_kl(q, prior)
    if kl is not None:
        return kl
    if particles is None:
        raise NotImplementedError(f"no closed-form KL between {type(q).__name__} and {type(prior).__name__}")
    return (particles.log_qz - particles.log_pz).mean(0)


def free_dimensions(q: Distribution, prior: Distribution, free_bits: float) -> Tensor:
    """The latent dimensions free bits exempts from the KL: KL_d, the batch mean of
    KL(q(z_d|x) || p(z_d)), below lambda. Boolean, shape (D,)."""
    return sharding.batch_mean(kl_per_dimension(q, prior).detach()) < free_bits  # of the global batch


def free_bits_correction(q: Distribution, prior: Distribution, free_bits: float) -> Tensor:
    """Per-example term that turns "- KL" into "- sum_d max(lambda, KL_d)" (Kingma et al. 2016).

    With KL_d the batch mean of KL(q(z_d|x) || p(z_d)), free bits replaces the KL by
    sum_d max(lambda, KL_d). Per example i this adds sum_{d: KL_d < lambda} (KL_id - lambda) to
    an objective that contains -KL_i, so the batch mean is exactly the free-bits objective and
    dimensions below lambda feel no pressure toward the prior. Shape [B]. (For the ELBO, whose
    KL is a sum over dimensions; the importance-weighted objectives define free bits inside
    their log-weights, see ``_weighted``.)
    """
    per_dim = kl_per_dimension(q, prior)  # (B, D)
    below = sharding.batch_mean(per_dim.detach()) < free_bits  # (D,), of the global batch under torchrun
    return torch.where(below, per_dim - free_bits, torch.zeros_like(per_dim)).sum(-1)


def _check_remedies(kl_scale: float, free_bits: float) -> None:
    if not (kl_scale >= 0 and math.isfinite(kl_scale)):
        raise ConfigError(f"kl_scale must be a non-negative number, got {kl_scale}")
    if not (free_bits >= 0 and math.isfinite(free_bits)):
        raise ConfigError(f"free_bits= must be a non-negative number of nats, got {free_bits}")


@OBJECTIVES.register("elbo")
@declare(grad_estimators=("reparam", "stl", "dreg", "score"))
def elbo(
    model: nn.Module,
    x: Tensor,
    *,
    beta: float = 1.0,
    k: int = 1,
    kl: str = "analytic",
    grad_estimator: str = "reparam",
    kl_scale: float = 1.0,
    free_bits: float = 0.0,
) -> Bound:
    """The evidence lower bound E_q[log p(x|z)] - KL(q(z|x) || p(z)) (Kingma & Welling 2014),
    with the KL weighted by ``beta`` in the objective (beta-VAE, Higgins et al. 2017).

    Args:
        model: exposes ``prior()``, ``encode(x)``, ``decode(z)``.
        x: a batch (B, *event_shape).
        beta: weight of the KL term in ``objective``.
        k: samples averaged in the Monte-Carlo terms.
        kl: "analytic" (closed form, falling back to Monte Carlo where none is registered) or "mc".
        grad_estimator: "reparam", "stl" (path derivative of the Monte-Carlo form; "dreg" is the
            same estimator for a single-sample bound), or "score" (REINFORCE with a
            leave-one-out baseline when k > 1; where the KL is in closed form only the
            reconstruction term uses it and the KL's gradient is exact, otherwise (kl="mc", or a
            mixture prior or flow without a closed form) the whole Monte-Carlo integrand does).
        kl_scale: extra factor on the KL weight (set by warm-up and cyclical schedules).
        free_bits: lambda, nats per latent dimension (0: off).
    Returns:
        ``Bound`` of per-example tensors [B]; ``bound`` is the ELBO whatever beta, kl_scale and
        free_bits are.
    """
    if kl not in KL_MODES:
        raise ConfigError(f"unknown kl mode {kl!r}; choose one of: {', '.join(KL_MODES)}")
    check_estimator(grad_estimator, "elbo", elbo.grad_estimators)
    _check_remedies(kl_scale, free_bits)
    weight = beta * kl_scale
    prior = model.prior()
    p = sample_particles(model, x, k, reparameterized=grad_estimator != "score", prior=prior)
    reconstruction = p.log_px_z.mean(0)
    closed = closed_form_kl(p.q, prior) if kl == "analytic" else None
    kl_term = closed if closed is not None else (p.log_qz - p.log_pz).mean(0)
    objective = reconstruction - weight * kl_term
    if grad_estimator in ("stl", "dreg"):
        # value as above; gradient from the path derivative of the Monte-Carlo beta-ELBO
        s = (p.log_px_z + weight * (p.log_pz - p.log_qz_path)).mean(0)
        objective = objective.detach() + (s - s.detach())
    elif grad_estimator == "score":
        # z carries no path: the decoder learns from log p(x|z), q's parameters from the score
        # of everything whose expectation over q is not differentiated exactly: a Monte-Carlo
        # KL's gradient at fixed z misses how q moves the particles, so its integrand joins f
        f = p.log_px_z if closed is not None else p.log_px_z + weight * (p.log_pz - p.log_qz)
        objective = objective + score_function_surrogate(f, p.q.log_prob(p.z))
    if free_bits > 0:
        objective = objective + weight * free_bits_correction(p.q, prior, free_bits)
    return Bound(objective=objective, bound=reconstruction - kl_term, reconstruction=reconstruction, kl=kl_term)


def _weighted(
    model,
    x: Tensor,
    *,
    name: str,
    k: int,
    m: int,
    beta: float,
    pooled_decoder: bool,
    grad_estimator: str,
    kl_scale: float,
    free_bits: float,
) -> Bound:
    """The importance-weighted family on M groups of K particles.

    Every member trains its encoder on beta ELBO + (1 - beta) MIWAE(M, K): iwae is (beta 0, M 1),
    miwae (beta 0), ciwae (M 1). The decoder trains on the same bound, except with
    ``pooled_decoder`` (piwae), where it trains on L_MK over all M K particles.

    The objective's log-weights are log p(x|z_k) + s [log p(z_k) - log q(z_k|x)] with s =
    ``kl_scale``. Free bits (lambda > 0) exempts the latent dimensions whose batch-mean KL is
    below lambda: their coordinates leave the ratio p(z)/q(z|x) of the objective's log-weights,
    and each costs a constant lambda instead, so nothing in the objective pulls them toward the
    prior (with K = 1 this is the free-bits ELBO with a Monte-Carlo KL). ``bound`` is always the
    true bound, from the unmodified log-weights.
    """
    check_estimator(grad_estimator, name, WEIGHTED_ESTIMATORS)
    _check_remedies(kl_scale, free_bits)
    if k < 1 or m < 1:
        raise ConfigError(f"k= and m= must be at least 1, got k={k}, m={m}")
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"beta= for ciwae mixes ELBO and IWAE and must be in [0, 1], got {beta}")
    prior = model.prior()
    p = sample_particles(model, x, m * k, prior=prior)
    # With a detached log q (stl, dreg, and piwae, whose encoder and decoder weights differ),
    # phi is reached only through z, where route_path_gradient can reweight it.
    path = grad_estimator != "reparam" or pooled_decoder
    free = free_dimensions(p.q, prior, free_bits) if free_bits > 0 else None  # (D,) or None
    if free is None:
        log_ratio = p.log_pz - (p.log_qz_path if path else p.log_qz)  # (MK, B)
    else:
        q = stop_gradient(p.q) if path else p.q
        per_dim = prior.base_dist.log_prob(p.z) - q.base_dist.log_prob(p.z)  # (MK, B, D)
        log_ratio = per_dim.masked_fill(free, 0.0).sum(-1) - free_bits * free.sum()
    lw = (p.log_px_z + kl_scale * log_ratio).view(m, k, -1)  # (M, K, B) the objective's log-weights
    with torch.no_grad():
        bound = (_pooled_bound if pooled_decoder else functools.partial(_mixed_bound, beta=beta))(
            p.log_weights.view(m, k, -1)
        )
    if not p.z.requires_grad:  # no gradient wanted (evaluation): the value is all
        value = _pooled_bound(lw) if pooled_decoder else _mixed_bound(lw, beta)
    elif pooled_decoder:
        value = _pooled_objective(model, p, lw, grad_estimator, kl_scale, free)
    else:
        value = _mixed_bound(lw, beta)
        if grad_estimator == "dreg":
            with torch.no_grad():
                w = torch.softmax(lw, dim=1)  # (M, K, B) normalized within each group
                uniform = beta / (m * k)  # the ELBO part's weight on every particle
                plain = uniform + (1 - beta) * w / m  # d value / d log w_k
                encoder = uniform + (1 - beta) * _dreg_weights(w, kl_scale) / m
            route_path_gradient(p, plain.flatten(0, 1), _per_coordinate(encoder, plain, free))
    with torch.no_grad():
        kl_term = kl_to_prior(p.q, prior, p)
        reconstruction = p.log_px_z.mean(0)
    return Bound(objective=value, bound=bound, reconstruction=reconstruction, kl=kl_term)


def _dreg_weights(w: Tensor, kl_scale: float) -> Tensor:
    """The path-derivative weights that replace w~_k in DReG (Tucker et al. 2018, eq. 6-7).

    The score term -sum_k w~_k grad_phi log q(z_k) of an importance-weighted bound equals in
    expectation -sum_k (w~_k - w~_k^2) d log w_k/dz dz/dphi; the KL part of the scaled
    log-weights carries kl_scale s, so the path derivative's weights become
    (1 - s) w~_k + s w~_k^2 (s = 1 is Tucker's w~_k^2). The ELBO part's score term has
    expectation zero on its own: there DReG is STL.
    """
    return (1 - kl_scale) * w + kl_scale * w.square()


def _per_coordinate(encoder: Tensor, plain: Tensor, free: Tensor | None) -> Tensor:
    """Encoder weights (M, K, B) -> (MK, B), or (MK, B, D) under free bits: coordinates exempted
    by free bits have no log q in the objective, hence no score term for DReG to rewrite, and
    keep the ``plain`` path weights."""
    if free is None:
        return encoder.flatten(0, 1)
    return torch.where(free, plain.unsqueeze(-1), encoder.unsqueeze(-1)).flatten(0, 1)


def _pooled_objective(
    model, p: Particles, lw: Tensor, grad_estimator: str, kl_scale: float, free: Tensor | None
) -> Tensor:
    """PIWAE's training value, L_MK of the log-weights lw (M, K, B), with gradients routed so the
    decoder gets L_MK's and the encoder MIWAE(M, K)'s (Rainforth et al. 2018).

    Particle k of group m has weight a_k = w~_k G_m in L_MK (w~_k normalized within its group,
    G_m the group's share of the pooled sum) and e_k = w~_k / M in MIWAE. The encoder's gradient
    reaches z_k scaled by a_k and is rescaled to e_k there (``route_path_gradient``). When a
    group's log-sum-exp lies far below another's (common with a Gaussian likelihood), G_m
    underflows and with it the group's whole encoder gradient; so the decoder's weights are
    floored at w~_k max(G_m, eps^2), eps the dtype's machine epsilon. That changes the decoder's
    gradient by less than eps^2 M times a group's gradient, far below the rounding of the sum,
    and keeps every group's encoder gradient exact.
    """
    m, k = lw.shape[:2]
    with torch.no_grad():
        log_w = torch.log_softmax(lw, dim=1)  # (M, K, B) within each group
        log_share = torch.log_softmax(torch.logsumexp(lw, dim=1), dim=0)  # (M, B): log G_m
        floor = 2 * math.log(torch.finfo(lw.dtype).eps)
        decoder = (log_w + log_share.clamp_min(floor).unsqueeze(1)).exp().flatten(0, 1)  # (MK, B)
        w = log_w.exp()
        plain = w / m  # MIWAE's weights
        encoder = _dreg_weights(w, kl_scale) / m if grad_estimator == "dreg" else plain
    flat = lw.flatten(0, 1)
    value = _pooled_bound(lw).detach() + (decoder * (flat - flat.detach())).sum(0)
    route_path_gradient(p, decoder, _per_coordinate(encoder, plain, free))
    plain = plain.flatten(0, 1)
    if grad_estimator == "reparam":
        # the score part of the encoder's reparameterization gradient, which the detached log q
        # leaves out: -s sum_k e_k grad_phi log q(z_k) at fixed z_k (only the coordinates whose
        # log q is in the objective under free bits)
        z = p.z.detach()
        if free is None:
            log_q = p.q.log_prob(z)
        else:
            log_q = p.q.base_dist.log_prob(z).masked_fill(free, 0.0).sum(-1)
        d = -kl_scale * (plain * log_q).sum(0)
        value = value + (d - d.detach())
    through = getattr(model, "prior_through_encoder", None)
    prior = through() if through is not None else None
    if prior is not None:
        # A prior built by the encoder (VampPrior) depends on phi directly, outside z; that
        # gradient arrived with the decoder's weights a_k and must have MIWAE's e_k. The prior
        # rebuilt with its own parameters detached carries the difference to phi only.
        d = kl_scale * ((plain - decoder) * prior.log_prob(p.z.detach())).sum(0)
        value = value + (d - d.detach())
    return value


def _mixed_bound(lw: Tensor, beta: float) -> Tensor:
    """beta ELBO + (1 - beta) MIWAE(M, K) from log-weights (M, K, B) -> (B,)."""
    k = lw.shape[1]
    miwae = (torch.logsumexp(lw, 1) - math.log(k)).mean(0)
    return miwae if beta == 0 else beta * lw.mean((0, 1)) + (1 - beta) * miwae


def _pooled_bound(lw: Tensor) -> Tensor:
    """L_MK over all M K log-weights (M, K, B) -> (B,)."""
    return torch.logsumexp(lw.flatten(0, 1), 0) - math.log(lw.shape[0] * lw.shape[1])


@OBJECTIVES.register("iwae")
@declare(grad_estimators=WEIGHTED_ESTIMATORS)
def iwae(
    model: nn.Module, x: Tensor, *, k: int = 1, grad_estimator: str = "reparam", kl_scale: float = 1.0, free_bits: float = 0.0
) -> Bound:
    """The importance-weighted bound L_K = E[log (1/K) sum_k w_k] (Burda et al. 2015).

    Args:
        k: importance samples per example (K = 1 is the ELBO with a Monte-Carlo KL).
        grad_estimator: "reparam", "stl" or "dreg" (Tucker et al. 2018).
        kl_scale, free_bits: collapse remedies (module docstring).
    """
    return _weighted(model, x, name="iwae", k=k, m=1, beta=0.0, pooled_decoder=False, grad_estimator=grad_estimator,
                     kl_scale=kl_scale, free_bits=free_bits)  # fmt: skip


@OBJECTIVES.register("miwae")
@declare(grad_estimators=WEIGHTED_ESTIMATORS)
def miwae(
    model: nn.Module, x: Tensor, *, m: int = 1, k: int = 1, grad_estimator: str = "reparam", kl_scale: float = 1.0,
    free_bits: float = 0.0,
) -> Bound:  # fmt: skip
    """MIWAE(M, K): the mean of M independent L_K bounds (Rainforth et al. 2018)."""
    return _weighted(model, x, name="miwae", k=k, m=m, beta=0.0, pooled_decoder=False, grad_estimator=grad_estimator,
                     kl_scale=kl_scale, free_bits=free_bits)  # fmt: skip


@OBJECTIVES.register("ciwae")
@declare(grad_estimators=WEIGHTED_ESTIMATORS)
def ciwae(
    model: nn.Module, x: Tensor, *, beta: float = 0.5, k: int = 1, grad_estimator: str = "reparam", kl_scale: float = 1.0,
    free_bits: float = 0.0,
) -> Bound:  # fmt: skip
    """CIWAE: beta ELBO + (1 - beta) L_K on the same K particles (Rainforth et al. 2018); a convex
    combination of two bounds, hence a bound itself."""
    return _weighted(model, x, name="ciwae", k=k, m=1, beta=beta, pooled_decoder=False, grad_estimator=grad_estimator,
                     kl_scale=kl_scale, free_bits=free_bits)  # fmt: skip


@OBJECTIVES.register("piwae")
@declare(grad_estimators=WEIGHTED_ESTIMATORS)
def piwae(
    model: nn.Module, x: Tensor, *, m: int = 1, k: int = 1, grad_estimator: str = "reparam", kl_scale: float = 1.0,
    free_bits: float = 0.0,
) -> Bound:  # fmt: skip
    """PIWAE(M, K): the decoder is trained on L_{MK}, the encoder on MIWAE(M, K), from the same
    M K particles (Rainforth et al. 2018). ``objective`` and ``bound`` report L_{MK}; the
    encoder's gradient is routed separately (``estimators.route_path_gradient``)."""
    return _weighted(model, x, name="piwae", k=k, m=m, beta=0.0, pooled_decoder=True, grad_estimator=grad_estimator,
                     kl_scale=kl_scale, free_bits=free_bits)  # fmt: skip


def objective_options(name: str) -> set[str]:
    """The keyword options the objective registered as ``name`` accepts."""
    return set(inspect.signature(OBJECTIVES[name]).parameters) - {"model", "x"}


def get_objective(name: str, **options: object) -> Callable[..., NamedTuple]:
    """The objective registered as ``name`` bound to ``options``, as ``f(model, x)``.

    An option the objective does not take (``m`` for the ELBO, say) is an error
    (UnknownOptionError, a TypeError) that names it: a typo must not train with a default.
    ``config.TrainConfig.objective_options`` gives each objective the options it takes.
    """
    check_keywords(f"get_objective({name!r}, ...)", options, objective_options(name))
    return functools.partial(OBJECTIVES[name], **options)


class VQBound(NamedTuple):
    """Per-example results of the VQ-VAE objective, each of shape [B]."""

    objective: Tensor  # log p(x|z_q) - codebook loss - beta commitment loss (what training maximizes)
    bound: Tensor  # log p(x|z_q(x)) + log p(z_q(x)): a lower bound on log p(x) (q is one-hot)
    reconstruction: Tensor  # log p(x|z_q(x))
    kl: Tensor  # -log p(z_q(x)), the rate in nats (KL(q || p) for the one-hot q)
    codebook_loss: Tensor  # sum over positions of ||sg[z_e] - e||^2
    commitment_loss: Tensor  # sum over positions of ||z_e - sg[e]||^2


def vq(model, x: Tensor) -> VQBound:
    """The VQ-VAE objective (van den Oord et al. 2017, eq. 3) and its bound.

    objective = log p(x|z_q) - ||sg[z_e] - e||^2 - beta ||z_e - sg[e]||^2, with the straight-
    through gradient from z_q to z_e; with an EMA codebook the codebook loss is left out (the
    moving averages move the codes). bound = log p(x|z_q(x)) + log p(z_q(x)) with the model's
    prior over code grids (uniform, rate h w log K, until one is learned), a lower bound on
    log p(x) because q(z|x) is one-hot on z_q(x) and has entropy 0.
    """
    quantized = model.quantize(x)
    reconstruction = model.decode_grid(quantized.z_q).log_prob(x)  # (B,)
    with torch.no_grad():
        log_prior = model.log_prior(quantized.codes)
    codebook = quantized.codebook_loss if model.quantizer.update == "loss" else quantized.codebook_loss.detach()
    objective = reconstruction - codebook - model.commitment * quantized.commitment_loss
    return VQBound(
        objective=objective,
        bound=reconstruction.detach() + log_prior,
        reconstruction=reconstruction.detach(),
        kl=-log_prior,
        codebook_loss=quantized.codebook_loss.detach(),
        commitment_loss=quantized.commitment_loss.detach(),
    )
