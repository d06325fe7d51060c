"""Inference gaps and flexible posteriors and priors (issue 4), Cremer et al. (2018)'s protocol
on a budget.

Fashion-MNIST with threshold binarization, Cremer et al.'s architecture (784-200-200-50, ELU,
Bernoulli logits), batch 100, Adam 1e-3, KL warm-up, the same seed and the same number of
epochs for three models that differ only in q(z|x) or p(z):

- a diagonal Gaussian posterior with the N(0, I) prior (Cremer's "FFG");
- a flow posterior (``--flow``, default planar:8) with the N(0, I) prior;
- a diagonal Gaussian posterior with the VampPrior (``--vamp``, default vamp:500).

Each is scored by importance-sampled log p(x) (K=5000) on the first ``--eval-limit`` test images;
the two N(0, I)-prior models also get the gaps table (``vaelab gaps``: log p, L[q*], L[q]) on the
first ``--gaps-limit`` test images. The model kept is the best by its validation bound.

    python benchmarks/bench_gaps.py --epochs 150 --out benchmarks/runs/gaps \
        --json benchmarks/results/gaps.json

Runs are ordinary vaelab run directories: finished runs are reused, interrupted ones resumed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import vaelab
from vaelab import config as cfg
from vaelab.evaluate import log_likelihood, summarize
from vaelab.files import CHECKPOINT_DIR, CHECKPOINT_FILE, read_metrics
from vaelab.local import gaps
from vaelab.runs import load, load_data
from vaelab.train import resume_run, start_run

CREMER_FASHION_FFG = {"log_likelihood": -97.47, "local_elbo": -100.53, "amortized_elbo": -104.75}


def train(name: str, model_options: dict, args: argparse.Namespace) -> Path:
    run = Path(args.out) / name
    config = cfg.build({
        "data": {"data": args.data, "binarize": "threshold", "limit": args.limit},
        "model": {"hidden": (200, 200), "activation": "elu", "latent_dim": 50, **model_options},
        "train": {"epochs": args.epochs, "kl_warmup": args.warmup, "patience": 0, "seed": args.seed},
    })  # fmt: skip
    if (run / CHECKPOINT_DIR / CHECKPOINT_FILE).exists():
        try:
            resume_run(run, progress=not args.quiet)
        except vaelab.VaelabError as err:
            if "already finished" not in str(err):
                raise
    else:
        start_run(config, run, progress=not args.quiet)
    return run


def score(run: Path, args: argparse.Namespace, with_gaps: bool) -> dict:
    config, _ = vaelab.runs.read_config(run)
    model = load(run)
    test = load_data(config, "test", limit=args.eval_limit).fixed()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    summary = summarize(log_likelihood(model, test, args.k, progress=not args.quiet), args.k)
    metrics = read_metrics(run)
    out = {
        "config": {"posterior": config.model.posterior, "prior": config.model.prior},
        "test_log_likelihood": summary["log_likelihood"],
        "test_log_likelihood_stderr": summary["log_likelihood_stderr"],
        "test_elbo": summary["elbo"],
        "active_units": summary["active_units"],
        "best_epoch": max(metrics, key=lambda r: r["valid_bound"])["epoch"],
        "epochs": len(metrics),
        "seconds_per_epoch": statistics.median(r["train_seconds"] for r in metrics),
        "eval_seconds": time.perf_counter() - start,
        "k": args.k,
    }
    if with_gaps:
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        x = test[: args.gaps_limit]
        out["gaps"] = gaps(model, x, k=args.k, steps=args.steps, lr=args.lr, samples=10, progress=not args.quiet)
        out["gaps_seconds"] = time.perf_counter() - start
    return out


def table(results: dict, flow: str) -> str:
    ffg, fl = results["gaussian"]["gaps"], results["flow"]["gaps"]
    lines = [
        f"| nats (first {ffg['n_examples']} test images) | q: diagonal Gaussian | q: {flow} | Cremer et al., FFG |",
        "|---|---:|---:|---:|",
        f"| log p(x) | {ffg['log_likelihood']:.2f} | {fl['log_likelihood']:.2f} | -97.47 |",
        f"| L[q\\*] flow | | {fl['local_elbo']:.2f} | |",
        f"| L[q\\*] diagonal Gaussian | {ffg['local_elbo']:.2f} | {fl['local_elbo_gaussian']:.2f} | -100.53 |",
        f"| L[q] amortized | {ffg['amortized_elbo']:.2f} | {fl['amortized_elbo']:.2f} | -104.75 |",
        f"| approximation gap | {ffg['approximation_gap']:.2f} | {fl['approximation_gap']:.2f} | 2.77 |",
        f"| amortization gap | {ffg['amortization_gap']:.2f} | {fl['amortization_gap']:.2f} | 4.22 |",
        "",
        f"| model | test log p(x), K={results['gaussian']['k']} | test ELBO | active units | best epoch | s/epoch |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in (("gaussian", "diagonal Gaussian, N(0, I)"), ("flow", f"{flow}, N(0, I)"),
                       ("vamp", f"diagonal Gaussian, {results['vamp']['config']['prior']}")):  # fmt: skip
        r = results[key]
        lines.append(
            f"| {label} | {r['test_log_likelihood']:.2f} ± {r['test_log_likelihood_stderr']:.2f} | "
            f"{r['test_elbo']:.2f} | {r['active_units']} | {r['best_epoch']} | {r['seconds_per_epoch']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--limit", type=int, default=None, help="first N examples of each split (smoke runs)")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--warmup", type=int, default=30, help="KL warm-up epochs")
    parser.add_argument("--flow", default="planar:8")
    parser.add_argument("--vamp", default="vamp:500")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--eval-limit", type=int, default=1000)
    parser.add_argument("--gaps-limit", type=int, default=100)
    parser.add_argument("--steps", type=int, default=2000, help="local VI steps per example for L[q*]")
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/runs/gaps")
    parser.add_argument("--json", default=None)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    models = {"gaussian": {}, "flow": {"posterior": args.flow}, "vamp": {"prior": args.vamp}}
    results = {}
    for key, options in models.items():
        run = train(key, options, args)
        results[key] = score(run, args, with_gaps=key != "vamp")
        print(json.dumps({key: results[key]}), flush=True)
    text = table(results, args.flow)
    print(text)
    if args.json:
        doc = {
            "protocol": {k: v for k, v in vars(args).items() if k not in ("json", "quiet", "out")},
            "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": 2},
            "cremer_fashion_ffg": CREMER_FASHION_FFG,
            "results": results,
            "table": text,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
