"""Sample quality: how close a set of generated images is to a dataset's test images.

Images are compared in the feature space of a small convolutional classifier that vaelab trains
on the dataset's labelled training images the first time it is needed (fixed seed, cached under
the user cache directory, keyed by a SHA-256 of the training data), the way FID compares images
in the features of an Inception network (Heusel et al. 2017) but with a network that has seen
the data in question (28x28 grey clothes, 8x8 digits) instead of ImageNet photographs.

Metrics between n samples and the first n test images, on the classifier's 128 penultimate
features:

- ``fd``: the Fréchet distance between Gaussians fitted to the two feature sets (Heusel et al.
  2017): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}). Lower is better.
- ``precision`` and ``recall`` (Kynkäänniemi et al. 2019, "Improved precision and recall metric
  for assessing generative models"): the share of samples inside the real images' k-NN balls
  (fidelity), and the share of real images inside the samples' k-NN balls (diversity); k = 3,
  the paper's choice.
- ``density`` and ``coverage`` (Naeem et al. 2020, "Reliable fidelity and diversity metrics for
  generative models"): how many real k-NN balls contain a sample, on average, divided by k
  (about 1 for samples distributed like the data, above 1 when they crowd where the data is
  dense), and the share of real images whose k-NN ball contains a sample; k = 5, the paper's
  recommendation (with k = 3 a perfect model's coverage tops out at 1 - 1/2^3 = 0.875, with k = 5
  at 0.97).
- ``classifier_score``: exp E_x KL(p(y|x) || p(y)), the Inception score (Salimans et al. 2016)
  with our classifier: between 1 and the number of classes, high when each sample is clearly of
  one class and the classes are balanced. One split of all n samples.

A perfect model is not at fd = 0 and precision = 1: two finite samples of the same distribution
differ. ``reference`` holds the same metrics for n real *training* images against the same test
images, the floor (or ceiling) that a model drawing exactly from the data distribution would reach.

Mode collapse is measured on data whose modes are known (Srivastava et al. 2017, "VEEGAN"), and
:func:`get_scorer` and :func:`score_samples` pick these metrics for those datasets:

- ``ring8`` and ``grid25`` (Gaussians in the plane, ``vaelab.data.MIXTURES``): ``modes``, the
  number of mixture components with at least ``min_samples_per_mode`` samples within 3 standard
  deviations of their centre, and ``high_quality``, the share of samples within 3 standard
  deviations of some centre (:class:`MixtureModeScorer`).
- ``stacked-fashion-mnist`` (three Fashion-MNIST images as the channels of one image): each
  channel is classified by the Fashion-MNIST feature classifier; ``modes`` counts the distinct
  class triples among the samples (of 1000) and ``mode_kl`` is the KL divergence of their
  histogram from the uniform distribution over the 1000 triples (:class:`StackedModeScorer`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..core.devices import resolve_device
from ..core.errors import DataError, RunError
from ..core.files import atomic_write_bytes, load_tensors, save_tensors
from ..data.download import cache_dir as _cache_dir
from ..data.download import resolve_idx_files
from ..data.load import load_split
from ..data.mixtures import MIXTURE_SIZES, MIXTURES, STACKED_SIZES, STACKED_SOURCE
from ..data.sources import check_data_dir
from ..data.splits import Split

__all__ = [
    "DC_NEIGHBOURS",
    "PR_NEIGHBOURS",
    "METRICS",
    "MODE_SCORERS",
    "STACKED_MODES",
    "Classifier",
    "FeatureClassifier",
    "MixtureModeScorer",
    "QualityScorer",
    "StackedModeScorer",
    "channel_codes",
    "check_samples",
    "classifier_score",
    "feature_statistics",
    "frechet_distance",
    "get_classifier",
    "get_scorer",
    "manifold_metrics",
    "min_samples_per_mode",
    "mode_metrics",
    "read_samples",
    "score_samples",
    "stacked_mode_metrics",
    "train_classifier",
]

PR_NEIGHBOURS = 3  # k of precision and recall (Kynkäänniemi et al. 2019)
DC_NEIGHBOURS = 5  # k of density and coverage (Naeem et al. 2020)
METRICS = ("fd", "precision", "recall", "density", "coverage", "classifier_score")
CHUNK = 1000  # rows per block of the distance matrices and of the classifier's forward passes

# The training recipe of the feature classifier. It is part of the cache key, so a change here
# never reuses a classifier trained the old way.
RECIPE: dict[str, Any] = {
    "version": 1,
    "channels": [32, 64],  # two 3x3 convolutions, each followed by ReLU and 2x2 max pooling
    "features": 128,  # the dense penultimate layer (ReLU) whose outputs are the features
    "batch_size": 64,
    "lr": 2e-3,  # Adam, decayed linearly to 0 over training
    "min_epochs": 3,  # at least 3 passes (Fashion-MNIST: 3 epochs, 91% test accuracy) ...
    "examples": 30_000,  # ... and at least 30,000 examples seen (digits: 21 epochs, 94%)
    "seed": 0,
}


# --------------------------------------------------------------------------------------------
# Metrics (pure functions of features; float64, on the features' device)


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and covariance (unbiased, divided by n - 1) of ``(n, d)`` features, in float64."""
    f = features.flatten(1).to(torch.float64)
    if f.shape[0] < 2:
        raise DataError(f"a covariance needs at least 2 feature vectors, got {f.shape[0]}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def frechet_distance(mu1: Tensor, cov1: Tensor, mu2: Tensor, cov2: Tensor) -> float:
    """The Fréchet (2-Wasserstein) distance between N(mu1, cov1) and N(mu2, cov2), squared.

    ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}) (Dowson & Landau 1982; FID, Heusel et al.
    2017). S1 S2 is not symmetric, but it is similar to the symmetric positive semi-definite
    M = S1^{1/2} S2 S1^{1/2} (S1 S2 = S1^{1/2} M S1^{-1/2}), so Tr (S1 S2)^{1/2} is the sum of the
    square roots of M's eigenvalues, which a symmetric eigensolver finds real and accurately even
    when S1 or S2 is singular (dead ReLU features, fewer samples than features). A general matrix
    square root (scipy.linalg.sqrtm of S1 S2) returns complex values with spurious imaginary
    parts there, which FID code then has to patch with an offset on the diagonal.

    Args:
        mu1, mu2: means ``(d,)``.
        cov1, cov2: covariances ``(d, d)``, symmetric positive semi-definite.

    Returns:
        the distance, computed in float64 and floored at 0 (rounding can leave -1e-13).
    """
    mu1, mu2, cov1, cov2 = (t.to(torch.float64) for t in (mu1, mu2, cov1, cov2))
    diff = mu1 - mu2
    w, v = torch.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (v * w.clamp_min(0).sqrt()) @ v.T  # S1^{1/2}
    m = root1 @ cov2 @ root1
    eig = torch.linalg.eigvalsh((m + m.T) / 2).clamp_min(0)
    value = diff @ diff + torch.trace(cov1) + torch.trace(cov2) - 2 * eig.sqrt().sum()
    return max(float(value), 0.0)


def _squared_distances(a: Tensor, b: Tensor) -> Tensor:
    """||a_i - b_j||^2, ``(len(a), len(b))``; exact for small integers in float64."""
    return (a.square().sum(1, keepdim=True) + b.square().sum(1) - 2 * a @ b.T).clamp_min_(0)


def _kth_neighbours(x: Tensor, ks: Sequence[int]) -> list[Tensor]:
    """Squared distance of each row of x to its k-th nearest other row, ``(n,)`` for each k of ks,
    from one pass over the distances."""
    # The row itself is at distance 0, the smallest, so the k-th other row is the (k+1)-th smallest.
    nearest = torch.cat([_squared_distances(x[i : i + CHUNK], x).topk(max(ks) + 1, dim=1, largest=False).values
                         for i in range(0, len(x), CHUNK)])  # fmt: skip  # (n, max k + 1), ascending
    return [nearest[:, k] for k in ks]


def manifold_metrics(real: Tensor, fake: Tensor, pr_k: int = PR_NEIGHBOURS,
                     dc_k: int = DC_NEIGHBOURS) -> dict[str, float]:  # fmt: skip
    """Precision, recall (Kynkäänniemi et al. 2019), density and coverage (Naeem et al. 2020).

    Each point's neighbourhood is the closed ball around it whose radius is the distance to its
    k-th nearest neighbour within its own set. With real points X_1..X_N and fake Y_1..Y_M:
    precision = share of Y inside some real ball; recall = share of X inside some fake ball (both
    with k = ``pr_k``); density = (1 / kM) sum_j #{i : Y_j in ball(X_i)}; coverage = share of real
    balls holding some Y (both with k = ``dc_k``). Two samples of one distribution have expected
    coverage 1 - prod_{i<k} (N - 1 - i) / (M + N - 1 - i) (Naeem et al. 2020), about 1 - 1/2^k.
    Distances are Euclidean, in float64, computed in blocks of 1000 rows (memory O(1000 N)).

    Args:
        real: ``(N, d)`` features of real images, N > both k.
        fake: ``(M, d)`` features of generated images, M > pr_k.
        pr_k: the neighbour defining the radii of precision and recall (the paper's 3).
        dc_k: the neighbour defining the real radii of density and coverage (the paper's 5).

    Returns:
        {"precision", "recall", "density", "coverage"}.
    """
    real = real.flatten(1).to(torch.float64)
    fake = fake.flatten(1).to(torch.float64)
    for name, x, k in (("real", real, max(pr_k, dc_k)), ("fake", fake, pr_k)):
        if len(x) <= k:
            raise DataError(f"k-nearest-neighbour metrics with K = {k} neighbours need more than {k} {name} points, got {len(x)}")
    real_radius, dc_radius = _kth_neighbours(real, (pr_k, dc_k))  # (N,) each
    (fake_radius,) = _kth_neighbours(fake, (pr_k,))  # (M,)
    in_real = fake.new_zeros(len(fake), dtype=torch.bool)  # Y_j inside some real ball
    balls = fake.new_zeros(len(fake))  # number of real balls holding Y_j
    covered = real.new_zeros(len(real), dtype=torch.bool)  # real ball i holds some Y
    in_fake = real.new_zeros(len(real), dtype=torch.bool)  # X_i inside some fake ball
    for start in range(0, len(fake), CHUNK):
        block = slice(start, start + CHUNK)
        d = _squared_distances(fake[block], real)  # (c, N)
        in_real[block] = (d <= real_radius).any(1)  # Y_j in some real pr_k-ball
        inside = d <= dc_radius  # Y_j in the dc_k-ball of X_i
        balls[block] = inside.sum(1, dtype=torch.float64)
        covered |= inside.any(0)
        in_fake |= (d <= fake_radius[block, None]).any(0)
    return {
        "precision": float(in_real.double().mean()),
        "recall": float(in_fake.double().mean()),
        "density": float(balls.sum() / (dc_k * len(fake))),
        "coverage": float(covered.double().mean()),
    }


def classifier_score(probs: Tensor) -> float:
    """exp E_x KL(p(y|x) || p(y)), p(y) = E_x p(y|x): the Inception score (Salimans et al. 2016)
    of class probabilities ``(n, C)``, in float64 (0 log 0 = 0). Between 1 (every x gets the same
    p(y|x)) and C (each x certain of its class, classes equally frequent)."""
    p = probs.to(torch.float64)
    marginal = p.mean(0, keepdim=True)
    kl = (torch.xlogy(p, p) - torch.xlogy(p, marginal.expand_as(p))).sum(1)
    return float(kl.mean().exp())


# --------------------------------------------------------------------------------------------
# The feature classifier


class FeatureClassifier(nn.Module):
    """Two 3x3 convolutions (ReLU, 2x2 max pooling each), a dense ReLU layer of 128 features,
    and a linear layer to the class logits. For images ``(B, C, H, W)`` with H, W >= 4."""

    def __init__(self, event_shape: tuple[int, ...], num_classes: int, channels: tuple[int, int] = (32, 64),
                 features: int = 128) -> None:  # fmt: skip
        super().__init__()
        c, h, w = event_shape
        c1, c2 = channels
        self.body = nn.Sequential(
            nn.Conv2d(c, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(c2 * (h // 4) * (w // 4), features), nn.ReLU(),
        )  # fmt: skip
        self.head = nn.Linear(features, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The penultimate layer, ``(B, features)``."""
        return self.body(x)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits, ``(B, num_classes)``."""
        return self.head(self.body(x))


def _build(event_shape: tuple[int, ...], num_classes: int, seed: int) -> FeatureClassifier:
    with torch.random.fork_rng(devices=[]):  # seeded initialization; the caller's stream is untouched
        torch.manual_seed(seed)
        return FeatureClassifier(event_shape, num_classes, tuple(RECIPE["channels"]), RECIPE["features"])


def train_classifier(train: Split, *, device: str | torch.device = "cpu", progress: bool = False,
                     desc: str = "feature classifier") -> FeatureClassifier:  # fmt: skip
    """Trains the feature classifier on a labelled split with the fixed ``RECIPE``: seeded
    initialization and data order, Adam with a learning rate decaying linearly to 0, cross-entropy.
    The same data on the same machine gives the same weights.

    Args:
        train: labelled images (``train.y`` not None), grey levels in [0, 1].
        device: where to train.
        progress: a progress bar on stderr.

    Returns:
        the classifier, in eval mode, on ``device``.
    """
    from tqdm.auto import tqdm

    x, y = train.x, train.y
    num_classes = int(y.max()) + 1
    model = _build(tuple(x.shape[1:]), num_classes, RECIPE["seed"]).to(device)
    n, batch = len(x), RECIPE["batch_size"]
    epochs = max(RECIPE["min_epochs"], math.ceil(RECIPE["examples"] / n))
    steps = epochs * math.ceil(n / batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"])
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / steps)
    generator = torch.Generator().manual_seed(RECIPE["seed"])
    model.train()
    with tqdm(total=steps, desc=desc, disable=not progress, file=sys.stderr, dynamic_ncols=True) as bar:
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, batch):
                index = order[start : start + batch]
                loss = nn.functional.cross_entropy(model(x[index].to(device)), y[index].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                bar.update()
    return model.eval()


@torch.no_grad()
def _forward(model: FeatureClassifier, x: Tensor, device: torch.device) -> tuple[Tensor, Tensor]:
    """Features ``(n, 128)`` and class probabilities ``(n, C)`` of images, in blocks, on ``device``
    (on the CPU for MPS)."""
    features, probs = [], []
    for start in range(0, len(x), CHUNK):
        f = model.features(x[start : start + CHUNK].to(device=device, dtype=torch.float32))
        logits = model.head(f)
        if f.device.type == "mps":  # the metrics are in float64, which MPS lacks: they run on the CPU
            f, logits = f.cpu(), logits.cpu()
        features.append(f)
        probs.append(torch.softmax(logits.to(torch.float64), dim=1))
    return torch.cat(features), torch.cat(probs)


@dataclass(frozen=True)
class Classifier:
    """A feature classifier and where it came from.

    Attributes:
        net: the network, in eval mode.
        accuracy: its accuracy on the dataset's whole test split.
        path: its weights file in the cache.
        trained: True if it was trained by this call, False if it came from the cache.
        seconds: how long its training took (when it was trained, for one from the cache).
        data_sha256: SHA-256 of the training data it was trained on.
    """

    net: FeatureClassifier
    accuracy: float
    path: Path
    trained: bool
    seconds: float
    data_sha256: str


def _checksum(split: Split) -> str:
    """SHA-256 of a labelled split's images (float32) and labels (int64), with their shapes."""
    digest = hashlib.sha256()
    digest.update(f"x{list(split.x.shape)}:y{list(split.y.shape)}:".encode())
    digest.update(np.ascontiguousarray(split.x.numpy(), dtype=np.float32).tobytes())
    digest.update(np.ascontiguousarray(split.y.numpy(), dtype=np.int64).tobytes())
    return digest.hexdigest()


def _cache_root(name: str, cache_dir: str | os.PathLike[str] | None) -> Path:
    """Where classifiers of dataset ``name`` live: ``cache_dir/<name>``, else
    ``$VAELAB_CACHE/<name>``, else the user cache ``$XDG_CACHE_HOME/vaelab/<name>``."""
    label = Path(name).stem if name.lower().endswith((".npy", ".npz")) else name
    root = cache_dir if cache_dir is not None else os.environ.get("VAELAB_CACHE") or None
    return Path(root).expanduser() / label if root is not None else _cache_dir(label)


def get_classifier(
    train: Split,
    test: Split,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> Classifier:
    """The feature classifier of a labelled dataset: from the cache if one was trained on exactly
    this training data with this recipe, otherwise trained now and cached (safetensors weights and
    a JSON sidecar, written atomically). A cached file that cannot be read is replaced.

    Args:
        train: the labelled training images it is trained on.
        test: the labelled test images its accuracy is measured on.
        cache_dir: the cache's root folder (default: ``$VAELAB_CACHE`` or the user cache).
        device: where it runs: a name as in ``devices.resolve_device`` (``auto``, ``cpu``, ``cuda:N``, ...) or a ``torch.device``.
        progress: a progress bar on stderr while training.
    """
    device = resolve_device(device)
    for split in (train, test):
        if split.y is None:
            raise DataError(f"{split.name} ({split.split}) has no labels; the feature classifier needs labelled images")
    sha = _checksum(train)
    folder = _cache_root(train.name, cache_dir)
    stem = f"classifier-v{RECIPE['version']}-{sha[:16]}"
    weights, sidecar = folder / f"{stem}.safetensors", folder / f"{stem}.json"
    num_classes = int(train.y.max()) + 1
    net, meta = _read_cached(weights, sidecar, sha, tuple(train.x.shape[1:]), num_classes)
    trained = net is None
    if net is None:
        start = time.perf_counter()
        net = train_classifier(train, device=device, progress=progress, desc=f"feature classifier for {train.name}")
        seconds = time.perf_counter() - start
        save_tensors(weights, net.state_dict(), {"format": "vaelab-feature-classifier", "data_sha256": sha})
    else:
        net = net.to(device)
        seconds = float(meta.get("train_seconds", math.nan))
    _, probs = _forward(net, test.x, device)
    accuracy = float((probs.argmax(1).cpu() == test.y).double().mean())
    if trained:
        meta = {"dataset": train.name, "data_sha256": sha, "recipe": RECIPE, "event_shape": list(train.x.shape[1:]),
                "num_classes": num_classes, "n_train": len(train), "test_accuracy": accuracy,
                "train_seconds": seconds, "torch": torch.__version__}  # fmt: skip
        atomic_write_bytes(sidecar, (json.dumps(meta, indent=2) + "\n").encode())
    return Classifier(net, accuracy, weights, trained, seconds, sha)


def _read_cached(weights: Path, sidecar: Path, sha: str, event_shape: tuple[int, ...],
                 num_classes: int) -> tuple[FeatureClassifier | None, dict[str, Any]]:  # fmt: skip
    """The cached classifier and its sidecar if both files are there, readable and trained on this
    data with this recipe; else (None, {})."""
    try:
        meta = json.loads(sidecar.read_text())
        tensors, header = load_tensors(weights)
    except (OSError, ValueError, RunError):
        return None, {}
    if not isinstance(meta, dict) or meta.get("data_sha256") != sha or header.get("data_sha256") != sha \
            or meta.get("recipe") != RECIPE:
        return None, {}
    net = _build(event_shape, num_classes, RECIPE["seed"])
    try:
        net.load_state_dict(tensors)
    except RuntimeError:
        return None, {}
    return net.eval(), meta


# --------------------------------------------------------------------------------------------
# Samples in, scores out


def read_samples(path: str | os.PathLike[str]) -> np.ndarray:
    """Reads a ``.npy`` array of samples (never unpickling)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; save the samples with numpy.save(path, array)")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read it as a .npy array ({' '.join(str(error).split())}); "
                        "save a plain float array with numpy.save") from None  # fmt: skip
    if not isinstance(array, np.ndarray):
        array.close()
        raise DataError(f"{path} is a .npz archive; save the samples as one array with numpy.save(path, array)")
    return array


def check_samples(samples: np.ndarray | Tensor, event_shape: tuple[int, ...], dataset: str) -> Tensor:
    """Checks that samples are images of the dataset's shape with values in [0, 1].

    Args:
        samples: ``(N, C, H, W)`` floats in [0, 1]; ``(N, H, W)`` when C = 1.
        event_shape: the dataset's ``(C, H, W)``.
        dataset: its name, for messages.

    Returns:
        the samples as a float32 tensor ``(N, C, H, W)`` (on the CPU for an array).
    """
    x = torch.from_numpy(np.asarray(samples)) if not isinstance(samples, Tensor) else samples
    expected = "N x " + " x ".join(str(s) for s in event_shape)
    if x.ndim == len(event_shape) and event_shape[0] == 1:
        x = x.unsqueeze(1)  # N x H x W: one grey channel
    if tuple(x.shape[1:]) != tuple(event_shape) or x.ndim != len(event_shape) + 1:
        also = f" (or N x {event_shape[1]} x {event_shape[2]})" if event_shape[0] == 1 else ""
        raise DataError(f"samples have shape {list(samples.shape)}; {dataset} needs an {expected}{also} array "
                        "of floats in [0, 1]")  # fmt: skip
    if not x.is_floating_point():
        raise DataError(f"samples have dtype {str(x.dtype).replace('torch.', '')}; pass floats in [0, 1] "
                        "(divide uint8 grey levels by 255)")  # fmt: skip
    if x.numel():
        low, high = float(x.min()), float(x.max())
        if not (0.0 <= low and high <= 1.0):  # also false for NaN
            what = "NaN values" if bool(torch.isnan(x).any()) else f"values in [{low:g}, {high:g}]"
            raise DataError(f"samples have {what}; images must have values in [0, 1]")
    return x.to(torch.float32)


class _ImageSamples:
    """``check`` for scorers of images: :func:`check_samples` against the scorer's
    ``event_shape``, then its ``check_n``."""

    dataset: str
    event_shape: tuple[int, ...]

    def check_n(self, n: int) -> None:  # pragma: no cover - every scorer defines it
        raise NotImplementedError

    def check(self, samples: np.ndarray | Tensor) -> Tensor:
        """Checks that samples are images of the dataset's shape with values in [0, 1] and that
        there are as many as can be scored; returns them as ``(N, C, H, W)`` float32."""
        x = check_samples(samples, self.event_shape, self.dataset)
        self.check_n(len(x))
        return x


def _check_against_training_file(n: int, size: int, dataset: str, unit: str) -> None:
    """Refuses a number of samples the training file (``size`` of them) cannot match for the reference."""
    if n < 1:
        raise DataError(f"no samples to score; pass at least one {unit}")
    if n > size:
        raise DataError(f"{n} samples, but {dataset} has {size} training {unit}s for the reference; use at most {size}")


class QualityScorer(_ImageSamples):
    """Scores sets of samples against one labelled image dataset.

    Loading is cheap and checks the data; the feature classifier is trained (or read from the
    cache) the first time it is needed, so bad input fails before minutes of training. The test
    features and the reference row are kept, so scoring several sets costs one forward pass each.

    Args:
        dataset: a registered dataset name, or a ``.npz`` file with ``x_train``, ``y_train``,
            ``x_test``, ``y_test``: images and integer labels.
        data_dir: the folder that holds the IDX files (the only place looked in).
        cache_dir: the classifier cache's root (default: ``$VAELAB_CACHE``, else the user cache).
        device: where the classifier and the metrics run (as in ``get_classifier``).
        progress: a progress bar on stderr while the classifier trains.
        pr_k, dc_k: the neighbours of precision and recall (3) and of density and coverage (5), as
            in ``manifold_metrics``; both are reported with every score.
    """

    DEFAULT_N = 10000  # samples a run draws when none is asked for

    def __init__(self, dataset: str, *, data_dir: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu",
                 progress: bool = False, pr_k: int = PR_NEIGHBOURS, dc_k: int = DC_NEIGHBOURS) -> None:  # fmt: skip
        for name, k in (("pr_k", pr_k), ("dc_k", dc_k)):
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise DataError(f"{name} must be a positive number of neighbours, got {k!r}")
        self.pr_k, self.dc_k = pr_k, dc_k
        self.dataset = os.fspath(dataset)
        self.cache_dir, self.device, self.progress = cache_dir, resolve_device(device), progress
        kwargs = dict(binarize="none", data_dir=data_dir, valid_fraction=0.0)
        self.train = load_split(self.dataset, "train", **kwargs)
        self.test = load_split(self.dataset, "test", **kwargs)
        for split in (self.train, self.test):
            if split.y is None:
                raise DataError(
                    f"{self.dataset} has no labels in its {split.split} file; quality trains its feature classifier on "
                    "labelled images: use a labelled dataset (digits, fashion-mnist, mnist, or a .npz with x_train, "
                    "y_train, x_test, y_test)"
                )
        shape = self.event_shape
        if len(shape) != 3 or shape[1] < 4 or shape[2] < 4:
            raise DataError(f"{self.dataset} holds examples of shape {list(shape)}; quality scores images "
                            "(C x H x W, at least 4 x 4 pixels)")  # fmt: skip
        if int(self.train.y.min()) < 0 or int(self.train.y.max()) < 1:
            raise DataError(f"{self.dataset}: quality needs labels 0, 1, ... of at least two classes")
        self._classifier: Classifier | None = None
        self._memo: dict[int, tuple[Tensor, tuple[Tensor, Tensor], dict[str, float]]] = {}

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one image, ``(C, H, W)``."""
        return self.test.event_shape

    def check_n(self, n: int) -> None:
        """Refuses a number of samples that the test split (or the reference) cannot match."""
        most = max(self.pr_k, self.dc_k)
        if n <= most:
            raise DataError(f"the k-nearest-neighbour metrics (K = {most}) need at least {most + 1} "
                            f"samples, got {n}")  # fmt: skip
        if n > len(self.test):
            raise DataError(f"{n} samples, but {self.dataset} has {len(self.test)} test images to compare them "
                            f"with; use at most {len(self.test)}")  # fmt: skip
        if n > len(self.train):
            raise DataError(f"{n} samples, but {self.dataset} has {len(self.train)} training images for the "
                            f"reference; use at most {len(self.train)}")  # fmt: skip

    @property
    def classifier(self) -> Classifier:
        """The feature classifier, trained or read from the cache on first use."""
        if self._classifier is None:
            self._classifier = get_classifier(self.train, self.test, cache_dir=self.cache_dir, device=self.device,
                                              progress=self.progress)  # fmt: skip
        return self._classifier

    def _real(self, n: int) -> tuple[Tensor, tuple[Tensor, Tensor], dict[str, float]]:
        """Features of the first n test images, their statistics, and the reference metrics."""
        if n not in self._memo:
            real, _ = _forward(self.classifier.net, self.test.x[:n], self.device)
            stats = feature_statistics(real)
            self._memo[n] = (real, stats, self._metrics(real, stats, self.train.x[:n]))
        return self._memo[n]

    def _metrics(self, real: Tensor, stats: tuple[Tensor, Tensor], images: Tensor) -> dict[str, float]:
        fake, probs = _forward(self.classifier.net, images, self.device)
        out = {"fd": frechet_distance(*feature_statistics(fake), *stats)}
        out.update(manifold_metrics(real, fake, self.pr_k, self.dc_k))
        out["classifier_score"] = classifier_score(probs)
        return {name: out[name] for name in METRICS}

    def score(self, samples: np.ndarray | Tensor) -> dict[str, Any]:
        """The metrics of ``samples`` against as many test images, with the reference row.

        Args:
            samples: ``(N, C, H, W)`` (or ``(N, H, W)`` for one channel) floats in [0, 1].

        Returns:
            ``fd``, ``precision``, ``recall``, ``density``, ``coverage``, ``classifier_score``,
            ``reference`` (the same six for N training images), ``n_samples``, ``dataset``,
            ``classifier_accuracy`` (on the whole test split), ``pr_k`` and ``dc_k`` (the
            neighbours of precision/recall and of density/coverage).
        """
        x = check_samples(samples, self.event_shape, self.dataset)
        n = len(x)
        self.check_n(n)
        real, stats, reference = self._real(n)
        result: dict[str, Any] = self._metrics(real, stats, x)
        result["reference"] = dict(reference)
        result.update(n_samples=n, dataset=self.dataset, classifier_accuracy=self.classifier.accuracy,
                      pr_k=self.pr_k, dc_k=self.dc_k)  # fmt: skip
        return result


# --------------------------------------------------------------------------------------------
# Mode collapse (Srivastava et al. 2017, "VEEGAN: Reducing mode collapse in GANs using implicit
# variational learning")

MODE_RADIUS = 3.0  # a sample is of a mode when within 3 standard deviations of its centre
# VEEGAN draws 2500 samples and counts a mode as captured when 20 of them are of it: 0.8%.
PAPER_SAMPLES, PAPER_MIN_PER_MODE = 2500, 20
STACKED_MODES = 1000  # class triples of stacked-fashion-mnist


def min_samples_per_mode(n: int) -> int:
    """Samples a mode needs to count as captured among n: ceil(20 n / 2500), i.e. 0.8% of the
    samples rounded up (20 of VEEGAN's 2500), and at least 1."""
    return max(1, -(-PAPER_MIN_PER_MODE * n // PAPER_SAMPLES))


def _as_array(samples: np.ndarray | Tensor) -> np.ndarray:
    return samples.detach().cpu().numpy() if isinstance(samples, Tensor) else np.asarray(samples)


def mode_metrics(samples: np.ndarray | Tensor, centres: np.ndarray, sd: float) -> dict[str, Any]:
    """Modes captured and sample quality of points from a mixture of isotropic Gaussians
    (Srivastava et al. 2017).

    A sample is *of* the mode whose centre is nearest when that centre is within 3 ``sd``
    (Euclidean distance); it is then of *high quality*. A mode is *captured* when at least
    ``min_samples_per_mode(N)`` samples are of it. Points drawn from the mixture itself are of
    high quality with probability P(chi^2_2 <= 9) = 1 - exp(-4.5) = 0.989 in the plane.

    Args:
        samples: ``(N, D)`` points, N >= 1.
        centres: ``(M, D)`` mode centres.
        sd: the standard deviation of every component.

    Returns:
        ``modes`` (captured, 0..M), ``high_quality`` (share of samples within 3 sd of a centre),
        ``num_modes`` (M), ``min_samples_per_mode``.
    """
    x = _as_array(samples).astype(np.float64)
    c = np.asarray(centres, dtype=np.float64)
    if x.ndim != 2 or len(x) == 0 or c.ndim != 2 or x.shape[1] != c.shape[1]:
        raise DataError(f"mode_metrics needs samples (N >= 1, D) and centres (M, D), got {list(x.shape)} and "
                        f"{list(c.shape)}")  # fmt: skip
    d2 = np.stack([np.square(x - centre).sum(1) for centre in c], axis=1)  # (N, M), memory O(N M)
    nearest = d2.argmin(1)  # (N,)
    within = d2[np.arange(len(x)), nearest] <= (MODE_RADIUS * sd) ** 2  # (N,)
    counts = np.bincount(nearest[within], minlength=len(c))  # (M,)
    need = min_samples_per_mode(len(x))
    return {"modes": int((counts >= need).sum()), "high_quality": float(within.mean()), "num_modes": len(c),
            "min_samples_per_mode": need}  # fmt: skip


def stacked_mode_metrics(codes: np.ndarray | Tensor, num_modes: int = STACKED_MODES) -> dict[str, Any]:
    """Modes hit and the KL divergence of the mode histogram from uniform (Srivastava et al. 2017,
    stacked MNIST).

    Args:
        codes: ``(N,)`` integer modes in [0, num_modes), N >= 1.
        num_modes: how many modes there are.

    Returns:
        ``modes`` (distinct codes) and ``mode_kl`` = sum_m p_m log(p_m num_modes) over the modes
        with p_m > 0, in nats: 0 when every mode is equally frequent, log(num_modes) when all
        samples share one mode.
    """
    k = _as_array(codes)
    if k.ndim != 1 or len(k) == 0 or not np.issubdtype(k.dtype, np.integer) or k.min() < 0 or k.max() >= num_modes:
        raise DataError(f"stacked_mode_metrics needs N >= 1 integer codes in [0, {num_modes}), got {k.dtype} "
                        f"{list(k.shape)}")  # fmt: skip
    counts = np.bincount(k, minlength=num_modes)
    p = counts[counts > 0] / len(k)
    return {"modes": int(len(p)), "mode_kl": float(np.sum(p * np.log(p * num_modes)))}


def channel_codes(images: Tensor, predict: Callable[[Tensor], Tensor], classes: int = 10) -> Tensor:
    """The mode of each stacked image: its channels' classes as the digits of one number.

    Args:
        images: ``(N, C, H, W)``.
        predict: one-channel images ``(B, 1, H, W)`` -> classes ``(B,)`` in [0, classes).
        classes: classes per channel.

    Returns:
        ``(N,)`` int64 codes sum_c class_c * classes^(C-1-c): 100 a + 10 b + c for three channels.
    """
    n, c = images.shape[:2]
    labels = torch.as_tensor(predict(images.reshape(n * c, 1, *images.shape[2:]))).cpu()
    if labels.shape != (n * c,) or labels.is_floating_point() or (len(labels) and (int(labels.min()) < 0 or
                                                                                   int(labels.max()) >= classes)):  # fmt: skip
        raise ValueError(f"predict must return {n * c} integer classes in [0, {classes}), got "
                         f"{labels.dtype} {list(labels.shape)}")  # fmt: skip
    weights = classes ** torch.arange(c - 1, -1, -1, dtype=torch.int64)  # (C,): 100, 10, 1
    return (labels.to(torch.int64).view(n, c) * weights).sum(1)


class MixtureModeScorer:
    """Scores points against ``ring8`` or ``grid25`` with :func:`mode_metrics`.

    Args:
        dataset: a name in ``vaelab.data.MIXTURES``.
    """

    DEFAULT_N = PAPER_SAMPLES  # samples a run draws when none is asked for: the paper's 2500
    METRICS = ("modes", "high_quality")

    def __init__(self, dataset: str) -> None:
        if dataset not in MIXTURES:
            raise DataError(f"unknown mixture {dataset!r}; choose one of: {', '.join(sorted(MIXTURES))}")
        self.dataset = dataset
        self.centres, self.sd = MIXTURES[dataset]
        self._reference: dict[int, dict[str, Any]] = {}

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one point, ``(2,)``."""
        return (self.centres.shape[1],)

    def check_n(self, n: int) -> None:
        """Refuses a number of samples the training file cannot match for the reference."""
        _check_against_training_file(n, MIXTURE_SIZES["train"], self.dataset, "point")

    def check(self, samples: np.ndarray | Tensor) -> np.ndarray:
        """Checks that samples are an N x 2 array of finite floats; returns them as float64."""
        x = _as_array(samples)
        d = self.event_shape[0]
        if x.ndim != 2 or x.shape[1] != d:
            raise DataError(f"samples have shape {list(x.shape)}; {self.dataset} needs an N x {d} array of float "
                            "points, one row per sample")  # fmt: skip
        if not np.issubdtype(x.dtype, np.floating):
            raise DataError(f"samples have dtype {x.dtype}; {self.dataset} needs float points: convert them with "
                            ".astype(numpy.float32)")  # fmt: skip
        if not np.isfinite(x).all():
            raise DataError(f"samples have {int((~np.isfinite(x).all(1)).sum())} rows with NaN or infinite values; "
                            "drop or fix those rows")  # fmt: skip
        self.check_n(len(x))
        return x.astype(np.float64)

    def score(self, samples: np.ndarray | Tensor) -> dict[str, Any]:
        """The mode metrics of ``samples``, with the reference row.

        Args:
            samples: ``(N, 2)`` finite floats, 1 <= N <= 20000.

        Returns:
            ``modes``, ``high_quality``, ``num_modes``, ``min_samples_per_mode``, ``reference``
            (``modes`` and ``high_quality`` of the first N training points), ``n_samples``,
            ``dataset``.
        """
        x = self.check(samples)
        n = len(x)
        if n not in self._reference:
            real = load_split(self.dataset, "train", valid_fraction=0.0, limit=n).x
            self._reference[n] = mode_metrics(real, self.centres, self.sd)
        result = mode_metrics(x, self.centres, self.sd)
        result["reference"] = {key: self._reference[n][key] for key in self.METRICS}
        result.update(n_samples=n, dataset=self.dataset)
        return result


class StackedModeScorer(_ImageSamples):
    """Scores images against ``stacked-fashion-mnist``: each channel is classified, and
    :func:`stacked_mode_metrics` counts the class triples.

    Args:
        data_dir: the folder that holds the Fashion-MNIST IDX files (the only place looked in).
        cache_dir: the classifier cache's root (default: ``$VAELAB_CACHE``, else the user cache).
        device: where the classifier runs (as in ``get_classifier``).
        progress: a progress bar on stderr while the classifier trains.
        predict: one-channel images ``(B, 1, 28, 28)`` -> classes ``(B,)`` in 0..9, in place of
            the Fashion-MNIST feature classifier (which is then never trained or loaded).
    """

    DEFAULT_N = 10000  # samples a run draws when none is asked for
    METRICS = ("modes", "mode_kl")
    dataset = "stacked-fashion-mnist"

    def __init__(self, *, data_dir: str | os.PathLike[str] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu",
                 progress: bool = False, predict: Callable[[Tensor], Tensor] | None = None) -> None:  # fmt: skip
        self.data_dir, self.cache_dir, self.device, self.progress = data_dir, cache_dir, resolve_device(device), progress
        self._predict = predict
        self._scorer: QualityScorer | None = None
        self._reference: dict[int, dict[str, Any]] = {}
        # Find the IDX files now (downloading them if needed), so a missing dataset fails before
        # a run has drawn its samples.
        resolve_idx_files(STACKED_SOURCE, data_dir, progress=progress)

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one image, ``(3, 28, 28)``."""
        return (3, 28, 28)

    @property
    def classifier(self) -> Classifier | None:
        """The Fashion-MNIST feature classifier (trained or read from the cache on first use), or
        None when ``predict`` was given."""
        if self._predict is not None:
            return None
        if self._scorer is None:
            self._scorer = QualityScorer(STACKED_SOURCE, data_dir=self.data_dir, cache_dir=self.cache_dir,
                                         device=self.device, progress=self.progress)  # fmt: skip
        return self._scorer.classifier

    def predict(self, x: Tensor) -> Tensor:
        """Classes ``(B,)`` of one-channel images ``(B, 1, 28, 28)``."""
        if self._predict is not None:
            return self._predict(x)
        _, probs = _forward(self.classifier.net, x, self.device)
        return probs.argmax(1).cpu()

    def check_n(self, n: int) -> None:
        """Refuses a number of samples the training file cannot match for the reference."""
        _check_against_training_file(n, STACKED_SIZES["train"], self.dataset, "image")

    def _metrics(self, images: Tensor) -> dict[str, Any]:
        codes = torch.cat([channel_codes(images[i : i + CHUNK], self.predict) for i in range(0, len(images), CHUNK)])
        return stacked_mode_metrics(codes.numpy(), STACKED_MODES)

    def score(self, samples: np.ndarray | Tensor) -> dict[str, Any]:
        """The mode metrics of ``samples``, with the reference row.

        Args:
            samples: ``(N, 3, 28, 28)`` floats in [0, 1], 1 <= N <= 60000.

        Returns:
            ``modes``, ``mode_kl``, ``num_modes`` (1000), ``reference`` (``modes`` and
            ``mode_kl`` of the first N training images), ``n_samples``, ``dataset``,
            ``classifier_accuracy`` (the Fashion-MNIST test accuracy of the channel classifier;
            None with an injected ``predict``).
        """
        x = self.check(samples)
        n = len(x)
        if n not in self._reference:
            real = load_split(self.dataset, "train", data_dir=self.data_dir, valid_fraction=0.0, limit=n,
                              progress=self.progress).x  # fmt: skip
            self._reference[n] = self._metrics(real)
        result: dict[str, Any] = self._metrics(x)
        result["num_modes"] = STACKED_MODES
        result["reference"] = dict(self._reference[n])
        classifier = self.classifier
        result.update(n_samples=n, dataset=self.dataset,
                      classifier_accuracy=None if classifier is None else classifier.accuracy)  # fmt: skip
        return result


def _mixture_scorer(name: str) -> Callable[..., MixtureModeScorer]:
    def build(*, data_dir: str | os.PathLike[str] | None, cache_dir: str | os.PathLike[str] | None,
              device: str | torch.device, progress: bool) -> MixtureModeScorer:  # fmt: skip
        # Generated points and closed-form metrics: no files, no classifier, numpy on the CPU.
        return MixtureModeScorer(name)

    return build


# Datasets scored by their modes -> builder(data_dir=, cache_dir=, device=, progress=); every
# other dataset gets the image metrics of QualityScorer.
MODE_SCORERS: dict[str, Callable[..., MixtureModeScorer | StackedModeScorer]] = {
    **{name: _mixture_scorer(name) for name in MIXTURES},
    StackedModeScorer.dataset: StackedModeScorer,
}


def get_scorer(dataset: str | os.PathLike[str], *, data_dir: str | os.PathLike[str] | None = None,
               cache_dir: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu",
               progress: bool = False) -> QualityScorer | MixtureModeScorer | StackedModeScorer:  # fmt: skip
    """The scorer of a dataset: mode metrics for ``ring8``, ``grid25`` and
    ``stacked-fashion-mnist`` (``MODE_SCORERS``), the image metrics of :class:`QualityScorer` for
    any other. Each has ``score(samples)``, ``check(samples)``, ``check_n(n)``, ``event_shape``,
    ``dataset`` and ``DEFAULT_N``."""
    name = os.fspath(dataset)
    check_data_dir(name, data_dir)  # the mode scorers of generated points would ignore it
    build = MODE_SCORERS.get(name)
    if build is None:
        return QualityScorer(name, data_dir=data_dir, cache_dir=cache_dir, device=device, progress=progress)
    return build(data_dir=data_dir, cache_dir=cache_dir, device=device, progress=progress)


def score_samples(samples: np.ndarray | Tensor, dataset: str, *, data_dir: str | os.PathLike[str] | None = None,
                  cache_dir: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu",
                  progress: bool = False) -> dict[str, Any]:  # fmt: skip
    """``get_scorer(dataset, ...).score(samples)``: the quality (or mode) metrics of one set of
    samples."""
    return get_scorer(dataset, data_dir=data_dir, cache_dir=cache_dir, device=device,
                      progress=progress).score(samples)  # fmt: skip
