"""`vaelab train`: a new run, or one resumed (--resume, --resume-if-exists)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from ..core.errors import VaelabError
from ..runs import config as cfg
from ..runs.speed import COMPILE_MODES, FUSED_MODES
from .common import add_config_flags, add_device_flag, add_trust_flag, as_flags, config_from_args, epoch_printer


def add_train_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab train` and its flags."""
    p = subparsers.add_parser("train", help="train a model; writes a run directory",
                              description="Train a model. Flags override the config file; the resolved "
                              "configuration is written to RUN/config.json.")  # fmt: skip
    p.add_argument("--config", metavar="FILE.toml", help="configuration file with [data], [model] and [train] tables")
    p.add_argument("--out", metavar="RUN", help="run directory to create (default: runs/DATA-YYYYmmdd-HHMMSS)")
    p.add_argument("--resume", metavar="RUN", help="continue RUN from its checkpoint with its saved configuration; "
                   "with --epochs N (more than it has done), a finished run trains on as if it had been started "
                   "with N epochs")  # fmt: skip
    p.add_argument("--resume-if-exists", action="store_true",
                   help="with --out RUN: if RUN already holds this run (the same configuration), continue it from its "
                   "checkpoint (a finished one: nothing to do) instead of refusing; for job schedulers' requeues and "
                   "torchrun --max-restarts")  # fmt: skip
    add_device_flag(p)
    add_trust_flag(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars (one line per epoch is still printed)")
    p.add_argument("--silent", action="store_true", help="print nothing but warnings and errors")
    p.add_argument("--compile", default="auto", choices=COMPILE_MODES,
                   help="run the training step through torch.compile: auto (where it works, an epoch has at "
                   "least 500 steps and the objective draws at least 8 particles per example), on (warns when "
                   "it falls back to eager), off; changes speed, not results beyond float rounding, and is not "
                   "saved with the run (default: auto)")  # fmt: skip
    p.add_argument("--fused", default="auto", choices=FUSED_MODES,
                   help="train an MLP VAE (diagonal Gaussian posterior, N(0, I) prior, Bernoulli or Gaussian "
                   "likelihood) on the one-particle analytic-KL ELBO with a hand-derived forward and backward pass "
                   "instead of autograd: auto (wherever it applies, in fp32, in one process, unless --compile on), "
                   "off; the same gradients up to float rounding, not saved with the run (default: auto)")  # fmt: skip
    add_config_flags(p)


def cmd_train(args: argparse.Namespace) -> int:
    from ..core import distributed

    # under torchrun every process runs this command; rank 0 alone speaks and writes
    launched = distributed.launched()
    main = not launched or int(os.environ.get("RANK", "0")) == 0
    if launched and not args.resume and not args.out:
        raise VaelabError("under torchrun, name the run directory with --out RUN (every process must agree on it)")
    if not main:
        args.silent = True
    if args.resume_if_exists and (args.resume or not args.out):
        raise VaelabError("--resume-if-exists goes with --out RUN and the run's options (not with --resume)")
    if launched:  # join the other processes now: they decide together whether RUN is new
        args.device = distributed.init(args.device)[1]
    try:
        return _train(args, main=main)
    finally:
        distributed.finish()


def _train(args: argparse.Namespace, main: bool) -> int:
    from ..runs.lifecycle import resume_run, start_run

    given = [d for d in vars(args) if "." in d]
    progress = not (args.quiet or args.silent)
    if args.resume:
        if [d for d in given if d != "train.epochs"] or args.config or args.out:
            raise VaelabError("--resume continues a run with its own saved configuration; drop the other options "
                              "(--epochs N excepted, which trains it on to N epochs)")  # fmt: skip
        run_dir = Path(args.resume)
        epochs = getattr(args, "train.epochs", None)
        if epochs is not None:
            epochs = cfg.field_value("train", "epochs", epochs)  # its flag's own checks and message
        from ..core.errors import RunFinishedError
        from ..runs.lifecycle import nothing_to_do

        # not an error: a job scheduler's requeue loop may call --resume on a run that finished
        finished = nothing_to_do(run_dir, epochs)
        if finished is not None:
            if not args.silent:
                print(f"nothing to do: {as_flags(finished, {'epochs'})}")
            return 0
        _print_data_source(args, run_dir)
        try:
            if epochs is None:
                from ..runs.rundir import read_config

                epochs = read_config(run_dir)[0].train.epochs
                result = resume_run(run_dir, progress=progress, trust_code=args.trust_code,
                                    callbacks=epoch_printer(args, epochs), device=args.device, compile=args.compile, fused=args.fused)  # fmt: skip
            else:
                result = resume_run(run_dir, epochs=epochs, progress=progress, trust_code=args.trust_code,
                                    callbacks=epoch_printer(args, epochs), device=args.device, compile=args.compile, fused=args.fused)  # fmt: skip
        except RunFinishedError as done:  # it finished in the meantime
            if not args.silent:
                print(f"nothing to do: {as_flags(str(done), {'epochs'})}")
            return 0
    elif args.resume_if_exists and Path(args.out, "config.json").exists():
        return _train_existing(args, config_from_args(args), Path(args.out), progress, main)
    else:
        config = config_from_args(args)
        from ..data.sources import is_path

        # a file's or folder's own name (paths are stored absolute), else the dataset's
        name = Path(config.data.data).stem if is_path(config.data.data) else config.data.data
        run_dir = Path(args.out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        args.out = str(run_dir)  # for the resume hint if interrupted
        _print_data_source(args, config)
        result = start_run(config, run_dir, progress=progress, callbacks=epoch_printer(args, config.train.epochs),
                           device=args.device, compile=args.compile, fused=args.fused)  # fmt: skip
    # a new run's --net is the user's own word; a resumed one's is the run directory's
    return _trained(args, result, run_dir, main, trust_code=args.trust_code or not args.resume)


def _trained(args: argparse.Namespace, result: Any, run_dir: Path, main: bool, trust_code: bool) -> int:
    """The end of vaelab train: the run's figures (rank 0 draws them) and its last line."""
    from ..report.figures import write_run_figures

    if main:
        write_run_figures(run_dir, trust_code=trust_code)
    best = f", best validation bound {result.best_bound:.2f} nats at epoch {result.best_epoch}" if not math.isnan(result.best_bound) else ""
    if not args.silent:
        print(f"trained {result.epochs} epochs ({result.stop_reason}){best}; run directory: {run_dir}")
    return 0


def _train_existing(args: argparse.Namespace, config: cfg.RunConfig, run_dir: Path, progress: bool, main: bool) -> int:
    """--resume-if-exists of a run directory that exists: the same configuration goes on (or has
    nothing to do), another one is refused."""
    from ..core.errors import RunFinishedError
    from ..core import distributed
    from ..runs.lifecycle import nothing_to_do, resume_run
    from ..runs.rundir import read_config

    saved, _ = read_config(run_dir)
    distributed.barrier()  # every process has read it before rank 0 may change it
    if saved != config:
        differ = [f"{section}.{f.name}" for section in ("data", "model", "train")
                  for f in dataclasses.fields(getattr(config, section))
                  if getattr(getattr(config, section), f.name) != getattr(getattr(saved, section), f.name)]  # fmt: skip
        raise VaelabError(f"{run_dir} holds a run with another configuration ({', '.join(differ) or 'data shape'} "
                          f"differ); pick another --out, or drop --resume-if-exists")  # fmt: skip
    finished = nothing_to_do(run_dir)
    if finished is None:
        _print_data_source(args, run_dir)
        try:
            result = resume_run(run_dir, progress=progress, trust_code=True, device=args.device, compile=args.compile, fused=args.fused,
                                callbacks=epoch_printer(args, config.train.epochs))  # fmt: skip
        except RunFinishedError as done:
            finished = str(done)
    if finished is not None:
        if not args.silent:
            print(f"nothing to do: {as_flags(finished, {'epochs'})}")
        return 0
    return _trained(args, result, run_dir, main, trust_code=True)  # the user's own --net


def _print_data_source(args: argparse.Namespace, run: cfg.RunConfig | Path) -> None:
    """The first line of vaelab train (not under --silent): where the data comes from, by the
    loader's own search, so a run on another copy than the one meant is seen at once. ``run``:
    a new run's configuration, or the directory of a resumed one."""
    if args.silent:
        return
    from ..runs.rundir import describe_data, read_config

    config = read_config(run)[0] if isinstance(run, Path) else run
    print(f"data: {describe_data(config)}")
    sys.stdout.flush()  # before the first progress bar on stderr
