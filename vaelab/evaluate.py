"""Estimators that score a trained model: importance-sampled log-likelihood, the ELBO and its
parts, and active units.

log p(x) is estimated by importance sampling with the encoder as proposal (Burda et al. 2015):

    log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k|x),   z_k ~ q(z|x),

with every constant kept. The estimate is a lower bound in expectation (Jensen) whose gap
shrinks as K grows. Work is vectorized over examples and particles and cut into chunks of about
``rows`` decoder rows, written into preallocated tensors, so memory stays bounded for any K
(keeping per-chunk results in Python lists once blew memory up to 6.6 GB).
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .errors import ConfigError
from .estimators import sample_particles
from .objectives import kl_to_prior


PROPOSALS = ("posterior", "prior")


class LogLikelihood(NamedTuple):
    """Per-example importance-sampling estimates."""

    log_likelihood: Tensor  # [N] log (1/K) sum_k w_k
    stderr: Tensor  # [N] its Monte-Carlo standard error (delta method)
    reconstruction: Tensor  # [N] (1/K) sum_k log p(x|z_k): E_q[log p(x|z)] from the same particles
    kl: Tensor  # [N] KL(q(z|x) || p(z)), closed form where registered, else from the particles
    posterior_mean: Tensor  # [N, D] E_q[z], for active units
    bound_k: tuple[int, ...] = ()  # the K of each column of ``bounds``
    bounds: Tensor | None = None  # [N, J] E[L_K] per example, from disjoint groups of the K particles
    bounds_stderr: Tensor | None = None  # [N, J] its Monte-Carlo standard error (nan with one group)

    @property
    def elbo(self) -> Tensor:
        return self.reconstruction - self.kl


def _chunking(n: int, k: int, rows: int) -> tuple[int, int]:
    """Examples per pass and particles per chunk so that one chunk is about ``rows`` rows."""
    if k >= rows:
        n_chunks = math.ceil(k / rows)
        return 1, math.ceil(k / n_chunks)
    return max(1, min(n, rows // k)), k


def log_likelihood(
    model: nn.Module,
    x: Tensor,
    k: int = 5000,
    *,
    rows: int = 1000,
    progress: bool = False,
    bounds: Sequence[int] = (),
    proposal: str = "posterior",
) -> LogLikelihood:
    """Importance-sampled log p(x) with the encoder as proposal, and its standard error.

    Args:
        model: exposes ``prior()``, ``encode(x)``, ``decode(z)``.
        x: data (N, *event_shape).
        k: importance samples per example (Burda et al. use 5000).
        rows: decoder rows per chunk; bounds memory (about rows x data size floats).
        progress: show a progress bar over examples.
        bounds: values K' <= k at which to also estimate the bound E[L_K'] per example. The k
            particles are cut into floor(k / K') disjoint groups of K'; each group is an
            independent draw of L_K', so their mean estimates E[L_K'] and their spread gives its
            standard error, at no extra decoder cost.
        proposal: "posterior" (the encoder's q(z|x), importance sampling) or "prior" (naive Monte
            Carlo, log (1/K) sum_k p(x|z_k) with z_k ~ p(z)): the same estimator with q = p(z),
            whose weights are far more spread out, so at equal K it is biased further down and
            noisier (seeds 002/003). With "prior", the ELBO fields describe q = p(z) (KL 0).
    Returns:
        ``LogLikelihood`` of per-example tensors. The standard error of example i is
        sd(w) / (sqrt(K) mean(w)), the delta-method error of log mean(w); it is unreliable when
        the weights are heavy-tailed (low effective sample size).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if proposal not in PROPOSALS:
        raise ConfigError(f"unknown proposal {proposal!r}; choose one of: {', '.join(PROPOSALS)}")
    bound_k = tuple(int(b) for b in bounds)
    if any(b < 1 or b > k for b in bound_k):
        raise ConfigError(
            f"--bounds values must be at least 1 and at most --k ({k}), as they are cut from the same "
            f"particles; got {','.join(map(str, bound_k))}"
        )
    n = x.shape[0]
    per_pass, chunk = _chunking(n, k, rows)
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    ll, se, rec, kl = (torch.empty(n, dtype=dtype) for _ in range(4))
    bnd, bnd_se = torch.empty(n, len(bound_k), dtype=dtype), torch.empty(n, len(bound_k), dtype=dtype)
    means: Tensor | None = None
    bar = tqdm(total=n, disable=not progress, desc=f"log p(x), K={k}", unit="ex")
    with _eval_mode(model), torch.inference_mode(), bar:
        lw = torch.empty(k, per_pass, dtype=dtype)  # (K, b), reused by every pass
        lpx = torch.empty(k, per_pass, dtype=dtype)
        for i in range(0, n, per_pass):
            xb = x[i : i + per_pass]
            b = xb.shape[0]
            prior = model.prior()
            q = model.encode(xb) if proposal == "posterior" else prior.expand((b,))
            for j in range(0, k, chunk):
                c = min(chunk, k - j)
                # the prior needs no gradient path (a mixture prior has none); a flow
                # posterior scores the samples it drew through rsample
                p = sample_particles(model, xb, c, q=q, prior=prior, reparameterized=proposal == "posterior")
                lw[j : j + c, :b] = p.log_weights
                lpx[j : j + c, :b] = p.log_px_z
            w = lw[:, :b]
            lse = torch.logsumexp(w, dim=0)  # (b,)
            ll[i : i + b] = lse - math.log(k)
            # normalized weights r_k = w_k / mean(w) have mean 1; se(log mean w) = sd(r)/sqrt(K)
            r = torch.exp(w - lse) * k
            se[i : i + b] = (r.var(dim=0, correction=1) / k).sqrt() if k > 1 else torch.nan
            rec[i : i + b] = lpx[:, :b].mean(0)
            kl[i : i + b] = _kl(q, prior, w, lpx[:, :b])
            for j, kb in enumerate(bound_k):
                bnd[i : i + b, j], bnd_se[i : i + b, j] = _grouped_bound(w, kb)
            if means is None:
                means = torch.empty(n, q.mean.shape[-1], dtype=dtype)
            means[i : i + b] = q.mean
            bar.update(b)
    return LogLikelihood(
        ll, se, rec, kl, means if means is not None else torch.empty(0, 0), bound_k, bnd, bnd_se
    )


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """The model in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _grouped_bound(log_w: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Mean and standard error of L_k over the disjoint groups of k log-weights in (K, b)."""
    groups = log_w.shape[0] // k
    lk = torch.logsumexp(log_w[: groups * k].reshape(groups, k, -1), dim=1) - math.log(k)  # (G, b)
    stderr = (lk.var(0, correction=1) / groups).sqrt() if groups > 1 else torch.full_like(lk[0], math.nan)
    return lk.mean(0), stderr


