"""What each of issue 13's speed changes buys, each measured against the code it replaced, side by
side in one process: the README's table of shares.

Each pair (before, after) is timed alternately, ``--reps`` times, and the medians are printed. The
"before" variants are the replaced code, kept here: the autograd ELBO step and ``optimizer.step()``
(against ``fused.FusedELBO`` and ``speed.adam_step``), the evaluator's distribution objects (against
``fused.FusedLogWeights``), ``nn.Tanh``, ``Independent(Bernoulli)``, the Pareto k-hat's loop over grid
points, one ``torch.rand`` of the whole split per pass, and the eager training step; the evaluator
of commit 406c2ad is read from this checkout's git history (``_previous_module``) rather than kept. The rows of the
older changes are measured on the paths they changed (the autograd step, the distributions' evaluator). Times are CPU time of the calling thread with one thread (``--threads 1``), which the
other processes of a shared machine disturb least; the compiled step is also timed with two threads
(wall clock), where its fewer kernels matter more.

    python benchmarks/bench_speed_changes.py [--reps 5] [--threads 1] [--no-compile] [--json FILE]
"""

from __future__ import annotations

import argparse
import importlib
import json
import statistics
import sys
import time
from typing import Callable, Sequence

import torch
from torch import nn
from torch.distributions import Bernoulli, Independent

import vaelab
from vaelab.distributions import observation as distributions
from vaelab.inference.objectives import get_objective
from vaelab.models import build_model, fused
from vaelab.nets import backbones as nets
from vaelab.runs.speed import adam_step

evaluate = importlib.import_module("vaelab.evaluate")  # the module (vaelab.evaluate is also a function)


def _old_bernoulli(self, out: torch.Tensor):
    return Independent(Bernoulli(logits=out.squeeze(-self.event_ndim - 1), validate_args=False), self.event_ndim,
                       validate_args=False)  # fmt: skip


def _old_zhang_stephens(x: torch.Tensor) -> torch.Tensor:
    import math

    m = x.shape[0]
    grid = 30 + int(math.sqrt(m))
    x_star = x[int(m / 4 + 0.5) - 1].clamp_min(1e-250)
    j = torch.arange(1, grid + 1, dtype=x.dtype, device=x.device)
    theta = 1 + (1 - torch.sqrt(grid / (j - 0.5)))[:, None] / (3 * x_star)
    profile = torch.empty_like(theta)
    for g in range(grid):
        kg = torch.log1p(-theta[g] * x).mean(0)
        profile[g] = m * (torch.log(-theta[g] / kg) - kg - 1)
    theta_hat = (torch.softmax(profile, dim=0) * theta).sum(0)
    k = torch.log1p(-theta_hat * x).mean(0)
    return (m * k + 10 * 0.5) / (m + 10)


class _NoFusedLogWeights:
    """What ``evaluate.FusedLogWeights`` was before it existed: no model takes the fused path."""

    @staticmethod
    def build(model: nn.Module) -> None:
        return None


def _clock() -> float:
    return time.thread_time() if torch.get_num_threads() == 1 else time.perf_counter()


def _pair(before: Callable[[], None], after: Callable[[], None], reps: int, per: int = 1) -> tuple[float, float]:
    times: dict[str, list[float]] = {"before": [], "after": []}
    before(), after()  # warm-up
    for _ in range(reps):
        for name, fn in (("before", before), ("after", after)):
            start = _clock()
            for _ in range(per):
                fn()
            times[name].append((_clock() - start) / per)
    return statistics.median(times["before"]), statistics.median(times["after"])


SOFTPLUS_SUM = ("sum softplus(l) as (sum l + sum abs(l)) / 2 - sum of logs of products of 112 sigmoid(abs(l)) "
                "(sum l / 2 + fused.log_cosh_sum_)")


def _softplus_sum(logits: torch.Tensor) -> torch.Tensor:
    """sum softplus(l) over the last dimension as sum l / 2 + sum log(2 cosh(l / 2)), overwriting ``logits``."""
    half = logits.sum(-1).mul_(0.5)
    return fused.log_cosh_sum_(logits).add_(half)


