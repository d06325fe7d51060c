"""Compiling the training step (``vaelab.speed``): the modes, the eager fallback, and that it
changes how fast, not what, is trained."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vaelab.cli.main import main
from vaelab.core.errors import ConfigError
from vaelab.data.load import load_split
from vaelab.inference.objectives import get_objective
from vaelab.models import build_model
from vaelab.runs import config as cfg
from vaelab.runs import speed
from vaelab.runs.trainer import Trainer


def small_vae(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model("vae", (1, 8, 8), likelihood="bernoulli", net="mlp", hidden=(16,),
                       activation="tanh", latent_dim=3, obs_precision=1.0)  # fmt: skip


@pytest.fixture(scope="module")
def digits():
    return load_split("digits", "train", binarize="dynamic", limit=200)


def fit(train, compile, epochs=2, **kw) -> tuple[Trainer, dict[str, torch.Tensor]]:
    trainer = Trainer(small_vae(), get_objective("elbo", **kw), train, None,
                      cfg.TrainConfig(epochs=epochs, batch_size=50, lr=3e-3), progress=False, compile=compile,
                      fused="off")  # fmt: skip  # the autograd step, compiled or not (test_fused covers the fused one)
    trainer.fit()
    return trainer, trainer.model.state_dict()


def test_an_unknown_mode_is_refused_in_one_line(digits):
    with pytest.raises(ConfigError, match="compile='fast' is not a compile mode; choose one of: auto, on, off"):
        Trainer(small_vae(), get_objective("elbo"), digits, None, cfg.TrainConfig(), progress=False, compile="fast")
    with pytest.raises(ConfigError, match="compile='yes' is not a compile mode"):
        speed.check_compile("yes")


def test_auto_trains_short_epochs_eagerly_and_says_nothing(digits, caplog):
    trainer, _ = fit(digits, "auto")
    assert not caplog.records
    assert not trainer.compiled
    assert "too short" in trainer.step_objective.reason


def failing_compile(fn, **options):
    def compiled(*args, **kwargs):
        raise RuntimeError("the compiler broke\nsecond line")

    return compiled


def test_a_failing_compile_falls_back_to_exactly_the_eager_run_with_one_warning(digits, monkeypatch, caplog):
    monkeypatch.setattr(speed.torch, "compile", failing_compile)
    monkeypatch.setattr(speed, "cpp_compiler", lambda: "/usr/bin/g++")
    _, eager = fit(digits, "off")
    assert not caplog.records
    trainer, fallen = fit(digits, "on")
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    message = caplog.records[0].getMessage()
    assert message == "training runs eagerly, not compiled, because torch.compile failed (RuntimeError: the compiler broke)"
    assert not trainer.compiled
    assert all(torch.equal(eager[k], fallen[k]) for k in eager)  # the failed call drew no random numbers


def test_on_without_a_cpp_compiler_warns_and_trains_eagerly(digits, monkeypatch, caplog):
    monkeypatch.setattr(speed, "cpp_compiler", lambda: None)
    trainer, _ = fit(digits, "on", epochs=1)
    assert "no C++ compiler" in caplog.records[0].getMessage()
    assert not trainer.compiled


def test_a_schedule_or_a_smaller_batch_runs_eagerly(digits, monkeypatch):
    calls = []

    def counting_compile(fn, **options):
        def compiled(*args, **kwargs):
            calls.append(args[1].shape[0])
            return fn(*args, **kwargs)

        return compiled

    monkeypatch.setattr(speed.torch, "compile", counting_compile)
    monkeypatch.setattr(speed, "cpp_compiler", lambda: "/usr/bin/g++")
    train = load_split("digits", "train", binarize="dynamic", limit=180)  # batches of 50, 50, 50, 30
    trainer, _ = fit(train, "on", epochs=1)
    assert trainer.compiled and calls == [50, 50, 50]
    step = speed.StepObjective(get_objective("elbo"), "on", small_vae(), steps_per_epoch=4, scheduled=True)
    assert not step.compiled and "KL schedule" in step.reason


def test_start_and_resume_hand_their_fast_paths_to_the_trainer(tmp_path, monkeypatch):
    """compile= and fused= are arguments all the way down (no module-level setting): start_run and
    resume_run give the Trainer what they were given, and "auto" when given nothing."""
    import vaelab.runs.lifecycle as lifecycle

    seen = []
    real = lifecycle.Trainer
    monkeypatch.setattr(lifecycle, "Trainer", lambda *a, **kw: seen.append((kw["compile"], kw["fused"])) or real(*a, **kw))
    config = cfg.build({"data": {"data": "digits", "binarize": "threshold", "limit": 100},
                        "model": {"hidden": [8], "latent_dim": 2}, "train": {"epochs": 1}})  # fmt: skip
    lifecycle.start_run(config, tmp_path / "r", progress=False, compile="off", fused="off")
    lifecycle.resume_run(tmp_path / "r", epochs=2, progress=False)
    assert seen == [("off", "off"), ("auto", "auto")]


def test_vaelab_train_takes_the_flag(tmp_path):
    assert main(["train", "--data", "digits", "--binarize", "threshold", "--hidden", "8", "--latent-dim", "2",
                 "--epochs", "1", "--compile", "off", "--out", str(tmp_path / "run"), "--silent"]) == 0  # fmt: skip


@pytest.mark.skipif(speed.cpp_compiler() is None, reason="torch.compile needs a C++ compiler on the CPU")
def test_the_compiled_step_trains_what_the_eager_one_does_and_resumes_exactly(digits, tmp_path):
    _, eager = fit(digits, "off", epochs=2)
    trainer, compiled = fit(digits, "on", epochs=2)
    assert trainer.compiled
    for key in eager:  # the same random draws: only the rounding of fused arithmetic differs
        torch.testing.assert_close(compiled[key], eager[key], rtol=1e-4, atol=1e-5)
    # stopped after one epoch and resumed from its checkpoint in a new Trainer: bitwise the same
    config = lambda epochs: cfg.TrainConfig(epochs=epochs, batch_size=50, lr=3e-3)  # noqa: E731
    Trainer(small_vae(), get_objective("elbo"), digits, None, config(1), tmp_path, progress=False, compile="on").fit()
    resumed = Trainer(small_vae(1), get_objective("elbo"), digits, None, config(2), tmp_path, progress=False, compile="on")
    resumed.load_checkpoint()
    resumed.fit()
    assert resumed.compiled
    assert all(torch.equal(resumed.model.state_dict()[k], compiled[k]) for k in compiled)


def test_auto_compiles_long_epochs_of_many_particles_only(monkeypatch):
    monkeypatch.setattr(speed, "cpp_compiler", lambda: "/usr/bin/g++")
    assert speed.particles_per_example(get_objective("elbo")) == 1
    assert speed.particles_per_example(get_objective("iwae", k=50)) == 50
    assert speed.particles_per_example(get_objective("miwae", m=4, k=8)) == 32
    refusal = lambda steps, particles: speed.compile_refusal(  # noqa: E731
        small_vae(), steps_per_epoch=steps, scheduled=False, auto=True, particles=particles)
    assert refusal(600, 50) is None
    assert "particle" in refusal(600, 1)
    assert "too short" in refusal(100, 50)
    assert speed.compile_refusal(small_vae(), steps_per_epoch=1, scheduled=False, auto=False, particles=1) is None
