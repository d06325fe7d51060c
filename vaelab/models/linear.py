"""The linear-Gaussian latent variable model: a VAE whose likelihood is exact.

p(z) = N(0, I),  p(x|z) = N(W z + b, sigma^2 I)   =>   p(x) = N(b, W W^T + sigma^2 I)

(probabilistic PCA, Tipping & Bishop 1999; seed 000's linear model). The exact marginal and
posterior make it the ground truth that every bound and estimator in vaelab is tested against.
Its encoder is an affine diagonal Gaussian q(z|x) = N(A x + c, diag(s^2)), which in general is
*not* the exact posterior, so the ELBO has a real gap to close.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, MultivariateNormal

from ..core.errors import ConfigError
from ..distributions.observation import diagonal_gaussian, standard_normal


class LinearGaussian(nn.Module):
    """Linear-Gaussian model with an affine diagonal-Gaussian encoder.

    Args:
        weight: W, shape (data_dim, latent_dim).
        bias: b, shape (data_dim,).
        noise_scale: sigma > 0.
        enc_weight, enc_bias, enc_log_scale: the encoder's A (latent_dim, data_dim), c and
            log s (latent_dim,). When omitted, the encoder is set to the exact posterior mean and
            the mean-field optimal variances (1 / diag of the posterior precision).
    """

    def __init__(
        self,
        weight: Tensor,
        bias: Tensor,
        noise_scale: float,
        enc_weight: Tensor | None = None,
        enc_bias: Tensor | None = None,
        enc_log_scale: Tensor | None = None,
    ) -> None:
        super().__init__()
        data_dim, latent_dim = weight.shape
        self.latent_dim = latent_dim
        self.weight = nn.Parameter(weight.clone())
        self.bias = nn.Parameter(bias.clone())
        self.log_noise_scale = nn.Parameter(torch.tensor(float(noise_scale), dtype=weight.dtype).log())
        if enc_weight is None or enc_bias is None or enc_log_scale is None:
            post_w, post_b, post_prec = self._posterior_parameters()
            enc_weight, enc_bias = post_w, post_b
            enc_log_scale = -0.5 * torch.diagonal(post_prec).log()
        self.enc_weight = nn.Parameter(enc_weight.detach().clone())
        self.enc_bias = nn.Parameter(enc_bias.detach().clone())
        self.enc_log_scale = nn.Parameter(enc_log_scale.detach().clone())
        self.register_buffer("prior_loc", torch.zeros(latent_dim, dtype=weight.dtype), persistent=False)
        self.register_buffer("prior_scale", torch.ones(latent_dim, dtype=weight.dtype), persistent=False)

    @property
    def noise_scale(self) -> Tensor:
        return self.log_noise_scale.exp()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Encoder (A, c, log s) and generative (W, b, log sigma) parameters."""
        return {
            "encoder": [self.enc_weight, self.enc_bias, self.enc_log_scale],
            "decoder": [self.weight, self.bias, self.log_noise_scale],
        }

    def prior(self) -> Distribution:
        return standard_normal(self.prior_loc, self.prior_scale)

    def encode(self, x: Tensor) -> Distribution:
        """q(z|x) for x of shape (B, data_dim)."""
        mean = x @ self.enc_weight.T + self.enc_bias  # (B, D_z)
        return diagonal_gaussian(mean, self.enc_log_scale.exp().expand_as(mean))

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z) for z of shape (*S, latent_dim)."""
        mean = z @ self.weight.T + self.bias  # (*S, D_x)
        return diagonal_gaussian(mean, self.noise_scale.expand_as(mean))

    def marginal(self) -> MultivariateNormal:
        """The exact p(x) = N(b, W W^T + sigma^2 I)."""
        cov = self.weight @ self.weight.T
        cov = cov + self.noise_scale**2 * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        return MultivariateNormal(self.bias, covariance_matrix=cov)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) for x of shape (B, data_dim) -> (B,)."""
        return self.marginal().log_prob(x)

    def _posterior_parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        # p(z|x) = N(M^-1 W^T (x - b) / sigma^2 ... ) written as mean = P x + p0, precision Lambda.
        var = self.noise_scale**2
        precision = self.weight.T @ self.weight / var + torch.eye(self.latent_dim, dtype=var.dtype, device=var.device)
        gain = torch.linalg.solve(precision, self.weight.T / var)  # (D_z, D_x)
        return gain, -gain @ self.bias, precision

    def posterior(self, x: Tensor) -> MultivariateNormal:
        """The exact p(z|x) for x of shape (B, data_dim); batch shape (B,)."""
        gain, offset, precision = self._posterior_parameters()
        return MultivariateNormal(x @ gain.T + offset, precision_matrix=precision)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """n draws (x, z) from the joint: z ~ N(0, I), x = W z + b + sigma eps."""
        z = torch.randn(n, self.latent_dim, generator=generator, dtype=self.weight.dtype, device=self.weight.device)
        eps = torch.randn(n, self.weight.shape[0], generator=generator, dtype=self.weight.dtype, device=self.weight.device)
        return z @ self.weight.T + self.bias + self.noise_scale * eps, z

    @classmethod
    def fit(cls, x: Tensor, latent_dim: int) -> "LinearGaussian":
        """Maximum-likelihood probabilistic PCA in closed form (Tipping & Bishop 1999, eq. 7-8).

        With S the sample covariance (divided by N, the maximum-likelihood estimate) and
        eigenvalues l_1 >= ... >= l_D with eigenvectors U:

            b = mean(x),   sigma^2 = mean(l_{q+1}, ..., l_D),   W = U_q (L_q - sigma^2 I)^(1/2)

        (W is determined up to a rotation; this picks the one with orthogonal columns). The
        encoder is set to the exact posterior mean with mean-field variances.

        Args:
            x: data (N, D), any floating dtype (float64 recommended for the exact checks).
            latent_dim: q < D.
        """
        if x.dim() != 2:
            x = x.flatten(1)
        n, d = x.shape
        if not 1 <= latent_dim < d:
            raise ConfigError(f"pPCA needs 1 <= latent_dim < data dimension {d}, got {latent_dim}")
        if n < 2:
            raise ConfigError(f"pPCA needs at least 2 examples, got {n}")
        x = x if x.is_floating_point() else x.double()
        mean = x.mean(0)
        centred = x - mean
        cov = centred.T @ centred / n
        eigvals, eigvecs = torch.linalg.eigh(cov)  # ascending
        eigvals, eigvecs = eigvals.flip(0), eigvecs.flip(1)
        noise_var = eigvals[latent_dim:].mean()
        if not noise_var > 0:
            raise ConfigError(
                "pPCA: the data has no variance outside the first latent_dim directions "
                "(sigma^2 = 0); use a smaller latent_dim or add noise"
            )
        scale = (eigvals[:latent_dim] - noise_var).clamp_min(0).sqrt()
        weight = eigvecs[:, :latent_dim] * scale
        return cls(weight, mean, float(noise_var.sqrt()))
