"""Loading one split of a dataset by name: ``load_split`` and ``load_dataset``.

A dataset is named either by a registered short name (``"digits"``, ``"fashion-mnist"``,
``"mnist"``; the mode-collapse benchmarks ``"ring8"``, ``"grid25"`` and ``"stacked-fashion-mnist"``),
by a path to a ``.npy``/``.npz`` file, or by a folder of images (``vaelab.imagefolder``). Every
dataset has a *training file* and a *test file*; the validation split is carved from the training
file with a seed, so ``train`` and ``valid`` are disjoint and together make up the training file,
each in file order.

The validation carve, ``classes`` and ``limit`` apply to every kind of data; an image folder is
decoded into memory or, too large for the memory budget, streamed (``vaelab.imagefolder``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..core.errors import DataError
from .common import BINARIZE_MODES, CODE_MODES, SPLITS, Part, check_choice
from .sources import check_data_dir, is_folder, open_source
from .splits import Split

if TYPE_CHECKING:
    from .imagefolder import StreamSplit

__all__ = ["load_dataset", "load_split"]


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
    check_choice(split, SPLITS, "split")
    check_choice(binarize, BINARIZE_MODES, "binarize mode")
    check_choice(codes, CODE_MODES, "codes mode")
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
    source = open_source(name, data_dir, download, progress)
    part = source.test() if split == "test" else source.train()
    if classes is not None:
        keep = _class_rows(part.y, classes, name, file)
        part = Part(part.x[keep], part.y[keep], part.scale, part.levels, None if part.sd is None else part.sd[keep])

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


def _carve(n: int, valid_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Train and valid indices into a training file of n examples, each sorted."""
    n_valid = round(valid_fraction * n)
    permutation = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    # Sorted so both splits keep file order (and limit means "the first N in the file").
    valid = permutation[:n_valid].sort().values.numpy()
    train = permutation[n_valid:].sort().values.numpy()
    return train, valid
