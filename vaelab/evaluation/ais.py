"""Annealed importance sampling of log p(x) with Hamiltonian Monte Carlo transitions, and
bidirectional Monte Carlo bounds on simulated data.

AIS (Neal 2001, "Annealed importance sampling", Statistics and Computing 11) moves particles from
a normalized start pi_0(z) to the posterior through the geometric path

    f_t(z) = pi_0(z)^(1 - beta_t) (p(z) p(x|z))^beta_t,   0 = beta_0 < beta_1 < ... < beta_T = 1,

which for pi_0 = p(z) is p(z) p(x|z)^beta_t (``start="prior"``) and for pi_0 = q(z|x) starts at
the encoder (``start="posterior"``). A particle z_0 ~ pi_0 is moved by a transition T_t that
leaves f_t invariant, and carries the weight

    log w = sum_{t=1..T} log f_t(z_{t-1}) - log f_{t-1}(z_{t-1})
          = sum_{t=1..T} (beta_t - beta_{t-1}) [log p(x, z_{t-1}) - log pi_0(z_{t-1})],

with E[w] = p(x). log (1/C) sum_c w_c over C independent chains is a stochastic lower bound on
log p(x) (Jensen), whose bias vanishes as T grows. T = 1 is importance sampling with proposal
pi_0 and C particles.

The transitions are HMC (Neal 2011, "MCMC using Hamiltonian dynamics"): unit mass, ``leapfrog``
leapfrog steps, one Metropolis test. AIS's weight is unbiased (E[w] = p(x)) only when each
transition is fixed independently of the chain it moves; a step size adapted from the weighted
chains' own acceptance, as Wu, Burda, Salakhutdinov & Grosse ("On the quantitative analysis of
decoder-based generative models", ICLR 2017) do, breaks that (on the exact 1-D linear-Gaussian
model, one chain and 100 steps: E[w] / p(x) = 1.06), and in reverse AIS, whose chains all start at
the one exact sample z*, it makes the steps depend on z*. So the step sizes are chosen by a
*pilot*: ``pilot_chains`` further chains per example, drawn from the start distribution and run
through the same schedule, unweighted, with the step size adapted after every transition,
log eps += ADAPT_RATE (mean acceptance probability over the pilot chains - ``target_accept``).
The pilot's step size at each transition is then frozen and used by the weighted chains (and,
read backwards, by the reverse chains of BDMC): their transitions depend on x and on the pilot's
independent random numbers only, so every weight keeps E[w] = p(x) (reverse: E[w_rev] = 1/p(x)).
The pilot costs ``pilot_chains`` / ``chains`` of the weighted run (a quarter at the defaults).

Bidirectional Monte Carlo (Grosse, Ghahramani & Adams 2015, "Sandwiching the marginal
likelihood using bidirectional Monte Carlo") brackets log p(x) on data simulated from the model:
(z*, x) ~ p(z) p(x|z) makes z* an exact posterior sample of x, from which AIS run backwards
(beta from 1 to 0) has weights w_rev with E[w_rev] = 1 / p(x); -log mean(w_rev) is a stochastic
upper bound. The gap between the two bounds bounds the error of either.

Everything is vectorized over examples and chains: the decoder sees (chains x examples) rows per
call, examples are cut into passes of about ``rows`` rows; only the annealing and leapfrog steps
are Python loops.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterator, NamedTuple

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from tqdm.auto import tqdm

from ..core.devices import fork_rng, module_device
from ..core.errors import ConfigError
from ..core.registry import Registry
from .evaluate import eval_mode, log_mean_exp

STARTS = ("prior", "posterior")
ANNEALING: Registry[Callable[[int], list[float]]] = Registry("annealing schedule")
ADAPT_RATE = 0.25  # the pilot's log step size change per unit of (acceptance - target), per transition
SIGMOID_DELTA = 4.0  # the sigmoid schedule's steepness (Grosse et al. 2015; Wu et al. 2017)


@ANNEALING.register("sigmoid")
def sigmoid_schedule(steps: int) -> list[float]:
    """beta_t = (s_t - s_0) / (s_T - s_0), s_t = sigmoid(delta (2 t / T - 1)), delta = 4: the
    schedule of Grosse et al. (2015) and Wu et al. (2017), denser near both ends of the path,
    where log f_t changes fastest (p(x|z)^beta narrows the prior quickly at small beta)."""
    s = [1 / (1 + math.exp(-SIGMOID_DELTA * (2 * t / steps - 1))) for t in range(steps + 1)]
    return [(v - s[0]) / (s[-1] - s[0]) for v in s]


@ANNEALING.register("linear")
def linear_schedule(steps: int) -> list[float]:
    """beta_t = t / T."""
    return [t / steps for t in range(steps + 1)]


class AISResult(NamedTuple):
    """Per-example AIS estimates."""

    log_likelihood: Tensor  # [N] log (1/C) sum_c w_c (for a reverse run: -log (1/C) sum_c w_rev,c)
    # [N] its delta-method standard error over the C chains (nan with one chain). Forward chains
    # are independent given x, so this is the estimate's error; reverse chains share one z*, so
    # for them it is the error given z* and leaves out the spread over z* (``summarize_bdmc``).
    stderr: Tensor
    acceptance_rate: Tensor  # [N] fraction of the weighted chains' HMC proposals accepted, over chains and transitions
    step_size: Tensor  # [N] the leapfrog step size the pilot ended with (that of the last transition when steps > 1)
    log_weights: Tensor  # [C, N] each chain's AIS log-weight


class BDMCResult(NamedTuple):
    """Bidirectional Monte Carlo on simulated data (``bdmc``)."""

    x: Tensor  # [N, *event] data simulated from the model
    z: Tensor  # [N, D] the latents that generated it: exact posterior samples
    lower: AISResult  # forward AIS: its log_likelihood is a stochastic lower bound
    upper: AISResult  # reverse AIS from z: its log_likelihood is a stochastic upper bound

    @property
    def gap(self) -> Tensor:  # [N]
        return self.upper.log_likelihood - self.lower.log_likelihood


class _State(NamedTuple):
    """Particles z (C, b, D) with log pi_0(z), log p(x, z) (C, b) and their gradients (C, b, D)."""

    z: Tensor
    log_start: Tensor
    log_joint: Tensor
    grad_start: Tensor
    grad_joint: Tensor

    def log_f(self, beta: float) -> Tensor:
        return self.log_start + beta * (self.log_joint - self.log_start)

    def grad_log_f(self, beta: float) -> Tensor:
        return self.grad_start + beta * (self.grad_joint - self.grad_start)

    def where(self, keep_new: Tensor, new: "_State") -> "_State":
        """``new`` where keep_new (C, b) is true, else self."""
        vec = keep_new.unsqueeze(-1)
        return _State(*(torch.where(vec if a.dim() == 3 else keep_new, b, a) for a, b in zip(self, new)))


class _Path:
    """The geometric path between pi_0 (the prior, or q(z|x)) and p(z) p(x|z) for examples x."""

    def __init__(self, model: nn.Module, x: Tensor, prior: Distribution, start: Distribution | None) -> None:
        self.model, self.x, self.prior, self.start = model, x, prior, start

    def __call__(self, z: Tensor) -> _State:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)  # (C, b, D)
            log_prior = self.prior.log_prob(z)  # (C, b)
            log_joint = log_prior + self.model.decode(z).log_prob(self.x)
            log_start = log_prior if self.start is None else self.start.log_prob(z)
            (grad_start,) = torch.autograd.grad(log_start.sum(), z, retain_graph=True)
            (grad_joint,) = torch.autograd.grad(log_joint.sum(), z)
        return _State(z.detach(), log_start.detach(), log_joint.detach(), grad_start, grad_joint)


def _hmc(path: _Path, s: _State, beta: float, eps: Tensor, leapfrog: int) -> tuple[_State, Tensor, Tensor]:
    """One HMC transition leaving f_beta invariant; eps (b, 1) per example. Returns the new state,
    the acceptance probabilities and the acceptance indicators (C, b)."""
    p0 = torch.randn_like(s.z)  # (C, b, D), unit mass
    p = p0 + 0.5 * eps * s.grad_log_f(beta)
    new = s
    for step in range(leapfrog):
        new = path(new.z + eps * p)
        p = p + (eps if step < leapfrog - 1 else 0.5 * eps) * new.grad_log_f(beta)
    log_ratio = new.log_f(beta) - s.log_f(beta) - 0.5 * (p.square().sum(-1) - p0.square().sum(-1))  # (C, b)
    # a trajectory that diverged (non-finite energy or gradient) is rejected
    prob = torch.where(log_ratio.isfinite(), log_ratio.clamp(max=0).exp(), torch.zeros_like(log_ratio))
    accept = torch.rand_like(prob) < prob
    return s.where(accept, new), prob, accept


def _pilot(path: _Path, z: Tensor, betas: list[float], leapfrog: int, step_size: float, target_accept: float,
           bar: tqdm) -> Tensor:  # fmt: skip
    """Runs unweighted pilot chains z (P, b, D) through the transitions of f_{betas[1]}, ...,
    f_{betas[-2]}, adapting each example's step size towards ``target_accept`` after every
    transition. Returns the step size each transition used, (T - 1, b): the schedule the weighted
    chains then follow, fixed before they start."""
    s = path(z)
    log_eps = torch.full(s.log_joint.shape[1:], math.log(step_size), dtype=z.dtype, device=z.device)  # (b,)
    used = []
    for t in range(1, len(betas) - 1):
        used.append(log_eps)
        s, prob, _ = _hmc(path, s, betas[t], log_eps.exp().unsqueeze(-1), leapfrog)
        log_eps = log_eps + ADAPT_RATE * (prob.mean(0) - target_accept)
        bar.update(1)
    bar.update(1)  # the last intermediate distribution needs no transition
    return torch.stack(used).exp() if used else log_eps.new_empty(0, *log_eps.shape)


def _anneal(path: _Path, z: Tensor, betas: list[float], leapfrog: int, eps: Tensor | None,
            bar: tqdm) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Runs the chains z (C, b, D) through f_{betas[0]}, ..., f_{betas[-1]} (increasing: forward AIS;
    decreasing: reverse), transition t with the step sizes eps[t - 1] (b,), fixed in advance (None:
    there are no transitions, T = 1).
    Returns the log-weights (C, b) and the acceptance rate (b,)."""
    s = path(z)
    log_w = torch.zeros_like(s.log_joint)  # (C, b)
    accepted = torch.zeros_like(log_w[0])  # (b,)
    for t in range(1, len(betas)):
        log_w = log_w + (betas[t] - betas[t - 1]) * (s.log_joint - s.log_start)
        if t < len(betas) - 1:  # the last transition would not change the weight
            s, prob, accept = _hmc(path, s, betas[t], eps[t - 1].unsqueeze(-1), leapfrog)
            accepted = accepted + accept.to(prob.dtype).mean(0)
        bar.update(1)
    transitions = len(betas) - 2
    rate = accepted / transitions if transitions > 0 else torch.full_like(accepted, math.nan)
    return log_w, rate


