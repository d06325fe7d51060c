"""Several processes, one result: torchrun's environment, the process group, and how a global
batch is split.

``torchrun --nproc_per_node=N -m vaelab train ...`` starts N processes with RANK, WORLD_SIZE,
LOCAL_RANK and the rendezvous in their environment; ``init`` joins them into a process group
(gloo on the CPU, nccl on CUDA). Every process draws the same global batches from the same
seeded generators and computes its own rows of each (``rows``), under ``sharding.sharded``
so that the noise of every example is the one a single process would draw.
"""

from __future__ import annotations

import datetime
import gc
import os
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist

from .devices import resolve_device
from .errors import ConfigError


@dataclass(frozen=True)
class World:
    """This process's place among the processes of a job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun (or another launcher that sets WORLD_SIZE) started this process as one
    of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world() -> World:
    """The job this process belongs to: the initialized process group's, else one process."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return World()


def init(device: str | torch.device | None = "auto") -> tuple[World, torch.device]:
    """Joins the process group torchrun describes (once) and picks this process's device: with
    CUDA, GPU number LOCAL_RANK (``cuda`` and ``auto``; an explicit ``cuda:N`` is refused, as
    every process would take the same GPU); elsewhere the named device.

    Raises:
        ConfigError: the environment lacks torchrun's variables, or the device cannot serve
            several processes.
    """
    missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
    if missing:
        raise ConfigError(f"WORLD_SIZE is set but {', '.join(missing)} is not: start the processes with torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    named = resolve_device(device)
    if named.type == "cuda":
        if isinstance(device, str) and ":" in device:
            raise ConfigError(f"device={device!r} under torchrun: every process would use that one GPU; use "
                              f"device='cuda' (process LOCAL_RANK takes GPU LOCAL_RANK)")  # fmt: skip
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"process {local_rank} of this machine has no GPU (it has {torch.cuda.device_count()}); "
                              f"start at most that many processes per machine (--nproc_per_node)")  # fmt: skip
        named = torch.device("cuda", local_rank)
        torch.cuda.set_device(named)
    if not dist.is_initialized():
        _import_dynamo()
        backend = "nccl" if named.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=_store(), rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]), timeout=TIMEOUT)  # fmt: skip
    return world(), named


TIMEOUT = datetime.timedelta(minutes=30)  # a collective waits this long for a slow or lost process


def _store() -> dist.Store:
    """The rendezvous store torchrun describes, under a prefix of its own for each restart
    (TORCHELASTIC_RESTART_COUNT): after ``--max-restarts`` starts the processes again, the agent's
    store still holds the addresses the killed processes published, and a process that read one
    of those would wait for a peer that is gone."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # torchrun's agent hosts the store
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), int(os.environ["WORLD_SIZE"]),
                          is_master=not agent and int(os.environ["RANK"]) == 0, timeout=TIMEOUT)  # fmt: skip
    return dist.PrefixStore(f"vaelab/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)


def rows(total: int, w: World) -> tuple[int, int]:
    """(start, size) of this process's rows of a global batch of ``total`` rows: contiguous,
    in rank order, sizes differing by at most one (a rank may get none of a tiny last batch)."""
    base, extra = divmod(total, w.size)
    start = w.rank * base + min(w.rank, extra)
    return start, base + (1 if w.rank < extra else 0)


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """The sum of ``t`` over every process (``t`` itself in one process); ``t`` is not changed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    out = t.detach().clone()
    dist.all_reduce(out)
    return out


def all_count(n: int, device: torch.device) -> int:
    """The sum of a count over every process (collectives need a tensor on the group's device)."""
    return int(all_sum(torch.tensor(n, device=device)))


def sum_gradients(grads: Sequence[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Each gradient summed over every process, in one flat all-reduce (None stays None: a
    parameter that a loss does not reach is unreached in every process)."""
    present = [g for g in grads if g is not None]
    if not present or not (dist.is_available() and dist.is_initialized()):
        return list(grads)
    flat = torch.cat([g.reshape(-1) for g in present])
    dist.all_reduce(flat)
    out, at = [], 0
    for g in grads:
        if g is None:
            out.append(None)
        else:
            out.append(flat[at : at + g.numel()].view_as(g))
            at += g.numel()
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


FINISH_TIMEOUT = datetime.timedelta(minutes=5)  # how long a finished process waits for the others at the end


def finish() -> None:
    """Leaves the process group, if this process joined one: at the end of a command that
    succeeded, once every process has reached this point (a barrier, for at most FINISH_TIMEOUT),
    so that none tears its connections down while another is still in a collective; on the way
    out of an error (an exception propagating through the caller's ``finally``, e.g. a peer that
    was killed), at once. The group is then destroyed and its worker threads joined here, while
    the interpreter is whole: gloo's threads that outlive it (still releasing a collective's
    tensors when Python finalizes) abort the process with "terminate called without an active
    exception"."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if sys.exc_info()[0] is None and dist.get_world_size() > 1:
        try:
            dist.barrier(async_op=True).wait(FINISH_TIMEOUT)
        except Exception:  # a peer is gone or late: its own error ends the job; leave the group anyway
            pass
    gc.collect()  # what still refers to the group (a DistributedDataParallel module in a reference cycle)
    dist.destroy_process_group()


def _import_dynamo() -> None:
    """Imports torch._dynamo before the process group exists. DistributedDataParallel imports it
    in its constructor, and an import of torch._dynamo made while a group exists keeps references
    to that group (torch 2.13: 10 of them, in no container the garbage collector sees), so that
    destroy_process_group() no longer frees it: gloo's worker threads then live on into the
    interpreter's finalization (see finish)."""
    try:
        import torch._dynamo  # noqa: F401
    except Exception:  # a build without it: DistributedDataParallel does not import it either
        pass
