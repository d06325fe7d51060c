"""Shared fixtures: exact models to test estimators against, and small trained runs."""

from __future__ import annotations

import math

import pytest
import torch

from vaelab.models import LinearGaussian


def make_linear(seed: int = 0, data_dim: int = 6, latent_dim: int = 3, noise: float = 0.7,
                mean_field: bool = False) -> LinearGaussian:
    """A linear-Gaussian model in float64 with an encoder that is *not* the exact posterior:
    the mean-field optimum when ``mean_field``, otherwise that optimum slightly shifted and
    widened (an overdispersed proposal keeps the importance weights light-tailed, so the
    delta-method standard error is trustworthy)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(data_dim, latent_dim, generator=g, dtype=torch.float64)
    b = torch.randn(data_dim, generator=g, dtype=torch.float64)
    model = LinearGaussian(w, b, noise)
    if not mean_field:
        with torch.no_grad():
            model.enc_weight.add_(0.03 * torch.randn(model.enc_weight.shape, generator=g, dtype=torch.float64))
            model.enc_log_scale.add_(0.4)
    return model


@pytest.fixture
def linear_model() -> LinearGaussian:
    return make_linear()


@pytest.fixture
def linear_data(linear_model: LinearGaussian) -> torch.Tensor:
    torch.manual_seed(1)
    return linear_model.marginal().sample((40,))


def closed_form_elbo(model, x):
    """E_q[log p(x|z)] and KL(q || N(0, I)) in closed form for the linear-Gaussian model."""
    q = model.encode(x)
    m, s2 = q.mean, q.variance  # (B, Dz)
    w, b, var = model.weight, model.bias, model.noise_scale**2
    d = x.shape[1]
    resid = x - m @ w.T - b
    rec = -0.5 * d * torch.log(2 * math.pi * var) - (resid.square().sum(1) + s2 @ w.square().sum(0)) / (2 * var)
    kl = 0.5 * (s2 + m.square() - 1 - s2.log()).sum(1)
    return rec, kl


def elbo_of_gaussian_q(model, x, mean, var):
    """Closed-form ELBO of a diagonal Gaussian q = N(mean, diag(var)) per example under the
    linear-Gaussian model (mean, var: (B, Dz))."""
    w, b, noise = model.weight, model.bias, model.noise_scale**2
    d = x.shape[1]
    resid = x - mean @ w.T - b
    rec = -0.5 * d * torch.log(2 * math.pi * noise) - (resid.square().sum(1) + var @ w.square().sum(0)) / (2 * noise)
    kl = 0.5 * (var + mean.square() - 1 - var.log()).sum(1)
    return rec - kl
