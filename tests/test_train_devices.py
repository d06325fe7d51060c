"""Training on a device and in mixed precision: device names, precision for every family,
checkpoints that carry the scaler and resume across devices."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file
from test_train import FAMILIES, family_config

from vaelab.core.devices import fused_adam_supported
from vaelab.core.errors import ConfigError
from vaelab.core.files import load_tensors, read_metrics
from vaelab.runs import config as cfg
from vaelab.runs.lifecycle import _setup, resume_run, start_run
from vaelab.runs.trainer import Trainer

PRECISIONS = cfg.PRECISIONS


def test_precision_is_a_checked_training_option():
    assert cfg.build({"train": {"precision": "bf16-mixed"}}).train.precision == "bf16-mixed"
    assert cfg.TrainConfig().precision == "32"
    for bad in ("16", "fp16"):
        with pytest.raises(ConfigError, match=r"unknown precision .*choose one of: 32, bf16-mixed, 16-mixed"):
            cfg.build({"train": {"precision": bad}})
    with pytest.raises(ConfigError, match=r"precision= \(not a string\)"):  # TOML's precision = 32
        cfg.build({"train": {"precision": 32}})


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_trains_in_every_precision_and_resumes_exactly(name, precision, tmp_path):
    """Two epochs straight against one epoch then resume_run(epochs=2): the same weights and
    checkpoint bit for bit (the fp16 gradient scaler's state included), finite metrics, fp32
    weights, and the precision recorded in config.json."""
    straight = start_run(family_config(name, 2, precision=precision), tmp_path / "a", progress=False, device="cpu")
    assert straight.epochs == 2
    start_run(family_config(name, 1, precision=precision), tmp_path / "b", progress=False, device="cpu")
    resume_run(tmp_path / "b", epochs=2, progress=False, device="cpu")
    a, b = tmp_path / "a", tmp_path / "b"
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    ta, ma = load_tensors(a / "checkpoint" / "state.safetensors")
    tb, mb = load_tensors(b / "checkpoint" / "state.safetensors")
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    assert ("scaler" in ma) == (precision == "16-mixed") and ma.get("scaler") == mb.get("scaler")
    assert ma["device"] == "cpu"
    weights, _ = load_tensors(a / "model.safetensors")
    assert all(t.dtype != torch.bfloat16 and t.dtype != torch.float16 for t in weights.values())
    record = read_metrics(a)[-1]
    assert all(v == v and abs(v) != float("inf") for k, v in record.items() if k.startswith("train_") and isinstance(v, float))
    assert json.loads((a / "config.json").read_text())["train"]["precision"] == precision


def test_mixed_precision_runs_the_networks_in_half_precision(tmp_path):
    """The setting is not a label: under bf16-mixed the trainer's steps run the networks in bf16,
    under 32 in fp32; validation and the monitors run in fp32 whatever the precision."""
    for precision, expected in (("32", torch.float32), ("bf16-mixed", torch.bfloat16), ("16-mixed", torch.float16)):
        trainer = _setup(family_config("vae", 1, precision=precision), None, False, device="cpu")
        seen = {True: set(), False: set()}
        for module in trainer.model.modules():
            if isinstance(module, torch.nn.Linear):
                module.register_forward_hook(lambda mod, args, out: seen[mod.training].add(out.dtype))
        trainer.fit()
        assert seen == {True: {expected}, False: {torch.float32}}, precision
        assert (trainer.scaler is not None) == (precision == "16-mixed")


def test_fused_adam_where_the_installed_torch_has_it():
    trainer = _setup(family_config("vae", 1), None, False, device="cpu")
    assert trainer.optimizer.param_groups[0]["fused"] is True  # CPU kernels since torch 2.4, which we require
    assert not fused_adam_supported(torch.device("meta"))
    meta = torch.nn.Linear(2, 2).to("meta")
    trainer = Trainer(meta, None, trainer.train, None, cfg.TrainConfig(), progress=False, device=torch.device("meta"))
    assert not trainer.optimizer.param_groups[0]["fused"]  # the default Adam there
    assert next(trainer.model.parameters()).device.type == "meta"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_an_unusable_device_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ConfigError, match="device='cuda' is not available here"):
        start_run(family_config("vae", 1), tmp_path / "run", progress=False, device="cuda")
    assert not (tmp_path / "run").exists()
    for device, why in (("cuda", "--device cuda is not available here"), ("tpu", "unknown --device tpu")):
        out = subprocess.run([sys.executable, "-m", "vaelab", "train", "--data", "digits", "--limit", "100",
                              "--epochs", "1", "--out", str(tmp_path / device), "--device", device],
                             capture_output=True, text=True)  # fmt: skip
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and why in lines[0] and "Traceback" not in out.stderr, out.stderr
        assert not (tmp_path / device).exists()


def test_a_run_resumed_on_another_device_says_so_and_goes_on_exactly(tmp_path, caplog):
    """A checkpoint written on a GPU (its header names cuda) resumes on the CPU with one note on
    the "vaelab" logger; weights, optimizer and data order continue, so on the CPU the result is
    the uninterrupted run's."""
    start_run(family_config("vae", 2), tmp_path / "straight", progress=False, device="cpu")
    run = tmp_path / "moved"
    start_run(family_config("vae", 1), run, progress=False, device="cpu")
    path = run / "checkpoint" / "state.safetensors"
    tensors, meta = load_tensors(path)
    tensors["rng.cuda"] = torch.zeros(16, dtype=torch.uint8)  # a GPU generator's state, not used on the CPU
    save_file(tensors, str(path), metadata={**meta, "device": "cuda"})
    with caplog.at_level(logging.WARNING, logger="vaelab"):
        resume_run(run, epochs=2, progress=False, device="cpu")
    notes = [r.getMessage() for r in caplog.records if "was trained on cuda and goes on on cpu" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert (run / "model.safetensors").read_bytes() == (tmp_path / "straight" / "model.safetensors").read_bytes()
