"""Classical per-datapoint variational inference (seed 000's worked example; Hoffman et al. 2013
for the stochastic version): each example gets its own variational parameters, a mean and a
diagonal scale, optimized by gradient ascent on the Monte-Carlo ELBO with the KL in closed form.
No encoder is involved, except as an optional starting point; comparing the optimized bound
L[q*] with the encoder's L[q] measures the amortization gap (Cremer et al. 2018).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.devices import module_device
from ..core.errors import ConfigError
from ..distributions.posteriors import DiagonalGaussianPosterior, Posterior
from .estimators import sample_particles
from .objectives import kl_to_prior

INITS = ("encoder", "prior")


class LocalFit(NamedTuple):
    """Per-example variational posteriors found by ``fit_local``."""

    q: torch.distributions.Distribution  # batch (B,), event (D,), of the model's posterior family
    elbo: Tensor  # (B,) their ELBO from ``eval_samples`` particles (nan when eval_samples=0)
    history: list[float]  # mean Monte-Carlo ELBO at each step (the optimizer's view, noisy)
    params: Tensor  # (B, param_size): the optimized per-example parameters of the family


def fit_local(
    model: nn.Module,
    x: Tensor,
    steps: int = 500,
    lr: float = 0.05,
    *,
    init: str | Tensor = "encoder",
    k: int = 1,
    eval_samples: int = 1000,
    progress: bool = False,
) -> LocalFit:
    """Optimizes a posterior q_i(z) for every example of x, within the model's posterior family.

    The family is ``model.posterior`` (a ``posteriors.Posterior``: diagonal or full Gaussian,
    planar or IAF flow) or, for models without one, the diagonal Gaussian. Each example gets its
    own copy of the parameter vector the encoder would emit (for IAF: mean, scale and context;
    the flow's shared networks stay as they are), optimized by Adam on the Monte-Carlo ELBO, with
    the KL in closed form where one is registered and by Monte Carlo otherwise.

    Args:
        model: exposes ``prior()``, ``decode(z)`` (and ``encode(x)`` for init="encoder"); its own
            parameters are not changed and get no gradient.
        x: a batch (B, *event_shape).
        steps: Adam steps on the summed ELBO (the examples are independent, so this optimizes each).
        lr: Adam's initial learning rate, decayed linearly to 0 over the steps.
        init: "encoder" (start from q(z|x)), "prior" (start from ``family.neutral``: N(0, I)
            for the Gaussians and planar flows; for IAF the base N(0, I) pushed through the
            shared flow, which is not the identity), or a tensor (B, param_size) of starting
            parameters in the family's layout.
        k: reparameterized samples per step.
        eval_samples: particles for the final ELBO estimate (0: skip it).
    Returns:
        ``LocalFit`` with the optimized posteriors and their ELBO per example.
    """
    if not isinstance(init, Tensor) and init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    if steps < 0 or k < 1 or eval_samples < 0:
        raise ConfigError(
            f"fit_local needs steps >= 0, k >= 1 and eval_samples >= 0, got steps={steps}, k={k}, "
            f"eval_samples={eval_samples}"
        )
    family = getattr(model, "posterior", None)
    if not isinstance(family, Posterior):
        family = DiagonalGaussianPosterior(model.prior().event_shape[0])
    dtype = next(model.parameters()).dtype
    x = x.to(module_device(model))  # the per-example parameters live where the model computes
    with torch.no_grad():
        prior = model.prior()  # fixed while the local posteriors move
        if isinstance(init, Tensor):
            if init.shape != (x.shape[0], family.param_size):
                raise ConfigError(
                    f"init parameters must have shape ({x.shape[0]}, {family.param_size}), got {tuple(init.shape)}"
                )
            h = init.detach().to(device=x.device, dtype=dtype).clone()
        elif init == "prior":
            h = family.neutral(x.shape[0], dtype, x.device)
        elif isinstance(getattr(model, "encoder", None), nn.Module) and family is getattr(model, "posterior", None):
            h = model.encoder(x).clone()
        elif getattr(model, "encoder", 0) is None:
            raise ConfigError("this model has no encoder to start from; use init='prior'")
        else:  # a model with its own diagonal Gaussian encode()
            q0 = model.encode(x)
            h = torch.cat([q0.mean, 2 * q0.stddev.log()], dim=-1)
    h.requires_grad_(True)
    optimizer = torch.optim.Adam([h], lr=lr)
    # a learning rate decaying linearly to 0 lets the iterates settle despite the Monte-Carlo noise
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 - t / max(1, steps))
    history = []
    for _ in tqdm(range(steps), disable=not progress, desc="local VI", leave=False):
        q = family(h)
        p = sample_particles(model, x, k, q=q, prior=prior)
        elbo = p.log_px_z.mean(0) - kl_to_prior(q, prior, p)
        loss = -elbo.sum()  # independent examples: the sum's gradient is each example's own
        (h.grad,) = torch.autograd.grad(loss, [h])
        optimizer.step()
        schedule.step()
        history.append(elbo.detach().mean())  # kept as tensors: no synchronization per step
    h = h.detach()
    history = torch.stack(history).tolist() if history else []
    with torch.no_grad():
        q = family(h)
        elbo = torch.full((x.shape[0],), torch.nan, dtype=dtype, device=x.device)
        if eval_samples:
            elbo = _elbo(model, x, q, prior, eval_samples)
    return LocalFit(q, elbo, history, h)


def _elbo(model: nn.Module, x: Tensor, q, prior, samples: int) -> Tensor:
    """E_q[log p(x|z)] - KL(q || p) from ``samples`` particles per example (KL in closed form
    where registered), in chunks of about 10,000 particles."""
    try:
        kl = kl_to_prior(q, prior)
    except NotImplementedError:
        kl = None
    total = torch.zeros(x.shape[0], dtype=next(model.parameters()).dtype, device=x.device)
    chunk = max(1, 10000 // max(1, x.shape[0]))
    for j in range(0, samples, chunk):
        p = sample_particles(model, x, min(chunk, samples - j), q=q, prior=prior)
        total += (p.log_px_z if kl is not None else p.log_weights).sum(0)
    return total / samples - (kl if kl is not None else 0)
