"""Atomic writes and safe loading."""

from __future__ import annotations

import pytest
import torch

from vaelab.errors import RunError
from vaelab.files import atomic_path, atomic_write_bytes, load_tensors, save_tensors


def test_a_failed_write_leaves_the_old_file_and_no_debris(tmp_path):
    target = tmp_path / "model.safetensors"
    atomic_write_bytes(target, b"good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_tensors_and_metadata_round_trip(tmp_path):
    tensors = {"a": torch.arange(6.0).view(2, 3).T, "rng": torch.get_rng_state()}  # non-contiguous too
    save_tensors(tmp_path / "t.safetensors", tensors, {"state": '{"epoch": 3}'})
    loaded, meta = load_tensors(tmp_path / "t.safetensors")
    assert torch.equal(loaded["a"], tensors["a"]) and torch.equal(loaded["rng"], tensors["rng"])
    assert meta["state"] == '{"epoch": 3}'


@pytest.mark.parametrize("content", [b"", b"garbage", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad json"])
def test_corrupt_safetensors_is_a_run_error(tmp_path, content):
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    with pytest.raises(RunError, match="corrupt"):
        load_tensors(path)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_get_the_permissions_of_any_new_file(tmp_path, umask):
    """The temporary file of an atomic write is created 0600; what replaces the target must have
    0666 less the umask, as a file opened for writing would."""
    import os
    import stat

    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "config.json", b"{}")
        save_tensors(tmp_path / "model.safetensors", {"a": torch.zeros(2)})
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert modes == {name: 0o666 & ~umask for name in ("config.json", "model.safetensors", "plain.txt")}
