"""Sample quality (vaelab.quality, vaelab.sampling, `vaelab quality`): the metrics against closed
forms and hand-counted toy sets, the cached feature classifier, and the command end to end on digits."""

from __future__ import annotations

import inspect
import json
import math

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error, run_cli

import vaelab.evaluation.quality as quality
from vaelab.cli.main import main
from vaelab.core.errors import ConfigError, DataError
from vaelab.data.load import load_split
from vaelab.evaluation.quality import (
    QualityScorer,
    classifier_score,
    feature_statistics,
    frechet_distance,
    get_classifier,
    manifold_metrics,
)
from vaelab.evaluation.sampling import sample_images

KEYS = {"fd", "precision", "recall", "density", "coverage", "classifier_score"}


# --------------------------------------------------------------------------------------------
# Fréchet distance


def test_frechet_distance_matches_the_closed_form_for_diagonal_gaussians():
    m1, m2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    # sqrt(S1 S2) of commuting diagonals is diag(sqrt(s1 s2)): FD = |m1-m2|^2 + sum (sqrt s1 - sqrt s2)^2
    expected = 5.0 + (1 - 3) ** 2 + (2 - 1) ** 2 + 0.0
    assert frechet_distance(m1, torch.diag(s1), m2, torch.diag(s2)) == pytest.approx(expected, rel=1e-12)
    # singular covariances (dead features): S1 = diag(1, 0), S2 = diag(0, 1) -> Tr sqrt(S1 S2) = 0
    zero = torch.zeros(2)
    assert frechet_distance(zero, torch.diag(torch.tensor([1.0, 0.0])), zero,
                            torch.diag(torch.tensor([0.0, 1.0]))) == pytest.approx(2.0, abs=1e-12)  # fmt: skip


def test_feature_statistics_are_the_mean_and_the_unbiased_covariance():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(3))
    mu, cov = feature_statistics(x)
    assert mu.dtype == torch.float64 and torch.allclose(mu, x.double().mean(0))
    assert torch.allclose(cov, torch.from_numpy(np.cov(x.double().numpy(), rowvar=False)))


def test_frechet_distance_of_non_commuting_covariances_matches_scipy_sqrtm():
    from scipy.linalg import sqrtm

    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(5, 5, generator=g, dtype=torch.float64) for _ in range(2))
    s1, s2 = a @ a.T + 0.1 * torch.eye(5), b @ b.T + 0.1 * torch.eye(5)
    mu1, mu2 = torch.randn(5, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    root = sqrtm(s1.numpy() @ s2.numpy())
    expected = float((mu1 - mu2).square().sum() + torch.trace(s1 + s2) - 2 * np.trace(root).real)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_of_samples_approaches_the_closed_form():
    g = torch.Generator().manual_seed(1)
    m1, m2 = torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.5, 0.0, 2.0])
    s1, s2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.5, 2.0, 1.0])
    n = 200_000
    x1 = m1 + s1.sqrt() * torch.randn(n, 3, generator=g)
    x2 = m2 + s2.sqrt() * torch.randn(n, 3, generator=g)
    exact = (m1 - m2).square().sum() + (s1.sqrt() - s2.sqrt()).square().sum()  # 1.25 + 2 (1 - 1/sqrt 2)^2
    # delta method, per dimension: Var |dm|^2 ~ 4 dm^2 (s1 + s2) / n; with Var s^ ~ 2 s^2 / n,
    # Var (sqrt s1^ - sqrt s2^)^2 ~ 2 (sqrt s1 - sqrt s2)^2 (s1 + s2) / n
    var = (4 * (m1 - m2).square() * (s1 + s2) + 2 * (s1.sqrt() - s2.sqrt()).square() * (s1 + s2)).sum() / n
    estimate = frechet_distance(*feature_statistics(x1), *feature_statistics(x2))
    assert abs(estimate - float(exact)) < 4 * float(var.sqrt())


