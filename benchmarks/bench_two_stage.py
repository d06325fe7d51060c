"""The two-stage VAE (Dai & Wipf 2019, "Diagnosing and enhancing VAE models") on Fashion-MNIST:
samples from the first VAE's prior, from a Gaussian mixture of its encoder means (Ghosh et al.
2020) and from a second VAE trained on its codes, side by side and scored by `vaelab quality`.

Stage 1: the Burda et al. MLP (784-200-200, tanh) with ``--latent-dim`` latents on dequantized grey
levels with a learned per-pixel Gaussian variance (``--binarize none --dequantize --likelihood
gaussian-learned``: Dai & Wipf's argument rests on a learned decoder variance). Stage 2: a VAE on
the stage-1 codes of the whole training file (``vaelab encode``), drawn afresh every epoch as
z = mean + scale * N(0, I) (``--codes draw``, the default for a codes file), so that it learns the
aggregate posterior q(z) = E_x q(z|x) as Dai & Wipf's code does; the same latent size, a wider MLP
(``--hidden2``), learned Gaussian variance. Beside it, the ablation: the same second VAE trained
on the encoder means alone (``--codes mean``, which learns the distribution of the means, narrower
than q(z) by E[scale^2] in every dimension), as vaelab did before the second review. Each stage
trains until its time limit (the weights kept are the best by validation bound). Then 10000
samples of each sampler (decoder means) are scored by ``vaelab quality`` against the test images,
beside the reference row (real training images).

    python benchmarks/bench_two_stage.py --time-limit 240 --time-limit2 120 --out benchmarks/runs/two_stage \\
        --json benchmarks/results/two_stage.json --figure benchmarks/results/two_stage_samples.png

Runs are ordinary vaelab run directories: finished runs are reused, interrupted ones resumed. The
feature classifier of `vaelab quality` is trained on first use and cached (a few minutes).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from vaelab.cli.main import build_parser as _build_parser
from vaelab.cli.common import config_from_args as _config_from_args
from vaelab.cli.main import main as cli
from vaelab.core.files import read_metrics
from vaelab.evaluation.sampling import sample_images
from vaelab.runs.lifecycle import complete_run
from vaelab.runs.rundir import load, load_data, read_config

MAX_EPOCHS = 10000  # the time limits stop the runs first
GMM_COMPONENTS = 10
FIGURE_SAMPLES = 32


def _cli(*args: str, json_out: bool = True) -> dict | None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli([*args, "--json"] if json_out else list(args))
    if code != 0:
        raise SystemExit(f"vaelab {' '.join(args)} failed with status {code}")
    return json.loads(out.getvalue()) if json_out else None


def _train(flags: list[str], run: Path, quiet: bool) -> dict:
    config = _config_from_args(_build_parser().parse_args(["train", *flags]))
    print(f"training -> {run}", file=sys.stderr)
    complete_run(config, run, progress=not quiet)
    metrics = read_metrics(run)
    return {"run": str(run), "epochs": len(metrics), "best_valid_bound": max(m["valid_bound"] for m in metrics)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--hidden", default="200,200", help="stage 1 MLP widths (default: 200,200)")
    parser.add_argument("--hidden2", default="512,512", help="stage 2 MLP widths (default: 512,512)")
    parser.add_argument("--time-limit", type=float, default=240.0, help="stage 1 training seconds (default: 240)")
    parser.add_argument("--time-limit2", type=float, default=120.0, help="stage 2 training seconds (default: 120)")
    parser.add_argument("--epochs", type=int, default=MAX_EPOCHS, help="maximum epochs of each stage (default: the time limits decide)")
    parser.add_argument("--n", type=int, default=10000, help="samples scored per sampler (default: 10000)")
    parser.add_argument("--limit", type=int, help="first N examples of each split (smoke tests)")
    parser.add_argument("--out", default="benchmarks/runs/two_stage")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--figure", type=Path, help=f"{FIGURE_SAMPLES} samples of each sampler, one row each")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    limit = ["--limit", str(args.limit)] if args.limit else []
    common = ["--latent-dim", str(args.latent_dim), "--likelihood", "gaussian-learned", "--binarize", "none",
              "--epochs", str(args.epochs), "--patience", "0", *limit]  # fmt: skip
    stage1, stage2 = out / "stage1", out / "stage2"
    first = _train(["--data", args.data, "--dequantize", "--hidden", args.hidden, "--time-limit", str(args.time_limit),
                    *common], stage1, args.quiet)  # fmt: skip
    codes = out / "codes.npz"
    if not codes.exists():
        _cli("encode", str(stage1), "-o", str(codes), *limit, json_out=False)
    second = _train(["--data", str(codes), "--hidden", args.hidden2, "--time-limit", str(args.time_limit2), *common],
                    stage2, args.quiet)  # fmt: skip
    means_only = out / "stage2-means"
    second_means = _train(["--data", str(codes), "--codes", "mean", "--hidden", args.hidden2, "--time-limit",
                           str(args.time_limit2), *common], means_only, args.quiet)  # fmt: skip

    samplers = {"prior": "prior", f"GMM({GMM_COMPONENTS})": "gmm", "stage 2": f"stage2:{stage2}",
                "stage 2, means only": f"stage2:{means_only}"}  # fmt: skip
    rows = []
    for label, sampler in samplers.items():
        extra = ["--components", str(GMM_COMPONENTS)] if sampler == "gmm" else []
        quality = _cli("quality", str(stage1), "--n", str(args.n), "--sampler", sampler, *extra)
        rows.append({"sampler": label, **{k: quality[k] for k in ("fd", "precision", "recall", "density", "coverage",
                                                                  "classifier_score", "pr_k", "dc_k")},
                     "reference": quality["reference"], "classifier_accuracy": quality["classifier_accuracy"],
                     "n_samples": quality["n_samples"]})  # fmt: skip
        print(json.dumps(rows[-1]), file=sys.stderr)
    # how far the aggregate posterior q(z) = E_x q(z|x) is from the prior: per dimension its variance
    # is Var(mean) + E[scale^2], against N(0, I)'s 1 (the means alone miss the E[scale^2] part)
    with np.load(codes) as f:
        means, scales = f["mean_train"].astype(np.float64), f["scale_train"].astype(np.float64)
    aggregate = means.var(0) + (scales**2).mean(0)
    result = {
        "protocol": {"data": args.data, "latent_dim": args.latent_dim, "hidden": args.hidden, "hidden2": args.hidden2,
                     "time_limit": args.time_limit, "time_limit2": args.time_limit2, "n_samples": args.n,
                     "limit": args.limit, "gmm_components": GMM_COMPONENTS},
        "stage1": first, "stage2": second, "stage2_means": second_means,
        "codes": {"mean_of_means": float(np.abs(means.mean(0)).mean()), "std_of_means": means.std(0).tolist(),
                  "aggregate_variance": aggregate.tolist(), "means_share_of_variance": (means.var(0) / aggregate).tolist()},
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "rows": rows,
    }  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.figure:
        _figure(stage1, stage2, means_only, args.figure, args.limit)
    print(table(result))
    return 0


def _figure(stage1: Path, stage2: Path, means_only: Path, path: Path, limit: int | None) -> None:
    """One row of samples per sampler (decoder means, the same seed)."""
    from vaelab.core.images import as_images, tile
    from vaelab.report.figures import _grid_figure, save_figure

    model = load(stage1)
    config, _ = read_config(stage1)
    train_x = load_data(config, "train", limit=10000 if limit is None else limit).fixed()
    rows = {
        "p(z)": sample_images(model, FIGURE_SAMPLES, seed=1),
        f"GMM({GMM_COMPONENTS})": sample_images(model, FIGURE_SAMPLES, sampler="gmm", components=GMM_COMPONENTS,
                                                 seed=1, train_x=train_x),  # fmt: skip
        "stage 2": sample_images(model, FIGURE_SAMPLES, sampler="stage2", stage2=load(stage2), seed=1),
        "stage 2, means only": sample_images(model, FIGURE_SAMPLES, sampler="stage2", stage2=load(means_only), seed=1),
    }
    strips = [tile(as_images(x), FIGURE_SAMPLES // 2) for x in rows.values()]
    gap = np.ones((4, strips[0].shape[1]), dtype=np.float32)
    canvas = np.concatenate([part for s in strips for part in (s, gap)][:-1])
    save_figure(_grid_figure(canvas, "two rows each: " + " | ".join(rows)), path)


def table(result: dict) -> str:
    """The README table (markdown)."""
    lines = ["| z drawn from | fd | precision | recall | density | coverage | classifier score |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in result["rows"]:
        lines.append(f"| {r['sampler']} | {r['fd']:.2f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                     f"{r['density']:.3f} | {r['coverage']:.3f} | {r['classifier_score']:.2f} |")  # fmt: skip
    ref = result["rows"][0]["reference"]
    lines.append(f"| reference (real training images) | {ref['fd']:.2f} | {ref['precision']:.3f} | {ref['recall']:.3f} | "
                 f"{ref['density']:.3f} | {ref['coverage']:.3f} | {ref['classifier_score']:.2f} |")  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
