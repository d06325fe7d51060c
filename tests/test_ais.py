"""Annealed importance sampling and bidirectional Monte Carlo against the exact log-likelihood of
the linear-Gaussian model, and the CLI's --method ais and bdmc."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import make_linear
from test_cli import SMALL, assert_one_line_error, run_cli

from vaelab.cli.main import main
from vaelab.core.errors import ConfigError
from vaelab.evaluation.ais import ANNEALING, ais, bdmc, reverse_ais, summarize_bdmc
from vaelab.models.linear import LinearGaussian
from vaelab.runs import config as cfg
from vaelab.runs.rundir import model_from_config


def _mean_se(stderr: torch.Tensor) -> float:
    """Standard error of a mean over examples from independent per-example errors."""
    return float(stderr.square().sum().sqrt() / stderr.shape[0])


# Allowance for the bias of AIS, which its across-chain standard error does not include. Measured
# on this model (40 examples, 16 chains, 5 leapfrog steps, mean of 4 seeds, nats): from the prior
# -1.73 at 3 steps, -0.13 at 30, -0.013 at 200, -0.007 at 1000; from q(z|x) +0.004, +0.013, -0.001,
# -0.002 (each within one standard error). Between 200 and 1000 steps it is half of this or less.
BIAS = 0.03


@pytest.mark.parametrize("start, rows", [("prior", 1000), ("posterior", 160)])
def test_ais_matches_the_exact_log_likelihood(linear_model, linear_data, start, rows):
    """Within 3 standard errors (plus the bias allowance) on the mean over examples and 4.5 per
    example; rows=160 with 16 chains runs 10 examples per pass, so the passes are checked too."""
    res = ais(linear_model, linear_data, steps=500, chains=16, leapfrog=5, start=start, rows=rows, seed=0)
    exact = linear_model.log_prob(linear_data).detach()
    se = _mean_se(res.stderr)
    assert abs(float(res.log_likelihood.mean() - exact.mean())) < 3 * se + BIAS, (res.log_likelihood.mean(), exact.mean(), se)
    assert ((res.log_likelihood - exact).abs() / (res.stderr + BIAS)).max() < 4.5
    assert res.log_weights.shape == (16, 40) and res.step_size.shape == (40,)
    assert ((res.acceptance_rate - 0.65).abs() < 0.15).all(), res.acceptance_rate


def test_ais_is_a_lower_bound_that_rises_with_steps(linear_model, linear_data):
    """From the prior with few steps AIS sits clearly below log p(x) (a stochastic lower bound);
    each step count up to 300 raises the mean beyond the standard errors, and the remaining gap
    at 300 steps is a small fraction of the gap at 3."""
    exact = float(linear_model.log_prob(linear_data).mean().detach())
    means, errors = [], []
    for steps in (1, 3, 10, 300):
        res = ais(linear_model, linear_data, steps=steps, chains=8, leapfrog=5, seed=steps)
        means.append(float(res.log_likelihood.mean()))
        errors.append(_mean_se(res.stderr))
    for (lo, se_lo), (hi, se_hi) in zip(zip(means, errors), zip(means[1:], errors[1:])):
        assert hi - lo > 2 * math.hypot(se_lo, se_hi), (means, errors)
    assert exact - means[0] > 3 * errors[0]  # below: the lower bound in expectation
    assert exact - means[-1] < 3 * errors[-1] + BIAS
    assert exact - means[-1] < (exact - means[1]) / 5


def test_bdmc_brackets_the_exact_log_likelihood_and_its_gap_shrinks():
    """ais_lower <= log p(x) <= ais_upper for the means over simulated examples (within 3
    standard errors), the gap is positive, and it shrinks several-fold from 3 to 100 steps."""
    model = make_linear()
    gaps = []
    for steps in (3, 100):
        res = bdmc(model, 40, steps=steps, chains=8, leapfrog=5, seed=1)
        exact = model.log_prob(res.x).detach()
        # the simulated data are draws from p(x), so the exact values are those of these very x
        lo, up = res.lower, res.upper
        assert float(lo.log_likelihood.mean() - exact.mean()) < 3 * _mean_se(lo.stderr)
        assert float(up.log_likelihood.mean() - exact.mean()) > -3 * _mean_se(up.stderr)
        summary = summarize_bdmc(res)
        assert summary["bdmc_gap"] == pytest.approx(summary["ais_upper"] - summary["ais_lower"])
        assert summary["bdmc_gap"] > 0
        gaps.append(summary["bdmc_gap"])
    assert gaps[1] < gaps[0] / 5, gaps


def test_bdmc_reverse_chain_starts_from_the_generating_latents():
    model = make_linear()
    res = bdmc(model, 5, steps=4, chains=3, leapfrog=2, seed=0)
    assert res.x.shape == (5, 6) and res.z.shape == (5, 3)
    assert res.upper.log_weights.shape == (3, 5)
    # with one step, reverse AIS is the single ratio p(z*) / p(x, z*) of the exact sample
    one = bdmc(model, 5, steps=1, chains=3, leapfrog=2, seed=0)
    expected = model.decode(one.z).log_prob(one.x).detach()  # -log w_rev = log p(x|z*)
    torch.testing.assert_close(one.upper.log_likelihood, expected)


def _one_d_model() -> LinearGaussian:
    """x = 1.5 z - 0.3 + 0.7 eps: one latent, one observed dimension, p(x) and p(z|x) exact."""
    return LinearGaussian(torch.tensor([[1.5]], dtype=torch.float64), torch.tensor([-0.3], dtype=torch.float64), 0.7)


def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


@pytest.mark.parametrize("steps", [10, 100])
def test_ais_weights_are_unbiased_forward_and_reverse(steps):
    """E[w] = p(x) for forward AIS and E[w_rev] = 1 / p(x) for reverse AIS from exact posterior
    draws, within 3 standard errors over 20,000 independent one-chain runs for one x. With the step
    size adapted from the weighted chain itself, 100 steps gave E[w] / p(x) = 1.056 +- 0.002 and
    E[w_rev] p(x) = 0.940 +- 0.002, and 10 steps E[w_rev] p(x) = 0.963 +- 0.011."""
    model, replicas = _one_d_model(), 20_000
    x = torch.tensor([[0.8]], dtype=torch.float64).expand(replicas, 1)
    log_p = float(model.log_prob(x[:1]).detach())
    forward = ais(model, x, steps=steps, chains=1, leapfrog=10, rows=replicas, seed=1)
    torch.manual_seed(2)
    z = model.posterior(x).sample()  # (replicas, 1), exact draws from p(z|x)
    reverse = reverse_ais(model, x, z, steps=steps, chains=1, leapfrog=10, rows=replicas, seed=3)
    for name, ratio in (("E[w]/p(x)", (forward.log_weights[0] - log_p).exp()),
                        ("E[w_rev] p(x)", (reverse.log_weights[0] + log_p).exp())):  # fmt: skip
        mean, se = _mean_and_se(ratio)
        assert abs(mean - 1) < 3 * se, (name, steps, mean, se)
    assert (forward.acceptance_rate > 0.5).all()  # the frozen steps still move the chains


def test_pilot_step_sizes_do_not_depend_on_the_weighted_chains():
    """The weighted chains' step sizes come from the pilot alone: changing the reverse chains'
    starting points changes no step size, and the forward and reverse runs of BDMC report the same."""
    model = make_linear()
    x = model.marginal().sample((6,))
    z = model.posterior(x).sample()
    a = reverse_ais(model, x, z, steps=20, chains=3, leapfrog=2, seed=0)
    b = reverse_ais(model, x, z + 5.0, steps=20, chains=3, leapfrog=2, seed=0)
    torch.testing.assert_close(a.step_size, b.step_size, rtol=0, atol=0)
    assert not torch.equal(a.log_weights, b.log_weights)
    res = bdmc(model, 6, steps=20, chains=3, leapfrog=2, seed=0)
    torch.testing.assert_close(res.lower.step_size, res.upper.step_size, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="one posterior sample per example"):
        reverse_ais(model, x, z[:3])
    with pytest.raises(ConfigError, match="pilot_chains"):
        ais(model, x, pilot_chains=0)


def test_bdmc_upper_bound_error_covers_the_draw_of_the_exact_latent():
    """The reverse chains of an example share its one z*, so their spread misses the z* draw. On
    100 simulated examples at 3 steps, z* is redrawn exactly 200 times per example: the spread of
    the mean upper bound over the redraws is the true error given the examples. The reported error
    must not fall short of it beyond the noise of the two spreads (relative standard error about
    1 / sqrt(2 (R - 1)) each, 3 combined errors: 0.7); the chains' delta method gave 0.45-0.50."""
    model, n, redraws = _one_d_model(), 100, 200
    for seed in (0, 1):
        res = bdmc(model, n, steps=3, chains=8, leapfrog=5, seed=seed)
        summary = summarize_bdmc(res)
        assert summary["ais_upper_stderr"] == summary["bdmc_gap_stderr"]
        x = res.x.repeat(redraws, 1)
        torch.manual_seed(seed + 10)
        z = model.posterior(x).sample()
        upper = reverse_ais(model, x, z, steps=3, chains=8, leapfrog=5, rows=8 * n * redraws, seed=seed + 20)
        true = float(upper.log_likelihood.view(redraws, n).mean(1).std())
        floor = 1 - 3 * math.sqrt(2) / math.sqrt(2 * (redraws - 1))
        assert summary["ais_upper_stderr"] > floor * true, (seed, summary["ais_upper_stderr"], true)
    one = summarize_bdmc(bdmc(model, 1, steps=3, chains=2, leapfrog=2, seed=0))
    assert math.isnan(one["ais_upper_stderr"]) and math.isnan(one["bdmc_gap_stderr"])