def test_frechet_distance_between_two_halves_of_one_distribution_is_its_sampling_noise():
    """Two independent samples of n from N(m, S), S = diag(l): to second order (the Bures metric,
    d^2 ~ 1/2 sum_ij dS_ij^2 / (l_i + l_j), with Var S_ij = (l_i l_j + [i=j] l_i^2) / (n - 1))
    E[FD] = 2 tr S / n + (tr S + sum_{i != j} l_i l_j / (l_i + l_j)) / (n - 1). The mean of R
    repetitions must match it within 4 standard errors of that mean."""
    g = torch.Generator().manual_seed(2)
    lam = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    n, reps = 1000, 200
    values = []
    for _ in range(reps):
        a, b = (lam.sqrt() * torch.randn(n, 4, generator=g, dtype=torch.float64) + 3.0 for _ in range(2))
        values.append(frechet_distance(*feature_statistics(a), *feature_statistics(b)))
    values = torch.tensor(values)
    pair = lam[:, None] * lam[None] / (lam[:, None] + lam[None])
    expected = 2 * lam.sum() / n + (lam.sum() + pair.sum() - pair.diagonal().sum()) / (n - 1)
    stderr = values.std() / math.sqrt(reps)
    assert abs(values.mean() - expected) < 4 * stderr
    assert float(values.max()) < 3 * float(expected)  # near 0: a few times the noise floor at most


# --------------------------------------------------------------------------------------------
# precision, recall, density, coverage on point sets counted by hand (k = 3)

REAL = torch.tensor([[0.0], [10.0], [20.0], [30.0], [40.0]])
# k = 3 radii of the real points: 30, 20, 20, 20, 30; their balls: [-30, 30], [-10, 30], [0, 40],
# [10, 50], [10, 70]


def test_fake_points_far_from_the_data_score_zero():
    out = manifold_metrics(REAL, torch.tensor([[100.0], [110.0], [120.0], [130.0]]), pr_k=3, dc_k=3)
    # fake radii 30, 20, 20, 30: the nearest real point (40) is 60 away from the nearest fake one
    assert out == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_identical_sets():
    out = manifold_metrics(REAL, REAL.clone(), pr_k=3, dc_k=3)
    # balls hold 4, 4, 5, 4, 4 of the points (closed balls: 30 lies in [-30, 30]) -> 21 / (3 * 5)
    assert out == {"precision": 1.0, "recall": 1.0, "density": 21 / 15, "coverage": 1.0}


def test_collapsed_samples_have_precision_but_neither_recall_nor_coverage():
    fake = torch.tensor([[0.0], [1.0], [2.0], [3.0]])  # fake radii 3, 2, 2, 3: only real 0 is inside
    out = manifold_metrics(REAL, fake, pr_k=3, dc_k=3)
    # every fake point lies in the balls of reals 0, 10 and 20 (3 balls each) -> density 12 / 12
    assert out == {"precision": 1.0, "recall": 0.2, "density": 1.0, "coverage": 0.6}


def test_an_outlier_inflates_recall_but_not_coverage():
    fake = torch.tensor([[5.0], [20.0], [60.0], [1000.0]])
    out = manifold_metrics(REAL, fake, pr_k=3, dc_k=3)
    # 5 in balls 0, 10, 20 (3); 20 in all 5; 60 in [10, 70] (1); 1000 in none -> precision 3/4,
    # density 9/12; the outlier makes every fake radius >= 940, so every real point is "recalled"
    assert out == {"precision": 0.75, "recall": 1.0, "density": 0.75, "coverage": 1.0}
    # the same in 2-D, rotated by 90 degrees: only distances matter
    rotate = lambda x: torch.cat([torch.zeros_like(x), x], 1)  # noqa: E731
    assert manifold_metrics(rotate(REAL), rotate(fake), pr_k=3, dc_k=3) == out


