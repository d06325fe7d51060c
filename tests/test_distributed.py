"""Training under torchrun (DistributedDataParallel, gloo on the CPU): two processes reach one
process's weights, only rank 0 writes, a killed job resumes exactly, --max-restarts works."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_train import _checkpoint_epoch, family_config

from vaelab.core.errors import ConfigError
from vaelab.core.files import read_metrics
from vaelab.core import distributed
from vaelab.runs.lifecycle import _setup

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
# digits: 1293 training images in batches of 50 are 26 steps an epoch, 104 in 4 epochs
CONFIGS = {
    "aae-gaussian-encoder-mog": ["--model", "aae", "--encoder", "gaussian", "--prior", "mog:3", "--binarize", "none",
                                 "--lr-disc", "5e-4"],
    "elbo-free-bits-warmup": ["--free-bits", "0.3", "--kl-warmup", "2", "--patience", "0"],
    # one process takes the hand-derived step (fused.FusedELBO), torchrun the autograd one under DDP
    "elbo-fused-in-one-process": ["--patience", "0"],
    "iwae-dreg-full-vamp": ["--objective", "iwae", "--k", "5", "--grad-estimator", "dreg", "--posterior", "full",
                            "--prior", "vamp:5", "--patience", "0"],
}


def _train(out: Path, *extra: str, epochs: int = 4) -> list[str]:
    return ["-m", "vaelab", "train", "--data", "digits", "--binarize", "dynamic", "--hidden", "32", "--latent-dim", "4",
            "--epochs", str(epochs), "--batch-size", "50", "--device", "cpu", "--out", str(out),
            "--quiet", *extra]  # fmt: skip


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out


# Adam divides each gradient by its running root mean square, so a weight whose gradient is itself
# rounding noise (true value ~0) steps by up to the learning rate whichever way the noise points, and
# two correct computations of it part far beyond rounding: on one machine, 1 of the 2,048 first-layer
# weights (the weight of a border pixel that is non-zero in 5 of the 1,293 images) parted by 2e-5
# (fused step against two processes) and 3e-5 (autograd in one process against two). A missing or
# double-counted gradient of a process moves every weight of its tensor by that much instead, so
# all but a few per thousand of each tensor's weights must agree within float32 rounding.
OUTLIERS = 0.005


def _assert_same_weights(got: torch.Tensor, want: torch.Tensor, atol: float, key: str) -> None:
    off = ((got - want).abs() > atol + 1e-5 * want.abs()).sum().item()
    assert off <= OUTLIERS * want.numel(), (key, off, want.numel(), (got - want).abs().max().item())


@pytest.mark.parametrize("name", CONFIGS)
def test_two_processes_reach_the_weights_of_one(name, tmp_path):
    """104 steps with the same global batch and seed: every weight within float32 rounding of
    the one-process run (summation order differs), the same metrics, and rank 0 alone spoke."""
    _run([sys.executable, *_train(tmp_path / "one", *CONFIGS[name])])
    two = _run([*TORCHRUN, *_train(tmp_path / "two", *CONFIGS[name])])
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    # float32 summation order only: 3.4e-7 at most was measured over the three autograd configurations.
    # Against the hand-derived step of one process, two computations of the gradient differ by
    # rounding at every step and Adam carries it on: 2.8e-6 measured after 104 steps, where a step
    # taken without the other process's gradient would move weights by up to the learning rate (1e-3).
    atol = 1e-5 if name == "elbo-fused-in-one-process" else 2e-6
    for key in a:
        _assert_same_weights(b[key], a[key], atol, key)
    ra, rb = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["epoch"] for r in rb] == [1, 2, 3, 4]
    for x, y in zip(ra, rb):
        assert x.keys() == y.keys()
        for key in x:
            if "second" not in key and x[key] is not None:  # timings differ
                assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-5), key
    assert two.stdout.count("trained 4 epochs") == 1 and two.stdout.count("epoch 4/4") == 1


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> bytes:
    """The weights of an uninterrupted two-process run of 8 epochs."""
    ref = tmp_path_factory.mktemp("ref") / "run"
    _run([*TORCHRUN, *_train(ref, epochs=8)])
    return (ref / "model.safetensors").read_bytes()


def _kill_a_rank(cmd: list[str], run: Path, which: int) -> subprocess.Popen:
    """Starts the torchrun job ``cmd`` training into ``run`` and SIGKILLs its worker ``which`` (by
    pid order) once the checkpoint of epoch 2 exists; returns the job, still running."""
    job = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 180
    while job.poll() is None and _checkpoint_epoch(run) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    workers = _workers(job.pid)
    assert len(workers) == 2, "the job finished before it could be killed"
    os.kill(workers[which], signal.SIGKILL)
    return job


def test_a_killed_rank_stops_the_job_and_resume_continues_exactly(tmp_path, uninterrupted):
    """SIGKILL to one rank after the checkpoint of epoch 2: torchrun ends the job; torchrun with
    --resume then ends with the weights of an uninterrupted two-process run, bit for bit."""
    run = tmp_path / "killed"
    job = _kill_a_rank([*TORCHRUN, *_train(run, epochs=8)], run, -1)
    job.communicate(timeout=120)
    assert job.returncode != 0
    assert 2 <= _checkpoint_epoch(run) < 8
    _run([*TORCHRUN, "-m", "vaelab", "train", "--resume", str(run), "--quiet", "--device", "cpu"])
    assert (run / "model.safetensors").read_bytes() == uninterrupted
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, 9))


def test_max_restarts_with_resume_if_exists_recovers_from_a_killed_rank(tmp_path, uninterrupted):
    """The documented command: torchrun --max-restarts=1 ... --out RUN --resume-if-exists. One
    rank is killed mid-run; torchrun restarts both, they continue from the checkpoint, and the
    job ends with status 0 and the uninterrupted run's weights."""
    run = tmp_path / "restarted"
    cmd = [*TORCHRUN[:-1], "--nproc_per_node=2", "--max-restarts=1", *_train(run, "--resume-if-exists", epochs=8)]
    job = _kill_a_rank(cmd, run, 0)
    out, err = job.communicate(timeout=180)
    assert job.returncode == 0, err[-3000:]
    assert (run / "model.safetensors").read_bytes() == uninterrupted
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, 9))
    # a requeue of the finished job has nothing to do
    again = _run([*TORCHRUN, *_train(run, "--resume-if-exists", epochs=8)])
    assert again.stdout.count("nothing to do") == 1


