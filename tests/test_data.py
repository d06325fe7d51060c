"""Tests for vaelab.data: IDX files, search and download, splits, binarization, batching.

No test touches the network or the machine's own data folders: an autouse fixture points the
system folders, VAELAB_DATA, the user cache and the mirrors at temporary places (the mirrors at a
closed local port), and downloads are served by a local HTTP server.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import math
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab.core.errors import ConfigError, DataError, DataNotFoundError
from vaelab.data import download as downloads
from vaelab.data import sources
from vaelab.data.common import BINARIZE_MODES, DATASETS
from vaelab.data.download import resolve_idx_files
from vaelab.data.idx import read_idx
from vaelab.data.load import load_dataset, load_split
from vaelab.data.sources import describe_source
from vaelab.data.splits import Split

FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "t10k-images": "t10k-images-idx3-ubyte",
    "t10k-labels": "t10k-labels-idx1-ubyte",
}
TYPE_CODES = {"uint8": 0x08, "int8": 0x09, "int16": 0x0B, "int32": 0x0C, "float32": 0x0D,
              "float64": 0x0E}


# ------------------------------------------------------------------------------------------
# helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as an IDX file: 00 00 type ndim, big-endian uint32 dims, big-endian data."""
    header = bytes([0, 0, TYPE_CODES[array.dtype.name], array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    raw = idx_bytes(array)
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def make_dataset(folder: Path, n_train: int = 20, n_test: int = 7, seed: int = 0,
                 compress: bool = True, n_train_labels: int | None = None) -> dict:
    """Write the four IDX files of a tiny fake dataset; return the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels": rng.integers(0, 10, n_train_labels or n_train, dtype=np.uint8),
        "t10k-images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for key, base in FILES.items():
        write_idx(folder / (base + (".gz" if compress else "")), arrays[key])
    return arrays


def as_float(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images.astype(np.float32) / np.float32(255))[:, None]


def dead_url() -> str:
    """A URL on a local port nobody listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def md5_table(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.glob("*.gz")}


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Keep every test off the network, the real cache and /usr/share/datasets."""
    monkeypatch.setattr(downloads, "SYSTEM_DIRS", {"fashion-mnist": [], "mnist": []})
    monkeypatch.setattr(downloads, "MIRRORS", {"fashion-mnist": [dead_url()], "mnist": [dead_url()]})
    monkeypatch.setattr(downloads, "MD5", {name: dict(table) for name, table in downloads.MD5.items()})
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy",
                "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def serve(tmp_path):
    """serve(folder) -> base URL of an HTTP server on 127.0.0.1 serving that folder."""
    servers = []

    def start(folder: Path, handler: type = QuietHandler) -> str:
        server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(folder))
        )
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def cache_dir(tmp_path: Path, name: str) -> Path:
    return tmp_path / "xdg-cache" / "vaelab" / name


def indexed_npz(path: Path, n: int = 50, d: int = 3) -> Path:
    """An npz whose rows say their own index: x[i, 0] = i / 1000, label i."""
    x = np.zeros((n, d), dtype=np.float32)
    x[:, 0] = np.arange(n) / 1000
    np.savez(path, x_train=x, x_test=x[:5], y_train=np.arange(n), y_test=np.arange(5))
    return path


def row_ids(split: Split) -> np.ndarray:
    return np.rint(split.x[:, 0].numpy() * 1000).astype(int)


# ------------------------------------------------------------------------------------------
# IDX reader


@pytest.mark.parametrize("suffix", [".gz", ""])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
def test_read_idx_round_trip(tmp_path, suffix, dtype):
    array = (np.random.default_rng(1).integers(-100, 100, (5, 28, 28))).astype(dtype)
    if dtype == "uint8":
        array = np.random.default_rng(1).integers(0, 256, (5, 28, 28)).astype(np.uint8)
    got = read_idx(write_idx(tmp_path / f"images{suffix}", array))
    assert got.dtype == np.dtype(dtype) and got.dtype.isnative
    assert got.flags.writeable
    np.testing.assert_array_equal(got, array)


def test_read_idx_detects_gzip_by_content(tmp_path):
    labels = np.arange(9, dtype=np.uint8)
    path = tmp_path / "labels.idx"
    path.write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(path), labels)


def _corrupt_cases() -> dict:
    good = idx_bytes(np.arange(60, dtype=np.uint8).reshape(3, 4, 5))
    gz = gzip.compress(good)
    flipped = bytearray(gz)
    flipped[len(gz) // 2] ^= 0xFF
    return {
        "wrong magic": (b"PK\x03\x04" + good[4:], "not an IDX file"),
        "bad type code": (good[:2] + b"\x07" + good[3:], "type code"),
        "truncated header": (good[:9], "truncated IDX header"),
        "truncated data": (good[:-1], "truncated"),
        "extra bytes": (good + b"\x00", "extra bytes"),
        "truncated gzip": (gz[: len(gz) // 2], "gzip"),
        "corrupt gzip": (bytes(flipped), "gzip"),
    }


@pytest.mark.parametrize("case", list(_corrupt_cases()))
def test_read_idx_rejects_corrupt_files(tmp_path, case):
    content, phrase = _corrupt_cases()[case]
    path = tmp_path / "broken-file-idx3-ubyte.gz"
    path.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert "broken-file-idx3-ubyte.gz" in message
    assert phrase in message
    assert "download it again" in message
    assert "\n" not in message


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="nothere"):
        read_idx(tmp_path / "nothere")


def test_label_image_count_mismatch(tmp_path):
    make_dataset(tmp_path / "d", n_train=20, n_train_labels=19)
    with pytest.raises(DataError) as info:
        load_split("mnist", data_dir=tmp_path / "d", download=False)
    assert "train-images-idx3-ubyte.gz" in str(info.value)
    assert "train-labels-idx1-ubyte.gz" in str(info.value)


def test_images_must_be_3d(tmp_path):
    make_dataset(tmp_path / "d")
    write_idx(tmp_path / "d" / "train-images-idx3-ubyte.gz", np.zeros((20, 784), np.uint8))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_split("mnist", data_dir=tmp_path / "d", download=False)


# ------------------------------------------------------------------------------------------
# finding IDX files


@pytest.mark.parametrize("compress", [True, False])
def test_load_from_data_dir(tmp_path, compress):
    arrays = make_dataset(tmp_path / "d", compress=compress)
    train = load_split("fashion-mnist", data_dir=tmp_path / "d", valid_fraction=0,
                       download=False)
    assert train.x.shape == (20, 1, 28, 28) and train.x.dtype == torch.float32
    assert torch.equal(train.x, as_float(arrays["train-images"]))
    assert torch.equal(train.y, torch.from_numpy(arrays["train-labels"].astype(np.int64)))
    assert train.levels == 256 and train.event_shape == (1, 28, 28)
    test = load_split("fashion-mnist", "test", data_dir=tmp_path / "d", download=False)
    assert torch.equal(test.x, as_float(arrays["t10k-images"]))
    assert test.y.dtype == torch.int64 and len(test) == 7


@pytest.mark.parametrize("subfolder", [True, False])
def test_load_from_vaelab_data(tmp_path, monkeypatch, subfolder):
    root = tmp_path / "root"
    arrays = make_dataset(root / "mnist" if subfolder else root)
    monkeypatch.setenv("VAELAB_DATA", str(root))
    test = load_split("mnist", "test", download=False)
    assert torch.equal(test.x, as_float(arrays["t10k-images"]))


def test_load_from_user_cache(tmp_path):
    arrays = make_dataset(cache_dir(tmp_path, "mnist"))
    test = load_split("mnist", "test", download=False)
    assert torch.equal(test.x, as_float(arrays["t10k-images"]))


def test_load_from_system_dir(tmp_path, monkeypatch):
    arrays = make_dataset(tmp_path / "usr-share")
    monkeypatch.setitem(downloads.SYSTEM_DIRS, "fashion-mnist", [str(tmp_path / "usr-share")])
    test = load_split("fashion-mnist", "test", download=False)
    assert torch.equal(test.x, as_float(arrays["t10k-images"]))


def test_search_order(tmp_path, monkeypatch):
    places = {
        "env": tmp_path / "env" / "mnist",
        "cache": cache_dir(tmp_path, "mnist"),
        "system": tmp_path / "system",
    }
    for seed, folder in enumerate(places.values()):
        make_dataset(folder, seed=seed)
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "env"))
    monkeypatch.setitem(downloads.SYSTEM_DIRS, "mnist", [str(places["system"])])
    for key, folder in places.items():
        found = resolve_idx_files("mnist", download=False)
        assert found["t10k-images"].parent == folder, key
        assert describe_source("mnist") == f"mnist from {folder}", key  # the same search
        for path in folder.iterdir():  # remove this place: the next one must win
            path.unlink()
    with pytest.raises(DataNotFoundError):
        resolve_idx_files("mnist", download=False)
    assert describe_source("mnist") == f"mnist, to be downloaded into {cache_dir(tmp_path, 'mnist')}"


@pytest.mark.parametrize("subfolder", [False, True])
def test_data_dir_wins_over_every_other_place(tmp_path, monkeypatch, subfolder):
    given = make_dataset(tmp_path / "given" / ("mnist" if subfolder else ""), seed=1)
    make_dataset(tmp_path / "env", seed=2)
    make_dataset(cache_dir(tmp_path, "mnist"), seed=3)
    make_dataset(tmp_path / "system", seed=4)
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "env"))
    monkeypatch.setitem(downloads.SYSTEM_DIRS, "mnist", [str(tmp_path / "system")])
    test = load_split("mnist", "test", data_dir=tmp_path / "given", download=False)
    assert torch.equal(test.x, as_float(given["t10k-images"]))
    folder = tmp_path / "given" / ("mnist" if subfolder else "")
    assert describe_source("mnist", tmp_path / "given") == f"mnist from {folder}"


def test_an_incomplete_folder_is_skipped_in_the_search(tmp_path, monkeypatch):
    make_dataset(tmp_path / "env", seed=1)
    (tmp_path / "env" / "t10k-labels-idx1-ubyte.gz").unlink()
    cache = make_dataset(cache_dir(tmp_path, "mnist"), seed=2)
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "env"))
    test = load_split("mnist", "test", download=False)
    assert torch.equal(test.x, as_float(cache["t10k-images"]))


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_missing_without_download(tmp_path, name):
    with pytest.raises(DataNotFoundError) as info:
        load_split(name, download=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(cache_dir(tmp_path, name)) in message  # where it looked, and where to put the files
    assert "VAELAB_DATA" in message and "data_dir=" in message  # the CLI shows --data-dir
    assert ("apt-get install dataset-fashion-mnist" in message) == (name == "fashion-mnist")


# ------------------------------------------------------------------------------------------
# a given data_dir holds the files, or it is an error


@pytest.fixture
def copies_elsewhere(tmp_path, monkeypatch, serve):
    """fashion-mnist and mnist in every other place, and on a mirror: a data_dir error must not be
    covered up by any of them."""
    for name in ("fashion-mnist", "mnist"):
        make_dataset(tmp_path / "env" / name, seed=2)
        make_dataset(tmp_path / "system" / name, seed=3)
        make_dataset(tmp_path / "mirror" / name, seed=4)
        monkeypatch.setitem(downloads.SYSTEM_DIRS, name, [str(tmp_path / "system" / name)])
        monkeypatch.setitem(downloads.MIRRORS, name, [serve(tmp_path / "mirror" / name)])
        monkeypatch.setitem(downloads.MD5, name, md5_table(tmp_path / "mirror" / name))
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "env"))


def data_dir_error(name: str, data_dir: Path, **kwargs) -> str:
    """The one-line message of every way to use data_dir: loading, searching, describing."""
    messages = set()
    for call in (lambda: load_split(name, "test", data_dir=data_dir, **kwargs),
                 lambda: resolve_idx_files(sources.IDX_SOURCES[name], data_dir, **kwargs),
                 lambda: describe_source(name, data_dir)):  # fmt: skip
        with pytest.raises(DataNotFoundError) as info:
            call()
        assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
        messages.add(str(info.value))
    (message,) = messages  # the same words, whichever way it was asked
    assert "\n" not in message
    return message


IDX_NAMES = ["fashion-mnist", "mnist", "stacked-fashion-mnist"]


@pytest.mark.parametrize("download", [True, False])
@pytest.mark.parametrize("name", IDX_NAMES)
def test_a_data_dir_that_does_not_exist_is_an_error(tmp_path, copies_elsewhere, name, download):
    message = data_dir_error(name, tmp_path / "nowhere", download=download)
    assert message.startswith(f"data_dir={tmp_path / 'nowhere'} does not exist;")
    assert "drop data_dir=" in message and str(cache_dir(tmp_path, sources.IDX_SOURCES[name])) in message
    assert not cache_dir(tmp_path, sources.IDX_SOURCES[name]).exists()  # nothing downloaded
    (tmp_path / "a-file").write_text("not a folder")
    message = data_dir_error(name, tmp_path / "a-file", download=download)
    assert message.startswith(f"data_dir={tmp_path / 'a-file'} is a file, not a folder;")


@pytest.mark.parametrize("download", [True, False])
@pytest.mark.parametrize("name", IDX_NAMES)
def test_a_data_dir_without_the_files_is_an_error(tmp_path, copies_elsewhere, name, download):
    source = sources.IDX_SOURCES[name]
    given = tmp_path / "given"
    (given / "unrelated").mkdir(parents=True)
    message = data_dir_error(name, given, download=download)
    assert message.startswith(f"data_dir={given} does not hold the {source} files: looked for ")
    for base in FILES.values():
        assert f"{base}[.gz]" in message
    assert f"in {given} and {given / source}" in message and "lacks" not in message
    assert not cache_dir(tmp_path, source).exists()  # nothing downloaded
    # three of the four files, split over the two folders it looks in, are no set either
    make_dataset(given / source)
    (given / source / "t10k-labels-idx1-ubyte.gz").unlink()
    make_dataset(given, compress=False)
    for base in ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (given / base).unlink()
    message = data_dir_error(name, given, download=download)
    assert (f"({given} lacks train-images-idx3-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte; "
            f"{given / source} lacks t10k-labels-idx1-ubyte)") in message  # fmt: skip


def test_the_idx_datasets_are_those_that_read_data_dir():
    # every registered dataset either reads IDX files (and data_dir) or says where its data comes from
    assert set(sources.IDX_SOURCES) | set(sources.BUILT_IN) == set(DATASETS.names())
    assert not set(sources.IDX_SOURCES) & set(sources.BUILT_IN)
    assert set(sources.IDX_SOURCES.values()) <= set(downloads.MIRRORS)
    assert [n for n in DATASETS.names() if sources.uses_data_dir(n)] == sorted(IDX_NAMES)


def data_without_files(tmp_path: Path) -> dict[str, Path | str]:
    """One of each kind of data that has no files to look for in a data_dir."""
    np.save(tmp_path / "x.npy", np.zeros((10, 3), np.float32))
    indexed_npz(tmp_path / "x.npz")
    class_folder(tmp_path / "photos", {"a": 5, "b": 5})
    return {"digits": "digits", "ring8": "ring8", "grid25": "grid25", "npy": tmp_path / "x.npy",
            "npz": tmp_path / "x.npz", "folder": tmp_path / "photos"}  # fmt: skip


@pytest.mark.parametrize("exists", [True, False])
def test_data_dir_is_refused_for_data_without_files(tmp_path, exists):
    given = tmp_path / "given"
    if exists:
        make_dataset(given)
    for kind, name in data_without_files(tmp_path).items():
        for call in (lambda: load_split(name, "test", data_dir=given), lambda: describe_source(name, given),
                     lambda: sources.check_data_dir(name, given)):  # fmt: skip
            with pytest.raises(DataError) as info:
                call()
            message = str(info.value)
            assert message.startswith("data_dir= is where the IDX files of fashion-mnist, mnist, "
                                      "stacked-fashion-mnist are looked for, and "), kind  # fmt: skip
            assert message.endswith("so it would be ignored; drop data_dir=") and "\n" not in message, kind
        if kind in ("digits", "ring8", "grid25"):
            assert f"{name} is {sources.BUILT_IN[name]}" in message
        else:
            assert f"{name} is read from its own path" in message
        assert len(load_split(name, "test")) > 0  # without data_dir, the same data loads


def test_data_dir_none_and_unknown_names_are_left_to_the_loader(tmp_path):
    sources.check_data_dir("digits", None)
    sources.check_data_dir("no-such-set", tmp_path)  # the loader's error lists the names
    with pytest.raises(ConfigError, match="unknown dataset 'no-such-set'"):
        load_split("no-such-set", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="unknown dataset 'no-such-set'"):
        describe_source("no-such-set", tmp_path)


# ------------------------------------------------------------------------------------------
# where the data comes from


def test_describe_every_kind_of_source(tmp_path, monkeypatch, serve):
    kinds = data_without_files(tmp_path)
    assert describe_source("digits") == "digits (scikit-learn's bundled copy)"
    assert describe_source("ring8") == "ring8 (generated: 8 Gaussians in the plane, seeded)"
    assert describe_source("grid25") == "grid25 (generated: 25 Gaussians in the plane, seeded)"
    monkeypatch.chdir(tmp_path)  # relative paths are described absolute
    assert describe_source("x.npz") == str(kinds["npz"]) and describe_source("./x.npy") == str(kinds["npy"])
    assert describe_source(kinds["folder"]) == f"{kinds['folder']} (image folder, 10 images in 2 classes)"
    save_png(tmp_path / "flat" / "a.png", grey_image(0))
    save_png(tmp_path / "flat" / "b.png", grey_image(1))
    assert describe_source("flat") == f"{tmp_path / 'flat'} (image folder, 2 images)"
    with pytest.raises(DataNotFoundError, match="no such file"):
        describe_source("missing.npz")
    with pytest.raises(DataError, match="differ in size"):  # the loader's own scan and its errors
        save_png(tmp_path / "flat" / "c.png", grey_image(2, size=(5, 5)))
        describe_source("flat")
    assert describe_source("flat", image_size=4) == f"{tmp_path / 'flat'} (image folder, 3 images)"
    # the IDX sets: where the files are, or where they will be downloaded to (and then are)
    cache = cache_dir(tmp_path, "fashion-mnist")
    assert describe_source("fashion-mnist") == f"fashion-mnist, to be downloaded into {cache}"
    assert describe_source("stacked-fashion-mnist") == (
        f"stacked-fashion-mnist, stacked from fashion-mnist, to be downloaded into {cache}")
    assert not cache.exists()  # describing downloads nothing
    make_dataset(tmp_path / "mirror")
    monkeypatch.setitem(downloads.MIRRORS, "fashion-mnist", [serve(tmp_path / "mirror")])
    monkeypatch.setitem(downloads.MD5, "fashion-mnist", md5_table(tmp_path / "mirror"))
    load_split("fashion-mnist", "test")
    assert describe_source("fashion-mnist") == f"fashion-mnist from {cache}"
    assert describe_source("stacked-fashion-mnist") == f"stacked-fashion-mnist, stacked from fashion-mnist in {cache}"
    make_dataset(tmp_path / "mine" / "fashion-mnist")
    assert describe_source("stacked-fashion-mnist", tmp_path / "mine") == (
        f"stacked-fashion-mnist, stacked from fashion-mnist in {tmp_path / 'mine' / 'fashion-mnist'}")


# ------------------------------------------------------------------------------------------
# vaelab train names its data; --data-dir errors on the command line

TINY_RUN = ["--hidden", "8", "--latent-dim", "2", "--epochs", "1", "--quiet"]


def cli_data_line(*args: str) -> str:
    """Trains with these flags and returns the first line of the output, after checking that the
    epoch lines follow it."""
    from test_cli import run_cli

    proc = run_cli("train", *args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[1].startswith("epoch 1/") and lines[-1].startswith("trained "), lines
    return lines[0]


def test_train_and_resume_print_where_the_data_comes_from(tmp_path, monkeypatch, serve):
    from test_cli import run_cli

    make_dataset(tmp_path / "given" / "fashion-mnist", seed=1)
    make_dataset(tmp_path / "system", seed=2)
    monkeypatch.setitem(downloads.SYSTEM_DIRS, "fashion-mnist", [str(tmp_path / "system")])
    idx = ["--data", "fashion-mnist", "--binarize", "threshold", *TINY_RUN]
    run = tmp_path / "runs" / "given"
    line = cli_data_line(*idx, "--data-dir", str(tmp_path / "given"), "--out", str(run))
    assert line == f"data: fashion-mnist from {tmp_path / 'given' / 'fashion-mnist'}"
    assert line == "data: " + describe_source("fashion-mnist", tmp_path / "given")  # the Python words
    proc = run_cli("train", "--resume", str(run), "--epochs", "2", "--quiet")  # the saved data_dir
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == line and "epoch 2/2" in proc.stdout
    proc = run_cli("train", "--resume", str(run), "--epochs", "3", "--silent")
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout
    # without --data-dir: the search; and without --quiet the line comes first all the same
    no_quiet = [a for a in idx if a != "--quiet"]
    assert cli_data_line(*no_quiet, "--out", str(tmp_path / "runs" / "system")) == f"data: fashion-mnist from {tmp_path / 'system'}"
    # nowhere yet: downloaded (from a local mirror) after the line says where to
    monkeypatch.setitem(downloads.SYSTEM_DIRS, "fashion-mnist", [])
    make_dataset(tmp_path / "mirror")
    monkeypatch.setitem(downloads.MIRRORS, "fashion-mnist", [serve(tmp_path / "mirror")])
    monkeypatch.setitem(downloads.MD5, "fashion-mnist", md5_table(tmp_path / "mirror"))
    cache = cache_dir(tmp_path, "fashion-mnist")
    line = cli_data_line(*idx, "--out", str(tmp_path / "runs" / "download"))
    assert line == f"data: fashion-mnist, to be downloaded into {cache}" and (cache / "t10k-labels-idx1-ubyte.gz").is_file()
    # the other kinds of data
    kinds = data_without_files(tmp_path)
    assert cli_data_line("--data", "digits", "--binarize", "threshold", "--limit", "50", *TINY_RUN,
                         "--out", str(tmp_path / "runs" / "digits")) == "data: digits (scikit-learn's bundled copy)"
    assert cli_data_line("--data", str(kinds["npz"]), "--binarize", "none", "--likelihood", "gaussian", *TINY_RUN,
                         "--out", str(tmp_path / "runs" / "npz")) == f"data: {kinds['npz']}"
    assert cli_data_line("--data", str(kinds["folder"]), "--binarize", "threshold", "--workers", "0", *TINY_RUN,
                         "--out", str(tmp_path / "runs" / "folder")) == f"data: {kinds['folder']} (image folder, 10 images in 2 classes)"
    assert cli_data_line("--data", "ring8", "--binarize", "none", "--likelihood", "gaussian", "--limit", "50", *TINY_RUN,
                         "--out", str(tmp_path / "runs" / "ring8")) == "data: ring8 (generated: 8 Gaussians in the plane, seeded)"


@pytest.mark.parametrize("silent", [False, True])
def test_train_refuses_a_data_dir_it_cannot_use(tmp_path, copies_elsewhere, silent):
    from test_cli import assert_one_line_error, run_cli

    quiet = ["--silent"] if silent else ["--quiet"]
    idx = ["--data", "fashion-mnist", "--binarize", "threshold", "--hidden", "8", "--epochs", "1", *quiet]
    out = tmp_path / "run"
    proc = run_cli("train", *idx, "--data-dir", str(tmp_path / "nowhere"), "--out", str(out))
    assert_one_line_error(proc, f"vaelab: error: --data-dir {tmp_path / 'nowhere'} does not exist;", "drop --data-dir")
    assert proc.stdout == "" and not out.exists()
    (tmp_path / "empty").mkdir()
    proc = run_cli("train", *idx, "--data-dir", str(tmp_path / "empty"), "--out", str(out))
    assert_one_line_error(proc, f"--data-dir {tmp_path / 'empty'} does not hold the fashion-mnist files: looked for")
    assert proc.stdout == "" and not out.exists()
    make_dataset(tmp_path / "given")
    proc = run_cli("train", "--data", "digits", "--binarize", "threshold", *quiet, "--data-dir", str(tmp_path / "given"),
                   "--out", str(out))  # fmt: skip
    assert_one_line_error(proc, "--data-dir is where the IDX files", "digits is scikit-learn's bundled copy",
                          "drop --data-dir")  # fmt: skip
    assert proc.stdout == "" and not out.exists()


def test_other_commands_take_data_dir_as_train_does(tmp_path, copies_elsewhere):
    from test_cli import assert_one_line_error, run_cli

    make_dataset(tmp_path / "given", n_test=4)
    run = tmp_path / "run"
    assert run_cli("train", "--data", "fashion-mnist", "--data-dir", str(tmp_path / "given"), "--binarize", "threshold",
                   *TINY_RUN, "--out", str(run)).returncode == 0  # fmt: skip
    # other data scored by the run is taken without the run's IDX folder, which would mean nothing for it
    np.savez(tmp_path / "other.npz", x_train=np.zeros((6, 28, 28), np.uint8), x_test=np.full((3, 28, 28), 255, np.uint8))
    proc = run_cli("score", str(run), "--data", str(tmp_path / "other.npz"), "--bound", "elbo", "--json", "--quiet")
    assert proc.returncode == 0, proc.stderr
    # the run's own data comes from its folder only: gone, it is an error, not another copy
    for path in (tmp_path / "given").iterdir():
        path.unlink()
    (tmp_path / "given").rmdir()
    proc = run_cli("score", str(run), "--bound", "elbo", "--json", "--quiet")
    assert_one_line_error(proc, f"{tmp_path / 'given'} does not exist")
    # vaelab quality refuses a --data-dir that generated points would ignore
    np.save(tmp_path / "points.npy", np.zeros((10, 2), np.float32))
    proc = run_cli("quality", "--data", "ring8", "--samples", str(tmp_path / "points.npy"), "--data-dir", str(tmp_path))
    assert_one_line_error(proc, "ring8 is generated", "drop --data-dir")


# ------------------------------------------------------------------------------------------
# downloading


def test_download_into_cache(tmp_path, monkeypatch, serve):
    arrays = make_dataset(tmp_path / "mirror")
    monkeypatch.setitem(downloads.MIRRORS, "mnist", [serve(tmp_path / "mirror")])
    monkeypatch.setitem(downloads.MD5, "mnist", md5_table(tmp_path / "mirror"))
    test = load_split("mnist", "test")
    assert torch.equal(test.x, as_float(arrays["t10k-images"]))
    cache = cache_dir(tmp_path, "mnist")
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{b}.gz" for b in FILES.values())
    for path in cache.iterdir():
        assert path.read_bytes() == (tmp_path / "mirror" / path.name).read_bytes()


def test_download_progress_goes_to_stderr(tmp_path, monkeypatch, serve, capsys):
    make_dataset(tmp_path / "mirror")
    monkeypatch.setitem(downloads.MIRRORS, "mnist", [serve(tmp_path / "mirror")])
    monkeypatch.setitem(downloads.MD5, "mnist", md5_table(tmp_path / "mirror"))
    resolve_idx_files("mnist", progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "t10k-images-idx3-ubyte.gz" in err


def test_download_is_quiet_by_default(tmp_path, monkeypatch, serve, capsys):
    make_dataset(tmp_path / "mirror")
    monkeypatch.setitem(downloads.MIRRORS, "mnist", [serve(tmp_path / "mirror")])
    monkeypatch.setitem(downloads.MD5, "mnist", md5_table(tmp_path / "mirror"))
    resolve_idx_files("mnist")
    assert capsys.readouterr() == ("", "")


def test_checksum_mismatch_is_rejected(tmp_path, monkeypatch, serve):
    make_dataset(tmp_path / "mirror")
    table = md5_table(tmp_path / "mirror")
    got = table["train-images-idx3-ubyte.gz"]
    table["train-images-idx3-ubyte.gz"] = "0" * 32
    monkeypatch.setitem(downloads.MIRRORS, "mnist", [serve(tmp_path / "mirror")] * 2)
    monkeypatch.setitem(downloads.MD5, "mnist", table)
    with pytest.raises(DataError) as info:
        load_split("mnist")
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and "0" * 32 in message and got in message
    cache = cache_dir(tmp_path, "mnist")
    assert not (cache / "train-images-idx3-ubyte.gz").exists()
    assert not list(cache.glob(".*"))  # no temporary file left behind


def test_dead_first_mirror_falls_back_to_second(tmp_path, monkeypatch, serve):
    arrays = make_dataset(tmp_path / "mirror")
    monkeypatch.setitem(downloads.MIRRORS, "fashion-mnist", [dead_url(), serve(tmp_path / "mirror")])
    monkeypatch.setitem(downloads.MD5, "fashion-mnist", md5_table(tmp_path / "mirror"))
    train = load_split("fashion-mnist", valid_fraction=0)
    assert torch.equal(train.x, as_float(arrays["train-images"]))


def test_all_mirrors_dead(tmp_path, monkeypatch):
    monkeypatch.setitem(downloads.MIRRORS, "fashion-mnist", [dead_url(), dead_url()])
    with pytest.raises(DataError) as info:
        load_split("fashion-mnist")
    message = str(info.value)
    assert "\n" not in message
    assert "download failed" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert str(cache_dir(tmp_path, "fashion-mnist")) in message and "VAELAB_DATA" in message
    assert not list(cache_dir(tmp_path, "fashion-mnist").iterdir())


class TruncatingHandler(QuietHandler):
    """Promises more bytes than it sends, then hangs up: an interrupted download."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100000")
        self.end_headers()
        self.wfile.write(b"\x1f\x8b" + b"\x00" * 100)
        self.wfile.flush()
        self.close_connection = True


def test_interrupted_download_leaves_nothing(tmp_path, monkeypatch, serve):
    (tmp_path / "mirror").mkdir()
    monkeypatch.setitem(downloads.MIRRORS, "mnist", [serve(tmp_path / "mirror", TruncatingHandler)])
    with pytest.raises(DataError):
        resolve_idx_files("mnist")
    assert not list(cache_dir(tmp_path, "mnist").iterdir())


# ------------------------------------------------------------------------------------------
# binarization


def grey_split(binarize: str, split: str = "train", seed: int = 0, n: int = 50) -> Split:
    x = torch.linspace(0, 1, n * 20).reshape(n, 20)
    return Split(x, None, "grey", split, binarize, seed, None)


def test_threshold_is_exact():
    split = grey_split("threshold")
    assert torch.equal(split.fixed(), (split.x > 0.5).to(torch.float32))
    assert split.fixed().dtype == torch.float32


def test_none_is_identity():
    split = grey_split("none")
    assert split.fixed() is split.x


def test_static_is_seeded():
    first, again = grey_split("static", seed=1).fixed(), grey_split("static", seed=1).fixed()
    other_seed = grey_split("static", seed=2).fixed()
    other_split = grey_split("static", split="test", seed=1).fixed()
    assert torch.equal(first, again)
    assert not torch.equal(first, other_seed)
    assert not torch.equal(first, other_split)
    assert set(first.unique().tolist()) == {0.0, 1.0} and first.dtype == torch.float32


def test_fixed_is_cached_and_reproducible_for_dynamic():
    split = grey_split("dynamic", seed=3)
    assert split.fixed() is split.fixed()
    assert torch.equal(split.fixed(), grey_split("dynamic", seed=3).fixed())


def test_dynamic_draws_are_fresh_and_seeded():
    split = grey_split("dynamic")
    generator = torch.Generator().manual_seed(5)
    first, second = split.draw(generator), split.draw(generator)
    assert first.shape == split.x.shape
    assert not torch.equal(first, second)
    assert torch.equal(first, split.draw(torch.Generator().manual_seed(5)))


def test_dynamic_draws_are_bernoulli_of_x():
    split = grey_split("dynamic")
    generator = torch.Generator().manual_seed(0)
    draws = 400
    mean = torch.stack([split.draw(generator).to(torch.float64) for _ in range(draws)]).mean(0)
    p = split.x.to(torch.float64)
    standard_error = (p * (1 - p) / draws).sqrt()
    # Pixels at exactly 0 or 1 must never / always fire; the rest within 5 standard errors.
    assert torch.all((mean - p).abs() <= 5 * standard_error + 1e-12)
    inner = standard_error > 0
    z = (mean - p)[inner] / standard_error[inner]
    assert 0.8 < float((z**2).mean()) < 1.2  # spread is binomial, not too tight nor too loose


def test_dynamic_needs_a_generator():
    split = grey_split("dynamic")
    with pytest.raises(ValueError):
        split.draw(None)
    with pytest.raises(ValueError):
        split.batches(10)


def test_shuffle_needs_a_generator():
    with pytest.raises(ValueError):
        grey_split("none").batches(10, shuffle=True)


@pytest.mark.parametrize("mode", ["threshold", "static", "dynamic"])
def test_binarizing_out_of_range_data_is_refused(tmp_path, mode):
    np.save(tmp_path / "wide.npy", np.linspace(0, 2, 40, dtype=np.float32).reshape(20, 2))
    with pytest.raises(DataError, match=r"binarization needs values in \[0, 1\]"):
        load_split(tmp_path / "wide.npy", binarize=mode)
    assert load_split(tmp_path / "wide.npy", "test").x.max() == 2.0  # fine without binarizing


# ------------------------------------------------------------------------------------------
# batching


def test_batches_shapes_and_drop_last():
    x = torch.rand(10, 1, 4, 4)
    split = Split(x, None, "r", "train", "none", 0, None)
    batches = split.batches(4)
    assert len(batches) == 3
    shapes = [tuple(b.shape) for b in batches]
    assert shapes == [(4, 1, 4, 4), (4, 1, 4, 4), (2, 1, 4, 4)]
    kept = list(split.batches(4, drop_last=True))
    assert [b.shape[0] for b in kept] == [4, 4]
    assert torch.equal(torch.cat(list(split.batches(4))), x)  # no shuffle: file order


@pytest.mark.parametrize("mode", BINARIZE_MODES)
def test_shuffled_pass_covers_every_example_once(mode):
    n = 37
    x = torch.rand(n, 6)
    x[:, 0] = torch.arange(n) / 1000  # row ids, kept intact by every mode below 0.5
    split = Split(x, None, "r", "train", mode, 0, None)
    generator = torch.Generator().manual_seed(0)
    batches = list(split.batches(8, generator=generator, shuffle=True))
    assert all(b.dtype == torch.float32 for b in batches)
    seen = torch.cat(batches)
    assert seen.shape == (n, 6)
    if mode == "none":
        ids = torch.round(seen[:, 0] * 1000).long()
        assert sorted(ids.tolist()) == list(range(n))
        assert ids.tolist() != list(range(n))  # actually shuffled


def test_batches_draw_permutation_then_binarization():
    split = grey_split("dynamic", n=30)
    batches = torch.cat(list(split.batches(7, generator=torch.Generator().manual_seed(9),
                                           shuffle=True)))
    reference = torch.Generator().manual_seed(9)
    order = torch.randperm(30, generator=reference)
    view = torch.rand(split.x.shape, generator=reference) < split.x
    assert torch.equal(batches, view[order].to(torch.float32))


def test_dynamic_passes_reuse_their_buffer_only_once_a_pass_is_done():
    x = torch.rand(3000, 1000, generator=torch.Generator().manual_seed(0))
    split = Split(x, None, "grey", "train", "dynamic", 0, None)  # the uniforms come in slices of 1048 examples
    generator, reference = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    for _ in range(3):  # the same numbers as one torch.rand of the split, and the same generator state after
        seen = torch.cat(list(split.batches(1000, generator=generator)))
        assert torch.equal(seen, (torch.rand(split.x.shape, generator=reference) < split.x).float())
        assert torch.equal(generator.get_state(), reference.get_state())
    first = split.batches(1000, generator=generator)
    head = next(first)
    second = split.batches(1000, generator=generator)  # while the first pass is still going
    assert torch.equal(torch.cat([head, *first]), torch.cat([(torch.rand(split.x.shape, generator=reference) < split.x).float()]))
    assert len(list(second)) == 3


def test_batches_use_only_the_given_generator():
    split = grey_split("dynamic")
    torch.manual_seed(123)
    before = torch.get_rng_state()
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    first = [b.clone() for b in split.batches(16, generator=generator, shuffle=True)]
    assert torch.equal(torch.get_rng_state(), before)
    generator.set_state(state)  # what a resumed trainer does
    second = list(split.batches(16, generator=generator, shuffle=True))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


# ------------------------------------------------------------------------------------------
# splits


def test_valid_and_train_partition_the_training_file(tmp_path):
    path = indexed_npz(tmp_path / "ids.npz")
    train, valid = load_split(path, seed=4), load_split(path, "valid", seed=4)
    train_ids, valid_ids = row_ids(train), row_ids(valid)
    assert len(valid_ids) == round(0.1 * 50)
    assert set(train_ids).isdisjoint(valid_ids)
    assert sorted([*train_ids, *valid_ids]) == list(range(50))
    assert list(train_ids) == sorted(train_ids) and list(valid_ids) == sorted(valid_ids)
    assert torch.equal(train.y, torch.from_numpy(train_ids))  # labels follow their rows
    assert list(row_ids(load_split(path, "valid", seed=4))) == list(valid_ids)
    assert list(row_ids(load_split(path, "valid", seed=5))) != list(valid_ids)


def test_valid_fraction_zero_gives_empty_valid(tmp_path):
    path = indexed_npz(tmp_path / "ids.npz")
    valid = load_split(path, "valid", valid_fraction=0)
    assert len(valid) == 0 and valid.x.shape == (0, 3)
    assert list(valid.batches(4)) == []
    assert list(row_ids(load_split(path, valid_fraction=0))) == list(range(50))


def test_limit_takes_the_first_examples_in_file_order(tmp_path):
    path = indexed_npz(tmp_path / "ids.npz")
    train = row_ids(load_split(path))
    assert list(row_ids(load_split(path, limit=3))) == list(train[:3])
    assert list(row_ids(load_split(path, "test", limit=2))) == [0, 1]
    assert len(load_split(path, "test", limit=1000)) == 5


@pytest.mark.parametrize("kwargs", [{"valid_fraction": 1.0}, {"valid_fraction": -0.1},
                                    {"limit": 0}, {"limit": -3}])
def test_bad_split_options(tmp_path, kwargs):
    with pytest.raises(DataError):
        load_split(indexed_npz(tmp_path / "ids.npz"), **kwargs)


# ------------------------------------------------------------------------------------------
# digits


def test_digits():
    from sklearn.datasets import load_digits

    reference = load_digits()
    train = load_split("digits", valid_fraction=0)
    test = load_split("digits", "test")
    assert train.x.shape == (1437, 1, 8, 8) and test.x.shape == (360, 1, 8, 8)
    assert 0 <= float(train.x.min()) and float(train.x.max()) <= 1
    assert train.levels == 17
    assert torch.equal(test.x * 16, torch.from_numpy(reference.images[1437:]).float()[:, None])
    assert torch.equal(test.y, torch.from_numpy(reference.target[1437:]))
    assert torch.equal(train.y, torch.from_numpy(reference.target[:1437]))


def test_load_dataset_returns_the_fixed_view():
    got = load_dataset("digits", "test", "static", seed=2)
    assert got.shape == (360, 1, 8, 8) and got.dtype == torch.float32
    assert torch.equal(got, load_split("digits", "test", binarize="static", seed=2).fixed())


# ------------------------------------------------------------------------------------------
# .npy / .npz


@pytest.mark.parametrize(
    "shape, event_shape",
    [((20, 6), (6,)), ((20, 3, 4), (1, 3, 4)), ((20, 2, 3, 4), (2, 3, 4))],
)
def test_npy_shapes_and_single_array_split(tmp_path, shape, event_shape):
    array = np.random.default_rng(0).random(shape).astype(np.float32)
    np.save(tmp_path / "a.npy", array)
    train = load_split(tmp_path / "a.npy", valid_fraction=0)
    test = load_split(str(tmp_path / "a.npy"), "test")
    assert train.event_shape == event_shape and train.levels is None and train.y is None
    # The last 10% of rows are the test file, the rest the training file, in file order.
    assert torch.equal(test.x.reshape(2, *shape[1:]), torch.from_numpy(array[18:]))
    assert torch.equal(train.x.reshape(18, *shape[1:]), torch.from_numpy(array[:18]))


def test_npy_uint8_and_bool(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (30, 5, 5), dtype=np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    train = load_split(tmp_path / "grey.npy", valid_fraction=0)
    assert train.levels == 256
    assert torch.equal(train.x, as_float(grey[:27]).reshape(27, 1, 5, 5))
    np.save(tmp_path / "bits.npy", grey > 128)
    bits = load_split(tmp_path / "bits.npy", valid_fraction=0)
    assert bits.levels == 2 and torch.equal(bits.x, torch.from_numpy(grey[:27, None] > 128).float())


def test_npz_train_test(tmp_path):
    rng = np.random.default_rng(0)
    x_train, x_test = rng.random((12, 4)), rng.random((3, 4))
    np.savez(tmp_path / "d.npz", x_train=x_train, x_test=x_test, y_train=np.arange(12),
             y_test=np.arange(3) + 100)
    test = load_split(tmp_path / "d.npz", "test")
    assert torch.equal(test.x, torch.from_numpy(x_test).float())
    assert test.y.tolist() == [100, 101, 102]
    assert len(load_split(tmp_path / "d.npz", valid_fraction=0)) == 12
    np.savez(tmp_path / "e.npz", train=x_train, test=x_test)
    assert torch.equal(load_split(tmp_path / "e.npz", "test").x, torch.from_numpy(x_test).float())


def test_npz_single_array_and_x_y(tmp_path):
    x = np.random.default_rng(0).random((10, 4)).astype(np.float32)
    np.savez(tmp_path / "one.npz", whatever=x)
    assert torch.equal(load_split(tmp_path / "one.npz", "test").x, torch.from_numpy(x[9:]))
    np.savez(tmp_path / "xy.npz", x=x, y=np.arange(10), notes=np.zeros(2))
    test = load_split(tmp_path / "xy.npz", "test")
    assert torch.equal(test.x, torch.from_numpy(x[9:])) and test.y.tolist() == [9]


def _codes_npz(path, n=400, d=3, seed=0):
    """A .npz of posterior codes as vaelab encode writes it: means as x, their scales beside them."""
    rng = np.random.default_rng(seed)
    means = (rng.normal(size=(n, d)) * [0.1, 1.0, 2.0]).astype(np.float32)
    scales = np.abs(rng.normal(size=(n, d)) * [1.0, 0.3, 0.05]).astype(np.float32) + 0.01
    np.savez(path, x_train=means, x_test=means[:50], mean_train=means, mean_test=means[:50],
             scale_train=scales, scale_test=scales[:50])
    return means, scales


def test_posterior_codes_are_drawn_afresh_every_pass(tmp_path):
    """A codes .npz serves z = mean + scale * eps, eps ~ N(0, I) drawn every pass: over 200 passes
    each value's mean is its posterior mean and its variance its scale squared (within 4 standard
    errors), so the training data is the aggregate posterior, whose variance per dimension is
    Var(mean) + E[scale^2], not the means' spread alone."""
    means, scales = _codes_npz(tmp_path / "codes.npz")
    train = load_split(tmp_path / "codes.npz", valid_fraction=0)
    assert train.sd is not None and torch.equal(train.x, torch.from_numpy(means))
    g = torch.Generator().manual_seed(0)
    passes = torch.stack([torch.cat(list(train.batches(64, generator=g))) for _ in range(200)])  # (200, N, D)
    eps = (passes - torch.from_numpy(means)) / torch.from_numpy(scales)
    mean_se, var_se = 1 / math.sqrt(200), math.sqrt(2 / 199)
    assert eps.mean(0).abs().max() < 4.5 * mean_se  # 1,200 values: P(any beyond 4.5 se) < 1%
    assert (eps.var(0).mean() - 1).abs() < 4 * var_se / math.sqrt(eps[0].numel())
    aggregate = passes.flatten(0, 1).var(0).double()  # per dimension, over passes and examples
    mu, sd = torch.from_numpy(means).double(), torch.from_numpy(scales).double()
    centred = mu - mu.mean(0)
    expected = centred.square().mean(0) + sd.square().mean(0)
    # given the means, the noise of the estimate is that of mean(2 (mu - mu_bar) sd eps + sd^2 (eps^2 - 1))
    se = ((4 * (centred * sd).square() + 2 * sd**4).mean(0) / passes[:, :, 0].numel()).sqrt()
    assert ((aggregate - expected).abs() < 4 * se).all(), (aggregate, expected, se)
    assert not torch.equal(passes[0], passes[1])
    # the fixed view (validation, test) is one seeded draw, the same every time, another per split
    test = load_split(tmp_path / "codes.npz", "test")
    again = load_split(tmp_path / "codes.npz", "test")
    assert torch.equal(test.fixed(), again.fixed()) and not torch.equal(test.fixed(), test.x)
    assert not torch.equal(train.fixed()[:50], test.fixed())
    # codes="mean": the means alone, as fixed data
    plain = load_split(tmp_path / "codes.npz", valid_fraction=0, codes="mean")
    assert plain.sd is None and torch.equal(torch.cat(list(plain.batches(64))), torch.from_numpy(means))


def test_posterior_codes_follow_the_carve_limit_and_classes(tmp_path):
    means, scales = _codes_npz(tmp_path / "codes.npz", n=40)
    valid = load_split(tmp_path / "codes.npz", "valid", valid_fraction=0.25, limit=5)
    rows = [int(np.flatnonzero((means == r.numpy()).all(1))[0]) for r in valid.x]
    torch.testing.assert_close(valid.sd, torch.from_numpy(scales[rows]))
    np.savez(tmp_path / "labelled.npz", x_train=means, x_test=means[:4], scale_train=scales, scale_test=scales[:4],
             y_train=np.arange(40) % 2, y_test=np.arange(4) % 2)  # fmt: skip
    odd = load_split(tmp_path / "labelled.npz", valid_fraction=0, classes=[1])
    torch.testing.assert_close(odd.sd, torch.from_numpy(scales[1::2]))


def test_bad_posterior_codes_are_refused(tmp_path):
    means, scales = _codes_npz(tmp_path / "codes.npz", n=20)
    for name, arrays, phrase in (
        ("half", dict(x_train=means, x_test=means, scale_train=scales), "scale_test"),
        ("shape", dict(x_train=means, x_test=means, scale_train=scales[:, :2], scale_test=scales[:, :2]), "shaped like"),
        ("negative", dict(x_train=means, x_test=means, scale_train=-scales, scale_test=scales), "negative"),
    ):  # fmt: skip
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(DataError, match=phrase):
            load_split(tmp_path / f"{name}.npz")
    np.savez(tmp_path / "plain.npz", x_train=means, x_test=means)
    with pytest.raises(DataError, match="scale_train and scale_test"):
        load_split(tmp_path / "plain.npz", codes="mean")
    with pytest.raises(DataError, match="draw, mean"):
        load_split(tmp_path / "codes.npz", codes="median")
    with pytest.raises(DataError, match="binarization"):
        Split(torch.from_numpy(means).clamp(0, 1), None, "c", "train", binarize="threshold",
              sd=torch.from_numpy(scales))  # fmt: skip
    with pytest.raises(ValueError, match="Generator"):
        load_split(tmp_path / "codes.npz").batches(4)


def test_existing_path_without_suffix_is_a_file(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 2), np.float32))
    (tmp_path / "a.npy").rename(tmp_path / "plain")
    assert len(load_split(str(tmp_path / "plain"), "test")) == 1


