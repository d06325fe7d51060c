"""The command line end to end on digits, and its error paths (one line, exit 2, nothing damaged)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vaelab
from vaelab.cli.main import main
from vaelab.inference.local import fit_local

SMALL = ["--hidden", "32", "--latent-dim", "2", "--epochs", "2", "--limit", "300", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--data", "digits", "--binarize", "threshold", "--out", str(out), *SMALL]) == 0
    return out


def test_train_writes_a_complete_run_directory(run_dir):
    names = {p.name for p in run_dir.iterdir()}
    assert {"config.json", "model.safetensors", "checkpoint", "metrics.jsonl", "samples.png",
            "reconstructions.png", "latent.png"} <= names
    config = json.loads((run_dir / "config.json").read_text())
    assert config["data"]["binarize"] == "threshold" and config["model"]["hidden"] == [32]
    assert config["train"]["epochs"] == 2 and config["event_shape"] == [1, 8, 8]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_evaluate_json_matches_an_independent_estimate(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--k", "500", "--limit", "50", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"log_likelihood", "log_likelihood_stderr", "elbo", "reconstruction", "kl",
                        "active_units", "n_examples", "k", "bounds", "bounds_stderr", "trained_objective",
                        "trained_bound", "trained_bound_stderr", "proposal", "khat_mean", "khat_above_0_7",
                        "khat_worst", "kl_of"}
    assert out["kl_of"] == "encoder"
    assert out["trained_objective"] == "elbo(k=1, beta=1)"
    assert out["n_examples"] == 50 and out["k"] == 500
    assert out["elbo"] <= out["log_likelihood"] + 3 * out["log_likelihood_stderr"]
    # an independent importance-sampling estimate through the public API
    model = vaelab.load(run_dir)
    assert not model.training
    x = vaelab.load_dataset("digits", split="test", binarize="threshold", limit=50)
    torch.manual_seed(123)
    with torch.no_grad():
        q = model.encode(x)
        z = q.sample((500,))
        lw = model.decode(z).log_prob(x) + model.prior().log_prob(z) - q.log_prob(z)
        mine = (torch.logsumexp(lw, 0) - torch.log(torch.tensor(500.0))).mean().item()
    assert abs(mine - out["log_likelihood"]) < 4 * out["log_likelihood_stderr"] * 2**0.5


def test_evaluate_prints_a_readable_table(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--k", "10", "--limit", "5", "--quiet"]) == 0
    text = capsys.readouterr().out
    for word in ("log-likelihood", "+-", "ELBO", "reconstruction", "KL", "active units"):
        assert word in text


def test_evaluate_reports_pareto_khat_and_warns_on_heavy_tails(run_dir, capsys, monkeypatch):
    """k-hat of every example's weights in the JSON and the table; a warning line on stderr when
    more than KHAT_WARN_FRACTION of the examples exceed 0.7 (forced here: on this run the share
    is 0 of 50 at K=500)."""
    evaluate_module = sys.modules["vaelab.evaluate"]  # vaelab.evaluate is the function
    args = ["evaluate", str(run_dir), "--k", "500", "--limit", "50", "--quiet"]
    assert main([*args, "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert -1 < out["khat_mean"] < 0.7 and out["khat_above_0_7"] <= 0.05
    worst = [w["khat"] for w in out["khat_worst"]]
    assert len(worst) == 5 and worst == sorted(worst, reverse=True) and worst[0] >= out["khat_mean"]
    assert all(0 <= w["index"] < 50 for w in out["khat_worst"])
    assert "Pareto k-hat" not in captured.err
    monkeypatch.setattr(evaluate_module, "KHAT_WARN_FRACTION", -1.0)
    for extra in (["--json"], [], ["--proposal", "prior"]):
        assert main([*args, *extra]) == 0
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if line.startswith("vaelab: warning: Pareto k-hat > 0.7")]
        assert len(lines) == 1, captured.err
        assert "unreliable" in lines[0] and "--k" in lines[0] and "warning" not in captured.out
        if not extra:
            assert "Pareto k-hat    mean" in captured.out and "above 0.7" in captured.out
        if "prior" in extra:
            assert "--proposal posterior" in lines[0]


def test_sample_and_reconstruct_write_images(run_dir, tmp_path, capsys):
    assert main(["sample", str(run_dir), "-n", "9", "-o", str(tmp_path / "s.png")]) == 0
    assert main(["reconstruct", str(run_dir), "-n", "5", "-o", str(tmp_path / "r.pdf")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "r.pdf").read_bytes()[:4] == b"%PDF"


def test_config_file_is_overridden_by_flags(tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('[model]\nhidden = [16, 8]\nlatent_dim = 3\n[train]\nepochs = 5\nlr = 0.01\n')
    out = tmp_path / "run"
    assert main(["train", "--config", str(toml), "--epochs", "1", "--limit", "100", "--out", str(out), "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["hidden"] == [16, 8] and config["model"]["latent_dim"] == 3
    assert config["train"]["epochs"] == 1 and config["train"]["lr"] == 0.01


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Runs the CLI in-process (fast) and returns what a subprocess would."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def run_subprocess(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vaelab", *args], capture_output=True, text=True)


def test_real_process_exit_codes(tmp_path):
    """The installed entry point turns errors into exit status 2 and one line, no traceback."""
    assert_one_line_error(run_subprocess("train", "--likelihood", "poisson"), "bernoulli")
    assert_one_line_error(run_subprocess("evaluate", str(tmp_path / "nope")), "does not exist")


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_errors_are_one_line_with_exit_code_2(tmp_path, run_dir):
    # usage errors (argparse) and configuration errors alike
    assert_one_line_error(run_cli("train", "--likelihood", "poisson", "--out", str(tmp_path / "a")),
                          "bernoulli", "gaussian", "gaussian-learned")
    assert_one_line_error(run_cli("train", "--binarize", "sometimes"), "dynamic", "threshold")
    assert_one_line_error(run_cli("train", "--epochs", "0", "--out", str(tmp_path / "b")), "--epochs")
    assert_one_line_error(run_cli("train", "--hidden", "20,x", "--out", str(tmp_path / "b")), "--hidden")
    assert_one_line_error(run_cli("train", "--data", "cifar", "--out", str(tmp_path / "b")), "digits", "fashion-mnist")
    assert_one_line_error(run_cli("train", "--binarize", "none", "--out", str(tmp_path / "b")),
                          "binary", "--binarize")
    assert_one_line_error(run_cli("evaluate", str(tmp_path / "nope")), "does not exist")
    assert_one_line_error(run_cli("evaluate", str(run_dir), "--k", "0"), "--k")
    assert_one_line_error(run_cli("sample", str(run_dir), "-o", str(tmp_path / "x.bmpx")), "image format")
    assert_one_line_error(run_cli("train", "--resume", str(tmp_path / "nope")), "does not exist")
    assert_one_line_error(run_cli("frobnicate"), "invalid choice")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_bad_config_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = 3\n")
    assert_one_line_error(run_cli("train", "--config", str(bad)), "epoch", "valid keys")
    bad.write_text("[train\n")
    assert_one_line_error(run_cli("train", "--config", str(bad)), "not valid TOML")
    assert_one_line_error(run_cli("train", "--config", str(tmp_path / "missing.toml")), "does not exist")


def test_corrupt_files_are_reported_and_left_alone(run_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    before = {p: p.read_bytes() for p in broken.rglob("*") if p.is_file()}
    assert_one_line_error(run_cli("evaluate", str(broken), "--k", "5"), "model.safetensors", "corrupt")
    (broken / "config.json").write_text("{ nope")
    before[broken / "config.json"] = (broken / "config.json").read_bytes()
    assert_one_line_error(run_cli("sample", str(broken)), "config.json", "corrupt")
    assert {p: p.read_bytes() for p in broken.rglob("*") if p.is_file()} == before
    # an existing run directory is never overwritten by a new run
    assert_one_line_error(run_cli("train", "--out", str(broken), "--epochs", "1"), "already exists", "--resume")
    assert {p: p.read_bytes() for p in broken.rglob("*") if p.is_file()} == before


def test_dequantized_gaussian_run_reports_a_discrete_bound(tmp_path, capsys):
    out = tmp_path / "g"
    assert main(["train", "--binarize", "none", "--dequantize", "--likelihood", "gaussian-learned",
                 "--out", str(out), *SMALL]) == 0
    assert json.loads((out / "config.json").read_text())["data"]["dequantize"] is True
    capsys.readouterr()
    assert main(["evaluate", str(out), "--k", "50", "--limit", "20", "--json", "--quiet"]) == 0
    s = json.loads(capsys.readouterr().out)
    # log P(k) >= log p((k + u)/L) - D log L, with D = 64 pixels and L = 17 grey levels
    assert s["discrete_log_likelihood_bound"] == pytest.approx(s["log_likelihood"] - 64 * math.log(17))
    assert s["bits_per_dim"] == pytest.approx(-s["discrete_log_likelihood_bound"] / (64 * math.log(2)))
    assert s["discrete_log_likelihood_bound"] < 0


def test_dequantize_needs_grey_levels():
    assert_one_line_error(run_cli("train", "--dequantize", "--binarize", "threshold"), "--binarize none")


def test_array_data_end_to_end(tmp_path, capsys):
    """Any N x D array: a Gaussian VAE trains, is scored as a density, and its figures draw
    (vectors as strips, an unlabelled latent scatter)."""
    import warnings

    import numpy as np

    path = tmp_path / "vectors.npy"
    np.save(path, np.random.default_rng(0).normal(size=(200, 10)).astype("float32"))
    out = tmp_path / "vec"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert main(["train", "--data", str(path), "--binarize", "none", "--likelihood", "gaussian",
                     "--obs-precision", "1", "--out", str(out), *SMALL]) == 0
    assert (out / "latent.png").exists()
    capsys.readouterr()
    assert main(["evaluate", str(out), "--k", "20", "--quiet"]) == 0
    assert "density of the values as given, K=20" in capsys.readouterr().out


# -- importance-weighted runs, bounds and diagnostics (issue 3) ---------------------------------


@pytest.fixture(scope="module")
def iwae_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "iwae"
    args = ["train", "--data", "digits", "--binarize", "threshold", "--objective", "iwae", "--k", "5",
            "--grad-estimator", "dreg", "--kl-warmup", "1", "--hidden", "32", "--latent-dim", "4",
            "--epochs", "3", "--limit", "400", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    return out


def test_evaluate_reports_bounds_from_the_same_particles(iwae_run, capsys):
    assert main(["evaluate", str(iwae_run), "--k", "500", "--bounds", "1,5,50", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    b, se = out["bounds"], out["bounds_stderr"]
    assert list(b) == ["1", "5", "50"] and list(se) == ["1", "5", "50"]
    # E[L_1] <= E[L_5] <= E[L_50] <= log p(x), beyond the Monte-Carlo errors
    assert b["1"] + 3 * se["1"] < b["5"] and b["5"] + 3 * se["5"] < b["50"]
    assert b["50"] <= out["log_likelihood"] + 3 * math.hypot(se["50"], out["log_likelihood_stderr"])
    # L_1 is the ELBO: the two estimates of it differ only by Monte-Carlo error (KL in closed form
    # for one, from the particles for the other)
    assert abs(b["1"] - out["elbo"]) < 0.1 * abs(out["elbo"] - out["log_likelihood"]) + 4.5 * se["1"]
    # the trained bound is L_5, estimated from one draw per example
    assert out["trained_objective"] == "iwae(k=5, dreg)"
    assert abs(out["trained_bound"] - b["5"]) < 4.5 * out["trained_bound_stderr"]


def test_evaluate_table_lists_the_bounds(iwae_run, capsys):
    assert main(["evaluate", str(iwae_run), "--k", "20", "--bounds", "5", "--limit", "10", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "L_5" in text and "trained bound" in text and "iwae(k=5, dreg)" in text


def test_training_logs_collapse_diagnostics(iwae_run):
    rows = [json.loads(line) for line in (iwae_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["kl_scale"] for r in rows][-1] == 1.0 and rows[0]["kl_scale"] < 1.0
    for r in rows:
        assert 0 <= r["active_units"] <= 4 and len(r["kl_per_dim"]) == 4
        assert 0 <= r["mutual_info"] <= math.log(40) + 1e-6  # 40 validation examples


def test_diagnose_json_and_plot(iwae_run, tmp_path, capsys):
    plot = tmp_path / "snr.png"
    # plain IWAE gradients (the run was trained with DReG, which diagnose measures by default)
    args = ["diagnose", str(iwae_run), "--k-list", "1,4,64", "--reps", "30", "--batch", "20", "--json", "-o", str(plot),
            "--grad-estimator", "reparam"]  # fmt: skip
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["k"] == [1, 4, 64]
    assert len(out["encoder_snr"]) == len(out["decoder_snr"]) == len(out["ess"]) == 3
    assert out["ess"][0] == pytest.approx(1.0) and 0 < out["ess"][2] < out["ess"][1] < 1
    # Rainforth et al.: the IWAE decoder SNR rises with K and the encoder's falls
    assert out["decoder_snr"][2] > out["decoder_snr"][0] and out["encoder_snr"][2] < out["encoder_snr"][0]
    assert plot.stat().st_size > 0 and out["plot"] == str(plot)


def test_diagnose_prints_a_table(iwae_run, capsys):
    assert main(["diagnose", str(iwae_run), "--k-list", "2,8", "--reps", "5", "--batch", "10", "--quiet",
                 "--grad-estimator", "dreg"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "encoder SNR" in text and "decoder SNR" in text and "ESS" in text
    assert (iwae_run / "snr.png").exists()


def test_collapse_warning_is_one_line_on_stderr(tmp_path):
    proc = run_cli("train", "--data", "digits", "--binarize", "threshold", "--beta", "50", "--hidden", "32",
                   "--latent-dim", "4", "--epochs", "3", "--limit", "300", "--quiet", "--out", str(tmp_path / "c"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("vaelab: warning: posterior collapse")]
    assert len(warnings) == 1 and "--kl-warmup" in warnings[0]


def test_issue_3_options_are_checked(tmp_path, iwae_run):
    out = str(tmp_path / "z")
    assert_one_line_error(run_cli("train", "--objective", "elbo", "--m", "4", "--out", out), "--m", "miwae", "piwae")
    assert_one_line_error(run_cli("train", "--objective", "iwae", "--grad-estimator", "score", "--out", out), "score", "elbo")
    assert_one_line_error(run_cli("train", "--objective", "iwae", "--kl", "mc", "--out", out), "--kl", "elbo")
    assert_one_line_error(run_cli("train", "--objective", "ciwae", "--beta", "1.5", "--out", out), "[0, 1]")
    assert_one_line_error(run_cli("train", "--kl-warmup", "3", "--kl-cycles", "2", "--out", out), "choose one")
    assert_one_line_error(run_cli("train", "--free-bits", "-1", "--out", out), "--free-bits")
    assert_one_line_error(run_cli("train", "--grad-estimator", "magic", "--out", out), "invalid choice", "dreg")
    assert_one_line_error(run_cli("evaluate", str(iwae_run), "--k", "10", "--bounds", "5,50"), "--bounds", "at most")
    assert_one_line_error(run_cli("evaluate", str(iwae_run), "--bounds", "1,x"), "--bounds")
    assert_one_line_error(run_cli("diagnose", str(iwae_run), "--reps", "1"), "--reps")
    assert_one_line_error(run_cli("diagnose", str(iwae_run), "--objective", "nope"), "iwae", "miwae")
    assert_one_line_error(run_cli("diagnose", str(iwae_run), "--k-list", "0,5"), "--k-list")
    assert_one_line_error(run_cli("diagnose", str(iwae_run), "--objective", "elbo", "--m", "3"), "--m")
    assert not (tmp_path / "z").exists()


def test_sample_from_a_gmm_of_the_encoder_means(run_dir, tmp_path, capsys):
    out = tmp_path / "gmm.png"
    assert main(["sample", str(run_dir), "--sampler", "gmm", "--components", "3", "-n", "16", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"16 samples in {out}" and out.stat().st_size > 0
    assert_one_line_error(run_cli("sample", str(run_dir), "--sampler", "gmm", "--components", "0"), "--components")
    assert_one_line_error(run_cli("sample", str(run_dir), "--sampler", "flow"), "invalid choice", "gmm")


def test_evaluate_with_the_prior_as_proposal(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--k", "200", "--limit", "20", "--proposal", "prior", "--json", "--quiet"]) == 0
    prior = json.loads(capsys.readouterr().out)
    # the KL and active units of the proposal p(z) say nothing of the model: left out
    assert prior["proposal"] == "prior" and prior["kl"] is None and prior["active_units"] is None
    assert prior["kl_of"] is None
    assert main(["evaluate", str(run_dir), "--k", "20", "--limit", "5", "--proposal", "prior", "--quiet"]) == 0
    table = capsys.readouterr().out
    assert "log-likelihood" in table and "KL" not in table and "active units" not in table
    assert main(["evaluate", str(run_dir), "--k", "200", "--limit", "20", "--json", "--quiet"]) == 0
    post = json.loads(capsys.readouterr().out)
    assert post["proposal"] == "posterior"
    # both estimate log p(x) from below; the prior's weights are far more spread out
    assert prior["log_likelihood_stderr"] > post["log_likelihood_stderr"]


def test_gaps_on_a_trained_run(run_dir, capsys):
    args = ["gaps", str(run_dir), "--limit", "30", "--k", "500", "--steps", "300", "--lr", "0.02", "--json", "--quiet"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"log_likelihood", "local_elbo", "amortized_elbo", "approximation_gap", "amortization_gap", "n_examples"}
    assert out["n_examples"] == 30
    assert out["approximation_gap"] == pytest.approx(out["log_likelihood"] - out["local_elbo"])
    assert out["amortization_gap"] == pytest.approx(out["local_elbo"] - out["amortized_elbo"])
    # both gaps are non-negative in expectation; on this small model they are tenths of a nat,
    # several times the Monte-Carlo error of 500-particle means over 30 examples (~0.03)
    assert out["amortization_gap"] > 0 and out["approximation_gap"] > 0
    assert main(["gaps", str(run_dir), "--limit", "5", "--k", "50", "--steps", "10", "--quiet"]) == 0
    assert "amortization gap" in capsys.readouterr().out
    assert_one_line_error(run_cli("gaps", str(run_dir), "--steps", "0"), "--steps")


@pytest.fixture(scope="module")
def flow_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "planar"
    args = ["train", "--data", "digits", "--binarize", "threshold", "--out", str(out),
            "--posterior", "planar:2", "--prior", "mog:3", *SMALL]  # fmt: skip
    assert main(args) == 0
    return out


def test_flow_posterior_and_mixture_prior_run_end_to_end(flow_run, tmp_path, capsys):
    config = json.loads((flow_run / "config.json").read_text())
    assert config["model"]["posterior"] == "planar:2" and config["model"]["prior"] == "mog:3"
    record = json.loads((flow_run / "metrics.jsonl").read_text().splitlines()[-1])
    # a planar flow scores only its own samples: no I(x; z), no KL per dimension (null, not NaN)
    assert record["mutual_info"] is None and record["kl_per_dim"] is None
    assert math.isfinite(record["valid_bound"])
    weights = vaelab.files.load_tensors(flow_run / "model.safetensors")[0]
    assert {"latent_prior.means", "latent_prior.logits", "latent_prior.log_scales"} <= set(weights)
    assert main(["evaluate", str(flow_run), "--k", "300", "--limit", "20", "--bounds", "1,30", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["elbo"] < out["log_likelihood"] and out["bounds"]["1"] < out["bounds"]["30"]
    assert main(["gaps", str(flow_run), "--limit", "10", "--k", "300", "--steps", "100", "--json", "--quiet"]) == 0
    gaps = json.loads(capsys.readouterr().out)
    assert gaps["posterior"] == "planar flow (2 steps)" and "local_elbo_gaussian" in gaps
    assert main(["gaps", str(flow_run), "--limit", "5", "--k", "50", "--steps", "10", "--quiet"]) == 0
    assert "L[q*] diagonal Gaussian" in capsys.readouterr().out
    for command in (["sample", str(flow_run), "-o", str(tmp_path / "s.png")],
                    ["reconstruct", str(flow_run), "-o", str(tmp_path / "r.png")]):  # fmt: skip
        assert main(command) == 0
    capsys.readouterr()


def test_vamp_prior_with_a_full_covariance_posterior(tmp_path, capsys):
    out = tmp_path / "vamp"
    args = ["--data", "digits", "--binarize", "threshold", "--prior", "vamp:10", "--posterior", "full", *SMALL]
    assert main(["train", *args, "--out", str(out)]) == 0
    capsys.readouterr()
    weights = vaelab.files.load_tensors(out / "model.safetensors")[0]
    assert weights["latent_prior.pseudo_inputs"].shape == (10, 1, 8, 8)
    # the pseudo-inputs are trained: they moved from their initialization (rebuilt with the run's seed)
    config, shape = vaelab.runs.read_config(out)
    torch.manual_seed(config.train.seed)
    initial = vaelab.runs.model_from_config(config, shape).latent_prior.pseudo_inputs.detach()
    moved = (weights["latent_prior.pseudo_inputs"] - initial).abs()
    assert float(moved.max()) > 1e-3 and float(moved.min()) < float(moved.max())
    assert main(["evaluate", str(out), "--k", "200", "--limit", "20", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    # no closed-form KL between a Gaussian and a VampPrior: the evaluator's Monte-Carlo KL is used
    assert result["elbo"] < result["log_likelihood"] and math.isfinite(result["kl"]) and result["kl"] > 0


def test_local_inference_trains_a_decoder_without_an_encoder(tmp_path, capsys):
    out = tmp_path / "local"
    args = ["train", "--data", "digits", "--binarize", "threshold", "--out", str(out), "--inference", "local",
            "--local-steps", "5", "--hidden", "32", "--latent-dim", "4", "--epochs", "4", "--limit", "300", "--quiet"]  # fmt: skip
    assert main(args) == 0
    capsys.readouterr()
    weights = vaelab.files.load_tensors(out / "model.safetensors")[0]
    assert weights and not any(key.startswith("encoder.") for key in weights)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # variational EM improves the decoder: the validation bound (with freshly fitted q_i) rises
    assert records[-1]["valid_bound"] > records[0]["valid_bound"] + 1.0
    model = vaelab.load(out)
    x = vaelab.runs.load_data(vaelab.runs.read_config(out)[0], "test", limit=20).fixed()
    torch.manual_seed(0)
    more = fit_local(model, x, steps=200, lr=0.1, init="prior", eval_samples=500).elbo.mean()
    torch.manual_seed(0)
    fewer = fit_local(model, x, steps=5, lr=0.1, init="prior", eval_samples=500).elbo.mean()
    assert more > fewer  # the E-step is real optimization: more steps, a better bound
    assert main(["evaluate", str(out), "--k", "200", "--limit", "20", "--json", "--quiet"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["elbo"] < result["log_likelihood"]
    # the KL and active units are those of the q fitted to each example, and say so
    assert result["kl_of"] == "fitted local q" and result["kl"] > 0
    assert main(["evaluate", str(out), "--k", "10", "--limit", "5", "--quiet"]) == 0
    table = capsys.readouterr().out.splitlines()
    kl_line = [line for line in table if line.strip().startswith("KL")]
    units_line = [line for line in table if line.strip().startswith("active units")]
    assert len(kl_line) == len(units_line) == 1
    assert "fitted local q" in kl_line[0] and "fitted local q" in units_line[0]
    assert_one_line_error(run_cli("gaps", str(out)), "no encoder")
    assert_one_line_error(run_cli("diagnose", str(out)), "--inference local")


def test_issue_4_options_are_checked(tmp_path):
    out = str(tmp_path / "z")
    cases = [
        (["--posterior", "planar"], ("number of flow steps",)),
        (["--posterior", "iaf:0"], ("positive integer",)),
        (["--posterior", "spline:3"], ("gaussian", "planar", "iaf")),
        (["--prior", "vamp"], ("number of components",)),
        (["--prior", "vamp:5", "--posterior", "planar:2"], ("--prior vamp", "gaussian or full")),
        (["--objective", "iwae", "--k", "2", "--grad-estimator", "dreg", "--posterior", "iaf:2"], ("reparam",)),
        (["--objective", "piwae", "--posterior", "planar:2"], ("piwae", "iwae")),
        (["--free-bits", "0.5", "--prior", "mog:3"], ("--free-bits", "--prior standard")),
        (["--inference", "local", "--posterior", "full"], ("--inference local",)),
        (["--inference", "psychic"], ("invalid choice", "local")),
        (["--local-steps", "0"], ("--local-steps",)),
    ]
    for flags, needles in cases:
        assert_one_line_error(run_cli("train", *flags, "--out", out), *needles)
    assert not (tmp_path / "z").exists()


# -- your data (issue 12): image folders, --classes, channels-last arrays, relative paths ------------


def _image_folder(root: Path, n_per_class: int = 30, rgb: bool = False) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(("shirt", "boot")):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            pixels = (rng.random((8, 8, 3) if rgb else (8, 8)) < 0.3 + 0.4 * label).astype(np.uint8) * 255
            Image.fromarray(pixels).save(root / name / f"{i:02d}.png")
    return root


def _metrics_without_timings(run: Path) -> list[dict]:
    timed = ("train_seconds", "examples_per_second")
    return [{k: v for k, v in r.items() if k not in timed} for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


def test_an_image_folder_trains_the_same_streamed_as_in_memory(tmp_path, monkeypatch):
    """A relative folder path is stored absolute; streaming the folder through worker processes
    (--memory-budget 0) trains exactly the model that the in-memory folder trains."""
    monkeypatch.chdir(tmp_path)
    _image_folder(tmp_path / "clothes")
    common = ["train", "--data", "clothes/", "--binarize", "threshold", "--hidden", "16", "--latent-dim", "2",
              "--epochs", "2", "--batch-size", "10", "--quiet"]  # fmt: skip
    assert run_cli(*common, "--out", "memory").returncode == 0
    streamed = run_cli(*common, "--memory-budget", "0", "--workers", "1", "--out", "stream")
    assert streamed.returncode == 0, streamed.stderr
    config = json.loads((tmp_path / "stream" / "config.json").read_text())
    assert config["data"]["data"] == str(tmp_path / "clothes") and config["event_shape"] == [1, 8, 8]
    assert (tmp_path / "stream" / "model.safetensors").read_bytes() == (tmp_path / "memory" / "model.safetensors").read_bytes()
    assert _metrics_without_timings(tmp_path / "stream") == _metrics_without_timings(tmp_path / "memory")
    # the default run name is the folder's own name
    assert run_cli(*common, "--epochs", "1").returncode == 0
    assert [p.name.rsplit("-", 2)[0] for p in (tmp_path / "runs").iterdir()] == ["clothes"]


def test_a_run_on_relative_paths_works_from_another_directory(tmp_path, monkeypatch):
    import numpy as np

    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(work)
    np.save("grey.npy", np.random.default_rng(0).integers(0, 256, (120, 8, 8), dtype=np.uint8))
    _image_folder(work / "pics", n_per_class=25, rgb=True)
    for data, out in (("grey.npy", "a"), ("pics", "b")):
        assert run_cli("train", "--data", data, "--binarize", "threshold", "--out", out, *SMALL).returncode == 0
    monkeypatch.chdir(elsewhere)
    for out in ("a", "b"):
        r = run_cli("evaluate", str(work / out), "--k", "5", "--limit", "4", "--json", "--quiet")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["n_examples"] == 4
    assert json.loads((work / "b" / "config.json").read_text())["event_shape"] == [3, 8, 8]


def test_classes_keep_the_listed_labels(tmp_path):
    out = tmp_path / "some"
    assert run_cli("train", "--data", "digits", "--binarize", "threshold", "--classes", "3,8", "--out", str(out), *SMALL).returncode == 0
    assert json.loads((out / "config.json").read_text())["data"]["classes"] == [3, 8]
    config, _ = vaelab.config.load_json(out / "config.json")
    from vaelab.runs.rundir import load_data

    assert set(load_data(config, "test").y.tolist()) == {3, 8}


def test_data_errors_are_one_line(tmp_path):
    import numpy as np
    from PIL import Image

    np.save(tmp_path / "plain.npy", np.zeros((20, 4), np.float32))
    sizes = tmp_path / "sizes"
    sizes.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(sizes / "a.png")
    Image.fromarray(np.zeros((6, 6), np.uint8)).save(sizes / "b.png")
    bad = _image_folder(tmp_path / "bad", n_per_class=3)
    (bad / "boot" / "01.png").write_text("not a png")
    out = tmp_path / "never"
    assert_one_line_error(run_cli("train", "--channels", "2", "--out", str(out)), "--channels", "1", "3")
    assert_one_line_error(run_cli("train", "--image-size", "0", "--out", str(out)), "--image-size")
    assert_one_line_error(run_cli("train", "--image-size", "8", "--out", str(out)), "--image-size", "folders of images")
    assert_one_line_error(run_cli("train", "--channels", "3", "--out", str(out)), "--channels", "folders of images")
    assert_one_line_error(run_cli("train", "--classes", "1,1", "--out", str(out)), "--classes")
    assert_one_line_error(run_cli("train", "--classes", "1,x", "--out", str(out)), "--classes")
    assert_one_line_error(run_cli("train", "--classes", "1,10", "--out", str(out)), "label 10 does not occur")
    assert_one_line_error(run_cli("train", "--data", str(tmp_path / "plain.npy"), "--classes", "1", "--out", str(out)),
                          "no labels")
    assert_one_line_error(run_cli("train", "--data", str(sizes), "--out", str(out)), "--image-size")
    assert_one_line_error(run_cli("train", "--data", str(bad), "--out", str(out)), str(bad / "boot" / "01.png"))
    assert_one_line_error(run_cli("train", "--data", str(tmp_path / "missing/"), "--out", str(out)), "no such file")
    assert not out.exists()


def test_a_channels_last_array_trains_with_a_one_line_note(tmp_path):
    import numpy as np

    path = tmp_path / "photos.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (60, 8, 8, 3), dtype=np.uint8))
    r = run_cli("train", "--data", str(path), "--binarize", "threshold", "--out", str(tmp_path / "r"), *SMALL)
    assert r.returncode == 0, r.stderr
    notes = [line for line in r.stderr.splitlines() if "channels last" in line]
    assert len(notes) == 1 and notes[0].startswith("vaelab: warning: ")
    assert json.loads((tmp_path / "r" / "config.json").read_text())["event_shape"] == [3, 8, 8]


# -- what a new user tripped over ----------------------------------------------------------------


def test_flags_are_never_abbreviated_and_unknown_ones_get_a_suggestion(tmp_path, run_dir):
    out = tmp_path / "z"
    proc = run_cli("train", "--epoch", "1", "--out", str(out))
    assert_one_line_error(proc, "unknown option --epoch; did you mean --epochs?")
    assert_one_line_error(run_cli("train", "--epoch=1", "--out", str(out)), "unknown option --epoch; did you mean --epochs?")
    assert_one_line_error(run_cli("train", "--latent", "4", "--out", str(out)), "unknown option --latent; did you mean --latent-dim?")
    assert_one_line_error(run_cli("evaluate", str(run_dir), "--limt", "5"), "unknown option --limt; did you mean --limit?")
    assert_one_line_error(run_cli("train", "--zzzzzz", "--out", str(out)), "unknown option --zzzzzz", "--help")
    assert_one_line_error(run_cli("report", str(run_dir), "extra"), "unexpected argument 'extra'")
    assert not out.exists()
    from vaelab.cli.main import build_parser as _build_parser

    parser = _build_parser()
    commands = parser.get_default("_commands")
    assert not parser.allow_abbrev and len(commands) >= 15
    assert all(not sub.allow_abbrev for sub in commands.values())


def _closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """Runs the CLI with its stdout read by nobody (`vaelab ... | head -0`)."""
    proc = subprocess.Popen([sys.executable, "-m", "vaelab", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the process has printed anything: it starts slower than this
    err = proc.stderr.read()
    proc.wait(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, "", err)


def test_a_closed_pipe_ends_quietly_with_status_141(run_dir):
    gaps = _closed_pipe("gaps", str(run_dir), "--limit", "2", "--k", "10", "--steps", "2", "--json")
    assert gaps.returncode == 141 and gaps.stderr == "", gaps.stderr
    # argparse prints and exits by itself, and ignores a failed write (status 0); no traceback either way
    helped = _closed_pipe("train", "--help")
    assert helped.returncode in (0, 141) and helped.stderr == "", helped.stderr
    version = _closed_pipe("--version")
    assert version.returncode in (0, 141) and version.stderr == "", version.stderr


def test_sample_and_reconstruct_never_replace_an_earlier_picture(run_dir, tmp_path, capsys):
    import shutil

    capsys.readouterr()  # whatever the run_dir fixture printed
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    first = (run / "samples.png").read_bytes()
    for i in (1, 2):
        assert main(["sample", str(run), "-n", "4", "--seed", str(i)]) == 0
        assert capsys.readouterr().out.strip() == f"4 samples in {run / f'samples-{i}.png'}"
    assert main(["reconstruct", str(run), "-n", "3"]) == 0
    assert capsys.readouterr().out.strip() == f"3 test examples and their reconstructions in {run / 'reconstructions-1.png'}"
    assert (run / "samples.png").read_bytes() == first
    assert (run / "samples-1.png").read_bytes() != (run / "samples-2.png").read_bytes()
    mine = tmp_path / "mine.png"
    for _ in range(2):  # -o names the file to write, and rewrites it
        assert main(["sample", str(run), "-n", "4", "-o", str(mine)]) == 0
    assert not (tmp_path / "mine-1.png").exists()


TINY_VAE = ["--data", "digits", "--binarize", "threshold", "--hidden", "16", "--latent-dim", "2", "--limit", "200", "--lr", "1e-2"]
TINY_VQ = ["--model", "vqvae", "--data", "digits", "--binarize", "threshold", "--codebook-size", "8", "--code-dim", "4",
           "--resnet-channels", "8", "--res-blocks", "1", "--limit", "200"]  # fmt: skip
TINY_GAN = ["--model", "gan", "--data", "digits", "--binarize", "none", "--hidden", "16", "--latent-dim", "2", "--limit", "200"]


def _epoch_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("epoch ")]


@pytest.mark.parametrize("family, flags, words", [
    ("vae", TINY_VAE, ("train loss", "valid bound", "nats", "KL", "active units")),
    ("vqvae", TINY_VQ, ("train loss", "valid bound", "nats", "KL", "codebook perplexity")),
    ("gan", TINY_GAN, ("train disc", "generator", "valid disc")),
])  # fmt: skip
def test_training_prints_one_line_per_epoch_with_the_validation_figures(family, flags, words, tmp_path):
    from vaelab.runs.lifecycle import epoch_line

    run = tmp_path / family
    proc = run_cli("train", *flags, "--epochs", "2", "--quiet", "--out", str(run))
    assert proc.returncode == 0, proc.stderr
    lines = _epoch_lines(proc.stdout)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines == [epoch_line(r, 2) for r in records] and lines[0].startswith("epoch 1/2  train ")
    for word in words:
        assert all(word in line for line in lines), (word, lines)
    if "valid bound" in words:
        assert f"valid bound {records[1]['valid_bound']:.3f} nats" in lines[1]
    assert proc.stdout.splitlines()[-1].startswith("trained 2 epochs")
    if family == "vqvae":  # the learned prior of its codes: the same lines
        proc = run_cli("prior", str(run), "--epochs", "2", "--layers", "1", "--channels", "8", "--quiet")
        assert proc.returncode == 0, proc.stderr
        lines = _epoch_lines(proc.stdout)
        assert len(lines) == 2 and all("train loss" in line and "valid bound" in line for line in lines)
        assert lines[1].startswith("epoch 2/2  ")


@pytest.mark.parametrize("flags", [["--silent"], ["--quiet", "--silent"]])
def test_silent_training_prints_nothing(flags, tmp_path):
    proc = run_cli("train", *TINY_VAE, "--epochs", "2", *flags, "--out", str(tmp_path / "r"))
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", (proc.stdout, proc.stderr)
    assert (tmp_path / "r" / "model.safetensors").exists()
    proc = run_cli("train", "--resume", str(tmp_path / "r"), "--epochs", "3", *flags)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == ""
    proc = run_cli("train", *TINY_VQ, "--epochs", "1", "--silent", "--out", str(tmp_path / "vq"))
    assert proc.returncode == 0 and proc.stdout == ""
    proc = run_cli("prior", str(tmp_path / "vq"), "--epochs", "1", "--layers", "1", "--channels", "8", *flags)
    assert proc.returncode == 0 and proc.stdout == "" and proc.stderr == "", (proc.stdout, proc.stderr)


def test_resume_with_more_epochs_and_its_errors(tmp_path):
    run = tmp_path / "r"
    assert run_cli("train", *TINY_VAE, "--epochs", "2", "--quiet", "--out", str(run)).returncode == 0
    proc = run_cli("train", "--resume", str(run), "--epochs", "3", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert _epoch_lines(proc.stdout) == [line for line in _epoch_lines(proc.stdout) if line.startswith("epoch 3/3")]
    assert len(_epoch_lines(proc.stdout)) == 1 and "trained 3 epochs" in proc.stdout
    assert json.loads((run / "config.json").read_text())["train"]["epochs"] == 3
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert_one_line_error(run_cli("train", "--resume", str(run), "--epochs", "2"), "epochs", "not more than the 3 epochs")
    # a finished run resumed at the epochs it was asked for has nothing to do: status 0 and one line
    # (its data is not even loaded), so a job scheduler's requeue loop can always call --resume
    for again in ([], ["--epochs", "3"]):
        proc = run_cli("train", "--resume", str(run), *again)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        assert proc.stdout.splitlines() == [f"nothing to do: {run} already finished (3 epochs: reached 3 epochs); train it on "
                                            f"with more epochs (--epochs N, N > 3), or start a new run"]  # fmt: skip
    assert run_cli("train", "--resume", str(run), "--silent").stdout == ""
    assert_one_line_error(run_cli("train", "--resume", str(run), "--epochs", "5", "--lr", "0.1"), "--resume", "--epochs N")
    cyclic = tmp_path / "cyclic"
    assert run_cli("train", *TINY_VAE, "--epochs", "2", "--kl-cycles", "2", "--quiet", "--out", str(cyclic)).returncode == 0
    assert_one_line_error(run_cli("train", "--resume", str(cyclic), "--epochs", "4"), "cycles", "start a new run")
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_init_from_warm_starts_a_new_run_and_refuses_another_architecture(tmp_path):
    source = tmp_path / "source"
    assert run_cli("train", *TINY_VAE, "--epochs", "1", "--quiet", "--out", str(source)).returncode == 0
    warm = tmp_path / "warm"
    proc = run_cli("train", *TINY_VAE, "--epochs", "1", "--init-from", str(source), "--beta", "2", "--quiet", "--out", str(warm))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((warm / "config.json").read_text())["train"]["init_from"] == str(source.resolve())
    other = tmp_path / "other"
    proc = run_cli("train", *TINY_VAE, "--latent-dim", "3", "--epochs", "1", "--init-from", str(source), "--out", str(other))
    assert_one_line_error(proc, "another architecture", "latent_dim: 2 there, 3 here")
    assert not other.exists()
    assert "--init-from RUN" in run_cli("train", "--help").stdout


def test_diagnose_measures_the_runs_own_objective_and_estimator_by_default(iwae_run, tmp_path, capsys, monkeypatch):
    import vaelab.report.figures

    titles = []
    real = vaelab.report.figures.snr_figure
    monkeypatch.setattr(vaelab.report.figures, "snr_figure", lambda result, path, title=None: titles.append(title) or real(result, path, title))
    capsys.readouterr()
    base = ["diagnose", str(iwae_run), "--k-list", "1,4", "--reps", "5", "--batch", "10", "--json", "-o", str(tmp_path / "s.png")]
    assert main(base) == 0
    own = json.loads(capsys.readouterr().out)
    assert own["grad_estimator"] == "dreg" and own["objective"] == "iwae"
    assert own["measured"]["objective"] == "iwae" and own["measured"]["grad_estimator"] == "dreg"
    assert own["measured"]["as_trained"] is True and own["measured"]["flags"] == []
    assert "iwae (dreg" in titles[-1] and "as trained" in titles[-1]
    assert main([*base, "--grad-estimator", "reparam"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert plain["measured"]["grad_estimator"] == "reparam" and plain["measured"]["as_trained"] is False
    assert plain["measured"]["flags"] == ["--grad-estimator"]
    assert "iwae (reparam" in titles[-1] and "as trained" not in titles[-1]
    assert main([*base, "--objective", "elbo"]) == 0
    elbo = json.loads(capsys.readouterr().out)
    assert elbo["measured"]["objective"] == "elbo" and elbo["measured"]["grad_estimator"] == "reparam"
    assert elbo["measured"]["flags"] == ["--objective"]


def test_a_shortened_make_demo_prints_no_collapse_warning(tmp_path):
    """`make demo`'s training command (fewer epochs): the first epochs pass through a collapsed
    posterior, which training recovers from, so no warning is printed."""
    import re
    import shlex

    from vaelab.evaluation.diagnostics import collapsed

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    (line,) = [ln.strip() for ln in makefile.splitlines() if "vaelab train" in ln and "runs/demo" in ln]
    args = shlex.split(line.split("vaelab", 1)[1])
    assert args[args.index("--epochs") + 1] == "300"
    args[args.index("--epochs") + 1] = str(DEMO_EPOCHS)
    args[args.index("--out") + 1] = str(tmp_path / "demo")
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr, proc.stderr
    records = [json.loads(x) for x in (tmp_path / "demo" / "metrics.jsonl").read_text().splitlines()]
    assert any(collapsed(r) for r in records), "the demo no longer passes through a collapse: shorten less"
    assert not collapsed(records[-1]) and len(_epoch_lines(proc.stdout)) == DEMO_EPOCHS
    assert re.search(r"active units \d+", proc.stdout)
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    shown = readme.split("## What `make demo` does", 1)[1].split("```\n", 2)[1].splitlines()
    assert proc.stdout.splitlines()[0] == shown[0] == "data: digits (scikit-learn's bundled copy)"


DEMO_EPOCHS = 20
