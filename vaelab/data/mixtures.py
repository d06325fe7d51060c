"""The data of the mode-collapse benchmarks (Srivastava et al. 2017, "VEEGAN").

Mixtures of well separated Gaussians in the plane, and Fashion-MNIST images stacked three to an
image: data whose modes are known, so that a model's samples can be checked for the modes they
miss (vaelab.quality reads the centres and the standard deviation from MIXTURES). The datasets
are registered in ``vaelab.data.sources``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..core.errors import DataError
from .common import FIX_CORRUPT, Part, Source, file_seed

__all__ = ["MIXTURES", "MIXTURE_SIZES", "STACKED_SIZES", "STACKED_SOURCE", "mixture_loader",
           "stacked_part"]  # fmt: skip


def _ring(count: int, radius: float) -> np.ndarray:
    angles = 2 * np.pi * np.arange(count) / count  # centre k at angle 2 pi k / count
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _grid(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return np.stack(np.meshgrid(v, v, indexing="ij"), axis=-1).reshape(-1, 2)  # k = 5 i + j


def _frozen(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)  # one definition shared by the data and the metrics
    return array


# name -> (centres (M, 2) float64, standard deviation of every component)
MIXTURES: dict[str, tuple[np.ndarray, float]] = {
    "ring8": (_frozen(_ring(8, 2.0)), 0.02),
    "grid25": (_frozen(_grid((-4.0, -2.0, 0.0, 2.0, 4.0))), 0.05),
}
MIXTURE_SIZES: dict[str, int] = {"train": 20_000, "test": 5_000}  # points per file
STACKED_SIZES: dict[str, int] = {"train": 60_000, "test": 10_000}  # images per file
STACKED_SOURCE = "fashion-mnist"  # the IDX set whose images become the channels


def _mixture_part(name: str, file: str) -> Part:
    centres, sd = MIXTURES[name]
    rng = np.random.default_rng(file_seed(name, file))
    n = MIXTURE_SIZES[file]
    y = rng.integers(0, len(centres), n)  # the mode each point is drawn from, uniform
    x = centres[y] + sd * rng.standard_normal((n, 2))
    return Part(x.astype(np.float32), y.astype(np.int64), 1.0, None)


def mixture_loader(name: str) -> Callable[..., Source]:
    def load(**_: Any) -> Source:  # generated: no folder to search, nothing to download
        return Source(lambda: _mixture_part(name, "train"), lambda: _mixture_part(name, "test"))

    centres, sd = MIXTURES[name]
    load.__doc__ = (
        f"{name}: {len(centres)} Gaussians of standard deviation {sd} in the plane, float32 points "
        f"[N, 2] labelled with their mode ({MIXTURE_SIZES['train']} training, "
        f"{MIXTURE_SIZES['test']} test points, seeded)."
    )
    return load


def stacked_part(source: Part, origin: str, n: int, seed: int) -> Part:
    """n images whose three channels are images of ``source`` drawn uniformly with replacement;
    label 100 a + 10 b + c for channel labels a, b, c, so each of the 1000 triples is a mode."""
    labels = source.y
    if len(source.x) == 0 or labels is None:
        raise DataError(f"{origin}: holds no labelled images to stack; {FIX_CORRUPT}")
    if int(labels.min()) < 0 or int(labels.max()) > 9:
        raise DataError(
            f"{origin}: labels range over [{int(labels.min())}, {int(labels.max())}], but stacking "
            f"needs the ten classes 0..9 of {STACKED_SOURCE}; {FIX_CORRUPT}"
        )
    pick = np.random.default_rng(seed).integers(0, len(source.x), (n, 3))
    x = source.x[pick, 0]  # (n, 3, H, W): source.x is (N, 1, H, W)
    y = labels[pick] @ np.array([100, 10, 1], dtype=np.int64)
    return Part(x, y, source.scale, source.levels)
