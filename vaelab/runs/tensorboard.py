"""TensorBoard logging of a training run (``--tensorboard``, the optional ``vaelab[tensorboard]`` extra).

Every epoch, the Trainer hands its metrics record (the line it appends to ``metrics.jsonl``) and
the model to ``TensorBoardLog.log_epoch``, which writes, under ``RUN/tensorboard`` with the epoch
as the step:

- every metric of the record as a scalar under its own key (``train_loss``, ``valid_bound``,
  ``kl_scale``, ``active_units``, ...); a list such as ``kl_per_dim`` as one scalar per entry
  (``kl_per_dim/0``, ``kl_per_dim/1``, ...); a missing value (null) as NaN;
- the images ``samples`` (64 draws of the model, fixed seed) and ``reconstructions`` (32 fixed
  validation examples, data and reconstruction in alternating rows), from the epoch's latest
  weights; for points in the plane, ``samples`` is a scatter plot of 1000 draws over the data.

Each run writes into its own directory, so ``tensorboard --logdir runs/`` shows several runs side
by side, named after their run directories. A resumed run continues the same log: its writer
starts with ``purge_step`` at its first epoch, so readers drop the events that an interrupted
process wrote for that epoch and later ones (those the checkpoint did not count, which are
trained again), and no step appears twice or out of order.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import Tensor, nn

from ..core.errors import ConfigError
from ..core.images import as_images, tile

TENSORBOARD_DIR = "tensorboard"
INSTALL = "pip install 'vaelab[tensorboard]'"
N_SAMPLES = 64  # images in the samples grid
N_RECONSTRUCTIONS = 32  # examples in the reconstructions grid
N_POINTS = 1000  # samples and examples in the scatter plot of points in the plane
IMAGE_SEED = 0  # the same latent draws every epoch, so the grids show the model changing, not the noise
MIN_PIXELS = 256  # small grids (8x8 digits) are enlarged by whole pixels to about this size


def _summary_writer() -> type:
    """torch's SummaryWriter, or a ConfigError saying how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ConfigError(f"tensorboard= needs the tensorboard package ({err}); install it with: {INSTALL}") from None
    return SummaryWriter


def scalars(record: dict[str, Any]) -> Iterator[tuple[str, float]]:
    """(tag, value) for every metric of a metrics.jsonl record but ``epoch`` (the step)."""
    for key, value in record.items():
        if key == "epoch" or isinstance(value, str):
            continue
        if isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                yield f"{key}/{i}", _number(item)
        else:
            yield key, _number(value)


def _number(value: Any) -> float:
    return math.nan if value is None else float(value)


def _enlarged(grid: np.ndarray) -> np.ndarray:
    """The grid with each pixel repeated so that its longer side has about MIN_PIXELS pixels."""
    s = max(1, MIN_PIXELS // max(grid.shape[:2]))
    return grid.repeat(s, axis=0).repeat(s, axis=1) if s > 1 else grid


@torch.no_grad()
def image_grids(model: nn.Module, examples: Tensor | None) -> dict[str, np.ndarray]:
    """The ``samples`` and ``reconstructions`` grids of a model as (H, W) or (H, W, 3) floats in
    [0, 1], each where the model can draw it: no samples from a VQ-VAE before its code prior is
    trained, no reconstructions from a model without an encoder. For points in the plane
    (ring8, grid25), ``samples`` is a scatter plot of samples over the examples instead, as in
    ``samples.png``, and there are no reconstructions."""
    from ..core.devices import module_device
    from ..evaluation.sampling import can_reconstruct, reconstruct, sample_images

    if examples is None:
        return {}
    if tuple(examples.shape[1:]) == (2,):
        return {"samples": _points_image(sample_images(model, N_POINTS, seed=IMAGE_SEED), examples[:N_POINTS])}
    grids: dict[str, np.ndarray] = {}
    if getattr(model, "code_prior", True) is not None:
        images = as_images(sample_images(model, N_SAMPLES, seed=IMAGE_SEED))
        grids["samples"] = tile(images, 8)
    if can_reconstruct(model):
        x = examples[:N_RECONSTRUCTIONS]
        data, rec = as_images(x), as_images(reconstruct(model, x.to(module_device(model))))
        rows = []
        for start in range(0, len(data), 8):  # data and reconstructions in alternating rows of 8
            for part in (data[start : start + 8], rec[start : start + 8]):
                blank = np.ones((8 - len(part), *part.shape[1:]), np.float32)  # pads the last pair
                rows.append(np.concatenate([part, blank]))
        grids["reconstructions"] = tile(np.concatenate(rows), 8)
    return {tag: _enlarged(grid) for tag, grid in grids.items()}


def _points_image(samples: Tensor, points: Tensor) -> np.ndarray:
    """A scatter plot of samples (red) over data points (grey) as (H, W, 3) floats in [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 4), dpi=MIN_PIXELS / 4)
    canvas = FigureCanvasAgg(fig)
    ax = fig.subplots()
    data, drawn = points.detach().cpu().numpy(), samples.detach().cpu().numpy()
    ax.scatter(data[:, 0], data[:, 1], s=2, c="0.6", label=f"{len(data)} examples")
    ax.scatter(drawn[:, 0], drawn[:, 1], s=2, c="C3", alpha=0.6, label=f"{len(drawn)} samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=6, markerscale=3)
    fig.tight_layout()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(np.float32) / 255


class TensorBoardLog:
    """Writes a run's epochs for TensorBoard into ``log_dir`` (``RUN/tensorboard``).

    Args:
        log_dir: the directory of the event files; created at the first epoch logged.
        examples: the fixed examples to reconstruct (the validation set's ``fixed()`` view, or
            the training set's without one), as a callable so that they are built only when used.

    Raises:
        ConfigError: TensorBoard is not installed (checked here, before a run writes anything).
    """

    def __init__(self, log_dir: str | Path, examples: Any = None) -> None:
        self._writer_class = _summary_writer()
        self.log_dir = Path(log_dir)
        self._examples = examples
        self.writer: Any = None

    def log_epoch(self, model: nn.Module, record: dict[str, Any]) -> None:
        """Writes one epoch's metrics record and image grids, with the epoch as the step, and
        flushes them to disk. The global random streams and the model's mode are left as they were."""
        epoch = int(record["epoch"])
        if self.writer is None:
            # the first epoch this process logs: events of that step and later ones from an
            # interrupted process are dropped by readers (they are trained again now)
            self.writer = self._writer_class(log_dir=str(self.log_dir), purge_step=epoch)
        for tag, value in scalars(record):
            self.writer.add_scalar(tag, value, epoch)
        training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(IMAGE_SEED)
                examples = self._examples() if callable(self._examples) else self._examples
                grids = image_grids(model, examples)
        finally:
            model.train(training)
        for tag, grid in grids.items():
            self.writer.add_image(tag, grid, epoch, dataformats="HWC" if grid.ndim == 3 else "HW")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