def test_density_and_coverage_take_their_own_k():
    """pr_k sets the balls of precision and recall, dc_k those of density and coverage; the
    defaults are the papers' 3 and 5."""
    fake = torch.tensor([[5.0], [20.0], [60.0], [1000.0]])
    both3 = manifold_metrics(REAL, fake, pr_k=3, dc_k=3)
    # k = 4 radii of the real points: 40, 30, 20, 30, 40; balls [-40, 40], [-20, 40], [0, 40],
    # [0, 60], [0, 80]. 5 lies in all 5, 20 in all 5, 60 in 2, 1000 in none -> density 12 / 16
    dc4 = manifold_metrics(REAL, fake, pr_k=3, dc_k=4)
    assert {k: dc4[k] for k in ("precision", "recall")} == {k: both3[k] for k in ("precision", "recall")}
    assert dc4["density"] == 12 / 16 and dc4["coverage"] == 1.0
    pr1 = manifold_metrics(REAL, fake, pr_k=1, dc_k=3)
    # k = 1 radii: 10 everywhere; 5 and 20 lie in some real ball, 60 and 1000 do not
    assert pr1["precision"] == 0.5 and {k: pr1[k] for k in ("density", "coverage")} == {
        k: both3[k] for k in ("density", "coverage")}
    defaults = inspect.signature(manifold_metrics).parameters
    assert (defaults["pr_k"].default, defaults["dc_k"].default) == (3, 5)


@pytest.mark.parametrize("k", [3, 5])
def test_coverage_of_two_samples_of_one_distribution(k):
    """A perfect model's coverage (Naeem et al. 2020): 1 - prod_{i<k} (N-1-i) / (2N-1-i) in
    expectation for N real and N fake points, 0.875 at k = 3 and 0.969 at k = 5, within 4 standard
    errors over 20 pairs of 500 draws of N(0, I_8)."""
    g = torch.Generator().manual_seed(0)
    n, values = 500, []
    for _ in range(20):
        real, fake = torch.randn(n, 8, generator=g), torch.randn(n, 8, generator=g)
        values.append(manifold_metrics(real, fake, dc_k=k)["coverage"])
    values = torch.tensor(values, dtype=torch.float64)
    expected = 1 - math.prod((n - 1 - i) / (2 * n - 1 - i) for i in range(k))
    assert abs(float(values.mean()) - expected) < 4 * float(values.std()) / math.sqrt(len(values)), (values.mean(), expected)


def test_manifold_metrics_need_more_points_than_k():
    with pytest.raises(DataError, match="more than 3"):
        manifold_metrics(REAL, REAL[:3], pr_k=3, dc_k=3)


# --------------------------------------------------------------------------------------------
# classifier score


def test_classifier_score_extremes_and_a_hand_computed_value():
    assert classifier_score(torch.eye(10).repeat(7, 1)) == pytest.approx(10.0, rel=1e-12)
    assert classifier_score(torch.tensor([[0.2, 0.3, 0.5]]).repeat(50, 1)) == pytest.approx(1.0, abs=1e-12)
    # p(y|x) = (1, 0) or (1/2, 1/2), half each: p(y) = (3/4, 1/4), E KL = 3/4 log 4/3
    probs = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).repeat(3, 1)
    assert classifier_score(probs) == pytest.approx((4 / 3) ** 0.75, rel=1e-12)


# --------------------------------------------------------------------------------------------
# the feature classifier and its cache


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small convolutions gain nothing from a second thread, and on a shared 2-core machine two
    threads waiting for each other make training the classifier ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _cache_env(cache_root, monkeypatch):
    monkeypatch.setenv("VAELAB_CACHE", str(cache_root))  # the CLI finds the tests' cache, never the user's


@pytest.fixture(scope="module")
def digits_scorer(cache_root) -> QualityScorer:
    scorer = QualityScorer("digits", cache_dir=cache_root)
    assert scorer.classifier.trained  # trained here, once for the module
    return scorer


