"""`vaelab sample` and `vaelab reconstruct`: pictures of the model's samples and reconstructions."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import VaelabError
from .common import (
    GMM_EXAMPLES,
    add_device_flag,
    add_trust_flag,
    needs_continuous_latent,
    positive,
    sampler_choice,
    stage2_sampler,
)


def add_sample_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab sample` and its flags."""
    p = subparsers.add_parser("sample", help="draw samples from the model: z ~ p(z), mean of p(x|z) (G(z) for the adversarial models; a scatter plot over the data for 2-D points)")
    p.add_argument("run", metavar="RUN")
    add_trust_flag(p)
    add_device_flag(p)
    p.add_argument("-n", type=int, default=64, help="number of samples (default: 64)")
    p.add_argument("-o", "--output", metavar="FILE.png", help="image file (default: RUN/samples.png, or RUN/samples-1.png, -2, ... when it exists)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.add_argument("--sampler", default="prior", type=sampler_choice, metavar="prior|gmm|stage2:RUN2",
                   help="where z comes from: the prior, a Gaussian mixture fitted to the encoder means of "
                   "the training data (ex-post density estimation, Ghosh et al. 2020), or the second VAE RUN2 "
                   "trained on this run's codes (two-stage VAE, Dai & Wipf 2019) (default: prior)")  # fmt: skip
    p.add_argument("--components", type=int, default=10, help="mixture components for --sampler gmm (default: 10)")


def cmd_sample(args: argparse.Namespace) -> int:
    from ..report.figures import samples_figure
    from ..runs.rundir import load, read_config

    positive("-n", args.n)
    positive("--components", args.components)
    config, event_shape = read_config(args.run)
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    sampler, label = None, "p(z)"
    if args.sampler == "gmm":
        from ..evaluation.sampling import fit_latent_gmm
        from ..runs.rundir import load_data

        needs_continuous_latent(config, args.run, "--sampler gmm")
        x = load_data(config, "train", limit=GMM_EXAMPLES).fixed()
        sampler = fit_latent_gmm(model, x, args.components, seed=args.seed)
        label = f"GMM({args.components}) of encoder means"
    elif args.sampler.startswith("stage2:"):
        sampler = stage2_sampler(args.sampler, config, args.run, model, args.trust_code)
        label = f"the stage-2 VAE {args.sampler[len('stage2:'):]}"
    if sampler is None and tuple(event_shape) == (2,):  # points in the plane: a scatter plot
        from ..report.figures import points_figure
        from ..runs.rundir import load_data

        test = load_data(config, "test", limit=max(args.n, 2500)).fixed()
        path = points_figure(model, test, args.output or _unused_name(Path(args.run) / "samples.png"), n=args.n, seed=args.seed)
        print(f"{args.n} samples drawn over the test data, in {path}")
        return 0
    path = samples_figure(model, args.output or _unused_name(Path(args.run) / "samples.png"), n=args.n, seed=args.seed,
                          latent_sampler=sampler, label=label)  # fmt: skip
    print(f"{args.n} samples in {path}")
    return 0


def add_reconstruct_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab reconstruct` and its flags."""
    p = subparsers.add_parser("reconstruct", help="data beside its reconstructions")
    p.add_argument("run", metavar="RUN")
    add_trust_flag(p)
    add_device_flag(p)
    p.add_argument("-n", type=int, default=32, help="number of examples (default: 32)")
    p.add_argument("-o", "--output", metavar="FILE.png", help="image file (default: RUN/reconstructions.png, or RUN/reconstructions-1.png, -2, ... when it exists)")
    p.add_argument("--split", default="test", choices=("train", "valid", "test"), help="which split (default: test)")


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from ..report.figures import reconstructions_figure
    from ..runs.rundir import load, load_data, read_config

    positive("-n", args.n)
    config, event_shape = read_config(args.run)
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    from ..evaluation.sampling import can_reconstruct

    if not can_reconstruct(model):
        raise VaelabError(f"--model {config.model.model} has no encoder to reconstruct with; draw from it with: vaelab sample {args.run}")
    if tuple(event_shape) == (2,):
        raise VaelabError(f"{args.run} models points in the plane, which reconstructions.png cannot show; use vaelab sample {args.run}")
    x = load_data(config, args.split, limit=args.n).fixed()
    path = reconstructions_figure(model, x, args.output or _unused_name(Path(args.run) / "reconstructions.png"))
    print(f"{len(x)} {args.split} examples and their reconstructions in {path}")
    return 0


def _unused_name(path: Path) -> Path:
    """``path`` if no file has that name yet, else the first free ``NAME-1.png``, ``NAME-2.png``, ...,
    so a command's default picture never replaces an earlier one (-o names a file to overwrite)."""
    if not path.exists():
        return path
    i = 1
    while path.with_name(f"{path.stem}-{i}{path.suffix}").exists():
        i += 1
    return path.with_name(f"{path.stem}-{i}{path.suffix}")