@pytest.mark.parametrize(
    "content, phrase",
    [
        (np.zeros(10, np.float32), "shape"),
        (np.zeros((2, 2, 2, 2, 2), np.float32), "shape"),
        (np.array([[0.0, np.nan]] * 4, np.float32), "NaN"),
        (np.array([[0.0, np.inf]] * 4), "NaN or infinite"),
        (np.zeros((10, 2), np.int32), "int32"),
        (np.array([[{}]] * 3, dtype=object), "cannot read"),
    ],
    ids=["1-D", "5-D", "nan", "inf", "int32", "pickled"],
)
def test_bad_npy(tmp_path, content, phrase):
    np.save(tmp_path / "bad.npy", content, allow_pickle=True)
    with pytest.raises(DataError, match=phrase):
        load_split(tmp_path / "bad.npy")


def test_bad_npz_layouts(tmp_path):
    np.savez(tmp_path / "many.npz", a=np.zeros((4, 2)), b=np.zeros((4, 2)))
    with pytest.raises(DataError, match="x_train"):
        load_split(tmp_path / "many.npz")
    np.savez(tmp_path / "half.npz", x_train=np.zeros((4, 2)))
    with pytest.raises(DataError, match="x_test"):
        load_split(tmp_path / "half.npz")


def test_missing_array_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_split(tmp_path / "missing.npz")


