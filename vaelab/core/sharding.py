"""A batch split across processes, so that the split changes nothing but the speed.

Under torchrun every process holds rows ``[start, start + size)`` of a global batch of ``total``
rows. Two things would otherwise depend on the split:

- Noise with a batch dimension (the reparameterized draws of q(z|x)). Every process keeps the
  global generator in the same state and draws the noise of the whole global batch, then takes
  its own rows, so each example gets exactly the noise one process would have given it, and the
  generators stay in step. Drawing a batch's noise costs a small fraction of its forward pass.
- Batch statistics that decide something (free bits' batch-mean KL per dimension): these are
  summed over all processes.

Outside ``sharded`` (one process, the usual case) both are the plain local operations, drawing
exactly what ``torch.distributions`` would.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class Shard:
    """This process's rows of the global batch: ``[start, start + size)`` of ``total``."""

    start: int
    size: int
    total: int
    reduce: bool = True  # sum batch statistics over the processes (torch.distributed)


_SHARD: ContextVar[Shard | None] = ContextVar("vaelab_shard", default=None)


@contextlib.contextmanager
def sharded(shard: Shard | None) -> Iterator[None]:
    """Within this block, batch-dimension noise and batch statistics follow ``shard``."""
    token = _SHARD.set(shard)
    try:
        yield
    finally:
        _SHARD.reset(token)


def current() -> Shard | None:
    return _SHARD.get()


def standard_normal(shape: Sequence[int], batch_dim: int, like: Tensor) -> Tensor:
    """N(0, 1) noise of ``shape`` on ``like``'s device and dtype, whose dimension ``batch_dim``
    indexes the examples of the batch (sample dimensions lead). Sharded, this process's rows of
    the global batch's noise."""
    shape = torch.Size(shape)
    shard = _SHARD.get()
    if shard is None or batch_dim >= len(shape) or shape[batch_dim] != shard.size:
        return torch.empty(shape, dtype=like.dtype, device=like.device).normal_()
    full = list(shape)
    full[batch_dim] = shard.total
    noise = torch.empty(full, dtype=like.dtype, device=like.device).normal_()
    return noise.narrow(batch_dim, shard.start, shard.size)


def batch_mean(values: Tensor) -> Tensor:
    """The mean over dimension 0 (the examples) of the whole global batch. Not differentiable
    across processes: for statistics that decide (free bits' exempt dimensions), not for losses."""
    shard = _SHARD.get()
    if shard is None or not shard.reduce:
        return values.mean(0)
    import torch.distributed as dist

    total = values.detach().sum(0)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return total / shard.total
