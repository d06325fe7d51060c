"""The adversarial models and the several-player trainer: each update rule against a hand
computation, which parameters move and by which loss, resume, and the errors."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from test_train import kill_and_resume
from torch.distributions import Independent, Normal

from vaelab.cli.main import main
from vaelab.core.errors import ConfigError, TrainingDiverged
from vaelab.core.files import load_tensors, read_metrics
from vaelab.data.splits import Split
from vaelab.models import ADVERSARIAL, build_model
from vaelab.models.adversarial import feature_log_likelihood
from vaelab.runs import config as cfg
from vaelab.runs.lifecycle import start_run
from vaelab.runs.trainer import Trainer, _postfix

LR = 1e-2
EPS = 1e-8


def tiny(name: str, seed: int = 0, **options) -> torch.nn.Module:
    """A float64 model of 6-dimensional vectors (Gaussian output), 2 latents, one hidden layer of 5."""
    torch.manual_seed(seed)
    options = {"likelihood": "gaussian", "obs_precision": 4.0, "hidden": (5, 4), "latent_dim": 2, **options}
    return build_model(name, (6,), **options).double()


def data(n: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- the losses, written out by hand from the papers' definitions ---------------------------


def mlp(seq, h):
    return seq(h)


def critic_logit(critic, x, z=None):
    h = x
    for block in critic.blocks:
        h = block(h)
    if z is not None:
        h = torch.cat([h, critic.code(z)], -1)
    return critic.head(h).squeeze(-1)


def gaussian_nll(model, mean, x):
    precision = 4.0  # tiny()'s obs_precision
    d = x.shape[-1]
    return 0.5 * precision * (x - mean).square().sum(-1) - 0.5 * d * math.log(precision) + 0.5 * d * math.log(2 * math.pi)


def nsig(a):  # -log sigmoid(a)
    return -torch.log(torch.sigmoid(a))


def n1sig(a):  # -log(1 - sigmoid(a))
    return -torch.log(1 - torch.sigmoid(a))


def hand_losses(name: str, model, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each model's per-player losses, consuming the global random stream in the model's order."""
    b = x.shape[0]
    G = lambda z: model.decoder(z).squeeze(1)  # Gaussian output: the mean is the network's output
    if name == "gan":
        z = torch.randn(b, 2, dtype=x.dtype)
        d_real, d_fake = critic_logit(model.critic, x), critic_logit(model.critic, G(z))
        return {"disc": nsig(d_real) + n1sig(d_fake), "generator": nsig(d_fake)}
    if name == "vaegan":
        mu, log_var = model.encoder(x).chunk(2, -1)
        sd = (0.5 * log_var).exp()
        kl = (0.5 * (mu.square() + sd.square() - 1) - torch.log(sd)).sum(-1)
        z = mu + sd * torch.randn(b, 2, dtype=x.dtype)
        z_p = torch.randn(b, 2, dtype=x.dtype)
        x_rec, x_p = G(z), G(z_p)
        f_x = model.critic.blocks[0](x)  # the feature layer of tiny(): 1
        f_rec = model.critic.blocks[0](x_rec)
        llike = 0.5 * (f_x - f_rec).square().sum(-1) + 0.5 * f_x.shape[-1] * math.log(2 * math.pi)
        d = lambda v: critic_logit(model.critic, v)
        return {"encoder": kl + llike, "decoder": model.gamma * llike + nsig(d(x_rec)) + nsig(d(x_p)),
                "disc": nsig(d(x)) + n1sig(d(x_rec)) + n1sig(d(x_p))}
    if name == "aae":
        z = model.encoder(x)  # deterministic
        rec = gaussian_nll(model, G(z), x)
        z_p = torch.randn(b, 2, dtype=x.dtype)
        c = lambda v: critic_logit(model.code_critic, v)
        return {"autoencoder": rec, "disc": nsig(c(z_p)) + n1sig(c(z)), "encoder": nsig(c(z))}
    if name == "alphagan":
        z = model.encoder(x)
        x_rec = G(z)
        rec = gaussian_nll(model, x_rec, x)
        z_p = torch.randn(b, 2, dtype=x.dtype)
        d = lambda v: critic_logit(model.critic, v)
        c = lambda v: critic_logit(model.code_critic, v)
        return {"encoder": rec + nsig(c(z)), "generator": rec + nsig(d(x_rec)) + nsig(d(G(z_p))),
                "disc": nsig(d(x)) + n1sig(d(x_rec)) + n1sig(d(G(z_p))), "code_disc": nsig(c(z_p)) + n1sig(c(z))}
    if name == "veegan":
        z = torch.randn(b, 2, dtype=x.dtype)
        x_g = G(z)
        F_ = model.reconstructor
        noise_error = (z - F_(x_g)).square().sum(-1)
        d_g, d_x = critic_logit(model.critic, x_g, z), critic_logit(model.critic, x, F_(x))
        return {"generator": d_g + noise_error, "reconstructor": noise_error - d_x, "disc": nsig(d_g) + n1sig(d_x)}
    raise AssertionError(name)