@pytest.mark.parametrize("target", [0.4, 0.9])
def test_step_size_adapts_towards_the_target_acceptance(linear_model, linear_data, target):
    res = ais(linear_model, linear_data[:10], steps=150, chains=8, leapfrog=5, target_accept=target, seed=0)
    assert ((res.acceptance_rate - target).abs() < 0.15).all(), res.acceptance_rate


def test_one_step_is_importance_sampling_with_the_chains_as_particles(linear_model, linear_data):
    """steps=1 makes no transition: the weights are p(x, z) / q(z|x) at z ~ q(z|x)."""
    res = ais(linear_model, linear_data, steps=1, chains=5, start="posterior", seed=3)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(3)
        q = linear_model.encode(linear_data)
        z = q.sample((5,))
        log_w = linear_model.decode(z).log_prob(linear_data) + linear_model.prior().log_prob(z) - q.log_prob(z)
    torch.testing.assert_close(res.log_weights, log_w)
    assert res.acceptance_rate.isnan().all()


def test_seed_reproduces_and_leaves_the_callers_stream_alone(linear_model, linear_data):
    torch.manual_seed(5)
    before = torch.random.get_rng_state()
    a = ais(linear_model, linear_data[:4], steps=5, chains=3, leapfrog=2, seed=11)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = ais(linear_model, linear_data[:4], steps=5, chains=3, leapfrog=2, seed=11)
    torch.testing.assert_close(a.log_weights, b.log_weights, rtol=0, atol=0)
    assert a.log_weights.dtype == torch.float64  # a float64 model runs in float64


