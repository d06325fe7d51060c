"""The two-stochastic-layer VAE (``--layers 2``, Burda et al. 2015): its densities written out by
hand, its gradient paths, training with every objective, the evaluators, and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from test_cli import assert_one_line_error, run_cli

import vaelab
from vaelab.cli.main import main
from vaelab.distributions.observation import stop_gradient
from vaelab.evaluation.ais import ais
from vaelab.evaluation.evaluate import evaluate
from vaelab.inference.objectives import get_objective
from vaelab.models.two_layer import TwoLayerPosterior, TwoLayerPrior, TwoLayerVAE
from vaelab.runs import config as cfg
from vaelab.runs.rundir import model_from_config

EVENT = (1, 8, 8)  # digits


def _model(latent_dim: int = 3, hidden=(16,), seed: int = 0, **model) -> TwoLayerVAE:
    config = cfg.build({"model": {"layers": 2, "latent_dim": latent_dim, "hidden": list(hidden), **model}})
    torch.manual_seed(seed)
    return model_from_config(config, EVENT)


def _x(n: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *EVENT, generator=g) < 0.4).float()


def _log_normal(x, mean, scale):
    return (-0.5 * ((x - mean) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_default_sizes_are_burdas_and_shapes_are_those_of_one_latent_vector():
    model = model_from_config(cfg.build({"model": {"layers": 2}}), (784,))
    assert isinstance(model, TwoLayerVAE) and model.layer_sizes == (100, 50) and model.latent_dim == 150
    widths = [m.out_features for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [200, 200, 200]  # 784-200-200-(mu1, log var1) of 100
    assert [m.out_features for m in model.inference2.modules() if isinstance(m, torch.nn.Linear)] == [100, 100, 100]
    assert [m.out_features for m in model.generative1.modules() if isinstance(m, torch.nn.Linear)] == [100, 100, 200]
    assert isinstance(model.encoder[1][1], torch.nn.Tanh)
    x = torch.rand(4, 784).bernoulli()
    q, prior = model.encode(x), model.prior()
    assert isinstance(q, TwoLayerPosterior) and isinstance(prior, TwoLayerPrior)
    z = q.rsample((3,))
    assert z.shape == (3, 4, 150) and q.batch_shape == (4,) and q.event_shape == (150,)
    assert q.log_prob(z).shape == (3, 4) and prior.log_prob(z).shape == (3, 4)
    assert model.decode(z).log_prob(x).shape == (3, 4)
    assert q.mean.shape == (4, 150) and prior.sample((7,)).shape == (7, 150)
    # the decoder reads z1 only
    z2_changed = torch.cat([z[..., :100], z[..., 100:] + 5.0], -1)
    torch.testing.assert_close(model.decode(z2_changed).log_prob(x), model.decode(z).log_prob(x))


def test_densities_are_the_sums_of_the_two_gaussian_layers():
    model = _model().double()
    x = _x().double()
    d1 = model.layer_sizes[0]
    z = torch.randn(2, 5, sum(model.layer_sizes), dtype=torch.float64)
    z1, z2 = z[..., :d1], z[..., d1:]
    with torch.no_grad():
        h = model.encoder(x)
        mu1, s1 = h[:, :d1], (0.5 * h[:, d1:]).exp()
        out2 = model.inference2.net(z1)
        mu2, s2 = out2[..., :3], (0.5 * out2[..., 3:]).exp()
        want_q = _log_normal(z1, mu1, s1) + _log_normal(z2, mu2, s2)
        outp = model.generative1.net(z2)
        want_p = _log_normal(z2, torch.zeros(()), torch.ones(())) + _log_normal(z1, outp[..., :d1], (0.5 * outp[..., d1:]).exp())
        torch.testing.assert_close(model.encode(x).log_prob(z), want_q)
        torch.testing.assert_close(model.prior().log_prob(z), want_p)
        # ancestral means
        mean = model.encode(x).mean
        torch.testing.assert_close(mean[:, :d1], mu1)
        torch.testing.assert_close(mean[:, d1:], model.inference2.net(mu1)[:, :3])
    # and their gradients with respect to every parameter (a detached scale would pass the values)
    h = model.encoder(x)
    out2 = model.inference2.net(z1)
    want_q = _log_normal(z1, h[:, :d1], (0.5 * h[:, d1:]).exp()) + _log_normal(z2, out2[..., :3], (0.5 * out2[..., 3:]).exp())
    outp = model.generative1.net(z2)
    want_p = _log_normal(z1, outp[..., :d1], (0.5 * outp[..., d1:]).exp())
    params = [*model.encoder.parameters(), *model.inference2.parameters(), *model.generative1.parameters()]
    got = torch.autograd.grad((model.encode(x).log_prob(z) + model.prior().log_prob(z)).sum(), params)
    want = torch.autograd.grad((want_q + want_p).sum(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_ancestral_samples_have_the_conditional_moments():
    model = _model(latent_dim=2).double()
    x = _x(1).double()
    q = model.encode(x)
    torch.manual_seed(0)
    z = q.sample((20000,))[:, 0]  # (N, 6)
    d1 = model.layer_sizes[0]
    torch.testing.assert_close(z[:, :d1].mean(0), q.mean1[0], atol=0.05, rtol=0)
    with torch.no_grad():
        mu2, s2 = model.inference2(z[:, :d1])
    r = (z[:, d1:] - mu2) / s2  # standardized second layer: N(0, 1)
    assert r.mean(0).abs().max() < 0.05 and (r.std(0) - 1).abs().max() < 0.05
    zp = model.prior().sample((20000,))
    assert zp[:, d1:].mean(0).abs().max() < 0.05 and (zp[:, d1:].std(0) - 1).abs().max() < 0.05


def test_rsample_is_reparameterized_through_both_inference_networks():
    model = _model()
    q = model.encode(_x())
    q.rsample((2,)).square().sum().backward()
    for module in (model.encoder, model.inference2):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    assert all(p.grad is None for p in model.generative1.parameters())


def test_stop_gradient_keeps_the_value_and_passes_gradient_only_through_z():
    model = _model().double()
    x = _x().double()
    q = model.encode(x)
    z = q.rsample((2,))
    detached = stop_gradient(q)
    torch.testing.assert_close(detached.log_prob(z), q.log_prob(z))
    # at a fixed z, the detached density gives no parameter any gradient ...
    value = detached.log_prob(z.detach()).sum()
    assert not value.requires_grad
    # ... and through z its gradient is the path derivative: d log q / d z times dz / d phi
    model.zero_grad()
    detached.log_prob(z).sum().backward(retain_graph=True)
    path = [p.grad.clone() for p in [*model.encoder.parameters(), *model.inference2.parameters()]]
    model.zero_grad()
    zz = z.detach().requires_grad_()
    (g,) = torch.autograd.grad(q.log_prob(zz).sum(), zz, retain_graph=True)
    model.zero_grad()
    (z * g).sum().backward(retain_graph=True)
    for a, p in zip(path, [*model.encoder.parameters(), *model.inference2.parameters()]):
        torch.testing.assert_close(a, p.grad)
    # while the plain density has a score term as well: a different gradient
    model.zero_grad()
    q.log_prob(z).sum().backward()
    assert not torch.allclose(path[-1], list(model.inference2.parameters())[-1].grad)


@pytest.mark.parametrize("objective", ["elbo", "iwae", "miwae", "ciwae", "piwae"])
def test_every_objective_trains_the_two_layer_model(objective):
    x = vaelab.load_dataset("digits", split="train", binarize="threshold", limit=200)
    model = _model(latent_dim=4, hidden=(32,))
    options = {"k": 2, "m": 2} if objective in ("miwae", "piwae") else {"k": 3}
    f = get_objective(objective, **options)
    evaluate_bound = get_objective("iwae", k=5)
    torch.manual_seed(0)
    with torch.no_grad():
        before = evaluate_bound(model, x).bound.mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        opt.zero_grad()
        (-f(model, x).objective.mean()).backward()
        opt.step()
    torch.manual_seed(0)
    with torch.no_grad():
        after = evaluate_bound(model, x).bound.mean().item()
    assert math.isfinite(after) and after > before + 1.0, (before, after)


def test_importance_sampling_is_above_the_elbo_and_ais_runs():
    model = _model(latent_dim=3, hidden=(16,)).eval()
    x = vaelab.load_dataset("digits", split="test", binarize="threshold", limit=20)
    torch.manual_seed(0)
    out = evaluate(model, x, k=200, bounds=(1, 10))
    assert out["log_likelihood"] >= out["elbo"]
    assert out["bounds"]["10"] >= out["bounds"]["1"]
    assert out["active_units_per_layer"] and len(out["active_units_per_layer"]) == 2
    assert sum(out["active_units_per_layer"]) == out["active_units"]
    prior_is = evaluate(model, x, k=200, proposal="prior")
    assert math.isfinite(prior_is["log_likelihood"])
    for start in ("prior", "posterior"):
        res = ais(model, x[:5], steps=10, chains=4, leapfrog=2, start=start, seed=0)
        assert res.log_likelihood.shape == (5,) and torch.isfinite(res.log_likelihood).all()


@pytest.fixture(scope="module")
def two_layer_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "two"
    assert main(["train", "--data", "digits", "--binarize", "threshold", "--layers", "2", "--latent-dim", "3",
                 "--hidden", "16", "--epochs", "1", "--limit", "200", "--objective", "iwae", "--k", "3",
                 "--grad-estimator", "dreg", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    return out


def test_cli_trains_evaluates_samples_and_reconstructs(two_layer_run, capsys):
    assert json.loads((two_layer_run / "config.json").read_text())["model"]["layers"] == 2
    assert main(["evaluate", str(two_layer_run), "--k", "50", "--limit", "20", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["active_units_per_layer"]) == 2 and sum(out["active_units_per_layer"]) == out["active_units"]
    assert out["elbo"] <= out["log_likelihood"] + 3 * out["log_likelihood_stderr"]
    assert main(["evaluate", str(two_layer_run), "--k", "10", "--limit", "5", "--quiet"]) == 0
    assert "per layer" in capsys.readouterr().out
    assert main(["evaluate", str(two_layer_run), "--method", "ais", "--steps", "5", "--limit", "3", "--json",
                 "--quiet"]) == 0  # fmt: skip
    assert math.isfinite(json.loads(capsys.readouterr().out)["log_likelihood"])
    for command in ("sample", "reconstruct"):
        path = two_layer_run / f"{command}-test.png"
        assert main([command, str(two_layer_run), "-n", "4", "--output", str(path)]) == 0
        assert path.stat().st_size > 0
    model = vaelab.load(two_layer_run)
    assert isinstance(model, TwoLayerVAE)
    # the per-example fit of the inference gaps is for one stochastic layer: refused, not a traceback
    assert_one_line_error(run_cli("gaps", str(two_layer_run), "--limit", "3"), "--layers 2")


@pytest.mark.parametrize("flags, needle", [
    (["--posterior", "full"], "--posterior gaussian"),
    (["--prior", "mog:3"], "--prior standard"),
    (["--inference", "local"], "--inference amortized"),
    (["--net", "conv"], "--net mlp"),
    (["--free-bits", "1"], "--free-bits"),
    (["--layers", "3"], "1 or 2"),
])  # fmt: skip
def test_refusals_are_one_line(tmp_path, flags, needle):
    layers = [] if "--layers" in flags else ["--layers", "2"]
    assert_one_line_error(run_cli("train", *layers, *flags, "--out", str(tmp_path / "r")), needle)


def test_vqvae_refuses_layers(tmp_path):
    assert_one_line_error(run_cli("train", "--model", "vqvae", "--layers", "2", "--out", str(tmp_path / "r")),
                          "--layers")  # fmt: skip


@pytest.mark.parametrize("estimator", ["reparam", "stl", "dreg", "score"])
def test_forward_and_backward_on_the_meta_device(estimator):
    objective = "elbo" if estimator == "score" else "iwae"
    model = _model().to("meta")
    x = torch.empty(4, *EVENT, device="meta")
    res = get_objective(objective, k=3, grad_estimator=estimator)(model, x)
    res.objective.mean().backward()
    assert res.bound.device.type == "meta"
    assert all(p.grad is not None and p.grad.device.type == "meta" for p in model.parameters())
    assert model.prior().sample((2,)).device.type == "meta" and model.encode(x).mean.device.type == "meta"
