"""The importance-sampling evaluator against the exact log-likelihood of the linear-Gaussian model."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import closed_form_elbo, make_linear

from vaelab.core.errors import ConfigError
from vaelab.evaluation.evaluate import (
    _chunking,
    active_units,
    evaluate,
    khat_summary,
    log_likelihood,
    pareto_khat,
    pareto_tail_size,
    summarize,
)
from vaelab.inference.estimators import sample_particles


@pytest.mark.parametrize("rows", [7, 2000, 10**6])
def test_is_estimate_matches_exact_log_likelihood(linear_model, linear_data, rows):
    """Within 3 standard errors, whatever the chunking (several examples per pass, or particles
    split over several chunks)."""
    torch.manual_seed(0)
    res = log_likelihood(linear_model, linear_data, k=5000, rows=rows)
    exact = linear_model.log_prob(linear_data).detach()
    n = linear_data.shape[0]
    mean_se = res.stderr.square().sum().sqrt() / n
    assert abs(float(res.log_likelihood.mean() - exact.mean())) < 3 * float(mean_se)
    assert ((res.log_likelihood - exact).abs() / res.stderr).max() < 4.5


def test_elbo_below_is_estimate_below_log_likelihood(linear_model, linear_data):
    torch.manual_seed(0)
    res = log_likelihood(linear_model, linear_data, k=5000)
    exact = linear_model.log_prob(linear_data).detach()
    # the evaluator's ELBO comes from the same particles; it must sit clearly below log p(x)
    assert (res.elbo < res.log_likelihood).all()
    assert (res.log_likelihood <= exact + 3 * res.stderr).all()
    # ... and its parts are the quantities the objective estimates, within their standard error
    rec, kl = closed_form_elbo(linear_model, linear_data)
    torch.testing.assert_close(res.kl, kl)
    torch.manual_seed(1)
    spread = sample_particles(linear_model, linear_data, 5000).log_px_z.std(0)
    assert ((res.reconstruction - rec).abs() / (spread / math.sqrt(5000))).max() < 4.5


def test_estimate_improves_with_k(linear_model, linear_data):
    """The IS bound's gap to log p(x) shrinks as K grows (beyond the standard errors)."""
    exact = linear_model.log_prob(linear_data).mean()
    torch.manual_seed(0)
    small = log_likelihood(linear_model, linear_data, k=2).log_likelihood.mean()
    big = log_likelihood(linear_model, linear_data, k=5000).log_likelihood.mean()
    assert exact - big < (exact - small) / 10


def test_standard_error_is_calibrated():
    """The delta-method standard error matches the spread of repeated independent estimates."""
    model = make_linear(seed=2)
    torch.manual_seed(0)
    x = model.marginal().sample((5,))
    reps = 60
    estimates, errors = [], []
    for _ in range(reps):
        r = log_likelihood(model, x, k=200)
        estimates.append(r.log_likelihood)
        errors.append(r.stderr)
    spread = torch.stack(estimates).std(0)  # (5,)
    claimed = torch.stack(errors).mean(0)
    # a standard deviation from 60 draws has relative error 1/sqrt(2*59) ~ 0.092: allow 3 of those
    ratio = spread / claimed
    assert ((ratio - 1).abs() < 3 / math.sqrt(2 * (reps - 1))).all(), ratio


def test_chunking_bounds_rows_and_covers_k():
    for n, k, rows in [(1000, 5000, 2000), (1000, 5000, 2500), (10, 3, 2000), (1, 1, 1), (7, 10, 20)]:
        per_pass, chunk = _chunking(n, k, rows)
        assert per_pass * chunk <= max(rows, chunk)
        assert chunk <= k and per_pass >= 1
        assert math.ceil(k / chunk) * chunk >= k


def test_active_units_counts_dimensions_whose_mean_varies():
    torch.manual_seed(0)
    means = torch.randn(2000, 4) * torch.tensor([1.0, 0.2, 0.05, 0.0])  # variances 1, 0.04, 0.0025, 0
    assert active_units(means) == 2
    assert active_units(means, threshold=0.001) == 3


