"""Diagnostics of a model's posterior and of its gradient estimators.

- Posterior collapse: KL per latent dimension, active units (Burda et al. 2015) and the mutual
  information I(x; z) between data and code (Hoffman & Johnson 2016, "ELBO surgery"), logged
  every epoch by ``CollapseMonitor``, which warns when the posterior collapses onto the prior.
- Gradient signal-to-noise ratio per parameter group, |E[g]| / std[g] over repeated gradient
  draws on one fixed minibatch (Rainforth et al. 2018), and the effective sample size of the
  importance weights, against the number of particles K (``snr_sweep``, ``vaelab diagnose``).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from tqdm.auto import tqdm

from ..core.devices import module_device
from ..core.errors import ConfigError
from ..distributions.observation import (
    diagonal_gaussian_log_prob_matrix,
    is_diagonal_gaussian,
    kl_per_dimension,
)
from ..distributions.posteriors import FlowDistribution
from ..inference.estimators import effective_sample_size, log_weights
from ..inference.objectives import get_objective, kl_to_prior
from .evaluate import active_units

log = logging.getLogger("vaelab")

COLLAPSE_KL = 0.1  # nats: a total KL below this means q(z|x) is (nearly) the prior for every x
MI_EXAMPLES = 2000  # examples for I(x; z): its cost grows as N^2 (0.06 s at 2000, 0.9 s at 6000)
MI_EXAMPLES_OTHER = 500  # the same for posteriors other than the diagonal Gaussian (no matrix form)


# -- posterior collapse --------------------------------------------------------------------


def kl_per_dim(q: Distribution, prior: Distribution) -> Tensor | None:
    """Mean over examples of KL(q(z_d|x) || p(z_d)) per latent dimension d, shape (D,); None when
    the posterior or prior does not factorize over dimensions."""
    try:
        return kl_per_dimension(q, prior).mean(0)
    except ConfigError:
        return None


def pairwise_log_q(q: Distribution, z: Tensor, chunk: int = 1000) -> Tensor:
    """log q(z_i | x_j) for every sample z_i (N_z, D) and every posterior j of the batch of q
    (batch shape (N,)): shape (N_z, N).

    A diagonal Gaussian takes two matrix products in float64; other posteriors broadcast
    ``log_prob`` in chunks of rows.
    """
    if is_diagonal_gaussian(q):
        base = q.base_dist
        out = diagonal_gaussian_log_prob_matrix(z.double(), base.loc.double(), base.scale.double())
        return out.to(z.dtype)  # (N_z, N)
    rows = [q.log_prob(z[i : i + chunk].unsqueeze(1)) for i in range(0, z.shape[0], chunk)]
    return torch.cat(rows)


def mutual_information(q: Distribution) -> float:
    """I(x; z) under q(x, z) = p_data(x) q(z|x), with p_data the N examples q was computed on:

        I = E_x E_q(z|x) [log q(z|x) - log q(z)],   q(z) = (1/N) sum_j q(z|x_j)

    estimated with one z_i ~ q(z|x_i) per example (Hoffman & Johnson 2016). The aggregate
    posterior is an exact mixture over the N examples, so I itself lies in [0, log N]: a code
    that tells the N examples apart scores log N. The estimate never exceeds log N either, since
    q(z_i) >= q(z_i|x_i) / N for every draw, but it is not bounded below by 0: near collapse,
    where q(z|x) hardly depends on x, it scatters around the small true value and can be
    slightly negative.
    """
    z = q.sample()  # (N, D)
    n = z.shape[0]
    log_qzx = q.log_prob(z)  # (N,)
    log_qz = torch.logsumexp(pairwise_log_q(q, z), dim=1) - math.log(n)
    return (log_qzx - log_qz).mean().item()


@torch.no_grad()
def posterior_summary(model: nn.Module, x: Tensor, mi_examples: int = MI_EXAMPLES) -> dict[str, Any]:
    """Active units, total KL and KL per latent dimension on data x, and the mutual information
    on its first ``mi_examples`` examples (so at most log(mi_examples) nats)."""
    q = model.encode(x)
    prior = model.prior()
    per_dim = kl_per_dim(q, prior)
    try:
        kl = kl_to_prior(q, prior).mean().item()
    except NotImplementedError:
        kl = math.nan
    out: dict[str, Any] = {"active_units": active_units(q.mean), "kl": kl}
    out["kl_per_dim"] = per_dim.tolist() if per_dim is not None else None
    if not is_diagonal_gaussian(q):  # log q(z_i|x_j) by broadcasting: keep N^2 evaluations small
        mi_examples = min(mi_examples, MI_EXAMPLES_OTHER)
    if isinstance(q, FlowDistribution):
        # log q(z_i|x_j) for every pair needs the flow's inverse: none for planar flows, one
        # network pass per latent dimension for IAF (minutes per epoch); not estimated
        out["mutual_info"] = math.nan
    else:
        out["mutual_info"] = mutual_information(q if x.shape[0] <= mi_examples else model.encode(x[:mi_examples]))
    return out



class CollapseMonitor:
    """Per-epoch monitor for the trainer: logs ``active_units``, ``kl_per_dim`` and
    ``mutual_info`` (nats, on the validation set; I(x; z) on its first ``MI_EXAMPLES``), and at the
    end of training warns, through the "vaelab" logger, when the posterior has collapsed onto the
    prior and stayed there: no active unit, or a total KL below ``COLLAPSE_KL`` nats, in each of
    the last ``patience`` epochs. A collapse that training recovers from (a fresh encoder is often
    uninformative for a few epochs) is no warning: the per-epoch records show it."""

    def __init__(self, max_examples: int = 10000, patience: int = 2) -> None:
        self.max_examples = max_examples
        self.patience = patience

    def __call__(self, model: nn.Module, x: Tensor, epoch: int) -> dict[str, Any]:
        s = posterior_summary(model, x[: self.max_examples])
        mi = s["mutual_info"]  # null in metrics.jsonl when the posterior cannot give it (strict JSON has no NaN)
        kl = s["kl"]
        return {"active_units": s["active_units"], "kl_per_dim": s["kl_per_dim"], "mutual_info": None if math.isnan(mi) else mi,
                "posterior_kl": None if math.isnan(kl) else kl}  # fmt: skip

    def finish(self, records: Sequence[dict[str, Any]]) -> None:
        """Warns once when the last ``patience`` of the epoch ``records`` (every epoch of the run,
        in order) are collapsed, naming the epoch the collapse began."""
        stretch = 0
        for record in reversed(records):
            if not collapsed(record):
                break
            stretch += 1
        if stretch < self.patience:
            return
        first, last = records[-stretch], records[-1]
        kl = last.get("posterior_kl")
        log.warning(
            "posterior collapse since epoch %d, to the end of training: %d active units, KL %s nats, I(x;z) %s nats "
            "in the last epoch; q(z|x) is close to the prior for every x. Try --kl-warmup, --kl-cycles or --free-bits.",
            first["epoch"], last["active_units"], "n/a" if kl is None else f"{kl:.3f}",
            "n/a" if last.get("mutual_info") is None else f"{last['mutual_info']:.3f}",
        )  # fmt: skip


def collapsed(record: dict[str, Any]) -> bool:
    """Whether an epoch's record (of ``CollapseMonitor``) shows a collapsed posterior: no active
    unit, or a total KL below ``COLLAPSE_KL`` nats."""
    if "active_units" not in record:
        return False
    kl = record.get("posterior_kl")
    if kl is None and record.get("kl_per_dim") is not None:  # records written before posterior_kl
        kl = sum(record["kl_per_dim"])
    return record["active_units"] == 0 or (kl is not None and kl < COLLAPSE_KL)


class CodebookMonitor:
    """Per-epoch monitor for a VQ-VAE: ``codebook_perplexity`` and ``codes_used`` of the code
    grids of the validation set (a codebook that collapses onto few codes shows here first)."""

    def __call__(self, model: nn.Module, x: Tensor, epoch: int) -> dict[str, Any]:
        from ..models.vqvae import codebook_usage

        codes = torch.cat([model.codes(x[i : i + 1000]) for i in range(0, len(x), 1000)])
        return codebook_usage(codes, model.codebook_size)


# -- gradient signal-to-noise ---------------------------------------------------------------


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The model's parameters split into ``encoder`` (inference network, phi) and ``decoder``
    (generative model, theta): the model's own ``parameter_groups()`` if it has one, otherwise
    its ``encoder`` submodule against everything else."""
    if hasattr(model, "parameter_groups"):
        groups = model.parameter_groups()
        if not groups["encoder"]:
            raise ConfigError(
                "this model has no inference parameters (trained with inference= local: each q is "
                "fitted per example), so there is no encoder gradient to measure"
            )
        return groups
    if not isinstance(getattr(model, "encoder", None), nn.Module):
        raise ConfigError(f"{type(model).__name__} has no encoder to tell apart from the decoder")
    enc = {id(p) for p in model.encoder.parameters()}
    return {
        "encoder": [p for p in model.parameters() if id(p) in enc],
        "decoder": [p for p in model.parameters() if id(p) not in enc],
    }


