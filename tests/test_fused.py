"""The hand-derived ELBO step (``vaelab.fused``) and the direct fused Adam step
(``speed.adam_step``): the same values, gradients and updates as autograd and ``optimizer.step()``,
for every model and option they accept, and a reason for everything they do not."""

from __future__ import annotations

import importlib
import itertools
import math

import pytest
import torch
from torch import nn

from vaelab.cli.main import main
from vaelab.core.errors import ConfigError
from vaelab.data.load import load_split
from vaelab.inference.objectives import get_objective
from vaelab.inference.schedules import kl_schedule
from vaelab.models import build_model, fused
from vaelab.runs import config as cfg
from vaelab.runs import speed
from vaelab.runs.trainer import Trainer

LIKELIHOODS = ("bernoulli", "gaussian")
ACTIVATIONS = ("tanh", "relu")
HIDDEN = ((), (12,), (12, 7))
WEIGHTS = ((1.0, None), (0.3, 0.5), (2.0, 0.0))  # (beta, kl_scale per step; None: no option)


def vae(likelihood="bernoulli", activation="tanh", hidden=(12, 7), event_shape=(1, 4, 4), seed=0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("vae", event_shape, likelihood=likelihood, hidden=hidden, activation=activation,
                       latent_dim=3, obs_precision=kw.pop("obs_precision", 4.0), **kw)  # fmt: skip


def data(shape, likelihood, n=6, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, *shape, generator=g, dtype=dtype)
    return (x < 0.4).to(dtype) if likelihood == "bernoulli" else x


def autograd_step(model, objective, x, options):
    for p in model.parameters():
        p.grad = None
    result = objective(model, x, **options)
    (-result.objective.mean()).backward()
    return result, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("likelihood,activation,hidden,weights,event_shape",
                         list(itertools.product(LIKELIHOODS, ACTIVATIONS, HIDDEN, WEIGHTS, ((1, 4, 4), (5,)))))  # fmt: skip
def test_values_and_gradients_equal_autograd_in_float64(likelihood, activation, hidden, weights, event_shape):
    # In float64 the two computations differ only by the rounding of a few dozen operations on
    # numbers of order 1-100 (about 1e-16 relative each): 1e-10 relative leaves a million-fold margin,
    # while any wrong term of the chain rule is off by far more.
    beta, kl_scale = weights
    model = vae(likelihood, activation, hidden, event_shape).double()
    objective = get_objective("elbo", beta=beta)
    options = {} if kl_scale is None else {"kl_scale": kl_scale}
    assert fused.refusal(model, objective) is None
    step = fused.FusedELBO.build(model, objective)
    x = data(event_shape, likelihood)
    torch.manual_seed(7)
    got = step.step(x, options)
    ours = [p.grad.clone() for p in model.parameters()]
    torch.manual_seed(7)  # the same draws of eps
    want, theirs = autograd_step(model, objective, x, options)
    for field in want._fields:
        torch.testing.assert_close(getattr(got, field), getattr(want, field).detach(), rtol=1e-10, atol=1e-10)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert any(g.abs().max() > 1e-6 for g in theirs)  # the comparison is not between zeros


def test_a_smaller_last_batch_and_grads_dropped_by_zero_grad_are_handled():
    model = vae().double()
    objective = get_objective("elbo")
    step = fused.FusedELBO.build(model, objective)
    for n in (6, 2, 6):
        x = data((1, 4, 4), "bernoulli", n=n)
        for p in model.parameters():
            p.grad = None  # as the autograd path's zero_grad(set_to_none=True) leaves them
        torch.manual_seed(n)
        step.step(x)
        ours = [p.grad.clone() for p in model.parameters()]
        torch.manual_seed(n)
        _, theirs = autograd_step(model, objective, x, {})
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_runs_on_the_meta_device_so_no_tensor_is_made_on_another():
    for likelihood in LIKELIHOODS:
        model = vae(likelihood).to("meta")
        step = fused.FusedELBO.build(model, get_objective("elbo"))
        result = step.step(torch.empty(6, 1, 4, 4, device="meta"), {"kl_scale": 0.5})
        assert all(t.device.type == "meta" and t.shape == (6,) for t in result)
        assert all(p.grad.device.type == "meta" for p in model.parameters())


def _frozen() -> nn.Module:
    model = vae()
    next(model.parameters()).requires_grad_(False)
    return model


def _elu() -> nn.Module:
    return vae(activation="elu")


class _Reshaped(nn.Module):  # a reshape the fused step does not recognise
    def forward(self, x):
        return x.view(x.shape[0], 1, 4, 4)


def _own_reshape() -> nn.Module:
    model = vae()
    model.decoder[-1] = _Reshaped()
    return model


REFUSED = {
    "the objective is not the ELBO": (vae, get_objective("iwae", k=2)),
    "the ELBO draws more than one particle per example": (vae, get_objective("elbo", k=2)),
    "the KL is estimated by Monte Carlo": (vae, get_objective("elbo", kl="mc")),
    "the gradient estimator is 'stl'": (vae, get_objective("elbo", grad_estimator="stl")),
    "the gradient estimator is 'score'": (vae, get_objective("elbo", grad_estimator="score")),
    "free bits are on": (vae, get_objective("elbo", free_bits=0.5)),
    "the posterior is not the diagonal Gaussian": (lambda: vae(posterior="full"), get_objective("elbo")),
    "the prior is not the standard normal": (lambda: vae(prior="mog:3"), get_objective("elbo")),
    "not a plain VAE": (lambda: vae(inference="local"), get_objective("elbo")),
    "the likelihood is not Bernoulli": (lambda: vae(likelihood="gaussian-learned"), get_objective("elbo")),
    "the activation ELU is not tanh or relu": (_elu, get_objective("elbo")),
    "some parameters are frozen": (_frozen, get_objective("elbo")),
    "the decoder does not end by reshaping to the data": (_own_reshape, get_objective("elbo")),
    "the model has no objective": (vae, None),
}


@pytest.mark.parametrize("reason", list(REFUSED))
def test_every_model_or_objective_it_does_not_do_is_refused_with_a_reason(reason):
    make, objective = REFUSED[reason]
    model = make()
    assert reason in fused.refusal(model, objective)
    assert fused.FusedELBO.build(model, objective) is None
    trainer = Trainer(model, objective if objective is not None else get_objective("elbo"), _digits(), None,
                      cfg.TrainConfig(epochs=1), progress=False)  # fmt: skip
    assert not trainer.fused or objective is None


def test_torchs_unflatten_is_a_reshape_to_the_data_too():
    model = vae()
    model.decoder[-1] = nn.Unflatten(1, (1, 4, 4))
    assert fused.refusal(model, get_objective("elbo")) is None
    model.decoder[-1] = nn.Unflatten(2, (4, 4))  # not a reshape of whole rows
    assert "reshaping" in fused.refusal(model, get_objective("elbo"))


def test_convolutional_and_two_layer_models_take_the_autograd_path():
    conv = build_model("vae", (1, 8, 8), net="conv", hidden=(16,), latent_dim=3)
    assert "does not start by flattening" in fused.refusal(conv, get_objective("elbo"))
    two = build_model("vae", (1, 4, 4), layers=2, hidden=(8,), latent_dim=3)
    assert "not a plain VAE" in fused.refusal(two, get_objective("elbo"))


def test_per_step_options_outside_its_scope_send_that_step_to_autograd():
    step = fused.FusedELBO.build(vae(), get_objective("elbo", beta=0.5))
    assert step.accepts({}) and step.accepts({"kl_scale": 0.25})
    assert not step.accepts({"free_bits": 0.1}) and not step.accepts({"k": 3}) and not step.accepts({"other": 1})


_DIGITS = {}


def _digits():
    if "train" not in _DIGITS:
        _DIGITS["train"] = load_split("digits", "train", binarize="dynamic", limit=200)
    return _DIGITS["train"]


def _fit(fused_mode, *, epochs=3, schedule=None, compile="auto", precision="32", **objective):
    torch.manual_seed(0)
    model = build_model("vae", (1, 8, 8), hidden=(16,), latent_dim=3, activation="tanh")
    trainer = Trainer(model, get_objective("elbo", **objective), _digits(), None,
                      cfg.TrainConfig(epochs=epochs, batch_size=30, lr=3e-3, precision=precision), progress=False,
                      schedule=schedule, fused=fused_mode, compile=compile)  # fmt: skip
    result = trainer.fit()
    return trainer, model.state_dict(), result


@pytest.mark.parametrize("schedule", [None, "warmup:2"])
def test_training_with_it_reaches_the_weights_of_autograd_training(schedule):
    # 21 Adam steps (a last batch of 20 included) from the same seed: the two runs see the same data
    # and draws, and their gradients differ by float32 rounding (about 1e-7 relative), which Adam
    # turns into weight differences of order lr * 1e-7 / |g| per step: below 1e-5 here, against the
    # 3e-3 a step that any wrong gradient term would move a weight by.
    warm = None if schedule is None else kl_schedule(warmup=2, epochs=3)
    sched = None if warm is None else (lambda t: {"kl_scale": warm(t)})
    on, w_on, r_on = _fit("auto", schedule=sched, beta=0.8)
    off, w_off, r_off = _fit("off", schedule=sched, beta=0.8)
    assert on.fused and not off.fused
    for name in w_on:
        torch.testing.assert_close(w_on[name], w_off[name], rtol=0, atol=1e-5)
    assert max((w_on[n] - w_off[n]).abs().max() for n in w_on) > 0  # two computations, not one path twice
    for a, b in zip(on.history, off.history, strict=True):
        assert a["train_bound"] == pytest.approx(b["train_bound"], rel=1e-5)


def test_modes_and_where_the_trainer_uses_it():
    assert _fit("auto", epochs=1)[0].fused
    assert not _fit("off", epochs=1)[0].fused
    assert not _fit("auto", epochs=1, compile="on")[0].fused  # --compile on asks for the compiler instead
    assert not _fit("auto", epochs=1, precision="bf16-mixed")[0].fused  # mixed precision goes through autocast
    with pytest.raises(ConfigError, match="fused='on' is not a fused-step mode; choose one of: auto, off"):
        _fit("on", epochs=1)


def test_cli_flag(tmp_path, capsys, monkeypatch):
    built = []
    plain_build = fused.FusedELBO.build
    monkeypatch.setattr(fused.FusedELBO, "build", lambda model, objective: built.append(1) or plain_build(model, objective))
    for mode, trainers_built in (("auto", [1]), ("off", [1])):  # the second run adds nothing
        assert main(["train", "--data", "digits", "--limit", "100", "--hidden", "8", "--latent-dim", "2", "--epochs", "1",
                     "--fused", mode, "--out", str(tmp_path / mode), "--silent"]) == 0  # fmt: skip
        assert built == trainers_built
    with pytest.raises(SystemExit) as exit:
        main(["train", "--data", "digits", "--fused", "on", "--out", str(tmp_path / "x")])
    assert exit.value.code == 2 and "argument --fused: invalid choice: 'on'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


# -- speed.adam_step --------------------------------------------------------------------


def _adam_pair(**options):
    torch.manual_seed(3)
    a = nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 2))
    b = nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 2))
    b.load_state_dict(a.state_dict())
    return a, b, torch.optim.Adam(a.parameters(), **options), torch.optim.Adam(b.parameters(), **options)