def test_summarize_keys_and_mean_stderr(linear_model, linear_data):
    torch.manual_seed(0)
    res = log_likelihood(linear_model, linear_data, k=100)
    s = summarize(res, 100)
    assert set(s) == {"log_likelihood", "log_likelihood_stderr", "elbo", "reconstruction", "kl",
                      "active_units", "n_examples", "k", "bounds", "bounds_stderr",
                      "khat_mean", "khat_above_0_7", "khat_worst"}
    assert s["bounds"] == {} and s["bounds_stderr"] == {}
    assert s["n_examples"] == linear_data.shape[0] and s["k"] == 100
    assert s["log_likelihood_stderr"] == pytest.approx(float(res.stderr.square().mean().sqrt() / math.sqrt(40)))
    assert s["elbo"] == pytest.approx(s["reconstruction"] - s["kl"])
    torch.manual_seed(0)
    assert evaluate(linear_model, linear_data, k=100) == s


def test_evaluation_leaves_model_mode_and_grads_alone(linear_model, linear_data):
    linear_model.train()
    res = log_likelihood(linear_model, linear_data[:3], k=10)
    assert linear_model.training
    assert not res.log_likelihood.requires_grad


def test_prior_proposal_is_far_noisier_and_more_biased(linear_model, linear_data):
    """Naive Monte Carlo from the prior is the same estimator with q = p(z) (seeds 002/003): at
    equal K=1000 on the exact model, its spread over 20 independent runs is about 10x that of
    importance sampling from the encoder (0.42 vs 0.04 nats), and its downward bias is large
    (-0.20 vs -0.0003 nats, averaged over 40 examples)."""
    exact = linear_model.log_prob(linear_data).detach()
    runs = {}
    for proposal in ("posterior", "prior"):
        reps = []
        for seed in range(20):
            torch.manual_seed(seed)
            reps.append(log_likelihood(linear_model, linear_data, k=1000, proposal=proposal).log_likelihood)
        runs[proposal] = torch.stack(reps)  # (20, 40)
    spread = {p: r.std(0).mean().item() for p, r in runs.items()}
    assert spread["prior"] > 5 * spread["posterior"], spread
    bias = {p: (r.mean(0) - exact).mean() for p, r in runs.items()}
    se = {p: (r.var(0).sum() / 20).sqrt() / 40 for p, r in runs.items()}  # se of the mean bias
    assert abs(bias["posterior"]) < 4.5 * se["posterior"]  # importance sampling: no visible bias
    assert bias["prior"] < -4.5 * se["prior"]  # the prior proposal: biased down, beyond its error
    with pytest.raises(ConfigError, match="posterior, prior"):
        log_likelihood(linear_model, linear_data, k=10, proposal="uniform")


# Pareto k-hat: the tail of the importance weights (Vehtari et al., "Pareto Smoothed Importance Sampling")


@pytest.mark.parametrize("tail", [None, 20])
@pytest.mark.parametrize("xi", [0.2, 0.5, 0.9])
def test_pareto_khat_recovers_the_tail_shape(xi, tail):
    """Weights w = U^(-xi) (Pareto with shape xi: exceedances over any threshold are generalized
    Pareto with shape xi), K = 10000 per example. The mean k-hat over 200 examples lies within 4
    standard errors of that mean (sd of k-hat across the examples / sqrt(200): 0.005-0.008 with
    the default tail M = 300, 0.014-0.019 with M = 20) of xi after the estimator's prior pull
    towards 0.5, (M xi + 5) / (M + 10)."""
    g = torch.Generator().manual_seed(int(10 * xi))
    k, b = 10_000, 200
    log_w = -xi * torch.rand(k, b, generator=g, dtype=torch.float64).log()  # (K, B)
    khat = pareto_khat(log_w, tail=tail)
    assert khat.shape == (b,) and khat.dtype == torch.float64
    m = tail or pareto_tail_size(k)
    assert m in (300, 20)
    expected = (m * xi + 10 * 0.5) / (m + 10)
    se = khat.std() / math.sqrt(b)
    assert abs(khat.mean() - expected) < 4 * se, (khat.mean(), expected, se)
    # a constant per example (log p(x), a normalizer) does not change k-hat, nor does float32
    shifted = log_w + 300 * torch.randn(1, b, generator=g, dtype=torch.float64)
    torch.testing.assert_close(pareto_khat(shifted, tail=tail), khat)
    torch.testing.assert_close(pareto_khat(log_w.float(), tail=tail), khat.float(), atol=1e-4, rtol=0)