def gradient_snr(
    model: nn.Module,
    x: Tensor,
    objective: Callable[..., Any],
    reps: int = 100,
    *,
    progress: bool = False,
) -> dict[str, float]:
    """Signal-to-noise ratio of the gradient of the mean objective on the fixed minibatch x.

    For every scalar parameter, SNR = |mean(g)| / std(g) over ``reps`` independent gradient
    draws (only the particles change); each group reports the mean over its parameters, leaving
    out parameters whose gradient is exactly constant (Rainforth et al. 2018, section 3).

    Returns:
        {"encoder": snr, "decoder": snr}.
    """
    if reps < 2:
        raise ConfigError(f"reps= must be at least 2 to estimate a standard deviation, got {reps}")
    groups = parameter_groups(model)
    x = x.to(module_device(model))
    params = [p for ps in groups.values() for p in ps]
    # sums in float64, on the CPU for MPS, which has no float64
    home = torch.device("cpu") if x.device.type == "mps" else x.device
    sums = [torch.zeros(p.shape, dtype=torch.float64, device=home) for p in params]
    squares = [torch.zeros(p.shape, dtype=torch.float64, device=home) for p in params]
    for _ in tqdm(range(reps), disable=not progress, desc="gradient draws", leave=False):
        value = objective(model, x).objective.mean()
        grads = torch.autograd.grad(value, params, allow_unused=True)
        for s, sq, g in zip(sums, squares, grads):
            if g is not None:
                g = g.to(device=home, dtype=torch.float64)
                s.add_(g)
                sq.add_(g.square())
    out, i = {}, 0
    for name, ps in groups.items():
        ratios = []
        for _ in ps:
            mean = sums[i] / reps
            var = ((squares[i] - reps * mean.square()) / (reps - 1)).clamp_min(0)
            snr = mean.abs() / var.sqrt()
            ratios.append(snr[var > 1e-30 * (1 + mean.square())].flatten())
            i += 1
        r = torch.cat(ratios) if ratios else torch.empty(0, device=home)
        out[name] = r.mean().item() if r.numel() else math.nan
    return out


