"""The figures of issue 9's correctness review, measured the way the review measured them.

Run it against any checkout (``PYTHONPATH=<checkout> python benchmarks/bench_correctness.py``)
to compare a version before and after a fix; ``make bench-correctness`` runs it on this one.

1. Score-function ELBO with each prior: relative distance between the expected encoder gradient
   of ``elbo --grad-estimator score`` and that of ``reparam`` (both over ``--particles`` draws),
   with the Monte-Carlo noise of that distance (a 6-pixel Bernoulli VAE, hidden 8, latent 2,
   float64).
2. PIWAE(M=4, K=4) at initialisation, Gaussian likelihood on 20 dimensions, float32: relative
   error of its encoder gradient against MIWAE(4, 4)'s on the same particles, and of its decoder
   gradient against IWAE(16)'s, with the largest spread of the groups' log-sum-exps.
3. Free bits: derivative of each objective with respect to the log-variance of a latent dimension
   the decoder ignores (sigma = 0.5), without free bits and with free bits 5 (mean and standard
   error over repeated draws, float64).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

from vaelab.evaluation.diagnostics import parameter_groups
from vaelab.inference.estimators import sample_particles
from vaelab.inference.objectives import get_objective
from vaelab.runs import config as cfg
from vaelab.runs.rundir import model_from_config


def _model(likelihood, prior="standard", event=6, hidden=(8,), latent=2, **extra):
    model = {"likelihood": likelihood, "prior": prior, "hidden": list(hidden), "latent_dim": latent, **extra}
    return model_from_config(cfg.build({"model": model}), (event,))


def _flat(grads, params):
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(grads, params)])


def score_elbo(particles: int, chunks: int = 20) -> dict:
    out = {}
    for prior in ("standard", "mog:3", "vamp:3"):
        torch.manual_seed(0)
        model = _model("bernoulli", prior).double()
        with torch.no_grad():  # a posterior away from the prior
            last = [mod for mod in model.encoder.modules() if isinstance(mod, torch.nn.Linear)][-1]
            last.weight.mul_(3.0)
            last.bias.normal_(0.0, 0.5)
        x = (torch.rand(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64) < 0.5).double()
        enc = parameter_groups(model)["encoder"]
        row = {}
        for kl in ("analytic", "mc"):
            means = {}
            for estimator in ("score", "reparam"):
                f = get_objective("elbo", grad_estimator=estimator, kl=kl)
                torch.manual_seed(2)
                n = particles // (chunks * x.shape[0])
                draws = torch.stack([
                    _flat(torch.autograd.grad(f(model, x.repeat(n, 1)).objective.mean(), enc, allow_unused=True), enc)
                    for _ in range(chunks)
                ])  # fmt: skip
                means[estimator] = (draws.mean(0), draws.std(0) / math.sqrt(chunks))
            (a, sa), (b, sb) = means["score"], means["reparam"]
            row[kl] = {
                "relative_distance": ((a - b).norm() / b.norm()).item(),
                "noise": ((sa.square() + sb.square()).sum().sqrt() / b.norm()).item(),
            }
        out[prior] = row
    return out


def piwae_underflow() -> dict:
    out = {}
    for precision in (1.0, 100.0, 1000.0):
        torch.manual_seed(0)
        model = _model("gaussian", event=20, hidden=(32,), latent=4, obs_precision=precision)
        x = torch.rand(64, 20)
        groups = parameter_groups(model)

        def grads(name, **options):
            torch.manual_seed(7)
            value = get_objective(name, **options)(model, x).objective.mean()
            return {g: _flat(torch.autograd.grad(value, ps, retain_graph=True), ps) for g, ps in groups.items()}

        with torch.no_grad():
            torch.manual_seed(7)
            lse = torch.logsumexp(sample_particles(model, x, 16).log_weights.view(4, 4, -1), 1)
            spread = (lse.max(0).values - lse.min(0).values).max().item()
        piwae, miwae, iwae = grads("piwae", m=4, k=4), grads("miwae", m=4, k=4), grads("iwae", k=16)
        rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
        out[str(int(precision))] = {
            "encoder_relative_error": rel(piwae["encoder"], miwae["encoder"]),
            "decoder_relative_error": rel(piwae["decoder"], iwae["decoder"]),
            "max_group_spread_nats": spread,
        }
    return out


def free_bits_derivative(reps: int) -> dict:
    torch.manual_seed(0)
    model = _model("gaussian", event=5, hidden=(16,), latent=3, obs_precision=1.0).double()
    sigma = 0.5
    with torch.no_grad():  # latent dimension 0: ignored by the decoder, encoded N(0, sigma^2)
        enc_last = [mod for mod in model.encoder.modules() if isinstance(mod, torch.nn.Linear)][-1]
        dec_first = [mod for mod in model.decoder.modules() if isinstance(mod, torch.nn.Linear)][0]
        d = model.latent_dim
        for row in (0, d):  # mean and log-variance of dimension 0
            enc_last.weight[row] = 0.0
        enc_last.bias[0] = 0.0
        enc_last.bias[d] = 2 * math.log(sigma)
        dec_first.weight[:, 0] = 0.0
    x = torch.randn(32, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    out = {}
    for name, options in (("elbo", {}), ("iwae", {"k": 50})):
        for free_bits in (0.0, 5.0):
            f = get_objective(name, free_bits=free_bits, **options)
            torch.manual_seed(3)
            g = torch.stack([
                torch.autograd.grad(f(model, x).objective.mean(), enc_last.bias)[0][d] for _ in range(reps)
            ])  # fmt: skip
            out[f"{name}{options.get('k', '')} free_bits={free_bits:g}"] = {
                "derivative": g.mean().item(),
                "stderr": (g.std() / math.sqrt(reps)).item() if reps > 1 else None,
            }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=200_000, help="draws per expected gradient in figure 1")
    parser.add_argument("--reps", type=int, default=200, help="draws per free-bits derivative in figure 3")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    import vaelab

    results = {
        "vaelab": str(Path(vaelab.__file__).parent),
        "score_elbo_encoder_gradient": score_elbo(args.particles),
        "piwae_float32_underflow": piwae_underflow(),
        "free_bits_log_variance_derivative": free_bits_derivative(args.reps),
    }
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