@pytest.mark.parametrize("options", [dict(lr=1e-2, fused=True), dict(lr=3e-3, betas=(0.5, 0.9), eps=1e-6, fused=True,
                                                                      weight_decay=0.1)])  # fmt: skip
def test_adam_step_is_bitwise_optimizer_step(options):
    a, b, opt_a, opt_b = _adam_pair(**options)
    x = torch.randn(9, 7)
    through_step = []
    plain_step = opt_a.step
    opt_a.step = lambda *args, **kw: (through_step.append(1), plain_step(*args, **kw))[1]
    for _ in range(5):
        for model, opt, step in ((a, opt_a, speed.adam_step), (b, opt_b, lambda o: o.step())):
            opt.zero_grad()
            model(x).square().sum().backward()
            step(opt)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    for sa, sb in zip(opt_a.state.values(), opt_b.state.values(), strict=True):
        assert all(torch.equal(sa[k], sb[k]) for k in sb)
    assert through_step == [1]  # step() made the state at the first step; the direct call did the other four


def test_adam_step_leaves_other_optimizers_to_their_own_step():
    a, _, opt, _ = _adam_pair(lr=1e-2)  # not fused
    assert speed._fused_adam_lists(opt) is None
    sgd = torch.optim.SGD(a.parameters(), lr=0.1)
    assert speed._fused_adam_lists(sgd) is None
    a, _, opt, _ = _adam_pair(lr=1e-2, fused=True)
    a(torch.randn(3, 7)).sum().backward()
    assert speed._fused_adam_lists(opt) is None  # no state before the first step
    speed.adam_step(opt)
    assert speed._fused_adam_lists(opt) is not None
    calls = []
    opt.register_step_post_hook(lambda *args: calls.append(1))
    assert speed._fused_adam_lists(opt) is None  # hooks run only through step()
    speed.adam_step(opt)
    assert calls == [1]


