"""Latent variable models. Each exposes ``prior()``, ``encode(x)`` and ``decode(z)`` as
``torch.distributions`` objects and registers a builder in ``MODELS``."""

from .adversarial import ADVERSARIAL, AdversarialModel
from .gmm import GaussianMixture
from .linear import LinearGaussian
from .vae import MODELS, VAE, build_model
from .vqvae import VQVAE, VectorQuantizer

__all__ = ["ADVERSARIAL", "AdversarialModel", "MODELS", "VAE", "VQVAE", "GaussianMixture", "LinearGaussian", "VectorQuantizer", "build_model"]
