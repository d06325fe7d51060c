"""The IDX reader (LeCun's MNIST format) and the reading of an images/labels pair of IDX files."""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DataError, DataNotFoundError
from .common import FIX_CORRUPT, Part

__all__ = ["read_idx", "read_idx_pair"]

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
            f"{path}: corrupt or truncated gzip stream ({error}); {FIX_CORRUPT}"
        ) from None
    except OSError as error:
        raise DataError(
            f"cannot read {path}: {error.strerror or error}; check the path and its permissions"
        ) from None

    if len(raw) >= 2 and raw[:2] != b"\x00\x00":
        raise DataError(
            f"{path}: not an IDX file (it starts with {raw[:4].hex()}, not 0000); {FIX_CORRUPT}"
        )
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes); {FIX_CORRUPT}")
    dtype = _IDX_TYPES.get(raw[2])
    if dtype is None:
        raise DataError(
            f"{path}: unknown IDX type code 0x{raw[2]:02X} (expected one of "
            f"{', '.join(f'0x{code:02X}' for code in _IDX_TYPES)}); {FIX_CORRUPT}"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares no dimensions; {FIX_CORRUPT}")
    if len(raw) < header:
        raise DataError(
            f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions need {header}); "
            f"{FIX_CORRUPT}"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    count = math.prod(dims)
    expected = count * dtype.itemsize
    have = len(raw) - header
    if have != expected:
        problem = "truncated" if have < expected else "has extra bytes"
        raise DataError(
            f"{path}: IDX data {problem}: dimensions {list(dims)} need {expected} bytes but "
            f"{have} follow the header; {FIX_CORRUPT}"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims)
    # astype copies: the result is writable (torch.from_numpy warns otherwise) and native-endian.
    return data.astype(dtype.newbyteorder("="))


def read_idx_pair(images_path: Path, labels_path: Path) -> Part:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{images_path}: expected uint8 images N x H x W, got {images.dtype} "
            f"{list(images.shape)}; {FIX_CORRUPT}"
        )
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{labels_path}: expected integer labels of shape [N], got {labels.dtype} "
            f"{list(labels.shape)}; {FIX_CORRUPT}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
            f"labels; the files do not belong together: {FIX_CORRUPT}"
        )
    return Part(images[:, None], labels.astype(np.int64), 255.0, 256)