def _check(steps: int, chains: int, leapfrog: int, start: str, schedule: str, target_accept: float,
           step_size: float, pilot_chains: int) -> None:  # fmt: skip
    for name, value in (("steps", steps), ("chains", chains), ("leapfrog", leapfrog), ("pilot_chains", pilot_chains)):
        if value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if start not in STARTS:
        raise ConfigError(f"unknown AIS start {start!r}; choose one of: {', '.join(STARTS)}")
    ANNEALING[schedule]  # an unknown name lists the valid ones
    if not 0 < target_accept < 1:
        raise ConfigError(f"target_accept must lie strictly between 0 and 1, got {target_accept}")
    if not (step_size > 0 and math.isfinite(step_size)):
        raise ConfigError(f"step_size must be a positive number, got {step_size}")


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """The caller's random stream when seed is None; else a private stream seeded with it, the
    caller's left untouched."""
    if seed is None:
        yield
        return
    with fork_rng(device):
        torch.manual_seed(seed)
        yield


def _start_draws(prior: Distribution, q: Distribution | None, chains: int, b: int) -> Tensor:
    """chains draws per example from pi_0: q(z|x) when given, else the prior. (chains, b, D)"""
    return q.sample((chains,)) if q is not None else prior.sample((chains, b))


def _check_start_density(q: Distribution | None, z: Tensor) -> None:
    """AIS from q(z|x) needs log q(z|x) at any z: a one-line error for a posterior without it."""
    if q is None:
        return
    try:
        q.log_prob(z)
    except ConfigError:
        raise ConfigError(
            "AIS from the encoder (start='posterior', --ais-start posterior) needs log q(z|x) at any z, which "
            "this flow posterior cannot compute (no closed-form inverse); start from the prior instead"
        ) from None


