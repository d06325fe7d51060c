"""Per-example scores and latent codes to take away: `vaelab score`, `encode` and `decode`.

A score is a bound on (or an estimate of) log p(x) for each example, in nats, from the estimators
of ``evaluate.log_likelihood`` (importance sampling with the encoder as proposal, Burda et al.
2015):

- ``is:K``: log (1/K) sum_k w_k, the importance-sampled log p(x) with its delta-method standard
  error and the Pareto k-hat of the K weights (how far to trust both);
- ``iwae:K``: the bound E[L_K], estimated from ``draws`` independent draws of L_K, with the
  standard error across them;
- ``elbo``: the ELBO E[L_1] = E_q[log p(x, z) - log q(z|x)], from ``draws`` single-particle draws,
  with the standard error across them.

Scores separate data a model has seen the like of from data it has not (out-of-distribution
detection), read off by the area under the ROC curve, ``auroc``; Nalisnick et al. (2019, "Do deep
generative models know what they don't know?") show that a higher likelihood does not always mean
in-distribution, so the number is worth measuring rather than assuming.

Latent codes are the encoder's posterior means and scales, for the two-stage VAE of Dai & Wipf
(2019, "Diagnosing and enhancing VAE models"), whose second VAE learns the distribution of the
first one's codes.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..core.devices import fork_rng, module_device
from ..core.errors import ConfigError
from .evaluate import log_likelihood

__all__ = ["BOUNDS", "DEFAULT_BOUND", "DEFAULT_DRAWS", "Codes", "Scores", "auroc", "decode_means", "encode_codes", "finite_mean", "parse_bound", "score"]

BOUNDS = ("elbo", "iwae:K", "is:K")
DEFAULT_BOUND = "is:1000"  # a fifth of evaluate's K=5000: scoring serves whole datasets, one row each
DEFAULT_DRAWS = 10  # independent draws of L_K behind each elbo and iwae:K score and its standard error
SCALE_DRAWS = 256  # draws behind the scale of a posterior without a closed-form standard deviation
CHUNK = 1000  # examples encoded or codes decoded at a time


class Scores(NamedTuple):
    """Per-example scores, each (N,), in nats."""

    score: Tensor  # the bound (elbo, iwae:K) or the estimate of log p(x) (is:K)
    stderr: Tensor  # its Monte-Carlo standard error (nan where there is none: K = 1, one draw)
    khat: Tensor | None  # is:K: the Pareto k-hat of each example's K weights; None otherwise


class Codes(NamedTuple):
    """The encoder's posterior q(z|x) of each example."""

    mean: Tensor  # (N, latent_dim) E_q[z] (a flow: the base mean pushed through the flow)
    scale: Tensor  # (N, latent_dim) the standard deviation of each coordinate under q
    samples: Tensor | None  # (N, S, latent_dim) draws z ~ q(z|x), or None


def parse_bound(text: str) -> tuple[str, int]:
    """``"elbo"`` -> ("elbo", 1); ``"iwae:50"`` -> ("iwae", 50); ``"is:1000"`` -> ("is", 1000)."""
    name, _, k = str(text).partition(":")
    if name == "elbo" and not k:
        return "elbo", 1
    if name in ("iwae", "is") and k.isdigit() and int(k) >= 1:
        return name, int(k)
    raise ConfigError(f"unknown bound {text!r}; choose one of: {', '.join(BOUNDS)} with K a positive integer (e.g. is:1000)")


def score(
    model: nn.Module,
    x: Tensor,
    bound: str = DEFAULT_BOUND,
    *,
    draws: int = DEFAULT_DRAWS,
    seed: int = 0,
    rows: int = 1000,
    progress: bool = False,
) -> Scores:
    """Scores every example of ``x`` by ``bound``, in nats.

    Args:
        model: a VAE (``prior()``, ``encode(x)``, ``decode(z)``).
        x: data (N, *event_shape), prepared as the model was trained on (binarized etc.).
        bound: "elbo", "iwae:K" or "is:K" (module docstring).
        draws: independent draws of L_K averaged for "elbo" and "iwae:K" (their standard error
            needs at least 2); ignored by "is:K".
        seed: seeds the particles; the caller's random state is left as it was.
        rows: decoder rows per chunk (memory), as in ``evaluate.log_likelihood``.
        progress: show a progress bar.

    Returns:
        ``Scores`` of per-example tensors on x's device (the model computes on its own).
    """
    name, k = parse_bound(bound)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ConfigError(f"draws must be a positive integer, got {draws!r}")
    with fork_rng(module_device(model)):
        torch.manual_seed(seed)
        if name == "is":
            result = log_likelihood(model, x, k, rows=rows, progress=progress)
            return Scores(result.log_likelihood, result.stderr, result.khat)
        # draws disjoint groups of k particles: each group is one independent draw of L_k
        result = log_likelihood(model, x, k * draws, rows=rows, progress=progress, bounds=(k,))
    assert result.bounds is not None and result.bounds_stderr is not None
    return Scores(result.bounds[:, 0], result.bounds_stderr[:, 0], None)