# ------------------------------------------------------------------------------------------
# names and choices


def test_registered_datasets():
    assert DATASETS.names() == ["digits", "fashion-mnist", "grid25", "mnist", "ring8", "stacked-fashion-mnist"]


def test_unknown_name_lists_choices():
    with pytest.raises(ConfigError) as info:
        load_split("cifar-11")
    message = str(info.value)
    assert all(name in message for name in ("digits", "fashion-mnist", "mnist", ".npy", ".npz"))


def test_bad_split_lists_choices():
    with pytest.raises(DataError, match="train, valid, test"):
        load_split("digits", "validation")


def test_bad_binarize_lists_choices():
    with pytest.raises(DataError, match="none, dynamic, threshold, static"):
        load_split("digits", binarize="stochastic")



# --------------------------------------------------------------------------------------------
# Dequantization


def _grey_split(levels: int = 17, n: int = 400, seed: int = 0) -> Split:
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, levels, (n, 1, 4, 4), generator=g)
    return Split(k.float() / (levels - 1), None, "grey", "train", "none", seed, levels, True)


def test_dequantized_values_stay_in_their_grey_level_cell():
    split = _grey_split()
    k = torch.round(split.x * 16)
    for view in (split.fixed(), split.draw(torch.Generator().manual_seed(1))):
        assert torch.equal(torch.floor(view * 17), k)  # (k + u) / 17 with u in [0, 1)
        assert view.min() >= 0 and view.max() < 1


