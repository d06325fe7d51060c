"""Per-example scores, latent codes and the two-stage VAE: `vaelab score`, `encode`, `decode`
and `--sampler stage2:RUN2`, checked against exact models and independent computations."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import closed_form_elbo
from test_cli import assert_one_line_error, run_cli

import vaelab
from vaelab.cli.main import main
from vaelab.core.errors import ConfigError
from vaelab.evaluation.sampling import Stage2Sampler, sample_images
from vaelab.evaluation.scores import (
    auroc,
    decode_means,
    encode_codes,
    parse_bound,
    score,
)

TINY = ["--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--limit", "200", "--quiet"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scores") / "digits"
    assert main(["train", "--data", "digits", "--binarize", "threshold", "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def codes_and_stage2(run_dir, tmp_path_factory) -> tuple[Path, Path]:
    """RUN's codes (vaelab encode) and a second VAE trained on them, as the README shows."""
    folder = tmp_path_factory.mktemp("stage2")
    codes = folder / "codes.npz"
    assert main(["encode", str(run_dir), "-o", str(codes), "--limit", "300", "--samples", "3"]) == 0
    stage2 = folder / "stage2"
    assert main(["train", "--data", str(codes), "--binarize", "none", "--likelihood", "gaussian-learned",
                 "--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--out", str(stage2), "--quiet"]) == 0  # fmt: skip
    return codes, stage2


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- the library ----------------------------------------------------------------------------------


def test_parse_bound_reads_the_three_bounds_and_refuses_the_rest():
    assert parse_bound("elbo") == ("elbo", 1)
    assert parse_bound("iwae:50") == ("iwae", 50)
    assert parse_bound("is:1000") == ("is", 1000)
    for bad in ("elbo:3", "iwae", "is:0", "is:-5", "iwae:x", "ais:10", ""):
        with pytest.raises(ConfigError, match="elbo, iwae:K, is:K"):
            parse_bound(bad)


@pytest.mark.parametrize("seed", range(5))
def test_auroc_matches_sklearn_with_ties(seed):
    from sklearn.metrics import roc_auc_score

    g = torch.Generator().manual_seed(seed)
    pos = torch.randint(0, 6, (37,), generator=g).double()  # few distinct values: many ties
    neg = torch.randint(0, 5, (23,), generator=g).double()
    expected = roc_auc_score(np.r_[np.ones(37), np.zeros(23)], torch.cat([pos, neg]).numpy())
    assert auroc(pos, neg) == pytest.approx(expected, abs=1e-12)
    cont_pos, cont_neg = torch.randn(50, generator=g) + 1, torch.randn(40, generator=g)
    expected = roc_auc_score(np.r_[np.ones(50), np.zeros(40)], torch.cat([cont_pos, cont_neg]).numpy())
    assert auroc(cont_pos, cont_neg) == pytest.approx(expected, abs=1e-12)


def test_auroc_extremes_and_refusals():
    a, b = torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])
    assert auroc(a, b) == 1.0 and auroc(b, a) == 0.0
    assert auroc(torch.ones(3), torch.ones(4)) == 0.5  # all tied: no separation
    with pytest.raises(ConfigError, match="finite"):
        auroc(torch.tensor([math.nan]), b)
    with pytest.raises(ConfigError, match="at least one"):
        auroc(torch.empty(0), b)


def test_is_scores_match_the_exact_log_likelihood_within_their_standard_errors(linear_model, linear_data):
    result = score(linear_model, linear_data, "is:2000", seed=3)
    exact = linear_model.log_prob(linear_data)
    assert result.score.shape == exact.shape == (40,)
    z = (result.score - exact) / result.stderr
    assert z.abs().max() < 4.5 and z.mean().abs() < 4 / math.sqrt(40) + 0.5  # the IS bias is far below the error
    assert result.khat is not None and (result.khat < 0.7).all()
    again = score(linear_model, linear_data, "is:2000", seed=3)
    assert torch.equal(again.score, result.score)  # the seed fixes the particles