def _workers(agent: int) -> list[int]:
    """The worker processes torchrun's agent started (its children), by pid."""
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(agent)], capture_output=True, text=True).stdout
    return sorted(int(p) for p in out.split())


def test_resume_if_exists_refuses_another_configuration(tmp_path):
    run = tmp_path / "r"
    _run([sys.executable, *_train(run, epochs=1)])
    out = subprocess.run([sys.executable, *_train(run, "--resume-if-exists", "--latent-dim", "3", epochs=1)],
                         env=ENV, capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "holds a run with another configuration (model.latent_dim" in out.stderr
    same = _run([sys.executable, *_train(run, "--resume-if-exists", epochs=1)])
    assert "nothing to do" in same.stdout
    for bad in (["--resume", str(run), "--resume-if-exists"], ["--resume-if-exists"]):
        out = subprocess.run([sys.executable, "-m", "vaelab", "train", *bad], env=ENV, capture_output=True, text=True)
        assert out.returncode == 2 and "--resume-if-exists goes with --out RUN" in out.stderr


def test_rows_split_every_batch_in_rank_order():
    for total in (0, 1, 3, 50, 51, 99):
        for size in (1, 2, 3, 4):
            parts = [distributed.rows(total, distributed.World(r, size)) for r in range(size)]
            assert parts[0][0] == 0 and sum(n for _, n in parts) == total
            assert all(s + n == t for (s, n), (t, _) in zip(parts, parts[1:]))
            assert max(n for _, n in parts) - min(n for _, n in parts) <= 1


def test_the_vqvae_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setattr(distributed, "world", lambda: distributed.World(0, 2))
    with pytest.raises(ConfigError, match="supports the VAE family and the adversarial models; the VQ-VAE.*without torchrun"):
        _setup(family_config("vqvae", 1), None, False, device="cpu")


def test_torchrun_needs_an_out_directory(tmp_path):
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}
    out = subprocess.run([sys.executable, "-m", "vaelab", "train", "--data", "digits", "--epochs", "1"], env=env,
                         capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert out.returncode == 2 and "under torchrun, name the run directory with --out RUN" in out.stderr
    assert not (tmp_path / "runs").exists()


# -- evaluation ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval") / "run"
    _run([sys.executable, *_train(run, "--posterior", "iaf:1", epochs=1)])
    return run


@pytest.mark.parametrize("k", ["300", "1500"])  # several examples a pass; one example in two chunks a pass
def test_two_processes_evaluate_exactly_as_one(trained, k):
    flags = ["evaluate", str(trained), "--k", k, "--limit", "37", "--seed", "3", "--bounds", "1,10", "--json",
             "--device", "cpu"]  # fmt: skip
    one = _run([sys.executable, "-m", "vaelab", *flags])
    two = _run([*TORCHRUN, "-m", "vaelab", *flags])
    assert json.loads(two.stdout) == json.loads(one.stdout)  # every key, bit for bit
    assert len(two.stdout.strip().splitlines()) == 1  # rank 0 alone printed


def test_evaluate_under_torchrun_refuses_what_it_cannot_split(trained, tmp_path):
    env = {**ENV, "WORLD_SIZE": "2", "RANK": "0"}  # no rendezvous: refused before joining one
    out = subprocess.run([sys.executable, "-m", "vaelab", "evaluate", str(trained), "--method", "ais"], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and "under torchrun, vaelab evaluate splits --method is" in out.stderr
    gan = tmp_path / "gan"
    _run([sys.executable, "-m", "vaelab", "train", "--model", "gan", "--data", "digits", "--binarize", "none",
          "--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--out", str(gan), "--quiet"])  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "vaelab", "evaluate", str(gan)], env=env, capture_output=True, text=True)
    assert out.returncode == 2 and "evaluate this --model gan run in one process" in out.stderr