def test_classifier_is_accurate_and_cached_by_data_checksum(digits_scorer, cache_root, monkeypatch):
    first = digits_scorer.classifier
    assert first.accuracy > 0.9
    assert first.path.parent == cache_root / "digits" and first.data_sha256[:16] in first.path.name
    sidecar = json.loads(first.path.with_suffix(".json").read_text())
    assert sidecar["data_sha256"] == first.data_sha256 and sidecar["test_accuracy"] == first.accuracy
    mtime = first.path.stat().st_mtime_ns

    calls = []
    train = quality.train_classifier
    monkeypatch.setattr(quality, "train_classifier", lambda *a, **k: calls.append(1) or train(*a, **k))
    again = QualityScorer("digits", cache_dir=cache_root).classifier
    assert not again.trained and calls == [] and first.path.stat().st_mtime_ns == mtime
    assert again.accuracy == first.accuracy
    for name, value in first.net.state_dict().items():
        assert torch.equal(value, again.net.state_dict()[name])

    # other training data (a different checksum) trains a classifier of its own
    other = load_split("digits", "train", valid_fraction=0.0, limit=700)
    third = get_classifier(other, digits_scorer.test, cache_dir=cache_root)
    assert third.trained and calls == [1] and third.path != first.path and third.path.exists()


def test_classifier_training_is_deterministic(digits_scorer):
    retrained = quality.train_classifier(digits_scorer.train)
    for name, value in digits_scorer.classifier.net.state_dict().items():
        assert torch.equal(value, retrained.state_dict()[name]), name


def test_a_corrupt_cached_classifier_is_replaced(digits_scorer, tmp_path):
    small = load_split("digits", "train", valid_fraction=0.0, limit=300)
    first = get_classifier(small, digits_scorer.test, cache_dir=tmp_path)
    first.path.write_bytes(b"not safetensors")
    second = get_classifier(small, digits_scorer.test, cache_dir=tmp_path)
    assert second.trained and second.path == first.path
    assert not get_classifier(small, digits_scorer.test, cache_dir=tmp_path).trained


# --------------------------------------------------------------------------------------------
# the command on sample files


