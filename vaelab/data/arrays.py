"""Datasets from user arrays: ``.npy`` and ``.npz`` files (posterior codes with their scales
included), read into a training and a test file."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DataError, DataNotFoundError
from .common import DATASETS, Part, Source, one_line

__all__ = ["array_source", "check_array_path"]


def check_array_path(path: Path) -> None:
    if not path.exists():
        raise DataNotFoundError(
            f"{path}: no such file or folder; check the path, or use a dataset name "
            f"({', '.join(DATASETS.names())})"
        )


def array_source(path: Path) -> Source:
    check_array_path(path)
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
    return Source(lambda: train, lambda: test)


def _unreadable(path: Path, error: BaseException) -> DataError:
    return DataError(
        one_line(
            f"{path}: cannot read it as a .npy/.npz array ({error}); save plain numeric arrays "
            "with numpy.save or numpy.savez (object arrays are never unpickled)"
        )
    )


def _parts_from_npz(path: Path, npz: Any) -> tuple[Part, Part]:
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


def _with_scales(path: Path, part: Part, key: str, npz: Any) -> Part:
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
    return Part(part.x, part.y, part.scale, part.levels, sd.astype(np.float32))


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


def _part(path: Path, key: str, array: np.ndarray, labels: np.ndarray | None) -> Part:
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
        return Part(array, labels, 255.0, 256)
    if array.dtype == np.bool_:
        return Part(array, labels, 1.0, 2)
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32, copy=False)
        if not np.isfinite(array).all():
            raise DataError(
                f"{path}: {key} has NaN or infinite values (after conversion to float32); "
                "clean or clip the data before saving"
            )
        return Part(array, labels, 1.0, None)
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


def _split_single(path: Path, array: np.ndarray, labels: np.ndarray | None) -> tuple[Part, Part]:
    """The last 10% of rows (at least one) are the test file, the rest the training file."""
    whole = _part(path, "the array", array, labels)
    n = len(whole.x)
    if n < 2:
        raise DataError(
            f"{path}: holds {n} example; a training and a test file need at least 2 rows"
        )
    cut = n - max(1, round(0.1 * n))
    y = whole.y
    train = Part(whole.x[:cut], None if y is None else y[:cut], whole.scale, whole.levels)
    test = Part(whole.x[cut:], None if y is None else y[cut:], whole.scale, whole.levels)
    return train, test
