"""Files users can trust: atomic writes, safetensors weights, JSON metadata, run directories.

A write goes to a temporary file in the same directory, is fsync'ed, then ``os.replace``d over
the target, so a crash at any moment leaves either the old file or the new one, never half of
one. Loading never unpickles.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks (see run_lock)
    fcntl = None  # type: ignore[assignment]

from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import Tensor, nn

from .errors import RunBusyError, RunError, RunNotFoundError, WriteError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.safetensors"
METRICS_FILE = "metrics.jsonl"


def _umask() -> int:
    """The process's umask, read without changing it where the system allows: setting it to probe
    it (the portable way) would race with threads that create files meanwhile."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# What a full disk, a reached quota, or a read-only or foreign folder raise on a write
_WRITE_ERRNOS = frozenset(
    code for code in (getattr(errno, name, None) for name in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG"))
    if code is not None
)


@contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turns the operating system's refusal to write ``path`` into one ``WriteError`` line."""
    try:
        yield
    except WriteError:
        raise
    except OSError as err:
        if err.errno not in _WRITE_ERRNOS:
            raise
        raise WriteError(f"cannot write {path}: {err.strerror or err}; the file there before (if any) is unchanged") from None


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path to write; on success it replaces ``path`` atomically. A write the
    system refuses (full disk, read-only folder) raises ``WriteError`` and leaves ``path`` as it was."""
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        try:
            yield tmp_path
            with open(tmp_path, "rb+") as fh:
                os.fsync(fh.fileno())
            # mkstemp creates the file readable by its owner only; a run's files get the permissions
            # any other new file would have (0666 less the umask), so others can read shared runs
            os.chmod(tmp_path, 0o666 & ~_umask())
            os.replace(tmp_path, path)
            _fsync_dir(path.parent)
        finally:
            tmp_path.unlink(missing_ok=True)


# run directories this process holds the lock of -> (directory fd, how many holders)
_HELD: dict[str, list[int]] = {}


@contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Holds an exclusive advisory lock on a run directory while a process trains into it, so that
    a second process (another `vaelab train --resume`, a job requeued while the first still runs)
    gets ``RunBusyError`` instead of interleaving checkpoints. The lock is ``flock`` on the
    directory itself: no lock file is left behind, and the system releases it when the process
    dies, however it dies (a SIGKILLed run can be resumed at once). Re-entrant within a process.
    Where ``fcntl`` does not exist (Windows) nothing is locked."""
    key = os.path.realpath(run_dir)
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield
        finally:
            _HELD[key][1] -= 1
        return
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunBusyError(
                    f"{run_dir} is being trained by another process right now; wait for it to finish, or train into "
                    f"another directory"
                ) from None
            raise
        _HELD[key] = [fd, 1]
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_tensors(path: str | Path, tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> None:
    """Saves tensors (and string metadata) as safetensors, atomically."""
    # tensors from any device: a run trained on a GPU loads on a CPU-only machine
    contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(contiguous, metadata=metadata))


def load_tensors(path: str | Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Loads a safetensors file; raises RunError if it is missing or corrupt."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RunNotFoundError(f"{path} does not exist") from None
    try:
        tensors = st_load(raw)
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + header_len])
    except (SafetensorError, ValueError, UnicodeDecodeError) as err:
        raise RunError(f"{path} is corrupt ({err}); it cannot be loaded") from None
    return tensors, header.get("__metadata__", {}) or {}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors file, read from its header alone (a checkpoint's
    training state without its weights); raises RunError if it is missing or corrupt."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            size = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(size))
    except FileNotFoundError:
        raise RunNotFoundError(f"{path} does not exist") from None
    except (ValueError, UnicodeDecodeError) as err:
        raise RunError(f"{path} is corrupt ({err}); it cannot be loaded") from None
    if not isinstance(header, dict):
        raise RunError(f"{path} is corrupt (its header is not a JSON object); it cannot be loaded")
    return header.get("__metadata__", {}) or {}


def save_model(path: str | Path, model: nn.Module, state: dict[str, Tensor] | None = None) -> None:
    """Saves a model's weights (or the given state dict) as safetensors."""
    state = model.state_dict() if state is None else state
    save_tensors(path, state, {"format": "vaelab-model"})


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Loads weights saved by ``save_model`` into ``model``; a shape or key mismatch is a RunError."""
    tensors, _ = load_tensors(path)
    try:
        model.load_state_dict(tensors)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise RunError(f"{path} does not match the model in config.json ({detail})") from None


def append_line(path: str | Path, text: str) -> None:
    """Appends one line and fsyncs, so a metrics line is on disk before the checkpoint that counts it."""
    with _writing(Path(path)), open(path, "a") as fh:
        fh.write(text + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a run's ``metrics.jsonl`` (a torn last line is ignored)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return records