def test_a_run_stopped_and_resumed_on_the_fused_step_ends_bitwise_as_an_uninterrupted_one(tmp_path):
    def trainer(epochs, run_dir, seed=0):
        torch.manual_seed(seed)
        model = build_model("vae", (1, 8, 8), hidden=(16,), latent_dim=3)
        return Trainer(model, get_objective("elbo"), _digits(), None, cfg.TrainConfig(epochs=epochs, batch_size=30, lr=3e-3),
                       run_dir, progress=False)  # fmt: skip

    whole = trainer(2, tmp_path / "whole")
    whole.fit()
    trainer(1, tmp_path / "parts").fit()
    resumed = trainer(2, tmp_path / "parts", seed=5)
    resumed.load_checkpoint()
    resumed.fit()
    assert whole.fused and resumed.fused
    assert all(torch.equal(resumed.model.state_dict()[k], v) for k, v in whole.model.state_dict().items())


# -- fused.FusedLogWeights: the evaluator's particles ------------------------------------


@pytest.mark.parametrize("likelihood,activation,hidden", list(itertools.product(LIKELIHOODS, ACTIVATIONS, HIDDEN)))
@pytest.mark.parametrize("k,rows", [(40, 1000), (300, 100), (37, 10)])  # several examples a pass, chunks of one, a ragged end
def test_log_likelihood_through_it_equals_the_distributions_path(likelihood, activation, hidden, k, rows, monkeypatch):
    # float64, the same draws: the two paths differ by the rounding of a few dozen operations
    evaluate = importlib.import_module("vaelab.evaluate")  # the module, not vaelab.evaluate the function

    model = vae(likelihood, activation, hidden).double()
    assert fused.FusedLogWeights.build(model) is not None
    x = data((1, 4, 4), likelihood, n=7)
    torch.manual_seed(2)
    ours = evaluate.log_likelihood(model, x, k=k, rows=rows, bounds=(4,))
    monkeypatch.setattr(evaluate.FusedLogWeights, "build", classmethod(lambda cls, model: None))
    torch.manual_seed(2)
    theirs = evaluate.log_likelihood(model, x, k=k, rows=rows, bounds=(4,))
    for field in theirs._fields:
        torch.testing.assert_close(getattr(ours, field), getattr(theirs, field), rtol=1e-9, atol=1e-9)


