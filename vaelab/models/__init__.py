"""Latent variable models. Each exposes ``prior()``, ``encode(x)`` and ``decode(z)`` as
``torch.distributions`` objects and registers a builder in ``MODELS``."""

from .adversarial import ADVERSARIAL, AdversarialModel
from .gmm import GaussianMixture
from .linear import LinearGaussian
from .registry import MODELS, build_model
from .vae import VAE
from . import vae_builder  # noqa: F401  (registers the "vae" builder)
from .vqvae import VQVAE, VectorQuantizer

__all__ = ["ADVERSARIAL", "AdversarialModel", "MODELS", "VAE", "VQVAE", "GaussianMixture", "LinearGaussian", "VectorQuantizer", "build_model"]
