"""Importance-weighted bounds side by side: VAE, IWAE, MIWAE, CIWAE, PIWAE and IWAE-DReG.

Protocol (issue 3): Fashion-MNIST with threshold binarization (x > 0.5), Burda et al.'s
one-stochastic-layer MLP (784-200-200-50, tanh, Bernoulli logits), batch 100, Adam 1e-3, the
same seed and the same fixed budget of epochs for every objective (no early stopping; the
model kept is the best by each run's own validation bound, 10% of the training file).
Every model is then scored the same way: importance-sampled log p(x) at K=5000 (mean and
Monte-Carlo standard error) on the first ``--eval-limit`` test images, with the ELBO, the bounds
L_1, L_5, L_50 from the same particles, and active units. Finally the gradient SNR of the
encoder and decoder against K, with plain IWAE gradients and with DReG, on the trained IWAE(50)
model (``vaelab diagnose``'s measurement).

    python benchmarks/bench_bounds.py --epochs 15 --out benchmarks/runs/bounds \
        --json benchmarks/results/bounds.json --plot benchmarks/results/snr_vs_k.png

Runs are ordinary vaelab run directories; a run that finished is reused and an interrupted one
resumed, so the script can be restarted. Needs the Fashion-MNIST files (apt-get install
dataset-fashion-mnist, or any location ``vaelab.load_split`` searches).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import vaelab
from vaelab.core.files import read_metrics
from vaelab.evaluation.diagnostics import snr_sweep
from vaelab.evaluation.evaluate import log_likelihood, summarize
from vaelab.report.figures import snr_figure
from vaelab.runs import config as cfg
from vaelab.runs.lifecycle import complete_run
from vaelab.runs.rundir import load, load_data

MODELS = {  # label -> [train] options (Rainforth et al. 2018's settings)
    "VAE": {"objective": "elbo"},
    "IWAE (k=5)": {"objective": "iwae", "k": 5},
    "IWAE (k=50)": {"objective": "iwae", "k": 50},
    "MIWAE (8, 8)": {"objective": "miwae", "m": 8, "k": 8},
    "CIWAE (0.5, 64)": {"objective": "ciwae", "beta": 0.5, "k": 64},
    "PIWAE (8, 8)": {"objective": "piwae", "m": 8, "k": 8},
    "IWAE-DReG (k=50)": {"objective": "iwae", "k": 50, "grad_estimator": "dreg"},
}


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-").replace("--", "-")


def train(label: str, options: dict, args: argparse.Namespace) -> Path:
    run = Path(args.out) / slug(label)
    config = cfg.build({
        "data": {"data": args.data, "binarize": "threshold", "limit": args.limit},
        "model": {},  # the defaults are Burda et al.'s MLP
        "train": {**options, "epochs": args.epochs, "patience": 0, "seed": args.seed},
    })  # fmt: skip
    complete_run(config, run, progress=not args.quiet)  # reuses a finished run, resumes an interrupted one
    return run


def score(label: str, run: Path, args: argparse.Namespace) -> dict:
    config, _ = vaelab.runs.read_config(run)
    model = load(run)
    x = load_data(config, "test", limit=args.eval_limit).fixed()
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    result = summarize(log_likelihood(model, x, args.eval_k, bounds=(1, 5, 50)), args.eval_k)
    result["eval_seconds"] = time.perf_counter() - start
    rows = read_metrics(run)
    result["epochs"] = len(rows)
    result["train_seconds"] = sum(r["train_seconds"] for r in rows)
    # the median is robust to an epoch slowed by other work on a shared machine
    result["seconds_per_epoch"] = statistics.median(r["train_seconds"] for r in rows) if rows else math.nan
    result["best_epoch"] = rows[-1]["best_epoch"] if rows else 0
    result["valid_bound"] = max(r["valid_bound"] for r in rows) if rows else math.nan
    result["options"] = MODELS[label]
    return result


def markdown(results: dict, k: int) -> str:
    lines = [
        f"| model | test log p(x), K={k} | ELBO | L_5 | L_50 | active units | train s/epoch (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r in results.items():
        b = r["bounds"]
        lines.append(
            f"| {label} | {r['log_likelihood']:.2f} ± {r['log_likelihood_stderr']:.2f} | {r['elbo']:.2f} "
            f"| {b['5']:.2f} | {b['50']:.2f} | {r['active_units']} | {r['seconds_per_epoch']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--limit", type=int, help="first N examples of each split (smoke tests)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-k", type=int, default=5000)
    parser.add_argument("--eval-limit", type=int, default=1000)
    parser.add_argument("--snr-k", default="1,5,50,500")
    parser.add_argument("--snr-reps", type=int, default=100)
    parser.add_argument("--snr-batch", type=int, default=100)
    parser.add_argument("--models", help="semicolon-separated subset of: " + "; ".join(MODELS))
    parser.add_argument("--out", default="benchmarks/runs/bounds")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plot", help="write the SNR-vs-K plot here")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    labels = [m.strip() for m in args.models.split(";")] if args.models else list(MODELS)
    results = {}
    for label in labels:
        print(f"== {label}: training {args.epochs} epochs", file=sys.stderr, flush=True)
        run = train(label, MODELS[label], args)
        results[label] = score(label, run, args)
        r = results[label]
        print(f"   log p(x) {r['log_likelihood']:.3f} ± {r['log_likelihood_stderr']:.3f}, ELBO {r['elbo']:.3f}, "
              f"{r['active_units']} active, {r['seconds_per_epoch']:.1f} s/epoch", file=sys.stderr, flush=True)  # fmt: skip
    snr = {}
    if "IWAE (k=50)" in results:
        run = Path(args.out) / slug("IWAE (k=50)")
        config, _ = vaelab.runs.read_config(run)
        model = load(run)
        x = load_data(config, "train", limit=args.snr_batch).fixed()[: args.snr_batch]
        k_list = [int(k) for k in args.snr_k.split(",")]
        for name, estimator in (("IWAE", "reparam"), ("IWAE-DReG", "dreg")):
            print(f"== gradient SNR of {name} on the trained IWAE (k=50) model", file=sys.stderr, flush=True)
            torch.manual_seed(args.seed)
            start = time.perf_counter()
            snr[name] = snr_sweep(model, x, k_list, objective="iwae", options={"grad_estimator": estimator},
                                  reps=args.snr_reps, progress=not args.quiet)  # fmt: skip
            snr[name]["seconds"] = time.perf_counter() - start
        if args.plot:
            snr_figure(snr, args.plot, title="gradient SNR on the trained IWAE (k=50) model")
    table = markdown(results, args.eval_k)
    print(table)
    for name, r in snr.items():
        print(f"\n{name}: K {r['k']}\n  encoder SNR {[round(v, 4) for v in r['encoder_snr']]}\n"
              f"  decoder SNR {[round(v, 4) for v in r['decoder_snr']]}\n  ESS {[round(v, 4) for v in r['ess']]}")  # fmt: skip
    if args.json:
        doc = {
            "command": " ".join(sys.argv),
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
            "protocol": {"data": args.data, "binarize": "threshold", "epochs": args.epochs, "seed": args.seed,
                         "eval_k": args.eval_k, "eval_limit": args.eval_limit, "limit": args.limit},  # fmt: skip
            "results": results,
            "snr": snr,
            "table": table,
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