def test_pareto_khat_is_small_for_light_tails_and_nan_when_undefined():
    g = torch.Generator().manual_seed(0)
    khat = pareto_khat(0.1 * torch.randn(10_000, 100, generator=g, dtype=torch.float64))
    assert (khat < 0.5).all(), khat.max()
    # fewer than 6 draws, or a flat tail (the largest M + 1 weights equal): nothing to fit
    assert pareto_khat(torch.randn(5, 3)).isnan().all()
    assert pareto_khat(torch.zeros(100, 2)).isnan().all()
    assert not pareto_khat(torch.randn(6, 3)).isnan().any()
    # tails wider than float64's range (700 nats) still give a finite, very large k-hat
    assert (pareto_khat(2000 * torch.randn(10_000, 4, generator=g, dtype=torch.float64)) > 1).all()
    with pytest.raises(ValueError, match="tail"):
        pareto_khat(torch.randn(100, 3), tail=100)


def _zhang_stephens_reference(log_w: np.ndarray) -> float:
    """k-hat of one example's log-weights (K,), written out from the papers one step at a time:
    tail M = ceil(min(K/5, 3 sqrt(K))); x = the M largest weights minus the (M+1)-th, ascending;
    Zhang & Stephens (2009): theta_j = 1/x_M + (1 - sqrt(G/(j - 1/2))) / (3 x_(floor(M/4 + 1/2))),
    G = 30 + floor(sqrt(M)), weighted by exp of the profile log-likelihood
    M (log(-theta/k(theta)) - k(theta) - 1), k(theta) = mean log(1 - theta x); then the PSIS prior."""
    w = np.sort(np.exp(log_w - log_w.max()))
    m = math.ceil(min(len(w) / 5, 3 * math.sqrt(len(w))))
    x = w[-m:] - w[-m - 1]
    g = 30 + math.floor(math.sqrt(m))
    thetas = [1 / x[-1] + (1 - math.sqrt(g / (j - 0.5))) / (3 * x[math.floor(m / 4 + 0.5) - 1]) for j in range(1, g + 1)]
    profile = []
    for theta in thetas:
        k = np.mean(np.log(1 - theta * x))
        profile.append(m * (math.log(-theta / k) - k - 1))
    weights = np.exp(np.array(profile) - max(profile))
    theta = float(np.sum(weights * np.array(thetas)) / np.sum(weights))
    k = float(np.mean(np.log(1 - theta * x)))
    return (m * k + 10 * 0.5) / (m + 10)


def test_pareto_khat_matches_a_one_example_reference():
    """The vectorized estimator equals the estimator written out per example (to rounding)."""
    g = torch.Generator().manual_seed(0)
    log_w = torch.cat([
        -0.7 * torch.rand(1000, 3, generator=g, dtype=torch.float64).log(),  # Pareto, shape 0.7
        0.8 * torch.randn(1000, 3, generator=g, dtype=torch.float64) + 40,  # log-normal weights
        torch.rand(1000, 2, generator=g, dtype=torch.float64).log(),  # bounded weights (shape -1)
    ], dim=1)  # fmt: skip
    expected = torch.tensor([_zhang_stephens_reference(c.numpy()) for c in log_w.T], dtype=torch.float64)
    torch.testing.assert_close(pareto_khat(log_w), expected, rtol=1e-9, atol=1e-9)


def test_khat_summary_keys():
    s = khat_summary(torch.tensor([0.1, 0.9, float("nan"), 0.75, 0.6, 0.2, 0.0]))
    assert s["khat_mean"] == pytest.approx(0.425)
    assert s["khat_above_0_7"] == pytest.approx(2 / 7)
    assert [w["index"] for w in s["khat_worst"]] == [1, 3, 4, 5, 0]
    assert s["khat_worst"][0]["khat"] == pytest.approx(0.9)
    undefined = khat_summary(torch.full((3,), float("nan")))
    assert math.isnan(undefined["khat_mean"]) and undefined["khat_worst"] == []


