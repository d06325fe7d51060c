"""A VAE with two stochastic layers (Burda et al. 2015, section 5: 784-200-200-100-100-50, tanh).

Generative model p(z2) p(z1|z2) p(x|z1), inference model q(z1|x) q(z2|z1), every conditional a
diagonal Gaussian whose mean and log variance come from a small MLP. The two layers are
presented to the rest of the library as ONE latent vector z = concat(z1, z2) (z1, the layer next
to x, first), so every objective, gradient estimator, evaluator and AIS works on it unchanged:
q(z|x) and p(z) are ``torch.distributions`` objects over that vector, drawn ancestrally and
scored at any z. Neither KL has a closed form: the objectives and the evaluator use the
Monte-Carlo KL from the same particles (``objectives.kl_to_prior``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Normal
from torch.func import functional_call

from ..core import sharding
from ..core.errors import ConfigError
from ..distributions.observation import (
    Observation,
    PosteriorNormal,
    full_precision,
    stop_gradient,
)
from ..distributions.priors import StandardNormalPrior, Expanded
from ..nets.backbones import NETS, NetSpec, mlp
from .vae import VAE

LAYERS = (1, 2)


def check_layers(layers: int, *, posterior: str, prior: str, inference: str, net: str | None) -> None:
    """Refuses settings the two-layer model cannot honour (ConfigError)."""
    if layers not in LAYERS:
        raise ConfigError(f"layers= must be 1 or 2, got {layers}")
    if layers == 1:
        return
    for flag, value, allowed in (("posterior=", posterior, "gaussian"), ("prior=", prior, "standard"),
                                 ("inference=", inference, "amortized"), ("net=", net, "mlp")):  # fmt: skip
        if value != allowed:
            raise ConfigError(
                f"layers= 2 builds Burda et al.'s two-layer model with Gaussian conditionals and MLPs; "
                f"it needs {flag} {allowed}, got {value}"
            )


class GaussianConditional(nn.Module):
    """h -> N(mu(h), diag(exp(log_var(h)))) through an MLP ``[n_in, *hidden, 2 * n_out]``."""

    def __init__(self, n_in: int, hidden: Sequence[int], n_out: int, activation: str) -> None:
        super().__init__()
        self.net = mlp([n_in, *hidden, 2 * n_out], activation)

    def forward(self, h: Tensor, detach: bool = False) -> tuple[Tensor, Tensor]:
        """(mean, scale), each (*S, n_out); ``detach`` evaluates the network with its parameters cut
        from the graph (the gradient still flows through ``h``)."""
        if detach:
            params = {name: p.detach() for name, p in self.net.named_parameters()}
            out = functional_call(self.net, params, (h,))
        else:
            out = self.net(h)
        mean, log_var = full_precision(out).chunk(2, dim=-1)
        return mean, (0.5 * log_var).exp()


def _gauss(value: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """log N(value; mean, diag(scale^2)) summed over the last dimension."""
    return Normal(mean, scale, validate_args=False).log_prob(value).sum(-1)


class TwoLayerPosterior(Distribution):
    """q(z1, z2 | x) = N(z1; mu1, s1) N(z2; mu2(z1), s2(z1)) over z = concat(z1, z2).

    Batch shape (B,), event shape (d1 + d2,). ``rsample`` draws ancestrally and is
    reparameterized through both layers; ``log_prob`` scores any z, evaluating the second
    network at its z1. ``mean`` is the ancestral mean (mu1, mu2(mu1)), a point summary for
    reconstructions and active units (the exact mean of z2 has no closed form).
    ``detach=True`` is the same density with every inference parameter cut from the graph
    (``stop_gradient``, for the STL and DReG estimators).
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, mean1: Tensor, scale1: Tensor, layer2: GaussianConditional, dim2: int,
                 detach: bool = False) -> None:  # fmt: skip
        super().__init__(mean1.shape[:-1], torch.Size([mean1.shape[-1] + dim2]), validate_args=False)
        self.mean1, self.scale1, self.layer2, self.dim2, self.detach = mean1, scale1, layer2, dim2, detach

    def _split(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return z[..., : self.mean1.shape[-1]], z[..., self.mean1.shape[-1] :]

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        sample_shape = torch.Size(sample_shape)
        z1 = PosteriorNormal(self.mean1, self.scale1, validate_args=False).rsample(sample_shape)  # (*S, B, d1)
        mean2, scale2 = self.layer2(z1, self.detach)
        z2 = mean2 + scale2 * sharding.standard_normal(mean2.shape, len(sample_shape), mean2)  # (*S, B, d2)
        return torch.cat([z1, z2], dim=-1)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        z1, z2 = self._split(value)
        mean2, scale2 = self.layer2(z1, self.detach)
        return _gauss(z1, self.mean1, self.scale1) + _gauss(z2, mean2, scale2)

    @property
    def mean(self) -> Tensor:
        mean2, _ = self.layer2(self.mean1, self.detach)
        return torch.cat([self.mean1, mean2], dim=-1)


@stop_gradient.register
def _(q: TwoLayerPosterior) -> Distribution:
    return TwoLayerPosterior(q.mean1.detach(), q.scale1.detach(), q.layer2, q.dim2, detach=True)


class TwoLayerPrior(Distribution):
    """p(z1, z2) = N(z2; 0, I) N(z1; mu(z2), s(z2)) over z = concat(z1, z2).

    Batch shape (), event shape (d1 + d2,); ``sample``/``rsample`` draw ancestrally (z2, then z1);
    ``mean`` is the ancestral mean (mu(0), 0)."""

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, loc2: Tensor, scale2: Tensor, layer1: GaussianConditional, dim1: int) -> None:
        super().__init__(torch.Size(), torch.Size([dim1 + loc2.shape[-1]]), validate_args=False)
        self.loc2, self.scale2, self.layer1, self.dim1 = loc2, scale2, layer1, dim1

    def rsample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        shape = torch.Size(sample_shape)
        z2 = self.loc2 + self.scale2 * torch.randn(*shape, self.loc2.shape[-1], dtype=self.loc2.dtype,
                                                   device=self.loc2.device)  # fmt: skip
        mean1, scale1 = self.layer1(z2)
        return torch.cat([mean1 + scale1 * torch.randn_like(mean1), z2], dim=-1)

    def sample(self, sample_shape: Sequence[int] = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        z1, z2 = value[..., : self.dim1], value[..., self.dim1 :]
        mean1, scale1 = self.layer1(z2)
        return _gauss(z2, self.loc2, self.scale2) + _gauss(z1, mean1, scale1)

    @property
    def mean(self) -> Tensor:
        mean1, _ = self.layer1(self.loc2)
        return torch.cat([mean1, self.loc2], dim=-1)

    def expand(self, batch_shape, _instance=None):  # the evaluator's prior proposal
        return Expanded(self, torch.Size(batch_shape))


class TwoLayerVAE(VAE):
    """Burda et al.'s (2015) two-stochastic-layer VAE; z = concat(z1, z2) of ``d1 + d2`` numbers.

    Inference: x -> ``hidden`` -> (mu1, log var1) of d1; z1 -> ``hidden2`` -> (mu2, log var2) of d2.
    Generation: z2 ~ N(0, I); z2 -> ``hidden2`` -> (mu, log var) of z1; z1 -> reversed ``hidden``
    -> p(x|z1). ``decode`` reads only z1, the first d1 entries of z.

    Args:
        encoder, decoder: the x-side MLPs (``nets.mlp_nets`` with latent size d1).
        observation: turns decoder outputs into p(x|z1).
        dims: (d1, d2), the sizes of the two stochastic layers.
        hidden2: widths of the deterministic layers between z1 and z2 (both directions).
        activation: name in ``nets.ACTIVATIONS``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, observation: Observation, dims: tuple[int, int],
                 hidden2: Sequence[int], activation: str) -> None:  # fmt: skip
        d1, d2 = dims
        super().__init__(encoder, decoder, observation, d1 + d2, prior=StandardNormalPrior(d2))
        self.layer_sizes = (d1, d2)
        self.inference2 = GaussianConditional(d1, hidden2, d2, activation)  # q(z2|z1)
        self.generative1 = GaussianConditional(d2, hidden2, d1, activation)  # p(z1|z2)

    def prior(self) -> Distribution:
        """p(z1, z2); batch shape (), event shape (d1 + d2,)."""
        top = self.latent_prior
        return TwoLayerPrior(top.loc, top.scale, self.generative1, self.layer_sizes[0])

    def prior_through_encoder(self) -> Distribution | None:
        return None

    def encode(self, x: Tensor) -> Distribution:
        """q(z1, z2|x) for x of shape (B, *event_shape); batch (B,), event (d1 + d2,)."""
        mean1, log_var1 = full_precision(self.encoder(x)).chunk(2, dim=-1)
        return TwoLayerPosterior(mean1, (0.5 * log_var1).exp(), self.inference2, self.layer_sizes[1])

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z1) for z of shape (*S, d1 + d2); only z1 = z[..., :d1] is read."""
        d1 = self.layer_sizes[0]
        lead = z.shape[:-1]
        out = self.decoder(z[..., :d1].reshape(-1, d1))
        return self.observation(out.view(*lead, *out.shape[1:]))

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        inference = [*self.encoder.parameters(), *self.inference2.parameters()]
        ids = {id(p) for p in inference}
        return {"encoder": inference, "decoder": [p for p in self.parameters() if id(p) not in ids]}


def build_two_layer(event_shape: tuple[int, ...], observation: Observation, *, hidden: tuple[int, ...],
                    activation: str, latent_dim: int) -> TwoLayerVAE:  # fmt: skip
    """The two-layer VAE: top layer of ``latent_dim`` units, first layer of 2 * latent_dim, x-side
    deterministic widths ``hidden`` and z1<->z2 widths half of each (rounded up; the defaults 200,200 and 50
    give Burda et al.'s 784-200-200-100-100-50)."""
    d1, d2 = 2 * latent_dim, latent_dim
    spec = NetSpec(event_shape=tuple(event_shape), latent_dim=d1, encoder_out=2 * d1,
                   params_per_dim=observation.params_per_dim, hidden=tuple(hidden), activation=activation)  # fmt: skip
    encoder, decoder = NETS["mlp"](spec)
    hidden2 = tuple(max(1, math.ceil(h / 2)) for h in hidden)
    return TwoLayerVAE(encoder, decoder, observation, (d1, d2), hidden2, activation)