def snr_sweep(
    model: nn.Module,
    x: Tensor,
    k_list: Sequence[int],
    *,
    objective: str = "iwae",
    options: dict[str, Any] | None = None,
    reps: int = 100,
    progress: bool = False,
) -> dict[str, Any]:
    """Encoder and decoder gradient SNR and the normalized ESS of the importance weights for
    each K in ``k_list`` (the ``vaelab diagnose`` table).

    Args:
        model: a trained model.
        x: a fixed minibatch.
        k_list: particle counts; each sets the objective's ``k``.
        objective: registered objective name; ``options`` are its other options.
        reps: gradient draws per K.
    Returns:
        {"k", "encoder_snr", "decoder_snr", "ess"}: equal-length lists, plus "objective",
        "reps" and "n_examples".
    """
    options = dict(options or {})
    x = x.to(module_device(model))  # the fixed minibatch, once, where the model computes
    result: dict[str, Any] = {"k": [], "encoder_snr": [], "decoder_snr": [], "ess": []}
    bar = tqdm(list(k_list), disable=not progress, desc="K", leave=False)
    for k in bar:
        bar.set_postfix(K=k)
        snr = gradient_snr(model, x, get_objective(objective, **{**options, "k": k}), reps, progress=progress)
        with torch.no_grad():
            ess = effective_sample_size(log_weights(model, x, k)).mean().item()
        result["k"].append(int(k))
        result["encoder_snr"].append(snr["encoder"])
        result["decoder_snr"].append(snr["decoder"])
        result["ess"].append(ess)
    result.update({"objective": objective, "reps": reps, "n_examples": int(x.shape[0])})
    return result
