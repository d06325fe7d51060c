"""Atomic writes and safe loading."""

from __future__ import annotations

import pytest
import torch

from vaelab.core.errors import RunError
from vaelab.core.files import (
    atomic_path,
    atomic_write_bytes,
    load_tensors,
    save_tensors,
)


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


# -- what the system refuses: a full disk, a read-only folder --------------------------------

import errno  # noqa: E402
import os  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from vaelab.core.errors import RunBusyError, VaelabError, WriteError  # noqa: E402
from vaelab.core.files import append_line, read_metadata, run_lock  # noqa: E402


def _refuse_writes(monkeypatch, code: int) -> None:
    def refuse(self, data):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(pathlib.Path, "write_bytes", refuse)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_a_refused_write_is_one_write_error_and_the_old_file_stands(tmp_path, monkeypatch, code):
    path = tmp_path / "config.json"
    path.write_bytes(b"old")
    _refuse_writes(monkeypatch, code)
    with pytest.raises(WriteError) as caught:
        atomic_write_bytes(path, b"new")
    err = caught.value
    assert isinstance(err, OSError) and isinstance(err, VaelabError)  # both kinds of caller catch it
    assert str(err) == f"cannot write {path}: {os.strerror(code)}; the file there before (if any) is unchanged"
    monkeypatch.undo()
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["config.json"]


def test_other_os_errors_are_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    _refuse_writes(monkeypatch, errno.EIO)
    with pytest.raises(OSError) as caught:
        atomic_write_bytes(tmp_path / "x", b"new")
    assert not isinstance(caught.value, WriteError) and caught.value.errno == errno.EIO


def test_a_metrics_line_the_disk_refuses_is_a_write_error(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteError, match="No space left on device"):
        append_line(tmp_path / "metrics.jsonl", "{}")


# another process that holds a directory's lock until it is killed
HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""


def test_a_run_directory_is_locked_against_other_processes_and_reentrant_in_one(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with run_lock(run):
        with run_lock(run):  # the trainer inside start_run takes it again
            pass
        probe = subprocess.run([sys.executable, "-c", "import fcntl, os, sys\nfd = os.open(sys.argv[1], os.O_RDONLY)\n"
                                "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    print('busy')",
                                str(run)], capture_output=True, text=True)  # fmt: skip
        assert probe.stdout.strip() == "busy"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunBusyError, match="is being trained by another process right now"):
            with run_lock(run):
                pass
    finally:
        holder.kill()
        holder.wait()
    with run_lock(run):  # a killed holder's lock is gone with it
        pass
    assert [p.name for p in run.iterdir()] == []  # no lock file is left behind


def test_metadata_is_read_from_the_header_alone(tmp_path):
    path = tmp_path / "state.safetensors"
    save_tensors(path, {"w": torch.ones(3)}, {"state": '{"epoch": 4}'})
    assert read_metadata(path) == load_tensors(path)[1] == {"state": '{"epoch": 4}'}
    path.write_bytes(path.read_bytes()[:12])  # a torn header
    with pytest.raises(RunError, match="is corrupt"):
        read_metadata(path)
    with pytest.raises(FileNotFoundError):
        read_metadata(tmp_path / "none.safetensors")
