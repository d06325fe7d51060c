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

    python benchmarks/bench_gaps.py --epochs 200 --warmup 50 --out benchmarks/runs/gaps \
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
from vaelab.core.files import read_metrics
from vaelab.evaluation.evaluate import log_likelihood, summarize
from vaelab.evaluation.gaps import gaps
from vaelab.runs import config as cfg
from vaelab.runs.lifecycle import complete_run
from vaelab.runs.rundir import load, load_data

CREMER_FASHION_FFG = {"log_likelihood": -97.47, "local_elbo": -100.53, "amortized_elbo": -104.75}


def train(name: str, model_options: dict, args: argparse.Namespace) -> Path:
    run = Path(args.out) / name
    config = cfg.build({
        "data": {"data": args.data, "binarize": "threshold", "limit": args.limit},
        "model": {"hidden": (200, 200), "activation": "elu", "latent_dim": 50, **model_options},
        "train": {"epochs": args.epochs, "kl_warmup": args.warmup, "patience": 0, "seed": args.seed},
    })  # fmt: skip
    complete_run(config, run, progress=not args.quiet)  # reuses a finished run, resumes an interrupted one
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
        train = load_data(config, "train", limit=args.gaps_limit).fixed()
        for name, x in (("gaps", test[: args.gaps_limit]), ("gaps_train", train)):
            torch.manual_seed(args.seed)
            start = time.perf_counter()
            out[name] = gaps(model, x, k=args.k, steps=args.steps, lr=args.lr, samples=10, progress=not args.quiet)
            out[name + "_seconds"] = time.perf_counter() - start
    return out


def table(results: dict, flow: str) -> str:
    n = results["gaussian"]["gaps"]["n_examples"]
    columns = [results[m][g] for g in ("gaps", "gaps_train") for m in ("gaussian", "flow")]
    cremer = {"log_likelihood": "-97.47", "gaussian_local": "-100.53", "amortized_elbo": "-104.75",
              "approximation_gap": "3.06", "amortization_gap": "4.22"}  # fmt: skip
    lines = [
        f"| nats, mean over the first {n} images | diagonal Gaussian, test | {flow}, test "
        f"| diagonal Gaussian, train | {flow}, train | Cremer et al., diagonal Gaussian |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    rows = [("log p(x)", "log_likelihood"), ("L[q\\*], flow", "flow_local"),
            ("L[q\\*], diagonal Gaussian", "gaussian_local"), ("L[q], amortized", "amortized_elbo"),
            ("approximation gap", "approximation_gap"), ("amortization gap", "amortization_gap")]  # fmt: skip
    for label, key in rows:
        cells = []
        for i, col in enumerate(columns):
            is_flow = i % 2 == 1
            if key == "flow_local":
                value = col["local_elbo"] if is_flow else None
            elif key == "gaussian_local":
                value = col["local_elbo_gaussian"] if is_flow else col["local_elbo"]
            else:
                value = col[key]
            cells.append("" if value is None else f"{value:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {cremer.get(key, '')} |")
    lines += [
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
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=50, help="KL warm-up epochs")
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
    names = {"gaussian": "gaussian", "flow": args.flow.replace(":", "-"), "vamp": args.vamp.replace(":", "-")}
    for key, options in models.items():
        run = train(names[key], options, args)
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