def test_dequantization_noise_is_uniform_and_fresh_per_pass():
    split = _grey_split(n=2000)
    g = torch.Generator().manual_seed(3)
    first, second = split.draw(g), split.draw(g)
    assert not torch.equal(first, second)
    assert torch.equal(split.fixed(), _grey_split(n=2000).fixed())  # scoring view is seeded
    u = (first * 17 - torch.round(split.x * 16)).flatten()
    # U[0, 1): mean 1/2, sd 1/sqrt(12); the mean of n draws has standard error sd / sqrt(n)
    se = (1 / 12) ** 0.5 / u.numel() ** 0.5
    assert abs(float(u.mean()) - 0.5) < 4 * se


def test_dequantize_is_refused_where_it_makes_no_sense(tmp_path):
    x = torch.rand(10, 4)
    with pytest.raises(DataError, match="nothing to dequantize"):
        Split(x, None, "floats", "train", "none", 0, None, True)
    with pytest.raises(DataError, match="binarize='none'"):
        Split(x, None, "grey", "train", "threshold", 0, 256, True)
    loaded = load_split("digits", "test", dequantize=True, limit=5)
    assert loaded.dequantize and loaded.levels == 17


# ------------------------------------------------------------------------------------------
# folders of images


def save_png(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode).save(path)
    return path


