"""VQ-VAE: the quantizer by hand, the bound's definition, the training loop, the learned prior and
the command line (van den Oord et al. 2017)."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from test_cli import run_cli
from test_files import HOLD_LOCK
from test_train import _checkpoint_epoch

from vaelab.core.errors import ConfigError, RunError
from vaelab.inference.objectives import vq
from vaelab.models.vqvae import VQVAE, VectorQuantizer, build_vqvae, codebook_usage
from vaelab.runs import config as cfg
from vaelab.runs.codeprior import PriorConfig, code_grids, fit_code_prior
from vaelab.runs.lifecycle import start_run
from vaelab.runs.prior_files import load_code_prior
from vaelab.runs.rundir import load

TINY = ["--model", "vqvae", "--data", "digits", "--binarize", "threshold", "--codebook-size", "8", "--code-dim", "4",
        "--resnet-channels", "8", "--res-blocks", "1", "--limit", "200"]  # fmt: skip


def _quantizer(update="loss", **options) -> VectorQuantizer:
    q = VectorQuantizer(3, 2, update=update, **options).double()
    with torch.no_grad():
        q.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=torch.float64))
        if update == "ema":
            q.ema_sum.copy_(q.codebook)  # the averages' ratio is the codebook (counts start at 1)
    q.initialized.fill_(True)  # the hand-set codebook, not the first batch's
    return q


def _grid(rows) -> torch.Tensor:
    """Vectors (N, 2) as a grid (1, 2, 1, N)."""
    return torch.tensor(rows, dtype=torch.float64).T.reshape(1, 2, 1, -1)


def test_quantizer_picks_the_nearest_code_and_computes_both_losses_by_hand():
    q = _quantizer().eval()
    z_e = _grid([[0.1, 0.1], [0.9, -0.2], [0.2, 1.5], [0.6, 0.0]]).requires_grad_(True)
    out = q(z_e)
    assert out.codes.tolist() == [[[0, 1, 2, 1]]]  # 0.6 is nearer 1 than 0
    chosen = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(out.z_q.detach(), chosen.T.reshape(1, 2, 1, 4))
    by_hand = 0.1**2 + 0.1**2 + 0.1**2 + 0.2**2 + 0.2**2 + 0.5**2 + 0.4**2
    torch.testing.assert_close(out.codebook_loss, torch.tensor([by_hand], dtype=torch.float64))
    torch.testing.assert_close(out.commitment_loss, torch.tensor([by_hand], dtype=torch.float64))


def test_straight_through_gradient_is_the_identity_to_z_e_and_the_losses_reach_the_right_tensors():
    q = _quantizer().eval()
    z_e = _grid([[0.1, 0.1], [0.9, -0.2]]).requires_grad_(True)
    out = q(z_e)
    g = torch.randn_like(z_e)
    (dz,) = torch.autograd.grad((out.z_q * g).sum(), z_e)
    torch.testing.assert_close(dz, g)  # d z_q / d z_e = I
    # codebook loss: gradient to the codes only, 2 (e - z_e) for each chosen code
    dz, de = torch.autograd.grad(out.codebook_loss.sum(), [z_e, q.codebook], allow_unused=True)
    assert dz is None or dz.abs().max() == 0
    want = torch.zeros(3, 2, dtype=torch.float64)
    want[0] = 2 * (torch.tensor([0.0, 0.0]) - torch.tensor([0.1, 0.1]))
    want[1] = 2 * (torch.tensor([1.0, 0.0]) - torch.tensor([0.9, -0.2]))
    torch.testing.assert_close(de, want)
    # commitment loss: gradient to the encoder output only
    dz, de = torch.autograd.grad(out.commitment_loss.sum(), [z_e, q.codebook], allow_unused=True)
    assert de is None or de.abs().max() == 0
    torch.testing.assert_close(dz, 2 * (z_e - out.z_q).detach())


def test_ema_update_by_hand():
    decay, eps = 0.9, 1e-5
    q = _quantizer("ema", decay=decay, eps=eps).train()
    init = q.codebook.clone()
    z_e = _grid([[0.1, 0.1], [0.3, -0.1], [0.8, 0.2]])  # codes 0, 0, 1; code 2 unused
    out = q(z_e)
    assert out.codes.flatten().tolist() == [0, 0, 1]
    counts = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    sums = torch.tensor([[0.4, 0.0], [0.8, 0.2], [0.0, 0.0]], dtype=torch.float64)
    ema_count = decay * torch.ones(3, dtype=torch.float64) + (1 - decay) * counts  # counts start at 1
    ema_sum = decay * init + (1 - decay) * sums
    n = ema_count.sum()
    smoothed = (ema_count + eps) / (n + 3 * eps) * n
    torch.testing.assert_close(q.ema_count, ema_count)
    torch.testing.assert_close(q.ema_sum, ema_sum)
    torch.testing.assert_close(q.codebook, ema_sum / smoothed.unsqueeze(-1))
    # this batch was quantized with the codebook before the update
    torch.testing.assert_close(out.z_q, init[[0, 0, 1]].T.reshape(1, 2, 1, 3))
    # in eval mode nothing moves
    before = q.codebook.clone()
    q.eval()(z_e)
    torch.testing.assert_close(q.codebook, before)


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_dead_codes_restart_from_encoder_outputs_of_the_batch(update):
    q = _quantizer(update, dead_code_restart=2).train()
    z_e = _grid([[0.1, 0.1], [0.2, 0.0], [5.0, 5.0]])  # codes 0, 0, 2 (5,5 is nearest (0,2)); code 1 unused
    q(z_e)
    assert q.idle_steps.tolist() == [0, 1, 0]
    torch.testing.assert_close(q.codebook[1], torch.tensor([1.0, 0.0], dtype=torch.float64))  # not yet
    q(z_e)  # second step unused: restarted
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    assert any(torch.equal(q.codebook[1], r) for r in rows), q.codebook[1]
    assert q.idle_steps[1] == 0
    if update == "ema":
        assert q.ema_count[1] == 1.0 and torch.equal(q.ema_sum[1], q.codebook[1])


def test_without_restarts_no_code_is_reset():
    q = _quantizer().train()
    z_e = _grid([[0.1, 0.1], [0.2, 0.0]])
    for _ in range(5):
        q(z_e)
    torch.testing.assert_close(q.codebook[1:], torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64))


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_the_codebook_starts_from_distinct_rows_of_the_first_batch(update):
    """K = 512 codes from the 4,900 encoder outputs of a batch of 100 Fashion-MNIST-sized grids
    (7 x 7): drawn with replacement, 16-33 codes started as exact duplicates of another (mean 24
    over 20 seeds) and stayed dead, since the nearest-code argmin always picks the first of equals."""
    for seed in range(3):
        torch.manual_seed(seed)
        q = VectorQuantizer(512, 8, update=update).train()
        q(torch.randn(100, 8, 7, 7))  # distinct rows
        assert torch.unique(q.codebook, dim=0).shape[0] == 512, seed


@pytest.mark.parametrize("rows", [3, 4])
def test_restarts_use_every_row_once_before_any_twice(rows):
    """Fewer (or as many) rows than codes to reset: every row is used, and only the remainder repeats."""
    torch.manual_seed(0)
    q = VectorQuantizer(4, 2).train()
    z_e = torch.randn(1, 2, 1, rows)
    q(z_e)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 2)
    assert torch.unique(q.codebook, dim=0).shape[0] == rows
    assert all(any(torch.equal(c, r) for c in q.codebook) for r in flat)


def test_the_codebook_starts_from_the_first_training_batch():
    torch.manual_seed(0)
    q = VectorQuantizer(4, 3).train()
    z_e = torch.randn(2, 3, 2, 2) * 5
    q(z_e)
    rows = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    assert all(any(torch.equal(c, r) for r in rows) for c in q.codebook)
    assert bool(q.initialized)


def test_codebook_usage():
    codes = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    u = codebook_usage(codes, 8)
    assert u["codes_used"] == 4
    assert math.isclose(u["codebook_perplexity"], 4.0)
    assert codebook_usage(torch.zeros(5, dtype=torch.long), 8) == {"codebook_perplexity": 1.0, "codes_used": 1}


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "gaussian-learned"])
@pytest.mark.parametrize("update", ["loss", "ema"])
def test_vq_bound_is_its_definition(likelihood, update):
    torch.manual_seed(0)
    model = build_vqvae((1, 8, 8), likelihood=likelihood, resnet_channels=8, res_blocks=1, codebook_size=5, code_dim=3,
                        codebook_update=update).double().eval()  # fmt: skip
    x = torch.rand(4, 1, 8, 8, dtype=torch.float64).round()
    res = vq(model, x)
    z_e = model.encoder(x)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 3)
    codes = torch.cdist(flat, model.quantizer.codebook).argmin(-1).view(4, 2, 2)
    log_px = model.decode_codes(codes).log_prob(x)
    rate = 4 * math.log(5)  # uniform prior over a 2x2 grid of 5 codes
    torch.testing.assert_close(res.reconstruction, log_px)
    torch.testing.assert_close(res.kl, torch.full((4,), rate, dtype=torch.float64))
    torch.testing.assert_close(res.bound, log_px - rate)
    e = model.quantizer.codebook[codes].permute(0, 3, 1, 2)
    sq = (z_e - e).square().sum((1, 2, 3))
    torch.testing.assert_close(res.objective, log_px - sq - 0.25 * sq)


def test_vq_bound_uses_the_learned_prior_when_attached():
    torch.manual_seed(0)
    model = build_vqvae((1, 8, 8), resnet_channels=8, res_blocks=1, codebook_size=5, code_dim=3).eval()
    from vaelab.nets.pixelcnn import GatedPixelCNN

    prior = GatedPixelCNN(5, layers=2, channels=8).eval()
    model.set_code_prior(prior)
    x = torch.rand(3, 1, 8, 8).round()
    res = vq(model, x)
    torch.testing.assert_close(res.kl, -prior.log_prob(model.codes(x)).detach())
    assert "code_prior" not in dict(model.named_modules())  # not saved with the VQ-VAE's weights


def test_ema_codebook_gets_no_gradient_and_the_loss_codebook_does():
    for update, moves in (("loss", True), ("ema", False)):
        torch.manual_seed(0)
        model = build_vqvae((1, 8, 8), resnet_channels=8, res_blocks=1, codebook_size=5, code_dim=3, codebook_update=update)
        model.train()
        res = vq(model, torch.rand(6, 1, 8, 8).round())
        res.objective.mean().backward()
        grad = model.quantizer.codebook.grad
        assert (grad is not None and grad.abs().sum() > 0) == moves, update


@pytest.mark.parametrize("update", ["loss", "ema"])
def test_vqvae_runs_on_the_meta_device(update):
    """Forward and backward in eval mode (the training-time codebook updates branch on data,
    which the meta device cannot; they take their device from the batch, checked on the CPU)."""
    model = build_vqvae((1, 8, 8), resnet_channels=8, res_blocks=1, codebook_size=5, code_dim=3, codebook_update=update,
                        dead_code_restart=1).to("meta").eval()  # fmt: skip
    res = vq(model, torch.empty(2, 1, 8, 8, device="meta"))
    res.objective.mean().backward()
    assert res.bound.device.type == "meta" and model.quantizer.codebook.device.type == "meta"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--objective", "iwae", "--k", "5"], "--objective does not apply to --model vqvae"),
        (["--posterior", "full"], "--posterior does not apply to --model vqvae"),
        (["--kl-warmup", "5"], "--kl-warmup does not apply"),
        (["--kl-cycles", "2"], "--kl-cycles does not apply"),
        (["--free-bits", "1"], "--free-bits does not apply"),
        (["--grad-estimator", "stl"], "--grad-estimator does not apply"),
        (["--prior", "mog:3"], "--prior does not apply"),
        (["--net", "mlp"], "needs --net resnet"),
        (["--codebook-size", "1"], "--codebook-size must be at least 2"),
        (["--ema-decay", "1.5"], "--ema-decay must be in (0, 1)"),
        (["--commitment", "-1"], "--commitment must be a non-negative"),
    ],
)
def test_bad_vqvae_combinations_are_one_line_exit_2_errors(tmp_path, flags, message):
    out = tmp_path / "run"
    r = run_cli("train", *TINY, "--epochs", "1", "--out", str(out), "--quiet", *flags)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and message in r.stderr, r.stderr
    assert not out.exists()


def test_vq_options_on_a_vae_are_refused():
    with pytest.raises(ConfigError, match="codebook_update= does not apply to model= vae; it is an option of model= vqvae"):
        cfg.build({"model": {"codebook_update": "ema"}})


def test_vqvae_on_vector_data_is_refused(tmp_path):
    import numpy as np

    np.save(tmp_path / "v.npy", np.random.default_rng(0).random((50, 10)).astype(np.float32))
    r = run_cli("train", "--model", "vqvae", "--data", str(tmp_path / "v.npy"), "--binarize", "none",
                "--likelihood", "gaussian", "--epochs", "1", "--out", str(tmp_path / "r"), "--quiet")  # fmt: skip
    assert r.returncode == 2 and "multiples of 4" in r.stderr and r.stderr.count("\n") == 1


def _train_tiny(tmp_path, *extra: str, epochs: int = 2):
    run = tmp_path / "vq"
    r = run_cli("train", *TINY, "--epochs", str(epochs), "--out", str(run), "--quiet", *extra)
    assert r.returncode == 0, r.stderr
    return run


def test_vqvae_trains_evaluates_and_samples_through_its_prior(tmp_path):
    run = _train_tiny(tmp_path, "--codebook-update", "ema", "--dead-code-restart", "10")
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for key in ("codebook_perplexity", "codes_used", "valid_reconstruction", "valid_codebook_loss",
                "valid_commitment_loss", "train_codebook_loss", "train_commitment_loss", "valid_bound"):  # fmt: skip
        assert key in records[-1], key
    # the monitor's figures are those of the validation codes under the last epoch's weights
    assert records[-1]["best_epoch"] == records[-1]["epoch"], "the check below needs the last weights kept"
    from vaelab.runs.rundir import load_data, read_config

    with torch.no_grad():
        codes = load(run, code_prior=False).codes(load_data(read_config(run)[0], "valid").fixed())
    usage = codebook_usage(codes, 8)
    assert records[-1]["codes_used"] == usage["codes_used"]
    assert math.isclose(records[-1]["codebook_perplexity"], usage["codebook_perplexity"], rel_tol=1e-9)
    assert (run / "reconstructions.png").exists() and not (run / "samples.png").exists()
    r = run_cli("sample", str(run))
    assert r.returncode == 2 and "vaelab prior" in r.stderr and r.stderr.count("\n") == 1
    r = run_cli("evaluate", str(run), "--json")
    assert r.returncode == 0, r.stderr
    uniform = json.loads(r.stdout)
    assert uniform["log_likelihood"] is None and uniform["prior"] == "uniform"
    assert math.isclose(uniform["kl"], 4 * math.log(8), rel_tol=1e-6)  # 2x2 grid of 8 codes
    assert math.isclose(uniform["elbo"], uniform["reconstruction"] - uniform["kl"], rel_tol=1e-5)
    for key in ("elbo", "reconstruction", "kl", "codebook_perplexity", "codes_used"):
        assert key in uniform
    text = run_cli("evaluate", str(run)).stdout
    assert "not estimated" in text and "one-hot" in text

    r = run_cli("prior", str(run), "--epochs", "3", "--layers", "2", "--channels", "8", "--quiet")
    assert r.returncode == 0, r.stderr
    assert (run / "samples.png").exists() and (run / "prior" / "model.safetensors").exists()
    learned = json.loads(run_cli("evaluate", str(run), "--json").stdout)
    assert learned["prior"] == "pixelcnn"
    assert learned["reconstruction"] == uniform["reconstruction"]
    # the exact log p(z_q) of the PixelCNN, not the uniform rate
    model = load(run)
    from vaelab.runs.rundir import load_data, read_config

    x = load_data(read_config(run)[0], "test").fixed()
    with torch.no_grad():
        want = -model.code_prior.log_prob(code_grids(model, x)).mean().item()
    assert math.isclose(learned["kl"], want, rel_tol=1e-5)
    r = run_cli("prior", str(run), "--epochs", "3", "--layers", "2", "--channels", "8", "--quiet")
    assert r.returncode == 2 and "already has a trained prior" in r.stderr
    r = run_cli("sample", str(run), "-n", "4", "-o", str(tmp_path / "s.png"))
    assert r.returncode == 0 and (tmp_path / "s.png").exists()


def test_quality_scores_a_vqvae_through_its_prior(tmp_path, monkeypatch):
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    run = _train_tiny(tmp_path, "--dead-code-restart", "10")
    r = run_cli("quality", str(run), "--n", "50", "--json")
    assert r.returncode == 2 and "vaelab prior" in r.stderr and r.stderr.count("\n") == 1
    assert run_cli("prior", str(run), "--epochs", "2", "--layers", "2", "--channels", "8", "--quiet").returncode == 0
    r = run_cli("quality", str(run), "--n", "50", "--json")
    assert r.returncode == 0, r.stderr
    scores = json.loads(r.stdout)
    assert scores["n_samples"] == 50 and set(scores["reference"]) == {"fd", "precision", "recall", "density",
                                                                      "coverage", "classifier_score"}  # fmt: skip
    r = run_cli("quality", str(run), "--n", "50", "--sampler", "gmm", "--json")
    assert r.returncode == 2 and "continuous latent" in r.stderr and r.stderr.count("\n") == 1


def test_vae_only_analyses_of_a_vqvae_run_are_one_line_errors(tmp_path):
    run = _train_tiny(tmp_path, epochs=1)
    for args, message in (
        (["diagnose", str(run), "--k-list", "1,5", "--reps", "3"], "vaelab diagnose needs a VAE's continuous latent"),
        (["gaps", str(run), "--limit", "5", "--k", "10"], "vaelab gaps needs a VAE's continuous latent"),
        (["sample", str(run), "--sampler", "gmm", "-o", str(tmp_path / "g.png")], "--sampler gmm needs"),
        (["evaluate", str(run), "--bounds", "1,5", "--k", "10"], "--bounds and --proposal are importance-sampling"),
        (["evaluate", str(run), "--proposal", "prior"], "--bounds and --proposal are importance-sampling"),
    ):
        r = run_cli(*args)
        assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    assert not (tmp_path / "g.png").exists()


def test_prior_refuses_a_vae_run_and_changed_settings(tmp_path):
    run = tmp_path / "vae"
    assert run_cli("train", "--data", "digits", "--limit", "100", "--epochs", "1", "--hidden", "8",
                   "--latent-dim", "2", "--out", str(run), "--quiet").returncode == 0  # fmt: skip
    r = run_cli("prior", str(run), "--quiet")
    assert r.returncode == 2 and "for --model vqvae runs" in r.stderr
    vq_run = _train_tiny(tmp_path, epochs=1)
    (vq_run / "prior").mkdir()
    (vq_run / "prior" / "prior.json").write_text("{}")
    r = run_cli("prior", str(vq_run), "--quiet", "--epochs", "1")
    assert r.returncode == 2 and "other settings" in r.stderr
    assert (vq_run / "prior" / "prior.json").read_text() == "{}"  # nothing on disk damaged


def _kill_and_resume(cmd, resume_cmd, run, kills=((1, 0.0), (3, 0.011))):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    for kill_after_epoch, delay in kills:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and _checkpoint_epoch(run) < kill_after_epoch:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        cmd = resume_cmd
    subprocess.run(cmd, check=True, env=env, capture_output=True)


def test_sigkill_then_resume_is_bitwise_for_an_ema_vqvae_and_its_prior(tmp_path):
    """Kill the VQ-VAE (EMA codebook, dead-code restarts: buffers and random restarts) and then
    its prior mid-training; resumed, both equal uninterrupted runs byte for byte."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    flags = [*TINY, "--limit", "600", "--codebook-update", "ema", "--dead-code-restart", "3", "--epochs", "5",
             "--batch-size", "20", "--quiet"]  # fmt: skip
    vq = lambda out: [sys.executable, "-m", "vaelab", "train", *flags, "--out", str(out)]  # noqa: E731
    prior_flags = ["--epochs", "5", "--layers", "2", "--channels", "8", "--batch-size", "16", "--quiet"]
    prior = lambda run: [sys.executable, "-m", "vaelab", "prior", str(run), *prior_flags]  # noqa: E731
    ref = tmp_path / "ref"
    subprocess.run(vq(ref), check=True, env=env, capture_output=True)
    subprocess.run(prior(ref), check=True, env=env, capture_output=True)
    run = tmp_path / "killed"
    resume = [sys.executable, "-m", "vaelab", "train", "--resume", str(run), "--quiet"]
    _kill_and_resume(vq(run), resume, run)
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    _kill_and_resume(prior(run), prior(run), run / "prior")
    assert (run / "prior" / "model.safetensors").read_bytes() == (ref / "prior" / "model.safetensors").read_bytes()
    lines = (run / "prior" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 6))


