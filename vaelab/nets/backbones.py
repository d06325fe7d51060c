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

Your own networks: ``--net package.module:Factory`` (any name with a ``:``) names a factory that
is imported and called as ``Factory(spec, **net_args)`` with the ``NetSpec`` below and the JSON
object of ``--net-args`` as keywords; it returns ``(encoder, decoder)`` with the contract above,
checked once on a batch of zeros when the model is built (``check_outputs``). A run directory that
names such a factory is only rebuilt when the caller allows that code to run (``check_trusted``).
"""

from __future__ import annotations

import importlib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor, nn

from ..core.errors import ConfigError, UntrustedCodeError
from ..core.registry import Registry

ACTIVATIONS: Registry[Callable[[], nn.Module]] = Registry("activation")


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1 forward, the usual (1 - y^2) backward from the saved output."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        y = x.mul(2).sigmoid_().mul_(2).sub_(1)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


_SIGMOID_TANH_MIN = 1 << 16  # elements from which a layer with autograd takes the sigmoid form


@ACTIVATIONS.register("tanh")
class Tanh(nn.Tanh):
    """``nn.Tanh`` computed as 2 sigmoid(2x) - 1, which PyTorch's CPU kernels evaluate 3-4x
    faster than ``torch.tanh`` (a (1000, 200) batch: 0.15 ms against 0.54 ms on one thread),
    and which then leaves the dense layers as nearly all of an MLP's time. The result differs
    from ``torch.tanh`` by at most about 2e-7 (absolute, in float32). One new tensor, transformed
    in place; the backward pass is tanh's own, from the saved output."""

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            # under autograd the custom function's own overhead outweighs the faster kernel on small
            # batches (a training step of 100 examples); it pays on the K particles of IWAE
            return _SigmoidTanh.apply(x) if x.numel() >= _SIGMOID_TANH_MIN else torch.tanh(x)
        return x.mul(2).sigmoid_().mul_(2).sub_(1)

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


# A backbone factory: NetSpec (and, for your own factories, the --net-args keywords) -> (encoder, decoder)
NetFactory = Callable[..., tuple[nn.Module, nn.Module]]
NETS: Registry[NetFactory] = Registry("net")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def is_import_path(net: str) -> bool:
    """Whether ``net`` names a factory to import (``package.module:Factory``) rather than a
    registered backbone."""
    return ":" in net


def split_import_path(net: str) -> tuple[str, str]:
    """``"package.module:Factory"`` -> ``("package.module", "Factory")``, checked for form only
    (nothing is imported); ConfigError if it is not of that form."""
    module, _, attribute = net.partition(":")
    if not all(_NAME.fullmatch(part) for part in (*module.split("."), *attribute.split("."))):
        raise ConfigError(
            f"net={net!r} is neither a built-in backbone ({', '.join(NETS.names())}) nor an import "
            f"path such as net='mypackage.nets:make_nets'"
        )
    return module, attribute


def check_net(net: str, net_args: Mapping[str, Any] | None = None) -> None:
    """Refuses a ``net`` that is neither registered nor an import path, and ``net_args`` that are
    not a JSON-style object of keywords or are given to a built-in backbone (ConfigError). Imports
    nothing."""
    if is_import_path(net):
        split_import_path(net)
    else:
        NETS[net]  # raises ConfigError listing the valid names
    if net_args is None:
        return
    if not isinstance(net_args, Mapping) or not all(isinstance(k, str) and k.isidentifier() for k in net_args):
        raise ConfigError(f"net_args= must be an object of keyword arguments such as {{\"width\": 32}}, got {net_args!r}")
    if not is_import_path(net):
        raise ConfigError(
            f"net_args={dict(net_args)!r} passes keywords to your own factory (net='package.module:Factory'); "
            f"the built-in net={net!r} takes its sizes from the other options: drop net_args="
        )


def check_trusted(net: str, nets: Mapping[str, NetFactory] | None = None, trust_code: bool = False) -> None:
    """Refuses, before anything is imported, a ``net`` that names code to import unless the caller
    passed its factory in ``nets`` or allowed imports with ``trust_code`` (UntrustedCodeError). A
    run directory is data someone may hand you; the code it names runs only when you say so."""
    if not is_import_path(net) or trust_code or (nets is not None and net in nets):
        return
    module = net.partition(":")[0]
    raise UntrustedCodeError(
        f"the run builds its networks with net={net!r}, which would import and run code from module "
        f"{module!r}; if you trust it, pass trust_code=True, or give the factory yourself with "
        f"nets={{{net!r}: factory}}"
    )


def resolve_net(net: str, nets: Mapping[str, NetFactory] | None = None) -> NetFactory:
    """The factory ``net`` names: a registered backbone, an entry of ``nets``, or the attribute
    imported from ``package.module:Factory``. A failing import or a missing attribute is a
    one-line ConfigError naming the module and the attribute."""
    if nets is not None and net in nets:
        return nets[net]
    if not is_import_path(net):
        return NETS[net]
    module_name, attribute = split_import_path(net)
    try:
        found: Any = importlib.import_module(module_name)
    except Exception as err:  # an import runs arbitrary code: any failure is the factory's module's
        raise ConfigError(f"net={net!r}: cannot import module {module_name!r} ({_one_line(err)})") from None
    for part in attribute.split("."):
        if not hasattr(found, part):
            raise ConfigError(f"net={net!r}: module {module_name!r} has no attribute {attribute!r}")
        found = getattr(found, part)
    if not callable(found):
        raise ConfigError(f"net={net!r}: {attribute!r} of module {module_name!r} is not callable")
    return found


