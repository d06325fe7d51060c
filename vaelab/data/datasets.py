"""Datasets by name, the IDX reader, binarization, validation splits and in-memory batching.

A dataset is named either by a registered short name (``"digits"``, ``"fashion-mnist"``,
``"mnist"``; the mode-collapse benchmarks ``"ring8"``, ``"grid25"`` and ``"stacked-fashion-mnist"``),
by a path to a ``.npy``/``.npz`` file, or by a folder of images (``vaelab.imagefolder``). Every
dataset has a *training file* and a *test file*; the validation split is carved from the training
file with a seed, so ``train`` and ``valid`` are disjoint and together make up the training file,
each in file order.

Whole splits live in memory as float32 tensors and are batched by index: there is no per-example
Python work and no ``DataLoader`` (only an image folder too large for memory is streamed, see
``vaelab.imagefolder.StreamSplit``). Randomness (shuffling, dynamic binarization) is drawn only
from a ``torch.Generator`` the caller passes in, so a trainer that checkpoints the generator state
can resume bitwise-identically.

Binarization modes (``BINARIZE_MODES``), for grey levels in [0, 1]:

- ``none``: the grey levels as they are.
- ``threshold``: ``x > 0.5``.
- ``static``: one Bernoulli draw per split, fixed by ``(seed, split)`` (Larochelle & Murray 2011).
- ``dynamic``: a fresh Bernoulli draw every training pass (Salakhutdinov & Murray 2008; Burda et
  al. 2016); the deterministic view used for scoring is a single seeded draw, as for ``static``.

With ``binarize="none"``, ``dequantize=True`` serves grey level k as (k + u) / levels with fresh
uniform noise u every training pass (one seeded draw for scoring), so that a density model of
the data is honest about discrete pixels (Theis et al. 2016).

Posterior codes: a ``.npz`` that holds ``scale_train`` and ``scale_test`` beside ``x_train`` and
``x_test`` (``vaelab encode`` writes the posterior means as x and their standard deviations as
scale) is served, with ``codes="draw"`` (the default), as fresh draws z = x + scale * N(0, I) every
training pass (one seeded draw for scoring): samples of the aggregate posterior
q(z) = E_x q(z|x), the distribution the second stage of a two-stage VAE must learn (Dai & Wipf
2019). ``codes="mean"`` serves the means alone, as fixed data.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import logging
import math
import os
import sys
import tempfile
import urllib.error
import urllib.request
import weakref
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..core.errors import ConfigError, DataError, DataNotFoundError
from ..core.registry import Registry

if TYPE_CHECKING:
    from .imagefolder import StreamSplit

__all__ = [
    "BINARIZE_MODES",
    "DATASETS",
    "MIXTURES",
    "MIXTURE_SIZES",
    "STACKED_SIZES",
    "SPLITS",
    "Split",
    "check_data_dir",
    "describe_source",
    "load_dataset",
    "load_split",
    "read_idx",
    "resolve_idx_files",
    "uses_data_dir",
]

BINARIZE_MODES = ("none", "dynamic", "threshold", "static")
CODE_MODES = ("draw", "mean")  # posterior codes with scales: fresh Gaussian draws, or the means alone
SPLITS = ("train", "valid", "test")

# Short key -> file name without ".gz"; a directory counts only if it holds all four.
IDX_FILES: dict[str, str] = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "t10k-images": "t10k-images-idx3-ubyte",
    "t10k-labels": "t10k-labels-idx1-ubyte",
}

# Where distributions install the files, searched last. Module-level so tests can monkeypatch it.
SYSTEM_DIRS: dict[str, list[str]] = {
    # Debian/Ubuntu package dataset-fashion-mnist. Debian recompressed the .gz files, so their
    # MD5 differs from upstream: local files are validated by the IDX reader, never checksummed.
    "fashion-mnist": ["/usr/share/datasets/fashion-mnist"],
    "mnist": [],
}

# Distribution packages that provide a dataset, named in the "how to fix" part of errors.
APT_PACKAGES: dict[str, str] = {"fashion-mnist": "dataset-fashion-mnist"}

# Official mirrors, tried in order.
MIRRORS: dict[str, list[str]] = {
    "fashion-mnist": [
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ],
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
}

# MD5 of the upstream .gz files, as published by torchvision. Checked on downloads only.
MD5: dict[str, dict[str, str]] = {
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
}

DOWNLOAD_TIMEOUT = 60.0  # seconds without data before a mirror counts as dead

# sklearn's digits have no official split; the last 360 images (20%) are our test file.
DIGITS_TRAIN_SIZE = 1437

_FIX_CORRUPT = "delete it and download it again (or reinstall the package that provided it)"


# --------------------------------------------------------------------------------------------
# Splits held in memory


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field is meaningless
class Split:
    """One split of a dataset held in memory.

    Build it with :func:`load_split`; constructing it directly (e.g. from synthetic tensors in
    tests) is fine too. ``x`` is cast to float32 and ``y`` to int64. Data stays on the CPU.

    Attributes:
        x: float32 ``[N, C, H, W]`` for images, ``[N, D]`` for vector data; grey levels of image
            sets and uint8 arrays are scaled to [0, 1].
        y: int64 labels ``[N]``, or None when the data has none.
        name: the dataset name or path as given.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        binarize: one of ``BINARIZE_MODES``.
        seed: the seed of the validation carve and of the fixed Bernoulli draws.
        levels: the number of discrete grey levels (256 for uint8/IDX data, 17 for digits, 2 for
            bool arrays), None for continuous floats.
        dequantize: serve grey level k (of ``levels``) as (k + u) / levels with u ~ U[0, 1),
            so that a density model of the result bounds the discrete log-likelihood
            (Theis et al. 2016): log P(k) >= E_u[log p((k + u) / L)] - D log L.
        sd: per-element standard deviations shaped like ``x`` (posterior codes), or None: each
            training pass serves x + sd * N(0, I), drawn afresh; the fixed view is one seeded draw.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    name: str
    split: str
    binarize: str = "none"
    seed: int = 0
    levels: int | None = None
    dequantize: bool = False
    sd: torch.Tensor | None = None
    # Memo of fixed() and the reused buffer of dynamic draws; a mutable dict lets a frozen
    # dataclass cache without object.__setattr__.
    _cache: dict[str, Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        _check_choice(self.split, SPLITS, "split")
        _check_choice(self.binarize, BINARIZE_MODES, "binarize mode")
        if not isinstance(self.x, torch.Tensor) or self.x.ndim < 2:
            raise DataError(
                f"{self.name}: x must be a tensor of shape [N, D] or [N, C, H, W], got "
                f"{_shape_of(self.x)}; reshape the data so the first axis indexes examples"
            )
        if not (self.x.is_floating_point() or self.x.dtype == torch.bool):
            raise DataError(
                f"{self.name}: x has dtype {self.x.dtype}; pass floats in [0, 1] (divide uint8 "
                "grey levels by 255)"
            )
        if self.x.dtype != torch.float32:
            object.__setattr__(self, "x", self.x.to(torch.float32))
        if self.y is not None:
            if not isinstance(self.y, torch.Tensor) or self.y.shape != (self.x.shape[0],):
                raise DataError(
                    f"{self.name}: labels must be a 1-D tensor with one entry per example "
                    f"({self.x.shape[0]}), got {_shape_of(self.y)}; fix the labels or pass y=None"
                )
            if self.y.dtype != torch.int64:
                object.__setattr__(self, "y", self.y.to(torch.int64))
        if self.sd is not None:
            if not isinstance(self.sd, torch.Tensor) or self.sd.shape != self.x.shape:
                raise DataError(
                    f"{self.name}: sd must be a tensor shaped like x {list(self.x.shape)}, got "
                    f"{_shape_of(self.sd)}; store one standard deviation per value"
                )
            if self.binarize != "none" or self.dequantize:
                raise DataError(
                    f"{self.name} holds posterior codes drawn as x + sd * N(0, I); binarization and "
                    "dequantization do not apply to them: use binarize='none' without dequantize"
                )
            if self.sd.dtype != torch.float32:
                object.__setattr__(self, "sd", self.sd.to(torch.float32))
        if self.dequantize and self.binarize != "none":
            raise DataError(
                f"dequantization adds noise to grey levels, but binarize={self.binarize!r} makes "
                "the data binary; use binarize='none' with dequantize"
            )
        if self.dequantize and not self.levels:
            raise DataError(
                f"{self.name} holds continuous values, so there is nothing to dequantize; "
                "dequantize needs discrete grey levels (uint8 arrays, digits, the IDX sets)"
            )
        if self.binarize != "none" and self.x.numel() > 0:
            low, high = float(self.x.min()), float(self.x.max())
            if not (0.0 <= low and high <= 1.0):  # also rejects NaN
                raise DataError(
                    f"binarization needs values in [0, 1], but {self.name} ({self.split}) has "
                    f"values in [{low:g}, {high:g}]; rescale the data to [0, 1] or use "
                    "binarize='none'"
                )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        labels = "none" if self.y is None else "int64"
        return (
            f"Split(name={self.name!r}, split={self.split!r}, x={list(self.x.shape)}, "
            f"y={labels}, binarize={self.binarize!r}, seed={self.seed}, levels={self.levels})"
        )

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one example: ``x.shape[1:]``."""
        return tuple(self.x.shape[1:])

    def fixed(self) -> torch.Tensor:
        """The deterministic float32 view used for validation, testing and plots.

        ``none`` -> ``x``; ``threshold`` -> ``x > 0.5``; ``static`` and ``dynamic`` -> one
        Bernoulli draw seeded by ``(seed, split)``, so scores are reproducible and comparable
        between models, and the train/valid/test draws are independent; dequantized grey levels
        and codes with ``sd`` likewise one seeded draw. The result is cached.
        Because CPU ``torch.rand`` fills row-major, ``load_split(..., limit=n).fixed()`` equals
        the first ``n`` rows of the unlimited split's ``fixed()`` for the test split.

        Returns:
            float32 tensor shaped like ``x``; treat it as read-only (it may be ``x`` itself).
        """
        view = self._cache.get("fixed")
        if view is None:
            if self.sd is not None:
                generator = torch.Generator().manual_seed(_derived_seed(self.seed, self.split))
                view = self._code_draw(generator)
            elif self.dequantize:
                generator = torch.Generator().manual_seed(_derived_seed(self.seed, self.split))
                view = self._dequantized(generator)
            elif self.binarize == "none":
                view = self.x
            elif self.binarize == "threshold":
                view = (self.x > 0.5).to(torch.float32)
            else:
                generator = torch.Generator().manual_seed(_derived_seed(self.seed, self.split))
                view = (torch.rand(self.x.shape, generator=generator) < self.x).to(torch.float32)
            self._cache["fixed"] = view
        return view

    def draw(self, generator: torch.Generator | None) -> torch.Tensor:
        """The view for one training pass.

        ``dynamic`` -> a fresh Bernoulli draw of the whole split in one vectorized call (a bool
        tensor: a quarter of the memory of float32); dequantization and codes with ``sd`` -> a
        fresh draw of their noise; every other mode -> :meth:`fixed`.

        Args:
            generator: the only source of random numbers; required for ``dynamic``.

        Returns:
            bool (dynamic) or float32 tensor shaped like ``x``.
        """
        if self.sd is not None or self.dequantize:
            if generator is None:
                raise ValueError("fresh draws of codes or of dequantization noise need a torch.Generator; pass generator=...")
            return self._code_draw(generator) if self.sd is not None else self._dequantized(generator)
        if self.binarize != "dynamic":
            return self.fixed()
        if generator is None:
            raise ValueError("dynamic binarization needs a torch.Generator; pass generator=...")
        return torch.rand(self.x.shape, generator=generator) < self.x

    def fixed_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Slices of :meth:`fixed` of ``batch_size`` rows, in order (validation, scoring)."""
        view = self.fixed()
        return (view[i : i + batch_size] for i in range(0, len(view), batch_size))

    def head(self, n: int | None) -> torch.Tensor:
        """The first ``n`` rows of :meth:`fixed` (all when None)."""
        return self.fixed() if n is None else self.fixed()[:n]

    def _dequantized(self, generator: torch.Generator) -> torch.Tensor:
        # grey level k = x * (L - 1) -> (k + u) / L, in [0, 1)
        levels = float(self.levels)
        k = torch.round(self.x * (levels - 1))
        return (k + torch.rand(self.x.shape, generator=generator)).div_(levels)

    def _code_draw(self, generator: torch.Generator) -> torch.Tensor:
        # z = mean + sd * eps, eps ~ N(0, I): one draw from each example's q(z|x)
        assert self.sd is not None
        return torch.randn(self.x.shape, generator=generator).mul_(self.sd).add_(self.x)

    def batches(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
    ) -> Iterator[torch.Tensor]:
        """One pass over the split in batches.

        Random numbers come only from ``generator``, in a fixed order: the permutation first
        (when shuffling), then the binarization draw (when dynamic). Both are drawn when this
        method is called, not lazily, so the generator state right after the call already
        reflects the whole pass.

        Args:
            batch_size: examples per batch (>= 1); the last batch may be smaller.
            generator: source of the permutation and of dynamic draws; required for
                ``shuffle=True`` or ``binarize="dynamic"``.
            shuffle: visit the examples in a random order.
            drop_last: skip the final batch when it is smaller than ``batch_size``.

        Returns:
            an iterator (with ``len()``, the number of batches) of float32 tensors
            ``[b, *event_shape]``; treat them as read-only, they may share memory with ``x``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if generator is None and (shuffle or self.binarize == "dynamic" or self.dequantize or self.sd is not None):
            # The global RNG would make resumed training irreproducible.
            raise ValueError(
                "shuffle=True and dynamic binarization need a torch.Generator; pass generator=..."
            )
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        reuse = self.binarize == "dynamic" and not self.dequantize and self.sd is None and generator is not None
        view = self._draw_into_buffer(generator) if reuse else self.draw(generator)
        stop = n - n % batch_size if drop_last else n
        batches = _Batches(view, order, batch_size, stop)
        if reuse:
            self._cache["draw_pass"] = weakref.ref(batches)  # type: ignore[assignment]
        return batches

    def _draw_into_buffer(self, generator: torch.Generator) -> torch.Tensor:
        """``draw(generator)`` for dynamic binarization, written into a bool tensor that the split
        keeps from pass to pass, the uniform numbers drawn a slice of examples at a time into a small
        float buffer: the same numbers in the same order as one ``torch.rand`` of the whole split
        (the CPU generator fills row-major, one number per element), without allocating and
        faulting in 4 bytes per element of every pass (0.44 -> 0.26 s per Fashion-MNIST epoch on
        one thread). The buffer is reused only once the previous pass over it is exhausted or gone;
        a pass still being iterated keeps its own draw."""
        previous = self._cache.get("draw_pass")
        last = previous() if previous is not None else None
        busy = last is not None and not last.exhausted
        out = self._cache.get("draw")
        if out is None or busy:
            out = torch.empty(self.x.shape, dtype=torch.bool)
            if not busy:
                self._cache["draw"] = out
        rows = max(1, (1 << 20) // max(1, math.prod(self.x.shape[1:])))
        buffer = torch.empty(min(rows, len(self)), *self.x.shape[1:])  # torch.rand's default dtype, as in draw()
        for i in range(0, len(self), rows):
            u = buffer[: min(rows, len(self) - i)]
            torch.rand(u.shape, generator=generator, out=u)
            torch.lt(u, self.x[i : i + u.shape[0]], out=out[i : i + u.shape[0]])
        return out


class _Batches(Iterator[torch.Tensor]):
    """Slices of a prepared view; an iterator with a length so progress bars know the total."""

    def __init__(
        self, view: torch.Tensor, order: torch.Tensor | None, batch_size: int, stop: int
    ) -> None:
        self._view, self._order, self._size, self._stop = view, order, batch_size, stop
        self._start = 0

    def __len__(self) -> int:
        return -(-self._stop // self._size)

    def __iter__(self) -> _Batches:
        return self

    @property
    def exhausted(self) -> bool:
        return self._start >= self._stop

    def __next__(self) -> torch.Tensor:
        start = self._start
        if start >= self._stop:
            raise StopIteration
        end = min(start + self._size, self._stop)
        self._start = end
        if self._order is None:
            batch = self._view[start:end]
        else:
            batch = self._view.index_select(0, self._order[start:end])
        return batch.to(torch.float32)


def _derived_seed(seed: int, split: str) -> int:
    # A stable hash (not hash(), which is salted per process) so the fixed draws of the splits
    # are independent of each other yet identical across runs and machines.
    digest = hashlib.sha256(f"vaelab.data.fixed:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


# --------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class _Part:
    """One file of a dataset (its training or test file) before splitting."""

    x: np.ndarray  # [N, C, H, W] or [N, D], stored dtype (uint8, bool or float32)
    y: np.ndarray | None  # int64 [N]
    scale: float  # x / scale is in [0, 1] for grey levels; 1 for floats and bools
    levels: int | None
    sd: np.ndarray | None = None  # posterior codes: standard deviations shaped like x (x the means)


@dataclass(frozen=True)
class _Source:
    """What a dataset loader returns; the files are read on demand so ``test`` skips ``train``."""

    train: Callable[[], _Part]
    test: Callable[[], _Part]


# A loader is called as loader(data_dir=..., download=..., progress=...) -> _Source.
DATASETS: Registry[Callable[..., _Source]] = Registry("dataset")


def load_split(
    name: str | os.PathLike[str],
    split: str = "train",
    *,
    binarize: str = "none",
    data_dir: str | os.PathLike[str] | None = None,
    limit: int | None = None,
    valid_fraction: float = 0.1,
    seed: int = 0,
    dequantize: bool = False,
    codes: str = "draw",
    download: bool = True,
    progress: bool = False,
    classes: Sequence[int] | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    memory_budget: float | None = None,
    workers: int = 0,
) -> Split | StreamSplit:
    """Load one split of a dataset into memory (or, for a large image folder, stream it).

    Args:
        name: a registered dataset (``DATASETS.names()``), a path to a ``.npy``/``.npz`` file,
            or a folder of PNG/JPEG images (see :mod:`vaelab.imagefolder` for its layout).
        split: ``"train"``, ``"valid"`` (carved from the training file) or ``"test"``.
        binarize: one of ``BINARIZE_MODES``.
        data_dir: the folder that holds the IDX files of ``fashion-mnist``, ``mnist`` and
            ``stacked-fashion-mnist`` (in itself or in ``data_dir/<name>``); nothing else is
            searched (see :func:`resolve_idx_files`). Refused for data that has no files to look
            for there (see :func:`check_data_dir`).
        limit: keep only the first ``limit`` examples of the split, in file order.
        valid_fraction: share of the training file held out for ``"valid"``, in [0, 1);
            ``round(valid_fraction * n)`` examples chosen by a permutation seeded with ``seed``.
        seed: seed of the validation carve and of the fixed binarization draws.
        dequantize: serve grey levels with uniform noise (see ``Split``); needs binarize="none".
        codes: for a ``.npz`` of posterior codes (``scale_train``/``scale_test`` beside
            ``x_train``/``x_test``): "draw" serves x + scale * N(0, I), drawn afresh every pass
            (the aggregate posterior), "mean" the means alone. Other data refuse "mean".
        download: fetch missing IDX files from the official mirrors into the user cache.
        progress: show a download progress bar on stderr.
        classes: keep only the examples with these labels (which keep their values), before the
            validation carve and ``limit``; every label must occur in the training file, and
            at least one of them in the test file.
        image_size: image folders: resize to S x S (None: keep the size all images share).
        channels: image folders: 1 (greyscale) or 3 (RGB) (None: 1 when all are greyscale).
        memory_budget: image folders: GiB the split may take decoded as float32; a larger split
            is returned as a :class:`~vaelab.imagefolder.StreamSplit` read from disk (0: always).
            None: always in memory.
        workers: image folders: processes that decode the images (0: this one).

    Returns:
        the split, with ``x`` float32 on the CPU; a ``StreamSplit`` (no ``x``) when streamed.
    """
    name = os.fspath(name)
    _check_choice(split, SPLITS, "split")
    _check_choice(binarize, BINARIZE_MODES, "binarize mode")
    _check_choice(codes, CODE_MODES, "codes mode")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    if not isinstance(valid_fraction, (int, float)) or not 0.0 <= valid_fraction < 1.0:
        raise DataError(
            f"valid_fraction must be in [0, 1), got {valid_fraction!r}; use 0 for no "
            "validation split"
        )
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer, got {seed!r}")
    if classes is not None:
        classes = tuple(int(c) for c in classes)
        if not classes:
            raise DataError("classes must list at least one label, e.g. classes=[0, 1]")
    file = "test file" if split == "test" else "training file"
    check_data_dir(name, data_dir)

    if is_folder(name):
        if codes != "draw":
            raise DataError(f"codes={codes!r} (--codes) applies to a .npz of posterior codes; {name} is a folder of images: drop it")
        return _folder_split(name, split, file, binarize=binarize, limit=limit, valid_fraction=valid_fraction,
                             seed=seed, dequantize=dequantize, classes=classes, image_size=image_size,
                             channels=channels, memory_budget=memory_budget, workers=workers)  # fmt: skip
    for option, value in (("image_size", image_size), ("channels", channels)):
        if value is not None:  # refused rather than ignored
            raise DataError(
                f"{option} applies to folders of images, and {name} is not one; drop {option} "
                f"(--{option.replace('_', '-')})"
            )
    source = _source(name, data_dir, download, progress)
    part = source.test() if split == "test" else source.train()
    if classes is not None:
        keep = _class_rows(part.y, classes, name, file)
        part = _Part(part.x[keep], part.y[keep], part.scale, part.levels, None if part.sd is None else part.sd[keep])

    index: Any = slice(None)
    if split != "test":
        n = len(part.x)
        train_index, valid_index = _carve(n, valid_fraction, seed)
        index = valid_index if split == "valid" else train_index
        if split == "train" and len(index) == 0:
            raise DataError(
                f"{name}: valid_fraction={valid_fraction} leaves no training examples out of "
                f"{n}; use a smaller valid_fraction"
            )
    if limit is not None:
        index = slice(None, limit) if isinstance(index, slice) else index[:limit]

    x = torch.from_numpy(np.ascontiguousarray(part.x[index])).to(torch.float32)
    if part.scale != 1.0:
        x = x.div_(part.scale)
    y = None if part.y is None else torch.from_numpy(part.y[index].astype(np.int64))
    if part.sd is None and codes != "draw":
        raise DataError(
            f"codes={codes!r} (--codes) applies to a .npz of posterior codes with scale_train and "
            f"scale_test (vaelab encode writes them); {name} has none: drop it"
        )
    sd = None if part.sd is None or codes == "mean" else torch.from_numpy(np.ascontiguousarray(part.sd[index]))
    return Split(x, y, name, split, binarize, seed, part.levels, dequantize, sd=sd)


def _class_rows(y: np.ndarray | None, classes: tuple[int, ...], name: str, file: str) -> np.ndarray:
    """The rows (in file order) whose label is one of ``classes``. Every label must occur in the
    training file; the test file needs only one of them (a small image folder's held-out images
    may miss a class)."""
    if y is None:
        raise DataError(
            f"{name} has no labels, so there are no classes to keep; drop classes (classes=), or "
            "use a labelled dataset (class subfolders of images, an .npz with y_train/y_test or y)"
        )
    missing = [c for c in classes if not (y == c).any()]
    if missing and (file != "test file" or len(missing) == len(classes)):
        present = np.unique(y)
        shown = ",".join(map(str, present[:20])) + (",..." if len(present) > 20 else "")
        raise DataError(
            f"label {missing[0]} does not occur in the {file} of {name} (its labels: {shown}); "
            "fix the classes (classes=)"
        )
    return np.flatnonzero(np.isin(y, classes))


def _folder_split(name: str, split: str, file: str, *, binarize: str, limit: int | None, valid_fraction: float,
                  seed: int, dequantize: bool, classes: tuple[int, ...] | None, image_size: int | None,
                  channels: int | None, memory_budget: float | None, workers: int) -> Split | StreamSplit:  # fmt: skip
    """One split of an image folder: files chosen (classes, validation carve, limit) before any
    pixel is decoded; decoded into memory when it fits ``memory_budget``, else streamed."""
    from . import imagefolder

    if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1):
        raise DataError(f"image_size must be a positive number of pixels or None, got {image_size!r}")
    if channels not in (None, 1, 3):
        raise DataError(f"channels must be 1 (greyscale), 3 (RGB) or None, got {channels!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise DataError(f"workers must be 0 or a positive integer, got {workers!r}")
    root = os.path.abspath(os.path.expanduser(name))
    folder = imagefolder.scan(root, image_size, channels)
    files = folder.test if split == "test" else folder.train
    y = folder.test_y if split == "test" else folder.train_y
    index = np.arange(len(files))
    if classes is not None:
        index = _class_rows(y, classes, name, file)
    if split != "test":
        train_index, valid_index = _carve(len(index), valid_fraction, seed)
        if split == "train" and len(train_index) == 0:
            raise DataError(
                f"{name}: valid_fraction={valid_fraction} leaves no training examples out of "
                f"{len(index)}; use a smaller valid_fraction"
            )
        index = index[valid_index if split == "valid" else train_index]
    if limit is not None:
        index = index[:limit]
    chosen = [files[i] for i in index]
    labels = None if y is None else torch.from_numpy(y[index])
    shape = folder.event_shape
    decoded_bytes = len(chosen) * math.prod(shape) * 4  # float32, as Split holds it
    if memory_budget is not None and decoded_bytes > memory_budget * 2**30:
        return imagefolder.StreamSplit(chosen, labels, shape, name, split, binarize, seed, dequantize, workers)
    x = torch.from_numpy(imagefolder.decode_all(chosen, shape, workers)).to(torch.float32).div_(255.0)
    return Split(x, labels, name, split, binarize, seed, imagefolder.LEVELS, dequantize)


def load_dataset(
    name: str | os.PathLike[str], split: str = "train", binarize: str = "none", **kwargs: Any
) -> torch.Tensor:
    """The fixed view of a split: ``load_split(name, split, binarize=binarize, **kwargs).fixed()``.

    Args:
        name: a registered dataset or a ``.npy``/``.npz`` path.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        binarize: one of ``BINARIZE_MODES``.
        **kwargs: any other keyword of :func:`load_split`.

    Returns:
        float32 tensor ``[N, C, H, W]`` for images, ``[N, D]`` for vector data.
    """
    return load_split(name, split, binarize=binarize, **kwargs).fixed()


def _check_choice(value: object, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise DataError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def _shape_of(obj: object) -> str:
    shape = getattr(obj, "shape", None)
    return type(obj).__name__ if shape is None else str(list(shape))


def _carve(n: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and valid indices into a training file of n examples, each sorted."""
    n_valid = round(valid_fraction * n)
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    # Sorted so both splits keep file order (and limit means "the first N in the file").
    valid = permutation[:n_valid].sort().values.numpy()
    train = permutation[n_valid:].sort().values.numpy()
    return train, valid


def is_path(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` names a file or folder rather than a registered dataset: a ``.npy``/``.npz``
    name, a name with a path separator, or an existing path. Registered names win over a
    same-named file in the working directory."""
    name = os.fspath(name)
    if name in DATASETS:
        return False
    return (
        Path(name).suffix.lower() in (".npy", ".npz")
        or "/" in name
        or os.sep in name
        or Path(name).expanduser().exists()
    )


def is_folder(name: str | os.PathLike[str]) -> bool:
    """Whether ``name`` is a folder (of images), which ``load_split`` reads with
    ``vaelab.imagefolder``."""
    return is_path(name) and Path(os.fspath(name)).expanduser().is_dir()


def _source(
    name: str, data_dir: str | os.PathLike[str] | None, download: bool, progress: bool
) -> _Source:
    if is_path(name):
        return _array_source(Path(name).expanduser())
    return _loader(name)(data_dir=data_dir, download=download, progress=progress)


def _loader(name: str) -> Callable[..., _Source]:
    try:
        return DATASETS[name]
    except ConfigError as error:
        raise ConfigError(
            f"{error}, or a path to a .npy/.npz file or to a folder of images"
        ) from None


def uses_data_dir(name: str | os.PathLike[str]) -> bool:
    """Whether ``data_dir`` means something for this data: a registered dataset read from IDX
    files (``IDX_SOURCES``)."""
    name = os.fspath(name)
    return not is_path(name) and name in IDX_SOURCES


def check_data_dir(name: str | os.PathLike[str], data_dir: str | os.PathLike[str] | None) -> None:
    """Refuses ``data_dir`` for data that has no files to look for there (``digits``, the
    generated ``ring8`` and ``grid25``, a ``.npy``/``.npz`` path, an image folder), where it would
    be ignored: a folder given for nothing is a mistake worth a word, not a silent no-op. An
    unknown name is left to the loader's error, which lists the valid ones."""
    if data_dir is None or uses_data_dir(name):
        return
    name = os.fspath(name)
    if is_path(name):
        what = f"{name} is read from its own path"
    elif name in BUILT_IN:
        what = f"{name} is {BUILT_IN[name]}"
    else:
        return
    raise DataError(
        f"data_dir= is where the IDX files of {', '.join(sorted(IDX_SOURCES))} are looked for, and "
        f"{what}, so it would be ignored; drop data_dir="
    )


def describe_source(
    name: str | os.PathLike[str],
    data_dir: str | os.PathLike[str] | None = None,
    *,
    image_size: int | None = None,
    channels: int | None = None,
) -> str:
    """Where ``load_split(name, data_dir=data_dir)`` takes its data from, in a few words, by the
    same search the loader does (without downloading or reading any data):

    - ``"fashion-mnist from /usr/share/datasets/fashion-mnist"``, or ``"mnist, to be downloaded
      into ~/.cache/vaelab/mnist"`` when the files are nowhere yet;
    - ``"stacked-fashion-mnist, stacked from fashion-mnist in FOLDER"``;
    - ``"digits (scikit-learn's bundled copy)"``, ``"ring8 (generated: ...)"``;
    - ``"/abs/path/x.npz"``; ``"/abs/photos (image folder, 1234 images in 10 classes)"``.

    Args:
        name, data_dir: as for :func:`load_split`.
        image_size, channels: an image folder's, as for :func:`load_split` (its scan, cached,
            serves the load that follows).

    Raises:
        the errors the loader would raise for a missing file or folder, a bad ``data_dir``, an
        unknown name or (image folders) a bad layout.
    """
    name = os.fspath(name)
    check_data_dir(name, data_dir)
    if is_path(name):
        path = Path(os.path.abspath(os.path.expanduser(name)))  # as the loader spells it
        if is_folder(name):
            from . import imagefolder

            folder = imagefolder.scan(str(path), image_size, channels)
            count = len(folder.train) + len(folder.test)
            classes = f" in {len(folder.classes)} classes" if folder.classes else ""
            return f"{path} (image folder, {count} images{classes})"
        _check_array_path(path)
        return str(path)
    _loader(name)  # an unknown name: the loader's error
    source = IDX_SOURCES.get(name)
    if source is None:
        return f"{name} ({BUILT_IN[name]})"
    found, _ = _find_idx_files(source, data_dir)
    if found is None:
        where = f", to be downloaded into {_cache_dir(source)}"
    else:
        where = f" {'from' if source == name else 'in'} {found['train-images'].parent}"
    return f"{name}{where}" if source == name else f"{name}, stacked from {source}{where}"


# Registered datasets that have no files to find, and where their data comes from instead (every
# other registered dataset reads IDX files: IDX_SOURCES).
BUILT_IN: dict[str, str] = {"digits": "scikit-learn's bundled copy"}


@DATASETS.register("digits")
def _load_digits(**_: Any) -> _Source:
    """scikit-learn's 8x8 digits (1797 images, 17 grey levels, bundled: nothing to download).

    The training file is the first ``DIGITS_TRAIN_SIZE`` (1437) images, the test file the last 360.
    """
    from sklearn.datasets import (
        load_digits,  # imported here: sklearn takes ~1 s to import
    )

    bunch = load_digits()
    images = bunch.images.astype(np.uint8)[:, None]  # [1797, 1, 8, 8], values 0..16
    labels = bunch.target.astype(np.int64)
    cut = DIGITS_TRAIN_SIZE
    train = _Part(images[:cut], labels[:cut], 16.0, 17)
    test = _Part(images[cut:], labels[cut:], 16.0, 17)
    return _Source(lambda: train, lambda: test)


def _idx_loader(name: str) -> Callable[..., _Source]:
    def load(
        *, data_dir: str | os.PathLike[str] | None = None, download: bool = True,
        progress: bool = False, **_: Any,
    ) -> _Source:
        paths = resolve_idx_files(name, data_dir, download=download, progress=progress)
        return _Source(
            lambda: _read_idx_pair(paths["train-images"], paths["train-labels"]),
            lambda: _read_idx_pair(paths["t10k-images"], paths["t10k-labels"]),
        )

    load.__doc__ = f"{name}: 28x28 uint8 IDX files (60000 training, 10000 test images)."
    return load


for _name in ("fashion-mnist", "mnist"):
    DATASETS.register(_name)(_idx_loader(_name))


def _read_idx_pair(images_path: Path, labels_path: Path) -> _Part:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: expected uint8 images N x H x W, got {images.dtype} "
            f"{list(images.shape)}; {_FIX_CORRUPT}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{labels_path}: expected integer labels of shape [N], got {labels.dtype} "
            f"{list(labels.shape)}; {_FIX_CORRUPT}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
            f"labels; the files do not belong together: {_FIX_CORRUPT}"
        )
    return _Part(images[:, None], labels.astype(np.int64), 255.0, 256)


# --------------------------------------------------------------------------------------------
# Mode-collapse benchmarks (Srivastava et al. 2017, "VEEGAN")
#
# Mixtures of well separated Gaussians in the plane, and Fashion-MNIST images stacked three to an
# image: data whose modes are known, so that a model's samples can be checked for the modes they
# miss (vaelab.quality reads the centres and the standard deviation from MIXTURES).


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

# Registered datasets read from IDX files -> the IDX set (a key of MIRRORS) whose files they read;
# the datasets for which data_dir= means something.
IDX_SOURCES: dict[str, str] = {"fashion-mnist": "fashion-mnist", "mnist": "mnist",
                               "stacked-fashion-mnist": STACKED_SOURCE}  # fmt: skip


def _file_seed(name: str, file: str) -> int:
    # A stable hash, as in _derived_seed: the files are the same on every machine and run, and
    # the training and test files are independent draws.
    digest = hashlib.sha256(f"vaelab.data.synthetic:{name}:{file}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _mixture_part(name: str, file: str) -> _Part:
    centres, sd = MIXTURES[name]
    rng = np.random.default_rng(_file_seed(name, file))
    n = MIXTURE_SIZES[file]
    y = rng.integers(0, len(centres), n)  # the mode each point is drawn from, uniform
    x = centres[y] + sd * rng.standard_normal((n, 2))
    return _Part(x.astype(np.float32), y.astype(np.int64), 1.0, None)


def _mixture_loader(name: str) -> Callable[..., _Source]:
    def load(**_: Any) -> _Source:  # generated: no folder to search, nothing to download
        return _Source(lambda: _mixture_part(name, "train"), lambda: _mixture_part(name, "test"))

    centres, sd = MIXTURES[name]
    load.__doc__ = (
        f"{name}: {len(centres)} Gaussians of standard deviation {sd} in the plane, float32 points "
        f"[N, 2] labelled with their mode ({MIXTURE_SIZES['train']} training, "
        f"{MIXTURE_SIZES['test']} test points, seeded)."
    )
    return load


for _name in MIXTURES:
    DATASETS.register(_name)(_mixture_loader(_name))
    BUILT_IN[_name] = f"generated: {len(MIXTURES[_name][0])} Gaussians in the plane, seeded"


def _stacked_part(source: _Part, origin: str, n: int, seed: int) -> _Part:
    """n images whose three channels are images of ``source`` drawn uniformly with replacement;
    label 100 a + 10 b + c for channel labels a, b, c, so each of the 1000 triples is a mode."""
    labels = source.y
    if len(source.x) == 0 or labels is None:
        raise DataError(f"{origin}: holds no labelled images to stack; {_FIX_CORRUPT}")
    if int(labels.min()) < 0 or int(labels.max()) > 9:
        raise DataError(
            f"{origin}: labels range over [{int(labels.min())}, {int(labels.max())}], but stacking "
            f"needs the ten classes 0..9 of {STACKED_SOURCE}; {_FIX_CORRUPT}"
        )
    pick = np.random.default_rng(seed).integers(0, len(source.x), (n, 3))
    x = source.x[pick, 0]  # (n, 3, H, W): source.x is (N, 1, H, W)
    y = labels[pick] @ np.array([100, 10, 1], dtype=np.int64)
    return _Part(x, y, source.scale, source.levels)


@DATASETS.register("stacked-fashion-mnist")
def _load_stacked(
    *, data_dir: str | os.PathLike[str] | None = None, download: bool = True,
    progress: bool = False, **_: Any,
) -> _Source:
    """stacked-fashion-mnist: three Fashion-MNIST images as the channels of one 3x28x28 image
    (1000 modes; the stacked MNIST of Srivastava et al. 2017). The training file stacks images of
    Fashion-MNIST's training file, the test file images of its test file, each with a fixed seed;
    the IDX files are found (or downloaded) as for ``fashion-mnist``."""
    name = "stacked-fashion-mnist"
    paths = resolve_idx_files(STACKED_SOURCE, data_dir, download=download, progress=progress)

    def part(file: str, images: str, labels: str) -> _Part:
        source = _read_idx_pair(paths[images], paths[labels])
        return _stacked_part(source, str(paths[images]), STACKED_SIZES[file], _file_seed(name, file))

    return _Source(
        lambda: part("train", "train-images", "train-labels"),
        lambda: part("test", "t10k-images", "t10k-labels"),
    )


# --------------------------------------------------------------------------------------------
# IDX files

_IDX_TYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (LeCun's MNIST format), gzip-compressed or raw.

    The format: two zero bytes, a type code, the number of dimensions, the dimensions as
    big-endian uint32, then exactly ``prod(dims) * itemsize`` big-endian values. Compression is
    detected from the content, not the name. Everything is validated.

    Args:
        path: the file.

    Returns:
        a writable array in native byte order with the file's shape and type.

    Raises:
        DataError: the file is missing, unreadable, not IDX, truncated, too long, or a corrupt
            gzip stream; the message names the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"
            handle.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=handle) as stream:
                    raw = stream.read()  # reading to the end also checks the CRC and length
            else:
                raw = handle.read()
    except FileNotFoundError:
        raise DataNotFoundError(f"{path}: no such file; check the path") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise DataError(
            f"{path}: corrupt or truncated gzip stream ({error}); {_FIX_CORRUPT}"
        ) from None
    except OSError as error:
        raise DataError(
            f"cannot read {path}: {error.strerror or error}; check the path and its permissions"
        ) from None

    if len(raw) >= 2 and raw[:2] != b"\x00\x00":
        raise DataError(
            f"{path}: not an IDX file (it starts with {raw[:4].hex()}, not 0000); {_FIX_CORRUPT}"
        )
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes); {_FIX_CORRUPT}")
    dtype = _IDX_TYPES.get(raw[2])
    if dtype is None:
        raise DataError(
            f"{path}: unknown IDX type code 0x{raw[2]:02X} (expected one of "
            f"{', '.join(f'0x{code:02X}' for code in _IDX_TYPES)}); {_FIX_CORRUPT}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares no dimensions; {_FIX_CORRUPT}")
    if len(raw) < header:
        raise DataError(
            f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header}); "
            f"{_FIX_CORRUPT}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = math.prod(dims)
    expected = count * dtype.itemsize
    have = len(raw) - header
    if have != expected:
        problem = "truncated" if have < expected else "has extra bytes"
        raise DataError(
            f"{path}: IDX data {problem}: dimensions {list(dims)} need {expected} bytes but "
            f"{have} follow the header; {_FIX_CORRUPT}"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    # astype copies: the result is writable (torch.from_numpy warns otherwise) and native-endian.
    return data.astype(dtype.newbyteorder("="))


def resolve_idx_files(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    progress: bool = False,
) -> dict[str, Path]:
    """Find the four IDX files of a dataset, downloading them into the user cache if missing.

    With ``data_dir``, the files must be there: in ``data_dir`` itself or in ``data_dir/<name>``
    (``.gz`` or uncompressed). A ``data_dir`` that does not exist, or that holds no complete set,
    is a DataNotFoundError: searching elsewhere would silently train on another copy than the
    one asked for, and nothing is downloaded.

    Without it, the first folder holding all four files wins, in this order: ``$VAELAB_DATA/<name>``
    and ``$VAELAB_DATA``; the user cache ``$XDG_CACHE_HOME/vaelab/<name>`` (default
    ``~/.cache/vaelab/<name>``); then the system folders in ``SYSTEM_DIRS`` (e.g. Debian's
    ``dataset-fashion-mnist``). Local files are not checksummed (Debian recompressed its
    copies); downloads are checked against ``MD5``.

    Args:
        name: an IDX dataset, a key of ``MIRRORS`` (``"fashion-mnist"`` or ``"mnist"``).
        data_dir: the folder that holds the files (nothing else is searched).
        download: when the files are nowhere, fetch them from ``MIRRORS[name]``.
        progress: show a download progress bar on stderr.

    Returns:
        ``{"train-images", "train-labels", "t10k-images", "t10k-labels"}`` -> path.

    Raises:
        DataNotFoundError: ``data_dir`` does not exist or lacks the files, or (with
            ``download=False``) the files are nowhere.
    """
    found, looked = _find_idx_files(name, data_dir)
    if found is not None:
        return found
    cache = _cache_dir(name)
    if not download:
        raise DataNotFoundError(_missing_message(name, looked, cache, None))
    _download_missing(name, cache, looked, progress)
    found = _complete_dir(cache)
    if found is None:  # only if something deleted the files under our feet
        raise DataError(_missing_message(name, looked, cache, "files vanished after download"))
    return found


def _find_idx_files(
    name: str, data_dir: str | os.PathLike[str] | None
) -> tuple[dict[str, Path] | None, list[Path]]:
    """The search of ``resolve_idx_files`` without downloading: the files found (None when they
    are nowhere) and the folders looked in. The loaders and ``describe_source`` both use it, so
    what is described is what is loaded."""
    if name not in MIRRORS:
        raise DataError(
            f"{name!r} is not an IDX dataset; choose one of: {', '.join(sorted(MIRRORS))}"
        )
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return _from_data_dir(name, root), [root, root / name]
    looked = _candidate_dirs(name)
    for folder in looked:
        found = _complete_dir(folder)
        if found is not None:
            return found, looked
    return None, looked


def _from_data_dir(name: str, root: Path) -> dict[str, Path]:
    """The files in the folder the caller named, or DataNotFoundError saying what is missing."""
    elsewhere = (
        f"or drop data_dir= to look in $VAELAB_DATA, the user cache ({_cache_dir(name)}) and the "
        f"system folders (downloading {name} when it is nowhere)"
    )
    if not root.exists():
        raise DataNotFoundError(
            f"data_dir={root} does not exist; check the path (it should be the folder that holds "
            f"the {name} IDX files), {elsewhere}"
        )
    if not root.is_dir():
        raise DataNotFoundError(
            f"data_dir={root} is a file, not a folder; give the folder that holds the {name} IDX "
            f"files, {elsewhere}"
        )
    folders = [root, root / name]
    for folder in folders:
        found = _complete_dir(folder)
        if found is not None:
            return found
    wanted = ", ".join(f"{base}[.gz]" for base in IDX_FILES.values())
    partial = []
    for folder in folders:
        have = [base for base in IDX_FILES.values() if _idx_file(folder, base) is not None]
        if have:
            lacks = [base for base in IDX_FILES.values() if base not in have]
            partial.append(f"{folder} lacks {', '.join(lacks)}")
    detail = f" ({'; '.join(partial)})" if partial else ""
    raise DataNotFoundError(
        _one_line(
            f"data_dir={root} does not hold the {name} files: looked for {wanted} in {root} and "
            f"{root / name}{detail}; put all four in one of them, {elsewhere}"
        )
    )


def _cache_dir(name: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "")
    # The XDG spec says to ignore a relative XDG_CACHE_HOME.
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "vaelab" / name


def _candidate_dirs(name: str) -> list[Path]:
    folders: list[Path] = []
    env = os.environ.get("VAELAB_DATA", "")
    if env:
        root = Path(env).expanduser()
        folders += [root / name, root]
    folders.append(_cache_dir(name))
    folders += [Path(folder) for folder in SYSTEM_DIRS.get(name, [])]
    return list(dict.fromkeys(folders))  # drop repeats, keep order


def _idx_file(folder: Path, base: str) -> Path | None:
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    return None


def _complete_dir(folder: Path) -> dict[str, Path] | None:
    found: dict[str, Path] = {}
    for key, base in IDX_FILES.items():
        path = _idx_file(folder, base)
        if path is None:
            return None
        found[key] = path
    return found


def _missing_message(name: str, looked: list[Path], cache: Path, failure: str | None) -> str:
    files = ", ".join(f"{base}.gz" for base in IDX_FILES.values())
    what = f"the download failed ({failure})" if failure else "downloading is turned off"
    fixes = []
    if name in APT_PACKAGES:
        fixes.append(f"`apt-get install {APT_PACKAGES[name]}`")
    fixes.append(f"put the four files ({files}) in {cache}")
    fixes.append("pass data_dir= / set VAELAB_DATA to a folder that holds them")
    if failure is None:
        fixes.append("allow downloading")
    where = ", ".join(str(folder) for folder in looked)
    message = f"{name} not found (looked in {where}) and {what}; to fix: {', or '.join(fixes)}"
    return _one_line(message)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _download_missing(name: str, cache: Path, looked: list[Path], progress: bool) -> None:
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DataError(
            _missing_message(name, looked, cache, f"cannot create {cache}: {error.strerror}")
        ) from None
    for base in IDX_FILES.values():
        # Files in the cache got there only after a checksum match, so keep what is there.
        if (cache / f"{base}.gz").is_file() or (cache / base).is_file():
            continue
        _fetch(name, f"{base}.gz", cache, looked, progress)


def _fetch(name: str, filename: str, cache: Path, looked: list[Path], progress: bool) -> None:
    expected = MD5[name][filename]
    failures: list[str] = []
    mismatches: list[str] = []
    for mirror in MIRRORS[name]:
        url = mirror if mirror.endswith("/") else mirror + "/"
        url += filename
        try:
            digest = _stream_to_file(url, cache / filename, expected, progress)
        except (OSError, http.client.HTTPException, ValueError) as error:
            failures.append(f"{url}: {_reason(error)}")
            continue
        if digest == expected:
            return
        mismatches.append(f"{digest} from {url}")
    if mismatches:
        raise DataError(
            _one_line(
                f"download of {filename} for {name} failed its checksum: expected MD5 {expected}, "
                f"got {'; '.join(mismatches)}; the mirror may be serving a different file: try "
                f"again later, or put the four files in {cache} yourself"
            )
        )
    tried = len(failures)
    reason = (
        f"{tried} mirror{'s' if tried != 1 else ''} tried, last error {failures[-1]}"
        if failures
        else "no mirrors are configured"
    )
    raise DataError(_missing_message(name, looked, cache, reason))


def _reason(error: BaseException) -> str:
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        return str(error.reason)
    return str(error) or type(error).__name__


def _stream_to_file(url: str, final: Path, expected: str, progress: bool) -> str:
    """Download url into final if its MD5 is expected; return the MD5 of what came."""
    request = urllib.request.Request(url, headers={"User-Agent": "vaelab"})
    fd, temporary = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    keep = False
    bar = None
    try:
        with os.fdopen(fd, "wb") as out:
            with urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT) as response:
                length = response.headers.get("Content-Length")
                if progress:
                    from tqdm import tqdm

                    total = int(length) if length and length.isdigit() else None
                    bar = tqdm(
                        total=total, unit="B", unit_scale=True, desc=final.name, file=sys.stderr
                    )
                md5 = hashlib.md5(usedforsecurity=False)
                while chunk := response.read(1 << 16):
                    out.write(chunk)
                    md5.update(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        digest = md5.hexdigest()
        if digest == expected:
            os.replace(temporary, final)  # atomic: the final name only ever holds a good file
            keep = True
        return digest
    finally:
        if bar is not None:
            bar.close()
        if not keep:
            try:
                os.unlink(temporary)
            except FileNotFoundError:
                pass


# --------------------------------------------------------------------------------------------
# .npy / .npz arrays


def _check_array_path(path: Path) -> None:
    if not path.exists():
        raise DataNotFoundError(
            f"{path}: no such file or folder; check the path, or use a dataset name "
            f"({', '.join(DATASETS.names())})"
        )


def _array_source(path: Path) -> _Source:
    _check_array_path(path)
    if path.is_dir():  # load_split reads folders as images; only a direct call gets here
        raise DataError(f"{path} is a folder; pass a .npy/.npz file or a dataset name")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:  # npz members are read lazily, so they can fail in here too
                parts = _parts_from_npz(path, loaded)
        else:
            parts = _split_single(path, loaded, None)
    except DataError:
        raise  # our own message about the file's contents (a DataError is a ValueError too)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise _unreadable(path, error) from None
    train, test = parts
    return _Source(lambda: train, lambda: test)


def _unreadable(path: Path, error: BaseException) -> DataError:
    return DataError(
        _one_line(
            f"{path}: cannot read it as a .npy/.npz array ({error}); save plain numeric arrays "
            "with numpy.save or numpy.savez (object arrays are never unpickled)"
        )
    )


def _parts_from_npz(path: Path, npz: Any) -> tuple[_Part, _Part]:
    keys = set(npz.files)
    for train_key, test_key in (("x_train", "x_test"), ("train", "test")):
        if train_key in keys or test_key in keys:
            if not (train_key in keys and test_key in keys):
                raise DataError(
                    f"{path}: has {train_key if train_key in keys else test_key} but not "
                    f"{test_key if train_key in keys else train_key}; store both, or a single "
                    "array named x"
                )
            train = _part(path, train_key, npz[train_key], _labels(path, npz, "y_train"))
            test = _part(path, test_key, npz[test_key], _labels(path, npz, "y_test"))
            if train_key == "x_train" and ("scale_train" in keys or "scale_test" in keys):
                train, test = (_with_scales(path, part, key, npz) for part, key in ((train, "scale_train"), (test, "scale_test")))
            if train.x.shape[1:] != test.x.shape[1:] or train.x.dtype != test.x.dtype:
                raise DataError(
                    f"{path}: {train_key} ({train.x.dtype} {list(train.x.shape[1:])} per example) "
                    f"and {test_key} ({test.x.dtype} {list(test.x.shape[1:])}) differ; save them "
                    "with the same dtype and example shape"
                )
            return train, test
    if "x" in keys:
        return _split_single(path, npz["x"], _labels(path, npz, "y"))
    if len(keys) == 1:
        return _split_single(path, npz[next(iter(keys))], None)
    raise DataError(
        f"{path}: holds arrays {', '.join(sorted(keys))}; expected x_train/x_test (labels "
        "y_train/y_test optional), train/test, one array named x (labels y optional), or a "
        "single array"
    )


def _with_scales(path: Path, part: _Part, key: str, npz: Any) -> _Part:
    """Posterior codes: the part's x are means, ``npz[key]`` their standard deviations."""
    if key not in npz.files:
        other = "scale_test" if key == "scale_train" else "scale_train"
        raise DataError(f"{path}: has {other} but not {key}; store the posterior scales of both splits, or neither")
    sd = npz[key]
    if sd.shape != part.x.shape or not np.issubdtype(sd.dtype, np.floating) or part.levels is not None:
        raise DataError(
            f"{path}: {key} ({sd.dtype} {list(sd.shape)}) must be floats shaped like the float codes it "
            f"scales ({part.x.dtype} {list(part.x.shape)}); store one standard deviation per code value"
        )
    if not (np.isfinite(sd).all() and (sd >= 0).all()):
        raise DataError(f"{path}: {key} holds negative or non-finite standard deviations; store sd >= 0")
    return _Part(part.x, part.y, part.scale, part.levels, sd.astype(np.float32))


def _labels(path: Path, npz: Any, key: str) -> np.ndarray | None:
    if key not in npz.files:
        return None
    labels = npz[key]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: labels {key} must be a 1-D integer array, got {labels.dtype} "
            f"{list(labels.shape)}; save class indices as integers"
        )
    return labels.astype(np.int64)


def _part(path: Path, key: str, array: np.ndarray, labels: np.ndarray | None) -> _Part:
    """Check one array and bring it to [N, D] or [N, C, H, W] with its scale and levels."""
    if array.ndim == 3:
        array = array[:, None]  # N x H x W: one grey channel
    elif array.ndim == 4 and _channels_last(array.shape):
        n, h, w, c = array.shape
        _note_once(
            (str(path), key),
            f"{path}: {key} is N x H x W x C = {n} x {h} x {w} x {c} (channels last, as image tools "
            f"save them); read as N x C x H x W = {n} x {c} x {h} x {w}",
        )
        array = array.transpose(0, 3, 1, 2)
    elif array.ndim not in (2, 4):
        raise DataError(
            f"{path}: {key} has shape {list(array.shape)}; expected N x D, N x H x W or "
            "N x C x H x W: reshape it before saving"
        )
    if len(array) == 0:
        raise DataError(f"{path}: {key} holds no examples; save at least one row")
    if labels is not None and len(labels) != len(array):
        raise DataError(
            f"{path}: {key} has {len(array)} examples but its labels have {len(labels)}; save "
            "one label per example"
        )
    if array.dtype == np.uint8:
        return _Part(array, labels, 255.0, 256)
    if array.dtype == np.bool_:
        return _Part(array, labels, 1.0, 2)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise DataError(
                f"{path}: {key} has NaN or infinite values (after conversion to float32); "
                "clean or clip the data before saving"
            )
        return _Part(array, labels, 1.0, None)
    raise DataError(
        f"{path}: {key} has dtype {array.dtype}; use uint8 grey levels (0..255), bool, or "
        "floats (e.g. scaled to [0, 1])"
    )


def _channels_last(shape: tuple[int, ...]) -> bool:
    """N x H x W x C with C in 1, 3, 4 and H, W larger than C. A channels-first N x C x H x W
    array has a last axis W that is an image side, so it never matches (unless W <= 4 and the
    other sides are larger: such an array is ambiguous, and read as channels last)."""
    _, h, w, c = shape
    return c in (1, 3, 4) and h > c and w > c


_NOTED: set[tuple[str, str]] = set()  # notes already logged in this process


def _note_once(key: tuple[str, str], message: str) -> None:
    """Logs a note on the "vaelab" logger (the CLI shows it as one line) once per process, so
    loading the training, validation and test splits of one file says it once."""
    if key not in _NOTED:
        _NOTED.add(key)
        logging.getLogger("vaelab").warning(message)


def _split_single(path: Path, array: np.ndarray, labels: np.ndarray | None) -> tuple[_Part, _Part]:
    """The last 10% of rows (at least one) are the test file, the rest the training file."""
    whole = _part(path, "the array", array, labels)
    n = len(whole.x)
    if n < 2:
        raise DataError(
            f"{path}: holds {n} example; a training and a test file need at least 2 rows"
        )
    cut = n - max(1, round(0.1 * n))
    y = whole.y
    train = _Part(whole.x[:cut], None if y is None else y[:cut], whole.scale, whole.levels)
    test = _Part(whole.x[cut:], None if y is None else y[cut:], whole.scale, whole.levels)
    return train, test
