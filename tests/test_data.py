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
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab import data
from vaelab.data import (
    BINARIZE_MODES,
    DATASETS,
    Split,
    load_dataset,
    load_split,
    read_idx,
    resolve_idx_files,
)
from vaelab.errors import ConfigError, DataError

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
    monkeypatch.setattr(data, "SYSTEM_DIRS", {"fashion-mnist": [], "mnist": []})
    monkeypatch.setattr(data, "MIRRORS", {"fashion-mnist": [dead_url()], "mnist": [dead_url()]})
    monkeypatch.setattr(data, "MD5", {name: dict(table) for name, table in data.MD5.items()})
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
    monkeypatch.setitem(data.SYSTEM_DIRS, "fashion-mnist", [str(tmp_path / "usr-share")])
    test = load_split("fashion-mnist", "test", download=False)
    assert torch.equal(test.x, as_float(arrays["t10k-images"]))


def test_search_order(tmp_path, monkeypatch):
    places = {
        "data_dir": tmp_path / "given",
        "env": tmp_path / "env" / "mnist",
        "cache": cache_dir(tmp_path, "mnist"),
        "system": tmp_path / "system",
    }
    for seed, folder in enumerate(places.values()):
        make_dataset(folder, seed=seed)
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "env"))
    monkeypatch.setitem(data.SYSTEM_DIRS, "mnist", [str(places["system"])])
    for key, folder in places.items():
        found = resolve_idx_files("mnist", places["data_dir"], download=False)
        assert found["t10k-images"].parent == folder, key
        for path in folder.iterdir():  # remove this place: the next one must win
            path.unlink()
    with pytest.raises(DataError):
        resolve_idx_files("mnist", places["data_dir"], download=False)


def test_data_dir_wins_over_vaelab_data(tmp_path, monkeypatch):
    given = make_dataset(tmp_path / "given", seed=1)
    make_dataset(tmp_path / "env", seed=2)
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "env"))
    test = load_split("mnist", "test", data_dir=tmp_path / "given", download=False)
    assert torch.equal(test.x, as_float(given["t10k-images"]))


def test_incomplete_folder_is_skipped(tmp_path, monkeypatch):
    make_dataset(tmp_path / "given", seed=1)
    (tmp_path / "given" / "t10k-labels-idx1-ubyte.gz").unlink()
    env = make_dataset(tmp_path / "env", seed=2)
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "env"))
    test = load_split("mnist", "test", data_dir=tmp_path / "given", download=False)
    assert torch.equal(test.x, as_float(env["t10k-images"]))


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_missing_without_download(tmp_path, name):
    with pytest.raises(DataError) as info:
        load_split(name, data_dir=tmp_path / "nowhere", download=False)
    message = str(info.value)
    assert "\n" not in message
    assert str(tmp_path / "nowhere") in message  # where it looked
    assert str(cache_dir(tmp_path, name)) in message  # where to put the files
    assert "VAELAB_DATA" in message and "--data-dir" in message
    assert ("apt-get install dataset-fashion-mnist" in message) == (name == "fashion-mnist")


# ------------------------------------------------------------------------------------------
# downloading


def test_download_into_cache(tmp_path, monkeypatch, serve):
    arrays = make_dataset(tmp_path / "mirror")
    monkeypatch.setitem(data.MIRRORS, "mnist", [serve(tmp_path / "mirror")])
    monkeypatch.setitem(data.MD5, "mnist", md5_table(tmp_path / "mirror"))
    test = load_split("mnist", "test")
    assert torch.equal(test.x, as_float(arrays["t10k-images"]))
    cache = cache_dir(tmp_path, "mnist")
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{b}.gz" for b in FILES.values())
    for path in cache.iterdir():
        assert path.read_bytes() == (tmp_path / "mirror" / path.name).read_bytes()


def test_download_progress_goes_to_stderr(tmp_path, monkeypatch, serve, capsys):
    make_dataset(tmp_path / "mirror")
    monkeypatch.setitem(data.MIRRORS, "mnist", [serve(tmp_path / "mirror")])
    monkeypatch.setitem(data.MD5, "mnist", md5_table(tmp_path / "mirror"))
    resolve_idx_files("mnist", progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "t10k-images-idx3-ubyte.gz" in err


def test_download_is_quiet_by_default(tmp_path, monkeypatch, serve, capsys):
    make_dataset(tmp_path / "mirror")
    monkeypatch.setitem(data.MIRRORS, "mnist", [serve(tmp_path / "mirror")])
    monkeypatch.setitem(data.MD5, "mnist", md5_table(tmp_path / "mirror"))
    resolve_idx_files("mnist")
    assert capsys.readouterr() == ("", "")


def test_checksum_mismatch_is_rejected(tmp_path, monkeypatch, serve):
    make_dataset(tmp_path / "mirror")
    table = md5_table(tmp_path / "mirror")
    got = table["train-images-idx3-ubyte.gz"]
    table["train-images-idx3-ubyte.gz"] = "0" * 32
    monkeypatch.setitem(data.MIRRORS, "mnist", [serve(tmp_path / "mirror")] * 2)
    monkeypatch.setitem(data.MD5, "mnist", table)
    with pytest.raises(DataError) as info:
        load_split("mnist")
    message = str(info.value)
    assert "train-images-idx3-ubyte.gz" in message and "0" * 32 in message and got in message
    cache = cache_dir(tmp_path, "mnist")
    assert not (cache / "train-images-idx3-ubyte.gz").exists()
    assert not list(cache.glob(".*"))  # no temporary file left behind


def test_dead_first_mirror_falls_back_to_second(tmp_path, monkeypatch, serve):
    arrays = make_dataset(tmp_path / "mirror")
    monkeypatch.setitem(data.MIRRORS, "fashion-mnist", [dead_url(), serve(tmp_path / "mirror")])
    monkeypatch.setitem(data.MD5, "fashion-mnist", md5_table(tmp_path / "mirror"))
    train = load_split("fashion-mnist", valid_fraction=0)
    assert torch.equal(train.x, as_float(arrays["train-images"]))


def test_all_mirrors_dead(tmp_path, monkeypatch):
    monkeypatch.setitem(data.MIRRORS, "fashion-mnist", [dead_url(), dead_url()])
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
    monkeypatch.setitem(data.MIRRORS, "mnist", [serve(tmp_path / "mirror", TruncatingHandler)])
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
