"""The Gaussian mixture: a latent variable model with a discrete latent and an exact likelihood.

    p(c) = Categorical(w),  p(x|c) = N(mu_c, Sigma_c)   =>   log p(x) = logsumexp_c [log w_c + log N(x; mu_c, Sigma_c)]

fitted by expectation-maximization (Dempster et al. 1977) from a k-means++ start (Arthur &
Vassilvitskii 2007), with full or diagonal covariances (seed 002). Besides being a ground truth
with an exact likelihood, it serves as an ex-post density over a trained VAE's latent codes
(Ghosh et al. 2020).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from ..core.errors import ConfigError

COVARIANCE_TYPES = ("full", "diag")


@dataclass
class FitResult:
    """What ``GaussianMixture.fit`` did."""

    iterations: int  # EM steps (an E step, then an M step) taken after the k-means++ start
    converged: bool  # the last step improved the mean log-likelihood by less than ``tol``
    # mean log p(x) of the k-means++ start, then after each EM step: iterations + 1 values that
    # never decrease; the last is the returned mixture's, whether EM converged or hit max_iter
    log_likelihood: list[float]


class GaussianMixture(nn.Module):
    """A mixture of K Gaussians in D dimensions.

    Args:
        weights: (K,) mixing probabilities, positive, summing to 1.
        means: (K, D).
        covariances: (K, D, D) for ``covariance_type="full"``, (K, D) variances for "diag".
    """

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor, covariance_type: str = "full") -> None:
        super().__init__()
        if covariance_type not in COVARIANCE_TYPES:
            raise ConfigError(f"unknown covariance type {covariance_type!r}; choose one of: {', '.join(COVARIANCE_TYPES)}")
        k, d = means.shape
        want = (k, d, d) if covariance_type == "full" else (k, d)
        if weights.shape != (k,) or covariances.shape != want:
            raise ConfigError(
                f"GMM parameters do not fit together: weights {tuple(weights.shape)}, means {tuple(means.shape)}, "
                f"covariances {tuple(covariances.shape)} (expected {want} for {covariance_type!r})"
            )
        self.covariance_type = covariance_type
        self.register_buffer("weights", weights.clone())
        self.register_buffer("means", means.clone())
        self.register_buffer("covariances", covariances.clone())

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def components(self):
        """The K Gaussians as one batched distribution, batch (K,), event (D,)."""
        if self.covariance_type == "full":
            return MultivariateNormal(self.means, covariance_matrix=self.covariances, validate_args=False)
        return Independent(Normal(self.means, self.covariances.sqrt(), validate_args=False), 1)

    def distribution(self) -> MixtureSameFamily:
        """p(x) as a ``torch.distributions`` mixture, event (D,)."""
        return MixtureSameFamily(Categorical(probs=self.weights, validate_args=False), self.components(),
                                 validate_args=False)  # fmt: skip

    def joint_log_prob(self, x: Tensor) -> Tensor:
        """log w_c + log N(x; mu_c, Sigma_c) for x (N, D) -> (N, K)."""
        return self.weights.log() + self.components().log_prob(x.unsqueeze(-2))

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) for x (N, D) -> (N,)."""
        return torch.logsumexp(self.joint_log_prob(x), dim=-1)

    def responsibilities(self, x: Tensor) -> Tensor:
        """p(c | x) for x (N, D) -> (N, K), rows summing to 1."""
        return torch.softmax(self.joint_log_prob(x), dim=-1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n draws (x, c): c ~ Categorical(w), x ~ N(mu_c, Sigma_c)."""
        c = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        eps = torch.randn(n, self.means.shape[1], generator=generator, dtype=self.means.dtype, device=self.means.device)
        if self.covariance_type == "full":
            scale = torch.linalg.cholesky(self.covariances)[c]  # (n, D, D)
            x = self.means[c] + (scale @ eps.unsqueeze(-1)).squeeze(-1)
        else:
            x = self.means[c] + self.covariances[c].sqrt() * eps
        return x, c

    @classmethod
    @torch.no_grad()
    def fit(
        cls,
        x: Tensor,
        n_components: int,
        *,
        covariance_type: str = "full",
        max_iter: int = 200,
        tol: float = 1e-6,
        reg_covar: float = 1e-6,
        seed: int = 0,
    ) -> tuple["GaussianMixture", FitResult]:
        """Maximum likelihood by EM from a k-means++ start.

        Args:
            x: data (N, D); computed in float64.
            n_components: K.
            covariance_type: "full" or "diag".
            max_iter: EM steps at most (0 returns the k-means++ start).
            tol: stop when the mean log-likelihood improves by less than this (nats per example).
            reg_covar: added to the covariance diagonals, keeping them positive definite.
            seed: for the k-means++ start.
        Returns:
            The fitted mixture and a ``FitResult``, whose last log-likelihood is this mixture's.
        """
        x = x.flatten(1).double() if x.dim() != 2 else x.double()
        n, d = x.shape
        if covariance_type not in COVARIANCE_TYPES:
            raise ConfigError(f"unknown covariance type {covariance_type!r}; choose one of: {', '.join(COVARIANCE_TYPES)}")
        if not 1 <= n_components <= n:
            raise ConfigError(f"a GMM needs 1 <= components <= examples ({n}), got {n_components}")
        g = torch.Generator().manual_seed(seed)
        resp = torch.nn.functional.one_hot(_kmeans(x, n_components, g), n_components).double()
        model = cls(*_m_step(x, resp, covariance_type, reg_covar), covariance_type)
        joint = model.joint_log_prob(x)  # (N, K); its normalizer is log p(x) under the current fit
        ll = torch.logsumexp(joint, -1)  # (N,)
        history = [ll.mean().item()]
        converged = False
        iterations = 0
        while iterations < max_iter and not converged:
            resp = (joint - ll.unsqueeze(-1)).exp()  # E step
            weights, means, covs = _m_step(x, resp, covariance_type, reg_covar)  # M step
            model.weights.copy_(weights)
            model.means.copy_(means)
            model.covariances.copy_(covs)
            iterations += 1
            # the next E step's joint also scores the fit just made, so the history always ends
            # with the returned model's likelihood
            joint = model.joint_log_prob(x)
            ll = torch.logsumexp(joint, -1)
            history.append(ll.mean().item())
            converged = history[-1] - history[-2] < tol
        return model, FitResult(iterations, converged, history)


def _m_step(x: Tensor, resp: Tensor, covariance_type: str, reg: float) -> tuple[Tensor, Tensor, Tensor]:
    """Weights, means and covariances maximizing the expected complete-data log-likelihood."""
    nk = resp.sum(0) + 10 * torch.finfo(resp.dtype).eps  # (K,)
    means = resp.T @ x / nk.unsqueeze(-1)  # (K, D)
    if covariance_type == "full":
        diff = x.unsqueeze(0) - means.unsqueeze(1)  # (K, N, D)
        covs = (diff * resp.T.unsqueeze(-1)).transpose(1, 2) @ diff / nk.view(-1, 1, 1)  # (K, D, D)
        covs = covs + reg * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    else:
        covs = resp.T @ x.square() / nk.unsqueeze(-1) - means.square() + reg
    return nk / nk.sum(), means, covs


def _kmeans(x: Tensor, k: int, g: torch.Generator, iters: int = 20) -> Tensor:
    """Hard assignments from k-means++ seeding (Arthur & Vassilvitskii 2007) and Lloyd steps."""
    n = x.shape[0]
    centres = x[torch.randint(n, (1,), generator=g)]
    d2 = torch.cdist(x, centres).square().squeeze(1)
    for _ in range(1, k):
        total = d2.sum()
        probs = d2 / total if total > 0 else torch.full_like(d2, 1 / n)
        nxt = x[torch.multinomial(probs, 1, generator=g)]
        centres = torch.cat([centres, nxt])
        d2 = torch.minimum(d2, torch.cdist(x, nxt).square().squeeze(1))
    for _ in range(iters):
        labels = torch.cdist(x, centres).argmin(1)
        counts = torch.bincount(labels, minlength=k).unsqueeze(-1)
        sums = torch.zeros_like(centres).index_add_(0, labels, x)
        centres = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
    return torch.cdist(x, centres).argmin(1)