def grey_image(ident: int, size: tuple[int, int] = (4, 4), level: int = 0) -> np.ndarray:
    """A grey image that says who it is: pixel (0, 0) is its id, (0, 1) its class level, the rest
    a pattern of grey levels."""
    pixels = ((np.arange(size[0] * size[1]).reshape(size) * 37 + ident) % 256).astype(np.uint8)
    pixels[0, 0], pixels[0, 1] = ident, level
    return pixels


def class_folder(root: Path, counts: dict[str, int], ext: str = ".png") -> Path:
    """root/CLASS/NNN.png with grey images; image ids run over all classes in sorted order, and
    pixel (0, 1) is 100 * the class's rank in sorted order."""
    ident = 0
    for rank, name in enumerate(sorted(counts)):
        for i in range(counts[name]):
            save_png(root / name / f"{i:03d}{ext}", grey_image(ident, level=100 * rank))
            ident += 1
    return root


def ids(x: torch.Tensor) -> list[int]:
    return torch.round(x[:, 0, 0, 0] * 255).long().tolist()


def test_class_subfolders_are_labels_in_sorted_order(tmp_path):
    root = class_folder(tmp_path / "pets", {"dog": 12, "cat": 9, "emu": 9})
    (root / "README.txt").write_text("not an image: ignored")
    (root / "cat" / "notes.md").write_text("ignored too")
    train = load_split(root, "train", valid_fraction=0)
    test = load_split(root, "test")
    assert train.event_shape == (1, 4, 4) and train.levels == 256
    # every image is in exactly one of the two files, and its label is its folder's rank
    assert sorted(ids(train.x) + ids(test.x)) == list(range(30))
    assert len(test) == 3  # 10% held out
    for split in (train, test):
        level = torch.round(split.x[:, 0, 0, 1] * 255).long()
        assert torch.equal(split.y * 100, level)
    # grey levels scaled like every 8-bit image set
    first = np.asarray(ids(train.x)).argmin()
    assert torch.equal(train.x[first, 0], torch.from_numpy(grey_image(0)).float() / 255)


