"""`vaelab prior`: the learned prior (gated PixelCNN) over a VQ-VAE's code grids."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from .common import add_device_flag, add_trust_flag, epoch_printer


def add_prior_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab prior` and its flags."""
    p = subparsers.add_parser("prior", help="train the learned prior (gated PixelCNN) over a VQ-VAE's code grids",
                              description="Fits a gated PixelCNN (van den Oord et al. 2016) to the code grids "
                              "z_q(x) of the run's training data, in RUN/prior/; run the same command again to "
                              "continue an interrupted one. `vaelab sample` and `vaelab evaluate` then use it.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    add_trust_flag(p)
    add_device_flag(p)
    p.add_argument("--epochs", type=int, default=30, help="maximum passes over the code grids (default: 30)")
    p.add_argument("--layers", type=int, default=8, help="gated layers (default: 8)")
    p.add_argument("--channels", type=int, default=64, help="channels of each stack (default: 64)")
    p.add_argument("--batch-size", type=int, default=128, help="code grids per step (default: 128)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    p.add_argument("--patience", type=int, default=10,
                   help="stop after this many epochs without a better validation log-likelihood (0: never; default: 10)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--time-limit", type=float, default=0.0,
                   help="stop after the epoch in which this many seconds are used (0: no limit; default: 0)")  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress bars (one line per epoch is still printed)")
    p.add_argument("--silent", action="store_true", help="print nothing but warnings and errors")


def cmd_prior(args: argparse.Namespace) -> int:
    from ..report.figures import write_run_figures
    from ..runs.codeprior import PriorConfig, fit_code_prior

    config = PriorConfig(layers=args.layers, channels=args.channels, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, patience=args.patience, seed=args.seed, time_limit=args.time_limit)  # fmt: skip
    result = fit_code_prior(args.run, config, progress=not (args.quiet or args.silent),
                            callbacks=epoch_printer(args, config.epochs), trust_code=args.trust_code,
                            device=args.device)  # fmt: skip
    write_run_figures(args.run, trust_code=args.trust_code, device=args.device)  # samples.png, now that there is a prior to draw from
    best = f", best validation log p(z) {result.best_bound:.2f} nats at epoch {result.best_epoch}" if not math.isnan(result.best_bound) else ""
    if not args.silent:
        print(f"trained the code prior for {result.epochs} epochs ({result.stop_reason}){best}; in {Path(args.run) / 'prior'}")
    return 0
