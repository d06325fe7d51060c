"""Sample quality against likelihood on Fashion-MNIST, at the same wall-clock budget per model.

Models (dynamically binarized Fashion-MNIST, Bernoulli likelihood, batch 100, Adam 1e-3, seed 0,
the weights kept are the best by validation bound):

- VAE (mlp): Burda et al.'s 784-200-200-50 tanh MLP;
- VAE (resnet): ``--net resnet`` (``--resnet-channels``, 2 residual blocks), 50 latents;
- beta-VAE, two betas (``--betas``), on the mlp;
- VQ-VAE (resnet, K = 512 codes of 64 numbers on a 7x7 grid) + its gated PixelCNN prior: the
  VQ-VAE gets ``--vq-share`` of the budget and the prior the rest.

Each model trains until ``--budget`` wall-clock seconds are used (``--time-limit``: it stops
after the epoch that reaches the budget, so every model overshoots by at most one epoch; the
table reports the seconds actually spent, training plus validation and monitors). Run it on an
otherwise idle machine: other work on the cores takes epochs from whichever model is training.
Then each is scored
on the test set: its bound (ELBO for the VAEs, log p(x|z_q) + log p(z_q) with the learned prior for
the VQ-VAE; nats per image on binarized images), its reconstruction error -E_q[log p(x|z)]
(nats), and ``vaelab quality`` on ``--n`` samples (decoder means) against the test images,
with the reference row (real training images) from the same command.

    python benchmarks/bench_quality.py --budget 420 --out benchmarks/runs/quality \\
        --json benchmarks/results/quality.json --figure benchmarks/results/quality_samples.png

Runs are ordinary vaelab run directories: finished runs are reused, interrupted ones resumed.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
from pathlib import Path

import torch

from vaelab.cli.main import main as cli
from vaelab.core.errors import RunError
from vaelab.core.files import load_tensors, read_metrics
from vaelab.evaluation.evaluate import mean_bound, vq_summary
from vaelab.inference.objectives import get_objective
from vaelab.runs import config as cfg
from vaelab.runs.codeprior import PriorConfig, fit_code_prior
from vaelab.runs.lifecycle import complete_run
from vaelab.runs.prior_files import PRIOR_DIR
from vaelab.runs.rundir import load, load_data

MAX_EPOCHS = 10000  # the time limit stops every run first


def _budget_seconds(run: Path) -> float:
    """The seconds a run's time limit counted (training, validation, monitors), from its checkpoint."""
    _, meta = load_tensors(run / "checkpoint" / "state.safetensors")
    return json.loads(meta["state"])["seconds"]


