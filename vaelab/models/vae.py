"""The variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..distributions import Observation, build_observation, diagonal_gaussian, standard_normal
from ..nets import NETS, NetSpec
from ..registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


class VAE(nn.Module):
    """A VAE with prior N(0, I), a diagonal Gaussian encoder and any observation model.

    Args:
        encoder: maps ``(B, *event_shape)`` to ``(B, 2 * latent_dim)`` (mean, log-variance).
        decoder: maps ``(N, latent_dim)`` to ``(N, params_per_dim, *event_shape)``.
        observation: turns decoder outputs into p(x|z).
        latent_dim: size of z.
    """

    def __init__(
        self, encoder: nn.Module, decoder: nn.Module, observation: Observation, latent_dim: int
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.observation = observation
        self.latent_dim = latent_dim
        # Buffers, not parameters: the prior is fixed, but it must follow the model's device/dtype.
        self.register_buffer("prior_loc", torch.zeros(latent_dim), persistent=False)
        self.register_buffer("prior_scale", torch.ones(latent_dim), persistent=False)

    def prior(self) -> Distribution:
        """p(z) = N(0, I); batch shape (), event shape (latent_dim,)."""
        return standard_normal(self.prior_loc, self.prior_scale)

    def encode(self, x: Tensor) -> Distribution:
        """q(z|x) for x of shape (B, *event_shape); batch shape (B,), event shape (latent_dim,)."""
        mean, log_var = self.encoder(x).chunk(2, dim=-1)
        return diagonal_gaussian(mean, (0.5 * log_var).exp())

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z) for z of shape (*S, latent_dim); batch shape S, event shape = data shape."""
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, self.latent_dim))  # (N, params, *event)
        return self.observation(out.view(*lead, *out.shape[1:]))


@MODELS.register("vae")
def build_vae(
    event_shape: tuple[int, ...],
    *,
    likelihood: str = "bernoulli",
    net: str = "mlp",
    hidden: tuple[int, ...] = (200, 200),
    activation: str = "tanh",
    latent_dim: int = 50,
    obs_precision: float = 100.0,
    **unused: Any,
) -> VAE:
    """Builds a VAE from the fields of ``config.ModelConfig`` (same defaults: Burda et al.'s
    200-200 tanh MLP, 50 latent dimensions, Bernoulli likelihood)."""
    observation = build_observation(likelihood, len(event_shape), obs_precision=obs_precision)
    spec = NetSpec(
        event_shape=tuple(event_shape),
        latent_dim=latent_dim,
        encoder_out=2 * latent_dim,
        params_per_dim=observation.params_per_dim,
        hidden=tuple(hidden),
        activation=activation,
    )
    encoder, decoder = NETS[net](spec)
    return VAE(encoder, decoder, observation, latent_dim)


def build_model(name: str, event_shape: tuple[int, ...], **options: Any) -> nn.Module:
    """Builds the model registered as ``name`` for data of shape ``event_shape``."""
    return MODELS[name](tuple(event_shape), **options)
