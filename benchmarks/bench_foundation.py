"""Speed of vaelab's trainer and evaluator against minimal plain-PyTorch code, side by side, and
against the machine's own fp32 matrix-multiply peak.

Protocol: Burda et al.'s one-stochastic-layer MLP VAE (784-200-200-50, tanh,
Bernoulli logits) on all 60,000 Fashion-MNIST training images, dynamic binarization, batch 100,
Adam 1e-3; evaluation = importance-sampled log p(x) at K=5000 on the first 1000 test images;
IWAE with k=50 particles trained on the same data.

Training epochs of vaelab's Trainer and of a plain loop alternate in one process, so both see the
same machine load; the evaluator and a minimal vectorized estimator score the same trained model,
alternating on blocks of 50 images. Figures are medians and ratios (the machines are shared and
noisy). Each figure is also given as achieved GFLOP/s and as a share of the fp32 GEMM peak
measured here, with the threads in use (large square matrix products, the best of several, at the start and at
the end of the run). The peak memory of evaluation is that of a fresh child process that loads
the trained weights and the test images and runs the evaluator (its peak resident set, VmHWM:
everything the process ever held, the interpreter and torch included).

    python benchmarks/bench_foundation.py [--epochs 3] [--eval-images 1000] [--k 5000]
        [--compile auto|on|off] [--iwae-k 50] [--json FILE]

Needs the Fashion-MNIST files (apt-get install dataset-fashion-mnist, or any location
``vaelab.load_split`` searches).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import vaelab
from vaelab.core.files import load_weights, save_model
from vaelab.inference.objectives import get_objective
from vaelab.models import build_model
from vaelab.runs import config as cfg
from vaelab.runs.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]

HIDDEN = (200, 200)
LATENT = 50


# -- floating-point operations, counted analytically -------------------------------------
#
# Only the matrix products are counted (2 m n k for an (m, k) x (k, n) product): they are
# almost all of the arithmetic, and the elementwise work (tanh, softplus, Adam) is a few per
# cent of it. A dense layer of n_in -> n_out on r rows costs 2 r n_in n_out forward; its
# backward pass costs twice that (the gradient of its input and of its weights). Training is
# counted as 3 x forward for every layer, the usual convention (the 152.5 GFLOP per epoch of
# issue 13); autograd skips the input gradient of the encoder's first layer, whose input is the
# data, so the products actually computed are 12% fewer and the shares of peak below are
# slightly generous for training.


def layer_sizes(n_data: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(n_in, n_out) of the encoder's and the decoder's dense layers."""
    enc = [n_data, *HIDDEN, 2 * LATENT]
    dec = [LATENT, *reversed(HIDDEN), n_data]
    return list(zip(enc[:-1], enc[1:])), list(zip(dec[:-1], dec[1:]))


def forward_flops(layers: list[tuple[int, int]], rows: int) -> float:
    return float(sum(2 * rows * a * b for a, b in layers))


def training_flops(n_data: int, examples: int, particles: int = 1) -> float:
    """FLOPs of training on ``examples`` examples with ``particles`` decoder rows per example:
    3 x (encoder forward on the examples + decoder forward on examples x particles)."""
    enc, dec = layer_sizes(n_data)
    return 3 * (forward_flops(enc, examples) + forward_flops(dec, examples * particles))


def evaluation_flops(n_data: int, images: int, k: int) -> float:
    """FLOPs of the importance-sampled log p(x): the decoder on K rows per image (the encoder's
    one row per image is negligible and counted too)."""
    enc, dec = layer_sizes(n_data)
    return forward_flops(enc, images) + forward_flops(dec, images * k)


