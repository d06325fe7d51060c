"""The life of a run directory: start a run, resume it, say when it is finished, and train a
configuration end to end (``start_run``, ``resume_run``, ``nothing_to_do``, ``complete_run``)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..core import distributed
from ..core.devices import resolve_device
from ..core.errors import (
    RunError,
    RunFinishedError,
)
from ..core.files import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    atomic_write_bytes,
    load_weights,
    read_metadata,
    run_lock,
)
from ..inference.schedules import kl_schedule
from ..nets.backbones import NetFactory, check_trusted
from . import config as cfg
from .families import family
from .rundir import (
    check_compatible,
    check_data_options,
    load_data,
    model_from_config,
    read_config,
)
from .trainer import Callback, Trainer, TrainResult

# -- runs --------------------------------------------------------------------------------


def _setup(
    config: cfg.RunConfig,
    run_dir: Path | None,
    progress: bool,
    callbacks: Sequence[Callback] = (),
    *,
    init: bool = True,
    trust_code: bool = True,
    nets: Mapping[str, NetFactory] | None = None,
    device: str | torch.device | None = "auto",
    compile: str = "auto",
    fused: str = "auto",
) -> Trainer:
    """The Trainer of a run; ``init``: copy the weights of ``config.train.init_from`` (when set)
    into the new model (a resumed run's checkpoint replaces them anyway). ``trust_code`` and
    ``nets``: as in ``runs.load``, for a configuration that names a network factory. The model
    is built on the CPU (the same initial weights everywhere) and moved to ``device``."""
    if distributed.launched():  # one of torchrun's processes: join the others, on this process's device
        device = distributed.init(device)[1]
    device = resolve_device(device)  # an unusable device is refused before the data is read
    check_data_options(config)
    train = load_data(config, "train", progress=progress, stream=True)
    if len(train) == 0:
        raise RunError(f"the training split of {config.data.data} is empty")
    check_compatible(config, train)
    valid = load_data(config, "valid", stream=True) if config.data.valid_fraction > 0 else None
    torch.manual_seed(config.train.seed)  # initialization and rsample draw from the global generator
    model = model_from_config(config, train.event_shape, nets=nets, trust_code=trust_code)
    t = config.train
    if t.init_from is not None and init:
        _init_weights(model, config, train.event_shape)
    kind = family(config.model.model)  # its objective (None: each player its own loss) and monitors
    objective = kind.objective(t)
    schedule = None
    if t.kl_warmup or t.kl_cycles:
        kl_scale = kl_schedule(warmup=t.kl_warmup, cycles=t.kl_cycles, epochs=t.epochs)
        schedule = lambda time: {"kl_scale": kl_scale(time)}
    monitors = kind.monitors(model)
    return Trainer(model, objective, train, valid, t, run_dir=run_dir, progress=progress,
                   schedule=schedule, monitors=monitors, callbacks=callbacks, device=device, compile=compile,
                   fused=fused)  # fmt: skip


def _init_weights(model: nn.Module, config: cfg.RunConfig, event_shape: tuple[int, ...]) -> None:
    """Warm start: the model weights of the run ``config.train.init_from``, whose model must be
    built the same way (every model field, and the data shape); its optimizer state, epoch count
    and random state are not taken."""
    source = Path(config.train.init_from)
    try:
        theirs, their_shape = read_config(source)
    except RunError as err:
        raise RunError(f"init_from={source}: {err}") from None
    differ = [f.name for f in dataclasses.fields(config.model)
              if getattr(config.model, f.name) != getattr(theirs.model, f.name)]  # fmt: skip
    if tuple(their_shape) != tuple(event_shape):
        differ.append("data shape")
    if differ:
        detail = "; ".join(
            f"{name}: {_show(getattr(theirs.model, name))} there, {_show(getattr(config.model, name))} here"
            if name != "data shape" else f"data shape: {list(their_shape)} there, {list(event_shape)} here"
            for name in differ
        )  # fmt: skip
        raise RunError(f"init_from={source} has another architecture ({detail}); its weights cannot be copied")
    weights = source / MODEL_FILE
    if not weights.exists():
        raise RunError(f"init_from={source} has no weights yet ({weights} does not exist)")
    load_weights(model, weights)


def _show(value: Any) -> str:
    return ",".join(str(v) for v in value) if isinstance(value, (tuple, list)) else str(value)


def epoch_line(record: dict, epochs: int | None = None) -> str:
    """One line of console text about an epoch's metrics record: the training loss (each
    player's, for the adversarial models), the validation bound (or each player's validation
    loss), and the monitors' KL, active units or codebook use. The CLI prints it after every epoch."""
    parts = [f"epoch {record['epoch']}" + (f"/{epochs}" if epochs else "")]
    players = [k[len("train_") : -len("_loss")] for k in record
               if k.startswith("train_") and k.endswith("_loss") and k != "train_loss"]  # fmt: skip
    if "train_loss" in record:
        parts.append(f"train loss {record['train_loss']:.3f}")
    elif players:
        parts.append("train " + ", ".join(f"{p} {record[f'train_{p}_loss']:.3f}" for p in players))
    if "valid_bound" in record:
        best = " (best so far)" if record.get("best_epoch") == record["epoch"] else ""
        parts.append(f"valid bound {record['valid_bound']:.3f} nats{best}")
    elif any(f"valid_{p}_loss" in record for p in players):
        parts.append("valid " + ", ".join(f"{p} {record[f'valid_{p}_loss']:.3f}" for p in players if f"valid_{p}_loss" in record))
    if "valid_kl" in record:
        parts.append(f"KL {record['valid_kl']:.2f}")
    if record.get("kl_scale", 1.0) != 1.0:
        parts.append(f"KL weight {record['kl_scale']:.2f}")
    if "active_units" in record:
        parts.append(f"active units {record['active_units']}")
    if "codebook_perplexity" in record:
        parts.append(f"codebook perplexity {record['codebook_perplexity']:.1f}")
    return "  ".join(parts)