def test_ais_creates_no_tensor_off_the_inputs_device():
    """On the ``meta`` device a tensor created on the CPU by mistake fails; float32 stays float32."""
    model = make_linear().float().to("meta")
    x = torch.empty(5, 6, device="meta")
    res = ais(model, x, steps=3, chains=2, leapfrog=2, start="posterior", rows=4, seed=0)
    assert all(t.device.type == "meta" and t.dtype == torch.float32 for t in res)
    lower, upper = bdmc(model, 3, steps=3, chains=2, leapfrog=2, seed=0)[2:]
    assert all(t.device.type == "meta" for t in (*lower, *upper))


def test_bad_options_are_refused(linear_model, linear_data):
    for options, needle in (({"steps": 0}, "steps"), ({"chains": 0}, "chains"), ({"leapfrog": 0}, "leapfrog"),
                            ({"start": "middle"}, "prior, posterior"), ({"schedule": "cosine"}, "linear, sigmoid"),
                            ({"target_accept": 1.0}, "target_accept"), ({"step_size": 0.0}, "step_size")):  # fmt: skip
        with pytest.raises(ConfigError, match=needle):
            ais(linear_model, linear_data, **options)


def test_a_planar_flow_cannot_start_the_annealing(linear_data):
    config = cfg.build({"model": {"likelihood": "gaussian", "posterior": "planar:2", "hidden": [8], "latent_dim": 2}})
    model = model_from_config(config, (6,)).double()
    with pytest.raises(ConfigError, match="start from the prior") as err:
        ais(model, linear_data, steps=2, chains=2, start="posterior")
    assert "\n" not in str(err.value)
    assert ais(model, linear_data, steps=2, chains=2, start="prior", seed=0).log_likelihood.isfinite().all()