def gemm_peak(size: int = 2048, seconds: float = 1.0) -> float:
    """The best fp32 GFLOP/s of (size x size) x (size x size) products with the threads in use."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    out = torch.empty(size, size)
    torch.mm(a, b, out=out)  # warm-up: thread pool, pages of out
    best = 0.0
    stop = time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        elapsed = time.perf_counter() - start
        best = max(best, 2 * size**3 / elapsed / 1e9)
        if time.perf_counter() > stop:
            return best


def step_gemm_rate(n_data: int, batch: int = 100, seconds: float = 1.0) -> float:
    """GFLOP/s of a training step's matrix products alone, at their own shapes: per dense layer the
    forward product, the weight gradient and (but for the first layer) the input gradient. The
    best of repeated passes: what the products of a step can reach with nothing else running."""
    enc, dec = layer_sizes(n_data)
    work = []
    for i, (a, b) in enumerate([*enc, *dec]):
        x, w, bias, g = torch.randn(batch, a), torch.randn(b, a), torch.randn(b), torch.randn(batch, b)
        work.append(lambda x=x, w=w, bias=bias: torch.addmm(bias, x, w.t()))
        work.append(lambda x=x, g=g: g.t().mm(x))
        if i != 0:
            work.append(lambda w=w, g=g: g.mm(w))
    flops = training_flops(n_data, batch) - 2 * batch * enc[0][0] * enc[0][1]  # no input gradient of the data
    best, stop = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        start = time.perf_counter()
        for product in work:
            product()
        best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


def _best_seconds(fn, repeats: int = 3) -> float:
    """The least wall-clock time of ``repeats`` calls of ``fn`` (after one warm-up call)."""
    fn()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def train_parts(train, n_data: int, gemm_rate: float, batch: int = 100) -> dict:
    """Seconds per training epoch of the parts every implementation of the protocol runs, each alone
    and at its best: the matrix products of the steps (at ``gemm_rate`` GFLOP/s, ``step_gemm_rate``'s
    measurement), Adam's fused kernel on the model's parameters, and the data (the permutation, the
    dynamic binarization draw and the batches). Their sum bounds from below what a step made of
    these parts can take."""
    steps = math.ceil(len(train) / batch)
    flops = training_flops(n_data, len(train)) - steps * 2 * batch * n_data * HIDDEN[0]  # no input gradient of the data
    products = flops / (gemm_rate * 1e9)
    from vaelab.runs.speed import adam_step

    model = build_vae(train.event_shape)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    adam = _best_seconds(lambda: [adam_step(opt) for _ in range(100)]) * steps / 100
    generator = torch.Generator().manual_seed(0)
    data = _best_seconds(lambda: [b for b in train.batches(batch, generator=generator, shuffle=True)], repeats=2)
    return {"products": products, "adam": adam, "data": data, "sum": products + adam + data}


def eval_products_seconds(model: nn.Module, images: int, k: int, rows: int = 1000) -> float:
    """Seconds of the decoder's matrix products alone (with their biases) for ``images`` images at
    K = ``k``, in chunks of ``rows`` rows as the evaluator runs them: the least time any IS
    estimator of the protocol can take."""
    layers = [m for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    outs = [torch.empty(rows, layer.out_features) for layer in layers]
    z = torch.randn(rows, layers[0].in_features)

    def chunk() -> None:
        h = z
        for layer, out in zip(layers, outs):
            torch.addmm(layer.bias, h, layer.weight.t(), out=out)
            h = out

    with torch.no_grad():
        per_chunk = _best_seconds(lambda: [chunk() for _ in range(10)]) / 10
    return per_chunk * images * k / rows


# -- the plain-PyTorch reference: what a user would write by hand --------------------------


class PlainVAE(nn.Module):
    def __init__(self, n_data: int = 784) -> None:
        super().__init__()
        h1, h2 = HIDDEN
        self.enc = nn.Sequential(nn.Linear(n_data, h1), nn.Tanh(), nn.Linear(h1, h2), nn.Tanh(), nn.Linear(h2, 2 * LATENT))
        self.dec = nn.Sequential(nn.Linear(LATENT, h2), nn.Tanh(), nn.Linear(h2, h1), nn.Tanh(), nn.Linear(h1, n_data))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.enc(x).chunk(2, dim=1)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        logits = self.dec(z)
        rec = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return -(rec - kl).mean()


def plain_epoch(model: PlainVAE, opt: torch.optim.Optimizer, x_grey: torch.Tensor, batch: int = 100) -> float:
    start = time.perf_counter()
    perm = torch.randperm(x_grey.shape[0])
    for i in range(0, x_grey.shape[0], batch):
        xb = torch.bernoulli(x_grey[perm[i : i + batch]])
        loss = model.loss(xb)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def plain_decoder(model: nn.Module) -> nn.Sequential:
    """The model's decoder as a user would write it (nn.Linear and nn.Tanh), with its weights:
    the minimal estimator must not run on vaelab's own layers, whose speed is what is measured."""
    layers = [m for m in model.decoder.modules() if isinstance(m, nn.Linear)]
    plain: list[nn.Module] = []
    for i, layer in enumerate(layers):
        copy = nn.Linear(layer.in_features, layer.out_features)
        copy.load_state_dict(layer.state_dict())
        plain += [copy, nn.Tanh()] if i < len(layers) - 1 else [copy]
    return nn.Sequential(*plain)


