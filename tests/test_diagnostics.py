"""Posterior-collapse diagnostics: KL per dimension, mutual information, the collapse warning."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from torch.distributions import MultivariateNormal

from vaelab.distributions.observation import diagonal_gaussian
from vaelab.evaluation.diagnostics import (
    CollapseMonitor,
    collapsed,
    kl_per_dim,
    mutual_information,
    pairwise_log_q,
    posterior_summary,
)
from vaelab.models import build_model


def test_pairwise_log_q_matches_broadcast_log_prob():
    torch.manual_seed(0)
    q = diagonal_gaussian(torch.randn(30, 4), torch.rand(30, 4) + 0.2)
    z = torch.randn(25, 4)
    want = q.log_prob(z.unsqueeze(1))  # (25, 30)
    torch.testing.assert_close(pairwise_log_q(q, z), want, rtol=1e-5, atol=1e-4)
    full = MultivariateNormal(q.mean, covariance_matrix=torch.diag_embed(q.variance))
    torch.testing.assert_close(pairwise_log_q(full, z), want, rtol=1e-5, atol=1e-4)


def test_mutual_information_limits():
    """I(x; z) is 0 when q(z|x) ignores x and log N when the codes separate the N examples."""
    n, d = 200, 3
    torch.manual_seed(0)
    same = diagonal_gaussian(torch.zeros(n, d), torch.ones(n, d))
    assert mutual_information(same) == pytest.approx(0.0, abs=1e-6)
    apart = diagonal_gaussian(torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, d) * 10, torch.ones(n, d) * 0.1)
    assert mutual_information(apart) == pytest.approx(math.log(n), abs=1e-4)


def test_mutual_information_of_a_gaussian_channel():
    """x ~ N(0, 1) (many examples), q(z|x) = N(x, s^2): I = 0.5 log(1 + 1/s^2) in the limit of a
    large sample."""
    torch.manual_seed(1)
    s = 0.5
    x = torch.randn(4000, 1, dtype=torch.float64)
    q = diagonal_gaussian(x, torch.full_like(x, s))
    exact = 0.5 * math.log(1 + 1 / s**2)
    reps = torch.tensor([mutual_information(q) for _ in range(5)])
    se = reps.std() / math.sqrt(5)
    # Monte-Carlo error (one z per example) is covered by se; the finite-sample aggregate
    # posterior (a mixture of N Gaussians, not N(0, 1 + s^2)) adds a bias of order 0.01 at N = 4000
    assert abs(reps.mean().item() - exact) < 0.02 + 4.5 * se.item()


def test_kl_per_dim_sums_to_the_kl():
    torch.manual_seed(0)
    q = diagonal_gaussian(torch.randn(10, 5), torch.rand(10, 5) + 0.3)
    prior = diagonal_gaussian(torch.zeros(5), torch.ones(5))
    per = kl_per_dim(q, prior)
    assert per.shape == (5,)
    torch.testing.assert_close(per.sum(), torch.distributions.kl_divergence(q, prior).mean())
    full = MultivariateNormal(q.mean, covariance_matrix=torch.diag_embed(q.variance))
    assert kl_per_dim(full, prior) is None


def collapsed_vae():
    """A VAE whose encoder outputs exactly the prior for every x."""
    torch.manual_seed(0)
    model = build_model("vae", (1, 8, 8), hidden=(16,), latent_dim=3)
    with torch.no_grad():
        last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.zero_()
    return model


def informative_vae():
    torch.manual_seed(0)
    model = build_model("vae", (1, 8, 8), hidden=(16,), latent_dim=3)
    with torch.no_grad():
        last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(20)
    return model


def test_collapse_monitor_warns_once_on_a_collapse_that_lasts_to_the_end(caplog):
    x = (torch.rand(100, 1, 8, 8) < 0.5).float()
    monitor = CollapseMonitor()
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        records = [{"epoch": 1, **monitor(informative_vae(), x, epoch=1)}]
        records += [{"epoch": e, **monitor(collapsed_vae(), x, epoch=e)} for e in (2, 3, 4)]
        assert not caplog.records  # nothing while training: only the end tells a collapse that lasts
        monitor.finish(records)
    rec = records[-1]
    assert rec["active_units"] == 0 and rec["mutual_info"] == pytest.approx(0, abs=1e-6)
    assert rec["kl_per_dim"] == pytest.approx([0, 0, 0], abs=1e-6) and rec["posterior_kl"] == pytest.approx(0, abs=1e-6)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "posterior collapse since epoch 2" in warnings[0] and "--free-bits" in warnings[0]


@pytest.mark.parametrize("pattern", ["CCCII", "CCCCI", "IIIIC", "C"])
def test_a_collapse_training_recovers_from_is_no_warning(caplog, pattern):
    """C: a collapsed epoch, I: an informative one. A collapse early in training that is gone by
    the end (a fresh encoder is often uninformative), or one seen in the last epoch only, gives
    no warning."""
    x = (torch.rand(100, 1, 8, 8) < 0.5).float()
    monitor = CollapseMonitor()
    models = {"C": collapsed_vae(), "I": informative_vae()}
    records = [{"epoch": e, **monitor(models[c], x, epoch=e)} for e, c in enumerate(pattern, 1)]
    assert [collapsed(r) for r in records] == [c == "C" for c in pattern]
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        monitor.finish(records)
    assert not caplog.records


def test_collapse_is_read_from_older_records_too():
    """Records written before posterior_kl existed: the total KL is the sum of kl_per_dim."""
    assert collapsed({"epoch": 1, "active_units": 2, "kl_per_dim": [0.01, 0.02]})
    assert not collapsed({"epoch": 1, "active_units": 2, "kl_per_dim": [0.1, 0.2]})
    assert collapsed({"epoch": 1, "active_units": 0, "kl_per_dim": None})
    assert not collapsed({"epoch": 1, "train_loss": 3.0})  # a model without the monitor


def test_collapse_monitor_is_quiet_on_an_informative_posterior(caplog):
    torch.manual_seed(0)
    model = build_model("vae", (1, 8, 8), hidden=(16,), latent_dim=3)
    with torch.no_grad():
        last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(20)
    x = (torch.rand(200, 1, 8, 8) < 0.5).float()
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        rec = CollapseMonitor()(model, x, epoch=1)
    assert rec["active_units"] > 0 and rec["mutual_info"] > 0.5
    assert not caplog.records
    summary = posterior_summary(model, x)
    assert sum(summary["kl_per_dim"]) == pytest.approx(summary["kl"], rel=1e-5)



def test_mutual_information_estimate_can_dip_below_zero_but_never_exceeds_log_n():
    """The true I(x; z) of the empirical aggregate posterior lies in [0, log N]; the one-sample
    estimate does not stay above 0: when q(z|x) hardly depends on x it scatters around the tiny
    true value and is often negative, by far more than rounding (float64 here). log N bounds every
    estimate, since q(z_i) >= q(z_i|x_i) / N (the aggregate holds the example's own component)."""
    n, d = 100, 2
    near_collapse, separated = [], []
    for seed in range(50):
        torch.manual_seed(seed)
        q = diagonal_gaussian(0.05 * torch.randn(n, d, dtype=torch.float64), torch.ones(n, d, dtype=torch.float64))
        near_collapse.append(mutual_information(q))  # true I ~ 0.5 * 0.05^2 * d = 0.0025 nats
        q = diagonal_gaussian(3 * torch.randn(n, d, dtype=torch.float64), 0.05 * torch.rand(n, d, dtype=torch.float64) + 1e-3)
        separated.append(mutual_information(q))
    assert min(near_collapse) < -1e-3, "expected some clearly negative one-sample estimates"
    assert sum(e < 0 for e in near_collapse) >= 5
    assert max(near_collapse + separated) <= math.log(n) + 1e-9
    assert max(separated) > math.log(n) - 0.05  # the upper bound is attained by separated codes