def test_elbo_and_iwae_scores_match_their_bounds(linear_model, linear_data):
    """elbo: the closed-form ELBO within its standard error; the orderings ELBO <= L_K <= log p(x)."""
    rec, kl = closed_form_elbo(linear_model, linear_data)
    elbo = score(linear_model, linear_data, "elbo", draws=400, seed=1)
    z = (elbo.score - (rec - kl)) / elbo.stderr
    assert z.abs().max() < 4.5 and elbo.khat is None
    iwae = score(linear_model, linear_data, "iwae:20", draws=50, seed=2)
    exact = linear_model.log_prob(linear_data)
    assert (iwae.score > rec - kl - 4 * iwae.stderr).all()
    assert (iwae.score < exact + 4 * iwae.stderr).all()
    one = score(linear_model, linear_data, "iwae:20", draws=1)
    assert torch.isnan(one.stderr).all()  # one draw: no spread to read an error from


def test_encode_codes_are_the_posterior_means_scales_and_draws(linear_model, linear_data):
    q = linear_model.encode(linear_data)
    codes = encode_codes(linear_model, linear_data, samples=400, seed=0)
    torch.testing.assert_close(codes.mean, q.mean)
    torch.testing.assert_close(codes.scale, q.stddev)
    assert codes.samples.shape == (40, 400, 3)
    # the draws' mean and spread agree with q's, within their standard errors
    z = (codes.samples.mean(1) - q.mean) / (q.stddev / 20)
    assert z.abs().max() < 4.5
    assert ((codes.samples.std(1) / q.stddev - 1).abs() < 5 / math.sqrt(2 * 400)).all()
    assert encode_codes(linear_model, linear_data).samples is None


def test_encode_codes_of_a_flow_posterior_take_the_scale_from_draws():
    """A planar flow has no closed-form standard deviation: its scale is that of SCALE_DRAWS draws,
    which agrees with the spread of many more draws within the sampling error of a standard deviation."""
    from vaelab.evaluation.scores import SCALE_DRAWS

    torch.manual_seed(0)
    model = vaelab.build_model("vae", (6,), likelihood="gaussian", posterior="planar:2", latent_dim=3, hidden=(8,))
    x = torch.rand(5, 6)
    codes = encode_codes(model, x, seed=1)
    with torch.no_grad():
        q = model.encode(x)
        reference = q.sample((20000,)).std(0)
    assert codes.scale.shape == (5, 3) and (codes.scale > 0).all()
    assert ((codes.scale / reference - 1).abs() < 5 / math.sqrt(2 * SCALE_DRAWS)).all()
    torch.testing.assert_close(codes.mean, q.mean)


def test_decode_means_and_its_latent_size_check(linear_model):
    z = torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(decode_means(linear_model, z), linear_model.decode(z).mean.float(), check_dtype=False)
    with pytest.raises(ConfigError, match="latent of 3 dimensions"):
        decode_means(linear_model, torch.zeros(7, 4))


