"""The adversarial relatives against the VAE: mode collapse on 2-D mixtures, sample quality at an
equal wall-clock budget on Fashion-MNIST, and modes of stacked Fashion-MNIST.

Three parts (``--parts``, default all):

- ``modes``: ring8 and grid25 (Srivastava et al. 2017), models gan, aae, vaegan, alphagan,
  veegan and vae, ``--seeds`` seeds each; ``vaelab quality RUN`` on 2500 samples gives ``modes``
  and ``high_quality``; the table shows mean +- sd over seeds. All models: MLPs of two hidden
  layers of 128 ReLU units, 2 latents (as many as the data has dimensions: VEEGAN's joint
  matching of (z, x) pairs needs a reconstructor that can invert the generator), batch 100,
  ``--modes-epochs`` epochs of the 18,000 training points; the adversarial ones use Adam 1e-3
  with betas 0.5, 0.999 on both sides and a Gaussian output (reconstruction -log N(x | x~, I/100)
  for the AAE and alpha-GAN), the VAE Adam 1e-3 and a Gaussian likelihood with learned variance.
- ``fashion``: Fashion-MNIST, every model trained for ``--budget`` wall-clock seconds
  (``--time-limit``; it stops after the epoch that reaches it): gan, vaegan, aae, alphagan and
  veegan on grey levels (``--binarize none``, sigmoid outputs) with the ``conv`` backbone (DCGAN
  style), the VAE (Burda et al.'s MLP, dynamically binarized, its ELBO reported) and the VQ-VAE
  (resnet) with its PixelCNN prior (``--vq-share`` of the budget for the VQ-VAE, the rest for
  the prior). Each is scored by ``vaelab quality RUN`` (10,000 samples), ``vaelab evaluate``
  (bound where one exists, reconstruction error ||x - x^||^2 on its own test images: grey levels
  for the adversarial models, binary pixels for the VAE and VQ-VAE) and its s/epoch.
- ``stacked``: stacked Fashion-MNIST (1000 modes), gan, veegan and vae at ``--budget`` seconds
  each; ``vaelab quality RUN`` gives ``modes`` and ``mode_kl`` on 10,000 samples.

    python benchmarks/bench_adversarial.py --out benchmarks/runs/adversarial \\
        --json benchmarks/results/adversarial.json --figure benchmarks/results/adversarial_samples.png

Run it on an otherwise idle machine: the budgets are wall-clock seconds. Runs are ordinary run
directories: finished runs are reused, interrupted ones resumed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
from pathlib import Path

import torch

# the script's folder is on sys.path when it runs: the helpers of the sample-quality benchmark
from bench_quality import _budget_seconds as _seconds
from bench_quality import _figure, _json_cli

from vaelab.core.errors import RunError
from vaelab.core.files import read_metrics
from vaelab.evaluation.evaluate import reconstruction_error
from vaelab.runs import config as cfg
from vaelab.runs.codeprior import PriorConfig, fit_code_prior
from vaelab.runs.lifecycle import complete_run
from vaelab.runs.prior_files import PRIOR_DIR
from vaelab.runs.rundir import load, load_data

MAX_EPOCHS = 100000  # the time limit stops every budgeted run first
ADVERSARIAL = ("gan", "vaegan", "aae", "alphagan", "veegan")
# the 2-D runs: two hidden layers of 128 ReLU units, 2 latents, Adam with DCGAN's betas for the
# adversarial models (both sides), Adam 1e-3 for the VAE
MODES_MODEL = {"net": "mlp", "hidden": (128, 128), "activation": "relu", "latent_dim": 2}
MODES_TRAIN = {"batch_size": 100, "lr": 1e-3, "adam_betas": (0.5, 0.999)}
# the image runs of the adversarial models: DCGAN-style conv nets, Adam 2e-4 with betas 0.5, 0.999
IMAGE_MODEL = {"net": "conv", "hidden": (512,), "activation": "relu", "latent_dim": 32}
IMAGE_TRAIN = {"batch_size": 64, "lr": 2e-4, "adam_betas": (0.5, 0.999)}


def _per_epoch(run: Path) -> float:
    metrics = read_metrics(run)
    return sum(r["train_seconds"] for r in metrics) / len(metrics)


def _config(data: dict, model: dict, train: dict) -> cfg.RunConfig:
    return cfg.build({"data": data, "model": model, "train": train})


def _modes_config(name: str, dataset: str, seed: int, epochs: int) -> cfg.RunConfig:
    data = {"data": dataset, "binarize": "none"}
    if name == "vae":
        return _config(data, {**MODES_MODEL, "likelihood": "gaussian-learned"},
                       {"batch_size": 100, "epochs": epochs, "patience": 0, "seed": seed})  # fmt: skip
    return _config(data, {**MODES_MODEL, "model": name, "likelihood": "gaussian"},
                   {**MODES_TRAIN, "epochs": epochs, "seed": seed})  # fmt: skip


def part_modes(args) -> dict:
    rows = []
    for dataset in ("ring8", "grid25"):
        for name in (*ADVERSARIAL, "vae"):
            per_seed = []
            for seed in range(args.seeds):
                run = Path(args.out) / "modes" / f"{dataset}-{name}-{seed}"
                complete_run(_modes_config(name, dataset, seed, args.modes_epochs), run, progress=not args.quiet)
                q = _json_cli("quality", str(run))
                per_seed.append({"seed": seed, "modes": q["modes"], "high_quality": q["high_quality"],
                                 "seconds_per_epoch": _per_epoch(run)})  # fmt: skip
            modes = [r["modes"] for r in per_seed]
            hq = [r["high_quality"] for r in per_seed]
            rows.append({"data": dataset, "model": name, "num_modes": q["num_modes"], "per_seed": per_seed,
                         "modes_mean": statistics.mean(modes), "modes_sd": statistics.stdev(modes) if len(modes) > 1 else 0.0,
                         "high_quality_mean": statistics.mean(hq), "high_quality_sd": statistics.stdev(hq) if len(hq) > 1 else 0.0,
                         "reference": q["reference"]})  # fmt: skip
            print(json.dumps(rows[-1]), file=sys.stderr)
    return {"epochs": args.modes_epochs, "seeds": args.seeds, "model": MODES_MODEL, "train": MODES_TRAIN, "rows": rows}


def _budgeted(name: str, dataset: str, budget: float, limit: int | None) -> tuple[cfg.RunConfig, str]:
    """The configuration of one budgeted image run, and the data it is trained on."""
    timed = {"epochs": MAX_EPOCHS, "time_limit": budget}
    if name in ADVERSARIAL:
        data = {"data": dataset, "binarize": "none", "limit": limit}
        return _config(data, {**IMAGE_MODEL, "model": name}, {**IMAGE_TRAIN, **timed}), "grey levels"
    data = {"data": dataset, "binarize": "dynamic", "limit": limit}
    if name == "vqvae":
        return _config(data, {"model": "vqvae", "resnet_channels": 64}, {**timed, "patience": 0}), "binarized"
    net = {"net": "conv"} if dataset.startswith("stacked") else {}
    return _config(data, net, {**timed, "patience": 0}), "binarized"


def _train_budgeted(name: str, dataset: str, args, part: str) -> tuple[Path, float, str]:
    vq = name == "vqvae"
    budget = args.budget * (args.vq_share if vq else 1.0)
    config, view = _budgeted(name, dataset, budget, args.limit)
    run = Path(args.out) / part / name
    print(f"{part}: {name} for {budget:.0f} s -> {run}", file=sys.stderr)
    complete_run(config, run, progress=not args.quiet)
    seconds = _seconds(run)
    if vq:
        try:
            fit_code_prior(run, PriorConfig(epochs=MAX_EPOCHS, patience=0, time_limit=args.budget - budget),
                           progress=not args.quiet)  # fmt: skip
        except RunError as err:  # a finished prior is reused
            if "already has a trained prior" not in str(err):
                raise
        seconds += _seconds(run / PRIOR_DIR)
    return run, seconds, view


def part_fashion(args) -> tuple[dict, dict]:
    rows, figures = [], {}
    for name in (*ADVERSARIAL, "vae", "vqvae"):
        run, seconds, view = _train_budgeted(name, "fashion-mnist", args, "fashion")
        quality = _json_cli("quality", str(run), "--n", str(args.n))
        summary = _json_cli("evaluate", str(run), "--quiet", *(["--k", "1000", "--limit", "1000"] if name == "vae" else []))
        if name in ("vae", "vqvae"):  # evaluate reports a likelihood's reconstruction term: take the squared error
            config, _ = _budgeted(name, "fashion-mnist", 1.0, args.limit)
            recon = reconstruction_error(load(run), load_data(config, "test").fixed())[0]
            bound, bound_kind = ((summary["log_likelihood"], "log p(x), IS K=1000, 1000 test images") if name == "vae"
                                 else (summary["elbo"], "log p(x|z_q) + log p(z_q), PixelCNN prior"))  # fmt: skip
        else:
            recon, bound, bound_kind = summary["reconstruction_error"], None, "none"
        rows.append({"model": name, "run": str(run), "data": view, "epochs": len(read_metrics(run)),
                     "seconds": seconds, "seconds_per_epoch": _per_epoch(run), "bound": bound, "bound_kind": bound_kind,
                     "reconstruction_error": recon,
                     **{k: quality[k] for k in ("fd", "precision", "recall", "density", "coverage", "classifier_score", "pr_k", "dc_k")},
                     "reference": quality["reference"]})  # fmt: skip
        if args.figure:
            from vaelab.evaluation.sampling import sample_images

            figures[name] = sample_images(load(run), 16, seed=1)
        print(json.dumps(rows[-1]), file=sys.stderr)
    return {"budget_seconds": args.budget, "vq_share": args.vq_share, "model": IMAGE_MODEL, "train": IMAGE_TRAIN,
            "n_samples": args.n, "rows": rows}, figures  # fmt: skip


def part_stacked(args) -> dict:
    rows = []
    for name in ("gan", "veegan", "vae"):
        run, seconds, view = _train_budgeted(name, "stacked-fashion-mnist", args, "stacked")
        q = _json_cli("quality", str(run), "--n", str(args.n))
        rows.append({"model": name, "run": str(run), "data": view, "epochs": len(read_metrics(run)), "seconds": seconds,
                     "seconds_per_epoch": _per_epoch(run), "modes": q["modes"], "mode_kl": q["mode_kl"],
                     "reference": q["reference"]})  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr)
    return {"budget_seconds": args.budget, "n_samples": args.n, "rows": rows}


def tables(result: dict) -> str:
    """The README tables (markdown)."""
    out = []
    if "modes" in result:
        out += ["| data | model | modes | high-quality fraction |", "|---|---|---|---|"]
        for r in result["modes"]["rows"]:
            out.append(f"| {r['data']} | {r['model']} | {r['modes_mean']:.1f} +- {r['modes_sd']:.1f} of {r['num_modes']} | "
                       f"{r['high_quality_mean']:.3f} +- {r['high_quality_sd']:.3f} |")  # fmt: skip
        for data in ("ring8", "grid25"):
            ref = next(r for r in result["modes"]["rows"] if r["data"] == data)["reference"]
            out.append(f"| {data} | reference (training points) | {ref['modes']} | {ref['high_quality']:.3f} |")
        out.append("")
    if "fashion" in result:
        out += ["| model | trained on | bound (nats) | reconstruction error | fd | precision | recall | density | coverage | classifier score | epochs | s/epoch |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for r in result["fashion"]["rows"]:
            bound = "none" if r["bound"] is None else f"{r['bound']:.2f}"
            recon = "none (no encoder)" if r["reconstruction_error"] is None else f"{r['reconstruction_error']:.2f}"
            out.append(f"| {r['model']} | {r['data']} | {bound} | {recon} | {r['fd']:.2f} | "
                       f"{r['precision']:.3f} | {r['recall']:.3f} | {r['density']:.3f} | {r['coverage']:.3f} | "
                       f"{r['classifier_score']:.2f} | {r['epochs']} | {r['seconds_per_epoch']:.1f} |")  # fmt: skip
        ref = result["fashion"]["rows"][0]["reference"]
        out.append(f"| reference (real training images) | | | | {ref['fd']:.2f} | {ref['precision']:.3f} | {ref['recall']:.3f} | "
                   f"{ref['density']:.3f} | {ref['coverage']:.3f} | {ref['classifier_score']:.2f} | | |")  # fmt: skip
        out.append("")
    if "stacked" in result:
        out += ["| model | modes (of 1000) | KL(modes \\|\\| uniform) | epochs | s/epoch |", "|---|---|---|---|---|"]
        for r in result["stacked"]["rows"]:
            out.append(f"| {r['model']} | {r['modes']} | {r['mode_kl']:.3f} | {r['epochs']} | {r['seconds_per_epoch']:.1f} |")
        ref = result["stacked"]["rows"][0]["reference"]
        out.append(f"| reference (real training images) | {ref['modes']} | {ref['mode_kl']:.3f} | | |")
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="modes,fashion,stacked", help="comma-separated: modes, fashion, stacked")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per 2-D model (default: 3)")
    parser.add_argument("--modes-epochs", type=int, default=40, help="epochs of the 2-D runs (default: 40)")
    parser.add_argument("--budget", type=float, default=180.0, help="training seconds per image model (default: 180)")
    parser.add_argument("--vq-share", type=float, default=0.6, help="share of the budget for the VQ-VAE, the rest for its prior")
    parser.add_argument("--n", type=int, default=10000, help="samples scored per image model (default: 10000)")
    parser.add_argument("--limit", type=int, help="first N examples of each image split (smoke tests)")
    parser.add_argument("--out", default="benchmarks/runs/adversarial")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--figure", type=Path, help="16 Fashion-MNIST samples per model")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    result: dict = {}
    if args.json and args.json.exists():  # parts run separately land in one file
        result = json.loads(args.json.read_text())
    figures = {}
    if "modes" in parts:
        result["modes"] = part_modes(args)
    if "fashion" in parts:
        result["fashion"], figures = part_fashion(args)
    if "stacked" in parts:
        result["stacked"] = part_stacked(args)
    result["machine"] = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.figure and figures:
        _figure(figures, args.figure)
    print(tables(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
