"""Estimators that score a trained model: importance-sampled log-likelihood, the ELBO and its
parts, and active units.

log p(x) is estimated by importance sampling with the encoder as proposal (Burda et al. 2015):

    log p(x) ~= log (1/K) sum_k p(x, z_k) / q(z_k|x),   z_k ~ q(z|x),

with every constant kept. The estimate is a lower bound in expectation (Jensen) whose gap
shrinks as K grows. Work is vectorized over examples and particles and cut into chunks of about
``rows`` decoder rows, written into preallocated tensors, so memory stays bounded for any K
(keeping per-chunk results in Python lists once blew memory up to 6.6 GB).

How far to trust the estimate is read off the tail of each example's importance weights: the
Pareto k-hat of PSIS (Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto Smoothed Importance
Sampling", 2015/2024), ``pareto_khat``.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, NamedTuple, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..core.devices import module_device
from ..core.errors import ConfigError
from ..inference.estimators import sample_particles
from ..inference.objectives import kl_to_prior
from ..models.fused import FusedLogWeights
from ..core import distributed
from .sampling import reconstruct

PROPOSALS = ("posterior", "prior")
KHAT_THRESHOLD = 0.7  # k-hat above this: the weights' variance is infinite, the estimate unreliable
KHAT_WARN_FRACTION = 0.05  # ``vaelab evaluate`` warns when more examples than this exceed the threshold


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
    khat: Tensor | None = None  # [N] Pareto k-hat of each example's K weights (``pareto_khat``)

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
        ``LogLikelihood`` of per-example tensors on x's device (the model computes on its own
        device, batch by batch). The standard error of example i is
        sd(w) / (sqrt(K) mean(w)), the delta-method error of log mean(w); it is unreliable when
        the weights are heavy-tailed (low effective sample size), which ``khat``, the Pareto
        k-hat of the same K weights, detects: above 0.7 neither the estimate nor its standard
        error can be trusted (``pareto_khat``).
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if proposal not in PROPOSALS:
        raise ConfigError(f"unknown proposal {proposal!r}; choose one of: {', '.join(PROPOSALS)}")
    bound_k = tuple(int(b) for b in bounds)
    if any(b < 1 or b > k for b in bound_k):
        raise ConfigError(
            f"bounds= values must be at least 1 and at most k= ({k}), as they are cut from the same "
            f"particles; got {','.join(map(str, bound_k))}"
        )
    n = x.shape[0]
    per_pass, chunk = _chunking(n, k, rows)
    dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    device = module_device(model)
    ll, se, rec, kl, khat = (torch.empty(n, dtype=dtype, device=x.device) for _ in range(5))
    bnd, bnd_se = (torch.empty(n, len(bound_k), dtype=dtype, device=x.device) for _ in range(2))
    means: Tensor | None = None
    bar = tqdm(total=n, disable=not progress, desc=f"log p(x), K={k}", unit="ex")
    # the MLP VAEs' particles go through a path without distribution objects (the same draws and values)
    fast = FusedLogWeights.build(model) if proposal == "posterior" else None
    with eval_mode(model), torch.inference_mode(), bar:
        lw = torch.empty(k, per_pass, dtype=dtype, device=device)  # (K, b), reused by every pass
        lpx = torch.empty(k, per_pass, dtype=dtype, device=device)
        for i in range(0, n, per_pass):
            xb = x[i : i + per_pass].to(device)
            b = xb.shape[0]
            prior = model.prior()
            q = model.encode(xb) if proposal == "posterior" else prior.expand((b,))
            folded = fast.fold(xb) if fast is not None else None  # the pass's examples, shared by its chunks
            for j in range(0, k, chunk):
                c = min(chunk, k - j)
                if fast is not None:
                    fast(xb, q, c, lw[j : j + c, :b], lpx[j : j + c, :b], folded)
                    continue
                # the prior needs no gradient path (a mixture prior has none); a flow
                # posterior scores the samples it drew through rsample
                p = sample_particles(model, xb, c, q=q, prior=prior, reparameterized=proposal == "posterior")
                lw[j : j + c, :b] = p.log_weights
                lpx[j : j + c, :b] = p.log_px_z
            # a short last pass is made contiguous: its sums then run as those of a process whose
            # share of the examples (under torchrun) ends with it, so every process agrees bit for bit
            w = lw[:, :b] if b == per_pass else lw[:, :b].contiguous()
            px = lpx[:, :b] if b == per_pass else lpx[:, :b].contiguous()
            ll[i : i + b], se[i : i + b] = log_mean_exp(w)
            rec[i : i + b] = px.mean(0)
            # every pass holds all K weights of its examples, so the tail fit needs no extra memory
            khat[i : i + b] = pareto_khat(w)
            kl[i : i + b] = _kl(q, prior, w, px)
            for j, kb in enumerate(bound_k):
                bnd[i : i + b, j], bnd_se[i : i + b, j] = _grouped_bound(w, kb)
            if means is None:
                means = torch.empty(n, q.mean.shape[-1], dtype=dtype, device=x.device)
            means[i : i + b] = q.mean
            bar.update(b)
    return LogLikelihood(
        ll, se, rec, kl, means if means is not None else x.new_empty(0, 0, dtype=dtype), bound_k, bnd, bnd_se, khat
    )


def log_likelihood_part(
    model: nn.Module,
    x: Tensor,
    k: int = 5000,
    *,
    rank: int = 0,
    size: int = 1,
    rows: int = 1000,
    progress: bool = False,
    bounds: Sequence[int] = (),
    proposal: str = "posterior",
) -> tuple[slice, LogLikelihood]:
    """Process ``rank`` of ``size``'s share of ``log_likelihood(model, x, ...)``: a contiguous
    range of its passes, with the random stream in the state one process would reach there.
    Every process starts from the same generator state; each advances it past the passes before
    its own by drawing their particles (the encoder and q's draws, no decoder), computes its own,
    then draws those after it, so all end in the state one process ends in and anything drawn
    next is drawn alike. The parts, concatenated in rank order, are one process's result.

    Returns:
        (the examples of x this process scored, their ``LogLikelihood``).
    """
    n = x.shape[0]
    per_pass, chunk = _chunking(n, k, rows)
    first, count = distributed.rows(math.ceil(n / per_pass), distributed.World(rank, size))  # its passes
    start, stop = min(n, first * per_pass), min(n, (first + count) * per_pass)
    _draw_particles(model, x[:start], k, per_pass, chunk, proposal)
    part = log_likelihood(model, x[start:stop], k, rows=rows, progress=progress, bounds=bounds, proposal=proposal)
    _draw_particles(model, x[stop:], k, per_pass, chunk, proposal)
    return slice(start, stop), part


def _draw_particles(model: nn.Module, x: Tensor, k: int, per_pass: int, chunk: int, proposal: str) -> None:
    """The random draws ``log_likelihood`` makes for x, pass by pass and chunk by chunk, without
    the decoder: advances the random stream past examples another process scores."""
    device = module_device(model)
    with eval_mode(model), torch.inference_mode():
        for i in range(0, x.shape[0], per_pass):
            xb = x[i : i + per_pass].to(device)
            q = model.encode(xb) if proposal == "posterior" else model.prior().expand((xb.shape[0],))
            for j in range(0, k, chunk):
                c = min(chunk, k - j)
                q.rsample((c,)) if proposal == "posterior" else q.sample((c,))  # as sample_particles draws


def log_mean_exp(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """log (1/K) sum_k w_k of log-weights (K, B), and its delta-method standard error
    sd(w) / (sqrt(K) mean(w)) (nan for K = 1); both (B,)."""
    k = log_w.shape[0]
    lse = torch.logsumexp(log_w, dim=0)  # (B,)
    if k < 2:
        return lse - math.log(k), torch.full_like(lse, math.nan)
    # normalized weights r_k = w_k / mean(w) have mean 1; se(log mean w) = sd(r)/sqrt(K)
    r = torch.exp(log_w - lse) * k
    return lse - math.log(k), (r.var(dim=0, correction=1) / k).sqrt()


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
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


def pareto_tail_size(k: int) -> int:
    """The PSIS tail size for K draws: M = ceil(min(K / 5, 3 sqrt(K))), at least 5."""
    return max(5, math.ceil(min(k / 5, 3 * math.sqrt(k))))


def pareto_khat(log_w: Tensor, tail: int | None = None) -> Tensor:
    """Pareto k-hat of each example's importance weights: how heavy their right tail is.

    The M largest weights of an example, as exceedances over the (M+1)-th largest, are fitted by
    a generalized Pareto distribution whose shape k says how many moments the weights have
    (Vehtari, Simpson, Gelman, Yao & Gabry, "Pareto Smoothed Importance Sampling", 2015/2024):

    - k < 0.5: finite variance; the estimate converges at the usual rate and the delta-method
      standard error is meaningful (good);
    - 0.5 <= k <= 0.7: infinite variance but a finite mean; in practice the estimate is still
      usable, converging more slowly (ok);
    - k > 0.7: the estimate is unreliable: it converges too slowly to be of use at any practical
      K, and its standard error understates the error (it is computed from a variance that does
      not exist). For log p(x), a k-hat above 0.7 means a proposal that is too narrow somewhere.

    The fit is the empirical-Bayes estimator of Zhang & Stephens (2009, "A new and efficient
    estimation method for the generalized Pareto distribution", Technometrics 51), as in the
    PSIS paper: the posterior mean of theta = -k / sigma over a grid of 30 + floor(sqrt(M)) points
    placed at quantiles of their prior, each weighted by the profile likelihood, then
    k = mean(log(1 - theta x)); then the paper's weakly informative prior pulls k towards 0.5,
    k-hat = (M k + 10 * 0.5) / (M + 10), which matters only for small tails.

    Args:
        log_w: log importance weights (K, B): K draws for each of B examples. Any constant per
            example (log p(x), a normalizer) cancels: the fit sees weights relative to the
            largest, in float64.
        tail: M, the number of largest weights to fit; default ceil(min(K / 5, 3 sqrt(K))), at
            least 5 (the PSIS paper's choice).
    Returns:
        (B,) k-hat per example, in ``log_w``'s floating dtype. nan where it cannot be estimated:
        fewer than 6 draws (with the default tail), a tail in which all M + 1 largest weights are
        equal, or non-finite largest weights.
    """
    k, b = log_w.shape
    dtype = log_w.dtype if log_w.is_floating_point() else torch.get_default_dtype()
    if tail is None:
        m = pareto_tail_size(k)
        if m >= k:
            return torch.full((b,), math.nan, dtype=dtype, device=log_w.device)
    else:
        m = int(tail)
        if m < 5 or m >= k:
            raise ValueError(f"tail must be at least 5 and below the number of draws ({k}), got {tail}")
    top = torch.topk(log_w.detach(), m + 1, dim=0).values  # (M+1, B), descending
    # float64 for the fit (MPS has none: fit those few values on the CPU)
    top = top.to(device="cpu" if top.device.type == "mps" else top.device, dtype=torch.float64)
    shift = torch.where(top[0].isfinite(), top[0], torch.zeros_like(top[0]))
    w = torch.exp(top - shift)  # the largest weight is 1
    x = (w[:m] - w[m]).flip(0)  # (M, B) exceedances, ascending
    x_max = x[-1]
    ok = x_max.isfinite() & (x_max > 0)
    # the fit is invariant to the scale of x: put the largest exceedance at 1
    x = x / torch.where(ok, x_max, torch.ones_like(x_max))
    return _zhang_stephens(x).masked_fill(~ok, math.nan).to(device=log_w.device, dtype=dtype)


def _zhang_stephens(x: Tensor) -> Tensor:
    """Shape k (positive for heavy tails) of a generalized Pareto fit to x (M, B), ascending per
    column with largest value 1 (Zhang & Stephens 2009), with the PSIS prior towards 0.5."""
    m = x.shape[0]
    grid = 30 + int(math.sqrt(m))
    # theta = 1 / x_max + (1 - sqrt(grid / (j - 1/2))) / (3 x*), j = 1..grid, x* the first quartile;
    # x* is floored so that quartiles lost to underflow (tails spanning > 700 nats) keep theta finite
    x_star = x[int(m / 4 + 0.5) - 1].clamp_min(1e-250)  # (B,)
    j = torch.arange(1, grid + 1, dtype=x.dtype, device=x.device)
    theta = 1 + (1 - torch.sqrt(grid / (j - 0.5)))[:, None] / (3 * x_star)  # (G, B), all below 1
    # for fixed theta the maximum-likelihood k is mean(log(1 - theta x)) and sigma = -k / theta;
    # all grid points at once: (G, M, B) is small (M is at most 3 sqrt(K))
    kg = torch.log1p(-theta[:, None, :] * x[None]).mean(1)  # (G, B)
    profile = m * (torch.log(-theta / kg) - kg - 1)
    theta_hat = (torch.softmax(profile, dim=0) * theta).sum(0)  # posterior mean of theta
    k = torch.log1p(-theta_hat * x).mean(0)
    return (m * k + 10 * 0.5) / (m + 10)


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
        **khat_summary(result.khat if result.khat is not None else result.log_likelihood.new_full((n,), math.nan)),
    }


def khat_summary(khat: Tensor, worst: int = 5) -> dict:
    """``khat_mean`` (over examples), ``khat_above_0_7`` (fraction of examples whose k-hat exceeds
    ``KHAT_THRESHOLD``) and ``khat_worst``: up to ``worst`` {"index", "khat"}, largest first.
    nan (and no worst) when k-hat could not be estimated (K < 6)."""
    known = ~khat.isnan()
    if not known.any():
        return {"khat_mean": math.nan, "khat_above_0_7": math.nan, "khat_worst": []}
    values, index = torch.sort(khat.masked_fill(~known, -math.inf), descending=True)
    top = [{"index": int(i), "khat": float(v)} for i, v in zip(index[:worst], values[:worst]) if v > -math.inf]
    return {
        "khat_mean": khat[known].mean().item(),
        "khat_above_0_7": (khat > KHAT_THRESHOLD).to(khat.dtype).mean().item(),
        "khat_worst": top,
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
    active units, and E[L_K'] for each K' in ``bounds`` (means over examples, nats). A model with
    several stochastic layers (``layer_sizes``, e.g. (100, 50) for ``--layers 2``) also gets
    ``active_units_per_layer``, its active units counted layer by layer.

    Under torchrun (a process group of several processes) each process scores its share of the
    examples (``log_likelihood_part``) and every process gets the whole result: the same
    estimate and standard error, example by example, as one process with the same seed."""
    w = distributed.world()
    if w.size == 1:
        result = log_likelihood(model, x, k, rows=rows, progress=progress, bounds=bounds, proposal=proposal)
    else:
        mine, part = log_likelihood_part(model, x, k, rank=w.rank, size=w.size, rows=rows, progress=progress,
                                         bounds=bounds, proposal=proposal)  # fmt: skip
        result = _gathered(part, mine.stop - mine.start, x.shape[0], module_device(model))
    summary = summarize(result, k)
    sizes = getattr(model, "layer_sizes", None)
    if sizes is not None and len(sizes) > 1 and result.posterior_mean.numel():
        summary["active_units_per_layer"] = active_units_per_layer(result.posterior_mean, sizes)
    return summary


def _gathered(part: LogLikelihood, mine: int, n: int, device: torch.device) -> LogLikelihood:
    """Every process's part of a ``LogLikelihood``, joined in rank order (the parts are
    contiguous ranges of the examples, in rank order)."""
    import torch.distributed as dist

    sizes = [torch.zeros((), dtype=torch.long, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor(mine, device=device))
    counts = [int(c) for c in sizes]
    width = torch.tensor(part.posterior_mean.shape[-1] if mine else 0, device=device)
    dist.all_reduce(width, op=dist.ReduceOp.MAX)  # a process without examples has no posterior mean

    def join(t: Tensor, trailing: tuple[int, ...]) -> Tensor:
        padded = t.new_zeros(max(counts), *trailing).to(device)
        padded[: t.shape[0]] = t.reshape(t.shape[0], *trailing)
        pieces = [torch.empty_like(padded) for _ in counts]
        dist.all_gather(pieces, padded)
        return torch.cat([p[:c] for p, c in zip(pieces, counts)]).to(t.device)

    j = len(part.bound_k)
    return LogLikelihood(join(part.log_likelihood, ()), join(part.stderr, ()), join(part.reconstruction, ()),
                         join(part.kl, ()), join(part.posterior_mean, (int(width),)), part.bound_k,
                         join(part.bounds, (j,)), join(part.bounds_stderr, (j,)), join(part.khat, ()))  # fmt: skip


def active_units_per_layer(posterior_mean: Tensor, layer_sizes: Sequence[int], threshold: float = 0.01) -> list[int]:
    """``active_units`` of each stochastic layer, the posterior means (N, sum(layer_sizes)) split
    along the last dimension in ``layer_sizes`` (Burda et al. 2015 count them per layer)."""
    return [active_units(part, threshold) for part in posterior_mean.split(list(layer_sizes), dim=-1)]


@torch.no_grad()
def mean_bound(objective: Callable[..., NamedTuple], model: nn.Module, x: Tensor, *, batch: int = 100) -> tuple[float, float]:
    """Mean over x of an objective's ``bound`` (one draw per example), and its standard error
    across examples (which includes the spread of the data, not only Monte-Carlo noise)."""
    device = module_device(model)
    with eval_mode(model):
        values = torch.cat([objective(model, x[i : i + batch].to(device)).bound for i in range(0, x.shape[0], batch)])
    n = values.shape[0]
    return values.mean().item(), (values.std().item() / math.sqrt(n)) if n > 1 else math.nan


@torch.no_grad()
def vq_summary(model: nn.Module, x: Tensor, *, batch: int = 500) -> dict:
    """A VQ-VAE's scores on x (``vaelab evaluate --json`` keys): ``elbo`` = log p(x|z_q(x)) +
    log p(z_q(x)) (a lower bound on log p(x), since q(z|x) is one-hot; exact given x, no
    sampling), its standard error over examples, ``reconstruction``, ``kl`` (= -log p(z_q), the
    rate), ``codebook_perplexity``, ``codes_used``; ``log_likelihood`` is None (nothing to
    importance-sample)."""
    from ..inference.objectives import vq
    from ..models.vqvae import codebook_usage

    device = module_device(model)
    with eval_mode(model):
        parts = [vq(model, x[i : i + batch].to(device)) for i in range(0, x.shape[0], batch)]
        codes = torch.cat([model.codes(x[i : i + batch].to(device)) for i in range(0, x.shape[0], batch)])
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


@torch.no_grad()
def reconstruction_error(model: nn.Module, x: Tensor, *, batch: int = 500) -> tuple[float, float]:
    """Mean over x of the squared error ||x - x^||^2 summed over the data dimensions, and its
    standard error over examples, x^ from ``sampling.reconstruct``: one number that every model
    with an encoder shares, likelihood or not."""
    device = module_device(model)
    with eval_mode(model):
        chunks = [x[i : i + batch].to(device) for i in range(0, x.shape[0], batch)]
        values = torch.cat([(chunk - reconstruct(model, chunk)).square().flatten(1).sum(-1) for chunk in chunks])
    n = values.shape[0]
    return values.mean().item(), (values.std().item() / math.sqrt(n)) if n > 1 else math.nan