OPTIONS = {"vaegan": {"feature_layer": 1, "gamma": 0.7}}


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_every_players_loss_is_its_papers_definition(name):
    model = tiny(name, **OPTIONS.get(name, {}))
    x = data()
    torch.manual_seed(5)
    out = model.losses(x)
    torch.manual_seed(5)
    expected = hand_losses(name, model, x)
    assert set(expected) == {p.name for p in model.players()}
    for player, value in expected.items():
        assert out[player].shape == (7,)
        torch.testing.assert_close(out[player], value, rtol=1e-10, atol=1e-10, msg=f"{name}: {player}")


def test_the_discriminator_feature_likelihood_is_a_unit_gaussian_density():
    g = torch.Generator().manual_seed(0)
    target, mean = torch.randn(5, 9, generator=g, dtype=torch.float64), torch.randn(5, 9, generator=g, dtype=torch.float64)
    expected = Independent(Normal(mean, torch.ones_like(mean)), 1).log_prob(target)
    torch.testing.assert_close(feature_log_likelihood(target, mean), expected, rtol=1e-12, atol=1e-12)


def test_the_vaegan_feature_layer_is_the_one_asked_for():
    model = tiny("vaegan", feature_layer=2)
    x = data()
    _, features = model.critic.features(x, 2)
    torch.testing.assert_close(features, model.critic.blocks[1](model.critic.blocks[0](x)))
    _, last = model.critic.features(x, 0)
    assert last.shape == (7, 4)  # 0: the last hidden layer (of widths 5, 4)


class RealNearThePrior(torch.nn.Module):
    def forward(self, z):
        return 10 * (z[:, 0] + 5)


def test_the_aae_discriminator_sees_prior_samples_as_real():
    """With a code discriminator that says "real" for z near the prior (logit 10 (z_1 + 5)) and
    an encoder that puts every code at -10, the discriminator's loss is near 0 only if prior draws
    are its "real" class (about 100 the other way round), and the encoder's loss is 50."""
    model = tiny("aae")
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.zero_()
        model.encoder[-1][-1].bias.fill_(-10.0)
    model.code_critic = RealNearThePrior()
    torch.manual_seed(0)
    out = model.losses(data(200))
    assert out["disc"].mean() < 0.05
    torch.testing.assert_close(out["encoder"], torch.full((200,), 50.0, dtype=torch.float64), rtol=1e-6, atol=1e-6)


def _adam_first_step(parameters, grads, lr):
    """What Adam's first step does to each parameter: -lr * g / (|g| + eps) (bias-corrected moments)."""
    with torch.no_grad():
        for p, g in zip(parameters, grads):
            if g is not None:
                p -= lr * g / (g.abs() + EPS)


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_each_player_steps_on_its_own_loss_and_nothing_else_moves(name):
    """One trainer step against a hand replay: for simultaneous updates every player's gradient
    is taken at the starting weights from one forward pass; for alternating ones player by player,
    each after the previous one stepped and with fresh draws. Parameters of no player (the AAE's
    mixture prior) must not move."""
    options = {**OPTIONS.get(name, {}), **({"prior": "mog:3"} if name == "aae" else {})}
    model = tiny(name, **options)
    x = data(10)
    split = Split(x.float(), None, "vectors", "train")
    trainer = Trainer(model, None, split, None, tcfg(lr=LR, lr_disc=LR / 2, batch_size=10), progress=False)
    replay = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(3)
    trainer._step_players(x)

    players = {p.name: p for p in replay.players()}
    torch.manual_seed(3)
    if model.update == "simultaneous":
        out = replay.losses(x)
        grads = {n: torch.autograd.grad(out[n].mean(), p.parameters, retain_graph=True, allow_unused=True)
                 for n, p in players.items()}  # fmt: skip
        for n, p in players.items():
            _adam_first_step(p.parameters, grads[n], LR if p.role == "generator" else LR / 2)
    else:
        for n, p in players.items():
            out = replay.losses(x)
            grads = torch.autograd.grad(out[n].mean(), p.parameters, allow_unused=True)
            _adam_first_step(p.parameters, grads, LR if p.role == "generator" else LR / 2)
    moved = 0
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, replay.state_dict()[key], rtol=1e-9, atol=1e-9, msg=f"{name}: {key}")
        moved += not torch.equal(value, before[key])
    owned = {id(q) for p in model.players() for q in p.parameters}
    for key, param in model.named_parameters():
        if id(param) not in owned:
            assert torch.equal(param, before[key]), f"{key} belongs to no player but moved"
    assert moved >= len(owned) // 2
    if name == "aae":
        assert torch.equal(model.latent_prior.means, before["latent_prior.means"])


