"""Where vaelab computes: device names, what ``auto`` picks, and what each device supports.

The library takes ``device=`` (a name below or a ``torch.device``); the CLI's ``--device`` flag
takes the same names. ``auto`` picks CUDA when PyTorch sees a GPU, then Apple's MPS, then the CPU.
"""

from __future__ import annotations

import itertools
from typing import ContextManager

import torch
from torch import nn

from .errors import ConfigError

DEVICE_NAMES = ("auto", "cpu", "cuda", "cuda:N", "mps")  # what device= and --device accept


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """The ``torch.device`` that ``device`` names, checked to be usable here.

    Args:
        device: ``auto`` (or None): CUDA, then MPS, then the CPU; ``cpu``; ``cuda`` (the current
            GPU); ``cuda:N``; ``mps``; or a ``torch.device``, taken as it is (``meta`` included,
            which tests use to find tensors created on the wrong device).

    Raises:
        ConfigError: an unknown name, or a device this machine's PyTorch cannot use.
    """
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(device, str):
        raise ConfigError(f"device={device!r} is not a device name; choose one of: {', '.join(DEVICE_NAMES)}")
    name = device.strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not _mps_available():
            raise ConfigError("device='mps' is not available here (PyTorch sees no Apple GPU); use device='cpu' or device='auto'")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        index = name.partition(":")[2]
        if index and not index.isdigit():
            raise ConfigError(f"device={device!r}: a CUDA device is cuda or cuda:N with N a GPU index (0, 1, ...)")
        if not torch.cuda.is_available():
            build = "a CPU-only build of PyTorch" if torch.version.cuda is None else "no usable GPU"
            raise ConfigError(f"device={device!r} is not available here ({build}); use device='cpu' or device='auto'")
        count = torch.cuda.device_count()
        if index and int(index) >= count:
            raise ConfigError(f"device={device!r}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}")
        return torch.device("cuda", int(index) if index else torch.cuda.current_device())
    raise ConfigError(f"unknown device={device!r}; choose one of: {', '.join(DEVICE_NAMES)}")


def module_device(module: nn.Module) -> torch.device:
    """Where a model computes: the device of its first parameter (or buffer); the CPU for a
    module with neither. Functions that take a model and data move each batch of the data here."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


def fork_rng(device: torch.device) -> ContextManager[None]:
    """``torch.random.fork_rng`` for the CPU's stream and ``device``'s own: ``torch.manual_seed``
    inside seeds both, and both are as they were afterwards (for ``meta``, which draws nothing,
    the CPU's alone)."""
    if device.type in ("cpu", "meta"):
        return torch.random.fork_rng(devices=[])
    index = device.index if device.index is not None else _current_index(device)
    return torch.random.fork_rng(devices=[index], device_type=device.type)


def generator(device: torch.device, seed: int) -> torch.Generator:
    """A ``torch.Generator`` seeded with ``seed`` that can feed random draws on ``device``: a
    CPU generator cannot feed a CUDA kernel, so it lives on the device (on the CPU for the CPU
    itself, keeping CPU draws as they always were, and for ``meta``, which draws no values)."""
    home = torch.device("cpu") if device.type == "meta" else device
    return torch.Generator(device=home).manual_seed(seed)


def _current_index(device: torch.device) -> int:
    module = getattr(torch, device.type, None)
    current = getattr(module, "current_device", None)
    return int(current()) if callable(current) else 0


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def fused_adam_supported(device: torch.device) -> bool:
    """Whether the installed PyTorch has a fused Adam kernel for parameters on ``device`` (CPU
    since 2.4; CUDA, MPS and others as PyTorch lists them); elsewhere the default Adam is used."""
    try:
        from torch.utils._foreach_utils import _get_fused_kernels_supported_devices
    except ImportError:  # an older PyTorch without the list: CUDA only
        return device.type == "cuda"
    return device.type in _get_fused_kernels_supported_devices()
