"""The ``vaelab`` command: train, evaluate, diagnose, sample, reconstruct.

User errors (bad flags, unknown names, missing or corrupt files) print one line to stderr and exit
with status 2; nothing on disk is damaged.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import inspect
import io
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ..core.version import __version__
from ..core.errors import VaelabError
from ..evaluation.scores import DEFAULT_BOUND as DEFAULT_SCORE_BOUND
from ..evaluation.scores import DEFAULT_DRAWS
from ..inference.estimators import GRAD_ESTIMATORS
from ..runs import config as cfg
from ..runs.speed import COMPILE_MODES, FUSED_MODES

EXIT_USAGE = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command whose reader went away


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (argparse prints the usage block, then the error),
    and a flag must be spelled out: with abbreviations, `--epoch 1` would silently be taken as
    `--epochs 1`, and a flag added later could change what an old command line means."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per configuration field; defaults are SUPPRESSed so we know what was given."""
    for section, cls in cfg.SECTIONS.items():
        group = parser.add_argument_group(f"{section} options ([{section}] in the config file)")
        for f in dataclasses.fields(cls):
            meta = dict(f.metadata)
            default = f.default if f.default is not dataclasses.MISSING else None
            if isinstance(default, tuple):
                default = ",".join(str(v) for v in default)
            help_text = meta.get("help", "") + (f" (default: {default})" if default is not None else "")
            kwargs: dict[str, Any] = {"default": argparse.SUPPRESS, "help": help_text, "dest": f"{section}.{f.name}"}
            if "choices" in meta:
                kwargs["choices"] = meta["choices"]
            if f.type == "bool":
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["metavar"] = meta.get("metavar", f.name.upper())
            group.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="vaelab",
        description="Variational autoencoders: train them, measure them honestly, look inside them.",
    )
    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    parser.set_defaults(_commands=sub.choices)  # for the "did you mean" of an unknown option

    p = sub.add_parser("train", help="train a model; writes a run directory",
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
    _add_device_flag(p)
    _add_trust_flag(p)
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
    _add_config_flags(p)

    p = sub.add_parser("evaluate", help="importance-sampled log-likelihood, ELBO, KL, active units",
                       description="Scores a run: log p(x) by importance sampling (--method is, with the "
                       "ELBO, KL, active units), by annealed importance sampling (--method ais), or "
                       "bidirectional Monte Carlo bounds on data simulated from the model (--method bdmc). The result (the --json "
                       "object) is kept in RUN/evaluation.json for vaelab compare.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    _add_trust_flag(p)
    _add_device_flag(p)
    p.add_argument("--method", default="is", choices=METHODS,
                   help="is: importance sampling from q(z|x); ais: annealed importance sampling with HMC "
                   "(Neal 2001); bdmc: AIS lower and reverse-AIS upper bounds on --limit examples "
                   "simulated from the model (Grosse et al. 2015) (default: is)")  # fmt: skip
    p.add_argument("--k", type=int, help="importance samples per example (default: 5000)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which split (default: test)")
    p.add_argument("--limit", type=int, help="only the first N examples of the split (--method bdmc: the number of "
                   "examples simulated from the model, default 100)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed for the importance samples or AIS chains (default: 0)")
    p.add_argument("--bounds", metavar="K,K,...", type=_int_list("--bounds"), default=(),
                   help="also estimate the bounds L_K for these K (each at most --k), from the same "
                   "particles, e.g. 1,5,50")  # fmt: skip
    p.add_argument("--proposal", choices=("posterior", "prior"),
                   help="posterior: importance sampling from the encoder's q(z|x); prior: naive Monte "
                   "Carlo from p(z), for comparison (default: posterior)")  # fmt: skip
    _add_ais_flags(p, "--steps")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("diagnose", help="gradient signal-to-noise ratio and effective sample size against K",
                       description="Gradient SNR |E[g]| / std[g] of the encoder and decoder parameters "
                       "(mean over parameters) over repeated gradient draws on one fixed minibatch, and "
                       "the normalized effective sample size of the importance weights, for each K; "
                       "prints a table and writes a plot (Rainforth et al. 2018). The result (the --json object) is kept in "
                       "RUN/diagnose.json for vaelab compare.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    _add_trust_flag(p)
    _add_device_flag(p)
    p.add_argument("--k-list", metavar="K,K,...", type=_int_list("--k-list"), default=(1, 5, 50, 500),
                   help="numbers of particles (default: 1,5,50,500)")  # fmt: skip
    p.add_argument("--reps", type=int, default=100, help="gradient draws per K (default: 100)")
    p.add_argument("--objective", help="objective whose gradient is measured (default: the run's training objective)")
    p.add_argument("--grad-estimator", choices=GRAD_ESTIMATORS,
                   help="gradient estimator measured (default: the run's own when --objective is its training "
                   "objective, else reparam)")  # fmt: skip
    p.add_argument("--m", type=int, help="groups, for miwae and piwae (default: the run's own when --objective is its "
                   "training objective, else 1)")  # fmt: skip
    p.add_argument("--beta", type=float, help="beta, for elbo and ciwae (default: the run's own when --objective is "
                   "its training objective, else the objective's)")  # fmt: skip
    p.add_argument("--batch", type=int, default=100, help="examples in the fixed minibatch (default: 100)")
    p.add_argument("--split", default="train", choices=("train", "valid", "test"), help="where the minibatch comes from (default: train)")
    p.add_argument("--seed", type=int, default=0, help="seed for the gradient draws (default: 0)")
    p.add_argument("-o", "--output", metavar="FILE.png", help="plot file (default: RUN/snr.png)")
    p.add_argument("--json", action="store_true", help="print one JSON object with equal-length lists k, encoder_snr, decoder_snr, ess")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("gaps", help="approximation and amortization gaps (Cremer et al. 2018)",
                       description="On N test examples: log p(x) by importance sampling, L[q*] (the best ELBO "
                       "within the encoder's posterior family, optimized per example from the encoder's "
                       "output; for other families also the best diagonal Gaussian's) and L[q] "
                       "(the encoder's own ELBO); approximation gap log p(x) - L[q*], amortization gap "
                       "L[q*] - L[q]. Means in nats. The result (the --json object) is kept in RUN/gaps.json for vaelab compare.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    _add_trust_flag(p)
    _add_device_flag(p)
    p.add_argument("--limit", type=int, default=100, help="first N test examples (default: 100)")
    p.add_argument("--k", type=int, default=5000, help="importance samples for log p(x) (default: 5000)")
    p.add_argument("--steps", type=int, default=2000, help="Adam steps of the per-example optimization (default: 2000)")
    p.add_argument("--lr", type=float, default=0.01, help="its initial learning rate, decayed linearly to 0 (default: 0.01)")
    p.add_argument("--samples", type=int, default=10, help="particles per optimization step (default: 10)")
    p.add_argument("--method", default="is", choices=("is", "ais"),
                   help="estimator of log p(x): is (importance sampling, K=--k) or ais (annealed importance "
                   "sampling with HMC, as Cremer et al. 2018) (default: is)")  # fmt: skip
    _add_ais_flags(p, "--ais-steps")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which split (default: test)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")

    p = sub.add_parser("sample", help="draw samples from the model: z ~ p(z), mean of p(x|z) (G(z) for the adversarial models; a scatter plot over the data for 2-D points)")
    p.add_argument("run", metavar="RUN")
    _add_trust_flag(p)
    _add_device_flag(p)
    p.add_argument("-n", type=int, default=64, help="number of samples (default: 64)")
    p.add_argument("-o", "--output", metavar="FILE.png", help="image file (default: RUN/samples.png, or RUN/samples-1.png, -2, ... when it exists)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--sampler", default="prior", type=_sampler, metavar="prior|gmm|stage2:RUN2",
                   help="where z comes from: the prior, a Gaussian mixture fitted to the encoder means of "
                   "the training data (ex-post density estimation, Ghosh et al. 2020), or the second VAE RUN2 "
                   "trained on this run's codes (two-stage VAE, Dai & Wipf 2019) (default: prior)")  # fmt: skip
    p.add_argument("--components", type=int, default=10, help="mixture components for --sampler gmm (default: 10)")

    p = sub.add_parser("prior", help="train the learned prior (gated PixelCNN) over a VQ-VAE's code grids",
                       description="Fits a gated PixelCNN (van den Oord et al. 2016) to the code grids "
                       "z_q(x) of the run's training data, in RUN/prior/; run the same command again to "
                       "continue an interrupted one. `vaelab sample` and `vaelab evaluate` then use it.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    _add_trust_flag(p)
    _add_device_flag(p)
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

    p = sub.add_parser("reconstruct", help="data beside its reconstructions")
    p.add_argument("run", metavar="RUN")
    _add_trust_flag(p)
    _add_device_flag(p)
    p.add_argument("-n", type=int, default=32, help="number of examples (default: 32)")
    p.add_argument("-o", "--output", metavar="FILE.png", help="image file (default: RUN/reconstructions.png, or RUN/reconstructions-1.png, -2, ... when it exists)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which split (default: test)")

    p = sub.add_parser("compare", help="runs side by side: differing configuration, best validation bounds, stored results, training curves",
                       description="Compares two or more runs without recomputing anything: one table of the "
                       "configuration values that differ between them, their best validation bounds (from "
                       "metrics.jsonl), every result that vaelab evaluate, gaps and diagnose stored in them, and a "
                       "figure of their validation bound and training loss against the epoch, overlaid.")  # fmt: skip
    p.add_argument("runs", metavar="RUN", nargs="+", help="two or more run directories")
    p.add_argument("-o", "--output", metavar="FILE.png", default="compare.png",
                   help="figure of the overlaid training curves (default: compare.png)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object with the keys runs, config, epochs, "
                   "best_epoch, best_valid_bound, results and plot")  # fmt: skip

    p = sub.add_parser("score", help="per-example log-likelihood bounds in a CSV file; AUROC against other data",
                       description="Scores every example of a dataset by a bound on log p(x) under the run's model "
                       "(the data prepared as the run prepares its own: binarization, dequantization): one CSV "
                       "row per example with index, label, bound, score (nats), stderr (its Monte-Carlo "
                       "standard error) and khat (is:K only: the Pareto k-hat of the weights). With "
                       "--auroc-against D2, the AUROC of telling D2 from D by the score.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    _add_trust_flag(p)
    _add_device_flag(p)
    p.add_argument("--data", metavar="D", help="dataset name or .npy/.npz file to score, of the run's data shape "
                   "(default: the run's own data)")  # fmt: skip
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which split of D (default: test)")
    p.add_argument("--bound", default=DEFAULT_SCORE_BOUND, metavar="elbo|iwae:K|is:K",
                   help="elbo: the ELBO; iwae:K: the IWAE bound E[L_K] (Burda et al. 2015); is:K: log p(x) by "
                   f"importance sampling with K particles, delta-method standard error (default: {DEFAULT_SCORE_BOUND})")  # fmt: skip
    p.add_argument("--draws", type=int, help="elbo and iwae:K: independent draws of the bound averaged per example, "
                   f"their spread giving the standard error (default: {DEFAULT_DRAWS})")  # fmt: skip
    p.add_argument("--limit", type=int, help="only the first N examples of the split (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the particles (default: 0)")
    p.add_argument("--auroc-against", metavar="D2", help="also score D2 (same split and --limit) and print the AUROC "
                   "of telling D2 from D by the score, D2 taken as in-distribution (higher score)")  # fmt: skip
    p.add_argument("-o", "--output", metavar="FILE.csv", help="CSV file of per-example scores (default: none, "
                   "only the summary)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("encode", help="latent codes: posterior means and scales (and draws) of a dataset, to a .npz",
                       description="Encodes the training and test files of a dataset (prepared as the run prepares "
                       "its own) into FILE.npz: mean_train, scale_train, mean_test, scale_test (posterior means "
                       "and standard deviations), y_train, y_test (labels, when known), samples_train, "
                       "samples_test (with --samples), and x_train, x_test (the means again), so that "
                       "vaelab train --data FILE.npz trains a second VAE on the codes: on fresh draws "
                       "mean + scale * N(0, I) every epoch, the aggregate posterior (--codes draw, the default), "
                       "or on the means alone (--codes mean).")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    _add_trust_flag(p)
    _add_device_flag(p)
    p.add_argument("--data", metavar="D", help="dataset name or .npy/.npz file, of the run's data shape (default: the "
                   "run's own data)")  # fmt: skip
    p.add_argument("-o", "--output", metavar="FILE.npz", required=True, help="the codes file to write")
    p.add_argument("--samples", type=int, default=0, metavar="S", help="also S draws z ~ q(z|x) per example (default: 0)")
    p.add_argument("--limit", type=int, help="only the first N examples of each file (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")

    p = sub.add_parser("decode", help="decode latent codes to the means of p(x|z): a .png grid or a .npy array",
                       description="Decodes codes (an N x latent_dim .npy array, or a .npz from vaelab encode) "
                       "to the means of p(x|z), written as an image grid (.png) or an array (.npy).")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    _add_trust_flag(p)
    _add_device_flag(p)
    p.add_argument("codes", metavar="CODES", help="N x latent_dim .npy array, or a .npz file")
    p.add_argument("-o", "--output", metavar="FILE.png|FILE.npy", required=True, help="image grid or array to write")
    p.add_argument("--key", help="the array of a .npz to decode (default: x_test, the test means of vaelab encode; "
                   "or its only array)")  # fmt: skip

    p = sub.add_parser("quality", help="sample quality: Frechet distance, precision/recall, density/coverage, classifier score",
                       description="Scores samples against the dataset's first N test images in the features of a "
                       "small classifier trained on its labelled training images (on first use, then cached): "
                       "Frechet distance (Heusel et al. 2017), precision and recall (Kynkaanniemi et al. 2019), "
                       "density and coverage (Naeem et al. 2020), classifier score (Salimans et al. 2016), beside "
                       "the same metrics for N real training images (the reference a perfect model would reach). "
                       "On the mode-collapse datasets (Srivastava et al. 2017), mode metrics instead: ring8 and "
                       "grid25, modes captured and the share of high-quality samples; stacked-fashion-mnist, modes "
                       "hit of 1000 and the KL divergence of their histogram from uniform. "
                       "Either RUN (its own samples) or --data NAME --samples FILE.npy (samples from any generator).")  # fmt: skip
    p.add_argument("run", metavar="RUN", nargs="?", help="a run directory whose model draws the samples")
    _add_trust_flag(p)
    _add_device_flag(p)
    p.add_argument("--n", type=int, help="RUN: samples drawn, compared with the first N test images (default: 2500 "
                   "for ring8 and grid25, 10000 otherwise)")  # fmt: skip
    p.add_argument("--sampler", type=_sampler, metavar="prior|gmm|stage2:RUN2",
                   help="RUN: z from the prior, from a Gaussian mixture fitted to the encoder means of the "
                   "training data (Ghosh et al. 2020), or from the second VAE RUN2 trained on RUN's codes "
                   "(Dai & Wipf 2019) (default: prior)")  # fmt: skip
    p.add_argument("--components", type=int, help="RUN: mixture components for --sampler gmm (default: 10)")
    p.add_argument("--sample-pixels", action="store_true", default=None,
                   help="RUN: score draws x ~ p(x|z) instead of the decoder means")  # fmt: skip
    p.add_argument("--seed", type=int, help="RUN: seed of the samples (default: 0)")
    p.add_argument("--data", metavar="NAME", help="the dataset that --samples are compared with (digits, "
                   "fashion-mnist, mnist, a .npz with x_train, y_train, x_test, y_test, or one of the mode-collapse "
                   "datasets ring8, grid25, stacked-fashion-mnist)")  # fmt: skip
    p.add_argument("--samples", metavar="FILE.npy", help="with --data: an N x C x H x W (or N x H x W) float array "
                   "in [0, 1] (N x 2 floats for ring8 and grid25), from any generator")  # fmt: skip
    p.add_argument("--data-dir", metavar="DIR", help="the folder that holds the IDX files (in it, or in its subfolder "
                   "named after the dataset), the only place looked in (default for a RUN: its own)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p = sub.add_parser("traverse", help="latent traversals: each dimension swept while the others stay at an example's code",
                       description="The beta-VAE figure (Higgins et al. 2017): one row per latent dimension, swept over "
                       "[-R, R] prior standard deviations around the prior mean while the other dimensions stay "
                       "at a test example's posterior mean E_q[z|x] (E(x) for a deterministic encoder). Rows are ordered "
                       "by the dimension's KL(q(z_d|x) || p(z_d)), mean over test examples, largest first (by the "
                       "activity Cov_x E[z_d|x] where the posterior or prior has no KL per dimension) and labelled with it.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    _add_trust_flag(p)
    _add_device_flag(p)
    p.add_argument("--dims", metavar="D,D,...", type=_index_list("--dims"),
                   help="latent dimensions to show, counted from 0, in this order (default: all, largest KL first)")  # fmt: skip
    p.add_argument("--range", dest="span", metavar="R", type=float, default=3.0,
                   help="sweep from -R to +R prior standard deviations around the prior mean (default: 3)")  # fmt: skip
    p.add_argument("--steps", type=int, default=11, help="images per dimension (default: 11)")
    p.add_argument("--example", type=int, default=0, help="the test example whose code holds the other dimensions (default: 0)")
    p.add_argument("-o", "--output", metavar="FILE.png", help="image file (default: RUN/traversal.png)")

    p = sub.add_parser("interpolate", help="decoded interpolation between two test examples' codes",
                       description="Decodes --steps points on the path from test example I's posterior mean to "
                       "test example J's: a great-circle arc (spherical interpolation) when the prior is N(0, I), "
                       "a straight line otherwise; the output and the figure title say which. The two examples "
                       "themselves frame the row.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    _add_trust_flag(p)
    _add_device_flag(p)
    p.add_argument("--from", dest="start", metavar="I", type=int, required=True, help="index of the first test example")
    p.add_argument("--to", dest="end", metavar="J", type=int, required=True, help="index of the last test example")
    p.add_argument("--steps", type=int, default=10, help="decoded points, both ends included (default: 10)")
    p.add_argument("-o", "--output", metavar="FILE.png", help="image file (default: RUN/interpolation.png)")

    p = sub.add_parser("report", help="one self-contained HTML page about a run",
                       description="Writes one HTML file that needs no network: the configuration, the training "
                       "curves, the results stored by vaelab evaluate, gaps and diagnose, samples, reconstructions, "
                       "the 2-D latent map, traversals and an interpolation, images inline. Sections that do not "
                       "apply to the model are listed with the reason.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    _add_trust_flag(p)
    _add_device_flag(p)
    p.add_argument("-o", "--output", metavar="FILE.html", help="where to write the page (default: RUN/report.html)")
    return parser


METHODS = ("is", "ais", "bdmc")


def _add_trust_flag(parser: argparse.ArgumentParser) -> None:
    """--trust-code, on every command that opens a run directory: a run trained with --net
    package.module:Factory is rebuilt by importing and calling that factory, which runs its code;
    a run directory someone handed you runs nothing unless you say so."""
    parser.add_argument("--trust-code", action="store_true",
                        help="allow a run trained with --net package.module:Factory to import and run that factory "
                        "to rebuild its networks (only for runs whose code you trust)")  # fmt: skip


def _add_device_flag(parser: argparse.ArgumentParser) -> None:
    """--device, on every command that computes with a model: where the model is put and its
    batches computed. A run opens on any device, whichever one trained it."""
    parser.add_argument("--device", default="auto", metavar="auto|cpu|cuda|cuda:N|mps",
                        help="where the model computes: auto (CUDA, then Apple's MPS, then the CPU), cpu, cuda "
                        "(the current GPU), cuda:N or mps (default: auto)")  # fmt: skip


def _check_device(args: argparse.Namespace) -> None:
    """Resolves --device once, before any work: a device this machine cannot use is one line and
    nothing is read or written; every part of the command then runs on the same device."""
    from ..core.devices import resolve_device

    args.device = resolve_device(args.device)


def _check_trust(args: argparse.Namespace) -> None:
    """Refuses, before any work, a run directory of the command whose configuration names code to
    import (--net package.module:Factory) unless --trust-code is given. ``runs.load`` refuses it
    too; checking here makes every command fail at once, before reading data or training anything."""
    from ..core.files import CONFIG_FILE
    from ..nets.backbones import check_trusted
    from ..runs.rundir import read_config

    sampler = getattr(args, "sampler", None) or ""
    dirs = [getattr(args, "run", None), getattr(args, "resume", None),
            sampler[len("stage2:"):] if sampler.startswith("stage2:") else None]  # fmt: skip
    for run in dirs:
        if run is None or not (Path(run) / CONFIG_FILE).is_file():
            continue  # the command itself says what is wrong with a missing run
        try:
            config, _ = read_config(run)
        except VaelabError:
            continue  # likewise a corrupt one
        check_trusted(config.model.net, None, args.trust_code)


def _sampler(text: str) -> str:
    """argparse type of --sampler: prior, gmm or stage2:RUN2."""
    if text in ("prior", "gmm") or (text.startswith("stage2:") and len(text) > len("stage2:")):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from prior, gmm, stage2:RUN2 with RUN2 a run "
                                     "trained on this run's codes)")  # fmt: skip
AIS_DEFAULTS = {"steps": 1000, "chains": 16, "leapfrog": 10, "ais_start": "prior"}


def _add_ais_flags(parser: argparse.ArgumentParser, steps_flag: str) -> None:
    """The AIS options, None when not given (so that --method is can refuse them)."""
    parser.add_argument(steps_flag, dest="ais_steps", type=int, metavar="STEPS",
                        help="AIS: annealing steps (intermediate distributions) (default: 1000)")  # fmt: skip
    parser.add_argument("--chains", type=int, help="AIS: independent chains per example (default: 16)")
    parser.add_argument("--leapfrog", type=int, help="AIS: leapfrog steps per HMC transition (default: 10)")
    parser.add_argument("--ais-start", choices=("prior", "posterior"),
                        help="AIS: anneal from the prior p(z) or from the encoder's q(z|x) (default: prior)")  # fmt: skip


def _ais_options(args: argparse.Namespace, steps_flag: str) -> dict[str, Any]:
    """Checks the AIS flags against --method and returns ``ais.ais`` keywords (empty for is)."""
    flags = {steps_flag: args.ais_steps, "--chains": args.chains, "--leapfrog": args.leapfrog,
             "--ais-start": args.ais_start}  # fmt: skip
    if args.method == "is":
        given = [flag for flag, value in flags.items() if value is not None]
        if given:
            raise VaelabError(f"{', '.join(given)}: AIS options, unused by --method is; add --method ais or drop them")
        return {}
    for flag in (steps_flag, "--chains", "--leapfrog"):
        _positive(flag, flags[flag])
    values = [v if v is not None else d for v, d in zip(flags.values(), AIS_DEFAULTS.values())]
    return dict(zip(("steps", "chains", "leapfrog", "start"), values))


def _config_from_args(args: argparse.Namespace) -> cfg.RunConfig:
    layers = [cfg.read_toml(args.config)] if args.config else []
    flags: dict[str, dict[str, Any]] = {}
    for dest, value in vars(args).items():
        if "." in dest:
            section, name = dest.split(".", 1)
            flags.setdefault(section, {})[name] = value
    return cfg.build(cfg.merge(*layers, flags))


def _int_list(flag: str):
    """argparse type for comma-separated positive integers such as 1,5,50."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} needs comma-separated integers such as 1,5,50, got {text!r}") from None
        if not values or any(v < 1 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} needs positive integers such as 1,5,50, got {text!r}")
        return values

    return parse


def _index_list(flag: str):
    """argparse type for comma-separated indices counted from 0, such as 0,3,7."""

    def parse(text: str) -> tuple[int, ...]:
        try:
            values = tuple(int(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} needs comma-separated integers such as 0,3,7, got {text!r}") from None
        if not values or any(v < 0 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} needs indices counted from 0, such as 0,3,7, got {text!r}")
        return values

    return parse


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise VaelabError(f"{name} must be at least 1, got {value}")


def cmd_train(args: argparse.Namespace) -> int:
    from ..runs import distributed
    from ..runs.speed import compiling, fusing

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
        with compiling(args.compile), fusing(args.fused):
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
                print(f"nothing to do: {_as_flags(finished, {'epochs'})}")
            return 0
        _print_data_source(args, run_dir)
        try:
            if epochs is None:
                from ..runs.rundir import read_config

                epochs = read_config(run_dir)[0].train.epochs
                result = resume_run(run_dir, progress=progress, trust_code=args.trust_code,
                                    callbacks=_epoch_printer(args, epochs), device=args.device)  # fmt: skip
            else:
                result = resume_run(run_dir, epochs=epochs, progress=progress, trust_code=args.trust_code,
                                    callbacks=_epoch_printer(args, epochs), device=args.device)  # fmt: skip
        except RunFinishedError as done:  # it finished in the meantime
            if not args.silent:
                print(f"nothing to do: {_as_flags(str(done), {'epochs'})}")
            return 0
    elif args.resume_if_exists and Path(args.out, "config.json").exists():
        return _train_existing(args, _config_from_args(args), Path(args.out), progress, main)
    else:
        config = _config_from_args(args)
        from ..data.datasets import is_path

        # a file's or folder's own name (paths are stored absolute), else the dataset's
        name = Path(config.data.data).stem if is_path(config.data.data) else config.data.data
        run_dir = Path(args.out or f"runs/{name}-{time.strftime('%Y%m%d-%H%M%S')}")
        args.out = str(run_dir)  # for the resume hint if interrupted
        _print_data_source(args, config)
        result = start_run(config, run_dir, progress=progress, callbacks=_epoch_printer(args, config.train.epochs),
                           device=args.device)  # fmt: skip
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
    from ..runs import distributed
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
            result = resume_run(run_dir, progress=progress, trust_code=True, device=args.device,
                                callbacks=_epoch_printer(args, config.train.epochs))  # fmt: skip
        except RunFinishedError as done:
            finished = str(done)
    if finished is not None:
        if not args.silent:
            print(f"nothing to do: {_as_flags(finished, {'epochs'})}")
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


def _epoch_printer(args: argparse.Namespace, epochs: int) -> tuple:
    """The Trainer callback that prints one line per epoch on stdout (none under --silent)."""
    if args.silent:
        return ()
    from tqdm.auto import tqdm

    from ..runs.lifecycle import epoch_line

    def show(record: dict) -> None:
        # through tqdm, so a progress bar on the same terminal is redrawn below the line
        tqdm.write(epoch_line(record, epochs), file=sys.stdout)
        sys.stdout.flush()  # one line per epoch as it happens, also into a pipe or a file

    return (show,)


def _store(run: str, command: str, options: dict[str, Any], result: dict[str, Any]) -> None:
    """Keeps a command's result (its --json object) in the run directory, for compare and report.
    A run directory that cannot take it (read-only, a corrupt results file) costs a warning line,
    not the result just computed, which is still printed."""
    from ..runs.results import save_result

    try:
        save_result(run, command, options, result)
    except (OSError, VaelabError) as err:
        logging.getLogger("vaelab").warning("the result was not stored in %s (%s)", run, err)


def _evaluate_options(args: argparse.Namespace, **extra: Any) -> dict[str, Any]:
    """The arguments an evaluation depends on, as stored beside its result."""
    return {"method": args.method, "split": args.split, "limit": args.limit, **extra}


def _ais_keys(options: dict[str, Any]) -> dict[str, Any]:
    """AIS options under the names of the --json objects (steps, chains, leapfrog, ais_start)."""
    return {"steps": options["steps"], "chains": options["chains"], "leapfrog": options["leapfrog"],
            "ais_start": options["start"]}  # fmt: skip


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..runs import distributed

    if not distributed.launched():
        return _evaluate(args, main=True)
    # under torchrun: the importance-sampling estimate is split over the processes; rank 0 speaks
    if args.method != "is":
        raise VaelabError(f"under torchrun, vaelab evaluate splits --method is over the processes; run --method "
                          f"{args.method} in one process")  # fmt: skip
    from ..models import ADVERSARIAL
    from ..runs.rundir import read_config

    model = read_config(args.run)[0].model.model
    if model in ADVERSARIAL or model == "vqvae":
        raise VaelabError(f"under torchrun, vaelab evaluate splits the importance-sampling estimate of a VAE; "
                          f"evaluate this --model {model} run in one process")  # fmt: skip
    args.device = distributed.init(args.device)[1]
    main = distributed.world().is_main
    if not main:
        args.quiet = True
    try:
        with contextlib.nullcontext() if main else contextlib.redirect_stdout(io.StringIO()):
            return _evaluate(args, main=main)
    finally:
        distributed.finish()


def _evaluate(args: argparse.Namespace, main: bool) -> int:
    import torch

    from ..evaluation.evaluate import KHAT_THRESHOLD, evaluate, mean_bound
    from ..inference.objectives import get_objective
    from ..runs.rundir import load, load_data, read_config

    _positive("--k", args.k)
    _positive("--limit", args.limit)
    ais_options = _ais_options(args, "--steps")
    if args.method != "is":
        is_only = [flag for flag, given in (("--k", args.k is not None), ("--bounds", bool(args.bounds)),
                                            ("--proposal", args.proposal is not None)) if given]  # fmt: skip
        if is_only:
            raise VaelabError(
                f"{', '.join(is_only)}: importance-sampling options, unused by --method {args.method}; drop "
                f"them (AIS anneals from the prior, or from q(z|x) with --ais-start posterior)"
            )
    args.k = 5000 if args.k is None else args.k
    args.proposal = args.proposal or "posterior"
    config, _ = read_config(args.run)
    from ..models import ADVERSARIAL

    if config.model.model in ADVERSARIAL:
        given = [flag for flag, on in (("--method", args.method != "is"), ("--k", args.k != 5000), ("--bounds", bool(args.bounds)),
                                       ("--proposal", args.proposal != "posterior")) if on]  # fmt: skip
        if given:
            raise VaelabError(f"{given[0]} estimates a likelihood, which --model {config.model.model} does not define; "
                              f"drop it (vaelab quality {args.run} scores its samples)")  # fmt: skip
        split = load_data(config, args.split, limit=args.limit, progress=not args.quiet)
        if len(split) == 0:
            raise VaelabError(f"the {args.split} split of {args.run} is empty (the run has --valid-fraction 0?)")
        return _evaluate_adversarial(args, config, load(args.run, trust_code=args.trust_code, device=args.device), split)
    if args.method != "is" and config.model.model == "vqvae":
        raise VaelabError(
            f"--method {args.method} anneals a continuous latent; {args.run} is a --model vqvae run, whose "
            f"bound log p(x|z_q) + log p(z_q) is exact given x: use --method is"
        )
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    if args.method == "bdmc":
        return _evaluate_bdmc(args, config, model, ais_options)
    split = load_data(config, args.split, limit=args.limit, progress=not args.quiet)
    if len(split) == 0:
        raise VaelabError(f"the {args.split} split of {args.run} is empty (the run has --valid-fraction 0?)")
    x = split.fixed()
    if args.method == "ais":
        return _evaluate_ais(args, config, model, split, ais_options)
    if config.model.model == "vqvae":
        if args.bounds or args.proposal != "posterior":
            raise VaelabError(
                "--bounds and --proposal are importance-sampling options; a --model vqvae run's bound "
                "log p(x|z_q) + log p(z_q) is exact given x, with nothing to sample: drop them"
            )
        return _evaluate_vqvae(args, config, model, split)
    torch.manual_seed(args.seed)
    summary = evaluate(model, x, args.k, progress=not (args.quiet or args.json), bounds=args.bounds,
                       proposal=args.proposal)  # fmt: skip
    summary["proposal"] = args.proposal
    local = config.model.inference == "local"
    if args.proposal == "prior":
        # the KL and active units of the proposal p(z) are 0 by construction and say nothing of the model
        summary["kl"] = summary["active_units"] = None
        summary.pop("active_units_per_layer", None)
        summary["kl_of"] = None
    else:
        # which q the KL and active units describe: the encoder's, or (--inference local, no encoder)
        # the q fitted to each example by variational inference during evaluation
        summary["kl_of"] = "fitted local q" if local else "encoder"
    t = config.train
    trained = get_objective(t.objective, **{**t.objective_options(), "free_bits": 0.0})
    summary["trained_objective"] = _describe_objective(config)
    summary["trained_bound"], summary["trained_bound_stderr"] = mean_bound(trained, model, x)
    what = _what_is_scored(config, split)
    if split.dequantize:
        _add_discrete_bound(summary, split, "log_likelihood")
    if main:
        _store(args.run, "evaluate", _evaluate_options(args, seed=args.seed, k=args.k, bounds=list(args.bounds),
                                                       proposal=args.proposal), summary)  # fmt: skip
    if args.json:
        print(json.dumps(summary))
        _warn_heavy_tails(summary, args.proposal)
        return 0
    s = summary
    print(f"{args.run}: {s['n_examples']} {args.split} examples of {config.data.data}, {what}, K={s['k']}")
    how = "importance sampling from q(z|x)" if args.proposal == "posterior" else "naive Monte Carlo from p(z)"
    print(f"  log-likelihood  {s['log_likelihood']:.3f} +- {s['log_likelihood_stderr']:.3f} nats ({how}, +- Monte-Carlo standard error)")
    if split.dequantize:
        print(f"  discrete data   >= {s['discrete_log_likelihood_bound']:.3f} nats ({s['bits_per_dim']:.4f} bits/dim)")
    print(f"  ELBO            {s['elbo']:.3f} nats")
    print(f"  trained bound   {s['trained_bound']:.3f} +- {s['trained_bound_stderr']:.3f} nats ({s['trained_objective']}, one draw per example, +- standard error over examples)")
    for kb, value in s["bounds"].items():
        print(f"  L_{kb:<13} {value:.3f} +- {s['bounds_stderr'][kb]:.3f} nats")
    print(f"  reconstruction  {s['reconstruction']:.3f} nats")
    if s["kl"] is not None:  # not for --proposal prior, where they would describe p(z) itself
        of = " (of the fitted local q: no encoder, q is fitted to each example)" if local else ""
        print(f"  KL              {s['kl']:.3f} nats{of}")
        print(f"  active units    {s['active_units']} of {model.latent_dim}{of}")
    if "active_units_per_layer" in s:
        per_layer = ", ".join(f"{a} of {n}" for a, n in zip(s["active_units_per_layer"], model.layer_sizes))
        print(f"  per layer       {per_layer} (z1, next to x, first)")
    if math.isnan(s["khat_mean"]):
        print("  Pareto k-hat    not estimated (needs K >= 6)")
    else:
        print(f"  Pareto k-hat    mean {s['khat_mean']:.2f}, {s['khat_above_0_7']:.1%} of examples above {KHAT_THRESHOLD} (of the importance weights: < 0.5 good, > {KHAT_THRESHOLD} unreliable)")
    _warn_heavy_tails(summary, args.proposal)
    return 0


def _ais_header(options: dict[str, Any]) -> str:
    start = "the prior" if options["start"] == "prior" else "q(z|x)"
    return f"{options['steps']} steps x {options['chains']} chains, HMC with {options['leapfrog']} leapfrog steps, from {start}"


def _evaluate_ais(args: argparse.Namespace, config: cfg.RunConfig, model, split, options: dict[str, Any]) -> int:
    """``vaelab evaluate --method ais``: log p(x) by annealed importance sampling."""
    from ..evaluation.ais import ais, summarize_ais

    result = ais(model, split.fixed(), **options, seed=args.seed, progress=not (args.quiet or args.json))
    summary = {**summarize_ais(result), "method": "ais", "steps": options["steps"], "chains": options["chains"],
               "leapfrog": options["leapfrog"], "ais_start": options["start"]}  # fmt: skip
    if split.dequantize:
        _add_discrete_bound(summary, split, "log_likelihood")
    _store(args.run, "evaluate", _evaluate_options(args, seed=args.seed, **_ais_keys(options)), summary)
    if args.json:
        print(json.dumps(summary))
        return 0
    s = summary
    print(f"{args.run}: {s['n_examples']} {args.split} examples of {config.data.data}, "
          f"{_what_is_scored(config, split)}, AIS ({_ais_header(options)})")  # fmt: skip
    print(f"  log-likelihood  {s['log_likelihood']:.3f} +- {s['log_likelihood_stderr']:.3f} nats (annealed importance "
          f"sampling, a stochastic lower bound; +- Monte-Carlo standard error over chains)")  # fmt: skip
    if split.dequantize:
        print(f"  discrete data   >= {s['discrete_log_likelihood_bound']:.3f} nats ({s['bits_per_dim']:.4f} bits/dim)")
    _print_hmc(s)
    return 0


def _print_hmc(s: dict) -> None:
    from ..evaluation.ais import ais

    target = inspect.signature(ais).parameters["target_accept"].default
    if math.isnan(s["acceptance_rate"]):
        print("  HMC             no transitions (--steps 1 is importance sampling with --chains particles)")
    else:
        print(f"  HMC             acceptance rate {s['acceptance_rate']:.3f} (step sizes set by a pilot run adapted towards {target}), "
              f"final step size {s['step_size']:.4g} (mean over examples)")  # fmt: skip


def _evaluate_bdmc(args: argparse.Namespace, config: cfg.RunConfig, model, options: dict[str, Any]) -> int:
    """``vaelab evaluate --method bdmc``: AIS lower and reverse-AIS upper bounds on simulated data."""
    from ..evaluation.ais import bdmc, summarize_bdmc

    n = 100 if args.limit is None else args.limit
    result = bdmc(model, n, **options, seed=args.seed, progress=not (args.quiet or args.json))
    summary = {**summarize_bdmc(result), "method": "bdmc", "steps": options["steps"], "chains": options["chains"],
               "leapfrog": options["leapfrog"], "ais_start": options["start"]}  # fmt: skip
    # simulated from the model: no split is read
    _store(args.run, "evaluate", {"method": "bdmc", "limit": n, "seed": args.seed, **_ais_keys(options)}, summary)
    if args.json:
        print(json.dumps(summary))
        return 0
    s = summary
    print(f"{args.run}: bidirectional Monte Carlo on {s['n_examples']} examples simulated from the model "
          f"(Grosse et al. 2015), AIS ({_ais_header(options)})")  # fmt: skip
    print(f"  AIS lower bound {s['ais_lower']:.3f} +- {s['ais_lower_stderr']:.3f} nats (forward AIS from the start)")
    print(f"  AIS upper bound {s['ais_upper']:.3f} +- {s['ais_upper_stderr']:.3f} nats (reverse AIS from the exact "
          f"posterior sample that generated each example; +- from the spread of upper - lower over the examples, "
          f"which covers the draw of that sample)")  # fmt: skip
    print(f"  BDMC gap        {s['bdmc_gap']:.3f} +- {s['bdmc_gap_stderr']:.3f} nats (upper - lower: bounds the error of "
          f"AIS with these settings on data like the model's own; more --steps close it)")  # fmt: skip
    _print_hmc(s)
    return 0


def _warn_heavy_tails(summary: dict, proposal: str) -> None:
    """One warning line when too many examples have Pareto k-hat > 0.7: for them the importance
    weights have no finite variance, so the estimate and its standard error cannot be trusted."""
    from ..evaluation.evaluate import KHAT_THRESHOLD, KHAT_WARN_FRACTION

    share = summary["khat_above_0_7"]
    if share > KHAT_WARN_FRACTION:  # False for nan (K too small to estimate k-hat)
        better = "--proposal posterior" if proposal == "prior" else "train with a richer --posterior"
        logging.getLogger("vaelab").warning(
            "Pareto k-hat > %s for %.1f%% of examples (mean k-hat %.2f): the log-likelihood estimate and "
            "its standard error are unreliable for them; use a larger --k or a better proposal (e.g. %s).",
            KHAT_THRESHOLD, 100 * share, summary["khat_mean"], better,
        )  # fmt: skip


def _evaluate_vqvae(args: argparse.Namespace, config: cfg.RunConfig, model, split) -> int:
    """``vaelab evaluate`` of a VQ-VAE: the bound log p(x|z_q(x)) + log p(z_q(x)), exact given x."""
    import torch

    from ..evaluation.evaluate import vq_summary

    summary = vq_summary(model, split.fixed())
    if split.dequantize:
        _add_discrete_bound(summary, split, "elbo")
    torch.manual_seed(args.seed)  # unused: the VQ bound has no sampling; kept for a uniform interface
    _store(args.run, "evaluate", _evaluate_options(args), summary)
    if args.json:
        print(json.dumps(summary))
        return 0
    s = summary
    print(f"{args.run}: {s['n_examples']} {args.split} examples of {config.data.data}, VQ-VAE with the {s['prior']} prior over codes")
    print("  log-likelihood  not estimated: q(z|x) is one-hot on the nearest codes, so importance sampling has nothing to sample")
    print(f"  ELBO            {s['elbo']:.3f} +- {s['elbo_stderr']:.3f} nats (log p(x|z_q) + log p(z_q), +- standard error over examples)")
    if split.dequantize:
        print(f"  discrete data   >= {s['discrete_log_likelihood_bound']:.3f} nats ({s['bits_per_dim']:.4f} bits/dim)")
    print(f"  reconstruction  {s['reconstruction']:.3f} nats")
    print(f"  KL (rate)       {s['kl']:.3f} nats (-log p(z_q))")
    print(f"  codebook        perplexity {s['codebook_perplexity']:.1f}, {s['codes_used']} of {model.codebook_size} codes used")
    return 0


def _evaluate_adversarial(args: argparse.Namespace, config: cfg.RunConfig, model, split) -> int:
    """What is defined for an adversarial model: its reconstruction error where it has an
    encoder, and a plain statement that there is no likelihood bound."""
    from ..evaluation.evaluate import reconstruction_error

    name = config.model.model
    note = (f"--model {name} defines no density p(x) (its generator is implicit), so there is no log-likelihood or "
            f"bound to report; judge its samples with: vaelab quality {args.run}")  # fmt: skip
    summary: dict[str, Any] = {"model": name, "log_likelihood": None, "bound": None, "note": note,
                               "n_examples": len(split)}  # fmt: skip
    from ..evaluation.sampling import can_reconstruct

    has_encoder = can_reconstruct(model)
    if has_encoder:
        summary["reconstruction_error"], summary["reconstruction_error_stderr"] = reconstruction_error(model, split.fixed())
    else:
        summary["reconstruction_error"] = summary["reconstruction_error_stderr"] = None
    _store(args.run, "evaluate", _evaluate_options(args), summary)
    if args.json:
        print(json.dumps(summary))
        return 0
    print(f"{args.run}: {len(split)} {args.split} examples of {config.data.data}, --model {name}")
    print(f"  no likelihood bound: {note}")
    if has_encoder:
        what = "G(F(x)), F the reconstructor" if name == "veegan" else "G(E(x))"
        print(f"  reconstruction error  {summary['reconstruction_error']:.3f} +- "
              f"{summary['reconstruction_error_stderr']:.3f} (||x - {what}||^2 summed over dimensions, mean over examples)")  # fmt: skip
    else:
        print(f"  reconstruction error  not defined: --model {name} has no encoder")
    return 0


def _add_discrete_bound(summary: dict, split, key: str) -> None:
    """For dequantized data, the bound on the discrete log-likelihood that the density ``key``
    gives, log P(k) >= E_u[log p((k + u) / L)] - D log L (Theis et al. 2016), and its bits/dim."""
    dims = math.prod(split.event_shape)
    bound = summary[key] - dims * math.log(split.levels)
    summary["discrete_log_likelihood_bound"] = bound
    summary["bits_per_dim"] = -bound / (dims * math.log(2))


def _describe_objective(config: cfg.RunConfig) -> str:
    """The training objective with its options, as in the papers: iwae(k=50), miwae(m=8, k=8)."""
    import inspect

    from ..inference.objectives import OBJECTIVES, objective_options

    t = config.train
    accepted = objective_options(t.objective)
    beta = t.beta if t.beta is not None else inspect.signature(OBJECTIVES[t.objective]).parameters.get("beta")
    beta = getattr(beta, "default", beta)  # the objective's own default when --beta was not given
    parts = [f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"
             for name, value in (("m", t.m), ("k", t.k), ("beta", beta)) if name in accepted and value is not None]  # fmt: skip
    if t.grad_estimator != "reparam":
        parts.append(t.grad_estimator)
    return f"{t.objective}({', '.join(parts)})"


def _describe_measured(measured: dict[str, Any]) -> str:
    """e.g. ``iwae (dreg, m=1)``: an objective and the options its gradient is measured with."""
    rest = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in measured.items() if k not in ("objective", "grad_estimator")]
    return f"{measured['objective']} ({', '.join([measured['grad_estimator'], *rest])})"


def _needs_continuous_latent(config: cfg.RunConfig, run: str, what: str) -> None:
    """Refuses, in one line, a VAE-only analysis of a VQ-VAE or adversarial run."""
    from ..models import ADVERSARIAL

    if config.model.model in ADVERSARIAL:
        raise VaelabError(
            f"{what} needs a VAE's q(z|x) and likelihood; {run} is a --model {config.model.model} run, which has "
            f"neither (use vaelab evaluate, sample, reconstruct or quality)"
        )
    if config.model.model == "vqvae":
        raise VaelabError(
            f"{what} needs a VAE's continuous latent and its q(z|x); {run} is a --model vqvae run, whose "
            f"posterior is one-hot on the nearest codes (use vaelab evaluate, sample, reconstruct or quality)"
        )


def cmd_diagnose(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.diagnostics import parameter_groups, snr_sweep
    from ..inference.objectives import OBJECTIVES, objective_options
    from ..report.figures import snr_figure
    from ..runs.rundir import load, load_data, read_config

    _positive("--batch", args.batch)
    _positive("--m", args.m)
    if args.reps < 2:
        raise VaelabError(f"--reps must be at least 2 to estimate a standard deviation, got {args.reps}")
    if args.objective is not None:
        OBJECTIVES[args.objective]  # unknown names list the valid ones
    config, _ = read_config(args.run)
    _needs_continuous_latent(config, args.run, "vaelab diagnose")
    # By default the gradient measured is the run's own: its objective, estimator and options (a
    # DReG-trained run measured with plain IWAE gradients would describe another estimator).
    t = config.train
    own = args.objective in (None, t.objective)
    args.objective = args.objective or t.objective
    accepted = objective_options(args.objective)
    if args.m not in (None, 1) and "m" not in accepted:
        raise VaelabError(f"--m is not used by --objective {args.objective}")
    if args.beta is not None and "beta" not in accepted:
        raise VaelabError(f"--beta is not used by --objective {args.objective}")
    flags = [flag for flag, value in (("--objective", not own or None), ("--grad-estimator", args.grad_estimator),
                                      ("--m", args.m), ("--beta", args.beta)) if value is not None]  # fmt: skip
    args.grad_estimator = args.grad_estimator or (t.grad_estimator if own else "reparam")
    args.m = args.m or (t.m if own else 1)
    if args.beta is None and own:
        args.beta = t.beta
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    parameter_groups(model)  # a model without an encoder is refused before any work starts
    split = load_data(config, args.split, limit=args.batch)
    if len(split) == 0:
        raise VaelabError(f"the {args.split} split of {args.run} is empty")
    x = split.fixed()
    options = {"m": args.m, "grad_estimator": args.grad_estimator}
    if args.beta is not None:
        options["beta"] = args.beta
    if own:
        options["kl"] = t.kl  # analytic or Monte-Carlo KL changes the ELBO's gradient too
    options = {k: v for k, v in options.items() if k in accepted}
    torch.manual_seed(args.seed)
    result = snr_sweep(model, x, args.k_list, objective=args.objective, options=options, reps=args.reps,
                       progress=not (args.quiet or args.json))  # fmt: skip
    result["grad_estimator"] = args.grad_estimator
    measured = {"objective": args.objective, "grad_estimator": args.grad_estimator, **options}
    # what was measured, and whether that is how the run was trained (no flag changed it) or not
    result["measured"] = {**measured, "as_trained": own and not flags, "flags": flags}
    what = _describe_measured(measured)
    title = f"gradient SNR of {what}" + (" (as trained)" if own and not flags else "")
    path = snr_figure(result, args.output or Path(args.run) / "snr.png", title=title)
    result["plot"] = str(path)
    _store(args.run, "diagnose", {"objective": result["objective"], "grad_estimator": result["grad_estimator"], **options,
                                  "k_list": result["k"], "reps": args.reps, "batch": args.batch, "split": args.split,
                                  "seed": args.seed}, result)  # fmt: skip
    if args.json:
        print(json.dumps(result))
        return 0
    how = "the run's training objective and estimator" if own and not flags else f"set by {', '.join(flags)}"
    print(f"{args.run}: gradient SNR of {what} ({how}) on {result['n_examples']} "
          f"{args.split} examples, {args.reps} draws per K; mean over parameters of |E[g]| / std[g]")  # fmt: skip
    print(f"{'K':>8}  {'encoder SNR':>12}  {'decoder SNR':>12}  {'ESS':>8}")
    for k, enc, dec, ess in zip(result["k"], result["encoder_snr"], result["decoder_snr"], result["ess"]):
        print(f"{k:>8}  {enc:>12.4f}  {dec:>12.4f}  {ess:>8.4f}")
    print(f"ESS: normalized effective sample size of the importance weights, (sum w)^2 / (K sum w^2). Plot: {path}")
    return 0


def cmd_gaps(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.gaps import gaps
    from ..runs.rundir import load, load_data, read_config

    for name in ("limit", "k", "steps", "samples"):
        _positive(f"--{name}", getattr(args, name))
    if not args.lr > 0:
        raise VaelabError(f"--lr must be positive, got {args.lr}")
    ais_options = _ais_options(args, "--ais-steps")
    config, _ = read_config(args.run)
    _needs_continuous_latent(config, args.run, "vaelab gaps")
    if config.model.layers != 1:
        raise VaelabError(
            f"vaelab gaps fits q(z|x) per example within the encoder's family, which is implemented for one "
            f"stochastic layer only; {args.run} is a --layers 2 run"
        )
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    x = load_data(config, args.split, limit=args.limit).fixed()
    if len(x) == 0:
        raise VaelabError(f"the {args.split} split of {args.run} is empty")
    progress = not (args.quiet or args.json)
    torch.manual_seed(args.seed)
    out = gaps(model, x, k=args.k, steps=args.steps, lr=args.lr, samples=args.samples, progress=progress,
               method=args.method, ais_options=ais_options)  # fmt: skip
    out.update(k=args.k, steps=args.steps)
    if args.method == "ais":
        out.update(method="ais", ais_steps=ais_options["steps"], chains=ais_options["chains"],
                   leapfrog=ais_options["leapfrog"], ais_start=ais_options["start"])  # fmt: skip
    gaps_options = {"method": args.method, "split": args.split, "limit": args.limit, "seed": args.seed, "k": args.k,
                    "steps": args.steps, "lr": args.lr, "samples": args.samples}  # fmt: skip
    if args.method == "ais":
        gaps_options.update({f"ais_{k}" if k == "steps" else k: v for k, v in _ais_keys(ais_options).items()})
    _store(args.run, "gaps", gaps_options, out)
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{args.run}: gaps on {len(x)} {args.split} examples (Cremer et al. 2018, table 2), nats")
    print(f"  {'':<24}{'q: ' + out['posterior']:>36}")
    rows = [("log p(x)", out["log_likelihood"])]
    if "local_elbo_gaussian" in out:
        rows.append(("L[q*] diagonal Gaussian", out["local_elbo_gaussian"]))
    rows += [("L[q*]  (local)", out["local_elbo"]), ("L[q]   (amortized)", out["amortized_elbo"]),
             ("approximation gap", out["approximation_gap"]), ("amortization gap", out["amortization_gap"])]  # fmt: skip
    for label, value in rows:
        print(f"  {label:<24}{value:>36.2f}")
    how = f"importance sampling, K={args.k}"
    if args.method == "ais":
        how = (f"AIS ({_ais_header(ais_options)}, acceptance rate {out['acceptance_rate']:.2f}; importance "
               f"sampling gives {out['log_likelihood_is']:.2f})")  # fmt: skip
    print(f"log p(x): {how}; L[q*]: {args.steps} Adam steps per example from the "
          f"encoder's q (the diagonal Gaussian row, when shown: from the encoder's moments)")  # fmt: skip
    return 0


def _what_is_scored(config: cfg.RunConfig, split) -> str:
    """Says what the log-likelihood is a likelihood of, so no number is mistaken for another."""
    if config.data.binarize != "none":
        return f"binarized ({config.data.binarize})"
    if split.dequantize:
        return f"density of dequantized grey levels ((k + u) / {split.levels})"
    if config.model.likelihood == "bernoulli":
        return "binary data"
    if split.levels:
        return "density of the grey levels as given (use --dequantize for a bound on discrete pixels)"
    return "density of the values as given"


def cmd_sample(args: argparse.Namespace) -> int:
    from ..report.figures import samples_figure
    from ..runs.rundir import load, read_config

    _positive("-n", args.n)
    _positive("--components", args.components)
    config, event_shape = read_config(args.run)
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    sampler, label = None, "p(z)"
    if args.sampler == "gmm":
        from ..evaluation.sampling import fit_latent_gmm
        from ..runs.rundir import load_data

        _needs_continuous_latent(config, args.run, "--sampler gmm")
        x = load_data(config, "train", limit=GMM_EXAMPLES).fixed()
        sampler = fit_latent_gmm(model, x, args.components, seed=args.seed)
        label = f"GMM({args.components}) of encoder means"
    elif args.sampler.startswith("stage2:"):
        sampler = _stage2_sampler(args.sampler, config, args.run, model, args.trust_code)
        label = f"the stage-2 VAE {args.sampler[len('stage2:'):]}"
    if sampler is None and tuple(event_shape) == (2,):  # points in the plane: a scatter plot
        from ..report.figures import points_figure
        from ..runs.rundir import load_data

        test = load_data(config, "test", limit=max(args.n, 2500)).fixed()
        path = points_figure(model, test, args.output or _unused_name(Path(args.run) / "samples.png"), n=args.n, seed=args.seed)
        print(f"{args.n} samples drawn over the test data, in {path}")
        return 0
    path = samples_figure(model, args.output or _unused_name(Path(args.run) / "samples.png"), n=args.n, seed=args.seed,
                          latent_sampler=sampler, label=label)  # fmt: skip
    print(f"{args.n} samples in {path}")
    return 0


def _unused_name(path: Path) -> Path:
    """``path`` if no file has that name yet, else the first free ``NAME-1.png``, ``NAME-2.png``, ...,
    so a command's default picture never replaces an earlier one (-o names a file to overwrite)."""
    if not path.exists():
        return path
    i = 1
    while path.with_name(f"{path.stem}-{i}{path.suffix}").exists():
        i += 1
    return path.with_name(f"{path.stem}-{i}{path.suffix}")


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ..report.figures import reconstructions_figure
    from ..runs.rundir import load, load_data, read_config

    _positive("-n", args.n)
    config, event_shape = read_config(args.run)
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    from ..evaluation.sampling import can_reconstruct

    if not can_reconstruct(model):
        raise VaelabError(f"--model {config.model.model} has no encoder to reconstruct with; draw from it with: vaelab sample {args.run}")
    if tuple(event_shape) == (2,):
        raise VaelabError(f"{args.run} models points in the plane, which reconstructions.png cannot show; use vaelab sample {args.run}")
    x = load_data(config, args.split, limit=args.n).fixed()
    path = reconstructions_figure(model, x, args.output or _unused_name(Path(args.run) / "reconstructions.png"))
    print(f"{len(x)} {args.split} examples and their reconstructions in {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ..report.compare import compare_runs, curves_figure, run_labels

    summary = compare_runs(args.runs)
    summary["plot"] = str(curves_figure(args.runs, args.output))
    if args.json:
        print(json.dumps(summary))
        return 0
    rows: list[tuple[str, list[str] | None]] = []  # (label, one cell per run); None: a heading
    rows.append(("configuration" + ("" if summary["config"] else ": identical"), None))
    for name, values in summary["config"].items():
        rows.append(("  " + ("data shape" if name == "event_shape" else "--" + name.replace("_", "-")),
                     [_cell(v) for v in values]))  # fmt: skip
    rows.append(("training", None))
    rows.append(("  epochs", [_cell(v) for v in summary["epochs"]]))
    rows.append(("  best validation bound", [_cell(v) for v in summary["best_valid_bound"]]))
    rows.append(("  at epoch", [_cell(v) for v in summary["best_epoch"]]))
    heading = None
    for row in summary["results"]:
        options = ", ".join(f"{k}={_option(v)}" for k, v in row["options"].items() if v not in (None, []))
        if (row["command"], options) != heading:
            heading = (row["command"], options)
            rows.append((f"{row['command']} ({options})" if options else row["command"], None))
        rows.append(("  " + row["metric"], [_cell(v, e) for v, e in zip(row["values"], row["stderr"])]))
    labels = run_labels(summary["runs"])
    first = max(len(label) for label, cells in rows if cells is not None)
    widths = [max(len(labels[i]), *(len(cells[i]) for _, cells in rows if cells is not None)) for i in range(len(labels))]
    print(" " * first + "".join(f"  {label:>{w}}" for label, w in zip(labels, widths)))
    for label, cells in rows:
        print(label if cells is None else f"{label:<{first}}" + "".join(f"  {c:>{w}}" for c, w in zip(cells, widths)))
    print(f"bounds and gaps in nats, +- standard error; -: not in that run (or not a number). Training curves: {summary['plot']}")
    return 0


def _option(value: Any) -> str:
    return ",".join(_option(v) for v in value) if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)


def _cell(value: Any, stderr: Any = None) -> str:
    """A value of the compare table as text."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.3f}" if abs(value) >= 0.01 or value == 0 else f"{value:.3g}"
        return text if stderr is None else f"{text} +- {stderr:.3f}"
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value)
    return str(value)


def cmd_quality(args: argparse.Namespace) -> int:
    from ..core.errors import DataError
    from ..evaluation.quality import QualityScorer, get_scorer, read_samples

    progress = not args.json
    if args.run is not None and args.data is not None:
        raise VaelabError("give RUN (to score its samples) or --data NAME --samples FILE.npy, not both")
    if args.run is None:
        if args.data is None:
            if args.samples is not None:
                raise VaelabError("--samples needs --data NAME, the dataset the samples are compared with")
            raise VaelabError("give a RUN directory, or --data NAME --samples FILE.npy")
        if args.samples is None:
            raise VaelabError("--data needs --samples FILE.npy, the samples to score (or give a RUN instead)")
        run_only = {"--n": args.n, "--sampler": args.sampler, "--components": args.components,
                    "--sample-pixels": args.sample_pixels, "--seed": args.seed}  # fmt: skip
        given = [flag for flag, value in run_only.items() if value is not None]
        if given:
            raise VaelabError(f"{given[0]} applies to a RUN's own samples; with --samples every row of the file is scored")
        scorer = get_scorer(args.data, data_dir=args.data_dir, device=args.device, progress=progress)
        samples = scorer.check(read_samples(args.samples))
        what = f"{len(samples)} samples from {args.samples}"
    else:
        from ..evaluation.sampling import sample_images
        from ..runs.rundir import load, load_data, read_config

        if args.samples is not None:
            raise VaelabError("--samples is scored with --data NAME; a RUN draws its own samples: drop --samples")
        sampler = args.sampler or "prior"
        components = 10 if args.components is None else args.components
        _positive("--components", components)
        config, event_shape = read_config(args.run)
        name = config.data.data
        if name.lower().endswith(".npy"):
            raise DataError(f"{args.run} was trained on {name}, a .npy file without labels; quality trains its feature "
                            "classifier on labelled images (digits, fashion-mnist, mnist, or a .npz with x_train, "
                            "y_train, x_test, y_test)")  # fmt: skip
        scorer = get_scorer(name, data_dir=args.data_dir or config.data.data_dir, device=args.device, progress=progress)
        if tuple(event_shape) != scorer.event_shape:
            raise DataError(f"{args.run} models data of shape {list(event_shape)}, but {name} now holds examples of "
                            f"shape {list(scorer.event_shape)}")  # fmt: skip
        n = scorer.DEFAULT_N if args.n is None else args.n
        scorer.check_n(n)
        model = load(args.run, trust_code=args.trust_code, device=args.device)
        own = hasattr(model, "sample_images")
        train_x = load_data(config, "train", limit=GMM_EXAMPLES).fixed() if sampler == "gmm" and not own else None
        stage2 = None
        if sampler.startswith("stage2:"):
            stage2 = _stage2_sampler(sampler, config, args.run, model, args.trust_code).stage2
            sampler, run2 = "stage2", sampler[len("stage2:"):]
        samples = sample_images(model, n, sampler=sampler, components=components, sample_pixels=bool(args.sample_pixels),
                                seed=args.seed or 0, train_x=train_x, stage2=stage2)  # fmt: skip
        pixels = "draws from p(x|z)" if args.sample_pixels else "means of p(x|z)"
        latent = ("codes from the learned prior" if own else "z ~ p(z)" if sampler == "prior"
                  else f"z from the stage-2 VAE {run2}" if sampler == "stage2"
                  else f"z from a GMM({components}) of encoder means")  # fmt: skip
        what = f"{n} samples of {args.run} ({pixels}, {latent})"
    result = scorer.score(samples)
    if args.json:
        print(json.dumps(result))
        return 0
    if not isinstance(scorer, QualityScorer):
        _print_mode_table(scorer, result, what)
        return 0
    c = scorer.classifier
    how = f"trained now in {c.seconds:.0f} s" if c.trained else "from the cache"
    print(f"{what} against the first {result['n_samples']} test images of {result['dataset']}")
    print(f"feature classifier: test accuracy {c.accuracy:.4f} ({how}: {c.path})")
    print(f"  {'':<18}{'samples':>10}{'reference':>12}")
    better = {"fd": "lower is better", "precision": "fidelity", "recall": "diversity", "density": "fidelity, ~1 for real data",
              "coverage": "diversity", "classifier_score": f"1 to {int(scorer.train.y.max()) + 1}, higher is better"}  # fmt: skip
    for key, note in better.items():
        print(f"  {key.replace('_', ' '):<18}{result[key]:>10.4f}{result['reference'][key]:>12.4f}   {note}")
    print(f"reference: {result['n_samples']} real training images in place of the samples, what a model drawing "
          "from the data distribution would score")  # fmt: skip
    return 0


def _print_mode_table(scorer: Any, result: dict[str, Any], what: str) -> None:
    """The mode metrics of `vaelab quality` on ring8, grid25 or stacked-fashion-mnist, as a table."""
    n, total = result["n_samples"], result["num_modes"]
    if "min_samples_per_mode" in result:
        print(f"{what} on {result['dataset']}: {total} Gaussians of standard deviation {scorer.sd:g}")
        notes = {"modes": f"of {total}: with at least {result['min_samples_per_mode']} samples within 3 sd of the centre",
                 "high_quality": "share of samples within 3 sd of a centre"}  # fmt: skip
    else:
        c = scorer.classifier  # None when a caller gave the scorer its own predict
        print(f"{what} on {result['dataset']}: each channel classified, {total} class triples")
        if c is not None:
            how = f"trained now in {c.seconds:.0f} s" if c.trained else "from the cache"
            print(f"feature classifier: fashion-mnist test accuracy {c.accuracy:.4f} ({how}: {c.path})")
        notes = {"modes": f"of {total} class triples hit", "mode_kl": "KL(mode histogram || uniform), nats, 0 is best"}
    print(f"  {'':<18}{'samples':>10}{'reference':>12}")
    for key, note in notes.items():
        cell = (lambda v: f"{v:>10d}") if isinstance(result[key], int) else (lambda v: f"{v:>10.4f}")
        print(f"  {key.replace('_', ' '):<18}{cell(result[key])}{cell(result['reference'][key]):>12}   {note}")
    print(f"reference: the first {n} examples of the training file in place of the samples, what a model drawing "
          "from the data distribution would score")  # fmt: skip


def _pictures_model(args: argparse.Namespace, what: str):
    """The model and test examples for `vaelab traverse` and `interpolate`; refuses, in one line,
    a model without a continuous latent code per example."""
    from ..report.figures import latent_codes_available
    from ..runs.rundir import load, read_config

    config, event_shape = read_config(args.run)
    if tuple(event_shape) == (2,):
        raise VaelabError(f"{args.run} models points in the plane, which {what} cannot draw as images; use vaelab sample {args.run}")
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    reason = latent_codes_available(model)
    if reason is not None:
        raise VaelabError(f"{what} needs an example's continuous latent code; {args.run} is a --model "
                          f"{config.model.model} run: {reason}")  # fmt: skip
    return config, model


def cmd_traverse(args: argparse.Namespace) -> int:
    from ..report.figures import RANKING_EXAMPLES, traversal_figure, traverse
    from ..runs.rundir import load_data

    if not (args.span > 0 and math.isfinite(args.span)):
        raise VaelabError(f"--range must be a positive number of prior standard deviations, got {args.span}")
    if args.steps < 2:
        raise VaelabError(f"--steps must be at least 2, got {args.steps}")
    config, model = _pictures_model(args, "vaelab traverse")
    limit = RANKING_EXAMPLES if config.data.limit is None else min(RANKING_EXAMPLES, config.data.limit)
    x = load_data(config, "test", limit=max(limit, args.example + 1)).fixed()
    if not 0 <= args.example < len(x):
        raise VaelabError(f"--example {args.example} is not a test example of {args.run}: there are {len(x)} (0 to {len(x) - 1})")
    if args.dims:
        bad = [d for d in args.dims if d >= model.latent_dim]
        if bad:
            raise VaelabError(f"--dims {bad[0]} is not a latent dimension of {args.run}: it has {model.latent_dim} (0 to {model.latent_dim - 1})")
    t = traverse(model, x, example=args.example, dims=args.dims, span=args.span, steps=args.steps)
    path = traversal_figure(t, args.output or Path(args.run) / "traversal.png")
    unit = " nats" if t.score_name == "KL" else ""
    order = "in the order given" if args.dims else f"ordered by {t.score_name}, largest first"
    print(f"{len(t.dims)} latent dimensions {order} ({t.score_name} per dimension, mean over {len(x)} test examples"
          f"{'' if t.score_name == 'KL' else ': the posterior or prior has no KL per dimension, activity is Cov_x E[z_d|x]'}):")  # fmt: skip
    print("  " + ", ".join(f"z{d} {s:.3f}{unit}" for d, s in zip(t.dims, t.scores)))
    print(f"each swept over [-{args.span:g}, +{args.span:g}] prior standard deviations around the prior mean, the "
          f"others at test example {args.example}'s posterior mean: {path}")  # fmt: skip
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from ..report.figures import interpolate, interpolation_figure
    from ..runs.rundir import load_data

    if args.steps < 2:
        raise VaelabError(f"--steps must be at least 2, got {args.steps}")
    for flag, i in (("--from", args.start), ("--to", args.end)):
        if i < 0:
            raise VaelabError(f"{flag} must be a test example index, counted from 0, got {i}")
    config, model = _pictures_model(args, "vaelab interpolate")
    x = load_data(config, "test", limit=max(args.start, args.end) + 1).fixed()
    for flag, i in (("--from", args.start), ("--to", args.end)):
        if i >= len(x):
            raise VaelabError(f"{flag} {i} is not a test example of {args.run}: there are {len(x)} (0 to {len(x) - 1})")
    result = interpolate(model, x, args.start, args.end, steps=args.steps)
    path = interpolation_figure(result, args.output or Path(args.run) / "interpolation.png", x)
    why = "great-circle arc: the prior is N(0, I)" if result.method == "spherical" else "straight line: the prior is not N(0, I)"
    print(f"{result.method} interpolation ({why}) in {args.steps} steps between the posterior means of test examples "
          f"{args.start} and {args.end}: {path}")  # fmt: skip
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ..report.html import write_report

    out = args.output
    if out is not None and not str(out).lower().endswith((".html", ".htm")):
        raise VaelabError(f"-o {out}: the report is an HTML page; give a file name ending in .html")
    report = write_report(args.run, out, trust_code=args.trust_code, device=args.device)
    for title, reason in report.omitted:
        print(f"  not shown: {title}: {reason}")
    print(f"report with {len(report.sections)} sections ({', '.join(report.sections)}): {report.path}")
    return 0


GMM_EXAMPLES = 10000  # training examples whose encoder means the --sampler gmm mixture is fitted to


def _stage2_sampler(sampler: str, config: cfg.RunConfig, run: str, model, trust_code: bool) -> Any:
    """The ``--sampler stage2:RUN2`` latent sampler: RUN2, a VAE trained on RUN's codes, checked to
    draw vectors of RUN's latent size."""
    from ..core.devices import module_device
    from ..evaluation.sampling import Stage2Sampler
    from ..runs.rundir import load, read_config

    run2 = sampler[len("stage2:"):]
    _needs_continuous_latent(config, run, "--sampler stage2")
    config2, shape2 = read_config(run2)
    _needs_continuous_latent(config2, run2, "--sampler stage2:RUN2")
    if tuple(shape2) != (model.latent_dim,):
        raise VaelabError(
            f"--sampler stage2:{run2}: {run2} models data of shape {list(shape2)}, but {run} has a latent of "
            f"{model.latent_dim} dimensions; train RUN2 on {run}'s codes (vaelab encode {run} -o codes.npz, then "
            f"vaelab train --data codes.npz --binarize none --likelihood gaussian-learned)"
        )
    return Stage2Sampler(load(run2, trust_code=trust_code, device=module_device(model)), model.latent_dim)


def _other_data(config: cfg.RunConfig, data: str | None, **changes: Any) -> cfg.RunConfig:
    """The run's configuration with its data replaced by ``data`` (a dataset name or file, read
    from the working directory), prepared as the run prepares its own (binarization,
    dequantization, data folder), with ``changes`` to the data options. Data given by name is
    taken whole: a label filter of the run's own data (``classes``, where the configuration has
    one) does not apply to it; without ``data``, the run's own data is used as the run used it."""
    if data is not None:
        from ..data.datasets import uses_data_dir

        defaults = {f.name: f.default for f in dataclasses.fields(cfg.DataConfig)}
        if "classes" in defaults:
            changes.setdefault("classes", defaults["classes"])
        if not uses_data_dir(data):  # the run's IDX folder means nothing for a file or digits
            changes.setdefault("data_dir", None)
    return dataclasses.replace(config, data=dataclasses.replace(config.data, data=data or config.data.data, **changes))


def _check_shape(split, event_shape, run: str, flag: str) -> None:
    from ..core.errors import DataError

    if tuple(split.event_shape) != tuple(event_shape):
        raise DataError(
            f"{flag} {split.name} holds examples of shape {list(split.event_shape)}, but {run} models data of "
            f"shape {list(event_shape)}; give data of the shape the run was trained on"
        )


def _load_scored(config: cfg.RunConfig, run: str, event_shape, data: str | None, split: str, limit: int | None, flag: str):
    """One split of ``data`` (default: the run's own) prepared as the run prepares its data, all of
    it unless ``limit``, checked against the run's data shape and likelihood."""
    from ..runs.rundir import check_compatible, load_data

    other = _other_data(config, data, limit=None)
    part = load_data(other, split, limit=limit)
    if len(part) == 0:
        raise VaelabError(f"the {split} split of {part.name} is empty")
    _check_shape(part, event_shape, run, flag)
    check_compatible(other, part)
    return part


def cmd_score(args: argparse.Namespace) -> int:
    from ..evaluation.scores import auroc, finite_mean, parse_bound, score
    from ..runs.rundir import load, read_config

    _positive("--limit", args.limit)
    _positive("--draws", args.draws)
    name, k = parse_bound(args.bound)
    if name == "is" and args.draws is not None:
        raise VaelabError("--draws averages draws of elbo or iwae:K; is:K gets its standard error from its K weights: drop --draws")
    draws = DEFAULT_DRAWS if args.draws is None else args.draws
    if args.output is not None and Path(args.output).suffix.lower() != ".csv":
        raise VaelabError(f"-o {args.output}: scores are written as CSV; name the file FILE.csv")
    config, event_shape = read_config(args.run)
    _needs_continuous_latent(config, args.run, "vaelab score")
    parts = {"data": _load_scored(config, args.run, event_shape, args.data, args.split, args.limit, "--data")}
    if args.auroc_against is not None:
        parts["against"] = _load_scored(config, args.run, event_shape, args.auroc_against, args.split, args.limit,
                                        "--auroc-against")  # fmt: skip
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    progress = not (args.quiet or args.json)
    scores = {key: score(model, part.fixed(), args.bound, draws=draws, seed=args.seed, progress=progress)
              for key, part in parts.items()}  # fmt: skip
    data = parts["data"]
    if args.output is not None:
        _write_scores_csv(args.output, data, args.bound, scores["data"])
    mean = finite_mean(scores["data"].score)
    spread = scores["data"].score.std().item() if len(data) > 1 else math.nan
    summary: dict[str, Any] = {"bound": args.bound, "data": data.name, "split": args.split, "n_examples": len(data),
                               "mean": mean, "stderr": spread / math.sqrt(len(data)), "output": args.output}  # fmt: skip
    if name != "is":
        summary["draws"] = draws
    if "against" in parts:
        against = parts["against"]
        summary.update(against=against.name, against_n_examples=len(against),
                       against_mean=finite_mean(scores["against"].score),
                       auroc=auroc(scores["against"].score, scores["data"].score))  # fmt: skip
    if args.json:
        print(json.dumps(summary))
        return 0
    what = {"is": f"log p(x) by importance sampling, K={k}", "iwae": f"IWAE bound L_{k}, {draws} draws per example",
            "elbo": f"ELBO, {draws} draws per example"}[name]  # fmt: skip
    print(f"{args.run}: {len(data)} {args.split} examples of {data.name} scored by {args.bound} ({what})")
    print(f"  mean score  {mean:.3f} +- {summary['stderr']:.3f} nats (+- standard error over examples)")
    if "against" in parts:
        print(f"  {summary['against']}: mean score {summary['against_mean']:.3f} nats over {summary['against_n_examples']} examples")
        print(f"  AUROC {summary['auroc']:.4f} of telling {summary['against']} (higher score) from {data.name}: 1 = every "
              f"{data.name} example scores below every {summary['against']} one, 0.5 = no separation, below 0.5 = "
              f"{data.name} scores higher")  # fmt: skip
    if args.output is not None:
        print(f"  per-example scores: {args.output}")
    return 0


def _write_scores_csv(path: str, data, bound: str, scores) -> None:
    """index,label,bound,score,stderr,khat per example; empty cells where there is no value."""
    from ..core.files import atomic_write_bytes


    def cell(value: float) -> str:
        return f"{value:.8g}" if math.isfinite(value) else ""

    labels = data.y.tolist() if data.y is not None else [None] * len(data)
    khat = scores.khat.tolist() if scores.khat is not None else [math.nan] * len(data)
    lines = ["index,label,bound,score,stderr,khat"]
    for i, (label, value, se, kh) in enumerate(zip(labels, scores.score.tolist(), scores.stderr.tolist(), khat)):
        lines.append(f"{i},{'' if label is None else label},{bound},{cell(value)},{cell(se)},{cell(kh)}")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def cmd_encode(args: argparse.Namespace) -> int:
    import io

    import numpy as np

    from ..core.files import atomic_write_bytes
    from ..evaluation.scores import encode_codes
    from ..runs.rundir import load, read_config

    _positive("--limit", args.limit)
    if args.samples < 0:
        raise VaelabError(f"--samples must be at least 0, got {args.samples}")
    if Path(args.output).suffix.lower() != ".npz":
        raise VaelabError(f"-o {args.output}: codes are written as a .npz file; name it FILE.npz")
    config, event_shape = read_config(args.run)
    _needs_continuous_latent(config, args.run, "vaelab encode")
    # the whole training file (no validation carve), so that row i of x_train is row i of the file
    # and a second VAE trained on the codes carves its own validation split
    train = _load_scored(_other_data(config, args.data, valid_fraction=0.0), args.run, event_shape, None, "train",
                         args.limit, "--data")  # fmt: skip
    test = _load_scored(config, args.run, event_shape, args.data, "test", args.limit, "--data")
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    arrays: dict[str, Any] = {}
    for name, part in (("train", train), ("test", test)):
        codes = encode_codes(model, part.fixed(), samples=args.samples, seed=args.seed)
        mean = codes.mean.numpy().astype(np.float32)
        arrays[f"x_{name}"] = mean
        arrays[f"mean_{name}"] = mean
        arrays[f"scale_{name}"] = codes.scale.numpy().astype(np.float32)
        if codes.samples is not None:
            arrays[f"samples_{name}"] = codes.samples.numpy().astype(np.float32)
        if part.y is not None:
            arrays[f"y_{name}"] = part.y.numpy()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(args.output, buffer.getvalue())
    print(f"{args.run}: codes of {len(train)} training and {len(test)} test examples of {train.name}, "
          f"{mean.shape[1]} dimensions, in {args.output} ({', '.join(sorted(arrays))})")  # fmt: skip
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..core.errors import DataError
    from ..core.files import atomic_write_bytes
    from ..evaluation.scores import decode_means
    from ..runs.rundir import load, read_config

    suffix = Path(args.output).suffix.lower()
    if suffix not in (".png", ".npy"):
        raise VaelabError(f"-o {args.output}: write the decoded means as an image grid (.png) or an array (.npy)")
    config, _ = read_config(args.run)
    _needs_continuous_latent(config, args.run, "vaelab decode")
    codes = _read_codes(args.codes, args.key)
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    if codes.ndim < 2 or codes.shape[-1] != model.latent_dim or codes.size == 0:
        raise DataError(
            f"{args.codes}: codes of shape {list(codes.shape)} do not fit {args.run}'s latent of {model.latent_dim} "
            f"dimensions; pass an N x {model.latent_dim} array (vaelab encode {args.run} writes them)"
        )
    z = torch.from_numpy(np.ascontiguousarray(codes.reshape(-1, codes.shape[-1]), dtype=np.float32))
    means = decode_means(model, z)
    if suffix == ".npy":
        import io

        buffer = io.BytesIO()
        np.save(buffer, means.numpy())
        atomic_write_bytes(args.output, buffer.getvalue())
    else:
        from ..report.figures import codes_figure

        codes_figure(means, args.output, f"{len(z)} codes decoded: mean of p(x|z)")
    print(args.output)
    return 0


def _read_codes(path: str, key: str | None):
    """The array of codes in a .npy file, or the ``key`` array of a .npz (default x_test, or its only array)."""
    import zipfile

    import numpy as np

    from ..core.errors import DataError

    if not Path(path).is_file():
        raise DataError(f"{path}: no such file; pass a .npy array of codes or a .npz from vaelab encode")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                names = list(loaded.files)
                chosen = key or ("x_test" if "x_test" in names else names[0] if len(names) == 1 else None)
                if chosen not in names:
                    raise DataError(f"{path} holds {', '.join(names)}; choose the codes with --key NAME")
                codes = loaded[chosen]
        else:
            if key is not None:
                raise DataError(f"--key picks an array of a .npz file; {path} is a single array: drop --key")
            codes = loaded
    except DataError:
        raise  # our own message (a DataError is a ValueError too)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: cannot read it as a .npy/.npz array ({err})".replace("\n", " ")) from None
    if not (np.issubdtype(codes.dtype, np.floating) or np.issubdtype(codes.dtype, np.integer)):
        raise DataError(f"{path}: codes have dtype {codes.dtype}; save them as floats")
    if not np.isfinite(codes).all():
        raise DataError(f"{path}: codes hold nan or infinite values")
    return codes

def cmd_prior(args: argparse.Namespace) -> int:
    from ..report.figures import write_run_figures
    from ..runs.codeprior import PriorConfig, fit_code_prior

    config = PriorConfig(layers=args.layers, channels=args.channels, epochs=args.epochs, batch_size=args.batch_size,
                         lr=args.lr, patience=args.patience, seed=args.seed, time_limit=args.time_limit)  # fmt: skip
    result = fit_code_prior(args.run, config, progress=not (args.quiet or args.silent),
                            callbacks=_epoch_printer(args, config.epochs), trust_code=args.trust_code,
                            device=args.device)  # fmt: skip
    write_run_figures(args.run, trust_code=args.trust_code, device=args.device)  # samples.png, now that there is a prior to draw from
    best = f", best validation log p(z) {result.best_bound:.2f} nats at epoch {result.best_epoch}" if not math.isnan(result.best_bound) else ""
    if not args.silent:
        print(f"trained the code prior for {result.epochs} epochs ({result.stop_reason}){best}; in {Path(args.run) / 'prior'}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "prior": cmd_prior,
    "evaluate": cmd_evaluate,
    "diagnose": cmd_diagnose,
    "gaps": cmd_gaps,
    "sample": cmd_sample,
    "quality": cmd_quality,
    "reconstruct": cmd_reconstruct,
    "compare": cmd_compare,
    "traverse": cmd_traverse,
    "interpolate": cmd_interpolate,
    "report": cmd_report,
    "score": cmd_score,
    "encode": cmd_encode,
    "decode": cmd_decode,
}


# the commands with --device: every one that computes with a model, but train, whose device is its own
DEVICE_COMMANDS = ("evaluate", "diagnose", "gaps", "sample", "prior", "reconstruct", "score", "encode", "decode",
                   "quality", "traverse", "interpolate", "report")  # fmt: skip


def _flush_denormals() -> None:
    """Flushes denormal floats to zero before PyTorch starts its worker threads, which inherit the
    setting only when they are created (the Trainer's own flush reaches the main thread alone).
    IWAE with K=50 on Fashion-MNIST, first 25 steps from initialization, 2 threads: 130 ms/step
    without flushing, 65 with the Trainer's flush, 48 with this one."""
    import torch

    torch.set_flush_denormal(True)


def _show_warnings() -> logging.Handler:
    """Library warnings (the "vaelab" logger, e.g. posterior collapse) as one line on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("vaelab: warning: %(message)s"))
    logger = logging.getLogger("vaelab")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    return handler


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line; an unknown option is one line that names the closest known one."""
    args, extra = parser.parse_known_args(argv)
    commands = vars(args).pop("_commands")
    if not extra:
        return args
    sub = commands[args.command]
    unknown = extra[0]
    if not unknown.startswith("-") or unknown == "-":
        sub.error(f"unexpected argument {unknown!r}")
    name = unknown.split("=", 1)[0]
    known = [o for action in sub._actions for o in action.option_strings if o.startswith("--")]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else f" (see {sub.prog} --help)"
    sub.exit(EXIT_USAGE, f"{sub.prog}: error: unknown option {name}{hint}\n")


def _quiet_broken_pipe() -> int:
    """The reader of our output went away (`vaelab gaps ... | head`): the shell's convention is
    to end quietly with 128 + SIGPIPE. Output still buffered for the closed pipe is dropped, so
    the interpreter's final flush cannot fail with a traceback either."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is no file (e.g. redirected in-process)
        pass
    return EXIT_BROKEN_PIPE


# a Python argument in a library message: name=, then maybe a quoted value or True
_PYTHON_ARGUMENT = re.compile(r"(?<![\w.-])([a-z][a-z0-9_]*)=(?:'([^'\s]*)'|(True)\b)?")


def _options_of(parser: argparse.ArgumentParser, command: str) -> set[str]:
    """The Python names (``latent_dim``) of the long options (``--latent-dim``) of ``command``."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {
        option[2:].replace("-", "_")
        for action in sub.choices[command]._actions
        for option in action.option_strings
        if option.startswith("--")
    }


def _as_flags(message: str, options: set[str]) -> str:
    """Library messages name Python arguments; the command line speaks in flags. Turns
    ``latent_dim=8`` into ``--latent-dim 8``, ``latent_dim= must`` into ``--latent-dim must``,
    ``net='mlp'`` into ``--net mlp`` and ``trust_code=True`` into ``--trust-code``, for the names
    in ``options`` only, so that any other ``=`` in a message (``nets={...}``) is left as it is."""

    def flag(match: re.Match) -> str:
        name, quoted, true = match.groups()
        if name not in options:
            return match.group(0)
        text = "--" + name.replace("_", "-")
        if true:
            return text
        if quoted is not None:
            return f"{text} {quoted}"
        following = message[match.end() : match.end() + 1]
        return text if following in ("", " ", "?", ")", ",", ";", ":", ".") else text + " "

    return _PYTHON_ARGUMENT.sub(flag, message)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            code = _main(argv)
        except SystemExit:  # argparse's --help, --version and usage errors
            sys.stdout.flush()  # here, where a closed pipe is caught, not at the interpreter's exit
            raise
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _main(argv: Sequence[str] | None) -> int:
    parser = _build_parser()
    args = _parse(parser, argv)
    handler = _show_warnings()
    _flush_denormals()
    try:
        if args.command in DEVICE_COMMANDS:
            _check_device(args)
        if hasattr(args, "trust_code"):
            _check_trust(args)
        return COMMANDS[args.command](args)
    except VaelabError as err:
        # the command's own options, and the configuration's, which are flags of vaelab train
        options = _options_of(parser, args.command) | set(cfg.field_names())
        print(f"vaelab: error: {_as_flags(str(err), options)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        hint = ""
        if args.command == "train":
            hint = f"; continue with: vaelab train --resume {args.resume or args.out or 'RUN'}"
        print(f"vaelab: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        logging.getLogger("vaelab").removeHandler(handler)
        import torch

        torch.set_flush_denormal(False)  # PyTorch's default, for callers of main() in-process


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
