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