def test_players_of_each_model_are_the_papers():
    roles = {name: [(p.name, p.role) for p in tiny(name).players()] for name in ADVERSARIAL}
    assert roles == {
        "gan": [("disc", "discriminator"), ("generator", "generator")],
        "vaegan": [("encoder", "generator"), ("decoder", "generator"), ("disc", "discriminator")],
        "aae": [("autoencoder", "generator"), ("disc", "discriminator"), ("encoder", "generator")],
        "alphagan": [("encoder", "generator"), ("generator", "generator"), ("disc", "discriminator"),
                     ("code_disc", "discriminator")],
        "veegan": [("generator", "generator"), ("reconstructor", "generator"), ("disc", "discriminator")],
    }  # fmt: skip
    gan = tiny("gan")
    disc, gen = gan.players()
    assert {id(p) for p in disc.parameters} == {id(p) for p in gan.critic.parameters()}
    assert {id(p) for p in gen.parameters} == {id(p) for p in gan.decoder.parameters()}
    aae = tiny("aae")
    auto, _, enc = aae.players()
    assert {id(p) for p in enc.parameters} < {id(p) for p in auto.parameters}  # the encoder trains in both phases


def test_simultaneous_players_may_not_share_parameters():
    model = tiny("vaegan")
    shared = model.players()
    model.players = lambda: [shared[0], shared[1]._replace(parameters=shared[0].parameters)]
    with pytest.raises(ValueError, match="must not share"):
        Trainer(model, None, Split(data().float(), None, "v", "train"), None, tcfg(), progress=False)


def test_each_role_gets_its_own_adam_settings():
    model = tiny("alphagan")
    trainer = Trainer(model, None, Split(data().float(), None, "v", "train"), None,
                      tcfg(lr=1e-3, lr_disc=2e-4, adam_betas_disc=(0.5, 0.9)), progress=False)  # fmt: skip
    settings = {name: (o.param_groups[0]["lr"], o.param_groups[0]["betas"]) for name, o in trainer.optimizers.items()}
    assert settings == {"optim.encoder": (1e-3, (0.9, 0.999)), "optim.generator": (1e-3, (0.9, 0.999)),
                        "optim.disc": (2e-4, (0.5, 0.9)), "optim.code_disc": (2e-4, (0.5, 0.9))}  # fmt: skip


def tcfg(**kw) -> cfg.TrainConfig:
    return cfg.TrainConfig(**{"epochs": 2, "batch_size": 50, "lr": 3e-3, **kw})


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_every_model_runs_on_the_meta_device(name):
    """Every tensor is created on the data's device: on `meta` a stray CPU tensor fails."""
    model = tiny(name).to("meta")
    out = model.losses(torch.empty(4, 6, device="meta", dtype=torch.float64))
    assert all(v.device.type == "meta" and v.shape == (4,) for v in out.values())
    assert model.sample_images(3).device.type == "meta"


