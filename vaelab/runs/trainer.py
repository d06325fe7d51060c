"""One trainer for every model: the loop, Adam, validation, model selection, early stopping,
checkpoint/resume, metrics and the progress bar.

The trainer reduces an objective's per-example results to a scalar (the only place that
happens), and knows nothing else about the model. Randomness comes from two seeded sources whose
states are checkpointed at every epoch boundary: the global torch generator (initialization and
``rsample``) and a ``torch.Generator`` for the data (order and binarization draws). A run killed
at any moment and resumed therefore ends bitwise-identical to an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core import distributed, sharding
from ..core.devices import fused_adam_supported, module_device, resolve_device
from ..core.errors import (
    ConfigError,
    RunError,
    TrainingDiverged,
    WriteError,
)
from ..core.files import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    append_line,
    atomic_write_bytes,
    load_tensors,
    read_metrics,
    run_lock,
    save_model,
    save_tensors,
)
from ..data.imagefolder import StreamSplit
from ..data.splits import Split
from ..nets.backbones import is_import_path
from . import config as cfg
from .rundir import (
    model_from_config,
)
from .speed import StepObjective, adam_step, check_compile, check_fused

Objective = Callable[..., NamedTuple]
# training time in epochs (fractional) -> keyword options for the objective, e.g. {"kl_scale": 0.5}
ObjectiveSchedule = Callable[[float], dict[str, Any]]
# (model, data, epoch) -> extra metrics for the epoch's record; a monitor may also have a
# ``finish(records)`` method, called once at the end of training with every epoch's record
Monitor = Callable[[nn.Module, Tensor, int], dict[str, Any]]
# called with each epoch's finished record (logged and checkpointed), e.g. to print a line
Callback = Callable[[dict], None]


MONITOR_EXAMPLES = 5000  # examples the monitors see: of the training set without validation, of a streamed validation set


@dataclass
class TrainState:
    """Where training stands at an epoch boundary (everything but the tensors)."""

    epoch: int = 0  # epochs completed
    # epoch of the best validation bound; 0 while none has been above -inf (all NaN or -inf so
    # far), and then the latest weights are the ones kept
    best_epoch: int = 0
    best_bound: float = -math.inf
    bad_epochs: int = 0  # epochs since the best one, for early stopping
    metrics_lines: int = 0  # lines of metrics.jsonl that belong to the completed epochs
    finished: bool = False
    stop_reason: str = ""
    seconds: float = 0.0  # wall-clock seconds of the completed epochs (training, validation, monitors)
    # the finished checkpoint holds the last epoch's weights (not only the best), so training can
    # go on from it exactly; False in checkpoints of older versions, which kept the best only
    continuable: bool = False


@dataclass
class TrainResult:
    """What ``Trainer.fit`` returns."""

    epochs: int  # epochs completed
    best_epoch: int  # epoch whose weights were kept: the last one without validation; 0 when
    # validation never gave a bound above -inf, and the last epoch's weights were kept
    best_bound: float  # best validation bound (nan without validation, or when best_epoch is 0)
    stop_reason: str  # why training stopped, and that validation never gave a number if so
    history: list[dict]


class Trainer:
    """Fits a model by maximizing the mean of an objective's ``objective`` field with Adam.

    A model with ``players()`` (the adversarial models) is trained player by player instead: one
    Adam per player (discriminator-side players with ``lr_disc`` and ``adam_betas_disc``), each
    on the mean of its own per-example loss from ``model.losses(x)``, in the model's ``update``
    scheme (see ``_step_players``); ``objective`` is then None. Such a model has no bound: the
    last epoch's weights are kept, and validation logs every player's loss.

    Args:
        model: any ``nn.Module``; the objective decides how it is used.
        objective: ``f(model, x)`` returning a NamedTuple of per-example tensors [B] with at least
            ``objective`` (maximized) and ``bound`` (logged, and used for model selection); None
            for a model with players.
        train: training split, in memory (``Split``) or streamed from disk (``StreamSplit``);
            batches are drawn from it with the trainer's data generator.
        valid: validation split (either kind), or None to keep the last model and never stop early.
        config: optimizer, epochs, patience and seed (a ``config.TrainConfig``), or the run's
            whole configuration (a ``config.RunConfig``: data, model and training), which makes
            ``run_dir`` a complete run directory.
        run_dir: where checkpoints, metrics and weights go; None trains in memory only. With a
            ``RunConfig`` the trainer also writes ``config.json`` there (checking first that the
            configuration rebuilds a model of the same parameters), so ``vaelab.load``,
            ``vaelab evaluate`` and the other commands open the directory; with a
            ``TrainConfig`` alone it holds the training state but cannot be opened as a run.
        progress: show a progress bar on stderr.
        schedule: maps training time t in epochs (fractional, step by step) to keyword options
            passed to the objective, e.g. ``{"kl_scale": min(1, t / 10)}``. The options of an
            epoch's last training step are logged and are the ones its validation uses. The
            trainer does not interpret them.
        monitors: called after each epoch with (model, data, epoch), where data is the fixed
            validation set (or the first examples of the training set without one); the dicts
            they return are added to the epoch's metrics record. A monitor with a ``finish``
            method gets every epoch's record (of earlier sessions too) when training ends.
        callbacks: called with each epoch's record once it is logged and checkpointed (the
            library prints nothing; the CLI prints ``epoch_line(record)`` from here).
        device: where to train: ``auto`` (CUDA, then MPS, then the CPU), ``cpu``, ``cuda``,
            ``cuda:N``, ``mps`` or a ``torch.device``; the model is moved there and every batch
            follows it. None trains where the model's parameters are.
        compile: "auto", "on" or "off": run the training step's objective through
            ``torch.compile`` (``speed.StepObjective``; "auto" where it works and pays: epochs of
            at least 500 steps of at least 8 particles per example; "on" with a warning when it
            falls back to eager). It changes how fast, not
            what, is trained, so it is not part of the run's configuration.
        fused: "auto" or "off": train the VAE family's commonest case (an MLP VAE with the
            diagonal Gaussian posterior, the N(0, I) prior and a Bernoulli or fixed-precision
            Gaussian likelihood, on the single-particle analytic-KL ELBO, in fp32, in one process)
            with a hand-derived forward and backward pass (``fused.FusedELBO``: the same values
            and gradients from the same random draws, up to float rounding, a third or so faster
            than the step through autograd on a 2-core CPU); "auto" uses it wherever it applies, unless
            ``compile="on"`` asks for torch.compile. Like ``compile``, not part of the run's
            configuration.
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective | None,
        train: Split | StreamSplit,
        valid: Split | StreamSplit | None,
        config: cfg.TrainConfig | cfg.RunConfig,
        run_dir: str | Path | None = None,
        progress: bool = True,
        schedule: ObjectiveSchedule | None = None,
        monitors: Sequence[Monitor] = (),
        callbacks: Sequence[Callback] = (),
        device: str | torch.device | None = None,
        compile: str = "auto",
        fused: str = "auto",
    ) -> None:
        self.device = resolve_device(device) if device is not None else module_device(model)
        self.model = model.to(self.device)
        # under torchrun: every process computes its rows of each global batch; rank 0 alone writes
        self.world = distributed.world()
        self.writes = self.world.is_main
        self.callbacks = tuple(callbacks)
        self.schedule = schedule
        self.monitors = tuple(monitors)
        self.objective = objective
        self.train = train
        self.valid = valid if valid is not None and len(valid) > 0 else None
        # the whole run's configuration, when given, is what config.json records
        self.run_config = config if isinstance(config, cfg.RunConfig) else None
        config = config.train if isinstance(config, cfg.RunConfig) else config
        self.config = config
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.progress = progress
        # the data generator stays on the CPU, where the batches are drawn, on every device
        self.generator = torch.Generator().manual_seed(config.seed + 1)
        # mixed precision: networks under autocast, densities in fp32 (the models cast their
        # networks' outputs); fp16 also needs a gradient scaler against underflowing gradients
        self.autocast_dtype = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}[config.precision]
        self.scaler = torch.amp.GradScaler(self.device.type) if config.precision == "16-mixed" else None
        # A model with several players (the adversarial ones) gets one optimizer per player and
        # keeps its last weights (it has no bound to select on); any other model is one player.
        self.players = _check_players(model) if hasattr(model, "players") else None
        if self.players is None:
            self.optimizers = {"optim": self._adam(model.parameters(), config.lr, config.adam_betas)}
        else:
            self.optimizers = {
                f"optim.{p.name}": self._adam(p.parameters, *_settings(config, p.role)) for p in self.players
            }
        self.optimizer = self.optimizers.get("optim")
        self.ddp = self._wrap_ddp() if self.world.size > 1 else None  # None for players: see _step_players
        compile = check_compile(compile)
        self.step_objective = None if objective is None or self.players is not None else StepObjective(
            objective, compile, model, steps_per_epoch=self._steps_per_epoch(), scheduled=schedule is not None)  # fmt: skip
        # the hand-derived step: in one process, in fp32, where compile="on" does not ask for the compiler
        self.fused_step = None
        if check_fused(fused) == "auto" and self.players is None and self.world.size == 1 and self.autocast_dtype is None \
                and compile != "on":  # fmt: skip
            from ..models.fused import FusedELBO

            self.fused_step = FusedELBO.build(model, objective)
        self.state = TrainState()
        self.best_weights: dict[str, Tensor] | None = None
        self.history: list[dict] = []
        self.tensorboard = None  # --tensorboard: each epoch's record and image grids in RUN/tensorboard
        if config.tensorboard and self.run_dir is not None and self.writes:
            from .tensorboard import N_POINTS, TENSORBOARD_DIR, TensorBoardLog

            shown = self.valid if self.valid is not None else train
            # head(), not fixed(): a streamed image folder has no whole-split tensor
            self.tensorboard = TensorBoardLog(self.run_dir / TENSORBOARD_DIR, examples=lambda: shown.head(N_POINTS))

    def _wrap_ddp(self) -> nn.Module | None:
        """The objective as the forward of a DistributedDataParallel module, which averages the
        processes' gradients during backward. Models that change their own state from a batch
        (the VQ-VAE's codebook) or step several players are refused for now."""
        from torch.nn.parallel import DistributedDataParallel

        if not getattr(self.model, "trains_across_processes", True):  # declared by the model (the VQ-VAE)
            raise ConfigError(
                "training under torchrun supports the VAE family and the adversarial models; the VQ-VAE, whose "
                "codebook is initialised and updated from each batch, trains in one process: start it without torchrun"
            )
        if self.players is not None:
            return None  # the players' gradients are summed over the processes in _step_players
        ids = [self.device.index] if self.device.type == "cuda" else None
        # the VAE family's buffers are constants, the same in every process: no need to sync them
        # at every forward (the option's name changed in torch 2.13)
        params = inspect.signature(DistributedDataParallel).parameters
        no_sync = {"forward_sync_buffers": False} if "forward_sync_buffers" in params else {"broadcast_buffers": False}
        return DistributedDataParallel(_ObjectiveModule(self.model, self.objective), device_ids=ids, **no_sync)

    @property
    def compiled(self) -> bool:
        """Whether the training step's objective runs compiled (``compile=``)."""
        return self.step_objective is not None and self.step_objective.compiled

    def _adam(self, parameters, lr: float, betas: Sequence[float]) -> torch.optim.Adam:
        # Fused Adam is ~1.2 s/epoch faster than the default on our CPUs; used wherever the
        # installed PyTorch has the kernel for the device (the same update either way).
        fused = fused_adam_supported(self.device)
        return torch.optim.Adam(parameters, lr=lr, betas=tuple(betas), eps=self.config.adam_eps, fused=fused or None)

    # -- checkpointing -------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE

    def save_checkpoint(self) -> None:
        """Writes the full training state in one atomic file."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        if self.best_weights is not None:
            tensors.update({f"best.{k}": v for k, v in self.best_weights.items()})
        for prefix, optimizer in self.optimizers.items():
            for i, slots in optimizer.state_dict()["state"].items():
                tensors.update({f"{prefix}.{i}.{name}": v for name, v in slots.items()})
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.data"] = self.generator.get_state()
        device_rng = _device_rng_state(self.device)
        if device_rng is not None:  # a GPU's own generator, which draws the model's noise there
            tensors[f"rng.{self.device.type}"] = device_rng
        meta = {"format": "vaelab-checkpoint", "state": json.dumps(self.state.__dict__), "device": self.device.type}
        if self.scaler is not None:
            meta["scaler"] = json.dumps(self.scaler.state_dict())
        save_tensors(self.checkpoint_path, tensors, meta)

    def load_checkpoint(self) -> None:
        """Restores the state written by ``save_checkpoint``."""
        path = self.checkpoint_path
        tensors, meta = load_tensors(path)
        try:
            self.state = TrainState(**json.loads(meta["state"]))
            self.model.load_state_dict(_strip(tensors, "model."))
            best = _strip(tensors, "best.")
            self.best_weights = best or None
            for prefix, optimizer in self.optimizers.items():
                optim = optimizer.state_dict()
                optim["state"] = {}
                for key, value in _strip(tensors, prefix + ".").items():
                    index, name = key.split(".", 1)
                    optim["state"].setdefault(int(index), {})[name] = value
                optimizer.load_state_dict(optim)
            torch.set_rng_state(tensors["rng.torch"])
            self.generator.set_state(tensors["rng.data"])
            if f"rng.{self.device.type}" in tensors:
                _set_device_rng_state(self.device, tensors[f"rng.{self.device.type}"])
            if self.scaler is not None and "scaler" in meta:
                self.scaler.load_state_dict(json.loads(meta["scaler"]))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise RunError(f"checkpoint {path} is incomplete or does not match the run ({err})") from None
        trained_on = meta.get("device", "cpu")
        if trained_on != self.device.type:
            logging.getLogger("vaelab").warning(
                f"{self.run_dir} was trained on {trained_on} and goes on on {self.device.type}: the weights, optimizer "
                f"and data order continue exactly, the model's random draws come from {self.device.type}'s generator"
            )

    def _config_record(self) -> bytes | None:
        """RUN/config.json from the RunConfig the trainer was given (written once: a run started or
        resumed by ``start_run`` has it already), after checking that it rebuilds this model, so
        the directory opens with ``vaelab.load`` and the commands; None when there is none to write."""
        if self.run_dir is None or self.run_config is None or (self.run_dir / CONFIG_FILE).exists():
            return None
        event_shape = tuple(self.train.event_shape)
        # a factory the configuration names is the caller's word for how the networks were made (it
        # may not be importable here, e.g. when given to build_model in nets=); a built-in is checked
        if not is_import_path(self.run_config.model.net):
            if getattr(self.model, "ready_modules", False):
                raise RunError(
                    f"the model's networks are ready modules (encoder=/decoder=), which config.json cannot record, so "
                    f"{self.run_dir} could not be reopened: build them with a factory, net='package.module:Factory'"
                )
            self._check_rebuilds(event_shape)
        return cfg.save_json(self.run_config, event_shape)

    def _check_rebuilds(self, event_shape: tuple[int, ...]) -> None:
        with torch.random.fork_rng(devices=[]):  # building the check model must not move the seed
            rebuilt = model_from_config(self.run_config, event_shape)
        ours = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
        if ours != theirs:
            differ = sorted(set(ours) ^ set(theirs)) or [k for k in ours if ours[k] != theirs[k]]
            raise RunError(
                f"the RunConfig does not describe this model (parameter {differ[0]} differs), so {self.run_dir} could "
                f"not be reopened: build the model from the same config.model (runs.model_from_config), or give "
                f"your networks as net='package.module:Factory' rather than encoder=/decoder= modules"
            )

    # -- the loop ------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Trains until ``epochs`` are done, validation stops improving for ``patience`` epochs, or
        the epochs so far took ``time_limit`` seconds.

        Denormal floats are flushed to zero while training: importance-weighted gradients scale
        whole decoder rows by normalized weights that underflow far below 1e-38, and arithmetic
        on such numbers is many times slower on x86 CPUs (IWAE with K=50 trained 1.5-1.7x faster
        per step with flushing, measured in the first epoch on Fashion-MNIST). Values that small
        are zero for every purpose here. PyTorch's default (off) is restored afterwards.
        """
        if self.run_dir is None or not self.writes:
            return self._fit_flushed()
        record = self._config_record()  # checked before anything is written
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with run_lock(self.run_dir):  # one process trains into a run directory at a time
            if record is not None and not (self.run_dir / CONFIG_FILE).exists():
                atomic_write_bytes(self.run_dir / CONFIG_FILE, record)
            return self._fit_flushed()

    def _fit_flushed(self) -> TrainResult:
        torch.set_flush_denormal(True)
        try:
            return self._fit()
        finally:
            torch.set_flush_denormal(False)
            if self.tensorboard is not None:
                self.tensorboard.close()

    def _fit(self) -> TrainResult:
        cfg_ = self.config
        while True:
            if self.state.epoch >= cfg_.epochs:
                self.state.stop_reason = f"reached {cfg_.epochs} epochs"
                break
            if cfg_.patience and self.state.bad_epochs >= cfg_.patience:
                self.state.stop_reason = f"no better validation bound for {cfg_.patience} epochs"
                break
            if cfg_.time_limit and self.state.seconds >= cfg_.time_limit:
                self.state.stop_reason = f"time limit: {self.state.seconds:.0f} s of {cfg_.time_limit:g} s used"
                break
            epoch = self.state.epoch + 1
            start = time.perf_counter()
            record = self.train_epoch(epoch)
            if self.valid is not None:
                record.update(self._validate(epoch))
            if self.monitors:
                record.update(self._monitor(epoch))
            # Where a time limit stops a run depends on the machine's speed: a resumed run may
            # stop at another epoch than an uninterrupted one, with the same weights up to there.
            self.state.seconds += time.perf_counter() - start
            self._select(epoch, record)
            self.history.append(record)
            for callback in self.callbacks:
                callback(record)
        if self.valid is not None and self.state.epoch > 0 and self.state.best_epoch == 0:
            self.state.stop_reason += (
                "; the validation bound was never finite (NaN or -inf in every epoch), so the last "
                "epoch's weights were kept: check the model and objective in eval mode"
            )
        finishing = [m for m in self.monitors if hasattr(m, "finish")] if self.writes else []
        if finishing:
            # every epoch's record, those of earlier sessions of a resumed run included
            records = read_metrics(self.run_dir)[: self.state.metrics_lines] if self.run_dir is not None else self.history
            for monitor in finishing:
                monitor.finish(records)
        self._finish()
        return TrainResult(
            epochs=self.state.epoch,
            best_epoch=self.state.best_epoch,
            best_bound=self.state.best_bound if self.valid is not None and self.state.best_epoch and self.players is None else math.nan,
            stop_reason=self.state.stop_reason,
            history=self.history,
        )

    def train_epoch(self, epoch: int) -> dict:
        """One pass over the training data; returns the epoch's metrics record (train_* keys)."""
        model = self.model
        model.train()
        n_batches = self._steps_per_epoch()
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {epoch}/{self.config.epochs}",
            disable=not self.progress or not self.writes,
            leave=not self.callbacks,  # a callback (the CLI's epoch line) says what the bar would have left
            dynamic_ncols=True,
        )
        sums: Tensor | None = None
        names: tuple[str, ...] = ()
        seen = 0
        start = time.perf_counter()
        batches = self.train.batches(self.config.batch_size, generator=self.generator, shuffle=True)
        options: dict[str, Any] = {}
        for step, x in enumerate(batches, 1):
            x, shard = self._rows(x)
            options = self._options(epoch, step)
            try:
                if self.ddp is not None:
                    with sharding.sharded(shard):
                        names, values = self._step_ddp(x, shard.total, options)
                elif self.players is None:
                    names, values = self._step(x, options)
                else:
                    with sharding.sharded(shard):
                        names, values = self._step_players(x, shard.total if shard is not None else None)
            except TrainingDiverged:
                bar.close()
                raise TrainingDiverged(self._diverged_message(epoch, step)) from None
            sums = _accumulate(sums, values)
            seen += x.shape[0]
            if self.progress and (step % 20 == 0 or step == n_batches):
                bar.set_postfix(_postfix(names, sums / seen, seen / (time.perf_counter() - start)), refresh=False)
            bar.update(1)
        if self.world.size > 1:  # every process's examples: the global batch's means
            sums, seen = distributed.all_sum(sums), distributed.all_count(seen, self.device)
        seconds = time.perf_counter() - start
        bar.close()
        record = {"epoch": epoch, "train_seconds": seconds, "examples_per_second": seen / seconds}
        record.update(options)
        record.update(_named_means("train", names, sums / seen))
        return record

    @property
    def fused(self) -> bool:
        """Whether training steps run the hand-derived ``fused.FusedELBO`` (``fused=``)."""
        return self.fused_step is not None

    def _step(self, x: Tensor, options: dict[str, Any]) -> tuple[tuple[str, ...], Sequence[Tensor]]:
        """One Adam step on the objective; returns its field names and per-example values."""
        if self.fused_step is not None and self.fused_step.accepts(options):
            result = self.fused_step.step(x, options)  # the gradients, written into .grad
            if not torch.isfinite(result.objective.sum()):
                raise TrainingDiverged("")
            adam_step(self.optimizer)
            return result._fields, result
        with self._autocast():
            result = self.step_objective(self.model, x, **options)
        loss = -result.objective.float().mean()
        # A bool() on a CPU scalar costs microseconds; checking before the step means a
        # non-finite loss never reaches the weights.
        if not torch.isfinite(loss):
            raise TrainingDiverged("")
        self._descend(loss)
        return result._fields, result

    def _descend(self, loss: Tensor) -> None:
        """One Adam step down ``loss``'s gradient."""
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            adam_step(opt)
        else:  # fp16: the scaled loss's gradients are unscaled, and a step with inf/NaN in them skipped
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)
            self.scaler.update()

    def _rows(self, x: Tensor) -> tuple[Tensor, sharding.Shard | None]:
        """This process's rows of a global batch, on the training device, and where they lie in
        it (None in one process)."""
        if self.world.size == 1:
            return x.to(self.device, non_blocking=True), None
        start, size = distributed.rows(x.shape[0], self.world)
        return x[start : start + size].to(self.device, non_blocking=True), sharding.Shard(start, size, x.shape[0])

    def _step_ddp(self, x: Tensor, total: int, options: dict[str, Any]) -> tuple[tuple[str, ...], Sequence[Tensor]]:
        """One Adam step of one process under torchrun, on its rows of a global batch of
        ``total``: DDP averages the processes' gradients, so each contributes its rows' sum
        scaled by size / total, and the average is the global batch mean's gradient, as in one
        process. The global loss is summed before the step, so every process agrees on
        whether it is finite."""
        with self._autocast():
            result = self.ddp(x, **options)
        local = -result.objective.float().sum()
        if not torch.isfinite(distributed.all_sum(local)):
            raise TrainingDiverged("")
        self._descend(local * (self.world.size / total))
        return result._fields, result

    def _autocast(self) -> contextlib.AbstractContextManager:
        """The forward pass under mixed precision (``precision`` bf16-mixed or 16-mixed), else as is."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _step_players(self, x: Tensor, total: int | None = None) -> tuple[tuple[str, ...], list[Tensor]]:
        """One step of every player, in the model's update scheme; returns the logged names
        (``<player>_loss`` and the model's other quantities) and their per-example values.

        simultaneous: one forward pass; each player's gradient is that of its own loss with
        respect to its own parameters (``torch.autograd.grad``), and only then does any player
        step. alternating: player by player, each with a fresh forward pass after the previous
        one stepped; a player's logged loss is the one its own step used. Either way the
        gradients are written into ``.grad`` of the player's parameters only, so an optimizer
        can move nothing else; they are cleared after the step.

        Under torchrun (``total``: the global batch, of which ``x`` is this process's rows) each
        player's gradient is that of its rows' loss sum over ``total``, summed over the processes
        (``all_reduce``): the global batch mean's, as in one process."""
        model, players = self.model, self.players
        simultaneous = model.update == "simultaneous"
        first: dict[str, Tensor] = {}
        used: dict[str, Tensor] = {}
        grads = []
        for i, player in enumerate(players):
            if i == 0 or not simultaneous:
                with self._autocast():
                    out = model.losses(x)
                first = first or out
                checked = torch.stack([out[p.name].float().sum() for p in (players if simultaneous else [player])])
                if not bool(torch.isfinite(distributed.all_sum(checked)).all()):  # every process agrees
                    raise TrainingDiverged("")
            loss = out[player.name].float()
            used[player.name] = loss.detach()
            last = i == len(players) - 1
            mean = loss.mean() if total is None else loss.sum() / total
            scaled = mean if self.scaler is None else self.scaler.scale(mean)
            g = torch.autograd.grad(scaled, player.parameters, retain_graph=simultaneous and not last,
                                    allow_unused=True)  # fmt: skip
            if total is not None:
                g = distributed.sum_gradients(g)
            if simultaneous:
                grads.append(g)
            else:
                self._apply(player, g)
        for player, g in zip(players, grads):
            self._apply(player, g)
        if self.scaler is not None:  # once per step, after every player's (unscaled, checked) step
            self.scaler.update()
        names = tuple(f"{p.name}_loss" for p in players)
        extras = [k for k in first if k not in used]
        return names + tuple(extras), [used[p.name] for p in players] + [first[k].detach() for k in extras]

    def _apply(self, player: Any, grads: Sequence[Tensor | None]) -> None:
        for parameter, grad in zip(player.parameters, grads):
            parameter.grad = grad
        optimizer = self.optimizers[f"optim.{player.name}"]
        if self.scaler is None:
            adam_step(optimizer)
        else:
            self.scaler.step(optimizer)
        optimizer.zero_grad(set_to_none=True)

    def _steps_per_epoch(self) -> int:
        return math.ceil(len(self.train) / self.config.batch_size)

    def _options(self, epoch: int, step: int) -> dict[str, Any]:
        """The objective's options at a training step (both counted from 1): the schedule at
        t = epoch - 1 + (step - 1) / steps per epoch."""
        if self.schedule is None:
            return {}
        return self.schedule(epoch - 1 + (step - 1) / self._steps_per_epoch())

    @torch.no_grad()
    def _validate(self, epoch: int) -> dict:
        """Validation bound on fixed data with fixed noise, so epochs are compared fairly; the
        training random stream is left untouched."""
        self.model.eval()
        sums, names, seen = None, (), 0
        # The options of the epoch's last training step, which its record logs. Not the
        # schedule's value at t = epoch: a cyclical schedule restarts there at kl_scale = 0. A
        # pure function of the position, so a resumed run validates exactly as an uninterrupted one.
        options = self._options(epoch, self._steps_per_epoch())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + 2)
            for x in self.valid.fixed_batches(1000):
                x, shard = self._rows(x)
                if self.players is None:
                    with sharding.sharded(shard):
                        result = self.objective(self.model, x, **options)
                    names = result._fields
                else:  # every player's loss, and the model's other quantities, on the same draws
                    with sharding.sharded(shard):
                        out = self.model.losses(x)
                    names = tuple(f"{k}_loss" if f"optim.{k}" in self.optimizers else k for k in out)
                    result = list(out.values())
                sums = _accumulate(sums, result)
                seen += x.shape[0]
        if self.world.size > 1:  # every process's rows of the validation set
            sums, seen = distributed.all_sum(sums), distributed.all_count(seen, self.device)
        self.model.train()
        return _named_means("valid", names, sums / seen)

    @torch.no_grad()
    def _monitor(self, epoch: int) -> dict:
        """Runs the monitors on fixed data, outside the training random stream."""
        if self.valid is not None:  # all of an in-memory validation set, the first examples of a streamed one
            x = self.valid.head(None if isinstance(self.valid, Split) else MONITOR_EXAMPLES)
        else:
            x = self.train.head(MONITOR_EXAMPLES)
        x = x.to(self.device)
        record: dict[str, Any] = {}
        self.model.eval()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed + 3)
            for monitor in self.monitors:
                record.update(monitor(self.model, x, epoch))
        self.model.train()
        return record

    def _select(self, epoch: int, record: dict) -> None:
        """Keeps the best weights by validation bound, logs the epoch, then checkpoints.

        NaN never beats the best bound. While no epoch has had a bound above -inf, the latest
        weights stand in for the best: model.safetensors holds them after every epoch, so a
        finished (or interrupted) run always has weights to load."""
        if self.valid is not None and self.players is None:
            bound = record["valid_bound"]
            if bound > self.state.best_bound:
                self.state.best_bound, self.state.best_epoch, self.state.bad_epochs = bound, epoch, 0
                self.best_weights = _copy(self.model.state_dict())
            else:
                self.state.bad_epochs += 1
        else:
            self.state.best_epoch = epoch
            self.best_weights = None
        record["best_epoch"] = self.state.best_epoch
        done = self.state.epoch  # the epochs the checkpoint on disk holds
        self.state.epoch = epoch
        if self.run_dir is None or not self.writes:
            return
        with self._stopped_by_writes(done):
            if self.state.best_epoch in (epoch, 0):
                save_model(self.run_dir / MODEL_FILE, self.model)
            # The metrics line is on disk before the checkpoint that counts it; on resume, lines
            # beyond the checkpoint's count (an epoch that was redone) are dropped.
            append_line(self.run_dir / METRICS_FILE, json.dumps(record))
            if self.tensorboard is not None:
                self.tensorboard.log_epoch(self.model, record)
            self.state.metrics_lines += 1
            self.save_checkpoint()

    @contextlib.contextmanager
    def _stopped_by_writes(self, done: int) -> Iterator[None]:
        """A full disk or a read-only run directory stops training with one line that says what
        is left: the checkpoint is written atomically, so the last one that was written stands."""
        try:
            yield
        except WriteError as err:
            kept = (f"the checkpoint of epoch {done} is intact: make room and continue with "
                    f"vaelab train --resume {self.run_dir}") if done else "no checkpoint had been written yet"  # fmt: skip
            raise WriteError(f"{err}; training stopped, and {kept}") from None

    def _finish(self) -> None:
        self.state.finished = True
        self.state.continuable = True
        if self.run_dir is not None and self.writes:
            # The checkpoint keeps the last epoch's weights beside the best ones, so that
            # resume_run(epochs=N) can train on exactly as an N-epoch run would have.
            # model.safetensors already holds the best weights: _select wrote it when they were
            # best (or, without a best epoch, when they were the latest).
            with self._stopped_by_writes(self.state.epoch):
                self.save_checkpoint()
        if self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)

    def _diverged_message(self, epoch: int, step: int) -> str:
        where = f"epoch {epoch}, step {step}"
        kept = (
            f"; the last good checkpoint (epoch {self.state.epoch}) is kept in {self.run_dir}"
            if self.run_dir is not None
            else ""
        )
        return f"training diverged: the loss became non-finite at {where}{kept}; try a lower --lr (now {self.config.lr:g})"


