"""The adversarial relatives of the VAE: a GAN baseline, VAE-GAN, the adversarial autoencoder,
alpha-GAN and VEEGAN.

Each is a model with several *players*: a parameter group with its own Adam optimizer and its
own per-example loss. ``losses(x)`` computes every player's loss from one forward pass and
returns them by player name, with a few quantities worth logging; ``players()`` lists the
players in update order; ``update`` says how the trainer applies them:

- ``"simultaneous"``: one forward pass, each player's gradient taken from its own loss with
  respect to its own parameters only (``torch.autograd.grad``), then every player steps. Larsen
  et al.'s VAE-GAN is trained this way; so are alpha-GAN and VEEGAN here.
- ``"alternating"``: player by player, each with a fresh forward pass after the previous player
  stepped: the usual GAN order (discriminator, then generator) and the adversarial
  autoencoder's reconstruction and regularization phases.

Either way a player's step moves its own parameters and nothing else. Players on the
discriminator side (``role="discriminator"``) use ``--lr-disc`` and ``--adam-betas-disc``, the
others ``--lr`` and ``--adam-betas``.

The generator's output is the mean of the observation model at its output (``--likelihood``):
``bernoulli`` squashes it into (0, 1) with a sigmoid (images), ``gaussian`` leaves it unbounded
(points in the plane). The reconstruction losses of the adversarial autoencoder and alpha-GAN
are -log p(x | x~) under that observation model (cross-entropy or squared error). None of these
models has a likelihood bound: they are judged by their samples (``vaelab quality``) and, where
there is an encoder, by reconstruction error.

All discriminators end in a linear layer to one logit; D(x) = sigmoid(logit) is the probability
of "real". Losses are written with softplus: -log sigmoid(a) = softplus(-a) and
-log(1 - sigmoid(a)) = softplus(a).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, kl_divergence

from ..core import sharding
from ..core.errors import ConfigError
from ..distributions.observation import Observation, build_observation, full_precision
from ..distributions.posteriors import DiagonalGaussianPosterior
from ..distributions.priors import (
    DiagonalGaussianMixture,
    Prior,
    StandardNormalPrior,
    build_prior,
    check_prior,
)
from ..nets.backbones import DISCRIMINATORS, NETS, NetSpec, is_import_path
from .registry import MODELS

UPDATES = ("simultaneous", "alternating")
ROLES = ("generator", "discriminator")
ENCODERS = ("deterministic", "gaussian")
ADVERSARIAL = ("gan", "vaegan", "aae", "alphagan", "veegan")


class Player(NamedTuple):
    """One parameter group with its own optimizer and loss."""

    name: str  # the key of its loss in ``losses(x)``; metrics log it as train_<name>_loss
    parameters: list[nn.Parameter]
    role: str  # "generator" (--lr, --adam-betas) or "discriminator" (--lr-disc, --adam-betas-disc)


class Critic(nn.Module):
    """A discriminator: blocks (``nets.DISCRIMINATORS``) then a linear head to one logit.

    With ``latent_dim`` > 0 it judges pairs (x, z) (VEEGAN's joint discriminator): z goes through
    a dense layer of the same width as the blocks' output, and a small MLP reads both.
    """

    def __init__(self, blocks: Sequence[nn.Module], width: int, latent_dim: int = 0) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.latent_dim = latent_dim
        if latent_dim:
            self.code = nn.Sequential(nn.Linear(latent_dim, width), nn.LeakyReLU(0.2))
            self.head = nn.Sequential(nn.Linear(2 * width, width), nn.LeakyReLU(0.2), nn.Linear(width, 1))
        else:
            self.code = None
            self.head = nn.Linear(width, 1)

    @property
    def depth(self) -> int:
        """Number of blocks, whose outputs ``features`` can read (1 to depth)."""
        return len(self.blocks)

    def features(self, x: Tensor, layer: int = 0) -> tuple[Tensor, Tensor]:
        """(logits (B,), flattened output of block ``layer`` (B, F)); ``layer`` 0 is the last block."""
        layer = layer or self.depth
        h, kept = x, x
        for i, block in enumerate(self.blocks, 1):
            h = block(h)
            if i == layer:
                kept = h
        return full_precision(self._head(h, None)), full_precision(kept.flatten(1))

    def forward(self, x: Tensor, z: Tensor | None = None) -> Tensor:
        """The logit of "real" for each example: (B,)."""
        h = x
        for block in self.blocks:
            h = block(h)
        return full_precision(self._head(h, z))  # logits in fp32 under mixed precision

    def _head(self, h: Tensor, z: Tensor | None) -> Tensor:
        if self.code is not None:
            if z is None:
                raise ValueError("this discriminator judges pairs (x, z); pass z")
            h = torch.cat([h, self.code(z)], dim=-1)
        return self.head(h).squeeze(-1)


def feature_log_likelihood(target: Tensor, mean: Tensor) -> Tensor:
    """log N(target | mean, I) per example, summed over features: Larsen et al.'s
    p(Dis_l(x) | z) = N(Dis_l(x) | Dis_l(x~), I). Shapes (B, F) -> (B,)."""
    d = target.shape[-1]
    return -0.5 * (target - mean).square().sum(-1) - 0.5 * d * torch.log(target.new_tensor(2 * torch.pi))


def _params(*modules: nn.Module | None) -> list[nn.Parameter]:
    return [p for m in modules if m is not None for p in m.parameters()]


def sample_prior(prior: Distribution, n: int, generator: torch.Generator | None = None) -> Tensor:
    """n draws (n, latent) from a standard normal or diagonal Gaussian mixture prior, from
    ``generator`` when given (the global stream otherwise). Without a generator, the n draws
    are one per example of a batch: split over processes (``sharding``), each process draws the
    global batch's and keeps its rows."""
    shard = sharding.current() if generator is None else None
    if shard is not None and n == shard.size and n != shard.total:
        return sample_prior(prior, shard.total).narrow(0, shard.start, shard.size)
    if isinstance(prior, DiagonalGaussianMixture):
        index = torch.multinomial(prior.weights, n, replacement=True, generator=generator)
        loc, scale = prior.loc[index], prior.scale[index]
    else:  # Independent(Normal) with batch shape ()
        loc = prior.base_dist.loc.expand(n, -1)
        scale = prior.base_dist.scale.expand(n, -1)
    noise = torch.randn(loc.shape, generator=generator, device=loc.device, dtype=loc.dtype)
    return loc + scale * noise


class AdversarialModel(nn.Module):
    """What the five models share: a prior p(z), a generator (decoder network and observation
    model) and the sampling methods the figures and ``vaelab quality`` use."""

    samples_description = "G(z), z ~ p(z)"  # what the sample figure shows

    update = "simultaneous"

    def __init__(self, decoder: nn.Module, observation: Observation, latent_dim: int,
                 event_shape: tuple[int, ...], prior: Prior | None = None) -> None:  # fmt: skip
        super().__init__()
        self.decoder = decoder
        self.observation = observation
        self.latent_dim = latent_dim
        self.event_shape = tuple(event_shape)
        self.latent_prior = prior if prior is not None else StandardNormalPrior(latent_dim)

    def prior(self) -> Distribution:
        """p(z); batch shape (), event shape (latent_dim,)."""
        return self.latent_prior(self)

    def decode(self, z: Tensor) -> Distribution:
        """The observation model at the generator's output for z (*S, latent_dim)."""
        lead = z.shape[:-1]
        out = self.decoder(z.reshape(-1, self.latent_dim))  # (N, params, *event)
        return self.observation(out.view(*lead, *out.shape[1:]))

    def generate(self, z: Tensor) -> Tensor:
        """G(z): the mean of the observation model, shaped (*S, *event)."""
        return self.decode(z).mean

    def players(self) -> list[Player]:  # pragma: no cover - abstract
        raise NotImplementedError

    def losses(self, x: Tensor) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _prior_draws(self, x: Tensor) -> Tensor:
        return sample_prior(self.prior(), x.shape[0]).to(dtype=x.dtype)  # (B, latent)

    @torch.no_grad()
    def sample_images(self, n: int, *, sample_pixels: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """G(z) for n draws z ~ p(z) from ``generator``: (n, *event)."""
        if sample_pixels:
            raise ConfigError(
                "sample_pixels=True draws from p(x|z), which the adversarial models do not have: their "
                "samples are the generator's outputs G(z); drop sample_pixels=True"
            )
        return self.generate(sample_prior(self.prior(), n, generator))


class _WithEncoder(AdversarialModel):
    """A model with an encoder (VAE-GAN, the adversarial autoencoder, alpha-GAN): deterministic,
    z = E(x), or Gaussian, z ~ N(mu(x), diag(sigma(x)^2)) by reparameterization."""

    def __init__(self, encoder: nn.Module, encoder_kind: str, decoder: nn.Module, observation: Observation,
                 latent_dim: int, event_shape: tuple[int, ...], prior: Prior | None = None) -> None:  # fmt: skip
        super().__init__(decoder, observation, latent_dim, event_shape, prior)
        self.encoder = encoder
        self.encoder_kind = encoder_kind
        self.posterior = DiagonalGaussianPosterior(latent_dim) if encoder_kind == "gaussian" else None

    def encode(self, x: Tensor) -> Distribution | None:
        """q(z|x) for a Gaussian encoder; None for a deterministic one (use ``code``)."""
        return self.posterior(self.encoder(x)) if self.posterior is not None else None

    def code(self, x: Tensor, sample: bool = True) -> Tensor:
        """z for x: E(x), or a reparameterized draw from q(z|x) (its mean with ``sample=False``)."""
        if self.posterior is None:
            return full_precision(self.encoder(x))
        q = self.encode(x)
        return q.rsample() if sample else q.mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """G(z) at z = E(x) (the mean of q(z|x) for a Gaussian encoder)."""
        return self.generate(self.code(x, sample=False))


class GAN(AdversarialModel):
    """The baseline (Goodfellow et al. 2014) with the non-saturating generator loss: the
    discriminator minimizes -log D(x) - log(1 - D(G(z))), the generator -log D(G(z)).
    Alternating updates, discriminator first."""

    update = "alternating"

    def __init__(self, decoder: nn.Module, observation: Observation, latent_dim: int,
                 event_shape: tuple[int, ...], critic: Critic) -> None:  # fmt: skip
        super().__init__(decoder, observation, latent_dim, event_shape)
        self.critic = critic

    def players(self) -> list[Player]:
        return [Player("disc", _params(self.critic), "discriminator"),
                Player("generator", _params(self.decoder, self.observation), "generator")]  # fmt: skip

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        b = x.shape[0]
        fake = self.generate(self._prior_draws(x))
        logits = self.critic(torch.cat([x, fake]))  # (2B,)
        real, gen = logits[:b], logits[b:]
        return {
            "disc": F.softplus(-real) + F.softplus(gen),
            "generator": F.softplus(-gen),
            "d_real": torch.sigmoid(real).detach(),
            "d_fake": torch.sigmoid(gen).detach(),
        }


class VAEGAN(_WithEncoder):
    """VAE-GAN (Larsen et al. 2016, "Autoencoding beyond pixels using a learned similarity metric").

    The reconstruction is measured in the ``feature_layer``-th layer of the discriminator:
    L_Dis_l = -log N(Dis_l(x) | Dis_l(x~), I) with x~ = G(z), z ~ q(z|x); L_prior = KL(q(z|x) || p(z));
    L_GAN judges data, reconstructions x~ and prior samples G(z_p). The three update rules
    (simultaneous, from one forward pass):

    - encoder: L_prior + L_Dis_l;
    - decoder: gamma L_Dis_l - L_GAN, with the non-saturating form -log D(x~) - log D(G(z_p))
      of -L_GAN (the paper's own code does the same);
    - discriminator: -log D(x) - log(1 - D(x~)) - log(1 - D(G(z_p))).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, observation: Observation, latent_dim: int,
                 event_shape: tuple[int, ...], critic: Critic, gamma: float, feature_layer: int) -> None:  # fmt: skip
        super().__init__(encoder, "gaussian", decoder, observation, latent_dim, event_shape)
        self.critic, self.gamma, self.feature_layer = critic, gamma, feature_layer

    def players(self) -> list[Player]:
        return [Player("encoder", _params(self.encoder, self.posterior), "generator"),
                Player("decoder", _params(self.decoder, self.observation), "generator"),
                Player("disc", _params(self.critic), "discriminator")]  # fmt: skip

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        b = x.shape[0]
        q = self.encode(x)
        kl = kl_divergence(q, self.prior())  # (B,), closed form
        x_rec = self.generate(q.rsample())
        x_prior = self.generate(self._prior_draws(x))
        logits, features = self.critic.features(torch.cat([x, x_rec, x_prior]), self.feature_layer)
        real, rec, gen = logits[:b], logits[b : 2 * b], logits[2 * b :]
        feature_nll = -feature_log_likelihood(features[:b], features[b : 2 * b])
        return {
            "encoder": kl + feature_nll,
            "decoder": self.gamma * feature_nll + F.softplus(-rec) + F.softplus(-gen),
            "disc": F.softplus(-real) + F.softplus(rec) + F.softplus(gen),
            "kl": kl.detach(),
            "feature_nll": feature_nll.detach(),
        }


class AAE(_WithEncoder):
    """The adversarial autoencoder (Makhzani et al. 2015): an autoencoder whose code is pushed
    towards the prior by a discriminator on the latent space, in place of the VAE's KL. Three
    alternating phases per batch:

    - reconstruction: encoder and decoder minimize -log p(x | G(E(x)));
    - regularization, discriminator: prior draws are "real", codes E(x) are "fake":
      -log D(z_p) - log(1 - D(E(x)));
    - regularization, generator: the encoder minimizes -log D(E(x)).

    The prior may be any fixed vaelab prior (``standard`` or ``mog:K``, whose mixture stays at
    its initial draws: nothing trains it).
    """

    update = "alternating"

    def __init__(self, encoder: nn.Module, encoder_kind: str, decoder: nn.Module, observation: Observation,
                 latent_dim: int, event_shape: tuple[int, ...], prior: Prior, code_critic: Critic) -> None:  # fmt: skip
        super().__init__(encoder, encoder_kind, decoder, observation, latent_dim, event_shape, prior)
        self.code_critic = code_critic

    def players(self) -> list[Player]:
        return [Player("autoencoder", _params(self.encoder, self.posterior, self.decoder, self.observation), "generator"),
                Player("disc", _params(self.code_critic), "discriminator"),
                Player("encoder", _params(self.encoder, self.posterior), "generator")]  # fmt: skip

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        b = x.shape[0]
        z = self.code(x)
        reconstruction = -self.decode(z).log_prob(x)  # (B,)
        logits = self.code_critic(torch.cat([self._prior_draws(x), z]))
        prior_logit, code_logit = logits[:b], logits[b:]
        return {
            "autoencoder": reconstruction,
            "disc": F.softplus(-prior_logit) + F.softplus(code_logit),
            "encoder": F.softplus(-code_logit),
            "reconstruction": reconstruction.detach(),
        }


class AlphaGAN(_WithEncoder):
    """alpha-GAN (Rosca et al. 2017, "Variational approaches for auto-encoding generative
    adversarial networks"): an autoencoder with a code discriminator C on z and an image
    discriminator D on data, reconstructions and prior samples. Simultaneous updates of four
    players:

    - encoder: -log p(x | x~) - log C(E(x)) (non-saturating);
    - generator: -log p(x | x~) - log D(x~) - log D(G(z_p));
    - image discriminator: -log D(x) - log(1 - D(x~)) - log(1 - D(G(z_p)));
    - code discriminator: -log C(z_p) - log(1 - C(E(x))).

    The paper's reconstruction is an L1 norm; here it is -log p(x | x~) of ``--likelihood``,
    the same loss as the adversarial autoencoder's.
    """

    def __init__(self, encoder: nn.Module, encoder_kind: str, decoder: nn.Module, observation: Observation,
                 latent_dim: int, event_shape: tuple[int, ...], critic: Critic, code_critic: Critic) -> None:  # fmt: skip
        super().__init__(encoder, encoder_kind, decoder, observation, latent_dim, event_shape)
        self.critic, self.code_critic = critic, code_critic

    def players(self) -> list[Player]:
        return [Player("encoder", _params(self.encoder, self.posterior), "generator"),
                Player("generator", _params(self.decoder, self.observation), "generator"),
                Player("disc", _params(self.critic), "discriminator"),
                Player("code_disc", _params(self.code_critic), "discriminator")]  # fmt: skip

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        b = x.shape[0]
        z = self.code(x)
        p = self.decode(z)
        reconstruction = -p.log_prob(x)
        z_prior = self._prior_draws(x)
        logits = self.critic(torch.cat([x, p.mean, self.generate(z_prior)]))
        real, rec, gen = logits[:b], logits[b : 2 * b], logits[2 * b :]
        codes = self.code_critic(torch.cat([z_prior, z]))
        prior_code, data_code = codes[:b], codes[b:]
        return {
            "encoder": reconstruction + F.softplus(-data_code),
            "generator": reconstruction + F.softplus(-rec) + F.softplus(-gen),
            "disc": F.softplus(-real) + F.softplus(rec) + F.softplus(gen),
            "code_disc": F.softplus(-prior_code) + F.softplus(data_code),
            "reconstruction": reconstruction.detach(),
        }


class VEEGAN(AdversarialModel):
    """VEEGAN (Srivastava et al. 2017, "VEEGAN: Reducing mode collapse in GANs using implicit
    variational learning"): a reconstructor network F maps data back to noise, and a
    discriminator on (z, x) pairs tells generator pairs (z, G(z)), z ~ p(z), from data pairs
    (F(x), x). The generator and the reconstructor both minimize the paper's objective
    KL(q(x|z) p(z) || p(z|x) p(x)) + E ||z - F(G(z))||^2, whose KL term the discriminator's logit
    estimates (log of the density ratio of the two joints). Simultaneous updates:

    - discriminator: -log D(z, G(z)) - log(1 - D(F(x), x));
    - generator: logit D(z, G(z)) + ||z - F(G(z))||^2 (the KL's dependence on G is through the
      generator pairs; the second term reconstructs the noise);
    - reconstructor: -logit D(F(x), x) + ||z - F(G(z))||^2 (the KL depends on F through the data
      pairs: without this term nothing moves F(x) of real data towards p(z), and a discriminator
      that tells the pairs apart by z alone wins outright).
    """

    def __init__(self, reconstructor: nn.Module, decoder: nn.Module, observation: Observation, latent_dim: int,
                 event_shape: tuple[int, ...], critic: Critic) -> None:  # fmt: skip
        super().__init__(decoder, observation, latent_dim, event_shape)
        self.reconstructor, self.critic = reconstructor, critic

    def players(self) -> list[Player]:
        return [Player("generator", _params(self.decoder, self.observation), "generator"),
                Player("reconstructor", _params(self.reconstructor), "generator"),
                Player("disc", _params(self.critic), "discriminator")]  # fmt: skip

    def code(self, x: Tensor, sample: bool = False) -> Tensor:
        """F(x), the reconstructor's noise for x."""
        return self.reconstructor(x)

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """G(F(x))."""
        return self.generate(self.reconstructor(x))

    def losses(self, x: Tensor) -> dict[str, Tensor]:
        b = x.shape[0]
        z = self._prior_draws(x)
        fake = self.generate(z)
        back = self.reconstructor(torch.cat([fake, x]))  # F(G(z)) and F(x)
        logits = self.critic(torch.cat([fake, x]), torch.cat([z, back[b:]]))
        gen, data = logits[:b], logits[b:]
        noise_error = (z - back[:b]).square().sum(-1)
        return {
            "generator": gen + noise_error,
            "reconstructor": noise_error - data,
            "disc": F.softplus(-gen) + F.softplus(data),
            "noise_reconstruction": noise_error.detach(),
        }


# --- builders -----------------------------------------------------------------------------


def check_adversarial(model: str, *, prior: str = "standard", encoder: str = "deterministic", gamma: float = 1.0,
                      feature_layer: int = 0, net: str = "mlp", hidden: Sequence[int] = (200, 200),
                      res_blocks: int = 2) -> None:  # fmt: skip
    """Refuses settings of an adversarial model that cannot work (ConfigError)."""
    if model not in ADVERSARIAL:
        raise ConfigError(f"unknown adversarial model {model!r}; choose one of: {', '.join(ADVERSARIAL)}")
    if is_import_path(net):
        raise ConfigError(
            f"net={net!r}: your own networks are for model='vae'; model={model!r} builds discriminators in the "
            f"layout of a built-in backbone: use net='mlp', 'conv' or 'resnet'"
        )
    if encoder not in ENCODERS:
        raise ConfigError(f"unknown encoder {encoder!r}; choose one of: {', '.join(ENCODERS)}")
    name, _ = check_prior(prior)
    if name == "vamp":
        raise ConfigError(
            "prior= vamp is built from the encoder it is meant to regularize; the adversarial "
            "autoencoder needs a fixed prior: use prior= standard or mog:K"
        )
    if not (gamma >= 0 and gamma < float("inf")):
        raise ConfigError(f"gamma= must be a non-negative number, got {gamma}")
    depth = {"mlp": len(hidden), "conv": 3, "resnet": 4}.get(net, 0)
    if feature_layer < 0 or (depth and feature_layer > depth):
        raise ConfigError(
            f"feature_layer= must be 0 (the discriminator's last hidden layer) or 1 to {depth} "
            f"(the discriminator of net= {net} has {depth} layers), got {feature_layer}"
        )


def _spec(event_shape: tuple[int, ...], latent_dim: int, encoder_out: int, observation: Observation,
          hidden: tuple[int, ...], activation: str, channels: int, res_blocks: int) -> NetSpec:  # fmt: skip
    return NetSpec(event_shape=tuple(event_shape), latent_dim=latent_dim, encoder_out=encoder_out,
                   params_per_dim=observation.params_per_dim, hidden=tuple(hidden), activation=activation,
                   channels=channels, res_blocks=res_blocks)  # fmt: skip


def _critic(net: str, spec: NetSpec, latent_dim: int = 0) -> Critic:
    blocks, width = DISCRIMINATORS[net](spec)
    return Critic(blocks, width, latent_dim)


def _code_critic(spec: NetSpec) -> Critic:
    """A discriminator on latent codes: an MLP of the ``--hidden`` widths."""
    blocks, width = DISCRIMINATORS["mlp"](NetSpec((spec.latent_dim,), spec.latent_dim, 1, 1, spec.hidden, spec.activation))
    return Critic(blocks, width)


def build_adversarial(
    model: str,
    event_shape: tuple[int, ...],
    *,
    likelihood: str = "bernoulli",
    obs_precision: float = 100.0,
    net: str = "mlp",
    resnet_channels: int = 64,
    res_blocks: int = 2,
    hidden: tuple[int, ...] = (200, 200),
    activation: str = "tanh",
    latent_dim: int = 50,
    prior: str = "standard",
    encoder: str = "deterministic",
    gamma: float = 1.0,
    feature_layer: int = 0,
) -> AdversarialModel:
    """Builds one of ``ADVERSARIAL`` from the fields of ``config.ModelConfig``. Generators,
    encoders and the reconstructor are the backbone's (``--net``) decoder and encoder halves;
    discriminators follow the encoder's layout with leaky ReLUs (``nets.DISCRIMINATORS``)."""
    check_adversarial(model, prior=prior, encoder=encoder, gamma=gamma, feature_layer=feature_layer, net=net,
                      hidden=hidden, res_blocks=res_blocks)  # fmt: skip
    event_shape = tuple(event_shape)
    observation = build_observation(likelihood, len(event_shape), obs_precision=obs_precision)
    # VAE-GAN's encoder is a VAE's (Gaussian); VEEGAN's reconstructor is deterministic; the GAN
    # has no encoder (the backbone's encoder half is built and dropped)
    kind = {"vaegan": "gaussian", "gan": "deterministic", "veegan": "deterministic"}.get(model, encoder)
    encoder_out = {"gaussian": 2 * latent_dim, "deterministic": latent_dim}[kind]
    spec = _spec(event_shape, latent_dim, encoder_out, observation, hidden, activation, resnet_channels, res_blocks)
    enc, dec = NETS[net](spec)
    if model == "gan":
        return GAN(dec, observation, latent_dim, event_shape, _critic(net, spec))
    if model == "veegan":
        return VEEGAN(enc, dec, observation, latent_dim, event_shape, _critic(net, spec, latent_dim))
    if model == "vaegan":
        return VAEGAN(enc, dec, observation, latent_dim, event_shape, _critic(net, spec), gamma, feature_layer)
    if model == "aae":
        return AAE(enc, encoder, dec, observation, latent_dim, event_shape, build_prior(prior, latent_dim, event_shape),
                   _code_critic(spec))  # fmt: skip
    return AlphaGAN(enc, encoder, dec, observation, latent_dim, event_shape, _critic(net, spec), _code_critic(spec))


for _name in ADVERSARIAL:
    # a partial keeps build_adversarial's keywords visible, so build_model can refuse unknown ones
    MODELS.register(_name)(functools.partial(build_adversarial, _name))