@torch.inference_mode()
def plain_log_likelihood(model: nn.Module, x: torch.Tensor, k: int, decoder: nn.Module | None = None) -> torch.Tensor:
    """A minimal vectorized IS estimator: all K particles of one image in one pass (``decoder``: the
    model's as ``plain_decoder`` copies it, built before the caller seeds the draws)."""
    results = []
    log_2pi = math.log(2 * math.pi)
    decoder = plain_decoder(model) if decoder is None else decoder
    for xi in x:
        q = model.encode(xi[None])
        mean, std = q.mean[0], q.stddev[0]
        eps = torch.randn(k, mean.shape[0])
        z = mean + std * eps
        logits = decoder(z).view(k, -1)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, xi.view(1, -1).expand(k, -1), reduction="none").sum(1)
        log_pz = -0.5 * (z.pow(2) + log_2pi).sum(1)
        log_qz = -0.5 * (eps.pow(2) + log_2pi).sum(1) - std.log().sum()
        results.append(torch.logsumexp(log_px_z + log_pz - log_qz, 0) - math.log(k))
    return torch.stack(results)


def build_vae(event_shape: tuple[int, ...]) -> nn.Module:
    return build_model("vae", event_shape, likelihood="bernoulli", net="mlp", hidden=HIDDEN,
                       activation="tanh", latent_dim=LATENT, obs_precision=1.0)  # fmt: skip


# -- the peak memory of evaluation, in a fresh process --------------------------------------


def _memory_child(argv: Sequence[str]) -> None:
    """Loads the weights and the test images, runs the evaluator, prints the peak RSS (MB)."""
    weights, data, images, k, threads = argv[0], argv[1], int(argv[2]), int(argv[3]), int(argv[4])
    torch.set_num_threads(threads)
    test = vaelab.load_split(data, "test", binarize="threshold", limit=images)
    x = test.fixed()
    model = build_vae(test.event_shape)
    load_weights(model, weights)
    before = _peak_rss_mb()
    vaelab.log_likelihood(model, x, k=k)
    print(json.dumps({"peak_mb": _peak_rss_mb(), "before_mb": before}))


