"""`vaelab gaps`: the approximation and amortization gaps (Cremer et al. 2018)."""

from __future__ import annotations

import argparse
import json

from ..core.errors import VaelabError
from .common import (
    add_ais_flags,
    add_device_flag,
    add_trust_flag,
    ais_header,
    ais_keys,
    needs_continuous_latent,
    positive,
    read_ais_options,
    store_result,
)


def add_gaps_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab gaps` and its flags."""
    p = subparsers.add_parser("gaps", help="approximation and amortization gaps (Cremer et al. 2018)",
                              description="On N test examples: log p(x) by importance sampling, L[q*] (the best ELBO "
                              "within the encoder's posterior family, optimized per example from the encoder's "
                              "output; for other families also the best diagonal Gaussian's) and L[q] "
                              "(the encoder's own ELBO); approximation gap log p(x) - L[q*], amortization gap "
                              "L[q*] - L[q]. Means in nats. The result (the --json object) is kept in RUN/gaps.json for vaelab compare.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    add_trust_flag(p)
    add_device_flag(p)
    p.add_argument("--limit", type=int, default=100, help="first N test examples (default: 100)")
    p.add_argument("--k", type=int, default=5000, help="importance samples for log p(x) (default: 5000)")
    p.add_argument("--steps", type=int, default=2000, help="Adam steps of the per-example optimization (default: 2000)")
    p.add_argument("--lr", type=float, default=0.01, help="its initial learning rate, decayed linearly to 0 (default: 0.01)")
    p.add_argument("--samples", type=int, default=10, help="particles per optimization step (default: 10)")
    p.add_argument("--method", default="is", choices=("is", "ais"),
                   help="estimator of log p(x): is (importance sampling, K=--k) or ais (annealed importance "
                   "sampling with HMC, as Cremer et al. 2018) (default: is)")  # fmt: skip
    add_ais_flags(p, "--ais-steps")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which split (default: test)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def cmd_gaps(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation.gaps import gaps
    from ..runs.rundir import load, load_data, read_config

    for name in ("limit", "k", "steps", "samples"):
        positive(f"--{name}", getattr(args, name))
    if not args.lr > 0:
        raise VaelabError(f"--lr must be positive, got {args.lr}")
    ais_options = read_ais_options(args, "--ais-steps")
    config, _ = read_config(args.run)
    needs_continuous_latent(config, args.run, "vaelab gaps")
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
        gaps_options.update({f"ais_{k}" if k == "steps" else k: v for k, v in ais_keys(ais_options).items()})
    store_result(args.run, "gaps", gaps_options, out)
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
        how = (f"AIS ({ais_header(ais_options)}, acceptance rate {out['acceptance_rate']:.2f}; importance "
               f"sampling gives {out['log_likelihood_is']:.2f})")  # fmt: skip
    print(f"log p(x): {how}; L[q*]: {args.steps} Adam steps per example from the "
          f"encoder's q (the diagonal Gaussian row, when shown: from the encoder's moments)")  # fmt: skip
    return 0
