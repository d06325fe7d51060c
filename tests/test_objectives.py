"""Objectives against closed forms on the linear-Gaussian model, where every term is exact."""

from __future__ import annotations

import math

import pytest
import torch

from vaelab.errors import ConfigError
from vaelab.estimators import log_weights, sample_particles
from vaelab.models import build_model
from vaelab.objectives import OBJECTIVES, elbo, get_objective, kl_to_prior

from conftest import closed_form_elbo

Z_MAX = 4.5  # per-example z-score bound: P(|Z| > 4.5) = 7e-6 per comparison


def mean_and_se(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over dim 0 and its standard error."""
    k = samples.shape[0]
    return samples.mean(0), samples.std(0) / math.sqrt(k)


def test_reconstruction_matches_closed_form(linear_model, linear_data):
    torch.manual_seed(0)
    k = 20000
    p = sample_particles(linear_model, linear_data, k)
    est, se = mean_and_se(p.log_px_z)
    rec, _ = closed_form_elbo(linear_model, linear_data)
    assert ((est - rec).abs() / se).max() < Z_MAX
    # the objective returns the same estimator
    torch.manual_seed(0)
    result = elbo(linear_model, linear_data, k=k)
    assert torch.allclose(result.reconstruction, est)


@pytest.mark.parametrize("model_kind", ["linear", "vae"])
def test_analytic_kl_equals_monte_carlo_kl(model_kind, linear_model, linear_data):
    torch.manual_seed(0)
    if model_kind == "linear":
        model, x = linear_model, linear_data
    else:
        model = build_model("vae", (1, 8, 8), likelihood="bernoulli", net="mlp", hidden=(32,),
                            activation="tanh", latent_dim=5, obs_precision=1.0)
        x = (torch.rand(30, 1, 8, 8) < 0.5).float()
    with torch.no_grad():
        # a non-trivial posterior: move the encoder's output away from the prior
        p = sample_particles(model, x, 20000)
        mc, se = mean_and_se(p.log_qz - p.log_pz)
        analytic = kl_to_prior(p.q, model.prior())
        assert analytic.shape == (x.shape[0],)
        assert ((mc - analytic).abs() / se).max() < Z_MAX
        # elbo(kl="mc") estimates the same quantity from its own draws
        res = elbo(model, x, k=20000, kl="mc")
        assert ((res.kl - analytic).abs() / se).max() < Z_MAX * 1.5


def test_kl_matches_closed_form(linear_model, linear_data):
    _, kl = closed_form_elbo(linear_model, linear_data)
    res = elbo(linear_model, linear_data)
    torch.testing.assert_close(res.kl, kl)


def test_elbo_is_below_exact_log_likelihood(linear_model, linear_data):
    rec, kl = closed_form_elbo(linear_model, linear_data)
    exact = linear_model.log_prob(linear_data)
    gap = exact - (rec - kl)
    assert (gap > 0).all(), "q is not the exact posterior, so the ELBO gap must be positive"
    torch.manual_seed(0)
    p = sample_particles(linear_model, linear_data, 20000)
    est, se = mean_and_se(p.log_px_z)
    assert ((est - kl) <= exact + Z_MAX * se).all()


def test_elbo_gap_is_kl_to_exact_posterior(linear_model, linear_data):
    """log p(x) - ELBO = KL(q(z|x) || p(z|x)): checks decode/prior/encode agree with the exact model."""
    rec, kl = closed_form_elbo(linear_model, linear_data)
    exact = linear_model.log_prob(linear_data)
    q = linear_model.encode(linear_data)
    post = linear_model.posterior(linear_data)
    q_full = torch.distributions.MultivariateNormal(q.mean, covariance_matrix=torch.diag_embed(q.variance))
    torch.testing.assert_close(exact - (rec - kl), torch.distributions.kl_divergence(q_full, post))


def test_beta_weights_only_the_kl_in_the_objective(linear_model, linear_data):
    torch.manual_seed(3)
    one = elbo(linear_model, linear_data, beta=1.0)
    torch.manual_seed(3)
    four = elbo(linear_model, linear_data, beta=4.0)
    torch.testing.assert_close(four.bound, one.bound)
    torch.testing.assert_close(one.objective, one.bound)
    torch.testing.assert_close(four.objective, four.reconstruction - 4.0 * four.kl)
    assert (four.objective < one.objective).all()


def test_log_weights_average_to_the_elbo(linear_model, linear_data):
    torch.manual_seed(0)
    lw = log_weights(linear_model, linear_data, 20000)
    assert lw.shape == (20000, linear_data.shape[0])
    est, se = mean_and_se(lw)
    rec, kl = closed_form_elbo(linear_model, linear_data)
    assert ((est - (rec - kl)).abs() / se).max() < Z_MAX


def test_reparameterized_gradient_is_unbiased(linear_model, linear_data):
    """Gradients of the Monte-Carlo ELBO w.r.t. encoder and decoder parameters match the
    gradients of the closed-form ELBO within their standard error (reparameterization trick)."""
    params = [linear_model.enc_weight, linear_model.enc_log_scale, linear_model.weight]
    rec, kl = closed_form_elbo(linear_model, linear_data)
    exact = torch.autograd.grad((rec - kl).mean(), params)
    torch.manual_seed(0)
    reps = []
    for _ in range(200):
        g = torch.autograd.grad(elbo(linear_model, linear_data, k=10).objective.mean(), params)
        reps.append(torch.cat([t.flatten() for t in g]))
    reps = torch.stack(reps)
    est, se = mean_and_se(reps)
    target = torch.cat([t.flatten() for t in exact])
    assert ((est - target).abs() / se).max() < Z_MAX


def test_unknown_kl_mode_is_rejected(linear_model, linear_data):
    with pytest.raises(ConfigError, match="analytic, mc"):
        elbo(linear_model, linear_data, kl="exact")


def test_get_objective_binds_only_accepted_options(linear_model, linear_data):
    fn = get_objective("elbo", beta=2.0, k=3, kl="analytic", not_an_option=1)
    torch.manual_seed(0)
    res = fn(linear_model, linear_data)
    torch.testing.assert_close(res.objective, res.reconstruction - 2.0 * res.kl)
    with pytest.raises(ConfigError, match="elbo"):
        OBJECTIVES["no-such-objective"]
