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

from ..distributions import diagonal_gaussian, standard_normal


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
        cov = cov + self.noise_scale**2 * torch.eye(cov.shape[0], dtype=cov.dtype)
        return MultivariateNormal(self.bias, covariance_matrix=cov)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) for x of shape (B, data_dim) -> (B,)."""
        return self.marginal().log_prob(x)

    def _posterior_parameters(self) -> tuple[Tensor, Tensor, Tensor]:
        # p(z|x) = N(M^-1 W^T (x - b) / sigma^2 ... ) written as mean = P x + p0, precision Lambda.
        var = self.noise_scale**2
        precision = self.weight.T @ self.weight / var + torch.eye(self.latent_dim, dtype=var.dtype)
        gain = torch.linalg.solve(precision, self.weight.T / var)  # (D_z, D_x)
        return gain, -gain @ self.bias, precision

    def posterior(self, x: Tensor) -> MultivariateNormal:
        """The exact p(z|x) for x of shape (B, data_dim); batch shape (B,)."""
        gain, offset, precision = self._posterior_parameters()
        return MultivariateNormal(x @ gain.T + offset, precision_matrix=precision)