def test_real_held_out_images_score_like_the_reference_and_noise_scores_worse(digits_scorer, tmp_path):
    test_x = digits_scorer.test.x  # 360 images: the first 180 are the comparison set
    real = tmp_path / "real.npy"
    np.save(real, test_x[180:].numpy()[:, 0])  # N x H x W is accepted for one channel
    proc = run_cli("quality", "--data", "digits", "--samples", str(real), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == KEYS | {"reference", "n_samples", "dataset", "classifier_accuracy", "pr_k", "dc_k"}
    assert set(out["reference"]) == KEYS
    assert out["n_samples"] == 180 and out["dataset"] == "digits"
    assert out["classifier_accuracy"] == digits_scorer.classifier.accuracy
    ref = out["reference"]
    assert out["fd"] < 2 * ref["fd"] and ref["fd"] < 2 * out["fd"]
    for key in ("precision", "recall", "density", "coverage"):
        assert abs(out[key] - ref[key]) < 0.2, key
    assert out["classifier_score"] > 0.8 * ref["classifier_score"]

    noise = tmp_path / "noise.npy"
    np.save(noise, np.random.default_rng(0).random((180, 1, 8, 8), dtype=np.float32))
    proc = run_cli("quality", "--data", "digits", "--samples", str(noise), "--json")
    bad = json.loads(proc.stdout)
    # (precision alone is fooled: the noise images' features sit together inside one wide real ball)
    assert bad["fd"] > 5 * ref["fd"] and bad["recall"] < 0.1 and bad["coverage"] < 0.5 * ref["coverage"]
    assert bad["classifier_score"] < 0.5 * ref["classifier_score"]
    assert bad["reference"] == ref  # the same comparison set and reference rows


def test_text_output_is_a_table(digits_scorer, tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, digits_scorer.test.x[300:].numpy())
    proc = run_cli("quality", "--data", "digits", "--samples", str(path))
    assert proc.returncode == 0, proc.stderr
    assert "test accuracy" in proc.stdout and "reference" in proc.stdout
    for key in ("fd", "precision", "recall", "density", "coverage", "classifier score"):
        assert any(line.strip().startswith(key) for line in proc.stdout.splitlines()), key


def test_bad_inputs_are_one_line_errors(digits_scorer, tmp_path):
    def save(name, array):
        np.save(tmp_path / name, array)
        return str(tmp_path / name)

    good = save("good.npy", digits_scorer.test.x[:50].numpy())
    assert_one_line_error(run_cli("quality"), "RUN", "--data")
    assert_one_line_error(run_cli("quality", "runs/x", "--data", "digits", "--samples", good), "not both")
    assert_one_line_error(run_cli("quality", "--samples", good), "--samples needs --data")
    assert_one_line_error(run_cli("quality", "--data", "digits"), "--data needs --samples")
    assert_one_line_error(run_cli("quality", "--data", "digits", "--samples", good, "--n", "10"), "--n applies to a RUN")
    assert_one_line_error(run_cli("quality", "--data", "digits", "--samples", str(tmp_path / "none.npy")), "no such file")
    assert_one_line_error(run_cli("quality", "--data", "digits", "--samples", save("big.npy", np.zeros((5, 1, 28, 28), np.float32))),
                          "N x 1 x 8 x 8")  # fmt: skip
    assert_one_line_error(run_cli("quality", "--data", "digits", "--samples", save("vec.npy", np.zeros((5, 64), np.float32))),
                          "N x 1 x 8 x 8")  # fmt: skip
    assert_one_line_error(run_cli("quality", "--data", "digits", "--samples", save("u8.npy", np.zeros((5, 1, 8, 8), np.uint8))),
                          "floats in [0, 1]")  # fmt: skip
    assert_one_line_error(run_cli("quality", "--data", "digits", "--samples", save("big.npy", np.full((5, 8, 8), 2.0))),
                          "[0, 1]")  # fmt: skip
    nan = np.zeros((5, 8, 8))
    nan[0, 0, 0] = np.nan
    assert_one_line_error(run_cli("quality", "--data", "digits", "--samples", save("nan.npy", nan)), "NaN")
    assert_one_line_error(run_cli("quality", "--data", "digits", "--samples", save("many.npy", np.zeros((400, 8, 8)))),
                          "has 360 test images")  # fmt: skip
    assert_one_line_error(run_cli("quality", "--data", "digits", "--samples", save("few.npy", np.zeros((3, 8, 8)))),
                          "at least 6")  # fmt: skip
    unlabelled = save("data.npy", np.random.default_rng(0).random((100, 8, 8)))
    assert_one_line_error(run_cli("quality", "--data", unlabelled, "--samples", good), "no labels")


# --------------------------------------------------------------------------------------------
# samples of a run


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--data", "digits", "--binarize", "threshold", "--hidden", "32", "--latent-dim", "4",
                 "--epochs", "1", "--out", str(out), "--quiet"]) == 0  # fmt: skip
    return out


def test_quality_of_a_run_with_either_sampler(vae_run, digits_scorer):
    results = {}
    for flags in ((), ("--sampler", "gmm", "--components", "3"), ("--sample-pixels",)):
        proc = run_cli("quality", str(vae_run), "--n", "100", "--json", *flags)
        assert proc.returncode == 0, proc.stderr
        results[flags] = out = json.loads(proc.stdout)
        assert set(out) == KEYS | {"reference", "n_samples", "dataset", "classifier_accuracy", "pr_k", "dc_k"}
        assert out["n_samples"] == 100 and out["dataset"] == "digits"
        assert all(math.isfinite(out[key]) for key in KEYS)
    prior, gmm, pixels = results.values()
    assert prior["reference"] == gmm["reference"] == pixels["reference"]
    assert prior["fd"] != gmm["fd"] and prior["fd"] != pixels["fd"]
    proc = run_cli("quality", str(vae_run), "--n", "100")
    assert proc.returncode == 0 and "means of p(x|z), z ~ p(z)" in proc.stdout
    assert_one_line_error(run_cli("quality", str(vae_run)), "10000 samples", "has 360 test images")
    assert_one_line_error(run_cli("quality", str(vae_run), "--samples", "x.npy"), "drop --samples")