def _kl(q, prior, log_w: Tensor, log_px_z: Tensor) -> Tensor:
    """KL(q || prior): the closed form where registered; otherwise the Monte-Carlo estimate from
    all K particles, mean_k[log q - log p(z)] = mean_k[log p(x|z) - log w]."""
    try:
        return kl_to_prior(q, prior)
    except NotImplementedError:
        return (log_px_z - log_w).mean(0)


def active_units(posterior_mean: Tensor, threshold: float = 0.01) -> int:
    """Number of latent dimensions whose posterior mean varies across data: Var_x(E_q[z_d]) >
    threshold (Burda et al. 2015, section 5.2)."""
    if posterior_mean.shape[0] < 2:
        return 0
    return int((posterior_mean.var(dim=0, correction=0) > threshold).sum())


def summarize(result: LogLikelihood, k: int) -> dict:
    """Means over examples, in nats, with the keys ``vaelab evaluate --json`` prints."""
    n = result.log_likelihood.shape[0]
    bounds, bounds_se = {}, {}
    for j, kb in enumerate(result.bound_k):
        bounds[str(kb)] = result.bounds[:, j].mean().item()
        bounds_se[str(kb)] = (result.bounds_stderr[:, j].square().sum().sqrt() / n).item()
    return {
        "log_likelihood": result.log_likelihood.mean().item(),
        # independent per-example errors: se(mean) = sqrt(sum se_i^2) / N
        "log_likelihood_stderr": (result.stderr.square().sum().sqrt() / n).item() if k > 1 else math.nan,
        "elbo": result.elbo.mean().item(),
        "reconstruction": result.reconstruction.mean().item(),
        "kl": result.kl.mean().item(),
        "active_units": active_units(result.posterior_mean),
        "n_examples": n,
        "k": k,
        "bounds": bounds,
        "bounds_stderr": bounds_se,
    }


def evaluate(
    model: nn.Module,
    x: Tensor,
    k: int = 5000,
    *,
    rows: int = 1000,
    progress: bool = False,
    bounds: Sequence[int] = (),
    proposal: str = "posterior",
) -> dict:
    """Scores ``model`` on ``x``: log-likelihood +- standard error, ELBO, reconstruction, KL,
    active units, and E[L_K'] for each K' in ``bounds`` (means over examples, nats)."""
    result = log_likelihood(model, x, k, rows=rows, progress=progress, bounds=bounds, proposal=proposal)
    return summarize(result, k)


@torch.no_grad()
def mean_bound(objective: Callable[..., NamedTuple], model: nn.Module, x: Tensor, *, batch: int = 100) -> tuple[float, float]:
    """Mean over x of an objective's ``bound`` (one draw per example), and its standard error
    across examples (which includes the spread of the data, not only Monte-Carlo noise)."""
    with _eval_mode(model):
        values = torch.cat([objective(model, x[i : i + batch]).bound for i in range(0, x.shape[0], batch)])
    n = values.shape[0]
    return values.mean().item(), (values.std().item() / math.sqrt(n)) if n > 1 else math.nan


@torch.no_grad()
def vq_summary(model: nn.Module, x: Tensor, *, batch: int = 500) -> dict:
    """A VQ-VAE's scores on x (``vaelab evaluate --json`` keys): ``elbo`` = log p(x|z_q(x)) +
    log p(z_q(x)) (a lower bound on log p(x), since q(z|x) is one-hot; exact given x, no
    sampling), its standard error over examples, ``reconstruction``, ``kl`` (= -log p(z_q), the
    rate), ``codebook_perplexity``, ``codes_used``; ``log_likelihood`` is None (nothing to
    importance-sample)."""
    from .models.vqvae import codebook_usage
    from .objectives import vq

    with _eval_mode(model):
        parts = [vq(model, x[i : i + batch]) for i in range(0, x.shape[0], batch)]
        codes = torch.cat([model.codes(x[i : i + batch]) for i in range(0, x.shape[0], batch)])
    bound = torch.cat([p.bound for p in parts])
    n = bound.shape[0]
    return {
        "log_likelihood": None,
        "log_likelihood_stderr": None,
        "elbo": bound.mean().item(),
        "elbo_stderr": (bound.std().item() / math.sqrt(n)) if n > 1 else math.nan,
        "reconstruction": torch.cat([p.reconstruction for p in parts]).mean().item(),
        "kl": torch.cat([p.kl for p in parts]).mean().item(),
        **codebook_usage(codes, model.codebook_size),
        "prior": "pixelcnn" if getattr(model, "code_prior", None) is not None else "uniform",
        "n_examples": n,
    }