def _json_cli(*args: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli([*args, "--json"])
    if code != 0:
        raise SystemExit(f"vaelab {' '.join(args)} failed with status {code}")
    return json.loads(out.getvalue())


MODELS = {
    "VAE (mlp)": ({}, {}),
    "VAE (resnet)": ({"net": "resnet"}, {}),
    "beta-VAE (mlp, beta={b0})": ({}, {"beta": None}),
    "beta-VAE (mlp, beta={b1})": ({}, {"beta": None}),
    "VQ-VAE + PixelCNN": ({"model": "vqvae"}, {}),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--budget", type=float, default=420.0, help="training seconds per model (default: 420)")
    parser.add_argument("--vq-share", type=float, default=0.6, help="fraction of the budget for the VQ-VAE itself, the rest for its prior")
    parser.add_argument("--resnet-channels", type=int, default=64, help="--resnet-channels of the resnet backbones (default: 64)")
    parser.add_argument("--betas", default="0.5,2", help="the two beta-VAE betas (default: 0.5,2)")
    parser.add_argument("--n", type=int, default=10000, help="samples scored per model (default: 10000)")
    parser.add_argument("--limit", type=int, help="first N examples of each split (smoke tests)")
    parser.add_argument("--out", default="benchmarks/runs/quality")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--figure", type=Path, help="a grid of 16 samples per model")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    betas = [float(b) for b in args.betas.split(",")]
    data = {"data": args.data, "binarize": "dynamic", "limit": args.limit}
    train_x = load_data(cfg.build({"data": data}), "train").fixed()
    n_train = len(train_x)
    rows, figures = [], {}
    for label, (model_options, train_options) in MODELS.items():
        label = label.format(b0=betas[0], b1=betas[1])
        if "beta" in train_options:
            train_options = {"beta": betas[0] if f"beta={betas[0]}" in label else betas[1]}
        if model_options.get("net") == "resnet" or model_options.get("model") == "vqvae":
            model_options = {**model_options, "resnet_channels": args.resnet_channels}
        vq_model = model_options.get("model") == "vqvae"
        budget = args.budget * (args.vq_share if vq_model else 1.0)
        config = cfg.build({"data": data, "model": model_options,
                            "train": {**train_options, "patience": 0, "epochs": MAX_EPOCHS, "time_limit": budget}})  # fmt: skip
        slug = label.lower().replace(" ", "-").replace("(", "").replace(")", "").replace(",", "").replace("+-", "").replace("=", "")
        run = Path(args.out) / slug
        print(f"{label}: {budget:.0f} s -> {run}", file=sys.stderr)
        complete_run(config, run, progress=not args.quiet)
        seconds = _budget_seconds(run)
        prior_info = None
        if vq_model:
            prior = PriorConfig(epochs=MAX_EPOCHS, patience=0, time_limit=args.budget - budget)
            try:
                fit_code_prior(run, prior, progress=not args.quiet)
            except RunError as err:  # a finished prior is reused
                if "already has a trained prior" not in str(err):
                    raise
            prior_metrics = read_metrics(run / PRIOR_DIR)
            prior_seconds = _budget_seconds(run / PRIOR_DIR)
            prior_info = {"epochs": len(prior_metrics), "seconds": prior_seconds,
                          "best_valid_log_p_codes": max(r["valid_bound"] for r in prior_metrics)}  # fmt: skip
            seconds += prior_seconds
        model = load(run)
        test_split = load_data(config, "test", limit=args.limit)
        test = test_split.fixed()
        if vq_model:
            s = vq_summary(model, test)
            bound, recon = s["elbo"], -s["reconstruction"]
            extra = {"codebook_perplexity": s["codebook_perplexity"], "codes_used": s["codes_used"], "rate": s["kl"]}
        else:
            bound, _ = mean_bound(get_objective("elbo"), model, test)
            with torch.no_grad():
                recon = -torch.cat([get_objective("elbo")(model.eval(), test[i : i + 500]).reconstruction
                                    for i in range(0, len(test), 500)]).mean().item()  # fmt: skip
            extra = {}
        quality = _json_cli("quality", str(run), "--n", str(args.n))
        metrics = read_metrics(run)
        rows.append({
            "model": label, "run": str(run), "epochs": len(metrics), "seconds": seconds,
            "seconds_per_epoch": sum(r["train_seconds"] for r in metrics) / len(metrics),
            "bound": bound, "reconstruction_error": recon, "prior": prior_info, **extra,
            **{k: quality[k] for k in ("fd", "precision", "recall", "density", "coverage", "classifier_score", "pr_k", "dc_k")},
            "reference": quality["reference"], "classifier_accuracy": quality["classifier_accuracy"],
            "n_samples": quality["n_samples"],
        })  # fmt: skip
        if args.figure:
            from vaelab.evaluation.sampling import sample_images

            figures[label] = sample_images(model, 16, seed=1)
        print(json.dumps(rows[-1]), file=sys.stderr)
    result = {
        "protocol": {"data": args.data, "binarize": "dynamic", "budget_seconds": args.budget, "vq_share": args.vq_share,
                     "resnet_channels": args.resnet_channels, "betas": betas, "n_samples": args.n, "limit": args.limit},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "rows": rows,
    }  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.figure:
        _figure(figures, args.figure)
    print(table(result))
    return 0


def _figure(figures: dict, path: Path) -> None:
    import numpy as np

    from vaelab.core.images import as_images, tile
    from vaelab.report.figures import _pixel_figure, save_figure

    strips = [tile(as_images(x), 16) for x in figures.values()]
    gap = np.ones((4, strips[0].shape[1]), dtype=np.float32)
    canvas = np.concatenate([part for s in strips for part in (s, gap)][:-1])
    save_figure(_pixel_figure(canvas, "rows: " + " | ".join(figures), zoom=3)[0], path)


def table(result: dict) -> str:
    """The README table (markdown)."""
    lines = ["| model | bound (nats) | reconstruction error (nats) | fd | precision | recall | density | coverage | classifier score | epochs | s/epoch | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['bound']:.2f} | {r['reconstruction_error']:.2f} | {r['fd']:.2f} | "
                     f"{r['precision']:.3f} | {r['recall']:.3f} | {r['density']:.3f} | {r['coverage']:.3f} | "
                     f"{r['classifier_score']:.2f} | {r['epochs']} | {r['seconds_per_epoch']:.1f} | {r['seconds']:.0f} |")  # fmt: skip
    ref = result["rows"][0]["reference"]
    lines.append(f"| reference (real training images) | | | {ref['fd']:.2f} | {ref['precision']:.3f} | "
                 f"{ref['recall']:.3f} | {ref['density']:.3f} | {ref['coverage']:.3f} | {ref['classifier_score']:.2f} | | | |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