class _ObjectiveModule(nn.Module):
    """``objective(model, x, **options)`` as a module's forward, for DistributedDataParallel."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: Tensor, **options: Any) -> NamedTuple:
        return self.objective(self.model, x, **options)


@torch.no_grad()
def _accumulate(sums: Tensor | None, result: Sequence[Tensor]) -> Tensor:
    """Adds a batch's per-field sums to the running sums, without leaving the tensor world."""
    batch = torch.stack([t.sum() for t in result])
    return batch if sums is None else sums + batch


def _check_players(model: nn.Module) -> list:
    """The model's players, checked: distinct names, a known update scheme, and (for
    simultaneous updates, where every gradient is taken before any step) no parameter in two
    players."""
    players = list(model.players())
    names = [p.name for p in players]
    if len(set(names)) != len(names) or not players:
        raise ValueError(f"players need distinct names, got {names}")
    if model.update not in ("simultaneous", "alternating"):
        raise ValueError(f"unknown update scheme {model.update!r}; use simultaneous or alternating")
    if model.update == "simultaneous":
        ids = [id(q) for p in players for q in p.parameters]
        if len(set(ids)) != len(ids):
            raise ValueError("simultaneous players must not share parameters; use alternating updates")
    return players


def _settings(config: cfg.TrainConfig, role: str) -> tuple[float, Sequence[float]]:
    """Adam's learning rate and betas for a player of this role."""
    if role == "discriminator":
        lr = config.lr_disc if config.lr_disc is not None else config.lr
        betas = config.adam_betas_disc if config.adam_betas_disc is not None else config.adam_betas
        return lr, betas
    return config.lr, config.adam_betas


