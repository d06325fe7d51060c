"""A VQ-VAE run's learned code prior on disk (``RUN/prior/``): read it and attach it to the model."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from ..core.files import (
    MODEL_FILE,
    load_weights,
)
from ..models.vqvae import VQVAE
from ..nets.pixelcnn import GatedPixelCNN

PRIOR_DIR = "prior"
PRIOR_CONFIG = "prior.json"


def load_code_prior(run_dir: str | Path) -> GatedPixelCNN | None:
    """The trained prior of a VQ-VAE run, in eval mode, or None when it has none yet."""
    out = Path(run_dir) / PRIOR_DIR
    if not (out / MODEL_FILE).exists() or not (out / PRIOR_CONFIG).exists():
        return None
    settings = json.loads((out / PRIOR_CONFIG).read_text())
    prior = GatedPixelCNN(settings["num_codes"], layers=settings["layers"], channels=settings["channels"])
    load_weights(prior, out / MODEL_FILE)
    return prior.eval()


def attach_code_prior(model: nn.Module, run_dir: str | Path) -> None:
    """Gives a VQ-VAE its learned prior from ``run_dir``, when one has been trained."""
    if isinstance(model, VQVAE):
        model.set_code_prior(load_code_prior(run_dir))
