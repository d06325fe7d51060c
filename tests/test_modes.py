"""Mode collapse, measured (Srivastava et al. 2017): the ring8, grid25 and stacked-fashion-mnist
datasets, the mode metrics on sample sets whose answers are known, and `vaelab quality` on them."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from test_cli import assert_one_line_error, run_cli
from test_data import make_dataset, write_idx

import vaelab
from vaelab.core.errors import DataError
from vaelab.data import download as vdownload
from vaelab.data import mixtures as vmixtures
from vaelab.data.load import load_split
from vaelab.data.mixtures import MIXTURES
from vaelab.evaluation.quality import (
    MixtureModeScorer,
    StackedModeScorer,
    channel_codes,
    get_scorer,
    min_samples_per_mode,
    mode_metrics,
    score_samples,
    stacked_mode_metrics,
)
from vaelab.evaluation.sampling import sample_images

MIXTURE_NAMES = sorted(MIXTURES)
SOURCE_FILES = {
    "train-images": "train-images-idx3-ubyte.gz",
    "train-labels": "train-labels-idx1-ubyte.gz",
    "t10k-images": "t10k-images-idx3-ubyte.gz",
    "t10k-labels": "t10k-labels-idx1-ubyte.gz",
}


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test reads the user's datasets or classifier cache, or reaches the network."""
    monkeypatch.setenv("VAELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.setitem(vdownload.SYSTEM_DIRS, "fashion-mnist", [])
    monkeypatch.setitem(vdownload.MIRRORS, "fashion-mnist", [])


# --------------------------------------------------------------------------------------------
# ring8 and grid25


def test_mixture_definitions():
    centres, sd = MIXTURES["ring8"]
    angles = 2 * np.pi * np.arange(8) / 8
    np.testing.assert_allclose(centres, 2 * np.stack([np.cos(angles), np.sin(angles)], 1), atol=1e-15)
    assert sd == 0.02
    centres, sd = MIXTURES["grid25"]
    values = [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert centres.shape == (25, 2) and sd == 0.05
    assert {tuple(c) for c in centres.tolist()} == {(a, b) for a in values for b in values}
    with pytest.raises(ValueError):
        centres[0, 0] = 1.0  # one read-only definition for the data and the metrics


@pytest.mark.parametrize("name", MIXTURE_NAMES)
def test_mixture_files_are_deterministic_labelled_points(name):
    train = load_split(name, "train", valid_fraction=0.0)
    test = load_split(name, "test")
    assert train.x.shape == (20000, 2) and test.x.shape == (5000, 2)
    assert train.x.dtype == torch.float32 and train.levels is None and train.event_shape == (2,)
    m = len(MIXTURES[name][0])
    for split in (train, test):
        assert split.y.dtype == torch.int64 and int(split.y.min()) == 0 and int(split.y.max()) == m - 1
    again = load_split(name, "train", valid_fraction=0.0)
    assert torch.equal(train.x, again.x) and torch.equal(train.y, again.y)
    assert not torch.equal(train.x[:5000], test.x)  # independent files
    # like any other dataset: the public loader, with its validation carve
    assert vaelab.load_dataset(name).shape == (18000, 2)
    assert torch.equal(vaelab.load_dataset(name, split="test"), test.x)


@pytest.mark.parametrize("name", MIXTURE_NAMES)
@pytest.mark.parametrize("split", ["train", "test"])
def test_mixture_points_scatter_around_their_centre_with_the_defined_sd(name, split):
    centres, sd = MIXTURES[name]
    s = load_split(name, split, valid_fraction=0.0)
    x, y = s.x.double().numpy(), s.y.numpy()
    n, m = len(x), len(centres)
    resid = x - centres[y]  # (N, 2), N(0, sd^2) in each coordinate
    # mean of 2N squared N(0, sd^2) residuals: sd^2 (1 +- sqrt(2 / 2N))
    sd_hat = math.sqrt(np.mean(resid**2))
    assert abs(sd_hat - sd) < 4 * sd / math.sqrt(4 * n)
    assert np.all(np.abs(resid.mean(0)) < 4 * sd / math.sqrt(n))
    # labels uniform over the modes: counts Binomial(N, 1/M)
    counts = np.bincount(y, minlength=m)
    assert np.all(np.abs(counts - n / m) < 4 * math.sqrt(n * (1 / m) * (1 - 1 / m)))


# --------------------------------------------------------------------------------------------
# mode_metrics


def test_min_samples_per_mode_scales_the_papers_20_of_2500():
    assert min_samples_per_mode(2500) == 20
    assert min_samples_per_mode(2501) == 21  # ceil(20.008)
    assert min_samples_per_mode(5000) == 40
    assert min_samples_per_mode(125) == 1 and min_samples_per_mode(126) == 2
    assert min_samples_per_mode(1) == 1


@pytest.mark.parametrize("name", MIXTURE_NAMES)
def test_points_from_the_data_distribution_hit_every_mode(name):
    centres, sd = MIXTURES[name]
    x = load_split(name, "test").x[:2500]
    out = mode_metrics(x, centres, sd)
    assert out["modes"] == out["num_modes"] == len(centres)
    assert out["min_samples_per_mode"] == 20
    # within 3 sd in the plane: P(chi^2_2 <= 9) = 1 - exp(-9/2)
    p = 1 - math.exp(-4.5)
    assert abs(out["high_quality"] - p) < 4 * math.sqrt(p * (1 - p) / 2500)


@pytest.mark.parametrize("name", MIXTURE_NAMES)
def test_collapse_onto_one_mode(name):
    centres, sd = MIXTURES[name]
    rng = np.random.default_rng(0)
    x = centres[3] + 0.5 * sd * rng.standard_normal((2500, 2))  # all well within 3 sd of centre 3
    out = mode_metrics(x, centres, sd)
    assert out["modes"] == 1 and out["high_quality"] == 1.0


def test_noise_off_the_modes_has_no_modes_and_no_quality():
    centres, sd = MIXTURES["grid25"]
    rng = np.random.default_rng(1)
    # uniform in squares centred between the grid points: at least 0.7 from every centre
    x = rng.uniform(-0.5, 0.5, (2500, 2)) + rng.choice([-3.0, -1.0, 1.0, 3.0], (2500, 2))
    out = mode_metrics(x, centres, sd)
    assert out["modes"] == 0 and out["high_quality"] == 0.0
    centres, sd = MIXTURES["ring8"]
    out = mode_metrics(rng.uniform(-1.0, 1.0, (2500, 2)), centres, sd)  # inside the ring, radius 2
    assert out["modes"] == 0 and out["high_quality"] == 0.0


def test_half_and_half_and_the_threshold_by_hand():
    centres, sd = MIXTURES["grid25"]
    half = np.concatenate([np.repeat(centres[7:8], 1250, 0), np.full((1250, 2), 1.0)])  # (1, 1): off every mode
    assert mode_metrics(half, centres, sd) == {"modes": 1, "high_quality": 0.5, "num_modes": 25,
                                               "min_samples_per_mode": 20}  # fmt: skip
    # 2500 samples, so a mode needs 20: mode 0 gets exactly 20, mode 1 only 19; mode 2 gets 1000
    # at 2.9 sd (inside), mode 3 1000 at 3.1 sd (outside); the 461 others are off every mode.
    unit = np.array([0.6, 0.8])
    x = np.concatenate([
        np.repeat(centres[0:1], 20, 0),
        np.repeat(centres[1:2], 19, 0),
        np.repeat(centres[2:3] + 2.9 * sd * unit, 1000, 0),
        np.repeat(centres[3:4] + 3.1 * sd * unit, 1000, 0),
        np.full((461, 2), 1.0),
    ])  # fmt: skip
    out = mode_metrics(torch.from_numpy(x), centres, sd)  # tensors work too
    assert out["modes"] == 2 and out["high_quality"] == pytest.approx((20 + 19 + 1000) / 2500, abs=1e-15)


def test_mixture_scorer_rejects_bad_samples():
    scorer = MixtureModeScorer("grid25")
    for bad, needle in ((np.zeros((10, 3)), "N x 2"), (np.zeros(10), "N x 2"), (np.zeros((10, 2), np.int64), "dtype"),
                        (np.array([[0.0, np.nan]]), "NaN"), (np.zeros((0, 2)), "at least one"),
                        (np.zeros((20001, 2)), "at most 20000")):  # fmt: skip
        with pytest.raises(DataError, match=needle):
            scorer.score(bad)
    with pytest.raises(DataError, match="grid25"):
        MixtureModeScorer("digits")


def test_mixture_scorer_reports_the_training_file_as_reference():
    centres, sd = MIXTURES["ring8"]
    x = np.repeat(centres, 100, axis=0)  # 800 points, exactly on the 8 centres
    result = score_samples(x, "ring8")
    reference = mode_metrics(load_split("ring8", "train", valid_fraction=0.0).x[:800], centres, sd)
    assert result == {"modes": 8, "high_quality": 1.0, "num_modes": 8, "min_samples_per_mode": 7,
                      "reference": {"modes": 8, "high_quality": reference["high_quality"]},
                      "n_samples": 800, "dataset": "ring8"}  # fmt: skip
    assert isinstance(get_scorer("grid25"), MixtureModeScorer)


# --------------------------------------------------------------------------------------------
# stacked-fashion-mnist


def test_stacked_mode_metrics_by_hand():
    uniform = stacked_mode_metrics(np.arange(1000))
    assert uniform == {"modes": 1000, "mode_kl": 0.0}
    one = stacked_mode_metrics(np.full(500, 417))
    assert one["modes"] == 1 and one["mode_kl"] == pytest.approx(math.log(1000), rel=1e-12)
    # 2000 samples: mode 0 1001 times, the 999 others once each
    skewed = stacked_mode_metrics(np.concatenate([np.zeros(1001, np.int64), np.arange(1, 1000)]))
    p0, p = 1001 / 2000, 1 / 2000
    assert skewed["modes"] == 1000
    assert skewed["mode_kl"] == pytest.approx(p0 * math.log(p0 * 1000) + 999 * p * math.log(p * 1000), rel=1e-12)
    # two modes, equally frequent: log(1000 / 2)
    assert stacked_mode_metrics(np.array([5, 999, 5, 999]))["mode_kl"] == pytest.approx(math.log(500), rel=1e-12)
    with pytest.raises(DataError):
        stacked_mode_metrics(np.array([1000]))


def grey(labels: np.ndarray) -> np.ndarray:
    """uint8 images that a fake classifier reads back: every pixel 20 * label + 10."""
    return np.broadcast_to((20 * labels + 10).astype(np.uint8)[:, None, None], (len(labels), 28, 28)).copy()


def fake_predict(x: torch.Tensor) -> torch.Tensor:
    """The class of a grey() image: (255 * mean - 10) / 20."""
    return ((x.mean((1, 2, 3)) * 255 - 10) / 20).round().clamp(0, 9).to(torch.int64)


def write_source(folder, n_train: int = 30, n_test: int = 10) -> dict:
    """Four IDX files of labelled grey images, every class present."""
    arrays = {"train-labels": (np.arange(n_train) % 10).astype(np.uint8),
              "t10k-labels": (np.arange(n_test)[::-1] % 10).astype(np.uint8)}  # fmt: skip
    arrays["train-images"], arrays["t10k-images"] = grey(arrays["train-labels"]), grey(arrays["t10k-labels"])
    folder.mkdir(parents=True, exist_ok=True)
    for key, name in SOURCE_FILES.items():
        write_idx(folder / name, arrays[key])
    return arrays


def stacked_images(codes: np.ndarray) -> np.ndarray:
    """Float images (N, 3, 28, 28) whose channels fake_predict reads as the digits of codes."""
    digits = np.stack([codes // 100, codes // 10 % 10, codes % 10], axis=1)  # (N, 3)
    return (grey(digits.reshape(-1)).reshape(len(codes), 3, 28, 28) / np.float32(255)).astype(np.float32)


def test_channel_codes_combine_the_channel_classes():
    codes = np.array([0, 7, 70, 700, 123, 999, 508])
    got = channel_codes(torch.from_numpy(stacked_images(codes)), fake_predict)
    assert got.dtype == torch.int64 and got.tolist() == codes.tolist()
    with pytest.raises(ValueError, match="integer classes"):
        channel_codes(torch.zeros(2, 3, 28, 28), lambda x: torch.zeros(len(x)))  # floats


@pytest.mark.parametrize("subfolder", [False, True])
def test_stacked_dataset_stacks_source_images_with_combined_labels(tmp_path, monkeypatch, subfolder):
    monkeypatch.setitem(vmixtures.STACKED_SIZES, "train", 300)  # the 60000 of the real file, scaled down
    arrays = make_dataset(tmp_path / ("d/fashion-mnist" if subfolder else "d"), n_train=20, n_test=7)
    data_dir = tmp_path / "d"  # found like fashion-mnist's files: in data_dir or data_dir/fashion-mnist
    test = load_split("stacked-fashion-mnist", "test", data_dir=data_dir)
    train = load_split("stacked-fashion-mnist", "train", data_dir=data_dir, valid_fraction=0.0)
    assert test.x.shape == (10000, 3, 28, 28) and train.x.shape == (300, 3, 28, 28)
    assert test.levels == 256 and train.x.dtype == torch.float32
    for split, images, labels in ((train, "train-images", "train-labels"), (test, "t10k-images", "t10k-labels")):
        source = arrays[images]  # (n_source, 28, 28) uint8, random: no two alike
        lookup = {image.tobytes(): i for i, image in enumerate(source)}
        assert len(lookup) == len(source)
        grey_levels = np.round(split.x.numpy() * 255).astype(np.uint8)
        # which source image is each channel (a KeyError if none is)
        index = np.array([[lookup[channel.tobytes()] for channel in image] for image in grey_levels])  # (N, 3)
        np.testing.assert_array_equal(split.x.numpy(), source[index].astype(np.float32) / np.float32(255))
        src_labels = arrays[labels].astype(np.int64)[index]
        expected = 100 * src_labels[:, 0] + 10 * src_labels[:, 1] + src_labels[:, 2]
        np.testing.assert_array_equal(split.y.numpy(), expected)
        assert len(np.unique(index)) == len(source)  # drawn from the whole file
    again = load_split("stacked-fashion-mnist", "test", data_dir=data_dir)
    assert torch.equal(again.x, test.x) and torch.equal(again.y, test.y)


def test_stacked_dataset_refuses_labels_beyond_ten_classes(tmp_path):
    arrays = write_source(tmp_path / "d")
    write_idx(tmp_path / "d" / SOURCE_FILES["t10k-labels"], (arrays["t10k-labels"] + 5).astype(np.uint8))
    with pytest.raises(DataError, match="0..9"):
        load_split("stacked-fashion-mnist", "test", data_dir=tmp_path / "d")


@pytest.fixture
def stacked_dir(tmp_path, monkeypatch):
    monkeypatch.setitem(vmixtures.STACKED_SIZES, "train", 2000)
    write_source(tmp_path / "fmnist")
    return tmp_path / "fmnist"


def test_stacked_scorer_with_an_injected_classifier(stacked_dir):
    scorer = StackedModeScorer(data_dir=stacked_dir, predict=fake_predict)
    assert scorer.event_shape == (3, 28, 28) and scorer.classifier is None
    y = load_split("stacked-fashion-mnist", "train", data_dir=stacked_dir, valid_fraction=0.0).y.numpy()

    every = scorer.score(stacked_images(np.arange(1000)))  # every mode once
    assert every == {"modes": 1000, "mode_kl": 0.0, "num_modes": 1000,
                     "reference": stacked_mode_metrics(y[:1000]), "n_samples": 1000,
                     "dataset": "stacked-fashion-mnist", "classifier_accuracy": None}  # fmt: skip
    assert every["reference"]["modes"] == len(np.unique(y[:1000])) < 1000  # 1000 draws miss some modes

    one = scorer.score(torch.from_numpy(stacked_images(np.full(50, 321))))
    assert one["modes"] == 1 and one["mode_kl"] == pytest.approx(math.log(1000), rel=1e-12)
    assert one["reference"] == stacked_mode_metrics(y[:50])

    for bad, needle in ((np.zeros((5, 28, 28), np.float32), "N x 3 x 28 x 28"),
                        (np.full((5, 3, 28, 28), 2.0, np.float32), "[0, 1]"),
                        (np.zeros((2001, 3, 28, 28), np.float32), "at most 2000")):  # fmt: skip
        with pytest.raises(DataError, match=needle):
            scorer.score(bad)


def test_stacked_scorer_needs_the_fashion_mnist_files(tmp_path):
    with pytest.raises(DataError, match="fashion-mnist not found"):
        StackedModeScorer(predict=fake_predict)
    with pytest.raises(DataError, match="does not exist"):  # a data_dir given is the only place looked in
        StackedModeScorer(data_dir=tmp_path / "empty", predict=fake_predict)


# --------------------------------------------------------------------------------------------
# vaelab quality


def test_quality_cli_scores_points_against_grid25(tmp_path):
    centres, sd = MIXTURES["grid25"]
    path = tmp_path / "samples.npy"
    np.save(path, np.repeat(centres, 100, axis=0).astype(np.float32))  # 2500 points on the 25 centres
    proc = run_cli("quality", "--data", "grid25", "--samples", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    reference = mode_metrics(load_split("grid25", "train", valid_fraction=0.0).x[:2500], centres, sd)
    assert out == {"modes": 25, "high_quality": 1.0, "num_modes": 25, "min_samples_per_mode": 20,
                   "reference": {"modes": 25, "high_quality": reference["high_quality"]},
                   "n_samples": 2500, "dataset": "grid25"}  # fmt: skip

    np.save(path, np.concatenate([np.repeat(centres[:1], 1250, 0), np.full((1250, 2), 1.0)]))  # float64 too
    proc = run_cli("quality", "--data", "grid25", "--samples", str(path))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "2500 samples from" in lines[0] and "25 Gaussians of standard deviation 0.05" in lines[0]
    row = next(line for line in lines if line.strip().startswith("modes")).split()
    assert row[1:3] == ["1", "25"]
    row = next(line for line in lines if line.strip().startswith("high quality")).split()
    assert float(row[2]) == 0.5 and float(row[3]) == pytest.approx(reference["high_quality"], abs=1e-4)


def test_quality_cli_scores_stacked_images(stacked_dir, tmp_path, monkeypatch):
    import functools

    import vaelab.evaluation.quality as quality

    # the Fashion-MNIST classifier replaced by one that reads the grey images back exactly
    monkeypatch.setitem(quality.MODE_SCORERS, "stacked-fashion-mnist",
                        functools.partial(StackedModeScorer, predict=fake_predict))  # fmt: skip
    path = tmp_path / "stacked.npy"
    np.save(path, stacked_images(np.array([12, 12, 345, 999])))
    args = ("quality", "--data", "stacked-fashion-mnist", "--samples", str(path), "--data-dir", str(stacked_dir))
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    y = load_split("stacked-fashion-mnist", "train", data_dir=stacked_dir, valid_fraction=0.0, limit=4).y.numpy()
    assert out["modes"] == 3 and out["mode_kl"] == pytest.approx(0.5 * math.log(500) + 0.5 * math.log(250), rel=1e-12)
    assert out["reference"] == stacked_mode_metrics(y) and out["num_modes"] == 1000 and out["n_samples"] == 4
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.strip().startswith("mode kl")).split()
    assert float(row[2]) == pytest.approx(out["mode_kl"], abs=1e-4)


def test_quality_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((10, 3), np.float32))
    assert_one_line_error(run_cli("quality", "--data", "grid25", "--samples", str(bad)), "[10, 3]", "N x 2")
    np.save(bad, np.zeros((10, 2), np.int32))
    assert_one_line_error(run_cli("quality", "--data", "ring8", "--samples", str(bad)), "int32", "astype")
    np.save(bad, np.full((10, 2), np.inf))
    assert_one_line_error(run_cli("quality", "--data", "ring8", "--samples", str(bad)), "infinite")
    assert_one_line_error(run_cli("quality", "--data", "grid25", "--samples", str(tmp_path / "none.npy")),
                          "no such file")  # fmt: skip
    assert_one_line_error(run_cli("quality", "--samples", str(bad)), "--samples needs --data")
    assert_one_line_error(run_cli("quality", "--data", "grid25", "--samples", str(bad), "--n", "5"), "--n")
    write_source(tmp_path / "fmnist")
    np.save(bad, np.zeros((4, 28, 28), np.float32))
    assert_one_line_error(run_cli("quality", "--data", "stacked-fashion-mnist", "--samples", str(bad),
                                  "--data-dir", str(tmp_path / "fmnist")), "N x 3 x 28 x 28")  # fmt: skip


def test_quality_cli_scores_a_ring8_run_by_its_modes(tmp_path):
    out = tmp_path / "ring8"
    assert run_cli("train", "--data", "ring8", "--binarize", "none", "--likelihood", "gaussian", "--hidden", "16",
                   "--latent-dim", "2", "--epochs", "1", "--limit", "500", "--out", str(out),
                   "--quiet").returncode == 0  # fmt: skip
    proc = run_cli("quality", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["n_samples"] == 2500 and result["dataset"] == "ring8"  # the paper's 2500 by default
    # the run's own samples (seed 0, decoder means), unclamped points in the plane
    samples = sample_images(vaelab.load(out), 2500, seed=0)
    assert samples.shape == (2500, 2)
    assert result == score_samples(samples, "ring8")
    proc = run_cli("quality", str(out), "--n", "100", "--sampler", "gmm", "--components", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["min_samples_per_mode"] == 1
    assert_one_line_error(run_cli("quality", str(out), "--n", "20001"), "at most 20000")


# --------------------------------------------------------------------------------------------
# sample_images: images are clamped, points are not


class _Gaussian(torch.nn.Module):
    """A decoder whose means lie far outside [0, 1], in the given event shape."""

    def __init__(self, event: tuple[int, ...]):
        super().__init__()
        self.event = event
        self.w = torch.nn.Parameter(torch.zeros(1))

    def prior(self):
        return torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), torch.ones(2)), 1)

    def decode(self, z):
        loc = (10 * z.sum(1, keepdim=True)).expand(len(z), math.prod(self.event)).reshape(len(z), *self.event)
        return torch.distributions.Independent(torch.distributions.Normal(loc, 1.0), len(self.event))


class _OwnSampler(torch.nn.Module):
    def __init__(self, event: tuple[int, ...]):
        super().__init__()
        self.event = event
        self.w = torch.nn.Parameter(torch.zeros(1))

    def sample_images(self, n, *, sample_pixels, generator):
        return torch.randn(n, *self.event, generator=generator) * 10


@pytest.mark.parametrize("family", [_Gaussian, _OwnSampler])
@pytest.mark.parametrize("event", [(2,), (5,), (1, 2, 2)])
def test_only_images_are_clamped(family, event):
    x = sample_images(family(event), 200, seed=0)
    assert x.shape == (200, *event)
    if len(event) == 3:
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    else:
        assert float(x.min()) < -1 and float(x.max()) > 2  # points as decoded
