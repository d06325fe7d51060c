"""--tensorboard: every metric and the image grids per epoch, read back from the event files;
several runs under one --logdir; no duplicate steps after a resume; a one-line error without
the package."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from test_cli import assert_one_line_error, run_cli

from vaelab.cli.main import main

TINY = ["--data", "digits", "--binarize", "threshold", "--hidden", "16", "--limit", "200", "--quiet"]


def _events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _metric_tags(record: dict) -> dict[str, float | None]:
    """The scalar tags a metrics record should give: lists per entry, the epoch (the step) left out."""
    tags = {}
    for key, value in record.items():
        if key == "epoch":
            continue
        if isinstance(value, list):
            tags.update({f"{key}/{i}": v for i, v in enumerate(value)})
        else:
            tags[key] = value
    return tags


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    pytest.importorskip("tensorboard")
    root = tmp_path_factory.mktemp("runs")
    assert main(["train", *TINY, "--latent-dim", "2", "--epochs", "2", "--tensorboard", "--out", str(root / "a")]) == 0
    assert main(["train", *TINY, "--latent-dim", "2", "--epochs", "2", "--out", str(root / "b")]) == 0
    assert main(["train", *TINY, "--latent-dim", "3", "--epochs", "1", "--tensorboard", "--out", str(root / "c")]) == 0
    return root


def test_every_metric_is_a_scalar_and_the_grids_are_images_every_epoch(runs):
    records = [json.loads(line) for line in (runs / "a" / "metrics.jsonl").read_text().splitlines()]
    acc = _events(runs / "a" / "tensorboard")
    tags = acc.Tags()
    for record in records:
        expected = _metric_tags(record)
        assert "valid_bound" in expected and "kl_per_dim/1" in expected and "active_units" in expected
        assert set(expected) <= set(tags["scalars"])
        for tag, value in expected.items():
            (event,) = [e for e in acc.Scalars(tag) if e.step == record["epoch"]]
            assert event.value == pytest.approx(value, rel=1e-6, abs=1e-6), tag
    assert set(tags["images"]) == {"samples", "reconstructions"}
    for tag in ("samples", "reconstructions"):
        images = acc.Images(tag)
        assert [i.step for i in images] == [r["epoch"] for r in records]
        assert all(i.encoded_image_string[:4] == b"\x89PNG" and min(i.width, i.height) >= 64 for i in images)


def test_the_grids_show_the_same_draws_every_epoch(runs):
    """Fixed latent draws and fixed examples: two calls on the same weights give the same grids,
    8 columns of images with 1-pixel gaps, enlarged by whole pixels."""
    import numpy as np

    from vaelab.runs.rundir import load, load_data, read_config
    from vaelab.runs.tensorboard import MIN_PIXELS, image_grids

    model = load(runs / "a")
    x = load_data(read_config(runs / "a")[0], "valid").fixed()
    first, second = image_grids(model, x), image_grids(model, x)
    assert set(first) == {"samples", "reconstructions"}
    side = 8 * 8 + 7  # 8 digits of 8 pixels and 7 gaps: 64 samples, and 32 examples over 32 reconstructions
    for tag in first:
        assert np.array_equal(first[tag], second[tag])
        assert first[tag].shape == (side * (MIN_PIXELS // side),) * 2
        assert 0 <= first[tag].min() and first[tag].max() <= 1


def test_logging_leaves_training_unchanged(runs):
    """The grids are drawn outside the training random stream: the run ends with the weights and
    metrics of the same run without --tensorboard."""
    a, b = runs / "a", runs / "b"
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    drop = ("train_seconds", "examples_per_second")
    rows = [[{k: v for k, v in json.loads(line).items() if k not in drop} for line in (r / "metrics.jsonl").read_text().splitlines()]
            for r in (a, b)]  # fmt: skip
    assert rows[0] == rows[1]
    assert json.loads((a / "config.json").read_text())["train"]["tensorboard"] is True
    assert not (b / "tensorboard").exists()


def test_one_logdir_shows_every_run_under_its_own_name(runs):
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(runs))
    mux.Reload()
    assert set(mux.Runs()) == {"a/tensorboard", "c/tensorboard"}  # b was trained without --tensorboard
    assert [e.step for e in mux.Scalars("c/tensorboard", "valid_bound")] == [1]


def test_a_resumed_run_logs_no_step_twice(tmp_path, monkeypatch):
    """A run killed after logging epoch 2 but before its checkpoint counted it trains epoch 2
    again on resume: the reader shows each step once, with the values of metrics.jsonl."""
    pytest.importorskip("tensorboard")
    from vaelab.runs.trainer import Trainer

    run = tmp_path / "run"
    save = Trainer.save_checkpoint

    def killed_at_epoch_2(self):
        if self.state.epoch == 2 and not self.state.finished:
            raise KeyboardInterrupt
        save(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", killed_at_epoch_2)
    proc = run_cli("train", *TINY, "--latent-dim", "2", "--epochs", "3", "--tensorboard", "--out", str(run))
    assert proc.returncode == 130, proc.stderr
    assert [e.step for e in _events(run / "tensorboard").Scalars("valid_bound")] == [1, 2]
    monkeypatch.setattr(Trainer, "save_checkpoint", save)
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    acc = _events(run / "tensorboard")
    for tag in ("valid_bound", "train_loss", "kl_per_dim/0"):
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3], tag
    assert [e.value for e in acc.Scalars("valid_bound")] == pytest.approx([r["valid_bound"] for r in records], rel=1e-6)
    assert [i.step for i in acc.Images("samples")] == [1, 2, 3]


def test_without_the_package_training_is_refused_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    out = tmp_path / "run"
    proc = run_cli("train", *TINY, "--epochs", "1", "--tensorboard", "--out", str(out))
    assert_one_line_error(proc, "--tensorboard", "pip install 'vaelab[tensorboard]'")
    assert not out.exists()  # refused before the run directory is written


def test_points_in_the_plane_get_a_scatter_plot_of_samples(tmp_path):
    pytest.importorskip("tensorboard")
    run = tmp_path / "ring"
    assert main(["train", "--data", "ring8", "--limit", "200", "--binarize", "none", "--likelihood", "gaussian",
                 "--hidden", "16", "--latent-dim", "2", "--epochs", "1", "--tensorboard", "--quiet", "--out", str(run)]) == 0  # fmt: skip
    acc = _events(run / "tensorboard")
    assert acc.Tags()["images"] == ["samples"]  # no reconstructions of points, as reconstruct refuses them
    (image,) = acc.Images("samples")
    assert image.step == 1 and image.width >= 200 and image.height >= 200


@pytest.mark.parametrize(("name", "options", "tags"), [
    ("vae", {"latent_dim": 2, "hidden": (16,)}, {"samples", "reconstructions"}),
    ("gan", {"latent_dim": 2, "hidden": (16,)}, {"samples"}),  # no encoder to reconstruct with
    ("vqvae", {"net": "resnet", "resnet_channels": 8, "res_blocks": 1, "codebook_size": 8, "code_dim": 4},
     {"reconstructions"}),  # no samples before `vaelab prior` trains its code prior
])  # fmt: skip
def test_each_model_gets_the_grids_it_can_draw(name, options, tags):
    import torch

    from vaelab import build_model
    from vaelab.runs.tensorboard import image_grids

    model = build_model(name, (1, 8, 8), **options).eval()
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(0)).round()
    assert set(image_grids(model, x)) == tags