def test_log_weights_on_the_meta_device():
    for likelihood in LIKELIHOODS:
        model = vae(likelihood).to("meta")
        weights = fused.FusedLogWeights.build(model)
        x = torch.empty(3, 1, 4, 4, device="meta")
        lw, lpx = torch.empty(5, 3, device="meta"), torch.empty(5, 3, device="meta")
        weights(x, model.encode(x), 5, lw, lpx)


def test_other_models_and_the_prior_proposal_evaluate_through_the_distributions(monkeypatch):
    evaluate = importlib.import_module("vaelab.evaluate")  # the module, not vaelab.evaluate the function

    assert fused.FusedLogWeights.build(vae(posterior="full")) is None
    calls = []
    original = fused.FusedLogWeights.__call__

    def counting(self, *args):
        calls.append(1)
        return original(self, *args)

    model = vae()
    x = data((1, 4, 4), "bernoulli", dtype=torch.float32)
    monkeypatch.setattr(fused.FusedLogWeights, "__call__", counting)
    evaluate.log_likelihood(model, x, k=20, proposal="prior")
    assert not calls
    evaluate.log_likelihood(model, x, k=20)
    assert calls


def softplus_sum(logits):
    """sum softplus(l) = sum l / 2 + sum log(2 cosh(l / 2)), as the evaluator's pieces compute it."""
    half = logits.sum(-1).mul_(0.5)
    return fused.log_cosh_sum_(logits).add_(half)