def test_library_prior_fit_and_load(tmp_path):
    config = cfg.build({"data": {"data": "digits", "binarize": "threshold", "limit": 150},
                        "model": {"model": "vqvae", "resnet_channels": 8, "res_blocks": 1, "codebook_size": 6, "code_dim": 3},
                        "train": {"epochs": 1}})  # fmt: skip
    start_run(config, tmp_path / "r", progress=False)
    assert load_code_prior(tmp_path / "r") is None
    result = fit_code_prior(tmp_path / "r", PriorConfig(layers=1, channels=4, epochs=2), progress=False)
    assert result.epochs == 2
    model = load(tmp_path / "r")
    assert isinstance(model, VQVAE) and model.code_prior is not None
    assert load(tmp_path / "r", code_prior=False).code_prior is None
    with pytest.raises(RunError, match="already has a trained prior"):
        fit_code_prior(tmp_path / "r", PriorConfig(layers=1, channels=4, epochs=2), progress=False)


def test_a_prior_being_trained_refuses_a_second_process(tmp_path):
    """The code prior's folder is locked while it trains, like a run directory: a second
    `vaelab prior RUN` meanwhile is one line, and nothing of the first is touched."""
    config = cfg.build({"data": {"data": "digits", "binarize": "threshold", "limit": 150},
                        "model": {"model": "vqvae", "resnet_channels": 8, "res_blocks": 1, "codebook_size": 6, "code_dim": 3},
                        "train": {"epochs": 1}})  # fmt: skip
    run = tmp_path / "r"
    start_run(config, run, progress=False)
    (run / "prior").mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run / "prior")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run_cli("prior", str(run), "--layers", "1", "--channels", "4", "--epochs", "1")
        assert proc.returncode == 2 and proc.stderr.splitlines() == [
            f"vaelab: error: {run / 'prior'} is being trained by another process right now; wait for it to finish, "
            f"or train into another directory"
        ], proc.stderr
        assert sorted(p.name for p in (run / "prior").iterdir()) == []
    finally:
        holder.kill()
        holder.wait()
    assert fit_code_prior(run, PriorConfig(layers=1, channels=4, epochs=1), progress=False).epochs == 1