def test_khat_is_small_for_a_good_proposal(linear_model, linear_data):
    """The encoder of the fixture is wider than the posterior: bounded weights, k-hat well below
    0.5 (measured: mean -0.41, max 0.49 over 40 examples), and the standard error covers log p(x)."""
    torch.manual_seed(0)
    res = log_likelihood(linear_model, linear_data, k=5000, rows=10**6)
    s = summarize(res, 5000)
    assert res.khat.shape == (linear_data.shape[0],)
    assert (res.khat < 0.5).float().mean() >= 0.9, res.khat
    assert s["khat_above_0_7"] <= 0.05
    exact = linear_model.log_prob(linear_data).mean().item()
    assert abs(s["log_likelihood"] - exact) < 3 * s["log_likelihood_stderr"]


@pytest.mark.parametrize("rows", [1000, 10**6])
def test_khat_flags_a_too_narrow_proposal_whose_stderr_misleads(rows):
    """The mean-field encoder with its standard deviations scaled by 0.3: the weights have no
    finite variance (k-hat about 0.95 per example), and the reported standard error is far too
    small: the estimate sits about 15 standard errors below the exact log p(x)."""
    model = make_linear(mean_field=True)
    with torch.no_grad():
        model.enc_log_scale.add_(math.log(0.3))
    torch.manual_seed(1)
    x = model.marginal().sample((40,))
    torch.manual_seed(0)
    res = log_likelihood(model, x, k=5000, rows=rows)  # one example per pass, or all in one
    s = summarize(res, 5000)
    assert (res.khat > 0.7).float().mean() >= 0.8, res.khat
    assert s["khat_above_0_7"] >= 0.8 and s["khat_mean"] > 0.7
    exact = model.log_prob(x).detach()
    assert exact.mean().item() - s["log_likelihood"] > 5 * s["log_likelihood_stderr"]
    # per example, a calibrated error would leave |z| > 3 for 0.3% of them
    z = (res.log_likelihood - exact) / res.stderr
    assert (z.abs() > 3).float().mean() > 0.25
    assert s["khat_worst"][0]["khat"] == pytest.approx(res.khat.max().item())
    assert s["khat_worst"][0]["index"] == int(res.khat.argmax())


@pytest.mark.parametrize("k, rows", [(12, 40), (30, 20)])  # several examples a pass; one example in two chunks
@pytest.mark.parametrize("posterior, prior, layers, inference, proposal", [
    ("gaussian", "standard", 1, "amortized", "posterior"), ("iaf:2", "mog:3", 1, "amortized", "posterior"),
    ("full", "vamp:3", 1, "amortized", "posterior"), ("gaussian", "standard", 2, "amortized", "posterior"),
    ("gaussian", "standard", 1, "local", "posterior"), ("gaussian", "mog:3", 1, "amortized", "prior"),
])  # fmt: skip
def test_the_parts_of_torchruns_processes_are_one_processes_log_likelihood(posterior, prior, layers, inference,
                                                                            proposal, k, rows):  # fmt: skip
    """Each process's part (from the same generator state) is one process's result on its
    examples, the parts cover every example once in rank order, and every process ends in the
    random state one process ends in."""
    from vaelab.evaluation.evaluate import log_likelihood, log_likelihood_part
    from vaelab.runs import config as cfg
    from vaelab.runs.rundir import model_from_config

    config = cfg.build({"model": {"hidden": [8], "latent_dim": 2, "posterior": posterior, "prior": prior,
                                  "layers": layers, "inference": inference, "local_steps": 3}})  # fmt: skip
    torch.manual_seed(0)
    model = model_from_config(config, (6,))
    x = (torch.rand(7, 6, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    torch.manual_seed(5)
    whole = log_likelihood(model, x, k, rows=rows, bounds=(1, 3), proposal=proposal)
    after = torch.get_rng_state()
    for size in (2, 3, 8):
        covered = []
        for rank in range(size):
            torch.manual_seed(5)
            rows_of, part = log_likelihood_part(model, x, k, rank=rank, size=size, rows=rows, bounds=(1, 3),
                                                proposal=proposal)  # fmt: skip
            covered.extend(range(rows_of.start, rows_of.stop))
            for name in ("log_likelihood", "stderr", "reconstruction", "kl", "bounds", "bounds_stderr", "khat"):
                assert torch.equal(getattr(part, name), getattr(whole, name)[rows_of]), (size, rank, name)
            if rows_of.stop > rows_of.start:
                assert torch.equal(part.posterior_mean, whole.posterior_mean[rows_of])
            assert torch.equal(torch.get_rng_state(), after), (size, rank)
        assert covered == list(range(7))