def _run(model: nn.Module, x: Tensor, z_exact: Tensor | None, *, forward: bool, steps: int, chains: int,
         leapfrog: int, start: str, schedule: str, target_accept: float, step_size: float, pilot_chains: int,
         rows: int, bar: tqdm) -> tuple[AISResult | None, AISResult | None]:  # fmt: skip
    """Forward AIS on x (when ``forward``) and reverse AIS from the exact posterior samples z_exact
    (N, D) (when given), examples in passes of about ``rows`` decoder rows. One pilot per pass fixes
    the step sizes of both directions. Returns (forward result or None, reverse result or None)."""
    betas = ANNEALING[schedule](steps)
    n = x.shape[0]
    per_pass = max(1, rows // chains)
    device = module_device(model)
    x = x.clone() if x.is_inference() else x  # the gradient passes need x outside inference mode
    outs: dict[str, list[Tensor]] = {}
    wanted = (["forward"] if forward else []) + (["reverse"] if z_exact is not None else [])
    for i in range(0, n, per_pass):
        xb = x[i : i + per_pass].to(device)
        b = xb.shape[0]
        prior = model.prior()
        q = model.encode(xb) if start == "posterior" else None  # batch (b,)
        path = _Path(model, xb, prior, q)
        if len(betas) > 2:  # a pilot only where there are transitions to choose step sizes for
            pilot_z = _start_draws(prior, q, pilot_chains, b)  # (P, b, D)
            _check_start_density(q, pilot_z)
            eps = _pilot(path, pilot_z, betas, leapfrog, step_size, target_accept, bar)  # (T - 1, b)
        else:  # T = 1: importance sampling, no step sizes to choose
            bar.update(len(betas) - 1)
            eps = None
        for direction in wanted:
            if direction == "forward":
                z = _start_draws(prior, q, chains, b)  # (C, b, D)
                if eps is None:  # no pilot drew from q(z|x) before
                    _check_start_density(q, z)
                log_w, rate = _anneal(path, z, betas, leapfrog, eps, bar)
                estimate, stderr = log_mean_exp(log_w)
            else:
                z = z_exact[i : i + b].to(device).expand(chains, b, *z_exact.shape[1:]).clone()  # (C, b, D)
                log_w, rate = _anneal(path, z, betas[::-1], leapfrog, None if eps is None else eps.flip(0), bar)
                estimate, stderr = log_mean_exp(log_w)
                estimate = -estimate  # the upper bound -log mean(w_rev); its delta-method error given z* is the same
            if direction not in outs:
                outs[direction] = [torch.empty(n, dtype=log_w.dtype, device=x.device) for _ in range(4)]
                outs[direction].append(torch.empty(chains, n, dtype=log_w.dtype, device=x.device))
            out = outs[direction]
            final_eps = eps[-1] if eps is not None else torch.full_like(rate, step_size)
            for full, part in zip(out, (estimate, stderr, rate, final_eps)):
                full[i : i + b] = part
            out[4][:, i : i + b] = log_w
    result = {direction: AISResult(*out) for direction, out in outs.items()}
    return result.get("forward"), result.get("reverse")


def _bar(total_examples: int, options: dict, directions: int, desc: str, progress: bool) -> tqdm:
    """A progress bar over annealing steps: the pilot's and each direction's, in every pass."""
    passes = math.ceil(total_examples / max(1, options["rows"] // options["chains"]))
    return tqdm(total=(1 + directions) * passes * options["steps"], disable=not progress,
                desc=f"{desc}, {options['chains']} chains", unit="step")  # fmt: skip


@torch.no_grad()
def ais(
    model: nn.Module,
    x: Tensor,
    *,
    steps: int = 1000,
    chains: int = 16,
    leapfrog: int = 10,
    start: str = "prior",
    schedule: str = "sigmoid",
    target_accept: float = 0.65,
    step_size: float = 0.1,
    pilot_chains: int = 4,
    rows: int = 1000,
    seed: int | None = None,
    progress: bool = False,
) -> AISResult:
    """log p(x) by annealed importance sampling with HMC transitions (Neal 2001), per example.

    Args:
        model: exposes ``prior()``, ``encode(x)`` (for start="posterior") and ``decode(z)``.
        x: data (N, *event_shape), on any device: each pass of examples is moved to the model's.
        steps: T, the number of intermediate distributions (T - 1 HMC transitions; T = 1 is
            importance sampling with ``chains`` particles from the start distribution).
        chains: C independent AIS chains per example; the estimate is log (1/C) sum_c w_c.
        leapfrog: leapfrog steps per HMC transition.
        start: "prior" (pi_0 = p(z), f_t = p(z) p(x|z)^beta_t) or "posterior" (pi_0 = q(z|x), the
            encoder; needs log q(z|x) at any z, so planar flows are refused).
        schedule: the betas: "sigmoid" (default; Grosse et al. 2015) or "linear" (``ANNEALING``).
        target_accept: the acceptance rate the pilot adapts the step sizes towards.
        step_size: the pilot's initial leapfrog step size for every example.
        pilot_chains: unweighted chains per example that choose the step size of every transition
            before the weighted chains run (see the module docstring); their weights are not used.
        rows: decoder rows (chains x examples) per pass; a pass keeps all chains of its examples.
        seed: seeds a private random stream (the caller's is untouched); None draws from the
            caller's stream (``torch.manual_seed``).
        progress: show a progress bar over annealing steps.
    Returns:
        ``AISResult`` of per-example tensors on x's device. The standard error sd(w) / (sqrt(C)
        mean(w)) is the delta-method error over the chains (as in ``evaluate.log_likelihood``);
        it does not include the bias of a too-short schedule, which shows as an estimate that
        still rises with ``steps``.
    """
    options = dict(steps=steps, chains=chains, leapfrog=leapfrog, start=start, schedule=schedule,
                   target_accept=target_accept, step_size=step_size, pilot_chains=pilot_chains, rows=rows)  # fmt: skip
    _check(**{k: v for k, v in options.items() if k != "rows"})
    with eval_mode(model), _seeded(seed, module_device(model)), _bar(x.shape[0], options, 1, "AIS", progress) as bar:
        return _run(model, x, None, forward=True, **options, bar=bar)[0]


@torch.no_grad()
def reverse_ais(
    model: nn.Module,
    x: Tensor,
    z: Tensor,
    *,
    steps: int = 1000,
    chains: int = 16,
    leapfrog: int = 10,
    start: str = "prior",
    schedule: str = "sigmoid",
    target_accept: float = 0.65,
    step_size: float = 0.1,
    pilot_chains: int = 4,
    rows: int = 1000,
    seed: int | None = None,
    progress: bool = False,
) -> AISResult:
    """Reverse AIS (Grosse, Ghahramani & Adams 2015) from exact posterior samples: an upper bound
    on log p(x) for data whose latents are known, such as data simulated from the model.

    The ``chains`` chains of example i start at z[i], which must be an exact draw from
    p(z | x[i]), and run beta from 1 to 0 with the step sizes of a forward pilot on x[i] (as in
    ``ais``, independent of z[i]); their weights have E[w_rev] = 1 / p(x), so
    -log (1/C) sum_c w_rev,c is a stochastic upper bound. All chains of an example share z[i], so
    the result's ``stderr`` is the error given z[i], not over the draw of z[i].

    Args: as ``ais``; z (N, D) holds one exact posterior sample per example.
    Returns:
        ``AISResult``: ``log_likelihood`` is the upper bound per example, ``log_weights`` are the
        log w_rev.
    """
    options = dict(steps=steps, chains=chains, leapfrog=leapfrog, start=start, schedule=schedule,
                   target_accept=target_accept, step_size=step_size, pilot_chains=pilot_chains, rows=rows)  # fmt: skip
    _check(**{k: v for k, v in options.items() if k != "rows"})
    if z.shape[0] != x.shape[0]:
        raise ConfigError(f"z has {z.shape[0]} rows but x has {x.shape[0]} examples; pass one posterior sample per example")
    with eval_mode(model), _seeded(seed, module_device(model)), _bar(x.shape[0], options, 1, "reverse AIS", progress) as bar:
        return _run(model, x, z, forward=False, **options, bar=bar)[1]


@torch.no_grad()
def bdmc(
    model: nn.Module,
    n: int,
    *,
    steps: int = 1000,
    chains: int = 16,
    leapfrog: int = 10,
    start: str = "prior",
    schedule: str = "sigmoid",
    target_accept: float = 0.65,
    step_size: float = 0.1,
    pilot_chains: int = 4,
    rows: int = 1000,
    seed: int | None = None,
    progress: bool = False,
) -> BDMCResult:
    """Bidirectional Monte Carlo (Grosse, Ghahramani & Adams 2015) on n examples simulated from
    the model: (z*, x) ~ p(z) p(x|z), x drawn from ``decode(z*).sample()``.

    The forward AIS estimate (``ais`` with the same options) is a stochastic lower bound on
    log p(x); reverse AIS, started at the exact posterior sample z* with beta running from 1 to
    0 (``chains`` chains from the same z*), gives weights with E[w_rev] = 1 / p(x), so
    -log (1/C) sum_c w_rev,c is a stochastic upper bound. One pilot per example fixes the step
    sizes of both directions. Both tighten as ``steps`` grows; their gap bounds the error of
    either on data like x.

    Args: as ``ais``; n is the number of simulated examples.
    Returns:
        ``BDMCResult``: the data, z*, the forward (``lower``) and reverse (``upper``) results;
        ``summarize_bdmc`` gives the means and their standard errors.
    """
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    options = dict(steps=steps, chains=chains, leapfrog=leapfrog, start=start, schedule=schedule,
                   target_accept=target_accept, step_size=step_size, pilot_chains=pilot_chains, rows=rows)  # fmt: skip
    _check(**{k: v for k, v in options.items() if k != "rows"})
    with eval_mode(model), _bar(n, options, 2, "BDMC", progress) as bar:
        prior = model.prior()
        with _seeded(seed, module_device(model)):
            z = prior.sample((n,))  # (N, D)
            x = model.decode(z).sample()  # (N, *event)
            lower, upper = _run(model, x, z, forward=True, **options, bar=bar)
    assert lower is not None and upper is not None
    return BDMCResult(x, z, lower, upper)


def summarize_ais(result: AISResult) -> dict:
    """Means over examples with the keys of ``vaelab evaluate --method ais --json``:
    ``log_likelihood``, ``log_likelihood_stderr`` (independent per-example errors combined,
    sqrt(sum se_i^2) / N), ``acceptance_rate``, ``step_size``, ``n_examples``."""
    n = result.log_likelihood.shape[0]
    return {
        "log_likelihood": result.log_likelihood.mean().item(),
        "log_likelihood_stderr": (result.stderr.square().sum().sqrt() / n).item(),
        "acceptance_rate": result.acceptance_rate.mean().item(),
        "step_size": result.step_size.mean().item(),
        "n_examples": n,
    }


def summarize_bdmc(result: BDMCResult) -> dict:
    """Means over examples with the keys of ``vaelab evaluate --method bdmc --json``: ``ais_lower``,
    ``ais_upper``, ``bdmc_gap`` (upper - lower), their standard errors, ``acceptance_rate`` (both
    directions), ``step_size`` and ``n_examples``.

    What each standard error covers (all are errors of the mean over these n examples):
    ``ais_lower_stderr``: the forward chains, independent given x (the delta method per example,
    combined). ``bdmc_gap_stderr``: sd(upper_i - lower_i) / sqrt(n) over the examples, each gap a
    function of its own z* and chains; the paired difference removes the examples' own log p(x),
    so the spread holds the draw of z* and both directions' chains (and how the gap varies from
    example to example, which only widens it). ``ais_upper_stderr``: the same number. The reverse
    chains of an example share one z*, so their spread (the delta method over chains) misses the
    draw of z*, by far the larger part for short schedules; an example has one exact z*, so that
    draw is seen only across examples. Both are nan for n = 1.
    """
    lo, up = result.lower, result.upper
    n = lo.log_likelihood.shape[0]
    lower, upper = lo.log_likelihood.mean().item(), up.log_likelihood.mean().item()
    gap = up.log_likelihood - lo.log_likelihood  # (n,)
    gap_se = (gap.std() / math.sqrt(n)).item() if n > 1 else math.nan
    return {
        "ais_lower": lower,
        "ais_lower_stderr": (lo.stderr.square().sum().sqrt() / n).item(),
        "ais_upper": upper,
        "ais_upper_stderr": gap_se,
        "bdmc_gap": upper - lower,
        "bdmc_gap_stderr": gap_se,
        "acceptance_rate": (0.5 * (lo.acceptance_rate + up.acceptance_rate)).mean().item(),
        "step_size": lo.step_size.mean().item(),
        "n_examples": n,
    }
