"""The Rényi bound (Li & Turner 2016): its two limits are bounds vaelab already has, it is a
lower bound of the exact log-likelihood in between and decreases in alpha, and it trains end to
end from the command line."""

from __future__ import annotations

import json

import pytest
import torch
from test_objectives import gap_and_se

from vaelab.cli import main
from vaelab.core.errors import ConfigError
from vaelab.inference.estimators import sample_particles
from vaelab.inference.objectives import OBJECTIVES, elbo, iwae
from vaelab.inference.renyi import renyi, renyi_bound
from vaelab.runs import config as cfg


def _value_and_grads(objective, model, x, seed, **options):
    model.zero_grad()
    torch.manual_seed(seed)
    result = objective(model, x, **options)
    result.objective.sum().backward()
    return result, [p.grad.clone() for p in model.parameters()]


def test_alpha_zero_is_iwaes_bound_with_its_gradient(linear_model, linear_data):
    """The same particles (same seed): L_0 is L_K exactly, value and reparameterization gradient."""
    model = linear_model.double()
    x = linear_data.double()
    r, r_grads = _value_and_grads(renyi, model, x, 3, alpha=0.0, k=7)
    i, i_grads = _value_and_grads(iwae, model, x, 3, k=7)
    torch.testing.assert_close(r.bound, i.bound, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r.objective, i.objective, rtol=1e-12, atol=1e-12)
    for a, b in zip(r_grads, i_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_alpha_one_is_the_monte_carlo_elbo_and_the_limit_is_continuous(linear_model, linear_data):
    """alpha = 1 is the mean log-weight (the ELBO with a Monte-Carlo KL, same particles), and
    alpha -> 1 approaches it: the difference shrinks in proportion to 1 - alpha (first-order term
    (1 - alpha) Var_k[log w] / 2)."""
    model = linear_model.double()
    x = linear_data.double()
    one, one_grads = _value_and_grads(renyi, model, x, 5, alpha=1.0, k=6)
    mc, mc_grads = _value_and_grads(elbo, model, x, 5, k=6, kl="mc")
    torch.testing.assert_close(one.bound, mc.bound, rtol=1e-12, atol=1e-12)
    for a, b in zip(one_grads, mc_grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.manual_seed(5)
    lw = sample_particles(model, x, 6).log_weights.detach()
    half_var = lw.var(0, unbiased=False) / 2
    for eps in (1e-2, 1e-3, 1e-4):
        gap = renyi_bound(lw, 1 - eps) - renyi_bound(lw, 1.0)
        torch.testing.assert_close(gap / eps, half_var, rtol=10 * eps, atol=1e-9)


def test_the_bound_is_below_the_exact_log_likelihood_and_decreases_in_alpha(linear_model, linear_data):
    gaps = {}
    for alpha in (0.0, 0.5, 1.0):
        gap, se = gap_and_se(linear_model, linear_data, "renyi", alpha=alpha, k=5)
        assert gap > -3 * se, (alpha, gap, se)
        gaps[alpha] = gap
    # on the same particles the estimate is non-increasing in alpha (power mean inequality)
    torch.manual_seed(0)
    lw = sample_particles(linear_model, linear_data, 5).log_weights.detach()
    values = [renyi_bound(lw, a) for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all((a >= b - 1e-6).all() for a, b in zip(values, values[1:]))
    assert gaps[0.0] < gaps[1.0]


def test_the_objective_declares_and_checks_what_it_supports(linear_model, linear_data):
    assert "renyi" in OBJECTIVES and OBJECTIVES["renyi"].grad_estimators == ("reparam",)
    with pytest.raises(ConfigError, match="dreg is not available for objective= renyi"):
        renyi(linear_model, linear_data, grad_estimator="dreg")
    with pytest.raises(ConfigError, match=r"alpha= for renyi must be in \[0, 1\]"):
        renyi(linear_model, linear_data, alpha=1.5)
    # the configuration refuses, in one line, what the objective does not take (README: "reparam only, no free bits")
    for train, message in (({"grad_estimator": "stl"}, "stl is not available for objective= renyi"),
                           ({"free_bits": 1.0}, "free_bits= is not used by objective= renyi"),
                           ({"kl": "mc"}, "kl= is not used by objective= renyi")):  # fmt: skip
        with pytest.raises(ConfigError, match=message) as refused:
            cfg.build({"data": {"data": "digits"}, "train": {"objective": "renyi", **train}})
        assert "\n" not in str(refused.value)


def test_renyi_trains_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "r"
    args = ["train", "--data", "digits", "--binarize", "threshold", "--limit", "200", "--hidden", "16",
            "--latent-dim", "2", "--epochs", "1", "--objective", "renyi", "--alpha", "0.3", "--k", "4", "--out", str(run), "--quiet"]  # fmt: skip
    assert main(args) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["objective"] == "renyi" and config["train"]["alpha"] == 0.3
    capsys.readouterr()
    assert main(["train", "--data", "digits", "--objective", "iwae", "--alpha", "0.3", "--out", str(tmp_path / "x")]) == 2
    assert "--alpha is not used by --objective iwae" in capsys.readouterr().err
