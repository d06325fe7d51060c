"""The figures of the second correctness review (AIS/BDMC, the VQ-VAE codebook, density and
coverage), measured the way the review measured them.

Run it against any checkout (``PYTHONPATH=<checkout> python benchmarks/bench_correctness2.py``) to
compare a version before and after the fixes; ``make bench-correctness2`` runs it on this one.

1. AIS weights on the exact 1-D linear-Gaussian model (one latent, one observed dimension), for one
   x: E[w] / p(x) of forward AIS and E[w_rev] p(x) of reverse AIS from exact posterior draws z*,
   one chain each, over ``--replicas`` independent runs (mean and standard error), at 10 and 100
   steps. Both are 1 for a valid AIS.
2. BDMC at ``bdmc()``'s defaults (1000 steps, 16 chains, 10 leapfrog steps) on ``--bdmc-n``
   examples simulated from that model, for three seeds: the lower and upper bounds minus the exact
   mean log p(x) (the lower must not be above, the upper not below, beyond their errors), and the
   reported ``bdmc_gap``.
3. The reported standard error of BDMC's upper bound against the true one: for 200 simulated
   examples at 10 and 100 steps, z* is redrawn exactly from p(z|x) 200 times per example and the
   spread of the mean upper bound over the redraws is the true error given the examples.
4. VQ-VAE codebook initialisation: codes that start as exact duplicates, K = 512 codes from the
   4,900 encoder outputs (100 images x 7 x 7) of a fresh resnet VQ-VAE on Fashion-MNIST's first
   100 training images, 20 seeds.
5. Coverage (Naeem et al. 2020) of 10,000 draws of N(0, I_64) against 10,000 others, a perfect
   model's score, at k = 3 and k = 5, beside its expectation 1 - prod_{i<k} (N-1-i) / (2N-1-i).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from vaelab.models.linear import LinearGaussian

ais_module = importlib.import_module("vaelab.ais")  # the module: vaelab.ais is also the function


def _model() -> LinearGaussian:
    """The 1-D linear-Gaussian model of the review: x = 1.5 z - 0.3 + 0.7 eps."""
    return LinearGaussian(torch.tensor([[1.5]], dtype=torch.float64), torch.tensor([-0.3], dtype=torch.float64), 0.7)


def _reverse(model, x, z, **options):
    """Reverse AIS from exact posterior draws z, by whichever function the checkout has."""
    if hasattr(ais_module, "reverse_ais"):
        return ais_module.reverse_ais(model, x, z, **options)
    # before the fix: the private runner of bdmc (a tqdm bar is all it needs besides the options)
    from tqdm.auto import tqdm

    defaults = dict(leapfrog=10, start="prior", schedule="sigmoid", target_accept=0.65, step_size=0.1, rows=1000)
    seed = options.pop("seed")
    with ais_module._seeded(seed, torch.device("cpu")), tqdm(disable=True) as bar:
        return ais_module._run(model, x, z, **{**defaults, **options}, bar=bar)


def _mean_se(values: torch.Tensor) -> tuple[float, float]:
    return float(values.mean()), float(values.std() / math.sqrt(len(values)))


def weights(replicas: int) -> dict:
    model = _model()
    x = torch.tensor([[0.8]], dtype=torch.float64).expand(replicas, 1)
    log_p = float(model.log_prob(x[:1]).detach())
    out = {}
    for steps in (10, 100):
        forward = ais_module.ais(model, x, steps=steps, chains=1, leapfrog=10, rows=replicas, seed=1)
        torch.manual_seed(2)
        with torch.no_grad():
            z = model.posterior(x).sample()  # (replicas, 1): exact draws from p(z|x)
        reverse = _reverse(model, x, z, steps=steps, chains=1, leapfrog=10, rows=replicas, seed=3)
        fw, fs = _mean_se((forward.log_weights[0] - log_p).exp())
        rw, rs = _mean_se((reverse.log_weights[0] + log_p).exp())
        out[str(steps)] = {"forward_E_w_over_p": fw, "forward_stderr": fs, "reverse_E_w_times_p": rw, "reverse_stderr": rs}
        print(f"  {steps} steps: E[w]/p(x) = {fw:.4f} +- {fs:.4f}, E[w_rev] p(x) = {rw:.4f} +- {rs:.4f}", file=sys.stderr)
    return out


def bdmc_defaults(n: int) -> dict:
    model = _model()
    out = {}
    for seed in (0, 1, 2):
        res = ais_module.bdmc(model, n, seed=seed)
        s = ais_module.summarize_bdmc(res)
        exact = float(model.log_prob(res.x).mean().detach())
        out[str(seed)] = {
            "lower_minus_exact": s["ais_lower"] - exact, "lower_stderr": s["ais_lower_stderr"],
            "upper_minus_exact": s["ais_upper"] - exact, "upper_stderr": s["ais_upper_stderr"],
            "bdmc_gap": s["bdmc_gap"], "true_error_of_lower": exact - s["ais_lower"],
        }  # fmt: skip
        print(f"  seed {seed}: {json.dumps(out[str(seed)])}", file=sys.stderr)
    return out


def upper_stderr(n: int = 200, redraws: int = 200) -> dict:
    model = _model()
    out = {}
    for steps in (10, 100):
        res = ais_module.bdmc(model, n, steps=steps, chains=16, leapfrog=10, seed=4)
        reported = ais_module.summarize_bdmc(res)["ais_upper_stderr"]
        x = res.x.repeat(redraws, 1)  # (redraws * n, 1): every example redraws its z*
        torch.manual_seed(5)
        with torch.no_grad():
            z = model.posterior(x).sample()
        upper = _reverse(model, x, z, steps=steps, chains=16, leapfrog=10, rows=16 * 4000, seed=6)
        means = upper.log_likelihood.view(redraws, n).mean(1)  # (redraws,): the mean upper bound per redraw
        true = float(means.std())
        out[str(steps)] = {"reported": reported, "true": true, "ratio": reported / true}
        print(f"  {steps} steps: reported {reported:.4f}, true {true:.4f} (ratio {reported / true:.2f})", file=sys.stderr)
    return out


def codebook_duplicates(seeds: int) -> dict:
    from vaelab.data.load import load_split
    from vaelab.runs import config as cfg
    from vaelab.runs.rundir import model_from_config

    x = load_split("fashion-mnist", "train", binarize="threshold", limit=100).fixed()
    config = cfg.build({"model": {"model": "vqvae", "net": "resnet", "codebook_size": 512, "code_dim": 64}})
    counts = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = model_from_config(config, tuple(x.shape[1:])).train()
        with torch.no_grad():
            model.quantize(x)
        book = model.quantizer.codebook
        counts.append(book.shape[0] - torch.unique(book, dim=0).shape[0])
    print(f"  duplicate codes at initialisation: mean {np.mean(counts):.1f}, {min(counts)}-{max(counts)}", file=sys.stderr)
    return {"mean": float(np.mean(counts)), "min": int(min(counts)), "max": int(max(counts)), "per_seed": counts}


def coverage_of_a_perfect_model(n: int = 10_000, d: int = 64) -> dict:
    from vaelab.evaluation.quality import manifold_metrics

    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)
    out = {}
    for k in (3, 5):
        try:
            metrics = manifold_metrics(real, fake, pr_k=k, dc_k=k)
        except TypeError:  # a checkout whose manifold_metrics takes one k for all four metrics
            metrics = manifold_metrics(real, fake, k)
        expected = 1 - math.prod((n - 1 - i) / (2 * n - 1 - i) for i in range(k))
        out[str(k)] = {"coverage": metrics["coverage"], "expected": expected, "density": metrics["density"]}
        print(f"  k = {k}: coverage {metrics['coverage']:.4f} (expected {expected:.4f})", file=sys.stderr)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=20_000, help="independent one-chain runs in figure 1")
    parser.add_argument("--bdmc-n", type=int, default=1000, help="simulated examples per seed in figure 2")
    parser.add_argument("--upper-n", type=int, default=200, help="simulated examples in figure 3")
    parser.add_argument("--redraws", type=int, default=200, help="exact redraws of z* per example in figure 3")
    parser.add_argument("--coverage-n", type=int, default=10_000, help="points per set in figure 5")
    parser.add_argument("--parts", default="weights,bdmc,upper,codebook,coverage")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    import vaelab

    parts = args.parts.split(",")
    results: dict = {"vaelab": str(Path(vaelab.__file__).parent)}
    for name, run in (("weights", lambda: weights(args.replicas)), ("bdmc", lambda: bdmc_defaults(args.bdmc_n)),
                      ("upper", lambda: upper_stderr(args.upper_n, args.redraws)),
                      ("codebook", lambda: codebook_duplicates(20)),
                      ("coverage", lambda: coverage_of_a_perfect_model(args.coverage_n))):  # fmt: skip
        if name in parts:
            print(name, file=sys.stderr)
            results[name] = run()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