@pytest.mark.parametrize("net", ["conv", "resnet"])
@pytest.mark.parametrize("name", ADVERSARIAL)
def test_every_model_on_image_backbones(name, net):
    torch.manual_seed(0)
    extra = {"resnet_channels": 4, "res_blocks": 1} if net == "resnet" else {}
    model = build_model(name, (1, 8, 8), net=net, hidden=(8,), latent_dim=3, **extra)
    out = model.losses(torch.rand(5, 1, 8, 8))
    assert all(torch.isfinite(v).all() and v.shape == (5,) for v in out.values())
    assert model.sample_images(2).shape == (2, 1, 8, 8)


def test_a_non_finite_player_loss_stops_training_before_any_step(monkeypatch):
    model = tiny("gan").float()
    before = copy.deepcopy(model.state_dict())
    real = model.losses
    monkeypatch.setattr(model, "losses", lambda x: {**real(x), "generator": torch.full((x.shape[0],), math.nan)})
    trainer = Trainer(model, None, Split(data(20).float(), None, "v", "train"), None, tcfg(batch_size=10), progress=False)
    with pytest.raises(TrainingDiverged, match="epoch 1, step 1"):
        trainer.fit()
    # the discriminator stepped first (alternating) on a finite loss; the generator never did
    for key in (k for k in before if k.startswith("decoder")):
        assert torch.equal(model.state_dict()[key], before[key])


def test_progress_bar_shows_each_players_loss():
    shown = _postfix(("disc_loss", "generator_loss", "d_real"), torch.tensor([1.25, 0.5, 0.9]), 1000.0)
    assert shown == {"disc": "1.250", "generator": "0.500", "ex/s": "1000"}


# --- runs ---------------------------------------------------------------------------------