def _peak_rss_mb() -> float:
    """The process's peak resident memory: VmHWM of /proc/self/status on Linux. Not ru_maxrss, which
    a child started from a large process inherits from its parent's memory across fork and exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20  # kB on Linux, bytes on macOS


def evaluation_memory(model: nn.Module, data: str, images: int, k: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.safetensors"
        save_model(weights, model)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        command = [sys.executable, str(Path(__file__).resolve()), "--memory-child", str(weights), data, str(images), str(k),
                   str(torch.get_num_threads())]  # fmt: skip
        out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the run -------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of each loop (default 3)")
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--eval-repeats", type=int, default=1, help="runs of each estimator over all images (default 1)")
    parser.add_argument("--eval-blocks", type=int, default=20, help="blocks of images the estimators alternate on (default 20)")
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"), help="the Trainer's compile= (default auto)")
    parser.add_argument("--iwae-k", type=int, default=50, help="particles of the IWAE training figure (0: skip it)")
    parser.add_argument("--iwae-steps", type=int, default=30, help="timed IWAE steps (after as many warm-up steps)")
    parser.add_argument("--data", default="fashion-mnist", help="dataset name (the protocol's is fashion-mnist)")
    parser.add_argument("--limit", type=int, default=None, help="training images (default: all)")
    parser.add_argument("--gemm-size", type=int, default=2048, help="side of the square products of the peak")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: PyTorch's choice); the peak "
                        "is measured with the same number")
    parser.add_argument("--keep-denormals", action="store_true", help="do not flush denormal floats to zero "
                        "(vaelab train flushes them; earlier versions of this script did not)")
    parser.add_argument("--no-memory", action="store_true", help="skip the evaluation-memory child process")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--memory-child"]:
        _memory_child(argv[1:])
        return 0
    args = _parser().parse_args(argv)
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, flush=True))
    # as `vaelab train` does, before PyTorch's worker threads start (they inherit it then only):
    # denormal floats flushed to zero, for every loop measured here alike
    torch.set_flush_denormal(not args.keep_denormals)
    if args.threads:
        torch.set_num_threads(args.threads)

    peaks = [gemm_peak(args.gemm_size)]
    torch.manual_seed(0)
    train = vaelab.load_split(args.data, "train", binarize="dynamic", valid_fraction=0.0, limit=args.limit)
    test = vaelab.load_split(args.data, "test", binarize="threshold", limit=args.eval_images)
    x_grey = train.x.view(len(train), -1)
    n_data = x_grey.shape[1]

    model = build_vae(train.event_shape)
    config = cfg.TrainConfig(epochs=args.epochs + 1, batch_size=100, lr=1e-3)
    # compile= where the Trainer has it, so the script also measures older versions (the README's "before")
    speed = {"compile": args.compile} if "compile" in inspect.signature(Trainer).parameters else {}
    trainer = Trainer(model, get_objective("elbo"), train, None, config, progress=False, **speed)
    plain = PlainVAE(n_data)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)

    # epoch 0 of each loop warms up (and, with compile, compiles); it is reported, not timed
    warm_ours = trainer.train_epoch(1)["train_seconds"]
    warm_theirs = plain_epoch(plain, plain_opt, x_grey)
    say(f"warm-up epoch: vaelab {warm_ours:.2f} s, plain loop {warm_theirs:.2f} s")
    ours, theirs = [], []
    for epoch in range(1, args.epochs + 1):
        ours.append(trainer.train_epoch(epoch + 1)["train_seconds"])
        theirs.append(plain_epoch(plain, plain_opt, x_grey))
        say(f"epoch {epoch}: vaelab {ours[-1]:.2f} s, plain loop {theirs[-1]:.2f} s")

    peaks.append(gemm_peak(args.gemm_size))  # the peak is sampled between the phases too: its best is the machine's
    x = test.fixed()
    n = x.shape[0]
    # The two estimators alternate block by block of images (the order flipped every block), so a
    # burst of load on a shared machine falls on both alike; each block starts from the same seed
    # for both, so they draw the same numbers.
    t_ours, t_ref = [], []
    blocks = range(0, n, math.ceil(n / args.eval_blocks))
    decoder = plain_decoder(model)  # its layers' initialization draws random numbers: before the seeds
    for repeat in range(args.eval_repeats):
        seconds = {"ours": 0.0, "ref": 0.0}
        ours_ll, ref_ll, ours_se = [], [], []
        for b, i in enumerate(blocks):
            xb = x[i : i + math.ceil(n / args.eval_blocks)]
            for who in (("ours", "ref") if b % 2 == 0 else ("ref", "ours")):
                torch.manual_seed(1000 * repeat + b)
                start = time.perf_counter()
                if who == "ours":
                    est = vaelab.log_likelihood(model, xb, k=args.k)
                    ours_ll.append(est.log_likelihood)
                    ours_se.append(est.stderr)
                else:
                    ref_ll.append(plain_log_likelihood(model, xb, args.k, decoder))
                seconds[who] += time.perf_counter() - start
        t_ours.append(seconds["ours"])
        t_ref.append(seconds["ref"])
        say(f"evaluation: vaelab {t_ours[-1]:.2f} s, minimal estimator {t_ref[-1]:.2f} s")
    ll, ref, stderr = torch.cat(ours_ll), torch.cat(ref_ll), torch.cat(ours_se)
    se = float(stderr.square().sum().sqrt() / n)

    peaks.append(gemm_peak(args.gemm_size))
    memory = None if args.no_memory else evaluation_memory(model, args.data, n, args.k)

    iwae = None
    if args.iwae_k > 0:
        iwae_model = build_vae(train.event_shape)
        part = vaelab.load_split(args.data, "train", binarize="dynamic", valid_fraction=0.0,
                                 limit=min(len(train), 100 * args.iwae_steps))  # fmt: skip
        # the subset's short epochs would keep compile="auto" eager; decide as for the whole data set
        iwae_speed = dict(speed)
        if speed.get("compile") == "auto":
            from vaelab.runs.speed import compile_refusal

            full = compile_refusal(iwae_model, steps_per_epoch=math.ceil(len(train) / 100), scheduled=False, auto=True,
                                   particles=args.iwae_k)  # fmt: skip
            iwae_speed["compile"] = "on" if full is None else "off"
        iwae_trainer = Trainer(iwae_model, get_objective("iwae", k=args.iwae_k), part, None,
                               cfg.TrainConfig(epochs=2, batch_size=100, lr=1e-3), progress=False, **iwae_speed)  # fmt: skip
        iwae_trainer.train_epoch(1)  # warm-up (and compile)
        record = iwae_trainer.train_epoch(2)
        seconds = record["train_seconds"]
        flops = training_flops(n_data, len(part), args.iwae_k)
        iwae = {"k": args.iwae_k, "steps": math.ceil(len(part) / 100), "seconds": seconds, "gflops": flops / 1e9,
                "compiled": iwae_trainer.compiled if hasattr(iwae_trainer, "compiled") else False}
        say(f"IWAE k={args.iwae_k}: {seconds / iwae['steps'] * 1e3:.1f} ms per step ({iwae['steps']} timed steps)")

    step_gemm = step_gemm_rate(n_data)  # one measurement: the products-alone row and the parts' floor
    parts = train_parts(train, n_data, step_gemm)
    eval_products = eval_products_seconds(model, n, args.k)
    peaks.append(gemm_peak(args.gemm_size))
    peak = max(peaks)
    epoch_flops = training_flops(n_data, len(train))
    eval_flops = evaluation_flops(n_data, n, args.k)

    def rate(flops: float, seconds: float) -> dict:
        return {"gflops_per_s": flops / seconds / 1e9, "percent_of_peak": 100 * flops / seconds / 1e9 / peak}

    s_ours, s_theirs = statistics.median(ours), statistics.median(theirs)
    e_ours, e_ref = statistics.median(t_ours), statistics.median(t_ref)
    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "load_average": os.getloadavg()[0],
        "gemm_peak_gflops_per_s": peak,
        "gemm_peaks_measured": peaks,
        "compile": args.compile,
        "flush_denormal": not args.keep_denormals,
        "compiled": getattr(trainer, "compiled", False),
        "step_products_alone": {"gflops_per_s": step_gemm, "percent_of_peak": 100 * step_gemm / peak},
        "train_epoch_gflop": epoch_flops / 1e9,
        "train_floor_seconds": epoch_flops / 1e9 / peak,
        "train_warmup_seconds_vaelab": warm_ours,
        "train_warmup_seconds_plain": warm_theirs,
        "train_epoch_seconds_vaelab": s_ours,
        "train_epoch_seconds_plain": s_theirs,
        "train_ratio_vaelab_over_plain": s_ours / s_theirs,
        "train_speedup_vaelab_over_plain": s_theirs / s_ours,
        "train_vaelab": rate(epoch_flops, s_ours),
        "train_plain": rate(epoch_flops, s_theirs),
        # what the parts alone take (train_parts, eval_products_seconds): the most any implementation
        # built from them could reach against the same plain loop and minimal estimator
        "train_parts_seconds": parts,
        "train_speedup_ceiling": s_theirs / parts["sum"],
        "train_percent_of_peak_ceiling": 100 * epoch_flops / parts["sum"] / 1e9 / peak,
        "eval_products_alone_seconds": eval_products,
        "eval_speedup_ceiling": e_ref / eval_products,
        "eval_gflop": eval_flops / 1e9,
        "eval_floor_seconds": eval_flops / 1e9 / peak,
        "eval_seconds_vaelab": e_ours,
        "eval_seconds_minimal": e_ref,
        "eval_ratio_vaelab_over_minimal": e_ours / e_ref,
        "eval_speedup_vaelab_over_minimal": e_ref / e_ours,
        "eval_vaelab": rate(eval_flops, e_ours),
        "eval_minimal": rate(eval_flops, e_ref),
        "eval_peak_memory_mb": None if memory is None else memory["peak_mb"],
        "eval_memory_before_mb": None if memory is None else memory["before_mb"],
        "eval_log_likelihood_vaelab": float(ll.mean()),
        "eval_log_likelihood_minimal": float(ref.mean()),
        "eval_stderr": se,
        "iwae": None if iwae is None else {**iwae, **rate(iwae["gflops"] * 1e9, iwae["seconds"])},
        "epochs": args.epochs,
        "eval_images": n,
        "k": args.k,
        "train_images": len(train),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
