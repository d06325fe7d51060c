"""Encoder and decoder backbones: tensors in, tensors out.

Backbones know nothing about distributions. An encoder maps data ``(B, *event_shape)`` to
``(B, out_features)``; a decoder maps latents ``(N, latent_dim)`` to
``(N, params_per_dim, *event_shape)``, the layout that ``distributions.Observation`` reads.

The backbones in ``NETS`` (``--net``):

- ``mlp``: fully connected layers of ``--hidden`` widths, any data shape.
- ``conv``: two stride-2 convolutions and a dense layer of ``--hidden[0]`` units; images whose
  height and width are multiples of 4.
- ``resnet``: stride-2 convolutions and ``--res-blocks`` residual blocks of ``--resnet-channels``
  channels (the VQ-VAE backbone of van den Oord et al. 2017) with a dense layer to and from the
  latent; images whose height and width are multiples of 4. Its grid-level halves,
  ``resnet_encoder_grid`` and ``resnet_decoder_grid``, map feature maps to feature maps for
  models with spatial latents.
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
    channels: int = 64  # resnet: channels of the convolutional stages
    res_blocks: int = 2  # resnet: residual blocks per side


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


# --- residual backbone (van den Oord et al. 2017, "Neural Discrete Representation Learning", 4.1)


class ResidualBlock(nn.Module):
    """``x + conv1x1(relu(conv3x3(relu(x))))``, ``channels`` in, hidden and out, spatial size kept.

    Always ReLU, as in the VQ-VAE paper, whatever ``--activation`` says (its default, tanh, suits
    the MLP of Burda et al., not deep convolutional stacks). Nothing is applied after the sum, so
    the block is exactly the identity when its last convolution outputs zero.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


def _check_resnet(channels: int, res_blocks: int) -> None:
    if channels < 1:
        raise ConfigError(f"--resnet-channels must be at least 1 for --net resnet, got {channels}")
    if res_blocks < 0:
        raise ConfigError(f"--res-blocks must be 0 or more for --net resnet, got {res_blocks}")


def resnet_encoder_grid(in_channels: int, channels: int, res_blocks: int, out_channels: int) -> nn.Module:
    """Feature maps ``(B, in_channels, H, W)`` to ``(B, out_channels, H/4, W/4)`` (H and W
    multiples of 4): two 4x4 stride-2 convolutions with ReLU, a 3x3 convolution, ``res_blocks``
    residual blocks, ReLU and a 1x1 convolution to ``out_channels`` (no activation after it).
    All inner stages have ``channels`` channels. Raises ConfigError for ``channels < 1`` or
    ``res_blocks < 0``."""
    _check_resnet(channels, res_blocks)
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(channels, channels, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(channels, channels, 3, padding=1),
        *(ResidualBlock(channels) for _ in range(res_blocks)),
        nn.ReLU(),
        nn.Conv2d(channels, out_channels, 1),
    )  # fmt: skip


def resnet_decoder_grid(in_channels: int, channels: int, res_blocks: int, out_channels: int) -> nn.Module:
    """Feature maps ``(B, in_channels, h, w)`` to ``(B, out_channels, 4h, 4w)``: a 3x3 convolution
    to ``channels``, ``res_blocks`` residual blocks, ReLU, then two 4x4 stride-2 transposed
    convolutions (ReLU between them, none after the last, which emits ``out_channels``).
    Raises ConfigError for ``channels < 1`` or ``res_blocks < 0``."""
    _check_resnet(channels, res_blocks)
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1),
        *(ResidualBlock(channels) for _ in range(res_blocks)),
        nn.ReLU(),
        nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1), nn.ReLU(),
        nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1),
    )  # fmt: skip


