"""Model families: each registers what the rest of vaelab needs to know about it, so that training,
evaluation and the commands ask the family instead of branching on its name.

A family declares:
- ``likelihood``: what ``vaelab evaluate`` can estimate: "bound" (a VAE's log p(x), by importance
  sampling or AIS, and its bounds), "codes" (the VQ-VAE's log p(x|z_q) + log p(z_q), exact given
  x) or "none" (the adversarial models, judged by their samples);
- ``continuous_latent``: whether it has a continuous q(z|x) for the latent-space analyses
  (diagnose, gaps, traverse, interpolate, scores);
- ``objective(train_config)``: what it trains on: the configured objective, its own loss (the
  VQ-VAE's), or None where each player trains on its own loss;
- ``monitors(model)``: the per-epoch monitors of its runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..core.registry import Registry
from ..evaluation.diagnostics import CodebookMonitor, CollapseMonitor
from ..inference.objectives import get_objective, vq
from ..models.adversarial import ADVERSARIAL
from . import config as cfg

LIKELIHOODS = ("bound", "codes", "none")


@dataclass(frozen=True)
class Family:
    """What one model family supports (see the module docstring)."""

    name: str
    likelihood: str
    continuous_latent: bool
    objective: Callable[[cfg.TrainConfig], Callable[..., Any] | None]
    monitors: Callable[[nn.Module], list]

    def __post_init__(self) -> None:
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"family {self.name}: likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")


FAMILIES: Registry[Family] = Registry("model")


def register(family: Family) -> Family:
    return FAMILIES.register(family.name)(family)


def family(name: str) -> Family:
    """The family registered as ``name`` (ConfigError listing them when unknown)."""
    return FAMILIES[name]


def _latent_monitors(model: nn.Module) -> list:
    # the collapse monitor reads q(z|x) against the KL to the prior: a model that has both
    return [CollapseMonitor()] if hasattr(model, "encode") and hasattr(model, "prior") else []


register(Family("vae", likelihood="bound", continuous_latent=True,
                objective=lambda t: get_objective(t.objective, **t.objective_options()), monitors=_latent_monitors))  # fmt: skip
register(Family("vqvae", likelihood="codes", continuous_latent=False, objective=lambda t: vq,
                monitors=lambda model: [CodebookMonitor()]))  # fmt: skip
for _name in ADVERSARIAL:
    # each player trains on its own loss; the collapse monitor needs a KL term these models lack
    register(Family(_name, likelihood="none", continuous_latent=False, objective=lambda t: None, monitors=lambda model: []))
