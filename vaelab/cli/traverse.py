"""`vaelab traverse` and `vaelab interpolate`: pictures of the latent space."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..core.errors import VaelabError
from .common import add_device_flag, add_trust_flag, index_list


def _pictures_model(args: argparse.Namespace, what: str):
    """The model and test examples for `vaelab traverse` and `interpolate`; refuses, in one line,
    a model without a continuous latent code per example."""
    from ..report.figures import latent_codes_available
    from ..runs.rundir import load, read_config

    config, event_shape = read_config(args.run)
    if tuple(event_shape) == (2,):
        raise VaelabError(f"{args.run} models points in the plane, which {what} cannot draw as images; use vaelab sample {args.run}")
    model = load(args.run, trust_code=args.trust_code, device=args.device)
    reason = latent_codes_available(model)
    if reason is not None:
        raise VaelabError(f"{what} needs an example's continuous latent code; {args.run} is a --model "
                          f"{config.model.model} run: {reason}")  # fmt: skip
    return config, model


def add_traverse_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab traverse` and its flags."""
    p = subparsers.add_parser("traverse", help="latent traversals: each dimension swept while the others stay at an example's code",
                              description="The beta-VAE figure (Higgins et al. 2017): one row per latent dimension, swept over "
                              "[-R, R] prior standard deviations around the prior mean while the other dimensions stay "
                              "at a test example's posterior mean E_q[z|x] (E(x) for a deterministic encoder). Rows are ordered "
                              "by the dimension's KL(q(z_d|x) || p(z_d)), mean over test examples, largest first (by the "
                              "activity Cov_x E[z_d|x] where the posterior or prior has no KL per dimension) and labelled with it.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    add_trust_flag(p)
    add_device_flag(p)
    p.add_argument("--dims", metavar="D,D,...", type=index_list("--dims"),
                   help="latent dimensions to show, counted from 0, in this order (default: all, largest KL first)")  # fmt: skip
    p.add_argument("--range", dest="span", metavar="R", type=float, default=3.0,
                   help="sweep from -R to +R prior standard deviations around the prior mean (default: 3)")  # fmt: skip
    p.add_argument("--steps", type=int, default=11, help="images per dimension (default: 11)")
    p.add_argument("--example", type=int, default=0, help="the test example whose code holds the other dimensions (default: 0)")
    p.add_argument("-o", "--output", metavar="FILE.png", help="image file (default: RUN/traversal.png)")


def cmd_traverse(args: argparse.Namespace) -> int:
    from ..report.figures import RANKING_EXAMPLES, traversal_figure, traverse
    from ..runs.rundir import load_data

    if not (args.span > 0 and math.isfinite(args.span)):
        raise VaelabError(f"--range must be a positive number of prior standard deviations, got {args.span}")
    if args.steps < 2:
        raise VaelabError(f"--steps must be at least 2, got {args.steps}")
    config, model = _pictures_model(args, "vaelab traverse")
    limit = RANKING_EXAMPLES if config.data.limit is None else min(RANKING_EXAMPLES, config.data.limit)
    x = load_data(config, "test", limit=max(limit, args.example + 1)).fixed()
    if not 0 <= args.example < len(x):
        raise VaelabError(f"--example {args.example} is not a test example of {args.run}: there are {len(x)} (0 to {len(x) - 1})")
    if args.dims:
        bad = [d for d in args.dims if d >= model.latent_dim]
        if bad:
            raise VaelabError(f"--dims {bad[0]} is not a latent dimension of {args.run}: it has {model.latent_dim} (0 to {model.latent_dim - 1})")
    t = traverse(model, x, example=args.example, dims=args.dims, span=args.span, steps=args.steps)
    path = traversal_figure(t, args.output or Path(args.run) / "traversal.png")
    unit = " nats" if t.score_name == "KL" else ""
    order = "in the order given" if args.dims else f"ordered by {t.score_name}, largest first"
    print(f"{len(t.dims)} latent dimensions {order} ({t.score_name} per dimension, mean over {len(x)} test examples"
          f"{'' if t.score_name == 'KL' else ': the posterior or prior has no KL per dimension, activity is Cov_x E[z_d|x]'}):")  # fmt: skip
    print("  " + ", ".join(f"z{d} {s:.3f}{unit}" for d, s in zip(t.dims, t.scores)))
    print(f"each swept over [-{args.span:g}, +{args.span:g}] prior standard deviations around the prior mean, the "
          f"others at test example {args.example}'s posterior mean: {path}")  # fmt: skip
    return 0


def add_interpolate_parser(subparsers: argparse._SubParsersAction) -> None:
    """`vaelab interpolate` and its flags."""
    p = subparsers.add_parser("interpolate", help="decoded interpolation between two test examples' codes",
                              description="Decodes --steps points on the path from test example I's posterior mean to "
                              "test example J's: a great-circle arc (spherical interpolation) when the prior is N(0, I), "
                              "a straight line otherwise; the output and the figure title say which. The two examples "
                              "themselves frame the row.")  # fmt: skip
    p.add_argument("run", metavar="RUN")
    add_trust_flag(p)
    add_device_flag(p)
    p.add_argument("--from", dest="start", metavar="I", type=int, required=True, help="index of the first test example")
    p.add_argument("--to", dest="end", metavar="J", type=int, required=True, help="index of the last test example")
    p.add_argument("--steps", type=int, default=10, help="decoded points, both ends included (default: 10)")
    p.add_argument("-o", "--output", metavar="FILE.png", help="image file (default: RUN/interpolation.png)")


def cmd_interpolate(args: argparse.Namespace) -> int:
    from ..report.figures import interpolate, interpolation_figure
    from ..runs.rundir import load_data

    if args.steps < 2:
        raise VaelabError(f"--steps must be at least 2, got {args.steps}")
    for flag, i in (("--from", args.start), ("--to", args.end)):
        if i < 0:
            raise VaelabError(f"{flag} must be a test example index, counted from 0, got {i}")
    config, model = _pictures_model(args, "vaelab interpolate")
    x = load_data(config, "test", limit=max(args.start, args.end) + 1).fixed()
    for flag, i in (("--from", args.start), ("--to", args.end)):
        if i >= len(x):
            raise VaelabError(f"{flag} {i} is not a test example of {args.run}: there are {len(x)} (0 to {len(x) - 1})")
    result = interpolate(model, x, args.start, args.end, steps=args.steps)
    path = interpolation_figure(result, args.output or Path(args.run) / "interpolation.png", x)
    why = "great-circle arc: the prior is N(0, I)" if result.method == "spherical" else "straight line: the prior is not N(0, I)"
    print(f"{result.method} interpolation ({why}) in {args.steps} steps between the posterior means of test examples "
          f"{args.start} and {args.end}: {path}")  # fmt: skip
    return 0
