"""VampPrior training step: vaelab's mixture density (one float64 matrix product) against
``torch.distributions.MixtureSameFamily`` on the same model, alternating in one process.

    python benchmarks/bench_vamp.py --components 500 --steps 50 --rounds 5

Fashion-MNIST shapes (784 inputs, 200-200 ELU MLP, 50 latents, batch 100, random binary data),
ELBO with the Monte-Carlo KL, Adam. Reports the median ms per step of each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch.distributions import Categorical, Independent, MixtureSameFamily

from vaelab.inference.objectives import get_objective
from vaelab.models import build_model


class TorchMixtureVamp(torch.nn.Module):
    """The VampPrior written with torch's MixtureSameFamily (the reference)."""

    def __init__(self, vamp: torch.nn.Module) -> None:
        super().__init__()
        self.vamp = vamp

    def forward(self, model):
        components = model.encode(self.vamp.pseudo_inputs)
        assert isinstance(components, Independent)
        logits = torch.zeros(components.batch_shape[0])
        return MixtureSameFamily(Categorical(logits=logits, validate_args=False), components, validate_args=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--components", type=int, default=500)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)
    x = (torch.rand(100, 1, 28, 28) > 0.7).float()
    model = build_model("vae", (1, 28, 28), activation="elu", prior=f"vamp:{args.components}")
    ours, reference = model.latent_prior, TorchMixtureVamp(model.latent_prior)
    optimizer = torch.optim.Adam(model.parameters(), fused=True)
    objective = get_objective("elbo")

    def timed(prior) -> float:
        model.latent_prior = prior
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = -objective(model, x).objective.mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return (time.perf_counter() - start) / args.steps * 1000

    with torch.no_grad():  # the two densities agree
        model.latent_prior = reference
        z = torch.randn(3, 100, 50)
        diff = (ours(model).log_prob(z) - reference(model).log_prob(z)).abs().max().item()
    timed(ours), timed(reference)  # warm-up
    times = {"vaelab": [], "MixtureSameFamily": []}
    for _ in range(args.rounds):
        times["vaelab"].append(timed(ours))
        times["MixtureSameFamily"].append(timed(reference))
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"ms_per_step": med, "ratio": med["MixtureSameFamily"] / med["vaelab"], "max_log_prob_difference": diff,
           "components": args.components, "steps": args.steps, "rounds": args.rounds, "torch": torch.__version__}
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
            fh.write("\n")


if __name__ == "__main__":
    main()