def start_run(
    config: cfg.RunConfig,
    run_dir: str | Path,
    *,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    device: str | torch.device | None = "auto",
    compile: str = "auto",
    fused: str = "auto",
) -> TrainResult:
    """Starts a new run in ``run_dir`` (which must not exist, or be empty).

    Data and model are built before anything is written, so a bad configuration leaves no trace.
    ``callbacks`` are the Trainer's (called with each epoch's record); ``device``: where to
    train (``auto``: CUDA, then MPS, then the CPU; see ``devices.resolve_device``); ``compile``
    and ``fused``: the Trainer's fast paths (``Trainer``), not part of the run's configuration.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise RunError(
            f"{run_dir} already exists and is not empty; pick another --out, or continue it "
            f"with: vaelab train --resume {run_dir}"
        )
    trainer = _setup(config, run_dir, progress, callbacks, device=device, compile=compile, fused=fused)
    distributed.barrier()  # every process has checked the directory before rank 0 writes into it
    if not trainer.writes:
        return trainer.fit()
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        if (run_dir / CONFIG_FILE).exists():  # another process started a run here meanwhile
            raise RunError(f"{run_dir} was just started by another process; pick another directory")
        atomic_write_bytes(run_dir / CONFIG_FILE, cfg.save_json(config, trainer.train.event_shape))
        return trainer.fit()


def resume_run(
    run_dir: str | Path,
    *,
    epochs: int | None = None,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    trust_code: bool = False,
    nets: Mapping[str, NetFactory] | None = None,
    device: str | torch.device | None = "auto",
    compile: str = "auto",
    fused: str = "auto",
) -> TrainResult:
    """Continues a run from its checkpoint, with its own saved configuration.

    Args:
        run_dir: an interrupted run, or (with ``epochs``) a finished one.
        epochs: train to this many epochs in all (more than the run has done); the run then
            ends bitwise as if it had been started with ``epochs``: the data order, random
            state, optimizer, KL warm-up and early-stopping count go on from where they were.
            Its config.json records the new number. Refused for a cyclical KL schedule (its
            period is the total epochs over the cycles, so the epochs done would have been
            annealed differently) and for a run that stopped early (it would stop again).
        callbacks: the Trainer's (called with each epoch's record).
        trust_code, nets: for a run whose configuration names your own network factory
            (``runs.load`` explains why).
        device: where to go on training; it may differ from where the run started (a GPU run
            resumed on the CPU, say), which logs a one-line note on the "vaelab" logger: the
            weights, optimizer state and data order continue exactly, the model's noise is
            drawn by the new device's generator.
        compile, fused: the Trainer's fast paths (``Trainer``); a resumed run may choose others.
    """
    run_dir = Path(run_dir)
    config, event_shape = read_config(run_dir)
    check_trusted(config.model.net, nets, trust_code)  # before the data is loaded
    if distributed.launched():  # one of torchrun's processes: join the others first
        device = distributed.init(device)[1]
    # a second process is refused before it reads the checkpoint; under torchrun rank 0 holds the lock
    with run_lock(run_dir) if distributed.world().is_main else contextlib.nullcontext():
        return _resume(run_dir, config, event_shape, epochs, progress, callbacks, trust_code, nets, device,
                       {"compile": compile, "fused": fused})  # fmt: skip


def _resume(run_dir: Path, config: cfg.RunConfig, event_shape: tuple[int, ...], epochs: int | None, progress: bool,
            callbacks: Sequence[Callback], trust_code: bool, nets: Mapping[str, NetFactory] | None,
            device: str | torch.device | None, speed: Mapping[str, str]) -> TrainResult:  # fmt: skip
    reason = nothing_to_do(run_dir, epochs)
    if reason is not None:  # found before the data is loaded: a requeue loop's call costs nothing
        raise RunFinishedError(reason)
    if epochs is not None:
        if config.train.kl_cycles and epochs != config.train.epochs:
            raise RunError(
                f"epochs={epochs}: {run_dir} anneals the KL in {config.train.kl_cycles} cycles spread over its "
                f"{config.train.epochs} epochs, and with {epochs} every cycle would be longer, the epochs done "
                f"included; start a new run (init_from={run_dir} warm-starts it from these weights)"
            )
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, epochs=epochs))
    has_checkpoint = run_dir.joinpath(CHECKPOINT_DIR, CHECKPOINT_FILE).exists()
    trainer = _setup(config, run_dir, progress, callbacks, init=not has_checkpoint, trust_code=trust_code, nets=nets,
                     device=device, **speed)  # fmt: skip
    if has_checkpoint:
        trainer.load_checkpoint()
    state = trainer.state
    if epochs is not None and epochs <= state.epoch:
        raise RunError(f"epochs={epochs} is not more than the {state.epoch} epochs {run_dir} has done; ask for more")
    if state.finished:
        if not state.stop_reason.startswith("reached"):
            raise RunError(
                f"{run_dir} stopped early ({state.stop_reason}), and a run started with {epochs} epochs "
                f"would have stopped there too; start a new run (init_from={run_dir} warm-starts it)"
            )
        if not state.continuable:
            raise RunError(
                f"{run_dir} was finished by an older vaelab, whose checkpoint kept the best weights only, "
                f"so it cannot go on exactly; start a new run (init_from={run_dir} warm-starts it)"
            )
        state.finished, state.stop_reason = False, ""
    if trainer.writes:
        if epochs is not None:
            atomic_write_bytes(run_dir / CONFIG_FILE, cfg.save_json(config, event_shape))
        truncate_metrics(run_dir / METRICS_FILE, trainer.state.metrics_lines)
    return trainer.fit()


def nothing_to_do(run_dir: str | Path, epochs: int | None = None) -> str | None:
    """Why resuming ``run_dir`` (to ``epochs`` in all) has nothing to do, or None when it has: the
    run finished, and ``epochs`` is None or the number it was asked for. A job scheduler that
    requeues `vaelab train --resume RUN` can therefore always call it. Reads the checkpoint's
    metadata only, not the data."""
    run_dir = Path(run_dir)
    config, _ = read_config(run_dir)
    path = run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
    if not path.exists():
        return None
    meta = read_metadata(path)  # the state, without reading the weights the resume reads next
    try:
        state = json.loads(meta["state"])
        finished, done, why = bool(state["finished"]), int(state["epoch"]), str(state["stop_reason"])
    except (KeyError, TypeError, ValueError):
        raise RunError(f"checkpoint {path} is incomplete or does not match the run (no training state)") from None
    if not finished or epochs not in (None, config.train.epochs):
        return None
    return (f"{run_dir} already finished ({done} epochs: {why}); train it on with more epochs (epochs=N, "
            f"N > {done}), or start a new run")  # fmt: skip


def complete_run(config: cfg.RunConfig, run_dir: str | Path, *, progress: bool = True,
                 device: str | torch.device | None = "auto") -> TrainResult | None:  # fmt: skip
    """Brings ``run_dir`` to the end of its training: starts it if it is new, resumes it if it was
    interrupted, and leaves it alone (returns None) if it already finished. A run directory that
    holds a different configuration is an error, so results are never silently reused for
    another setting. Benchmarks and sweeps that may be restarted use this."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        return start_run(config, run_dir, progress=progress, device=device)
    saved, _ = read_config(run_dir)
    if saved != config:
        raise RunError(f"{run_dir} holds a run with a different configuration; choose another directory")
    if nothing_to_do(run_dir) is not None:
        return None
    return resume_run(run_dir, progress=progress, trust_code=True, device=device)  # the caller's own configuration


def truncate_metrics(path: Path, keep: int) -> None:
    """Drops metric lines written after the checkpoint (an epoch that will be redone)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines(keepends=True)
    if len(lines) != keep:
        atomic_write_bytes(path, "".join(lines[:keep]).encode())