def test_quality_with_the_stage2_sampler(vae_run, digits_scorer, tmp_path):
    """The two-stage VAE's samples (z from a second VAE trained on the run's codes) are scored like
    any other sampler's, and the table says where z came from."""
    codes, stage2 = tmp_path / "codes.npz", tmp_path / "stage2"
    assert main(["encode", str(vae_run), "-o", str(codes)]) == 0
    assert main(["train", "--data", str(codes), "--binarize", "none", "--likelihood", "gaussian-learned", "--hidden", "16",
                 "--latent-dim", "4", "--epochs", "1", "--out", str(stage2), "--quiet"]) == 0  # fmt: skip
    proc = run_cli("quality", str(vae_run), "--n", "100", "--json", "--sampler", f"stage2:{stage2}")
    assert proc.returncode == 0, proc.stderr
    stage2_result = json.loads(proc.stdout)
    prior = json.loads(run_cli("quality", str(vae_run), "--n", "100", "--json").stdout)
    assert all(math.isfinite(stage2_result[key]) for key in KEYS) and stage2_result["fd"] != prior["fd"]
    proc = run_cli("quality", str(vae_run), "--n", "100", "--sampler", f"stage2:{stage2}")
    assert proc.returncode == 0 and f"z from the stage-2 VAE {stage2}" in proc.stdout
    assert_one_line_error(run_cli("quality", str(vae_run), "--n", "100", "--sampler", f"stage2:{vae_run}"),
                          "latent of 4 dimensions")  # fmt: skip


def test_sample_images(vae_run):
    import vaelab

    model = vaelab.load(vae_run)
    x = load_split("digits", "train", binarize="threshold", limit=200).fixed()
    state = torch.random.get_rng_state()
    means = sample_images(model, 30, seed=1)
    assert means.shape == (30, 1, 8, 8) and bool(((means >= 0) & (means <= 1)).all())
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's stream is untouched
    assert torch.equal(means, sample_images(model, 30, seed=1))  # seeded
    assert not torch.equal(means, sample_images(model, 30, seed=2))
    pixels = sample_images(model, 30, seed=1, sample_pixels=True)
    assert set(pixels.unique().tolist()) <= {0.0, 1.0} and not torch.equal(pixels, means)  # Bernoulli draws
    gmm = sample_images(model, 30, sampler="gmm", components=3, train_x=x, seed=1)
    assert gmm.shape == means.shape and not torch.equal(gmm, means)
    with pytest.raises(ConfigError, match="train_x"):
        sample_images(model, 30, sampler="gmm")


def test_a_model_with_its_own_sampler_is_asked_for_its_images():
    class Coded(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.calls = []

        def sample_images(self, n, *, sample_pixels, generator):
            self.calls.append((n, sample_pixels))
            return torch.rand(n, 1, 4, 4, generator=generator) * 3 - 1  # outside [0, 1]: clamped

    model = Coded()
    x = sample_images(model, 2500, sample_pixels=True, seed=3)
    assert model.calls == [(1000, True), (1000, True), (500, True)]  # in chunks of 1000
    assert x.shape == (2500, 1, 4, 4) and float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert torch.equal(x, sample_images(Coded(), 2500, sample_pixels=True, seed=3))
    with pytest.raises(ConfigError, match="sampler='gmm' needs a VAE's continuous latent"):
        sample_images(model, 10, sampler="gmm")