def test_the_held_out_test_file_does_not_depend_on_the_run_seed(tmp_path):
    root = tmp_path / "flat"
    for i in range(40):
        save_png(root / f"img{i:02d}.png", grey_image(i))
    a = load_split(root, "test", seed=0)
    b = load_split(root, "test", seed=7)
    assert a.y is None and ids(a.x) == ids(b.x) and len(a) == 4
    assert ids(a.x) == sorted(ids(a.x))  # file order
    # the validation split is carved from the training file with the run's seed
    train, valid = load_split(root, "train", seed=3), load_split(root, "valid", seed=3)
    assert sorted(ids(train.x) + ids(valid.x) + ids(a.x)) == list(range(40))
    assert len(valid) == round(0.1 * 36)
    assert ids(load_split(root, "valid", seed=4).x) != ids(valid.x)


def test_train_and_test_subfolders_are_the_two_files(tmp_path):
    root = tmp_path / "split"
    class_folder(root / "train", {"a": 5, "b": 5})
    class_folder(root / "test", {"b": 3, "c": 2})
    train = load_split(root, "train", valid_fraction=0)
    test = load_split(root, "test")
    assert len(train) == 10 and len(test) == 5
    # labels from the sorted union of class names: a=0, b=1, c=2
    assert train.y.tolist() == [0] * 5 + [1] * 5 and test.y.tolist() == [1] * 3 + [2] * 2