def test_stage2_samples_are_decoded_from_the_second_vaes_decoder_means(run_dir, codes_and_stage2):
    """With the second VAE's decoder made constant (mean c), every sample is RUN's decoder mean at c:
    z comes from the second model, not from RUN's prior."""
    _, stage2_dir = codes_and_stage2
    model, stage2 = vaelab.load(run_dir), vaelab.load(stage2_dir)
    c = torch.tensor([0.7, -1.3])
    with torch.no_grad():
        last = [m for m in stage2.decoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.zero_()
        last.bias.copy_(torch.cat([c, torch.full((2,), -5.0)]))  # (mean, raw scale) of 2 numbers each
    z = Stage2Sampler(stage2, 2).sample(5, torch.Generator().manual_seed(0))[0]
    torch.testing.assert_close(z, c.expand(5, 2))
    images = sample_images(model, 5, sampler="stage2", stage2=stage2)
    torch.testing.assert_close(images, model.decode(c.expand(5, 2)).mean.clamp(0, 1))
    prior_images = sample_images(model, 5, sampler="prior")
    assert not torch.allclose(prior_images, images)
    with pytest.raises(ConfigError, match="latent has 3 dimensions"):
        Stage2Sampler(stage2, 3)


# -- the command line ---------------------------------------------------------------------------


def test_score_writes_one_row_per_example_with_labels(run_dir, tmp_path):
    out = tmp_path / "scores.csv"
    proc = run_cli("score", str(run_dir), "--bound", "is:20", "--limit", "30", "-o", str(out), "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    rows = read_csv(out)
    assert list(rows[0]) == ["index", "label", "bound", "score", "stderr", "khat"]
    labels = vaelab.load_split("digits", "test", limit=30).y.tolist()
    assert [int(r["index"]) for r in rows] == list(range(30))
    assert [int(r["label"]) for r in rows] == labels
    assert {r["bound"] for r in rows} == {"is:20"}
    values = np.array([float(r["score"]) for r in rows])
    assert summary["n_examples"] == 30 and summary["mean"] == pytest.approx(values.mean(), abs=1e-5)
    assert all(float(r["stderr"]) > 0 and r["khat"] for r in rows)
    # the same seed gives the same scores as the library on the data as the run prepares it
    x = vaelab.load_dataset("digits", split="test", binarize="threshold", limit=30)
    expected = score(vaelab.load(run_dir), x, "is:20", seed=0).score.numpy()
    np.testing.assert_allclose(values, expected, atol=1e-5)


def test_score_elbo_rows_have_no_khat_and_a_table_is_printed(run_dir, tmp_path):
    out = tmp_path / "elbo.csv"
    proc = run_cli("score", str(run_dir), "--bound", "elbo", "--draws", "4", "--limit", "10", "-o", str(out), "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert "ELBO, 4 draws per example" in proc.stdout and "mean score" in proc.stdout
    rows = read_csv(out)
    assert len(rows) == 10 and all(r["khat"] == "" and float(r["stderr"]) > 0 for r in rows)
    # without --limit, the whole split, whatever --limit the run trained with (200)
    proc = run_cli("score", str(run_dir), "--bound", "elbo", "--draws", "2", "--json", "--quiet")
    summary = json.loads(proc.stdout)
    assert set(summary) == {"bound", "data", "split", "n_examples", "mean", "stderr", "output", "draws"}
    assert summary["n_examples"] == 360 and summary["draws"] == 2 and summary["output"] is None


def test_score_auroc_against_another_dataset_is_the_auroc_of_the_two_csvs(run_dir, tmp_path):
    from sklearn.metrics import roc_auc_score

    # "other" data of the run's shape: the digits flipped upside down, as uint8 grey levels
    digits = vaelab.load_split("digits", "test").x
    flipped = (digits.flip(-2) * 255).round().to(torch.uint8).numpy()
    other = tmp_path / "flipped.npz"
    np.savez(other, x_train=flipped, x_test=flipped)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    common = ["--bound", "is:10", "--limit", "60", "--quiet"]
    assert run_cli("score", str(run_dir), "--data", str(other), "-o", str(a), *common).returncode == 0
    assert run_cli("score", str(run_dir), "-o", str(b), *common).returncode == 0
    proc = run_cli("score", str(run_dir), "--data", str(other), "--auroc-against", "digits", "--json", *common)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    ood = [float(r["score"]) for r in read_csv(a)]
    ind = [float(r["score"]) for r in read_csv(b)]
    expected = roc_auc_score([0] * len(ood) + [1] * len(ind), ood + ind)
    assert summary["auroc"] == pytest.approx(expected, abs=1e-6)
    assert summary["against"] == "digits" and summary["against_n_examples"] == 60
    assert summary["against_mean"] == pytest.approx(np.mean(ind), abs=1e-4)
    assert all(r["label"] == "" for r in read_csv(a))  # no labels in the file: empty cells
    text = run_cli("score", str(run_dir), "--data", str(other), "--auroc-against", "digits", *common).stdout
    assert "AUROC" in text and f"{summary['auroc']:.4f}" in text


def test_score_refuses_bad_input_in_one_line(run_dir, tmp_path):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((20, 5, 5), dtype=np.uint8))
    assert_one_line_error(run_cli("score", str(run_dir), "--data", str(wrong)), "shape [1, 5, 5]", "[1, 8, 8]")
    assert_one_line_error(run_cli("score", str(run_dir), "--auroc-against", str(wrong), "--limit", "5"), "--auroc-against")
    assert_one_line_error(run_cli("score", str(run_dir), "--bound", "iwae"), "iwae:K")
    assert_one_line_error(run_cli("score", str(run_dir), "--bound", "is:10", "--draws", "3"), "--draws")
    assert_one_line_error(run_cli("score", str(run_dir), "--limit", "2", "-o", str(tmp_path / "s.txt")), "CSV")
    assert_one_line_error(run_cli("score", str(run_dir), "--draws", "0", "--bound", "elbo"), "--draws")
    assert not (tmp_path / "s.txt").exists()


def test_score_refuses_grey_levels_under_a_bernoulli_likelihood(tmp_path):
    """A run on binary data without binarization cannot score grey levels: its Bernoulli
    "log-likelihood" of them would not be one."""
    rng = np.random.default_rng(0)
    np.save(tmp_path / "binary.npy", rng.random((120, 16)) < 0.5)
    np.save(tmp_path / "grey.npy", (rng.random((120, 16)) * 255).astype(np.uint8))
    run = tmp_path / "run"
    assert main(["train", "--data", str(tmp_path / "binary.npy"), "--binarize", "none", "--out", str(run), *TINY]) == 0
    assert run_cli("score", str(run), "--bound", "elbo", "--quiet").returncode == 0
    assert_one_line_error(run_cli("score", str(run), "--data", str(tmp_path / "grey.npy")), "needs binary data")


def test_encode_writes_codes_a_second_vae_trains_on(run_dir, codes_and_stage2):
    codes, stage2 = codes_and_stage2
    with np.load(codes) as f:
        arrays = {k: f[k] for k in f.files}
    assert set(arrays) == {"x_train", "x_test", "mean_train", "mean_test", "scale_train", "scale_test",
                           "samples_train", "samples_test", "y_train", "y_test"}  # fmt: skip
    # the first 300 rows of the whole training file (no validation carve), in file order
    train = vaelab.load_split("digits", "train", binarize="threshold", valid_fraction=0.0, limit=300)
    mine = encode_codes(vaelab.load(run_dir), train.fixed())
    np.testing.assert_allclose(arrays["x_train"], mine.mean.numpy(), atol=1e-6)
    np.testing.assert_array_equal(arrays["x_train"], arrays["mean_train"])
    np.testing.assert_allclose(arrays["scale_train"], mine.scale.numpy(), atol=1e-6)
    np.testing.assert_array_equal(arrays["y_train"], train.y.numpy())
    assert arrays["samples_test"].shape == (300, 3, 2) and arrays["x_test"].shape == (300, 2)
    config = json.loads((stage2 / "config.json").read_text())
    assert config["event_shape"] == [2] and (stage2 / "model.safetensors").exists()


def test_decode_writes_a_grid_or_the_decoded_means(run_dir, codes_and_stage2, tmp_path):
    codes, _ = codes_and_stage2
    z = np.random.default_rng(0).normal(size=(6, 2)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    assert run_cli("decode", str(run_dir), str(tmp_path / "z.npy"), "-o", str(tmp_path / "x.npy")).returncode == 0
    expected = vaelab.load(run_dir).decode(torch.from_numpy(z)).mean.detach().numpy()
    np.testing.assert_allclose(np.load(tmp_path / "x.npy"), expected, atol=1e-6)
    assert run_cli("decode", str(run_dir), str(codes), "-o", str(tmp_path / "g.png")).returncode == 0
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    proc = run_cli("decode", str(run_dir), str(codes), "--key", "samples_test", "-o", str(tmp_path / "s.npy"))
    assert proc.returncode == 0 and np.load(tmp_path / "s.npy").shape == (900, 1, 8, 8)


def test_decode_refuses_bad_codes_in_one_line(run_dir, codes_and_stage2, tmp_path):
    codes, _ = codes_and_stage2
    np.save(tmp_path / "z3.npy", np.zeros((4, 3), np.float32))
    assert_one_line_error(run_cli("decode", str(run_dir), str(tmp_path / "z3.npy"), "-o", str(tmp_path / "x.npy")),
                          "latent of 2 dimensions")  # fmt: skip
    assert_one_line_error(run_cli("decode", str(run_dir), str(codes), "--key", "nope", "-o", str(tmp_path / "x.npy")), "--key")
    assert_one_line_error(run_cli("decode", str(run_dir), str(codes), "-o", str(tmp_path / "x.jpg")), ".png", ".npy")
    assert_one_line_error(run_cli("decode", str(run_dir), str(tmp_path / "none.npy"), "-o", str(tmp_path / "x.npy")), "no such file")
    assert not (tmp_path / "x.npy").exists()


def test_sample_with_the_stage2_sampler(run_dir, codes_and_stage2, tmp_path):
    _, stage2 = codes_and_stage2
    proc = run_cli("sample", str(run_dir), "--sampler", f"stage2:{stage2}", "-n", "9", "-o", str(tmp_path / "s.png"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


def test_stage2_refuses_a_second_run_of_the_wrong_size(run_dir, tmp_path):
    """RUN2 trained on the images themselves (64 numbers) cannot draw RUN's 2-D codes."""
    assert_one_line_error(run_cli("sample", str(run_dir), "--sampler", f"stage2:{run_dir}", "-o", str(tmp_path / "s.png")),
                          "latent of 2 dimensions", "vaelab encode")  # fmt: skip
    assert_one_line_error(run_cli("sample", str(run_dir), "--sampler", "stage3:x"), "stage2:RUN2")
    assert not (tmp_path / "s.png").exists()


def test_runs_without_a_vae_latent_are_refused_in_one_line(run_dir, tmp_path):
    gan = tmp_path / "gan"
    assert main(["train", "--model", "gan", "--data", "digits", "--binarize", "none", "--out", str(gan), *TINY]) == 0
    np.save(tmp_path / "z.npy", np.zeros((3, 2), np.float32))
    for args in (["score", str(gan)], ["encode", str(gan), "-o", str(tmp_path / "c.npz")],
                 ["decode", str(gan), str(tmp_path / "z.npy"), "-o", str(tmp_path / "x.npy")]):  # fmt: skip
        assert_one_line_error(run_cli(*args), f"{args[0]} needs a VAE", "--model gan")
    assert_one_line_error(run_cli("sample", str(run_dir), "--sampler", f"stage2:{gan}", "-o", str(tmp_path / "s.png")),
                          "--model gan")  # fmt: skip
    assert not any((tmp_path / name).exists() for name in ("c.npz", "x.npy", "s.png"))


def test_a_given_dataset_is_taken_whole_the_runs_own_data_as_the_run_used_it(tmp_path):
    """A run trained on some classes scores its own data with that filter, and a dataset given by
    --data whole (so the unseen classes can be scored)."""
    import dataclasses

    from vaelab.runs import config as cfg

    if "classes" not in {f.name for f in dataclasses.fields(cfg.DataConfig)}:
        pytest.skip("vaelab train has no --classes option in this tree")
    run = tmp_path / "run"
    assert main(["train", "--data", "digits", "--binarize", "threshold", "--classes", "0,1", "--out", str(run), *TINY]) == 0
    own, given = tmp_path / "own.csv", tmp_path / "given.csv"
    assert run_cli("score", str(run), "--bound", "elbo", "-o", str(own), "--quiet").returncode == 0
    assert run_cli("score", str(run), "--data", "digits", "--bound", "elbo", "-o", str(given), "--quiet").returncode == 0
    assert {r["label"] for r in read_csv(own)} == {"0", "1"}
    assert {r["label"] for r in read_csv(given)} == {str(c) for c in range(10)}
