"""Folders of PNG/JPEG images as datasets: scanning, decoding, and streaming from disk.

Layout (hidden entries, names starting with ".", and files that are not ``.png``/``.jpg``/
``.jpeg`` are ignored, e.g. a README.txt):

- ``PATH/CLASS/...``: one subfolder per class, as torchvision's ``ImageFolder`` reads it: the
  sorted folder names get labels 0..C-1, and every image below a class folder is an example.
- ``PATH/*.png``: images directly in the folder, unlabelled.
- ``PATH/train/`` and ``PATH/test/``: the training and test files, each laid out as above (with
  the same class folders, labels from the sorted union of their names). Without them, a fixed
  10% of the images (a permutation with a constant seed, the same for every run) is the test
  file; the validation split is carved from the training file with ``valid_fraction`` and the
  run's seed, as for every dataset.

Pixels are 8-bit grey levels scaled to [0, 1] (``levels`` 256; 16-bit greyscale PNGs are scaled
to 8 bits first), like uint8 arrays and the IDX sets, so every binarization mode and
dequantization applies. A split is decoded into memory when its float32 tensor fits the memory
budget; otherwise :class:`StreamSplit` reads it batch by batch through a
``torch.utils.data.DataLoader`` with worker processes. A file that cannot be read is an error
naming it; nothing is skipped silently.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.errors import DataError
from .common import BINARIZE_MODES, SPLITS, check_choice, derived_seed

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
TEST_FRACTION = 0.1  # of a folder without train/ and test/ subfolders
# Pillow modes read as greyscale when choosing the default number of channels
GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
# 16-bit greyscale PNGs open in these modes; they are scaled to 8 bits (1 / 257)
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
DECODE_CHUNK = 256  # images per DataLoader item when decoding a split into memory


@dataclass(frozen=True)
class Folder:
    """A scanned image folder: its training and test files as sorted paths and labels."""

    root: Path
    train: tuple[Path, ...]
    test: tuple[Path, ...]
    train_y: np.ndarray | None  # int64, None when unlabelled
    test_y: np.ndarray | None
    classes: tuple[str, ...] | None  # class folder names; label i is classes[i]
    channels: int  # 1 or 3
    height: int  # of the images served
    width: int

    @property
    def event_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)


def _visible(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as error:
        raise DataError(f"cannot list {folder}: {error.strerror or error}; check its permissions") from None


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def _images_below(folder: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if not name.startswith(".") and _is_image(path):
                found.append(path)
    return found


def _scan_one(folder: Path) -> tuple[list[Path], list[str] | None]:
    """Images of one file (the whole folder, or train/ or test/) and their class names."""
    entries = _visible(folder)
    images = [p for p in entries if _is_image(p)]
    subfolders = [p for p in entries if p.is_dir()]
    if images and subfolders:
        raise DataError(
            f"{folder} holds both images ({images[0].name}, ...) and subfolders ({subfolders[0].name}, ...); "
            "put every image in a class subfolder (labelled), or all of them directly in the folder (unlabelled)"
        )
    if subfolders:
        paths: list[Path] = []
        names: list[str] = []
        for sub in subfolders:
            found = _images_below(sub)
            if not found:
                raise DataError(
                    f"class folder {sub} holds no PNG/JPEG images; add images or remove the folder"
                )
            paths += found
            names += [sub.name] * len(found)
        return paths, names
    if not images:
        raise DataError(f"{folder} holds no PNG/JPEG images (.png, .jpg, .jpeg); check the path")
    return images, None


TEST_SEED = int.from_bytes(hashlib.sha256(b"vaelab.imagefolder.test").digest()[:8], "little")


def _held_out(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training and test files in a folder of n images, each in file order. The
    seed is a constant, so every run (whatever its --seed) tests on the same images."""
    n_test = max(1, round(TEST_FRACTION * n))
    permutation = np.random.default_rng(TEST_SEED).permutation(n)
    return np.sort(permutation[n_test:]), np.sort(permutation[:n_test])


