"""The variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014)."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..core.errors import ConfigError
from ..distributions.observation import Observation
from ..distributions.posteriors import (
    FLOWS,
    DiagonalGaussianPosterior,
    Posterior,
    check_posterior,
)
from ..distributions.priors import Prior, StandardNormalPrior, check_prior
from ..inference.local import fit_local

INFERENCE = ("amortized", "local")


class VAE(nn.Module):
    """A VAE: prior p(z), an encoder network with a posterior family q(z|x), a decoder and any
    observation model p(x|z).

    Args:
        encoder: maps ``(B, *event_shape)`` to ``(B, posterior.param_size)``.
        decoder: maps ``(N, latent_dim)`` to ``(N, params_per_dim, *event_shape)``.
        observation: turns decoder outputs into p(x|z).
        latent_dim: size of z.
        posterior: turns encoder outputs into q(z|x) (``posteriors``); default diagonal Gaussian.
        prior: p(z) (``priors``); default N(0, I).
    """

    def __init__(
        self,
        encoder: nn.Module | None,
        decoder: nn.Module,
        observation: Observation,
        latent_dim: int,
        posterior: Posterior | None = None,
        prior: Prior | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.observation = observation
        self.latent_dim = latent_dim
        self.posterior = posterior if posterior is not None else DiagonalGaussianPosterior(latent_dim)
        self.latent_prior = prior if prior is not None else StandardNormalPrior(latent_dim)

    def prior(self) -> Distribution:
        """p(z); batch shape (), event shape (latent_dim,)."""
        return self.latent_prior(self)

    def prior_through_encoder(self) -> Distribution | None:
        """p(z) with the prior's own parameters detached, when the encoder builds the prior
        (VampPrior): its gradient reaches only the encoder. None for other priors."""
        return self.latent_prior.through_encoder(self)

    def encode(self, x: Tensor) -> Distribution:
        """q(z|x) for x of shape (B, *event_shape); batch shape (B,), event shape (latent_dim,)."""
        return self.posterior(self.encoder(x))

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z) for z of shape (*S, latent_dim); batch shape S, event shape = data shape."""
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, self.latent_dim))  # (N, params, *event)
        return self.observation(out.view(*lead, *out.shape[1:]))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Inference parameters (encoder and posterior, e.g. IAF's networks) against generative
        ones (decoder, observation, prior)."""
        inference = [*self.posterior.parameters()]
        if self.encoder is not None:
            inference = [*self.encoder.parameters(), *inference]
        ids = {id(p) for p in inference}
        return {"encoder": inference, "decoder": [p for p in self.parameters() if id(p) not in ids]}


class LocalVAE(VAE):
    """A decoder without an encoder: q(z|x) is found for each example by classical variational
    inference (``local.fit_local`` from N(0, I), ``steps`` Adam steps), every time ``encode`` is
    called. Trained by the usual objectives, this is stochastic variational EM: each minibatch
    gets a fresh E-step (local q_i) and one M-step (a gradient step on the decoder with q_i
    held fixed)."""

    def __init__(self, decoder: nn.Module, observation: Observation, latent_dim: int,
                 prior: Prior | None = None, *, steps: int = 20, lr: float = 0.1) -> None:  # fmt: skip
        super().__init__(None, decoder, observation, latent_dim, None, prior)
        self.steps, self.lr = steps, lr

    def encode(self, x: Tensor) -> Distribution:
        # the fit needs autograd even when the caller evaluates without it (no_grad, inference_mode)
        with torch.inference_mode(False), torch.enable_grad():
            x = x.clone() if x.is_inference() else x
            fit = fit_local(self, x, self.steps, self.lr, init="prior", eval_samples=0)
        return fit.q


def check_combination(posterior: str, prior: str, inference: str) -> None:
    """Refuses posterior, prior and inference settings that cannot work together (ConfigError)."""
    family, _ = check_posterior(posterior)
    prior_name, _ = check_prior(prior)
    if inference not in INFERENCE:
        raise ConfigError(f"unknown inference {inference!r}; choose one of: {', '.join(INFERENCE)}")
    if inference == "local" and (family != "gaussian" or prior_name == "vamp"):
        raise ConfigError(
            "inference= local fits a diagonal Gaussian per example and has no encoder; "
            "use it with posterior= gaussian and prior= standard or mog:K"
        )
    if prior_name == "vamp" and family in FLOWS:
        raise ConfigError(
            "prior= vamp evaluates log q(z|u_k) at every z for every pseudo-input, which flow "
            "posteriors cannot do in closed form (planar) or cheaply (iaf); use posterior= "
            "gaussian or full with it"
        )