def run_config(name: str, **train) -> cfg.RunConfig:
    return cfg.build({"data": {"data": "digits", "binarize": "none", "limit": 200},
                      "model": {"model": name, "hidden": (16,), "latent_dim": 2},
                      "train": {"epochs": 3, "batch_size": 50, **train}})  # fmt: skip


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_runs_log_every_player_and_resume_exactly(name, tmp_path, monkeypatch):
    """metrics.jsonl has train_<player>_loss for every player; a run interrupted mid-epoch and
    resumed ends with the same bytes as an uninterrupted one (every player's Adam state is in the
    checkpoint)."""

    config = run_config(name)
    result = start_run(config, tmp_path / "full", progress=False)
    players = [p.name for p in tiny(name).players()]
    for record in read_metrics(tmp_path / "full"):
        for p in players:
            assert math.isfinite(record[f"train_{p}_loss"]) and math.isfinite(record[f"valid_{p}_loss"])
    assert result.best_epoch == 3 and math.isnan(result.best_bound)
    tensors, _ = load_tensors(tmp_path / "full" / "checkpoint" / "state.safetensors")
    assert {k.split(".")[1] for k in tensors if k.startswith("optim.")} == set(players)

    calls = {"n": 0}
    cls = type(tiny(name))
    per_step = len(players) if cls.update == "alternating" else 1  # forward passes a step
    real = cls.losses

    def crashing(self, x):
        if self.training:
            calls["n"] += 1
            if calls["n"] == 5 * per_step + 1:  # epoch 2 (4 batches an epoch), mid-way
                raise KeyboardInterrupt
        return real(self, x)

    monkeypatch.setattr(cls, "losses", crashing)
    with pytest.raises(KeyboardInterrupt):
        start_run(config, tmp_path / "crashed", progress=False)
    monkeypatch.setattr(cls, "losses", real)
    from vaelab.runs.lifecycle import resume_run

    resume_run(tmp_path / "crashed", progress=False)
    assert (tmp_path / "full" / "model.safetensors").read_bytes() == (tmp_path / "crashed" / "model.safetensors").read_bytes()
    a, _ = load_tensors(tmp_path / "full" / "checkpoint" / "state.safetensors")
    b, _ = load_tensors(tmp_path / "crashed" / "checkpoint" / "state.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_then_resume_is_bitwise_for_several_players(tmp_path):
    """SIGKILL the CLI training an adversarial autoencoder (three players, two of them sharing
    the encoder, alternating) at three moments, resume, and compare with an uninterrupted run."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}

    def cmd(out):
        return [sys.executable, "-m", "vaelab", "train", "--data", "digits", "--binarize", "none", "--model", "aae",
                "--encoder", "gaussian", "--prior", "mog:3", "--hidden", "32", "--latent-dim", "3", "--epochs", "10",
                "--batch-size", "20", "--out", str(out), "--quiet"]  # fmt: skip

    subprocess.run(cmd(tmp_path / "ref"), check=True, env=env, capture_output=True)
    run = tmp_path / "killed"
    kill_and_resume(cmd(run), run, ((0, 0.0), (2, 0.0), (5, 0.017)), env)
    assert (run / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, 11))


# --- the command line ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ADVERSARIAL)
def test_cli_trains_evaluates_samples_and_reconstructs_every_model(name, tmp_path, capsys):
    run = tmp_path / name
    assert main(["train", "--data", "digits", "--binarize", "none", "--limit", "100", "--model", name, "--hidden", "16",
                 "--latent-dim", "2", "--epochs", "1", "--batch-size", "50", "--out", str(run), "--quiet"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "best validation bound" not in out  # there is none
    assert (run / "samples.png").stat().st_size > 0
    has_encoder = name != "gan"
    assert (run / "reconstructions.png").exists() == has_encoder
    assert (run / "latent.png").exists() == has_encoder
    assert main(["evaluate", str(run), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["log_likelihood"] is None and summary["bound"] is None and "vaelab quality" in summary["note"]
    assert summary["n_examples"] == 100 and summary["model"] == name
    if has_encoder:
        assert summary["reconstruction_error"] > 0 and summary["reconstruction_error_stderr"] > 0
    else:
        assert summary["reconstruction_error"] is None
    assert main(["evaluate", str(run)]) == 0
    assert "no likelihood bound" in capsys.readouterr().out
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    code = main(["reconstruct", str(run), "-n", "4", "-o", str(tmp_path / "r.png")])
    assert code == (0 if has_encoder else 2)


def test_reconstruction_error_is_the_squared_error_of_the_models_reconstruction():
    from vaelab.evaluation.evaluate import reconstruction_error

    model = tiny("aae").eval()
    x = data(9)
    errors = (x - model.decoder(model.encoder(x)).squeeze(1)).square().sum(-1)
    mean, stderr = reconstruction_error(model, x, batch=4)
    assert mean == pytest.approx(errors.mean().item(), rel=1e-12)
    assert stderr == pytest.approx(errors.std().item() / 3, rel=1e-12)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"model": {"model": "gan", "gamma": 2.0}}, "--gamma does not apply to --model gan"),
        ({"model": {"model": "gan", "prior": "mog:3"}}, "--prior does not apply to --model gan"),
        ({"model": {"model": "vae", "encoder": "gaussian"}}, "--encoder does not apply to --model vae"),
        ({"model": {"model": "vaegan", "encoder": "gaussian"}}, "--encoder does not apply to --model vaegan"),
        ({"model": {"model": "veegan", "posterior": "full"}}, "--posterior does not apply to --model veegan"),
        ({"model": {"model": "aae", "prior": "vamp:5"}}, "needs a fixed prior"),
        ({"model": {"model": "vaegan", "feature_layer": 3}}, "--feature-layer must be 0"),
        ({"model": {"model": "vaegan", "gamma": -1.0}}, "--gamma must be a non-negative"),
        ({"model": {"model": "gan"}, "train": {"k": 5}}, "--k does not apply to --model gan"),
        ({"model": {"model": "aae"}, "train": {"objective": "iwae"}}, "--objective does not apply to --model aae"),
        ({"model": {"model": "alphagan"}, "train": {"patience": 5}}, "no likelihood bound"),
        ({"train": {"lr_disc": 1e-4}}, "--lr-disc sets the discriminators' optimizer"),
        ({"model": {"model": "vqvae"}, "train": {"adam_betas_disc": (0.5, 0.9)}}, "--adam-betas-disc"),
        ({"model": {"model": "gan"}, "train": {"lr_disc": -1.0}}, "--lr-disc must be a positive"),
        ({"model": {"model": "gan"}, "train": {"adam_betas_disc": (0.5, 1.0)}}, "--adam-betas-disc needs two"),
    ],
)
def test_bad_combinations_are_refused(values, message):
    """Checked as the command line shows it: the library names Python arguments (gamma=), which
    the CLI turns into flags (--gamma)."""
    from vaelab.cli.common import as_flags as _as_flags

    with pytest.raises(ConfigError) as err:
        cfg.build(values)
    assert message in _as_flags(str(err.value), set(cfg.field_names())), str(err.value)


def test_cli_refuses_likelihood_analyses_of_adversarial_runs(tmp_path, capsys):
    run = tmp_path / "gan"
    main(["train", "--data", "digits", "--limit", "100", "--model", "gan", "--hidden", "16", "--latent-dim", "2",
          "--epochs", "1", "--out", str(run), "--quiet"])  # fmt: skip
    capsys.readouterr()
    for argv in (["evaluate", str(run), "--k", "10"], ["evaluate", str(run), "--method", "ais"],
                 ["diagnose", str(run)], ["gaps", str(run)], ["sample", str(run), "--sampler", "gmm"],
                 ["train", "--model", "gan", "--gamma", "3", "--out", str(tmp_path / "x")]):  # fmt: skip
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, (argv, err)
    assert not (tmp_path / "x").exists()


def test_sample_pixels_is_refused_for_implicit_models():
    with pytest.raises(ConfigError, match="sample_pixels=True"):
        tiny("gan").sample_images(3, sample_pixels=True)


def test_adversarial_models_take_grey_levels_with_a_sigmoid_output(tmp_path):
    """The Bernoulli check (binary data for a likelihood) does not apply: these models have no
    likelihood, and the sigmoid output suits grey levels in [0, 1]."""
    result = start_run(run_config("gan", epochs=1), tmp_path / "r", progress=False)
    assert result.epochs == 1
    with pytest.raises(ConfigError, match="needs binary data"):
        start_run(cfg.build({"data": {"data": "digits", "binarize": "none", "limit": 50}}), tmp_path / "v", progress=False)


@pytest.mark.parametrize("name", ["gan", "veegan"])
def test_a_ring8_run_is_drawn_sampled_and_scored_by_its_modes(name, tmp_path, capsys):
    """The run's pictures and `vaelab quality` work for an adversarial model of points: samples.png
    is a scatter over the data, the quality is the mode metrics of the model's own unclamped
    samples, and reconstructions of points are refused in one line."""
    import vaelab
    from vaelab.evaluation.quality import score_samples
    from vaelab.evaluation.sampling import sample_images

    run = tmp_path / name
    assert main(["train", "--data", "ring8", "--binarize", "none", "--likelihood", "gaussian", "--model", name,
                 "--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--limit", "500", "--out", str(run),
                 "--quiet"]) == 0  # fmt: skip
    assert (run / "samples.png").stat().st_size > 0 and not (run / "reconstructions.png").exists()
    capsys.readouterr()
    assert main(["quality", str(run), "--n", "300", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    samples = sample_images(vaelab.load(run), 300, seed=0)
    assert samples.shape == (300, 2)
    assert result == score_samples(samples, "ring8")
    assert main(["reconstruct", str(run)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert ("no encoder" if name == "gan" else "points in the plane") in err


@pytest.mark.parametrize("net", ["mlp", "conv", "resnet"])
def test_discriminators_follow_the_encoders_layout_with_leaky_relus(net):
    """Each block of an image discriminator ends in a leaky ReLU of slope 0.2, and its
    convolutions are the encoder's (same kernels, strides and channels; the resnet encoder's final
    1x1 projection is left out); code discriminators are MLPs of the --hidden widths."""
    torch.manual_seed(0)
    extra = {"resnet_channels": 4, "res_blocks": 1} if net == "resnet" else {}
    model = build_model("alphagan", (1, 8, 8), net=net, hidden=(8, 6), latent_dim=3, **extra)
    for critic in (model.critic, model.code_critic):
        for block in critic.blocks:
            assert isinstance(block[-1], torch.nn.LeakyReLU) and block[-1].negative_slope == 0.2
    convolutions = lambda m: [(c.in_channels, c.out_channels, c.kernel_size, c.stride)
                              for c in m.modules() if isinstance(c, torch.nn.Conv2d)]  # fmt: skip
    own, encoder = convolutions(model.critic), convolutions(model.encoder)
    assert bool(own) == (net != "mlp") and own == encoder[: len(own)]
    assert all(kernel == (1, 1) for _, _, kernel, _ in encoder[len(own) :])  # resnet: its final 1x1 projection
    widths = [(l.in_features, l.out_features) for l in model.code_critic.modules() if isinstance(l, torch.nn.Linear)]
    assert widths == [(3, 8), (8, 6), (6, 1)]
