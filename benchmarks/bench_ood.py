"""Out-of-distribution detection by likelihood on Fashion-MNIST: a VAE trained on classes 0-8 scores
the test images of class 9 (ankle boots, never seen) against the held-out test images of classes 0-8.

The AUROC is the probability that a held-out image of classes 0-8 scores higher than an ankle boot
(ties count one half): 1 would be perfect detection, 0.5 none, below 0.5 the unseen class looks
*more* likely, as Nalisnick et al. (2019, "Do deep generative models know what they don't know?")
found for other pairs of datasets. Whatever it is, it is measured, not assumed.

Model: the Burda et al. MLP VAE (784-200-200-50 tanh), dynamically binarized images, Bernoulli
likelihood, Adam 1e-3, batch 100, seed 0, trained until ``--time-limit`` seconds are used (the
weights kept are the best by validation bound). Scores: ``vaelab score --bound is:K`` (log p(x) by
importance sampling) and ``--bound elbo``, each image binarized as the run binarizes its own test
data (one seeded draw).

    python benchmarks/bench_ood.py --time-limit 420 --k 1000 --out benchmarks/runs/ood \\
        --json benchmarks/results/ood.json

Training uses ``vaelab train --classes 0,...,8`` where that option exists; otherwise the same images
(the training and test files filtered to classes 0-8, in file order) are written to a .npz the run
trains on, which gives the same data. The two scored sets are written as .npz files beside the run.
A finished run is reused, an interrupted one resumed.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
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
from vaelab.data.load import load_split
from vaelab.evaluation.scores import auroc
from vaelab.runs import config as cfg
from vaelab.runs.lifecycle import complete_run

IN_CLASSES = tuple(range(9))
OOD_CLASS = 9
MAX_EPOCHS = 10000  # the time limit stops the run first


def _uint8(x: torch.Tensor) -> np.ndarray:
    """Grey levels in [0, 1] (k / 255) back to the uint8 values they came from."""
    return (x.squeeze(1) * 255).round().to(torch.uint8).numpy()


def _save(path: Path, x: np.ndarray, y: np.ndarray, x_test: np.ndarray | None = None, y_test: np.ndarray | None = None) -> None:
    """A .npz with a training and a test file (the same images twice when no test file is given, so
    that the whole set is the test split that vaelab score reads)."""
    x_test = x if x_test is None else x_test
    y_test = y if y_test is None else y_test
    np.savez(path, x_train=x, y_train=y, x_test=x_test, y_test=y_test)


def _json_cli(*args: str) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli([*args, "--json"])
    if code != 0:
        raise SystemExit(f"vaelab {' '.join(args)} failed with status {code}")
    return json.loads(out.getvalue())


def has_classes_option() -> bool:
    return "classes" in {f.name for f in dataclasses.fields(cfg.DataConfig)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--time-limit", type=float, default=420.0, help="training seconds (default: 420)")
    parser.add_argument("--epochs", type=int, default=MAX_EPOCHS, help="maximum epochs (default: the time limit decides)")
    parser.add_argument("--k", type=int, default=1000, help="importance samples of the is:K score (default: 1000)")
    parser.add_argument("--hidden", default="200,200")
    parser.add_argument("--latent-dim", type=int, default=50)
    parser.add_argument("--limit", type=int, help="first N images of each file (smoke tests)")
    parser.add_argument("--no-classes-option", action="store_true",
                        help="train on a filtered .npz even where vaelab train has --classes (to check both paths)")  # fmt: skip
    parser.add_argument("--out", default="benchmarks/runs/ood")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    files = {split: load_split(args.data, split, valid_fraction=0.0) for split in ("train", "test")}
    for split in files.values():
        if split.y is None:
            raise SystemExit(f"{args.data} has no labels to select classes by")
    keep = {name: np.isin(s.y.numpy(), IN_CLASSES) for name, s in files.items()}
    test_y = files["test"].y.numpy()
    heldout, unseen = out / "heldout_0-8.npz", out / "class_9.npz"
    limit = slice(None, args.limit)
    _save(heldout, _uint8(files["test"].x[keep["test"]])[limit], test_y[keep["test"]][limit])
    ood = test_y == OOD_CLASS
    _save(unseen, _uint8(files["test"].x[ood])[limit], test_y[ood][limit])

    flags = ["--binarize", "dynamic", "--hidden", args.hidden, "--latent-dim", str(args.latent_dim),
             "--epochs", str(args.epochs), "--patience", "0", "--time-limit", str(args.time_limit)]  # fmt: skip
    if args.limit:
        flags += ["--limit", str(args.limit)]
    if has_classes_option() and not args.no_classes_option:
        data_flags = ["--data", args.data, "--classes", ",".join(map(str, IN_CLASSES))]
        how = f"vaelab train --classes {','.join(map(str, IN_CLASSES))}"
        run = out / "vae-classes"
    else:
        train08 = out / "train_0-8.npz"
        tr, te = files["train"], files["test"]
        _save(train08, _uint8(tr.x[keep["train"]]), tr.y.numpy()[keep["train"]],
              _uint8(te.x[keep["test"]]), te.y.numpy()[keep["test"]])  # fmt: skip
        data_flags = ["--data", str(train08)]
        how = f"a .npz of the classes 0-8 ({train08})"
        run = out / "vae-npz"
    config = _config_from_args(_build_parser().parse_args(["train", *data_flags, *flags]))
    print(f"training on {how} -> {run}", file=sys.stderr)
    complete_run(config, run, progress=not args.quiet)
    metrics = read_metrics(run)

    scores = {}
    for bound in (f"is:{args.k}", "elbo"):
        # each set scored once, to a CSV; the AUROC from the two files is what `vaelab score --data
        # class_9.npz --auroc-against heldout_0-8.npz` prints (tests/test_scores.py checks that)
        csv = {name: out / f"{name}_{bound.replace(':', '')}.csv" for name in ("class_9", "heldout_0-8")}
        summary = {name: _json_cli("score", str(run), "--data", str(path), "--bound", bound, "-o", str(csv[name]), "--quiet")
                   for name, path in (("class_9", unseen), ("heldout_0-8", heldout))}  # fmt: skip
        values = {name: torch.tensor([float(r["score"]) for r in _rows(path)]) for name, path in csv.items()}
        per_class = _per_class(csv["heldout_0-8"])
        per_class[str(OOD_CLASS)] = summary["class_9"]["mean"]
        scores[bound] = {"auroc": auroc(values["heldout_0-8"], values["class_9"]),
                         "mean_class_9": summary["class_9"]["mean"], "n_class_9": summary["class_9"]["n_examples"],
                         "mean_heldout_0_8": summary["heldout_0-8"]["mean"],
                         "n_heldout_0_8": summary["heldout_0-8"]["n_examples"],
                         "mean_by_class": per_class, "csv": {k: str(v) for k, v in csv.items()}}  # fmt: skip
        print(json.dumps({bound: scores[bound]}), file=sys.stderr)
    result = {
        "protocol": {"data": args.data, "train_classes": list(IN_CLASSES), "ood_class": OOD_CLASS, "trained_on": how,
                     "binarize": "dynamic", "hidden": args.hidden, "latent_dim": args.latent_dim,
                     "time_limit": args.time_limit, "k": args.k, "limit": args.limit},
        "run": str(run), "epochs": len(metrics), "best_valid_bound": max(m["valid_bound"] for m in metrics),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "scores": scores,
    }  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result))
    return 0


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _per_class(path: Path) -> dict[str, float]:
    """Mean score of each label in a `vaelab score` CSV."""
    sums: dict[str, list[float]] = {}
    for row in _rows(path):
        sums.setdefault(row["label"], []).append(float(row["score"]))
    return {label: float(np.mean(values)) for label, values in sorted(sums.items(), key=lambda kv: int(kv[0]))}


def table(result: dict) -> str:
    """The README table (markdown)."""
    lines = ["| score | AUROC (classes 0-8 above class 9) | mean, held-out classes 0-8 (nats) | mean, class 9 (nats) |",
             "|---|---|---|---|"]  # fmt: skip
    for bound, s in result["scores"].items():
        lines.append(f"| `{bound}` | {s['auroc']:.3f} | {s['mean_heldout_0_8']:.2f} | {s['mean_class_9']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
