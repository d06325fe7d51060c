"""Encoder and decoder backbones: tensors in, tensors out.

Backbones know nothing about distributions. An encoder maps data ``(B, *event_shape)`` to
``(B, out_features)``; a decoder maps latents ``(N, latent_dim)`` to
``(N, params_per_dim, *event_shape)``, the layout that ``distributions.Observation`` reads.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from torch import Tensor, nn

from .errors import ConfigError
from .registry import Registry

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")
ACTIVATIONS.register("tanh")(nn.Tanh)
ACTIVATIONS.register("relu")(nn.ReLU)
ACTIVATIONS.register("elu")(nn.ELU)
ACTIVATIONS.register("softplus")(nn.Softplus)
ACTIVATIONS.register("gelu")(nn.GELU)
ACTIVATIONS.register("leaky-relu")(nn.LeakyReLU)


@dataclass(frozen=True)
class NetSpec:
    """What a backbone factory needs to know."""

    event_shape: tuple[int, ...]  # shape of one data example, e.g. (1, 28, 28) or (64,)
    latent_dim: int  # size of z
    encoder_out: int  # numbers the encoder emits per example (2 * latent_dim for a diagonal Gaussian)
    params_per_dim: int  # numbers the decoder emits per data dimension (observation model)
    hidden: tuple[int, ...]  # hidden layer widths
    activation: str  # name in ACTIVATIONS


NETS: Registry[Callable[[NetSpec], tuple[nn.Module, nn.Module]]] = Registry("net")


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Dense layers ``sizes[0] -> ... -> sizes[-1]`` with an activation between, none after the last."""
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class _Unflatten(nn.Module):
    """Reshapes ``(N, prod(shape))`` to ``(N, *shape)`` (a view, no copy)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: Tensor) -> Tensor:
        return x.view(x.shape[0], *self.shape)


@NETS.register("mlp")
def mlp_nets(spec: NetSpec) -> tuple[nn.Module, nn.Module]:
    """Fully connected encoder and decoder (Burda et al. 2015 use 784-200-200-50, tanh)."""
    n_data = math.prod(spec.event_shape)
    encoder = nn.Sequential(
        nn.Flatten(1), mlp([n_data, *spec.hidden, spec.encoder_out], spec.activation)
    )
    decoder = nn.Sequential(
        mlp([spec.latent_dim, *reversed(spec.hidden), spec.params_per_dim * n_data], spec.activation),
        _Unflatten((spec.params_per_dim, *spec.event_shape)),
    )
    return encoder, decoder


@NETS.register("conv")
def conv_nets(spec: NetSpec) -> tuple[nn.Module, nn.Module]:
    """A small ConvNet: two 4x4 stride-2 convolutions (32 and 64 channels) and one dense layer of
    ``hidden[0]`` units, mirrored by transposed convolutions in the decoder. Needs images
    ``(C, H, W)`` with H and W divisible by 4 (28x28 -> 7x7 feature maps)."""
    if len(spec.event_shape) != 3 or spec.event_shape[1] % 4 or spec.event_shape[2] % 4:
        raise ConfigError(
            f"--net conv needs images whose height and width are multiples of 4, got data of "
            f"shape {spec.event_shape}; use --net mlp for this data"
        )
    c, h, w = spec.event_shape
    act = ACTIVATIONS[spec.activation]
    width = spec.hidden[0]
    feat = (64, h // 4, w // 4)
    n_feat = math.prod(feat)
    encoder = nn.Sequential(
        nn.Conv2d(c, 32, 4, stride=2, padding=1), act(),
        nn.Conv2d(32, 64, 4, stride=2, padding=1), act(),
        nn.Flatten(1),
        nn.Linear(n_feat, width), act(),
        nn.Linear(width, spec.encoder_out),
    )  # fmt: skip
    decoder = nn.Sequential(
        nn.Linear(spec.latent_dim, width), act(),
        nn.Linear(width, n_feat), act(),
        _Unflatten(feat),
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), act(),
        nn.ConvTranspose2d(32, spec.params_per_dim * c, 4, stride=2, padding=1),
        _Unflatten((spec.params_per_dim, c, h, w)),
    )  # fmt: skip
    return encoder, decoder
