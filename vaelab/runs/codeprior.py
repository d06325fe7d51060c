"""The learned prior over a VQ-VAE's code grids (van den Oord et al. 2017, section 3.2): a gated
PixelCNN (``pixelcnn.GatedPixelCNN``) fitted by maximum likelihood to the code grids z_q(x) of
the run's training data, after the VQ-VAE itself is trained.

It lives in ``RUN/prior/``, a run directory of its own trained by the same ``Trainer`` (so it
checkpoints every epoch and resumes exactly, and keeps the weights with the best validation
log-likelihood):

```
RUN/prior/
  prior.json           its settings (layers, channels, codes, grid) and training options
  model.safetensors    the PixelCNN's weights
  checkpoint/  metrics.jsonl
```
``vaelab.load(RUN)`` attaches it to the VQ-VAE, which then samples and scores with it.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from ..core.devices import module_device, resolve_device
from ..core.errors import ConfigError, RunError
from ..core.files import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    METRICS_FILE,
    atomic_write_bytes,
    read_metadata,
    run_lock,
)
from ..data.splits import Split
from ..models.vqvae import VQVAE
from ..nets.pixelcnn import GatedPixelCNN
from . import config as cfg
from .lifecycle import truncate_metrics
from .prior_files import PRIOR_CONFIG, PRIOR_DIR, attach_code_prior, load_code_prior  # noqa: F401  (re-exported)
from .rundir import load, load_data, read_config
from .trainer import Trainer


@dataclass(frozen=True)
class PriorConfig:
    """The PixelCNN and how it is trained (``vaelab prior`` flags)."""

    layers: int = 8  # gated layers
    channels: int = 64  # channels of each stack
    epochs: int = 30  # maximum passes over the training code grids
    batch_size: int = 128
    lr: float = 1e-3
    patience: int = 10  # stop after this many epochs without a better validation log-likelihood (0: never)
    seed: int = 0
    time_limit: float = 0.0  # stop after the epoch in which this many seconds are used (0: no limit)

    def __post_init__(self) -> None:
        for name in ("layers", "channels", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr= must be positive, got {self.lr}")
        if self.patience < 0:
            raise ConfigError(f"patience= must be 0 (off) or a positive number of epochs, got {self.patience}")

    def train_config(self) -> cfg.TrainConfig:
        return cfg.TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                               patience=self.patience, seed=self.seed, time_limit=self.time_limit)  # fmt: skip


class CodeLogLikelihood(NamedTuple):
    """Per-example results of the prior's objective, each of shape [B]."""

    objective: Tensor  # log p(codes), maximized
    bound: Tensor  # the same exact log-likelihood of the code grid, in nats


def code_log_likelihood(prior: GatedPixelCNN, x: Tensor) -> CodeLogLikelihood:
    """log p(z) of code grids stored as floats (a ``Split`` holds floats; codes < 2^24 are exact),
    computed where the prior is: the grids stay on the CPU with the trainer's data, and each batch
    moves to the prior's device."""
    lp = prior.log_prob(x.to(device=module_device(prior), dtype=torch.long))
    return CodeLogLikelihood(objective=lp, bound=lp.detach())


@torch.no_grad()
def code_grids(model: VQVAE, x: Tensor, batch: int = 500) -> Tensor:
    """z_q(x) as index grids (N, h, w) on x's device, computed on the model's in eval mode."""
    was_training = model.training
    model.eval()
    device = module_device(model)
    try:
        return torch.cat([model.codes(x[i : i + batch].to(device)).to(x.device) for i in range(0, len(x), batch)])
    finally:
        model.train(was_training)


def _settings(model: VQVAE, config: PriorConfig) -> dict:
    return {"num_codes": model.codebook_size, "grid": list(model.grid_shape), **dataclasses.asdict(config)}


def fit_code_prior(run_dir: str | Path, config: PriorConfig = PriorConfig(), *, progress: bool = True,
                   callbacks: Sequence[Callable[[dict], None]] = (), trust_code: bool = False,
                   device: str | torch.device | None = None):  # fmt: skip
    """Trains (or resumes training) the PixelCNN prior of the VQ-VAE in ``run_dir``.

    ``device`` (as in ``runs.load``; None: the CPU) is where the VQ-VAE computes the code grids and
    the prior trains. The prior is initialized on the CPU, so the same seed starts it the same way
    on every device, and its weights and checkpoint load on any device: a prior started on a GPU
    continues on the CPU, and the other way round.

    Returns the ``train.TrainResult``; ``callbacks`` are the Trainer's (called with each epoch's
    record, whose ``valid_bound`` is the validation log p(codes)). A prior that already finished, or one started with other
    settings, is an error that says what to do.
    """

    run_dir = Path(run_dir)
    target = resolve_device(device) if device is not None else torch.device("cpu")
    run_config, _ = read_config(run_dir)
    model = load(run_dir, code_prior=False, trust_code=trust_code, device=target)
    if not isinstance(model, VQVAE):
        raise RunError(f"{run_dir} is a model= {run_config.model.model} run; a learned code prior is for model= vqvae runs")
    out = run_dir / PRIOR_DIR
    settings = _settings(model, config)
    if (out / PRIOR_CONFIG).exists():
        saved = json.loads((out / PRIOR_CONFIG).read_text())
        if saved != settings:
            raise RunError(
                f"{out} holds a prior trained with other settings; delete {out} to train a new one, "
                f"or run the same command as before to continue it"
            )
        path = out / CHECKPOINT_DIR / CHECKPOINT_FILE
        if path.exists() and json.loads(read_metadata(path)["state"]).get("finished"):
            raise RunError(f"{run_dir} already has a trained prior ({out}); delete {out} to train a new one")
    # The code grids of the run's data; a dynamically binarized run uses its fixed seeded draw.
    train = load_data(run_config, "train", progress=progress).fixed()
    valid = load_data(run_config, "valid").fixed() if run_config.data.valid_fraction > 0 else None
    name = f"{run_config.data.data} codes"
    train_codes = Split(code_grids(model, train).float(), None, name, "train")
    valid_codes = Split(code_grids(model, valid).float(), None, name, "valid") if valid is not None else None
    torch.manual_seed(config.seed)
    prior = GatedPixelCNN(model.codebook_size, layers=config.layers, channels=config.channels).to(target)
    trainer = Trainer(prior, code_log_likelihood, train_codes, valid_codes, config.train_config(), run_dir=out,
                      progress=progress, callbacks=callbacks)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):  # a second process training this prior is refused before it reads the checkpoint
        if trainer.checkpoint_path.exists():
            trainer.load_checkpoint()
            truncate_metrics(out / METRICS_FILE, trainer.state.metrics_lines)
        else:
            atomic_write_bytes(out / PRIOR_CONFIG, (json.dumps(settings, indent=2) + "\n").encode())
        return trainer.fit()