def test_schedules_run_from_zero_to_one():
    for name in ANNEALING.names():
        betas = ANNEALING[name](10)
        assert betas[0] == 0 and betas[-1] == 1 and len(betas) == 11, name
        assert all(a < b for a, b in zip(betas, betas[1:])), name


# -- command line -----------------------------------------------------------------------------

AIS_KEYS = {"log_likelihood", "log_likelihood_stderr", "method", "steps", "chains", "acceptance_rate",
            "n_examples", "leapfrog", "ais_start", "step_size"}  # fmt: skip
BDMC_KEYS = {"ais_lower", "ais_upper", "bdmc_gap", "bdmc_gap_stderr", "method", "steps", "chains", "acceptance_rate", "n_examples",
             "leapfrog", "ais_start", "step_size", "ais_lower_stderr", "ais_upper_stderr"}  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--data", "digits", "--binarize", "threshold", "--out", str(out), *SMALL]) == 0
    return out


def test_evaluate_method_ais_json_and_table(run_dir, capsys):
    args = ["evaluate", str(run_dir), "--method", "ais", "--steps", "20", "--chains", "4", "--limit", "10"]
    assert main([*args, "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == AIS_KEYS
    assert out["method"] == "ais" and out["steps"] == 20 and out["chains"] == 4 and out["n_examples"] == 10
    assert math.isfinite(out["log_likelihood"]) and out["log_likelihood_stderr"] > 0
    assert 0 < out["acceptance_rate"] < 1
    assert main([*args, "--ais-start", "posterior", "--quiet"]) == 0
    text = capsys.readouterr().out
    for words in ("log-likelihood", "+-", "AIS", "acceptance rate", "from q(z|x)"):
        assert words in text


def test_evaluate_method_bdmc_json_and_table(run_dir, capsys):
    args = ["evaluate", str(run_dir), "--method", "bdmc", "--steps", "20", "--chains", "4", "--limit", "10"]
    assert main([*args, "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == BDMC_KEYS
    assert out["method"] == "bdmc" and out["n_examples"] == 10
    assert out["bdmc_gap"] == pytest.approx(out["ais_upper"] - out["ais_lower"])
    assert out["ais_lower"] < out["ais_upper"]
    assert main([*args, "--quiet"]) == 0
    text = capsys.readouterr().out
    for words in ("lower bound", "upper bound", "BDMC gap", "acceptance rate", "covers the draw"):
        assert words in text


def test_gaps_with_ais(run_dir, capsys):
    args = ["gaps", str(run_dir), "--method", "ais", "--ais-steps", "20", "--chains", "4", "--limit", "5",
            "--k", "50", "--steps", "10"]  # fmt: skip
    assert main([*args, "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == "ais" and out["ais_steps"] == 20 and out["chains"] == 4
    assert out["approximation_gap"] == pytest.approx(out["log_likelihood"] - out["local_elbo"])
    assert math.isfinite(out["log_likelihood_is"]) and 0 < out["acceptance_rate"] < 1
    assert main([*args, "--quiet"]) == 0
    assert "AIS (20 steps x 4 chains" in capsys.readouterr().out


def test_ais_options_are_checked(run_dir):
    run = str(run_dir)
    for args, needles in (
        (["--method", "ais", "--bounds", "5"], ("--bounds", "importance-sampling")),
        (["--method", "bdmc", "--proposal", "prior"], ("--proposal", "importance-sampling")),
        (["--method", "ais", "--k", "100"], ("--k", "importance-sampling")),
        (["--method", "ais", "--steps", "0"], ("--steps", "at least 1")),
        (["--method", "bdmc", "--chains", "0"], ("--chains", "at least 1")),
        (["--method", "ais", "--leapfrog", "0"], ("--leapfrog", "at least 1")),
        (["--steps", "50"], ("--steps", "--method ais")),
        (["--method", "hmc"], ("invalid choice",)),
    ):
        assert_one_line_error(run_cli("evaluate", run, *args), *needles)
    assert_one_line_error(run_cli("gaps", run, "--chains", "4"), "--chains", "--method ais")
    assert_one_line_error(run_cli("gaps", run, "--method", "ais", "--ais-steps", "0"), "--ais-steps")


def test_ais_on_a_vqvae_run_is_refused(tmp_path):
    from test_vqvae import _train_tiny

    run = str(_train_tiny(tmp_path, epochs=1))
    for method in ("ais", "bdmc"):
        assert_one_line_error(run_cli("evaluate", run, "--method", method), "--model vqvae", "--method is")
    r = run_cli("evaluate", run, "--limit", "5", "--json")  # the VQ-VAE's own evaluation still works
    assert r.returncode == 0 and json.loads(r.stdout)["log_likelihood"] is None


FAMILIES = [(posterior, prior) for posterior in ("gaussian", "full", "iaf:2") for prior in ("standard", "mog:3", "vamp:3")
            if not (posterior == "iaf:2" and prior == "vamp:3")]  # fmt: skip


@pytest.mark.parametrize("posterior, prior", FAMILIES)
def test_ais_agrees_with_importance_sampling_for_every_family(posterior, prior):
    """On a tiny float64 VAE of each posterior and prior family, AIS from either start agrees with
    importance sampling at K=2000 within 4 combined standard errors plus the bias allowance."""
    from vaelab.evaluation.evaluate import log_likelihood

    config = cfg.build({"model": {"likelihood": "gaussian", "obs_precision": 4.0, "posterior": posterior, "prior": prior,
                                  "hidden": [8], "latent_dim": 2}})  # fmt: skip
    torch.manual_seed(0)
    model = model_from_config(config, (6,)).double()
    x = torch.randn(6, 6, dtype=torch.float64) * 0.3
    reference = log_likelihood(model, x, k=2000)
    for start in ("prior", "posterior"):
        res = ais(model, x, steps=100, chains=8, leapfrog=5, start=start, seed=0)
        assert res.log_likelihood.dtype == torch.float64
        gap = (res.log_likelihood - reference.log_likelihood).abs()
        assert (gap < 4 * torch.hypot(res.stderr, reference.stderr) + BIAS).all(), (start, gap, res.stderr)


def test_gaps_takes_log_p_from_ais(linear_model, linear_data):
    from vaelab.evaluation.gaps import gaps

    x = linear_data[:10]
    torch.manual_seed(0)
    out = gaps(linear_model, x, k=500, steps=20, method="ais", ais_options={"steps": 300, "chains": 8, "leapfrog": 5})
    exact = float(linear_model.log_prob(x).mean().detach())
    assert abs(out["log_likelihood"] - exact) < 3 * out["log_likelihood_stderr"] + BIAS
    assert out["approximation_gap"] == pytest.approx(out["log_likelihood"] - out["local_elbo"])
    assert {"log_likelihood_is", "acceptance_rate"} <= set(out)
    with pytest.raises(ConfigError, match="is, ais"):
        gaps(linear_model, x, method="hmc")
    with pytest.raises(ConfigError, match="method='ais'"):
        gaps(linear_model, x, ais_options={"steps": 3})