def build_nets(net: str, spec: NetSpec, net_args: Mapping[str, Any] | None = None,
               nets: Mapping[str, NetFactory] | None = None) -> tuple[nn.Module, nn.Module]:  # fmt: skip
    """The (encoder, decoder) of backbone ``net`` for ``spec``. Your own factory is called as
    ``factory(spec, **net_args)`` and its networks are checked (``check_outputs``)."""
    check_net(net, net_args)
    factory = resolve_net(net, nets)
    if not is_import_path(net):
        return factory(spec)
    try:
        made = factory(spec, **dict(net_args or {}))
    except Exception as err:  # your code: say whose it was, in one line
        raise ConfigError(f"net={net!r} failed to build the networks ({_one_line(err)})") from None
    if not (isinstance(made, tuple) and len(made) == 2 and all(isinstance(m, nn.Module) for m in made)):
        raise ConfigError(f"net={net!r} must return a pair (encoder, decoder) of torch.nn.Module, got {type(made).__name__}")
    check_outputs(made[0], made[1], spec, f"net={net!r}")
    return made


def _one_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}".replace("\n", " ")


def _probe_like(module: nn.Module) -> dict[str, Any]:
    for tensor in (*module.parameters(), *module.buffers()):
        return {"device": tensor.device, "dtype": tensor.dtype if tensor.is_floating_point() else torch.get_default_dtype()}
    return {}


def check_outputs(encoder: nn.Module | None, decoder: nn.Module, spec: NetSpec, what: str) -> None:
    """Runs the networks once on a batch of two zero inputs (in eval mode, without gradients, so
    no batch statistics move) and refuses outputs of the wrong shape with a one-line ConfigError
    that says which shape was expected: the encoder maps ``(B, *event_shape)`` to ``(B,
    encoder_out)`` (the posterior's parameters), the decoder ``(B, latent_dim)`` to ``(B,
    params_per_dim, *event_shape)`` (the observation model's parameters)."""
    checks = [("decoder", decoder, (spec.latent_dim,), (spec.params_per_dim, *spec.event_shape))]
    if encoder is not None:
        checks.insert(0, ("encoder", encoder, tuple(spec.event_shape), (spec.encoder_out,)))
    for name, module, shape_in, shape_out in checks:
        training = module.training
        module.eval()
        try:
            with torch.no_grad():
                out = module(torch.zeros(2, *shape_in, **_probe_like(module)))
        except Exception as err:
            raise ConfigError(f"{what}: the {name} fails on a batch of shape {(2, *shape_in)} ({_one_line(err)})") from None
        finally:
            module.train(training)
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        if got != (2, *shape_out):
            raise ConfigError(
                f"{what}: the {name} must map a batch of shape (B, {', '.join(map(str, shape_in))}) to "
                f"(B, {', '.join(map(str, shape_out))}), but maps (2, {', '.join(map(str, shape_in))}) to {got}"
            )


def mlp(sizes: Sequence[int], activation: str) -> nn.Sequential:
    """Dense layers ``sizes[0] -> ... -> sizes[-1]`` with an activation between, none after the last."""
    act = ACTIVATIONS[activation]
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2:
            layers.append(act())
    return nn.Sequential(*layers)


class Unflatten(nn.Module):
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
        Unflatten((spec.params_per_dim, *spec.event_shape)),
    )
    return encoder, decoder


@NETS.register("conv")
def conv_nets(spec: NetSpec) -> tuple[nn.Module, nn.Module]:
    """A small ConvNet: two 4x4 stride-2 convolutions (32 and 64 channels) and one dense layer of
    ``hidden[0]`` units, mirrored by transposed convolutions in the decoder. Needs images
    ``(C, H, W)`` with H and W divisible by 4 (28x28 -> 7x7 feature maps)."""
    if len(spec.event_shape) != 3 or spec.event_shape[1] % 4 or spec.event_shape[2] % 4:
        raise ConfigError(
            f"net= conv needs images whose height and width are multiples of 4, got data of "
            f"shape {spec.event_shape}; use net= mlp for this data"
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
        Unflatten(feat),
        nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), act(),
        nn.ConvTranspose2d(32, spec.params_per_dim * c, 4, stride=2, padding=1),
        Unflatten((spec.params_per_dim, c, h, w)),
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
        raise ConfigError(f"resnet_channels= must be at least 1 for net= resnet, got {channels}")
    if res_blocks < 0:
        raise ConfigError(f"res_blocks= must be 0 or more for net= resnet, got {res_blocks}")


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
            f"net= resnet needs images whose height and width are multiples of 4, got data of "
            f"shape {spec.event_shape}; use net= mlp for this data"
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
        Unflatten(feat),
        resnet_decoder_grid(ch, ch, spec.res_blocks, spec.params_per_dim * c),
        Unflatten((spec.params_per_dim, c, h, w)),
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
            f"net= {name} needs images whose height and width are multiples of 4, got data of "
            f"shape {event_shape}; use net= mlp for this data"
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
