"""What the modules of ``vaelab.data`` share: the binarization, split and code modes and their
check, the stable seeds of the fixed draws and generated files, a dataset's training and test
files before splitting (``Part``, ``Source``) and the registry of named datasets (``DATASETS``)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import DataError
from ..core.registry import Registry

__all__ = ["BINARIZE_MODES", "CODE_MODES", "DATASETS", "FIX_CORRUPT", "SPLITS", "Part", "Source",
           "check_choice", "derived_seed", "file_seed", "one_line"]  # fmt: skip

BINARIZE_MODES = ("none", "dynamic", "threshold", "static")
CODE_MODES = ("draw", "mean")  # posterior codes with scales: fresh Gaussian draws, or the means alone
SPLITS = ("train", "valid", "test")

FIX_CORRUPT = "delete it and download it again (or reinstall the package that provided it)"


def check_choice(value: object, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise DataError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def derived_seed(seed: int, split: str) -> int:
    # A stable hash (not hash(), which is salted per process) so the fixed draws of the splits
    # are independent of each other yet identical across runs and machines.
    digest = hashlib.sha256(f"vaelab.data.fixed:{seed}:{split}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def file_seed(name: str, file: str) -> int:
    # A stable hash, as in derived_seed: the files are the same on every machine and run, and
    # the training and test files are independent draws.
    digest = hashlib.sha256(f"vaelab.data.synthetic:{name}:{file}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Part:
    """One file of a dataset (its training or test file) before splitting."""

    x: np.ndarray  # [N, C, H, W] or [N, D], stored dtype (uint8, bool or float32)
    y: np.ndarray | None  # int64 [N]
    scale: float  # x / scale is in [0, 1] for grey levels; 1 for floats and bools
    levels: int | None
    sd: np.ndarray | None = None  # posterior codes: standard deviations shaped like x (x the means)


@dataclass(frozen=True)
class Source:
    """What a dataset loader returns; the files are read on demand so ``test`` skips ``train``."""

    train: Callable[[], Part]
    test: Callable[[], Part]


# A loader is called as loader(data_dir=..., download=..., progress=...) -> Source.
DATASETS: Registry[Callable[..., Source]] = Registry("dataset")