def test_sizes_and_channels(tmp_path):
    root = tmp_path / "mixed"
    rng = np.random.default_rng(0)
    save_png(root / "a.png", rng.integers(0, 256, (6, 6, 3), dtype=np.uint8))
    save_png(root / "b.jpg", rng.integers(0, 256, (8, 8), dtype=np.uint8))
    save_png(root / "c.png", rng.integers(0, 256, (8, 6), dtype=np.uint8))
    with pytest.raises(DataError, match="image_size= S") as info:
        load_split(root, "train")
    assert "\n" not in str(info.value)
    assert load_split(root, "test", image_size=4).event_shape == (3, 4, 4)  # one RGB image: 3
    assert load_split(root, "test", image_size=4, channels=1).event_shape == (1, 4, 4)
    grey = tmp_path / "grey"
    for i in range(3):
        save_png(grey / f"{i}.png", rng.integers(0, 256, (5, 7), dtype=np.uint8))  # 7 wide, 5 high
    assert load_split(grey, "test").event_shape == (1, 5, 7)
    rgb = load_split(grey, "test", channels=3)
    assert rgb.event_shape == (3, 5, 7) and torch.equal(rgb.x[:, 0], rgb.x[:, 2])


def _bad_png(kind: str, path: Path) -> None:
    if kind == "text":
        path.write_text("this is not a picture")
    else:
        save_png(path, np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8))
        path.write_bytes(path.read_bytes()[:-60])  # the end of the image data is missing


@pytest.mark.parametrize("stream, workers", [(False, 0), (True, 0), (True, 1)])
@pytest.mark.parametrize("kind", ["text", "truncated"])
def test_unreadable_images_are_reported_with_their_path(tmp_path, kind, stream, workers):
    root = tmp_path / "bad"
    for i in range(9):
        save_png(root / f"{i}.png", np.random.default_rng(i).integers(0, 256, (32, 32), dtype=np.uint8))
    _bad_png(kind, root / "5.png")
    with pytest.raises(DataError) as info:
        split = load_split(root, "train", valid_fraction=0, memory_budget=0 if stream else None, workers=workers)
        list(split.batches(4))  # a streamed split meets the pixels only here
    message = str(info.value)
    assert str(root / "5.png") in message and "\n" not in message


def test_layout_errors_are_one_line(tmp_path):
    both = tmp_path / "both"
    class_folder(both, {"a": 2})
    save_png(both / "loose.png", grey_image(9))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.txt").write_text("no images here")
    half = tmp_path / "half"
    class_folder(half / "train", {"a": 3})
    for root, phrase in ((both, "both images"), (empty, "no PNG/JPEG"), (half, "no test/")):
        with pytest.raises(DataError, match=phrase) as info:
            load_split(root, "train")
        assert "\n" not in str(info.value)


def grey_folder(root: Path, n: int = 40) -> Path:
    for i in range(n):
        save_png(root / f"{i:03d}.png", grey_image(i, size=(6, 6)))
    return root


@pytest.mark.parametrize("mode", [*BINARIZE_MODES, "dequantize"])
def test_streaming_serves_what_memory_serves(tmp_path, mode):
    """A streamed split serves the same examples in the same order as the in-memory one, with the
    same values where the view is deterministic; binarized and dequantized views follow their
    definition and are reproducible."""
    root = grey_folder(tmp_path / "g")
    options = {"binarize": "none", "dequantize": True} if mode == "dequantize" else {"binarize": mode}
    memory = load_split(root, "train", seed=1, **options)
    stream = load_split(root, "train", seed=1, memory_budget=0, **options)
    assert type(stream).__name__ == "StreamSplit" and len(stream) == len(memory) == 32
    assert stream.event_shape == memory.event_shape and stream.levels == memory.levels

    def one_pass(split, seed=5):
        batches = split.batches(10, generator=torch.Generator().manual_seed(seed), shuffle=True)
        assert len(batches) == 4
        return torch.cat(list(batches))

    a, b = one_pass(memory), one_pass(stream)
    assert a.shape == b.shape == (32, 1, 6, 6)
    if mode in ("none", "threshold"):
        assert torch.equal(a, b)
        assert torch.equal(memory.fixed(), stream.head(None))
        assert torch.equal(memory.fixed(), torch.cat(list(stream.fixed_batches(7))))
    elif mode == "dequantize":  # (k + u) / 256 stays in grey level k's cell: the same examples
        assert torch.equal(torch.floor(b * 256), torch.floor(a * 256)) and not torch.equal(a, b)
    else:  # Bernoulli draws: binary, and only where the grey level is not 0
        assert set(b.unique().tolist()) <= {0.0, 1.0}
        x = torch.cat(list(stream.batches(10, generator=torch.Generator().manual_seed(5), shuffle=True)))
        assert torch.equal(x, b)  # reproducible from the generator
        grey = one_pass(load_split(root, "train", seed=1, memory_budget=0))
        assert not b[grey == 0].any() and b[grey == 1].all()
    assert torch.equal(stream.head(None), stream.head(None))  # fixed view is fixed
    assert torch.equal(stream.head(5), torch.cat(list(stream.fixed_batches(5)))[:5])


