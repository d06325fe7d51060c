"""Importance sampling against annealed importance sampling on Fashion-MNIST, for one and two
stochastic layers trained as a VAE and as IWAE(k=50) (Burda et al. 2015's table, on a budget).

Fashion-MNIST with threshold binarization, Burda et al.'s MLPs (784-200-200-50 and
784-200-200-100-100-50, tanh, Bernoulli), batch 100, Adam 1e-3, seed 0, each model trained for
``--budget`` wall-clock seconds (``--time-limit``). Each is then scored on the first
``--limit`` test images by importance sampling (K = 5000, with the Pareto k-hat of the weights)
and by AIS from the prior (``--steps`` HMC steps, ``--chains`` chains), with the seconds each
estimate took.

    python benchmarks/bench_ais.py --budget 300 --limit 100 --out benchmarks/runs/ais \\
        --json benchmarks/results/ais.json

Runs are ordinary vaelab run directories: finished runs are reused, interrupted ones resumed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
import time
from pathlib import Path

import torch

from vaelab.cli.main import main as cli
from vaelab.core.files import read_metrics
from vaelab.runs import config as cfg
from vaelab.runs.lifecycle import complete_run

MODELS = {
    "VAE, 1 layer": ({"layers": 1}, {}),
    "VAE, 2 layers": ({"layers": 2}, {}),
    "IWAE(50), 1 layer": ({"layers": 1}, {"objective": "iwae", "k": 50}),
    "IWAE(50), 2 layers": ({"layers": 2}, {"objective": "iwae", "k": 50}),
}


def _json_cli(*args: str) -> tuple[dict, float]:
    out = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli([*args, "--json"])
    if code != 0:
        raise SystemExit(f"vaelab {' '.join(args)} failed with status {code}")
    return json.loads(out.getvalue()), time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--budget", type=float, default=300.0, help="training seconds per model (default: 300)")
    parser.add_argument("--limit", type=int, default=100, help="test images scored (default: 100)")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--chains", type=int, default=16)
    parser.add_argument("--out", default="benchmarks/runs/ais")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for label, (model, train) in MODELS.items():
        config = cfg.build({"data": {"data": args.data, "binarize": "threshold"},
                            "model": {"hidden": [200, 200], "activation": "tanh", "latent_dim": 50, **model},
                            "train": {**train, "epochs": 10000, "patience": 0, "time_limit": args.budget}})  # fmt: skip
        run = Path(args.out) / label.lower().replace(" ", "").replace(",", "-").replace("(", "").replace(")", "")
        print(f"{label} -> {run}", file=sys.stderr)
        complete_run(config, run, progress=not args.quiet)
        limit = str(args.limit)
        is_, is_seconds = _json_cli("evaluate", str(run), "--k", str(args.k), "--limit", limit, "--quiet")
        ais, ais_seconds = _json_cli("evaluate", str(run), "--method", "ais", "--steps", str(args.steps),
                                     "--chains", str(args.chains), "--limit", limit, "--quiet")  # fmt: skip
        rows.append({
            "model": label, "run": str(run), "epochs": len(read_metrics(run)),
            "is": is_["log_likelihood"], "is_stderr": is_["log_likelihood_stderr"], "is_seconds": is_seconds,
            "elbo": is_["elbo"], "khat_mean": is_["khat_mean"], "khat_above_0_7": is_["khat_above_0_7"],
            "active_units": is_["active_units"], "active_units_per_layer": is_.get("active_units_per_layer"),
            "ais": ais["log_likelihood"], "ais_stderr": ais["log_likelihood_stderr"], "ais_seconds": ais_seconds,
            "acceptance_rate": ais["acceptance_rate"], "ais_minus_is": ais["log_likelihood"] - is_["log_likelihood"],
        })  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr)
    result = {
        "protocol": {"data": args.data, "binarize": "threshold", "budget_seconds": args.budget, "limit": args.limit,
                     "k": args.k, "ais_steps": args.steps, "ais_chains": args.chains},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "rows": rows,
    }  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


def table(result: dict) -> str:
    p = result["protocol"]
    lines = [f"| model | epochs | ELBO | log p(x), IS K={p['k']} | k-hat mean (> 0.7) | log p(x), AIS {p['ais_steps']} steps | AIS - IS | IS s | AIS s | active units |",
             "|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        units = r["active_units_per_layer"] or r["active_units"]
        lines.append(f"| {r['model']} | {r['epochs']} | {r['elbo']:.2f} | {r['is']:.2f} +- {r['is_stderr']:.2f} | "
                     f"{r['khat_mean']:.2f} ({r['khat_above_0_7']:.0%}) | {r['ais']:.2f} +- {r['ais_stderr']:.2f} | "
                     f"{r['ais_minus_is']:+.2f} | {r['is_seconds']:.0f} | {r['ais_seconds']:.0f} | {units} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
