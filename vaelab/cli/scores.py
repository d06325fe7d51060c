"""`vaelab score`, `encode` and `decode`: per-example bounds, latent codes of a dataset, and
codes decoded."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from ..core.errors import VaelabError
from ..evaluation.scores import DEFAULT_BOUND as DEFAULT_SCORE_BOUND
from ..evaluation.scores import DEFAULT_DRAWS
from ..runs import config as cfg
from .common import add_device_flag, add_trust_flag, needs_continuous_latent, positive


def add_score_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab score` and its flags."""
    p = subparsers.add_parser("score", help="per-example log-likelihood bounds in a CSV file; AUROC against other data",
                              description="Scores every example of a dataset by a bound on log p(x) under the run's model "
                              "(the data prepared as the run prepares its own: binarization, dequantization): one CSV "
                              "row per example with index, label, bound, score (nats), stderr (its Monte-Carlo "
                              "standard error) and khat (is:K only: the Pareto k-hat of the weights). With "
                              "--auroc-against D2, the AUROC of telling D2 from D by the score.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    add_trust_flag(p)
    add_device_flag(p)
    p.add_argument("--data", metavar="D", help="dataset name or .npy/.npz file to score, of the run's data shape "
                   "(default: the run's own data)")  # fmt: skip
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which split of D (default: test)")
    p.add_argument("--bound", default=DEFAULT_SCORE_BOUND, metavar="elbo|iwae:K|is:K",
                   help="elbo: the ELBO; iwae:K: the IWAE bound E[L_K] (Burda et al. 2015); is:K: log p(x) by "
                   f"importance sampling with K particles, delta-method standard error (default: {DEFAULT_SCORE_BOUND})")  # fmt: skip
    p.add_argument("--draws", type=int, help="elbo and iwae:K: independent draws of the bound averaged per example, "
                   f"their spread giving the standard error (default: {DEFAULT_DRAWS})")  # fmt: skip
    p.add_argument("--limit", type=int, help="only the first N examples of the split (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the particles (default: 0)")
    p.add_argument("--auroc-against", metavar="D2", help="also score D2 (same split and --limit) and print the AUROC "
                   "of telling D2 from D by the score, D2 taken as in-distribution (higher score)")  # fmt: skip
    p.add_argument("-o", "--output", metavar="FILE.csv", help="CSV file of per-example scores (default: none, "
                   "only the summary)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _other_data(config: cfg.RunConfig, data: str | None, **changes: Any) -> cfg.RunConfig:
    """The run's configuration with its data replaced by ``data`` (a dataset name or file, read
    from the working directory), prepared as the run prepares its own (binarization,
    dequantization, data folder), with ``changes`` to the data options. Data given by name is
    taken whole: a label filter of the run's own data (``classes``, where the configuration has
    one) does not apply to it; without ``data``, the run's own data is used as the run used it."""
    if data is not None:
        from ..data.sources import uses_data_dir

        defaults = {f.name: f.default for f in dataclasses.fields(cfg.DataConfig)}
        if "classes" in defaults:
            changes.setdefault("classes", defaults["classes"])
        if not uses_data_dir(data):  # the run's IDX folder means nothing for a file or digits
            changes.setdefault("data_dir", None)
    return dataclasses.replace(config, data=dataclasses.replace(config.data, data=data or config.data.data, **changes))


def _check_shape(split, event_shape, run: str, flag: str) -> None:
    from ..core.errors import DataError

    if tuple(split.event_shape) != tuple(event_shape):
        raise DataError(
            f"{flag} {split.name} holds examples of shape {list(split.event_shape)}, but {run} models data of "
            f"shape {list(event_shape)}; give data of the shape the run was trained on"
        )


def _load_scored(config: cfg.RunConfig, run: str, event_shape, data: str | None, split: str, limit: int | None, flag: str):
    """One split of ``data`` (default: the run's own) prepared as the run prepares its data, all of
    it unless ``limit``, checked against the run's data shape and likelihood."""
    from ..runs.rundir import check_compatible, load_data

    other = _other_data(config, data, limit=None)
    part = load_data(other, split, limit=limit)
    if len(part) == 0:
        raise VaelabError(f"the {split} split of {part.name} is empty")
    _check_shape(part, event_shape, run, flag)
    check_compatible(other, part)
    return part


def cmd_score(args: argparse.Namespace) -> int:
    from ..evaluation.scores import auroc, finite_mean, parse_bound, score
    from ..runs.rundir import load, read_config

    positive("--limit", args.limit)
    positive("--draws", args.draws)
    name, k = parse_bound(args.bound)
    if name == "is" and args.draws is not None:
        raise VaelabError("--draws averages draws of elbo or iwae:K; is:K gets its standard error from its K weights: drop --draws")
    draws = DEFAULT_DRAWS if args.draws is None else args.draws
    if args.output is not None and Path(args.output).suffix.lower() != ".csv":
        raise VaelabError(f"-o {args.output}: scores are written as CSV; name the file FILE.csv")
    config, event_shape = read_config(args.run)
    needs_continuous_latent(config, args.run, "vaelab score")
    parts = {"data": _load_scored(config, args.run, event_shape, args.data, args.split, args.limit, "--data")}
    if args.auroc_against is not None:
        parts["against"] = _load_scored(config, args.run, event_shape, args.auroc_against, args.split, args.limit,
                                        "--auroc-against")  # fmt: skip
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    progress = not (args.quiet or args.json)
    scores = {key: score(model, part.fixed(), args.bound, draws=draws, seed=args.seed, progress=progress)
              for key, part in parts.items()}  # fmt: skip
    data = parts["data"]
    if args.output is not None:
        _write_scores_csv(args.output, data, args.bound, scores["data"])
    mean = finite_mean(scores["data"].score)
    spread = scores["data"].score.std().item() if len(data) > 1 else math.nan
    summary: dict[str, Any] = {"bound": args.bound, "data": data.name, "split": args.split, "n_examples": len(data),
                               "mean": mean, "stderr": spread / math.sqrt(len(data)), "output": args.output}  # fmt: skip
    if name != "is":
        summary["draws"] = draws
    if "against" in parts:
        against = parts["against"]
        summary.update(against=against.name, against_n_examples=len(against),
                       against_mean=finite_mean(scores["against"].score),
                       auroc=auroc(scores["against"].score, scores["data"].score))  # fmt: skip
    if args.json:
        print(json.dumps(summary))
        return 0
    what = {"is": f"log p(x) by importance sampling, K={k}", "iwae": f"IWAE bound L_{k}, {draws} draws per example",
            "elbo": f"ELBO, {draws} draws per example"}[name]  # fmt: skip
    print(f"{args.run}: {len(data)} {args.split} examples of {data.name} scored by {args.bound} ({what})")
    print(f"  mean score  {mean:.3f} +- {summary['stderr']:.3f} nats (+- standard error over examples)")
    if "against" in parts:
        print(f"  {summary['against']}: mean score {summary['against_mean']:.3f} nats over {summary['against_n_examples']} examples")
        print(f"  AUROC {summary['auroc']:.4f} of telling {summary['against']} (higher score) from {data.name}: 1 = every "
              f"{data.name} example scores below every {summary['against']} one, 0.5 = no separation, below 0.5 = "
              f"{data.name} scores higher")  # fmt: skip
    if args.output is not None:
        print(f"  per-example scores: {args.output}")
    return 0


def _write_scores_csv(path: str, data, bound: str, scores) -> None:
    """index,label,bound,score,stderr,khat per example; empty cells where there is no value."""
    from ..core.files import atomic_write_bytes


    def cell(value: float) -> str:
        return f"{value:.8g}" if math.isfinite(value) else ""

    labels = data.y.tolist() if data.y is not None else [None] * len(data)
    khat = scores.khat.tolist() if scores.khat is not None else [math.nan] * len(data)
    lines = ["index,label,bound,score,stderr,khat"]
    for i, (label, value, se, kh) in enumerate(zip(labels, scores.score.tolist(), scores.stderr.tolist(), khat)):
        lines.append(f"{i},{'' if label is None else label},{bound},{cell(value)},{cell(se)},{cell(kh)}")
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def add_encode_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab encode` and its flags."""
    p = subparsers.add_parser("encode", help="latent codes: posterior means and scales (and draws) of a dataset, to a .npz",
                              description="Encodes the training and test files of a dataset (prepared as the run prepares "
                              "its own) into FILE.npz: mean_train, scale_train, mean_test, scale_test (posterior means "
                              "and standard deviations), y_train, y_test (labels, when known), samples_train, "
                              "samples_test (with --samples), and x_train, x_test (the means again), so that "
                              "vaelab train --data FILE.npz trains a second VAE on the codes: on fresh draws "
                              "mean + scale * N(0, I) every epoch, the aggregate posterior (--codes draw, the default), "
                              "or on the means alone (--codes mean).")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    add_trust_flag(p)
    add_device_flag(p)
    p.add_argument("--data", metavar="D", help="dataset name or .npy/.npz file, of the run's data shape (default: the "
                   "run's own data)")  # fmt: skip
    p.add_argument("-o", "--output", metavar="FILE.npz", required=True, help="the codes file to write")
    p.add_argument("--samples", type=int, default=0, metavar="S", help="also S draws z ~ q(z|x) per example (default: 0)")
    p.add_argument("--limit", type=int, help="only the first N examples of each file (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")


def cmd_encode(args: argparse.Namespace) -> int:
    import io

    import numpy as np

    from ..core.files import atomic_write_bytes
    from ..evaluation.scores import encode_codes
    from ..runs.rundir import load, read_config

    positive("--limit", args.limit)
    if args.samples < 0:
        raise VaelabError(f"--samples must be at least 0, got {args.samples}")
    if Path(args.output).suffix.lower() != ".npz":
        raise VaelabError(f"-o {args.output}: codes are written as a .npz file; name it FILE.npz")
    config, event_shape = read_config(args.run)
    needs_continuous_latent(config, args.run, "vaelab encode")
    # the whole training file (no validation carve), so that row i of x_train is row i of the file
    # and a second VAE trained on the codes carves its own validation split
    train = _load_scored(_other_data(config, args.data, valid_fraction=0.0), args.run, event_shape, None, "train",
                         args.limit, "--data")  # fmt: skip
    test = _load_scored(config, args.run, event_shape, args.data, "test", args.limit, "--data")
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    arrays: dict[str, Any] = {}
    for name, part in (("train", train), ("test", test)):
        codes = encode_codes(model, part.fixed(), samples=args.samples, seed=args.seed)
        mean = codes.mean.numpy().astype(np.float32)
        arrays[f"x_{name}"] = mean
        arrays[f"mean_{name}"] = mean
        arrays[f"scale_{name}"] = codes.scale.numpy().astype(np.float32)
        if codes.samples is not None:
            arrays[f"samples_{name}"] = codes.samples.numpy().astype(np.float32)
        if part.y is not None:
            arrays[f"y_{name}"] = part.y.numpy()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(args.output, buffer.getvalue())
    print(f"{args.run}: codes of {len(train)} training and {len(test)} test examples of {train.name}, "
          f"{mean.shape[1]} dimensions, in {args.output} ({', '.join(sorted(arrays))})")  # fmt: skip
    return 0


def add_decode_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab decode` and its flags."""
    p = subparsers.add_parser("decode", help="decode latent codes to the means of p(x|z): a .png grid or a .npy array",
                              description="Decodes codes (an N x latent_dim .npy array, or a .npz from vaelab encode) "
                              "to the means of p(x|z), written as an image grid (.png) or an array (.npy).")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    add_trust_flag(p)
    add_device_flag(p)
    p.add_argument("codes", metavar="CODES", help="N x latent_dim .npy array, or a .npz file")
    p.add_argument("-o", "--output", metavar="FILE.png|FILE.npy", required=True, help="image grid or array to write")
    p.add_argument("--key", help="the array of a .npz to decode (default: x_test, the test means of vaelab encode; "
                   "or its only array)")  # fmt: skip


def cmd_decode(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..core.errors import DataError
    from ..core.files import atomic_write_bytes
    from ..evaluation.scores import decode_means
    from ..runs.rundir import load, read_config

    suffix = Path(args.output).suffix.lower()
    if suffix not in (".png", ".npy"):
        raise VaelabError(f"-o {args.output}: write the decoded means as an image grid (.png) or an array (.npy)")
    config, _ = read_config(args.run)
    needs_continuous_latent(config, args.run, "vaelab decode")
    codes = _read_codes(args.codes, args.key)
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    if codes.ndim < 2 or codes.shape[-1] != model.latent_dim or codes.size == 0:
        raise DataError(
            f"{args.codes}: codes of shape {list(codes.shape)} do not fit {args.run}'s latent of {model.latent_dim} "
            f"dimensions; pass an N x {model.latent_dim} array (vaelab encode {args.run} writes them)"
        )
    z = torch.from_numpy(np.ascontiguousarray(codes.reshape(-1, codes.shape[-1]), dtype=np.float32))
    means = decode_means(model, z)
    if suffix == ".npy":
        import io

        buffer = io.BytesIO()
        np.save(buffer, means.numpy())
        atomic_write_bytes(args.output, buffer.getvalue())
    else:
        from ..report.figures import codes_figure

        codes_figure(means, args.output, f"{len(z)} codes decoded: mean of p(x|z)")
    print(args.output)
    return 0


def _read_codes(path: str, key: str | None):
    """The array of codes in a .npy file, or the ``key`` array of a .npz (default x_test, or its only array)."""
    import zipfile

    import numpy as np

    from ..core.errors import DataError

    if not Path(path).is_file():
        raise DataError(f"{path}: no such file; pass a .npy array of codes or a .npz from vaelab encode")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                names = list(loaded.files)
                chosen = key or ("x_test" if "x_test" in names else names[0] if len(names) == 1 else None)
                if chosen not in names:
                    raise DataError(f"{path} holds {', '.join(names)}; choose the codes with --key NAME")
                codes = loaded[chosen]
        else:
            if key is not None:
                raise DataError(f"--key picks an array of a .npz file; {path} is a single array: drop --key")
            codes = loaded
    except DataError:
        raise  # our own message (a DataError is a ValueError too)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: cannot read it as a .npy/.npz array ({err})".replace("\n", " ")) from None
    if not (np.issubdtype(codes.dtype, np.floating) or np.issubdtype(codes.dtype, np.integer)):
        raise DataError(f"{path}: codes have dtype {codes.dtype}; save them as floats")
    if not np.isfinite(codes).all():
        raise DataError(f"{path}: codes hold nan or infinite values")
    return codes
