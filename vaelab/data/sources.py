"""Named datasets: the registered loaders (``digits``, the IDX sets, the mode-collapse
benchmarks), whether a name is a path or a folder, and where a dataset's data comes from
(``describe_source``, ``check_data_dir``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import ConfigError, DataError
from .arrays import array_source, check_array_path
from .common import DATASETS, Part, Source, file_seed
from .download import cache_dir, find_idx_files, resolve_idx_files
from .idx import read_idx_pair
from .mixtures import (
    MIXTURES,
    STACKED_SIZES,
    STACKED_SOURCE,
    mixture_loader,
    stacked_part,
)

__all__ = ["BUILT_IN", "DIGITS_TRAIN_SIZE", "IDX_SOURCES", "check_data_dir", "describe_source",
           "is_folder", "is_path", "open_source", "uses_data_dir"]  # fmt: skip

# sklearn's digits have no official split; the last 360 images (20%) are our test file.
DIGITS_TRAIN_SIZE = 1437

# Registered datasets read from IDX files -> the IDX set (a key of MIRRORS) whose files they read;
# the datasets for which data_dir= means something.
IDX_SOURCES: dict[str, str] = {"fashion-mnist": "fashion-mnist", "mnist": "mnist",
                               "stacked-fashion-mnist": STACKED_SOURCE}  # fmt: skip


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


def open_source(
    name: str, data_dir: str | os.PathLike[str] | None, download: bool, progress: bool
) -> Source:
    if is_path(name):
        return array_source(Path(name).expanduser())
    return _loader(name)(data_dir=data_dir, download=download, progress=progress)


def _loader(name: str) -> Callable[..., Source]:
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
        check_array_path(path)
        return str(path)
    _loader(name)  # an unknown name: the loader's error
    source = IDX_SOURCES.get(name)
    if source is None:
        return f"{name} ({BUILT_IN[name]})"
    found, _ = find_idx_files(source, data_dir)
    if found is None:
        where = f", to be downloaded into {cache_dir(source)}"
    else:
        where = f" {'from' if source == name else 'in'} {found['train-images'].parent}"
    return f"{name}{where}" if source == name else f"{name}, stacked from {source}{where}"


# Registered datasets that have no files to find, and where their data comes from instead (every
# other registered dataset reads IDX files: IDX_SOURCES).
BUILT_IN: dict[str, str] = {"digits": "scikit-learn's bundled copy"}


@DATASETS.register("digits")
def _load_digits(**_: Any) -> Source:
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
    train = Part(images[:cut], labels[:cut], 16.0, 17)
    test = Part(images[cut:], labels[cut:], 16.0, 17)
    return Source(lambda: train, lambda: test)


def _idx_loader(name: str) -> Callable[..., Source]:
    def load(
        *, data_dir: str | os.PathLike[str] | None = None, download: bool = True,
        progress: bool = False, **_: Any,
    ) -> Source:
        paths = resolve_idx_files(name, data_dir, download=download, progress=progress)
        return Source(
            lambda: read_idx_pair(paths["train-images"], paths["train-labels"]),
            lambda: read_idx_pair(paths["t10k-images"], paths["t10k-labels"]),
        )

    load.__doc__ = f"{name}: 28x28 uint8 IDX files (60000 training, 10000 test images)."
    return load


for _name in ("fashion-mnist", "mnist"):
    DATASETS.register(_name)(_idx_loader(_name))


for _name in MIXTURES:
    DATASETS.register(_name)(mixture_loader(_name))
    BUILT_IN[_name] = f"generated: {len(MIXTURES[_name][0])} Gaussians in the plane, seeded"


@DATASETS.register("stacked-fashion-mnist")
def _load_stacked(
    *, data_dir: str | os.PathLike[str] | None = None, download: bool = True,
    progress: bool = False, **_: Any,
) -> Source:
    """stacked-fashion-mnist: three Fashion-MNIST images as the channels of one 3x28x28 image
    (1000 modes; the stacked MNIST of Srivastava et al. 2017). The training file stacks images of
    Fashion-MNIST's training file, the test file images of its test file, each with a fixed seed;
    the IDX files are found (or downloaded) as for ``fashion-mnist``."""
    name = "stacked-fashion-mnist"
    paths = resolve_idx_files(STACKED_SOURCE, data_dir, download=download, progress=progress)

    def part(file: str, images: str, labels: str) -> Part:
        source = read_idx_pair(paths[images], paths[labels])
        return stacked_part(source, str(paths[images]), STACKED_SIZES[file], file_seed(name, file))

    return Source(
        lambda: part("train", "train-images", "train-labels"),
        lambda: part("test", "t10k-images", "t10k-labels"),
    )