def auroc(positive: Tensor, negative: Tensor) -> float:
    """The area under the ROC curve of telling ``positive`` from ``negative`` by their scores
    (higher = positive): P(s+ > s-) + P(s+ = s-) / 2, the Mann-Whitney U statistic over
    n+ n- (Hanley & McNeil 1982). Ties get their average rank, so a tie counts one half.

    Args:
        positive, negative: 1-D scores, each with at least one finite value; non-finite values
            are refused.
    """
    pos, neg = positive.detach().cpu().double().flatten(), negative.detach().cpu().double().flatten()  # MPS has no float64
    if len(pos) == 0 or len(neg) == 0:
        raise ConfigError("the AUROC needs at least one score on each side")
    if not (torch.isfinite(pos).all() and torch.isfinite(neg).all()):
        raise ConfigError("the AUROC needs finite scores; some are nan or infinite")
    both = torch.cat([pos, neg])
    order = torch.argsort(both)
    # ranks 1..n in sorted order, each run of equal values given the average rank of the run
    _, inverse, counts = torch.unique_consecutive(both[order], return_inverse=True, return_counts=True)
    last = counts.cumsum(0).to(both.dtype)  # the largest rank in each run
    ranks = torch.empty_like(both)
    ranks[order] = (last - (counts.to(both.dtype) - 1) / 2)[inverse]
    n_pos, n_neg = len(pos), len(neg)
    u = ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


@torch.no_grad()
def encode_codes(model: nn.Module, x: Tensor, *, samples: int = 0, seed: int = 0) -> Codes:
    """The posterior q(z|x) of each example: means, scales and, with ``samples`` S > 0, S draws.

    Args:
        model: a VAE.
        x: data (N, *event_shape), prepared as the model was trained on.
        samples: draws z ~ q(z|x) per example (0: none).
        seed: seeds the draws (and the draws behind a scale without a closed form); the caller's
            random state is left as it was.

    Returns:
        ``Codes`` on x's device (encoded on the model's, in chunks). The scale is q's standard deviation per coordinate in closed form
        where q has one (diagonal and full Gaussians); for a flow or a two-layer posterior, the
        standard deviation of ``SCALE_DRAWS`` draws.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ConfigError(f"samples must be a non-negative integer, got {samples!r}")
    device = module_device(model)
    means, scales, draws = [], [], []
    with fork_rng(device):
        torch.manual_seed(seed)
        for start in range(0, len(x), CHUNK):
            q = model.encode(x[start : start + CHUNK].to(device))
            means.append(q.mean.to(x.device))
            try:
                scale = q.stddev
            except NotImplementedError:
                scale = q.sample((SCALE_DRAWS,)).std(0)
            scales.append(scale.to(x.device))
            if samples:
                draws.append(q.sample((samples,)).transpose(0, 1).to(x.device))  # (b, S, D)
    latent = int(getattr(model, "latent_dim", 0))
    empty = x.new_empty(0, latent)
    mean = torch.cat(means) if means else empty
    return Codes(mean, torch.cat(scales) if scales else empty.clone(),
                 (torch.cat(draws) if draws else x.new_empty(0, samples, latent)) if samples else None)  # fmt: skip


@torch.no_grad()
def decode_means(model: nn.Module, z: Tensor) -> Tensor:
    """The mean of p(x|z) for each code z (N, latent_dim), decoded in chunks on the model's
    device, returned on z's.

    Raises:
        ConfigError: when the codes' size is not the model's latent_dim.
    """
    latent = int(model.latent_dim)
    if z.ndim != 2 or z.shape[1] != latent:
        raise ConfigError(
            f"codes of shape {list(z.shape)} do not fit a latent of {latent} dimensions; pass an "
            f"N x {latent} array (from vaelab encode of this run, or drawn for it)"
        )
    device = module_device(model)
    dtype = next(model.parameters()).dtype
    out = [model.decode(z[i : i + CHUNK].to(device=device, dtype=dtype)).mean.to(z.device) for i in range(0, len(z), CHUNK)]
    return torch.cat(out) if out else z.new_empty(0)


def finite_mean(values: Tensor) -> float:
    """The mean of the finite entries (nan when there are none), for summaries."""
    finite = values[torch.isfinite(values)]
    return finite.mean().item() if finite.numel() else math.nan
