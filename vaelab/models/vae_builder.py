"""The ``vae`` builder: one or two stochastic layers, amortized or per-example (local) inference,
any posterior, prior and backbone."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ..core.errors import ConfigError
from ..distributions.observation import build_observation
from ..distributions.posteriors import (
    build_posterior,
)
from ..distributions.priors import build_prior
from ..nets.backbones import NetFactory, NetSpec, build_nets, check_outputs
from .registry import MODELS
from .two_layer import build_two_layer, check_layers
from .vae import VAE, LocalVAE, check_combination


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