@NETS.register("resnet")
def resnet_nets(spec: NetSpec) -> tuple[nn.Module, nn.Module]:
    """The VQ-VAE backbone (van den Oord et al. 2017) around a vector latent: the encoder is
    ``resnet_encoder_grid`` (``spec.channels`` channels, ``spec.res_blocks`` residual blocks) then
    a dense layer from the flattened ``(channels, H/4, W/4)`` maps to ``encoder_out``; the decoder
    is a dense layer from z to such maps then ``resnet_decoder_grid``. Needs images ``(C, H, W)``
    with H and W divisible by 4. Uses ReLU throughout (``spec.activation`` and ``spec.hidden`` are
    not used)."""
    if len(spec.event_shape) != 3 or spec.event_shape[1] % 4 or spec.event_shape[2] % 4:
        raise ConfigError(
            f"--net resnet needs images whose height and width are multiples of 4, got data of "
            f"shape {spec.event_shape}; use --net mlp for this data"
        )
    _check_resnet(spec.channels, spec.res_blocks)
    c, h, w = spec.event_shape
    ch = spec.channels
    feat = (ch, h // 4, w // 4)
    n_feat = math.prod(feat)
    encoder = nn.Sequential(
        resnet_encoder_grid(c, ch, spec.res_blocks, ch),
        nn.Flatten(1),
        nn.Linear(n_feat, spec.encoder_out),
    )
    decoder = nn.Sequential(
        nn.Linear(spec.latent_dim, n_feat),
        _Unflatten(feat),
        resnet_decoder_grid(ch, ch, spec.res_blocks, spec.params_per_dim * c),
        _Unflatten((spec.params_per_dim, c, h, w)),
    )
    return encoder, decoder


# --- discriminators (the adversarial models): data in, a flat feature vector out, block by block

# A discriminator is a list of blocks applied in turn; each block ends in a leaky ReLU (slope 0.2,
# as in Radford et al. 2016's DCGAN discriminator) and the last emits a flat vector. Models put a
# linear head on it and may read the output of any block (the VAE-GAN's "l-th layer").
DISCRIMINATORS: Registry[Callable[[NetSpec], tuple[list[nn.Module], int]]] = Registry("net")


def _leaky() -> nn.Module:
    return nn.LeakyReLU(0.2)


def _check_images(name: str, event_shape: tuple[int, ...]) -> None:
    if len(event_shape) != 3 or event_shape[1] % 4 or event_shape[2] % 4:
        raise ConfigError(
            f"--net {name} needs images whose height and width are multiples of 4, got data of "
            f"shape {event_shape}; use --net mlp for this data"
        )


@DISCRIMINATORS.register("mlp")
def mlp_discriminator(spec: NetSpec) -> tuple[list[nn.Module], int]:
    """One block per ``--hidden`` width: dense layer and leaky ReLU. Returns (blocks, width of the
    last block's output)."""
    sizes = [math.prod(spec.event_shape), *spec.hidden]
    blocks: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers = [nn.Flatten(1)] if i == 0 else []
        blocks.append(nn.Sequential(*layers, nn.Linear(n_in, n_out), _leaky()))
    return blocks, sizes[-1]


@DISCRIMINATORS.register("conv")
def conv_discriminator(spec: NetSpec) -> tuple[list[nn.Module], int]:
    """The ``conv`` encoder's layout: two 4x4 stride-2 convolutions (32 and 64 channels), then a
    dense layer of ``hidden[0]`` units; three blocks."""
    _check_images("conv", spec.event_shape)
    c, h, w = spec.event_shape
    width = spec.hidden[0]
    blocks = [
        nn.Sequential(nn.Conv2d(c, 32, 4, stride=2, padding=1), _leaky()),
        nn.Sequential(nn.Conv2d(32, 64, 4, stride=2, padding=1), _leaky()),
        nn.Sequential(nn.Flatten(1), nn.Linear(64 * (h // 4) * (w // 4), width), _leaky()),
    ]
    return blocks, width


@DISCRIMINATORS.register("resnet")
def resnet_discriminator(spec: NetSpec) -> tuple[list[nn.Module], int]:
    """The ``resnet`` encoder's layout: two 4x4 stride-2 convolutions of ``channels`` channels, a
    3x3 convolution with the ``res_blocks`` residual blocks, then a dense layer of ``hidden[0]``
    units; four blocks."""
    _check_images("resnet", spec.event_shape)
    _check_resnet(spec.channels, spec.res_blocks)
    c, h, w = spec.event_shape
    ch, width = spec.channels, spec.hidden[0]
    blocks = [
        nn.Sequential(nn.Conv2d(c, ch, 4, stride=2, padding=1), _leaky()),
        nn.Sequential(nn.Conv2d(ch, ch, 4, stride=2, padding=1), _leaky()),
        nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), *(ResidualBlock(ch) for _ in range(spec.res_blocks)), _leaky()),
        nn.Sequential(nn.Flatten(1), nn.Linear(ch * (h // 4) * (w // 4), width), _leaky()),
    ]
    return blocks, width
