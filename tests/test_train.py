"""The trainer: learning, model selection, early stopping, divergence, checkpoint/resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from torch import nn

from vaelab.core.errors import ConfigError, RunError, RunFinishedError, TrainingDiverged
from vaelab.core.files import load_tensors, read_metrics
from vaelab.data.load import load_split
from vaelab.inference.objectives import get_objective
from vaelab.models import build_model
from vaelab.runs import config as cfg
from vaelab.runs.lifecycle import resume_run, start_run
from vaelab.runs.trainer import Trainer


def small_vae(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("vae", (1, 8, 8), likelihood="bernoulli", net="mlp", hidden=(64,),
                       activation="tanh", latent_dim=4, obs_precision=1.0)


@pytest.fixture(scope="module")
def digits():
    train = load_split("digits", "train", binarize="threshold", limit=400)
    valid = load_split("digits", "valid", binarize="threshold", limit=200)
    return train, valid


def tcfg(**kw) -> cfg.TrainConfig:
    return cfg.TrainConfig(**{"epochs": 3, "batch_size": 50, "lr": 3e-3, "patience": 0, **kw})


def test_training_improves_the_validation_bound(digits):
    train, valid = digits
    trainer = Trainer(small_vae(), get_objective("elbo"), train, valid, tcfg(epochs=8), progress=False)
    result = trainer.fit()
    bounds = [r["valid_bound"] for r in result.history]
    assert len(bounds) == 8
    # a fresh model scores about -64*log(2) = -44 nats on 64 binary pixels; training must beat it
    assert bounds[-1] > bounds[0] + 5
    for key in ("epoch", "train_seconds", "examples_per_second", "train_bound", "train_reconstruction",
                "train_kl", "valid_bound", "valid_reconstruction", "valid_kl", "train_loss"):
        assert key in result.history[0]
    assert result.history[0]["examples_per_second"] == pytest.approx(len(train) / result.history[0]["train_seconds"])


class Scalar(NamedTuple):
    objective: torch.Tensor
    bound: torch.Tensor


class Drift(nn.Module):
    """A model whose validation bound gets worse with every step: for early stopping."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))


def drifting(model, x):
    value = model.w.expand(x.shape[0])
    return Scalar(objective=value, bound=-value)  # training raises w, which lowers the bound


