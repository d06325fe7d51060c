"""Finding the IDX files of a dataset: a given ``data_dir``, ``$VAELAB_DATA``, the user cache and
the system folders, and downloading them from the official mirrors (checksummed) when they are
nowhere."""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..core.errors import DataError, DataNotFoundError
from .common import one_line

__all__ = ["APT_PACKAGES", "DOWNLOAD_TIMEOUT", "IDX_FILES", "MD5", "MIRRORS", "SYSTEM_DIRS",
           "cache_dir", "find_idx_files", "resolve_idx_files"]  # fmt: skip

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
    found, looked = find_idx_files(name, data_dir)
    if found is not None:
        return found
    cache = cache_dir(name)
    if not download:
        raise DataNotFoundError(_missing_message(name, looked, cache, None))
    _download_missing(name, cache, looked, progress)
    found = _complete_dir(cache)
    if found is None:  # only if something deleted the files under our feet
        raise DataError(_missing_message(name, looked, cache, "files vanished after download"))
    return found


def find_idx_files(
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
        f"or drop data_dir= to look in $VAELAB_DATA, the user cache ({cache_dir(name)}) and the "
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
        one_line(
            f"data_dir={root} does not hold the {name} files: looked for {wanted} in {root} and "
            f"{root / name}{detail}; put all four in one of them, {elsewhere}"
        )
    )


def cache_dir(name: str) -> Path:
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
    folders.append(cache_dir(name))
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
    return one_line(message)


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
            one_line(
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