def test_static_draws_of_a_stream_do_not_depend_on_the_order(tmp_path):
    root = grey_folder(tmp_path / "g")
    stream = load_split(root, "train", binarize="static", memory_budget=0)
    fixed = stream.head(None)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(stream), generator=torch.Generator().manual_seed(0))
    shuffled = torch.cat(list(stream.batches(7, generator=generator, shuffle=True)))
    assert torch.equal(shuffled, fixed[order])
    # a fresh pass draws afresh under dynamic binarization
    dynamic = load_split(root, "train", binarize="dynamic", memory_budget=0)
    g = torch.Generator().manual_seed(0)
    assert not torch.equal(torch.cat(list(dynamic.batches(7, generator=g))), torch.cat(list(dynamic.batches(7, generator=g))))


def test_the_memory_budget_decides_what_is_streamed(tmp_path):
    root = grey_folder(tmp_path / "g")  # 36 training images of 1 x 6 x 6 float32: 5184 bytes
    assert isinstance(load_split(root, "train", valid_fraction=0, memory_budget=5184 / 2**30), Split)
    assert not isinstance(load_split(root, "train", valid_fraction=0, memory_budget=5183 / 2**30), Split)
    assert isinstance(load_split(root, "train", valid_fraction=0), Split)  # None: always in memory


def test_streaming_through_worker_processes(tmp_path):
    root = grey_folder(tmp_path / "g")
    stream = load_split(root, "train", memory_budget=0, workers=2)
    memory = load_split(root, "train")
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = torch.cat(list(stream.batches(8, generator=g1, shuffle=True)))
    b = torch.cat(list(memory.batches(8, generator=g2, shuffle=True)))
    assert torch.equal(a, b)


def _stream_trainer(root: Path, run_dir: Path, crash_at: int | None = None):
    from vaelab.inference.objectives import get_objective
    from vaelab.models import build_model
    from vaelab.runs import config as cfg
    from vaelab.runs.trainer import Trainer

    train = load_split(root, "train", binarize="dynamic", memory_budget=0)
    valid = load_split(root, "valid", binarize="dynamic", memory_budget=0)
    torch.manual_seed(0)
    model = build_model("vae", train.event_shape, hidden=(16,), latent_dim=2)
    calls = {"n": 0}
    base = get_objective("elbo")

    def objective(model, x):
        if model.training:
            calls["n"] += 1
            if calls["n"] == crash_at:
                raise KeyboardInterrupt
        return base(model, x)

    config = cfg.TrainConfig(epochs=3, batch_size=8, patience=0)
    return Trainer(model, objective, train, valid, config, run_dir=run_dir, progress=False)


def test_training_from_a_stream_resumes_exactly(tmp_path):
    from vaelab.core.files import load_tensors

    root = grey_folder(tmp_path / "g")  # 32 training examples: 4 steps per epoch
    full = _stream_trainer(root, tmp_path / "full")
    result = full.fit()
    assert result.epochs == 3 and all(math.isfinite(r["valid_bound"]) for r in result.history)
    crashed = _stream_trainer(root, tmp_path / "crashed", crash_at=7)  # epoch 2, after one checkpoint
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    resumed = _stream_trainer(root, tmp_path / "crashed")
    resumed.load_checkpoint()
    assert resumed.state.epoch == 1
    resumed.fit()
    a, _ = load_tensors(tmp_path / "full" / "checkpoint" / "state.safetensors")
    b, _ = load_tensors(tmp_path / "crashed" / "checkpoint" / "state.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


# ------------------------------------------------------------------------------------------
# classes


def test_classes_keep_the_listed_labels_with_their_values(tmp_path):
    full = load_split("digits", "train", valid_fraction=0)
    kept = load_split("digits", "train", valid_fraction=0, classes=[7, 3])
    mask = (full.y == 3) | (full.y == 7)
    assert torch.equal(kept.y, full.y[mask]) and torch.equal(kept.x, full.x[mask])
    # the validation carve and the limit apply to the kept examples
    train = load_split("digits", "train", classes=[3, 7])
    valid = load_split("digits", "valid", classes=[3, 7])
    assert len(train) + len(valid) == len(kept) and set(valid.y.tolist()) <= {3, 7}
    assert torch.equal(load_split("digits", "train", classes=[3, 7], limit=5).y, train.y[:5])
    # .npz labels and image folders too
    np.savez(tmp_path / "d.npz", x_train=np.zeros((6, 2)), x_test=np.zeros((3, 2)),
             y_train=np.array([5, 9, 5, 1, 9, 9]), y_test=np.array([9, 1, 1]))
    assert load_split(tmp_path / "d.npz", "test", classes=[9]).y.tolist() == [9]
    root = class_folder(tmp_path / "pets", {"cat": 10, "dog": 10})
    test = load_split(root, "test", classes=[1])
    assert set(test.y.tolist()) == {1} and len(test) == (load_split(root, "test").y == 1).sum()


def test_classes_errors(tmp_path):
    np.save(tmp_path / "plain.npy", np.zeros((10, 3), np.float32))
    with pytest.raises(DataError, match="no labels") as info:
        load_split(tmp_path / "plain.npy", classes=[0])
    assert "\n" not in str(info.value)
    with pytest.raises(DataError, match="label 12 does not occur") as info:
        load_split("digits", classes=[1, 12])
    assert "\n" not in str(info.value)
    # the test file needs one of the labels, not all
    np.savez(tmp_path / "d.npz", x_train=np.zeros((6, 2)), x_test=np.zeros((3, 2)),
             y_train=np.array([5, 9, 5, 1, 9, 9]), y_test=np.array([9, 1, 1]))
    assert load_split(tmp_path / "d.npz", "test", classes=[5, 9]).y.tolist() == [9]
    with pytest.raises(DataError, match="label 5 does not occur in the test file"):
        load_split(tmp_path / "d.npz", "test", classes=[5])


# ------------------------------------------------------------------------------------------
# channels-last arrays


def test_channels_last_arrays_are_transposed_with_a_note(tmp_path, caplog):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 6, 3), dtype=np.uint8)  # N x H x W x C
    np.save(tmp_path / "hwc.npy", images)
    with caplog.at_level("WARNING", logger="vaelab"):
        train = load_split(tmp_path / "hwc.npy", valid_fraction=0)
        load_split(tmp_path / "hwc.npy", "test")
    assert train.event_shape == (3, 8, 6)
    assert torch.equal(train.x, as_float(images[:18].transpose(0, 3, 1, 2))[:, 0])
    notes = [r.getMessage() for r in caplog.records if r.name == "vaelab"]
    assert len(notes) == 1 and "channels last" in notes[0] and "\n" not in notes[0]


def test_channels_first_arrays_are_left_alone(tmp_path, caplog):
    images = np.random.default_rng(0).integers(0, 256, (20, 3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "chw.npz", x_train=images, x_test=images[:4])
    with caplog.at_level("WARNING", logger="vaelab"):
        train = load_split(tmp_path / "chw.npz", valid_fraction=0)
    assert train.event_shape == (3, 8, 8) and torch.equal(train.x, as_float(images)[:, 0])
    assert not [r for r in caplog.records if r.name == "vaelab"]


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    wide = (np.arange(16).reshape(4, 4) * 4369).astype(np.uint16)  # 0 .. 65535
    for i in range(3):
        save_png(tmp_path / "deep" / f"{i}.png", wide)
    x = load_split(tmp_path / "deep", "test").x
    assert torch.equal(x[0, 0], torch.from_numpy(np.rint(wide / 257)).float() / 255)


def test_a_changed_folder_is_scanned_again(tmp_path):
    root = class_folder(tmp_path / "pets", {"cat": 10, "dog": 10})
    before = len(load_split(root, "train", valid_fraction=0))
    class_folder(tmp_path / "more", {"emu": 10})
    (tmp_path / "more" / "emu").rename(root / "emu")
    after = load_split(root, "train", valid_fraction=0)
    assert before == 18 and len(after) == 27 and after.y.max() == 2


def test_a_folder_runs_image_options_leave_other_data_alone(tmp_path):
    """--image-size and --channels shape a run's folders only: the run's preparation applied to
    other data (an array to score against it) takes the array as it is, while training on data
    that is not a folder refuses them."""
    import dataclasses

    from vaelab.runs import config as cfg
    from vaelab.runs.rundir import check_data_options, load_data

    root = grey_folder(tmp_path / "g")
    config = cfg.build({"data": {"data": str(root), "image_size": 4, "channels": 3}})
    check_data_options(config)
    assert load_data(config, "test").event_shape == (3, 4, 4)
    np.save(tmp_path / "a.npy", np.zeros((10, 1, 4, 4), np.uint8))
    other = dataclasses.replace(config, data=dataclasses.replace(config.data, data=str(tmp_path / "a.npy")))
    assert load_data(other, "test").event_shape == (1, 4, 4)
    with pytest.raises(ConfigError, match="image_size= applies to folders"):
        check_data_options(other)
