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

from .distributions import diagonal_gaussian
from .errors import ConfigError
from .estimators import sample_particles
from .objectives import kl_to_prior

INITS = ("encoder", "prior")


class LocalFit(NamedTuple):
    """Per-example variational posteriors found by ``fit_local``."""

    q: torch.distributions.Distribution  # diagonal Gaussians, batch (B,), event (D,)
    elbo: Tensor  # (B,) their ELBO, estimated with ``eval_samples`` particles and the KL in closed form
    history: list[float]  # mean Monte-Carlo ELBO at each step (the optimizer's view, noisy)


def fit_local(
    model: nn.Module,
    x: Tensor,
    steps: int = 500,
    lr: float = 0.05,
    *,
    init: str = "encoder",
    k: int = 1,
    eval_samples: int = 1000,
    progress: bool = False,
) -> LocalFit:
    """Optimizes a diagonal Gaussian q_i(z) = N(m_i, diag(s_i^2)) for every example of x.

    Args:
        model: exposes ``prior()``, ``decode(z)`` (and ``encode(x)`` for init="encoder"); its own
            parameters are not changed and get no gradient.
        x: a batch (B, *event_shape).
        steps: Adam steps on the summed ELBO (the examples are independent, so this optimizes each).
        lr: Adam's initial learning rate, decayed linearly to 0 over the steps.
        init: "encoder" (start from q(z|x)) or "prior" (start from N(0, I)).
        k: reparameterized samples per step.
        eval_samples: particles for the final ELBO estimate.
    Returns:
        ``LocalFit`` with the optimized posteriors and their ELBO per example.
    """
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r}; choose one of: {', '.join(INITS)}")
    if steps < 0 or k < 1:
        raise ConfigError(f"fit_local needs steps >= 0 and k >= 1, got steps={steps}, k={k}")
    with torch.no_grad():
        if init == "encoder":
            q0 = model.encode(x)
            mean, log_scale = q0.mean.clone(), q0.stddev.log().clone()
        else:
            d = model.prior().event_shape[0]
            dtype = next(model.parameters()).dtype
            mean = torch.zeros(x.shape[0], d, dtype=dtype)
            log_scale = torch.zeros(x.shape[0], d, dtype=dtype)
    mean.requires_grad_(True)
    log_scale.requires_grad_(True)
    optimizer = torch.optim.Adam([mean, log_scale], lr=lr)
    # a learning rate decaying linearly to 0 lets the iterates settle despite the Monte-Carlo noise
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda t: 1 - t / max(1, steps))
    prior = model.prior()
    history = []
    for _ in tqdm(range(steps), disable=not progress, desc="local VI", leave=False):
        q = diagonal_gaussian(mean, log_scale.exp())
        p = sample_particles(model, x, k, q=q)
        elbo = p.log_px_z.mean(0) - kl_to_prior(q, prior)
        loss = -elbo.sum()  # independent examples: the sum's gradient is each example's own
        mean.grad, log_scale.grad = torch.autograd.grad(loss, [mean, log_scale])
        optimizer.step()
        schedule.step()
        history.append(elbo.detach().mean().item())
    with torch.no_grad():
        q = diagonal_gaussian(mean.detach(), log_scale.detach().exp())
        rec = torch.zeros(x.shape[0], dtype=mean.dtype)
        chunk = max(1, 10000 // max(1, x.shape[0]))
        for j in range(0, eval_samples, chunk):
            c = min(chunk, eval_samples - j)
            rec += sample_particles(model, x, c, q=q).log_px_z.sum(0)
        elbo = rec / eval_samples - kl_to_prior(q, prior)
    return LocalFit(q, elbo, history)
