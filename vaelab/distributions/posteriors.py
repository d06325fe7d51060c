"""Posterior families q(z|x): what the encoder's output vector means.

The encoder emits ``param_size`` numbers per example; a ``Posterior`` module turns them into a
``torch.distributions`` object with batch shape (B,) and event shape (latent_dim,). Every
objective, the evaluator and the diagnostics see only that object, so a new family changes
nothing else. Families (``--posterior``):

- ``gaussian``: diagonal Gaussian, parameters (mean, log variance) - the default.
- ``full``: full-covariance Gaussian N(mu, L L^T) with a Cholesky factor L: diagonal
  exp(log variance / 2), the D(D-1)/2 entries below it free.
- ``planar:K``: K planar flows (Rezende & Mohamed 2015) on a diagonal Gaussian, every flow's
  parameters (u, w, b) emitted by the encoder per example.
- ``iaf:K``: K steps of inverse autoregressive flow (Kingma et al. 2016) on a diagonal
  Gaussian: a MADE network per step, shared across examples, conditioned on a per-example
  context vector from the encoder; the order of z is reversed between steps.

Local (per-example) variational inference (``local.fit_local``) optimizes the same parameter
vector for each example, so L[q*] is always the best bound within the encoder's family.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Distribution,
    Independent,
    MultivariateNormal,
    Normal,
    register_kl,
)

from ..core.errors import ConfigError
from ..core.registry import Registry
from .observation import (
    PosteriorMultivariateNormal,
    fp32_inputs,
    full_precision,
    posterior_gaussian,
    stop_gradient,
)

POSTERIORS: Registry[Callable[..., "Posterior"]] = Registry("posterior")

# a flow step: z (*S, B, D) -> (f(z), log |det df/dz|) with the log-determinant of shape (*S, B)
FlowStep = Callable[[Tensor], "tuple[Tensor, Tensor]"]


class Posterior(nn.Module):
    """Maps the encoder's output (B, param_size) to q(z|x)."""

    param_size: int

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.register_forward_pre_hook(fp32_inputs)  # the encoder's output, in fp32 under mixed precision
        self.latent_dim = latent_dim

    def neutral(self, batch: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Parameters (batch, param_size) that start ``fit_local(init="prior")``: all zeros, i.e.
        mean 0 and log variance 0 (N(0, I) for the Gaussians; planar flows with u = w = b = 0
        are the identity). IAF is the exception (``IAFPosterior.neutral``): its flow steps are
        shared networks, not per-example parameters, so its start is not N(0, I)."""
        return torch.zeros(batch, self.param_size, dtype=dtype, device=device)


def parse_spec(spec: str, what: str = "posterior") -> tuple[str, int | None]:
    """Splits ``name`` or ``name:K`` into (name, K)."""
    name, sep, count = spec.partition(":")
    if not sep:
        return name, None
    try:
        k = int(count)
    except ValueError:
        k = 0
    if k < 1:
        raise ConfigError(f"--{what} {spec}: the number after ':' must be a positive integer, e.g. {name}:4")
    return name, k


FLOWS = ("planar", "iaf")


def check_posterior(spec: str) -> tuple[str, int | None]:
    """Validates a ``--posterior`` value; returns (family, flow steps or None)."""
    name, k = parse_spec(spec)
    POSTERIORS[name]  # raises ConfigError listing the families
    if name in FLOWS and k is None:
        raise ConfigError(f"posterior= {name} needs a number of flow steps, e.g. {name}:4")
    if name not in FLOWS and k is not None:
        raise ConfigError(f"posterior= {name} takes no ':K' (flows do: planar:K, iaf:K)")
    return name, k


def build_posterior(spec: str, latent_dim: int) -> Posterior:
    """The posterior family named by ``spec`` ("gaussian", "full", "planar:K", "iaf:K")."""
    name, k = check_posterior(spec)
    return POSTERIORS[name](latent_dim, k) if k is not None else POSTERIORS[name](latent_dim)


@POSTERIORS.register("gaussian")
class DiagonalGaussianPosterior(Posterior):
    """N(mu, diag(exp(log_var))); parameters (mu, log_var)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.param_size = 2 * latent_dim

    def forward(self, h: Tensor) -> Distribution:
        mean, log_var = h.chunk(2, dim=-1)
        return posterior_gaussian(mean, (0.5 * log_var).exp())


@POSTERIORS.register("full")
class FullGaussianPosterior(Posterior):
    """N(mu, L L^T) with L lower triangular: diagonal exp(log_var / 2), free entries below it;
    parameters (mu, log_var, the D(D-1)/2 below-diagonal entries row by row)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        d = latent_dim
        self.param_size = 2 * d + d * (d - 1) // 2
        rows, cols = torch.tril_indices(d, d, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, h: Tensor) -> Distribution:
        d = self.latent_dim
        mean, log_var, below = h[..., :d], h[..., d : 2 * d], h[..., 2 * d :]
        tril = h.new_zeros(*h.shape[:-1], d, d)
        tril[..., self.rows, self.cols] = below
        tril = tril + torch.diag_embed((0.5 * log_var).exp())
        return PosteriorMultivariateNormal(mean, scale_tril=tril, validate_args=False)


@register_kl(MultivariateNormal, Independent)
def _kl_full_diagonal(q: MultivariateNormal, p: Independent) -> Tensor:
    """KL(N(mu_q, L L^T) || N(mu_p, diag(s^2))) in closed form:
    0.5 [sum_ij L_ij^2 / s_i^2 + sum_i (mu_p - mu_q)_i^2 / s_i^2 - D + 2 sum log s - 2 sum log L_ii]."""
    base = p.base_dist
    if not (isinstance(base, Normal) and p.reinterpreted_batch_ndims == 1):
        raise NotImplementedError
    var = base.scale.square()
    trace = (q.scale_tril.square() / var.unsqueeze(-1)).sum((-2, -1))
    mahalanobis = ((base.loc - q.loc).square() / var).sum(-1)
    log_det_q = 2 * q.scale_tril.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    log_det_p = var.log().sum(-1)
    return 0.5 * (trace + mahalanobis - q.loc.shape[-1] + log_det_p - log_det_q)


# -- normalizing flows ------------------------------------------------------------------------


class FlowDistribution(Distribution):
    """z = f_K(...f_1(z_0)), z_0 ~ base, with log q(z) = log base(z_0) - sum_k log |det df_k/dz|.

    The density of a sample is known exactly as it is drawn: ``rsample`` remembers
    (z, log q(z)) for its last draws, and ``log_prob`` returns that value for those very tensors
    (the same object, as ``estimators.Particles`` passes them). For any other z, ``log_prob``
    inverts the flow when every step can be inverted (``inverse``; IAF: one network pass per
    latent dimension) and otherwise raises ``ConfigError`` (planar flows have no closed-form
    inverse). ``mean`` is the base mean pushed through the flow: a point summary for
    reconstructions, latent plots and active units (the flow's exact mean has no closed form).
    """

    arg_constraints: dict = {}
    has_rsample = True
    CACHE = 4

    def __init__(self, base: Distribution, steps: list[FlowStep], inverses: list[FlowStep] | None = None) -> None:
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)
        self.base = base
        self.steps = steps
        self.inverses = inverses
        self._drawn: list[tuple[Tensor, Tensor]] = []

    def _forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        log_q = self.base.log_prob(z)
        for step in self.steps:
            z, log_det = step(z)
            log_q = log_q - log_det
        return z, log_q

    def rsample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        z, log_q = self._forward(self.base.rsample(sample_shape))
        self._drawn = [*self._drawn[-(self.CACHE - 1) :], (z, log_q)]
        return z

    def sample(self, sample_shape: tuple[int, ...] = ()) -> Tensor:
        # no gradient path, and not remembered: a later log_prob(z) recomputes the density with
        # its gradient to q's parameters (for the score-function estimator), or refuses.
        with torch.no_grad():
            return self._forward(self.base.sample(sample_shape))[0]

    def log_prob(self, value: Tensor) -> Tensor:
        for z, log_q in self._drawn:
            if value is z:
                return log_q
        if self.inverses is None:
            raise ConfigError(
                "this flow posterior has no closed-form inverse, so it can score only its own "
                "reparameterized samples (log q of other points, e.g. for the score-function "
                "estimator or a VampPrior, needs posterior= gaussian, full or iaf:K)"
            )
        z, log_det_inv = value, value.new_zeros(())
        for inverse in reversed(self.inverses):
            z, log_det = inverse(z)
            log_det_inv = log_det_inv + log_det
        return self.base.log_prob(z) + log_det_inv

    @property
    def mean(self) -> Tensor:
        z = self.base.mean
        for step in self.steps:
            z = step(z)[0]
        return z


@stop_gradient.register
def _(q: FlowDistribution) -> Distribution:
    raise ConfigError(
        "the stl and dreg gradient estimators are not implemented for flow posteriors (log q at "
        "a sample with the flow's parameters detached needs the inverse); use grad_estimator= reparam"
    )


def planar_step(u: Tensor, w: Tensor, b: Tensor) -> FlowStep:
    """f(z) = z + u^ tanh(w.z + b) (Rezende & Mohamed 2015, appendix A.1), with u replaced by
    u^ = u + (m(w.u) - w.u) w / |w|^2, m(a) = -1 + softplus(a), so that w.u^ >= -1 and f is
    invertible. u, w: (B, D); b: (B,)."""
    wu = (w * u).sum(-1, keepdim=True)
    u_hat = u + (F.softplus(wu) - 1 - wu) * w / (w.square().sum(-1, keepdim=True) + 1e-12)

    def step(z: Tensor) -> tuple[Tensor, Tensor]:
        h = torch.tanh((z * w).sum(-1, keepdim=True) + b.unsqueeze(-1))
        # det(I + u^ psi^T) = 1 + psi.u^ with psi = tanh'(.) w; >= 0 because w.u^ >= -1
        det = 1 + (1 - h.square()).squeeze(-1) * (w * u_hat).sum(-1)
        return z + u_hat * h, det.abs().clamp_min(1e-30).log()

    return step


@POSTERIORS.register("planar")
class PlanarPosterior(Posterior):
    """K planar flows on a diagonal Gaussian; parameters (mu, log_var, then u, w, b per flow)."""

    def __init__(self, latent_dim: int, flows: int) -> None:
        super().__init__(latent_dim)
        self.flows = flows
        self.param_size = 2 * latent_dim + flows * (2 * latent_dim + 1)

    def forward(self, h: Tensor) -> Distribution:
        d = self.latent_dim
        mean, log_var = h[..., :d], h[..., d : 2 * d]
        steps = []
        for k in range(self.flows):
            off = 2 * d + k * (2 * d + 1)
            u, w, b = h[..., off : off + d], h[..., off + d : off + 2 * d], h[..., off + 2 * d]
            steps.append(planar_step(u, w, b))
        return FlowDistribution(posterior_gaussian(mean, (0.5 * log_var).exp()), steps)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (MADE, Germain et al. 2015)."""

    def __init__(self, n_in: int, n_out: int, mask: Tensor) -> None:
        super().__init__(n_in, n_out)
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Autoregressive network: outputs m_d, s_d depend on z_1..z_{d-1} (and the context) only.

    One hidden layer of ``hidden`` ELU units that sees z through a masked layer and the context
    through a dense one; hidden unit j has degree 1 + j mod (D - 1) and sees z_i for i <= its
    degree; output d sees hidden units of degree < d.
    """

    def __init__(self, dim: int, context: int, hidden: int) -> None:
        super().__init__()
        degrees_in = torch.arange(1, dim + 1)
        degrees_hidden = torch.arange(hidden) % max(1, dim - 1) + 1
        mask_in = (degrees_hidden[:, None] >= degrees_in[None, :])  # (hidden, dim)
        mask_out = (degrees_in[:, None] > degrees_hidden[None, :])  # (dim, hidden)
        self.inp = MaskedLinear(dim, hidden, mask_in)
        self.ctx = nn.Linear(context, hidden, bias=False)
        self.out_m = MaskedLinear(hidden, dim, mask_out)
        self.out_s = MaskedLinear(hidden, dim, mask_out)

    def forward(self, z: Tensor, context: Tensor) -> tuple[Tensor, Tensor]:
        hid = F.elu(self.inp(z) + self.ctx(context))
        return full_precision(self.out_m(hid)), full_precision(self.out_s(hid))


@POSTERIORS.register("iaf")
class IAFPosterior(Posterior):
    """K steps of inverse autoregressive flow on a diagonal Gaussian (Kingma et al. 2016).

    Step k: [m, s] = MADE_k(z, h); sigma = sigmoid(s + forget_bias); z <- sigma z + (1 - sigma) m,
    log det = sum log sigma (the numerically stable form of the paper's eq. 11-14); z's order is
    reversed before each step after the first, so every dimension gets to depend on every other.
    Parameters per example: (mu, log_var, context h of ``latent_dim`` numbers).
    """

    forget_bias = 1.0  # sigma starts near sigmoid(1) = 0.73: close to the identity, as the paper advises

    def __init__(self, latent_dim: int, flows: int, hidden: int | None = None) -> None:
        super().__init__(latent_dim)
        self.flows = flows
        self.context = latent_dim
        self.param_size = 2 * latent_dim + self.context
        hidden = hidden or max(64, 4 * latent_dim)
        self.made = nn.ModuleList(MADE(latent_dim, self.context, hidden) for _ in range(flows))

    def neutral(self, batch: int, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> Tensor:
        """Zeros: base N(0, I) and a zero context. The MADE networks are shared across examples,
        not per-example parameters, so this cannot switch the flow off: the distribution it
        gives is N(0, I) pushed through the flow (with forget_bias 1 each step contracts z
        towards the MADE's output), not N(0, I) itself."""
        return super().neutral(batch, dtype, device)

    def _step(self, k: int, context: Tensor) -> FlowStep:
        made = self.made[k]
        flip = k > 0

        def step(z: Tensor) -> tuple[Tensor, Tensor]:
            if flip:
                z = z.flip(-1)
            lead = torch.broadcast_shapes(z.shape[:-1], context.shape[:-1])
            z = z.expand(*lead, z.shape[-1])
            m, s = made(z, context.expand(*lead, context.shape[-1]))
            gate = torch.sigmoid(s + self.forget_bias)
            return gate * z + (1 - gate) * m, F.logsigmoid(s + self.forget_bias).sum(-1)

        return step

    def _inverse(self, k: int, context: Tensor) -> FlowStep:
        """y -> (z, log |det dz/dy|) for step k, one dimension at a time (D MADE passes)."""
        made = self.made[k]
        flip = k > 0

        def inverse(y: Tensor) -> tuple[Tensor, Tensor]:
            lead = torch.broadcast_shapes(y.shape[:-1], context.shape[:-1])
            y, ctx = y.expand(*lead, y.shape[-1]), context.expand(*lead, context.shape[-1])
            z = torch.zeros_like(y)
            for d in range(self.latent_dim):
                m, s = made(z, ctx)
                gate = torch.sigmoid(s[..., d] + self.forget_bias)
                z = z.clone()
                z[..., d] = (y[..., d] - (1 - gate) * m[..., d]) / gate
            _, s = made(z, ctx)
            log_det = -F.logsigmoid(s + self.forget_bias).sum(-1)
            return (z.flip(-1) if flip else z), log_det

        return inverse

    def forward(self, h: Tensor) -> Distribution:
        d = self.latent_dim
        mean, log_var, context = h[..., :d], h[..., d : 2 * d], h[..., 2 * d :]
        steps = [self._step(k, context) for k in range(self.flows)]
        inverses = [self._inverse(k, context) for k in range(self.flows)]
        return FlowDistribution(posterior_gaussian(mean, (0.5 * log_var).exp()), steps, inverses)

