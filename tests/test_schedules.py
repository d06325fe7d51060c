"""KL schedules: values as defined, and the trainer passing them to any objective step by step."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch

from vaelab.core.errors import ConfigError
from vaelab.core.files import read_metrics
from vaelab.data.load import load_split
from vaelab.inference.schedules import SCHEDULES, kl_schedule
from vaelab.models import build_model
from vaelab.runs import config as cfg
from vaelab.runs.lifecycle import start_run
from vaelab.runs.trainer import Trainer


def test_warmup_is_linear_from_zero_to_one():
    s = kl_schedule(warmup=10, epochs=100)
    assert [s(t) for t in (0, 2.5, 5, 9.9, 10, 50)] == pytest.approx([0, 0.25, 0.5, 0.99, 1, 1])


def test_cyclical_rises_over_half_of_each_cycle_then_holds():
    """Fu et al. (2019) with 4 cycles over 40 epochs and R = 0.5: period 10, rising for 5."""
    s = kl_schedule(cycles=4, epochs=40)
    assert [s(t) for t in (0, 2.5, 5, 7, 9.99)] == pytest.approx([0, 0.5, 1, 1, 1])
    assert [s(t) for t in (10, 12.5, 20, 32.5, 39.9)] == pytest.approx([0, 0.5, 0, 0.5, 1])


def test_constant_and_registry():
    assert kl_schedule()(3.7) == 1.0
    assert SCHEDULES.names() == ["constant", "cyclical", "warmup"]
    with pytest.raises(ConfigError, match="choose one"):
        kl_schedule(warmup=3, cycles=2, epochs=10)
    with pytest.raises(ConfigError, match="kl schedule"):
        SCHEDULES["linear"]


class Recorded(NamedTuple):
    objective: torch.Tensor
    bound: torch.Tensor


def test_trainer_passes_the_schedule_at_every_step_and_logs_it():
    """The trainer asks the schedule for t = epoch - 1 + (step - 1) / steps and hands the result to
    the objective unchanged; each epoch's record holds the last step's options."""
    train = load_split("digits", "train", binarize="threshold", limit=200)
    seen = []

    def objective(model, x, kl_scale=1.0):
        seen.append(kl_scale)
        value = model.encode(x).mean.sum(1) * 0 - kl_scale
        return Recorded(value, value.detach())

    torch.manual_seed(0)
    model = build_model("vae", (1, 8, 8), hidden=(16,), latent_dim=2)
    config = cfg.TrainConfig(epochs=3, batch_size=50, patience=0)
    schedule = kl_schedule(warmup=2, epochs=3)
    trainer = Trainer(model, objective, train, None, config, progress=False,
                      schedule=lambda t: {"kl_scale": schedule(t)})  # fmt: skip
    result = trainer.fit()
    steps = math.ceil(200 / 50)
    want = [schedule(e + s / steps) for e in range(3) for s in range(steps)]
    assert seen == pytest.approx(want)
    assert [r["kl_scale"] for r in result.history] == pytest.approx([0.375, 0.875, 1.0])


def test_warmup_run_logs_the_weight_and_reaches_the_true_bound(tmp_path):
    config = cfg.build({
        "data": {"data": "digits", "binarize": "threshold", "limit": 300},
        "model": {"hidden": (32,), "latent_dim": 4},
        "train": {"objective": "iwae", "k": 3, "kl_warmup": 2, "epochs": 3, "patience": 0},
    })  # fmt: skip
    start_run(config, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    steps = math.ceil(len(load_split("digits", "train", binarize="threshold", limit=300)) / 100)
    last = (steps - 1) / steps  # the last step of an epoch starts at this fraction of it
    assert [r["kl_scale"] for r in rows] == pytest.approx([last / 2, (1 + last) / 2, 1.0])
    # during warm-up the training loss is not the negative bound; afterwards it is
    assert rows[0]["train_loss"] != pytest.approx(-rows[0]["train_bound"])
    assert rows[2]["valid_loss"] == pytest.approx(-rows[2]["valid_bound"])
    for key in ("active_units", "kl_per_dim", "mutual_info"):
        assert key in rows[0]
    assert len(rows[0]["kl_per_dim"]) == 4
