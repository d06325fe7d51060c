"""The Rényi (variational Rényi, VR) bound of Li & Turner 2016, "Rényi Divergence Variational
Inference".

For alpha in [0, 1] the bound is

    L_alpha = 1 / (1 - alpha) log E_q[(p(x, z) / q(z|x))^(1 - alpha)],

estimated with K reparameterized particles as 1 / (1 - alpha) log (1/K) sum_k w_k^(1 - alpha),
w_k = p(x, z_k) / q(z_k|x). Its two ends are bounds vaelab already has: alpha = 0 is IWAE's
L_K, and alpha -> 1 is the ELBO (the mean of log w_k, with a Monte-Carlo KL); alpha = 1 itself
is taken as that limit. For alpha in [0, 1], E[estimate] <= L_alpha <= log p(x) (Li & Turner,
theorem 2), so the value is a lower bound to report and select models by.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..core.errors import ConfigError
from .estimators import check_estimator, sample_particles
from .objectives import OBJECTIVES, Bound, declare, kl_to_prior


def renyi_bound(log_weights: Tensor, alpha: float) -> Tensor:
    """The Rényi estimate from log-weights (K, B) -> (B,); alpha = 1 is the mean log-weight."""
    if alpha == 1:
        return log_weights.mean(0)
    k = log_weights.shape[0]
    return (torch.logsumexp((1 - alpha) * log_weights, 0) - math.log(k)) / (1 - alpha)


@OBJECTIVES.register("renyi")
@declare(grad_estimators=("reparam",))
def renyi(
    model: nn.Module, x: Tensor, *, alpha: float = 0.5, k: int = 1, grad_estimator: str = "reparam", kl_scale: float = 1.0
) -> Bound:
    """The variational Rényi bound L_alpha from K particles (Li & Turner 2016).

    Args:
        alpha: in [0, 1]; 0 is IWAE's L_K, 1 the ELBO with a Monte-Carlo KL.
        k: particles per example.
        grad_estimator: "reparam" (the reparameterization gradient of the estimate).
        kl_scale: KL warm-up weight s on log p(z) - log q(z|x) in the training value's
            log-weights; ``bound`` always uses the unscaled ones.
    """
    check_estimator(grad_estimator, "renyi", renyi.grad_estimators)
    if not (0.0 <= alpha <= 1.0):
        raise ConfigError(f"alpha= for renyi must be in [0, 1] (0: IWAE's L_K, 1: the ELBO), got {alpha}")
    if k < 1:
        raise ConfigError(f"k= must be at least 1, got k={k}")
    if not (kl_scale >= 0 and math.isfinite(kl_scale)):
        raise ConfigError(f"kl_scale must be a non-negative number, got {kl_scale}")
    prior = model.prior()
    p = sample_particles(model, x, k, prior=prior)
    log_weights = p.log_px_z + kl_scale * (p.log_pz - p.log_qz)  # (K, B) the training value's
    value = renyi_bound(log_weights, alpha)
    with torch.no_grad():
        bound = value.detach() if kl_scale == 1 else renyi_bound(p.log_weights, alpha)
        kl = kl_to_prior(p.q, prior, p)
        reconstruction = p.log_px_z.mean(0)
    return Bound(objective=value, bound=bound, reconstruction=reconstruction, kl=kl)
