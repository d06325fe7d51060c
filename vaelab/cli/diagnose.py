"""`vaelab diagnose`: gradient signal-to-noise ratio and effective sample size against K."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..core.errors import VaelabError
from ..inference.estimators import GRAD_ESTIMATORS
from .common import add_device_flag, add_trust_flag, int_list, needs_continuous_latent, positive, store_result


def add_diagnose_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab diagnose` and its flags."""
    p = subparsers.add_parser("diagnose", help="gradient signal-to-noise ratio and effective sample size against K",
                              description="Gradient SNR |E[g]| / std[g] of the encoder and decoder parameters "
                              "(mean over parameters) over repeated gradient draws on one fixed minibatch, and "
                              "the normalized effective sample size of the importance weights, for each K; "
                              "prints a table and writes a plot (Rainforth et al. 2018). The result (the --json object) is kept in "
                              "RUN/diagnose.json for vaelab compare.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    add_trust_flag(p)
    add_device_flag(p)
    p.add_argument("--k-list", metavar="K,K,...", type=int_list("--k-list"), default=(1, 5, 50, 500),
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


def _describe_measured(measured: dict[str, Any]) -> str:
    """e.g. ``iwae (dreg, m=1)``: an objective and the options its gradient is measured with."""
    rest = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in measured.items() if k not in ("objective", "grad_estimator")]
    return f"{measured['objective']} ({', '.join([measured['grad_estimator'], *rest])})"


def cmd_diagnose(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.diagnostics import parameter_groups, snr_sweep
    from ..inference.objectives import OBJECTIVES, objective_options
    from ..report.figures import snr_figure
    from ..runs.rundir import load, load_data, read_config

    positive("--batch", args.batch)
    positive("--m", args.m)
    if args.reps < 2:
        raise VaelabError(f"--reps must be at least 2 to estimate a standard deviation, got {args.reps}")
    if args.objective is not None:
        OBJECTIVES[args.objective]  # unknown names list the valid ones
    config, _ = read_config(args.run)
    needs_continuous_latent(config, args.run, "vaelab diagnose")
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
    store_result(args.run, "diagnose", {"objective": result["objective"], "grad_estimator": result["grad_estimator"], **options,
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
