"""The variational autoencoder (Kingma & Welling 2014; Rezende et al. 2014)."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from ..distributions import Observation, build_observation
from ..errors import ConfigError
from ..nets import NetFactory, NetSpec, build_nets, check_outputs
from ..posteriors import FLOWS, DiagonalGaussianPosterior, Posterior, build_posterior, check_posterior
from ..priors import Prior, StandardNormalPrior, build_prior, check_prior
from ..registry import Registry, check_keywords, keywords

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")
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
        from ..local import fit_local  # local imports objectives, which import models

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


@MODELS.register("vae")
def build_vae(
    event_shape: tuple[int, ...],
    *,
    likelihood: str = "bernoulli",
    net: str = "mlp",
    net_args: Mapping[str, Any] | None = None,
    nets: Mapping[str, NetFactory] | None = None,
    encoder: nn.Module | None = None,
    decoder: nn.Module | None = None,
    resnet_channels: int = 64,
    res_blocks: int = 2,
    hidden: tuple[int, ...] = (200, 200),
    activation: str = "tanh",
    latent_dim: int = 50,
    obs_precision: float = 100.0,
    posterior: str = "gaussian",
    prior: str = "standard",
    inference: str = "amortized",
    local_steps: int = 20,
    local_lr: float = 0.1,
    layers: int = 1,
) -> VAE:
    """Builds a VAE from the fields of ``config.ModelConfig`` (same defaults: Burda et al.'s
    200-200 tanh MLP, 50 latent dimensions, Bernoulli likelihood, diagonal Gaussian posterior,
    N(0, I) prior, amortized inference). ``layers=2`` builds the two-stochastic-layer model of
    Burda et al. (``two_layer.build_two_layer``).

    Your own networks, either way with the contract of ``nets`` (checked on a batch of zeros):

    - ``net="package.module:Factory"`` with ``net_args`` (keywords for it): the factory is called
      as ``Factory(spec, **net_args)`` with a ``nets.NetSpec``; ``nets={"package.module:Factory":
      factory}`` gives the factory without importing it. A run records the name and net_args,
      so ``vaelab.load`` rebuilds it.
    - ``encoder=`` and ``decoder=`` (ready modules; ``decoder=`` alone with
      ``inference="local"``): the encoder maps ``(B, *event_shape)`` to the posterior's
      parameters, ``(B, 2 * latent_dim)`` for the default diagonal Gaussian, and the decoder
      ``(B, latent_dim)`` to ``(B, params_per_dim, *event_shape)``. Nothing records how such
      modules were made, so a run of this model cannot be rebuilt from its config.json (the
      model's ``ready_modules`` is True, and a ``Trainer`` refuses to record it as a built-in
      backbone): train runs with a factory instead.
    """
    check_combination(posterior, prior, inference)
    modules = encoder is not None or decoder is not None
    if modules:
        if decoder is None or (encoder is None and inference != "local"):
            raise ConfigError(
                "encoder= and decoder= come together (decoder= alone with inference='local', which has no encoder)"
            )
        if encoder is not None and inference == "local":
            raise ConfigError("inference='local' fits q(z|x) per example and has no encoder: drop encoder=")
        if net != "mlp" or net_args is not None or layers != 1:
            raise ConfigError("give your networks either as encoder=/decoder= modules or as net='package.module:Factory', "
                              "not both (and with layers=1)")  # fmt: skip
    observation = build_observation(likelihood, len(event_shape), obs_precision=obs_precision)
    if layers != 1:
        from .two_layer import build_two_layer, check_layers  # two_layer builds on VAE

        check_layers(layers, posterior=posterior, prior=prior, inference=inference, net=net)
        return build_two_layer(tuple(event_shape), observation, hidden=tuple(hidden), activation=activation,
                               latent_dim=latent_dim)  # fmt: skip
    q = build_posterior(posterior, latent_dim)
    spec = NetSpec(
        event_shape=tuple(event_shape),
        latent_dim=latent_dim,
        encoder_out=q.param_size,
        params_per_dim=observation.params_per_dim,
        hidden=tuple(hidden),
        activation=activation,
        channels=resnet_channels,
        res_blocks=res_blocks,
    )
    if modules:
        check_outputs(encoder, decoder, spec, "encoder=/decoder=")
    else:
        encoder, decoder = build_nets(net, spec, net_args, nets)
    if inference == "local":
        model: VAE = LocalVAE(decoder, observation, latent_dim, build_prior(prior, latent_dim, tuple(event_shape)),
                              steps=local_steps, lr=local_lr)  # fmt: skip
    else:
        model = VAE(encoder, decoder, observation, latent_dim, q, build_prior(prior, latent_dim, tuple(event_shape)))
    # no configuration can say how ready modules were made: the Trainer will not record such a run
    # as one of a built-in backbone
    model.ready_modules = modules
    return model


def build_model(name: str, event_shape: tuple[int, ...], **options: Any) -> nn.Module:
    """Builds the model registered as ``name`` for data of shape ``event_shape``; ``options`` are
    the builder's keywords (the fields of ``config.ModelConfig`` that the family uses). An
    unknown keyword is an error (UnknownOptionError, a TypeError) that names it."""
    builder = MODELS[name]
    check_keywords(f"build_model({name!r}, ...)", options, keywords(builder, skip=("event_shape",)))
    return builder(tuple(event_shape), **options)