def _probe(path: Path) -> tuple[str, tuple[int, int]]:
    """The mode and (width, height) of an image, from its header."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode, image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise _unreadable(path, error) from None


def _unreadable(path: Path, error: BaseException) -> DataError:
    reason = " ".join(str(error).split()) or type(error).__name__
    return DataError(
        f"{path}: cannot read it as a PNG/JPEG image ({reason}); replace or delete the file"
    )


def scan(root: str, image_size: int | None, channels: int | None) -> Folder:
    """Scans an image folder and reads every image's header (not its pixels).

    The result is cached, so the training, validation and test splits of a run scan once; an
    image or class folder added or removed since (which changes the modification time of the
    folder holding it, down to the class folders) is seen by the next scan.

    Args:
        root: the folder.
        image_size: resize to S x S; None keeps the images' size (H x W), which all must share.
        channels: 1 or 3; None: 1 when every image is greyscale, else 3.
    """
    return _scan(root, image_size, channels, _signature(Path(root)))


def _signature(folder: Path) -> tuple[tuple[str, int], ...]:
    """Modification times of the folder, its subfolders and theirs (train/CLASS/)."""
    stamps = []
    for level in range(3):
        pattern = "/".join(["*"] * level) if level else "."
        for path in sorted(folder.glob(pattern)) if level else [folder]:
            try:
                if path.is_dir():
                    stamps.append((str(path), path.stat().st_mtime_ns))
            except OSError:
                pass
    return tuple(stamps)


@functools.lru_cache(maxsize=8)
def _scan(root: str, image_size: int | None, channels: int | None, signature: tuple) -> Folder:
    folder = Path(root)
    entries = _visible(folder)
    names = {p.name for p in entries if p.is_dir()}
    if {"train", "test"} <= names:
        others = [p.name for p in entries if p.name not in ("train", "test") and (p.is_dir() or _is_image(p))]
        if others:
            raise DataError(
                f"{folder} has train/ and test/ subfolders and also {', '.join(others[:3])}; move "
                "everything into train/ or test/ (the validation split is carved from train/)"
            )
        train, train_names = _scan_one(folder / "train")
        test, test_names = _scan_one(folder / "test")
        if (train_names is None) != (test_names is None):
            labelled = "train" if train_names is not None else "test"
            raise DataError(
                f"{folder}: {labelled}/ has class subfolders but the other does not; lay both out "
                "the same way"
            )
    else:
        if "train" in names or "test" in names:
            have, lack = ("train", "test") if "train" in names else ("test", "train")
            # a lone train/ or test/ is almost certainly a split layout missing half, not a class
            raise DataError(
                f"{folder} has a {have}/ subfolder but no {lack}/; add {lack}/, or rename {have}/ if "
                "it is a class"
            )
        paths, names_all = _scan_one(folder)
        if len(paths) < 2:
            raise DataError(
                f"{folder} holds {len(paths)} image; a training and a test file need at least 2"
            )
        train_index, test_index = _held_out(len(paths))
        train = [paths[i] for i in train_index]
        test = [paths[i] for i in test_index]
        train_names = None if names_all is None else [names_all[i] for i in train_index]
        test_names = None if names_all is None else [names_all[i] for i in test_index]
    classes = None
    train_y = test_y = None
    if train_names is not None and test_names is not None:
        classes = tuple(sorted(set(train_names) | set(test_names)))
        label = {name: i for i, name in enumerate(classes)}
        train_y = np.array([label[n] for n in train_names], dtype=np.int64)
        test_y = np.array([label[n] for n in test_names], dtype=np.int64)

    modes: set[str] = set()
    sizes: dict[tuple[int, int], Path] = {}
    for path in (*train, *test):
        mode, size = _probe(path)
        modes.add(mode)
        sizes.setdefault(size, path)
    if image_size is None:
        if len(sizes) > 1:
            (a, pa), (b, pb) = list(sizes.items())[:2]
            raise DataError(
                f"{folder}: images differ in size ({pa} is {a[0]}x{a[1]}, {pb} is {b[0]}x{b[1]} "
                "pixels, width x height); pass image_size= S to resize every image to S x S"
            )
        width, height = next(iter(sizes))
    else:
        width = height = image_size
    if channels is None:
        channels = 1 if modes <= set(GREY_MODES) else 3
    return Folder(folder, tuple(train), tuple(test), train_y, test_y, classes, channels, height, width)


def decode(path: Path, channels: int, height: int, width: int) -> np.ndarray:
    """One image as uint8 ``[channels, height, width]``: converted to greyscale (L) or RGB (an
    alpha channel is dropped), resized with Pillow's antialiased bilinear filter when its size
    differs.
    Raises DataError naming the file when it is not a readable image (e.g. truncated)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            if image.mode in SIXTEEN_BIT_MODES:  # Pillow's convert("L") would clip these at 255
                wide = np.asarray(image, dtype=np.float64) / 257.0  # 0..65535 -> 0..255
                image = Image.fromarray(np.clip(np.rint(wide), 0, 255).astype(np.uint8), "L")
            image = image.convert("L" if channels == 1 else "RGB")  # decodes every pixel
            if image.size != (width, height):
                image = image.resize((width, height), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise _unreadable(path, error) from None
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class _Decoded(torch.utils.data.Dataset):
    """Item i: the images of chunk i decoded, as (uint8 [b, C, S, S], their indices, error).

    A decoding error travels back as a message rather than an exception, so that the main process
    raises it as one line naming the file (an exception raised in a DataLoader worker comes back
    wrapped in the worker's traceback)."""

    def __init__(self, files: Sequence[Path], event_shape: tuple[int, int, int]) -> None:
        self.files, self.event_shape = files, event_shape

    def __len__(self) -> int:  # pragma: no cover - indexed through the sampler only
        return len(self.files)

    def __getitem__(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str]:
        out = np.empty((len(indices), *self.event_shape), dtype=np.uint8)
        for row, i in enumerate(indices.tolist()):
            try:
                out[row] = decode(self.files[i], *self.event_shape)
            except DataError as error:
                return torch.empty(0, dtype=torch.uint8), indices, str(error)
        return torch.from_numpy(out), indices, ""


def _decoded_chunks(files: Sequence[Path], event_shape: tuple[int, int, int], chunks: Sequence[torch.Tensor],
                    workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:  # fmt: skip
    """Decodes the chunks of indices in order, through ``workers`` processes (0: this one)."""
    workers = min(workers, len(chunks))
    loader = torch.utils.data.DataLoader(
        _Decoded(files, event_shape),
        batch_size=None,  # each item is already a whole chunk
        sampler=chunks,
        num_workers=workers,
        prefetch_factor=2 if workers else None,
        # the DataLoader draws its workers' base seed from this generator, not from the global
        # one, which initialization and rsample use: streaming must not change the training draws
        generator=torch.Generator().manual_seed(0),
    )
    for images, indices, error in loader:
        if error:
            raise DataError(error)
        yield images, indices


def decode_all(files: Sequence[Path], event_shape: tuple[int, int, int], workers: int) -> np.ndarray:
    """Every file decoded into one uint8 array ``[N, C, H, W]`` (file order)."""
    out = np.empty((len(files), *event_shape), dtype=np.uint8)
    chunks = list(torch.arange(len(files)).split(DECODE_CHUNK))
    for images, indices in _decoded_chunks(files, event_shape, chunks, workers):
        out[indices.numpy()] = images.numpy()
    return out


LEVELS = 256  # 8-bit grey levels


class StreamSplit:
    """One split of an image folder, read from disk batch by batch instead of held in memory.

    It serves what the Trainer asks of a :class:`~vaelab.data.Split` (``len``, ``event_shape``,
    ``y``, ``batches``, ``fixed_batches``, ``head``) with the same values: grey levels / 255,
    binarized or dequantized as the split's mode says. Random numbers come only from the
    generator passed to :meth:`batches`, drawn when it is called (the permutation, then one seed
    for the pass's binarization or dequantization noise), so a trainer that checkpoints the
    generator resumes exactly. The fixed views (``static``, and scoring views of ``dynamic`` and
    dequantized data) draw each example's noise from a generator seeded by the split's seed and
    the example's index, so an example looks the same in any batch and any order; they are not
    the same draws as an in-memory split's.

    Args:
        files: the split's images, in file order.
        y: int64 labels or None.
        event_shape: ``(C, H, W)`` of the images served.
        name, split, binarize, seed, dequantize: as for ``Split``.
        workers: DataLoader worker processes that decode the images (0: the calling process).
    """

    levels = LEVELS

    def __init__(self, files: Sequence[Path], y: torch.Tensor | None, event_shape: tuple[int, int, int], name: str,
                 split: str, binarize: str = "none", seed: int = 0, dequantize: bool = False,
                 workers: int = 0) -> None:  # fmt: skip
        check_choice(split, SPLITS, "split")
        check_choice(binarize, BINARIZE_MODES, "binarize mode")
        if dequantize and binarize != "none":
            raise DataError(
                f"dequantization adds noise to grey levels, but binarize={binarize!r} makes the data "
                "binary; use binarize='none' with dequantize"
            )
        self.files, self.y, self._event_shape = tuple(files), y, tuple(event_shape)
        self.name, self.split, self.binarize, self.seed = name, split, binarize, seed
        self.dequantize, self.workers = dequantize, workers

    def __len__(self) -> int:
        return len(self.files)

    def __repr__(self) -> str:
        return (
            f"StreamSplit(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"event_shape={list(self._event_shape)}, binarize={self.binarize!r}, seed={self.seed})"
        )

    @property
    def event_shape(self) -> tuple[int, ...]:
        return self._event_shape

    def batches(self, batch_size: int, *, generator: torch.Generator | None = None, shuffle: bool = False,
                drop_last: bool = False) -> _StreamBatches:  # fmt: skip
        """One pass in batches, as ``Split.batches``: float32 ``[b, C, H, W]``, with ``len()``."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        noisy = self.binarize == "dynamic" or self.dequantize
        if generator is None and (shuffle or noisy):
            raise ValueError(
                "shuffle=True and dynamic binarization need a torch.Generator; pass generator=..."
            )
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        noise = None
        if noisy:  # one seed for the whole pass, drawn now so the generator already reflects it
            noise = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        stop = n - n % batch_size if drop_last else n
        return _StreamBatches(self, list(order[:stop].split(batch_size)), noise)

    def fixed_batches(self, batch_size: int) -> _StreamBatches:
        """The deterministic view (validation, scoring), in file order."""
        return _StreamBatches(self, list(torch.arange(len(self)).split(batch_size)), None)

    def head(self, n: int | None) -> torch.Tensor:
        """The deterministic view of the first ``n`` examples (all when None) in one tensor."""
        count = len(self) if n is None else min(n, len(self))
        parts = list(_StreamBatches(self, list(torch.arange(count).split(DECODE_CHUNK)), None))
        return torch.cat(parts) if parts else torch.empty((0, *self._event_shape))

    def _view(self, images: torch.Tensor, indices: torch.Tensor, noise: torch.Generator | None) -> torch.Tensor:
        """Decoded uint8 images -> the served float32 view."""
        if self.dequantize:  # grey level k -> (k + u) / levels
            u = torch.rand(images.shape, generator=noise) if noise is not None else self._fixed_uniform(images, indices)
            return (images.to(torch.float32) + u).div_(LEVELS)
        x = images.to(torch.float32).div_(LEVELS - 1)
        if self.binarize == "none":
            return x
        if self.binarize == "threshold":
            return (x > 0.5).to(torch.float32)
        u = torch.rand(x.shape, generator=noise) if noise is not None else self._fixed_uniform(x, indices)
        return (u < x).to(torch.float32)

    def _fixed_uniform(self, like: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        base = derived_seed(self.seed, self.split)
        out = torch.empty(like.shape)
        for row, i in enumerate(indices.tolist()):
            out[row] = torch.rand(like.shape[1:], generator=torch.Generator().manual_seed((base + i) % 2**63))
        return out


class _StreamBatches(Iterator[torch.Tensor]):
    """The batches of one pass of a StreamSplit; an iterator with a length (for progress bars).
    Images are decoded by the DataLoader's workers ahead of use, in the pass's order."""

    def __init__(self, split: StreamSplit, chunks: list[torch.Tensor], noise: torch.Generator | None) -> None:
        self._split, self._chunks, self._noise = split, chunks, noise
        self._it: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __len__(self) -> int:
        return len(self._chunks)

    def __iter__(self) -> _StreamBatches:
        return self

    def __next__(self) -> torch.Tensor:
        if self._it is None:
            s = self._split
            self._it = _decoded_chunks(s.files, s.event_shape, self._chunks, s.workers)
        images, indices = next(self._it)
        return self._split._view(images, indices, self._noise)