def _device_rng_state(device: torch.device) -> Tensor | None:
    """The state of the generator that draws the model's noise on ``device``, when it is not
    the CPU's (which the checkpoint holds anyway)."""
    if device.type == "cuda":
        return torch.cuda.get_rng_state(device)
    if device.type == "mps":
        return torch.mps.get_rng_state()
    return None


def _set_device_rng_state(device: torch.device, state: Tensor) -> None:
    if device.type == "cuda":
        torch.cuda.set_rng_state(state, device)
    elif device.type == "mps":
        torch.mps.set_rng_state(state)


def _strip(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _copy(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def _named_means(prefix: str, names: tuple[str, ...], means: Tensor) -> dict[str, float]:
    out = {}
    for name, value in zip(names, means.tolist()):
        if name == "objective":
            out[f"{prefix}_loss"] = -value
        else:
            out[f"{prefix}_{name}"] = value
    return out


def _postfix(names: tuple[str, ...], means: Tensor, rate: float) -> dict[str, str]:
    values = dict(zip(names, means.tolist()))
    if "objective" not in values:  # several players: each one's loss
        shown = {k.removesuffix("_loss"): f"{v:.3f}" for k, v in values.items() if k.endswith("_loss")}
        shown["ex/s"] = f"{rate:.0f}"
        return shown
    shown = {"loss": f"{-values['objective']:.2f}"}
    for short, name in (("rec", "reconstruction"), ("kl", "kl")):
        if name in values:
            shown[short] = f"{values[name]:.2f}"
    shown["ex/s"] = f"{rate:.0f}"
    return shown
