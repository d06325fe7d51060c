"""Speed of vaelab's trainer and evaluator against minimal plain-PyTorch code, side by side.

Protocol: Burda et al.'s one-stochastic-layer MLP VAE (784-200-200-50, tanh,
Bernoulli logits) on all 60,000 Fashion-MNIST training images, dynamic binarization, batch 100,
Adam 1e-3; evaluation = importance-sampled log p(x) at K=5000 on the first 1000 test images.

Training epochs of vaelab's Trainer and of a plain loop alternate in one process, so both see the
same machine load; the evaluator and a minimal vectorized estimator score the same trained model.
Figures are medians and ratios (the machines are shared and noisy).

    python benchmarks/bench_foundation.py [--epochs 3] [--eval-images 1000] [--k 5000] [--json FILE]

Needs the Fashion-MNIST files (apt-get install dataset-fashion-mnist, or any location
``vaelab.load_split`` searches).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import vaelab
from vaelab import config as cfg
from vaelab.models import build_model
from vaelab.objectives import get_objective
from vaelab.train import Trainer


# -- the plain-PyTorch reference: what a user would write by hand --------------------------


class PlainVAE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Sequential(nn.Linear(784, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 100))
        self.dec = nn.Sequential(nn.Linear(50, 200), nn.Tanh(), nn.Linear(200, 200), nn.Tanh(), nn.Linear(200, 784))

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


@torch.inference_mode()
def plain_log_likelihood(model: nn.Module, x: torch.Tensor, k: int) -> torch.Tensor:
    """A minimal vectorized IS estimator: all K particles of one image in one pass."""
    results = []
    log_2pi = math.log(2 * math.pi)
    for xi in x:
        q = model.encode(xi[None])
        mean, std = q.mean[0], q.stddev[0]
        eps = torch.randn(k, mean.shape[0])
        z = mean + std * eps
        logits = model.decoder(z).view(k, -1)
        log_px_z = -F.binary_cross_entropy_with_logits(logits, xi.view(1, -1).expand(k, -1), reduction="none").sum(1)
        log_pz = -0.5 * (z.pow(2) + log_2pi).sum(1)
        log_qz = -0.5 * (eps.pow(2) + log_2pi).sum(1) - std.log().sum()
        results.append(torch.logsumexp(log_px_z + log_pz - log_qz, 0) - math.log(k))
    return torch.stack(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs of each loop (default 3)")
    parser.add_argument("--eval-images", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5000)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()

    torch.manual_seed(0)
    train = vaelab.load_split("fashion-mnist", "train", binarize="dynamic", valid_fraction=0.0)
    test = vaelab.load_split("fashion-mnist", "test", binarize="threshold", limit=args.eval_images)
    x_grey = train.x.view(len(train), -1)

    model = build_model("vae", (1, 28, 28), likelihood="bernoulli", net="mlp", hidden=(200, 200),
                        activation="tanh", latent_dim=50, obs_precision=1.0)
    config = cfg.TrainConfig(epochs=args.epochs, batch_size=100, lr=1e-3)
    trainer = Trainer(model, get_objective("elbo"), train, None, config, progress=False)
    plain = PlainVAE()
    plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3)

    ours, theirs = [], []
    for epoch in range(1, args.epochs + 1):
        ours.append(trainer.train_epoch(epoch)["train_seconds"])
        theirs.append(plain_epoch(plain, plain_opt, x_grey))
        print(f"epoch {epoch}: vaelab {ours[-1]:.2f} s, plain loop {theirs[-1]:.2f} s", flush=True)

    x = test.fixed()
    torch.manual_seed(1)
    start = time.perf_counter()
    est = vaelab.log_likelihood(model, x, k=args.k)
    t_ours = time.perf_counter() - start
    torch.manual_seed(1)
    start = time.perf_counter()
    ref = plain_log_likelihood(model, x, args.k)
    t_ref = time.perf_counter() - start
    n = x.shape[0]
    se = float(est.stderr.square().sum().sqrt() / n)

    result = {
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "train_epoch_seconds_vaelab": statistics.median(ours),
        "train_epoch_seconds_plain": statistics.median(theirs),
        "train_ratio_vaelab_over_plain": statistics.median(ours) / statistics.median(theirs),
        "eval_seconds_vaelab": t_ours,
        "eval_seconds_minimal": t_ref,
        "eval_ratio_vaelab_over_minimal": t_ours / t_ref,
        "eval_log_likelihood_vaelab": float(est.log_likelihood.mean()),
        "eval_log_likelihood_minimal": float(ref.mean()),
        "eval_stderr": se,
        "epochs": args.epochs,
        "eval_images": n,
        "k": args.k,
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