@pytest.mark.parametrize("d", [1, 50, 112, 113, 784, 1000])  # no full group, one, a remainder, several
@pytest.mark.parametrize("scale", [0.1, 3.0, 30.0, 200.0])
def test_log_cosh_sum_and_the_softplus_sum_through_it_are_exact_to_float32_rounding(d, scale):
    # References in float64: sum log(2 cosh(l / 2)) = sum softplus(l) - l / 2, softplus(l) = log(1 + e^l)
    # (F.softplus cuts at 20). The float32 error bound of the product form, row by row, with
    # u = 2^-24: the sums of l and of |l| are pairwise sums, each off by at most u log2(D) sum |l|;
    # each sigmoid(|l|) factor and each product step adds at most u relative, so a group's log is
    # off by at most 2 G u, D u over the row's groups (and their logs, each below G log 2, sum with
    # u log2(D/G) of that). F.softplus's own float32 sum meets the same bound (both use 10-60% of it
    # here), so the bound is of rounding's size; a wrong term would be off by whole logits.
    u = 2.0**-24
    g = torch.Generator().manual_seed(d)
    logits = torch.randn(64, d, generator=g) * scale
    wide = logits.double()
    exact_softplus = torch.logaddexp(wide, torch.zeros((), dtype=torch.float64)).sum(-1)
    exact_log_cosh = exact_softplus - wide.sum(-1) / 2
    levels = math.log2(d) + 1
    bound = u * (levels * wide.abs().sum(-1) + 2 * d + levels * d * math.log(2))
    for got, exact in ((fused.log_cosh_sum_(logits.clone()), exact_log_cosh), (softplus_sum(logits.clone()), exact_softplus),
                       (torch.nn.functional.softplus(logits).sum(-1), exact_softplus)):  # fmt: skip
        error = (got.double() - exact).abs()
        assert (error <= bound).all(), (error / bound).max()
    # float64 in, float64 out: equal to rounding of a few operations per element
    torch.testing.assert_close(fused.log_cosh_sum_(wide.clone()), exact_log_cosh, rtol=1e-12, atol=1e-12 * d * scale)
    torch.testing.assert_close(softplus_sum(wide.clone()), exact_softplus, rtol=1e-12, atol=1e-12 * d * scale)


@pytest.mark.parametrize("likelihood,activation", list(itertools.product(LIKELIHOODS, ACTIVATIONS)))
def test_the_folded_decoder_follows_the_weights_when_they_change(likelihood, activation):
    # one evaluator object, weights changed in place between calls (as an optimizer step changes
    # them): each call must use the weights of that moment, not the folded copy of the first call
    model = vae(likelihood, activation).double()
    weights = fused.FusedLogWeights.build(model)
    x = data((1, 4, 4), likelihood, n=3)
    with torch.no_grad():
        q = model.encode(x)
    for change in range(3):
        if change:
            with torch.no_grad():
                for p in model.decoder.parameters():
                    p.add_(0.3 * torch.randn_like(p))
        lw, lpx = torch.empty(5, 3, dtype=torch.float64), torch.empty(5, 3, dtype=torch.float64)
        torch.manual_seed(change)
        weights(x, q, 5, lw, lpx)
        torch.manual_seed(change)
        z = q.rsample((5,))
        want = model.decode(z).log_prob(x)
        torch.testing.assert_close(lpx, want, rtol=1e-10, atol=1e-10)


def test_the_data_are_folded_into_the_last_layer_once_per_pass(monkeypatch):
    # K=50 particles in chunks of 20 rows: 3 chunks for each of 4 examples, one fold per example
    evaluate = importlib.import_module("vaelab.evaluate")
    model = vae().double()
    x = data((1, 4, 4), "bernoulli", n=4)
    folds, calls = [], []
    original_fold, original_call = fused.FusedLogWeights.fold, fused.FusedLogWeights.__call__

    def fold(self, xb):
        folds.append(xb.shape[0])
        return original_fold(self, xb)

    def call(self, *args):
        calls.append(args[5] is not None)
        return original_call(self, *args)

    monkeypatch.setattr(fused.FusedLogWeights, "fold", fold)
    monkeypatch.setattr(fused.FusedLogWeights, "__call__", call)
    evaluate.log_likelihood(model, x, k=50, rows=20)
    assert folds == [1, 1, 1, 1]
    assert calls == [True] * 12