def _previous_module(name: str, commit: str):
    """The module ``vaelab.<name>`` as it was at ``commit`` (read with git from this checkout), or
    None where git or the commit is not at hand: a replaced version measured without keeping a
    copy of its code here."""
    import subprocess
    import types
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        source = subprocess.run(["git", "show", f"{commit}:vaelab/{name}.py"], cwd=root, capture_output=True,
                                text=True, check=True).stdout  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return None
    # that commit's flat layout: its relative imports name the modules at their present homes
    import re

    import vaelab

    homes = {old: found[0] for old, found in vaelab._MOVED.items()}
    homes.update(data="data", nets="nets.backbones", distributions="distributions.observation",
                 runs="runs.rundir", report="report.figures")
    source = re.sub(r"from \.([a-z_]+)", lambda m: f"from vaelab.{homes.get(m.group(1), m.group(1))}", source)
    source = re.sub(r"\b_(Unflatten|Expanded|eval_mode)\b", r"\1", source)  # made public since
    module = types.ModuleType(f"vaelab._{name}_{commit}")
    module.__package__ = "vaelab"
    exec(compile(source, f"{commit}:vaelab/{name}.py", "exec"), module.__dict__)
    return module


def _swap(owner: object, name: str, value: object) -> Callable[[], None]:
    old = getattr(owner, name)
    setattr(owner, name, value)
    return lambda: setattr(owner, name, old)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--images", type=int, default=2, help="test images of the evaluation timings")
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    torch.set_flush_denormal(True)  # as vaelab train does: IWAE steps from initialization are slow otherwise
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    test = vaelab.load_split(args.data, "test", binarize="threshold", limit=args.images)
    train = vaelab.load_split(args.data, "train", binarize="dynamic", valid_fraction=0.0)
    shape = test.event_shape
    model = build_model("vae", shape, likelihood="bernoulli", net="mlp", hidden=(200, 200), activation="tanh",
                        latent_dim=50, obs_precision=1.0)  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x_test = test.fixed()
    batch = train.fixed()[:100]
    n = x_test.shape[0]

    def evaluation() -> None:
        vaelab.log_likelihood(model, x_test, k=args.k)

    def step(objective: Callable) -> Callable[[], None]:
        def run() -> None:
            loss = -objective(model, batch).objective.mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return run

    elbo, iwae = step(get_objective("elbo")), step(get_objective("iwae", k=50))
    fused_step = fused.FusedELBO.build(model, get_objective("elbo"))

    def elbo_fused() -> None:
        fused_step.step(batch)
        adam_step(opt)

    without_fused_evaluation = [(evaluate, "FusedLogWeights", _NoFusedLogWeights)]
    rows: list[dict] = []

    def row(change: str, where: str, before: Callable, after: Callable, per: int = 1, scale: float = 1e3) -> None:
        b, a = _pair(before, after, args.reps, per)
        rows.append({"change": change, "where": where, "before": b * scale, "after": a * scale})
        print(f"{change} | {where} | {b * scale:.2f} | {a * scale:.2f}", flush=True)

    def with_old(swaps: list[tuple[object, str, object]], fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            undo = [_swap(*s) for s in swaps]
            try:
                fn()
            finally:
                for u in reversed(undo):
                    u()

        return run

    evaluation_distributions = with_old(without_fused_evaluation, evaluation)
    row("hand-derived ELBO step (fused.FusedELBO) and Adam's kernel called directly", "ELBO step, ms",
        elbo, elbo_fused, per=20)  # fmt: skip
    row("Adam's fused kernel called directly (speed.adam_step)", "Adam step, ms", lambda: opt.step(), lambda: adam_step(opt),
        per=50)  # fmt: skip
    row("evaluator particles without distribution objects (fused.FusedLogWeights)",
        f"evaluation, ms per image (K={args.k})", evaluation_distributions, evaluation, scale=1e3 / n)  # fmt: skip
    previous = _previous_module("fused", "406c2ad")
    if previous is not None:

        class Before(previous.FusedLogWeights):  # its call as evaluate.log_likelihood makes it now
            def fold(self, x: torch.Tensor) -> None:
                return None

            def __call__(self, x, q, k, log_w, log_px, folded=None) -> None:  # noqa: ANN001
                super().__call__(x, q, k, log_w, log_px)

        row("evaluator: tanh's affine map folded into the next layer, (x - 1/2) . l through the hidden layer "
            "once per example (fused.FusedLogWeights, against commit 406c2ad's)", f"evaluation, ms per image (K={args.k})",
            with_old([(evaluate, "FusedLogWeights", Before)], evaluation), evaluation,
            scale=1e3 / n)  # fmt: skip
    old_tanh = [(nets.Tanh, "forward", nn.Tanh.forward)]
    old_bernoulli = [(distributions.BernoulliObservation, "forward", _old_bernoulli)]
    row("tanh as 2 sigmoid(2x) - 1", f"evaluation, ms per image (K={args.k})",
        with_old(old_tanh, evaluation_distributions), evaluation_distributions, scale=1e3 / n)  # fmt: skip
    row("tanh as 2 sigmoid(2x) - 1", "ELBO step, ms", with_old(old_tanh, elbo), elbo, per=20)
    bernoulli = "Bernoulli log-likelihood: sum x l as a matrix-vector product per example (K >= 8 particles)"
    row(bernoulli, f"evaluation, ms per image (K={args.k})", with_old(old_bernoulli, evaluation_distributions),
        evaluation_distributions, scale=1e3 / n)  # fmt: skip
    row(bernoulli, "IWAE(k=50) step, ms", with_old(old_bernoulli, iwae), iwae)
    log_w = torch.randn(args.k, 1) * 3
    khat = lambda: evaluate.pareto_khat(log_w)  # noqa: E731
    row("Pareto k-hat in one vectorized pass", f"per example at K={args.k}, ms",
        with_old([(evaluate, "_zhang_stephens", _old_zhang_stephens)], khat), khat, per=20)  # fmt: skip
    generator = torch.Generator().manual_seed(0)
    row("dynamic binarization into a kept bool tensor", f"one pass over {len(train)} images, s",
        lambda: torch.rand(train.x.shape, generator=generator) < train.x,
        lambda: train._draw_into_buffer(generator), scale=1.0)  # fmt: skip
    # tried and not kept: the "after" column is the alternative, the "before" one what vaelab does
    row("not kept: evaluation chunks of 2500 decoder rows instead of 1000", f"evaluation, ms per image (K={args.k})",
        evaluation, lambda: vaelab.log_likelihood(model, x_test, k=args.k, rows=2500), scale=1e3 / n)  # fmt: skip
    logits = torch.randn(1000, 784) * 4
    buffer = torch.empty_like(logits)
    row(SOFTPLUS_SUM, "(1000, 784) logits, ms", lambda: torch.nn.functional.softplus(logits).sum(-1),
        lambda: _softplus_sum(buffer.copy_(logits)), per=20)  # fmt: skip
    row("not kept: sum softplus(l) as sum max(l, 0) - sum log sigmoid(abs(l))", "(1000, 784) logits, ms",
        lambda: torch.nn.functional.softplus(logits).sum(-1),
        lambda: logits.clamp_min(0).sum(-1) - torch.sigmoid(logits.abs()).log_().sum(-1), per=20)  # fmt: skip

    def elementwise(logits: torch.Tensor, x: torch.Tensor, event_ndim: int) -> torch.Tensor:
        dims = tuple(range(-event_ndim, 0))
        return (logits * x).sum(dims) - torch.nn.functional.softplus(logits).sum(dims)

    row("not kept: x l - softplus(l) elementwise for one particle", "ELBO step, ms",
        elbo, with_old([(distributions, "bernoulli_log_prob", elementwise)], elbo), per=20)  # fmt: skip
    if not args.no_compile:
        options = {"dynamic": False, "options": {"fallback_random": True}}
        compiled_iwae = step(torch.compile(get_objective("iwae", k=50), **options))
        compiled_elbo = step(torch.compile(get_objective("elbo"), **options))
        for threads in sorted({args.threads, 2}):
            torch.set_num_threads(threads)
            row("torch.compile of the objective", f"IWAE(k=50) step, ms ({threads} thread(s))", iwae, compiled_iwae)
            row("torch.compile of the objective", f"ELBO step, ms ({threads} thread(s))", elbo, compiled_elbo, per=20)
        torch.set_num_threads(args.threads)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": args.threads, "reps": args.reps, "rows": rows}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