def test_early_stopping_keeps_the_best_model(digits, tmp_path):
    train, valid = digits
    model = Drift()
    trainer = Trainer(model, drifting, train, valid, tcfg(epochs=50, patience=3), run_dir=tmp_path, progress=False)
    result = trainer.fit()
    assert result.epochs == 4 and result.best_epoch == 1
    assert "3 epochs" in result.stop_reason
    # the final weights are the best epoch's, both in memory and on disk
    w_after_epoch1 = trainer.history[0]["valid_bound"] * -1
    assert model.w.item() == pytest.approx(w_after_epoch1)
    weights, _ = load_tensors(tmp_path / "model.safetensors")
    assert float(weights["w"]) == pytest.approx(w_after_epoch1)
    assert [r["epoch"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_without_validation_the_last_model_is_kept(digits, tmp_path):
    train, _ = digits
    model = Drift()
    result = Trainer(model, drifting, train, None, tcfg(epochs=3), run_dir=tmp_path, progress=False).fit()
    assert result.best_epoch == 3 and math.isnan(result.best_bound)
    weights, _ = load_tensors(tmp_path / "model.safetensors")
    assert float(weights["w"]) == model.w.item() > 0


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(digits, tmp_path):
    train, valid = digits
    calls = {"n": 0}
    objective = get_objective("elbo")

    def poisoned(model, x):
        result = objective(model, x)
        if model.training:
            calls["n"] += 1
            if calls["n"] == 12:  # in the second epoch (8 batches per epoch)
                return result._replace(objective=result.objective * float("nan"))
        return result

    model = small_vae()
    trainer = Trainer(model, poisoned, train, valid, tcfg(epochs=5), run_dir=tmp_path, progress=False)
    with pytest.raises(TrainingDiverged, match=r"epoch 2, step 4.*epoch 1.*--lr"):
        trainer.fit()
    tensors, meta = load_tensors(tmp_path / "checkpoint" / "state.safetensors")
    assert json.loads(meta["state"])["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    assert all(torch.isfinite(p).all() for p in model.parameters()), "the bad step reached the weights"


def test_resume_after_interruption_is_bitwise_identical(digits, tmp_path):
    """Interrupt mid-epoch (simulating a crash), restore from the checkpoint, finish: the weights,
    optimizer state and metrics equal an uninterrupted run's."""
    train, valid = digits
    config = tcfg(epochs=4, patience=0)

    def run(run_dir, crash_at=None):
        calls = {"n": 0}
        base = get_objective("elbo")

        def objective(model, x):
            if model.training:
                calls["n"] += 1
                if calls["n"] == crash_at:
                    raise KeyboardInterrupt
            return base(model, x)

        trainer = Trainer(small_vae(), objective, train, valid, config, run_dir=run_dir, progress=False)
        return trainer, objective

    full, _ = run(tmp_path / "full")
    full.fit()
    crashed, _ = run(tmp_path / "crashed", crash_at=21)  # epoch 3, after two checkpoints
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    resumed, _ = run(tmp_path / "crashed")
    resumed.load_checkpoint()
    assert resumed.state.epoch == 2
    resumed.fit()
    a, _ = load_tensors(tmp_path / "full" / "checkpoint" / "state.safetensors")
    b, _ = load_tensors(tmp_path / "crashed" / "checkpoint" / "state.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (tmp_path / "full" / "model.safetensors").read_bytes() == (tmp_path / "crashed" / "model.safetensors").read_bytes()


def _train_cmd(out: Path) -> list[str]:
    return [sys.executable, "-m", "vaelab", "train", "--data", "digits", "--binarize", "dynamic",
            "--hidden", "64", "--latent-dim", "4", "--epochs", "12", "--batch-size", "20",
            "--patience", "0", "--out", str(out), "--quiet"]


def _checkpoint_epoch(run_dir: Path) -> int:
    path = run_dir / "checkpoint" / "state.safetensors"
    try:
        _, meta = load_tensors(path)
        return json.loads(meta["state"])["epoch"]
    except (RunError, KeyError):
        return 0


def kill_and_resume(cmd: list[str], run: Path, kills, env: dict[str, str]) -> None:
    """Runs ``cmd`` (a `vaelab train` into ``run``), SIGKILLs it once for each (epoch, delay) of
    ``kills`` (``delay`` seconds after the checkpoint of ``epoch`` exists; epoch 0: as soon as the
    run directory is there), resuming after each kill, then resumes it to the end."""
    for kill_after_epoch, delay in kills:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and not (
            (run / "config.json").exists() and _checkpoint_epoch(run) >= kill_after_epoch
        ):
            assert time.monotonic() < deadline
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
        cmd = [sys.executable, "-m", "vaelab", "train", "--resume", str(run), "--quiet"]
    subprocess.run(cmd, check=True, env=env, capture_output=True)


def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    """The real thing: SIGKILL the CLI mid-training (three times: before the first checkpoint,
    after a checkpoint, and at an arbitrary moment), resume, compare with an uninterrupted run
    byte for byte."""
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    ref = tmp_path / "ref"
    subprocess.run(_train_cmd(ref), check=True, env=env, capture_output=True)
    run = tmp_path / "killed"
    kill_and_resume(_train_cmd(run), run, ((0, 0.0), (2, 0.0), (6, 0.013)), env)
    assert (run / "model.safetensors").read_bytes() == (ref / "model.safetensors").read_bytes()
    assert [r["epoch"] for r in read_metrics(run)] == list(range(1, 13))


def test_resume_refuses_a_finished_run(tmp_path):
    config = cfg.build({"data": {"limit": 100}, "model": {"hidden": [16], "latent_dim": 2},
                        "train": {"epochs": 1}})
    start_run(config, tmp_path / "r", progress=False)
    with pytest.raises(RunError, match="already finished"):
        resume_run(tmp_path / "r", progress=False)


def test_start_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("precious")
    with pytest.raises(RunError, match="already exists"):
        start_run(cfg.RunConfig(), tmp_path, progress=False)
    assert (tmp_path / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]


def test_denormals_are_flushed_while_training_only(digits):
    """Importance-weighted gradients underflow into denormals, which are many times slower on x86;
    the trainer flushes them to zero while it runs and restores PyTorch's default afterwards."""
    train, _ = digits
    tiny = torch.tensor([1e-39])  # a float32 denormal
    seen = []

    def objective(model, x):
        seen.append((tiny * 1.0).item())
        value = model.encode(x).mean.sum(1)
        return Scalar(value, value.detach())

    Trainer(small_vae(), objective, train, None, tcfg(epochs=1), progress=False).fit()
    assert seen and all(v == 0.0 for v in seen)
    assert (tiny * 1.0).item() != 0.0


def test_complete_run_starts_resumes_and_reuses(tmp_path):
    from vaelab.runs.lifecycle import complete_run

    config = cfg.build({"data": {"data": "digits", "binarize": "threshold", "limit": 200},
                        "model": {"hidden": (16,), "latent_dim": 2},
                        "train": {"epochs": 2, "patience": 0}})  # fmt: skip
    run = tmp_path / "r"
    first = complete_run(config, run, progress=False)
    assert first is not None and first.epochs == 2
    weights = (run / "model.safetensors").read_bytes()
    assert complete_run(config, run, progress=False) is None  # finished: left alone
    assert (run / "model.safetensors").read_bytes() == weights
    other = cfg.build({"data": {"data": "digits", "binarize": "threshold", "limit": 200},
                       "model": {"hidden": (16,), "latent_dim": 3}, "train": {"epochs": 2}})  # fmt: skip
    with pytest.raises(RunError, match="different configuration"):
        complete_run(other, run, progress=False)
    # interrupted after its configuration was written, before any checkpoint: resumed from scratch
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.json").write_bytes((run / "config.json").read_bytes())
    again = complete_run(config, fresh, progress=False)
    assert again is not None and again.epochs == 2
    assert (fresh / "model.safetensors").read_bytes() == weights


def test_validation_uses_the_kl_scale_of_the_epochs_last_step(digits):
    """Under cyclical annealing an epoch can end exactly on a cycle boundary, where the schedule
    restarts at 0; validation must use the options of the epoch's last training step, which are
    the ones logged, so valid_loss = -(valid_reconstruction - kl_scale * valid_kl) (ELBO, beta 1)."""
    from vaelab.inference.schedules import kl_schedule

    train, valid = digits
    kl_scale = kl_schedule(cycles=2, epochs=4)  # cycles restart at t = 2 and 4: epoch ends
    trainer = Trainer(small_vae(), get_objective("elbo"), train, valid, tcfg(epochs=4), progress=False,
                      schedule=lambda t: {"kl_scale": kl_scale(t)})  # fmt: skip
    history = trainer.fit().history
    n_batches = math.ceil(len(train) / 50)
    for r in history:
        assert r["kl_scale"] == kl_scale(r["epoch"] - 1 + (n_batches - 1) / n_batches)
        want = -(r["valid_reconstruction"] - r["kl_scale"] * r["valid_kl"])
        assert r["valid_loss"] == pytest.approx(want, rel=1e-5), r["epoch"]
    assert [r["kl_scale"] for r in history if r["epoch"] % 2 == 0] == [1.0, 1.0]  # not the restart's 0


def nan_when_validating(objective):
    """An objective whose bound (and objective) is NaN in eval mode only: training stays finite,
    validation never produces a number."""

    def wrapped(model, x, **options):
        result = objective(model, x, **options)
        if model.training:
            return result
        return type(result)(*(t * float("nan") for t in result))

    return wrapped


def test_a_run_whose_validation_is_always_nan_still_writes_its_weights(tmp_path, monkeypatch):
    """No validation bound beats another when all are NaN, so no epoch is ever 'best'; the run must
    still end with model.safetensors (the last weights), loadable by vaelab.load, and say why."""
    import vaelab
    import vaelab.runs.families as train_module

    real = train_module.get_objective
    monkeypatch.setattr(train_module, "get_objective", lambda *a, **kw: nan_when_validating(real(*a, **kw)))
    config = cfg.build({"data": {"data": "digits", "binarize": "threshold", "limit": 200},
                        "model": {"hidden": [16], "latent_dim": 2}, "train": {"epochs": 3, "patience": 2}})  # fmt: skip
    run = tmp_path / "r"
    result = start_run(config, run, progress=False)
    assert all(math.isnan(r["valid_bound"]) for r in result.history)
    assert result.epochs == 2  # early stopping still counts the epochs without a better bound
    assert result.best_epoch == 0 and math.isnan(result.best_bound)
    assert "never finite" in result.stop_reason and "last epoch" in result.stop_reason
    model = vaelab.load(run)
    saved, _ = load_tensors(run / "model.safetensors")
    final, _ = load_tensors(run / "checkpoint" / "state.safetensors")
    for key, value in model.state_dict().items():
        assert torch.equal(value, saved[key]) and torch.equal(value, final[f"model.{key}"]), key
    _, meta = load_tensors(run / "checkpoint" / "state.safetensors")
    assert json.loads(meta["state"])["stop_reason"] == result.stop_reason


def test_resume_is_exact_when_validation_is_nan(digits, tmp_path):
    """With no best epoch, model.safetensors holds the latest weights after every epoch, so a run
    killed at any point has one, and resuming ends bitwise-identical to an uninterrupted run."""
    train, valid = digits
    objective = nan_when_validating(get_objective("elbo"))

    def crashing(crash_at):
        calls = {"n": 0}

        def f(model, x):
            if model.training:
                calls["n"] += 1
                if calls["n"] == crash_at:
                    raise KeyboardInterrupt
            return objective(model, x)

        return f

    full = Trainer(small_vae(), objective, train, valid, tcfg(epochs=3), run_dir=tmp_path / "full", progress=False)
    full.fit()
    crashed = Trainer(small_vae(), crashing(13), train, valid, tcfg(epochs=3), run_dir=tmp_path / "c", progress=False)
    with pytest.raises(KeyboardInterrupt):
        crashed.fit()
    assert (tmp_path / "c" / "model.safetensors").exists()  # written at the end of epoch 1
    resumed = Trainer(small_vae(), objective, train, valid, tcfg(epochs=3), run_dir=tmp_path / "c", progress=False)
    resumed.load_checkpoint()
    assert resumed.state.epoch == 1
    result = resumed.fit()
    assert result.best_epoch == 0 and "never finite" in result.stop_reason
    assert (tmp_path / "full" / "model.safetensors").read_bytes() == (tmp_path / "c" / "model.safetensors").read_bytes()
    a, meta_a = load_tensors(tmp_path / "full" / "checkpoint" / "state.safetensors")
    b, meta_b = load_tensors(tmp_path / "c" / "checkpoint" / "state.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    state_a, state_b = json.loads(meta_a.pop("state")), json.loads(meta_b.pop("state"))
    state_a.pop("seconds"), state_b.pop("seconds")  # wall-clock time, the one thing a resume changes
    assert state_a == state_b and meta_a == meta_b


def test_time_limit_stops_after_the_epoch_that_reaches_it_and_counts_across_resumes(tmp_path, digits):
    config = cfg.build({"data": {"limit": 200}, "model": {"hidden": [16], "latent_dim": 2},
                        "train": {"epochs": 50, "time_limit": 1e-6, "patience": 0}})  # fmt: skip
    result = start_run(config, tmp_path / "r", progress=False)
    assert result.epochs == 1 and result.stop_reason.startswith("time limit")
    # the seconds used are checkpointed: a resumed trainer continues the count, so with a limit
    # the first run already used up it trains no further epoch
    train, valid = digits

    def trainer(**options) -> Trainer:
        torch.manual_seed(0)
        model = build_model("vae", train.event_shape, hidden=(8,), latent_dim=2)
        t = cfg.TrainConfig(patience=0, **options)
        return Trainer(model, get_objective("elbo"), train, valid, t, run_dir=tmp_path / "t", progress=False)

    first = trainer(epochs=2)
    first.fit()
    used = first.state.seconds
    assert used >= sum(r["train_seconds"] for r in first.history) > 0
    second = trainer(epochs=10, time_limit=used)
    second.load_checkpoint()
    second.state.finished = False
    result = second.fit()
    assert result.epochs == 2 and result.stop_reason.startswith("time limit")
    third = trainer(epochs=10, time_limit=used * 1000)
    third.load_checkpoint()
    assert third.fit().epochs == 10


def test_time_limit_must_be_non_negative():
    with pytest.raises(ConfigError, match="time_limit="):
        cfg.build({"train": {"time_limit": -1}})


# -- training on, and warm starts ----------------------------------------------------------------

FAMILIES = {  # tiny configurations of model families (one and several players), with what a resume must carry on
    "vae": {"model": {"hidden": [16], "latent_dim": 2},
            "train": {"kl_warmup": 3, "patience": 5, "objective": "iwae", "k": 2}},
    "vqvae": {"model": {"model": "vqvae", "codebook_size": 8, "code_dim": 4, "resnet_channels": 8, "res_blocks": 1},
              "train": {"patience": 5}},
    "gan": {"model": {"model": "gan", "hidden": [16], "latent_dim": 2}, "data": {"binarize": "none"}, "train": {}},
    "aae": {"model": {"model": "aae", "hidden": [16], "latent_dim": 2}, "data": {"binarize": "none"},
            "train": {"lr_disc": 5e-4}},
}


def family_config(name: str, epochs: int, **train) -> cfg.RunConfig:
    spec = FAMILIES[name]
    return cfg.build({"data": {"data": "digits", "binarize": "threshold", "limit": 200, **spec.get("data", {})},
                      "model": spec["model"],
                      "train": {"epochs": epochs, "batch_size": 50, **spec["train"], **train}})  # fmt: skip


@pytest.mark.parametrize("name", FAMILIES)
def test_a_finished_run_trained_on_equals_one_started_with_more_epochs(name, tmp_path):
    """2 epochs, then resume_run(epochs=4), against 4 epochs from the start: the same weights,
    checkpoint (optimizer, RNG, best weights, early-stopping count) and metrics, bit for bit; the
    KL warm-up (3 epochs) straddles the point where the first run finished."""
    start_run(family_config(name, 4), tmp_path / "straight", progress=False)
    first = start_run(family_config(name, 2), tmp_path / "on", progress=False)
    assert first.epochs == 2
    seen = []
    result = resume_run(tmp_path / "on", epochs=4, progress=False, callbacks=[seen.append])
    assert result.epochs == 4 and result.stop_reason == "reached 4 epochs"
    assert [r["epoch"] for r in seen] == [3, 4]
    a, b = tmp_path / "straight", tmp_path / "on"
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    ta, ma = load_tensors(a / "checkpoint" / "state.safetensors")
    tb, mb = load_tensors(b / "checkpoint" / "state.safetensors")
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), key
    sa, sb = json.loads(ma["state"]), json.loads(mb["state"])
    for key in ("epoch", "best_epoch", "best_bound", "bad_epochs", "metrics_lines", "finished", "stop_reason"):
        assert sa[key] == sb[key], key

    def strip(records):
        return [{k: v for k, v in r.items() if "second" not in k} for r in records]  # timings differ

    assert strip(read_metrics(a)) == strip(read_metrics(b))
    assert json.loads((b / "config.json").read_text())["train"]["epochs"] == 4


def test_training_on_is_refused_where_it_cannot_be_exact(tmp_path):
    run = tmp_path / "r"
    start_run(family_config("vae", 2), run, progress=False)
    config_before = (run / "config.json").read_bytes()
    with pytest.raises(RunError, match=r"epochs=1 is not more than the 2 epochs"):
        resume_run(run, epochs=1, progress=False)
    # at the epochs it was asked for, a finished run has nothing to do (its own error class, which
    # the CLI turns into status 0)
    for same in (None, 2):
        with pytest.raises(RunFinishedError, match=r"already finished.*epochs=N, N > 2"):
            resume_run(run, epochs=same, progress=False)
    cyclic = tmp_path / "cyclic"
    start_run(family_config("vae", 2, kl_warmup=0, kl_cycles=2), cyclic, progress=False)
    with pytest.raises(RunError, match="cycles spread over its 2 epochs"):
        resume_run(cyclic, epochs=4, progress=False)
    early = tmp_path / "early"  # a time limit it reaches in its first epoch
    stopped = start_run(family_config("vae", 3, time_limit=1e-9), early, progress=False)
    assert stopped.epochs == 1 and stopped.stop_reason.startswith("time limit")
    with pytest.raises(RunError, match="stopped early"):
        resume_run(early, epochs=5, progress=False)
    assert (run / "config.json").read_bytes() == config_before
    assert json.loads((cyclic / "config.json").read_text())["train"]["epochs"] == 2


@pytest.mark.parametrize("name", FAMILIES)
def test_init_from_copies_the_weights_only(name, tmp_path):
    """Every family takes --init-from (one player or several)."""
    still = {"lr": 1e-30, **({"lr_disc": 1e-30} if name in ("gan", "aae") else {})}
    source = tmp_path / "source"
    start_run(family_config(name, 2), source, progress=False)
    warm = tmp_path / "warm"
    # so small a learning rate leaves float32 weights where they start
    start_run(family_config(name, 1, init_from=str(source), **still), warm, progress=False)
    mine, _ = load_tensors(warm / "model.safetensors")
    theirs, _ = load_tensors(source / "model.safetensors")
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    config = json.loads((warm / "config.json").read_text())
    assert config["train"]["init_from"] == str(source.resolve())
    state, meta = load_tensors(warm / "checkpoint" / "state.safetensors")
    assert json.loads(meta["state"])["epoch"] == 1  # counted from 0
    steps = {k: v for k, v in state.items() if k.endswith(".step")}
    assert steps and all(v.item() == 4 for v in steps.values())  # a fresh Adam: one epoch of 200 / 50 steps
    cold = start_run(family_config(name, 1, **still), tmp_path / "cold", progress=False)
    assert cold.epochs == 1
    fresh, _ = load_tensors(tmp_path / "cold" / "model.safetensors")
    assert not all(torch.equal(fresh[k], theirs[k]) for k in fresh)


def test_init_from_needs_the_same_architecture(tmp_path):
    source = tmp_path / "source"
    start_run(family_config("vae", 1), source, progress=False)
    other = cfg.build({"data": {"data": "digits", "binarize": "threshold", "limit": 200},
                       "model": {"hidden": [8], "latent_dim": 3},
                       "train": {"epochs": 1, "init_from": str(source)}})  # fmt: skip
    with pytest.raises(RunError, match="another architecture") as err:
        start_run(other, tmp_path / "other", progress=False)
    assert "latent_dim: 2 there, 3 here" in str(err.value) and "hidden: 16 there, 8 here" in str(err.value)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "other").exists()
    missing = family_config("vae", 1, init_from=str(tmp_path / "nowhere"))
    with pytest.raises(RunError, match=r"^init_from=.*nowhere: .*does not exist"):
        start_run(missing, tmp_path / "m", progress=False)
    assert not (tmp_path / "m").exists()


def test_init_from_is_stored_absolute():
    config = cfg.build({"train": {"init_from": "runs/x"}})
    assert config.train.init_from == os.path.abspath("runs/x")
    assert cfg.build({}).train.init_from is None


def test_callbacks_get_every_epochs_record(digits):
    train, valid = digits
    seen = []
    result = Trainer(small_vae(), get_objective("elbo"), train, valid, tcfg(epochs=2), progress=False,
                     callbacks=[seen.append]).fit()  # fmt: skip
    assert seen == result.history and [r["epoch"] for r in seen] == [1, 2]


# -- run directories under real-world faults ----------------------------------------------------

_FAULT_RUN = ["--data", "digits", "--binarize", "dynamic", "--hidden", "16", "--latent-dim", "2", "--limit", "300",
              "--epochs", "4", "--batch-size", "50", "--patience", "0", "--quiet"]  # fmt: skip


def test_a_full_disk_stops_training_in_one_line_and_the_last_checkpoint_resumes_exactly(tmp_path, monkeypatch, capsys):
    import errno
    import pathlib

    from vaelab.cli.main import main

    assert main(["train", *_FAULT_RUN, "--out", str(tmp_path / "ref")]) == 0
    real = pathlib.Path.write_bytes
    checkpoints = []

    def disk_fills_at_the_second_checkpoint(self, data):
        if self.name.startswith(".state.safetensors."):
            checkpoints.append(self)
            if len(checkpoints) == 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", disk_fills_at_the_second_checkpoint)
    run = tmp_path / "full"
    capsys.readouterr()
    assert main(["train", *_FAULT_RUN, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"vaelab: error: cannot write {run / 'checkpoint' / 'state.safetensors'}: No space left on device; the "
                   f"file there before (if any) is unchanged; training stopped, and the checkpoint of epoch 1 is intact: "
                   f"make room and continue with vaelab train --resume {run}"]  # fmt: skip
    assert _checkpoint_epoch(run) == 1
    assert not [p for p in run.rglob("*.tmp")]  # no half-written file is left either
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert (run / "model.safetensors").read_bytes() == (tmp_path / "ref" / "model.safetensors").read_bytes()
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2, 3, 4]


def test_a_read_only_output_directory_is_one_line_and_nothing_is_left(tmp_path, monkeypatch, capsys):
    import errno
    import tempfile

    from vaelab.cli.main import main

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    run = tmp_path / "ro"
    assert main(["train", *_FAULT_RUN, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot write {run / 'config.json'}: Read-only file system" in err[0], err
    assert not (run / "config.json").exists()


def test_a_second_process_cannot_train_into_a_run_that_is_training(tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    run = tmp_path / "busy"
    cmd = [sys.executable, "-m", "vaelab", "train", "--data", "digits", "--hidden", "16", "--latent-dim", "2",
           "--epochs", "100000", "--patience", "0", "--out", str(run), "--quiet", "--silent"]  # fmt: skip
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while _checkpoint_epoch(run) < 1:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        second = subprocess.run([sys.executable, "-m", "vaelab", "train", "--resume", str(run), "--quiet"], env=env,
                                capture_output=True, text=True)  # fmt: skip
        assert second.returncode == 2 and second.stderr.splitlines() == [
            f"vaelab: error: {run} is being trained by another process right now; wait for it to finish, or train "
            f"into another directory"
        ]
        with pytest.raises(RunError, match="being trained by another process"):
            resume_run(run, progress=False)
    finally:
        first.kill()
        first.wait()
    # SIGKILLed, the first process holds nothing: the run resumes (here, to one more epoch)
    done = _checkpoint_epoch(run)
    assert resume_run(run, epochs=done + 1, progress=False).epochs == done + 1


def test_nothing_to_do_is_found_without_loading_the_data(tmp_path):
    import numpy as np

    from vaelab.runs.lifecycle import nothing_to_do

    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).random((60, 4)).astype(np.float32))
    config = cfg.build({"data": {"data": str(data), "binarize": "none"},
                        "model": {"hidden": [8], "latent_dim": 2, "likelihood": "gaussian"}, "train": {"epochs": 1}})  # fmt: skip
    run = tmp_path / "r"
    start_run(config, run, progress=False)
    data.unlink()  # a requeued job whose data is gone still learns there is nothing to do
    with pytest.raises(RunFinishedError, match="already finished"):
        resume_run(run, progress=False)
    assert nothing_to_do(run, epochs=1) is not None and nothing_to_do(run, epochs=2) is None
