"""pPCA and the Gaussian mixture: exact likelihoods against scikit-learn on the same parameters,
and maximum-likelihood fits checked by their optimality conditions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from vaelab.core.errors import ConfigError
from vaelab.models import GaussianMixture, LinearGaussian

REL = 1e-4  # the tolerance: relative agreement of log-likelihoods


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """The 8x8 digits as 64-dimensional float64 vectors in [0, 16] (real data)."""
    return torch.tensor(load_digits().data, dtype=torch.float64)


def ppca_from_sklearn(pca: PCA) -> LinearGaussian:
    """scikit-learn's probabilistic PCA parameters as a LinearGaussian: W W^T + s2 I must equal
    ``pca.get_covariance()``."""
    s2 = pca.noise_variance_
    w = pca.components_.T * np.sqrt(np.maximum(pca.explained_variance_ - s2, 0))
    return LinearGaussian(torch.tensor(w), torch.tensor(pca.mean_), float(np.sqrt(s2)))


def test_ppca_log_likelihood_equals_scikit_learn(digits):
    pca = PCA(n_components=10).fit(digits.numpy())
    model = ppca_from_sklearn(pca)
    torch.testing.assert_close(model.marginal().covariance_matrix, torch.tensor(pca.get_covariance()))
    ours = model.log_prob(digits).detach().numpy()
    np.testing.assert_allclose(ours, pca.score_samples(digits.numpy()), rtol=REL)


def test_ppca_fit_is_the_maximum_likelihood_solution(digits):
    """At the closed-form solution the gradient of the mean log-likelihood w.r.t. W, b and sigma
    vanishes, and no other pPCA (scikit-learn's divides the covariance by N - 1) scores higher."""
    model = LinearGaussian.fit(digits, 10)
    ll = model.log_prob(digits).mean()
    grads = torch.autograd.grad(ll, [model.weight, model.bias, model.log_noise_scale])
    scale = digits.std()
    for g in grads:
        assert g.abs().max() * scale < 1e-6, g.abs().max()
    sk = ppca_from_sklearn(PCA(n_components=10).fit(digits.numpy())).log_prob(digits).mean()
    assert ll >= sk
    perturbed = LinearGaussian(model.weight.detach() * 1.01, model.bias.detach(), float(model.noise_scale.detach()))
    assert perturbed.log_prob(digits).mean() < ll


def test_ppca_exact_posterior_and_sampling(digits):
    model = LinearGaussian.fit(digits, 5)
    g = torch.Generator().manual_seed(0)
    x, z = model.sample(200000, generator=g)
    # sample moments of x match the model's marginal: se of a covariance entry ~ sqrt(2/n) * var
    cov = torch.cov(x.T)
    target = model.marginal().covariance_matrix.detach()
    se = (target.diagonal().outer(target.diagonal()) + target.square()).sqrt() / np.sqrt(200000)
    assert ((cov - target).abs() / se).max() < 5
    # the posterior of the first draws contains their z: standardized residuals are N(0, I)
    post = model.posterior(x[:5000])
    r = torch.linalg.solve_triangular(post.scale_tril, (z[:5000] - post.loc).unsqueeze(-1), upper=False).squeeze(-1)
    assert abs(r.mean().item()) < 5 / np.sqrt(r.numel()) and abs(r.var().item() - 1) < 5 * np.sqrt(2 / r.numel())


def test_ppca_fit_errors(digits):
    with pytest.raises(ConfigError, match="latent_dim"):
        LinearGaussian.fit(digits, 64)
    with pytest.raises(ConfigError, match="2 examples"):
        LinearGaussian.fit(digits[:1], 3)


def sklearn_with(model: GaussianMixture) -> SkGaussianMixture:
    """A scikit-learn mixture holding exactly our parameters."""
    sk = SkGaussianMixture(n_components=model.n_components, covariance_type=model.covariance_type)
    cov = model.covariances.numpy()
    sk.weights_ = model.weights.numpy()
    sk.means_ = model.means.numpy()
    sk.covariances_ = cov
    if model.covariance_type == "full":
        chol = np.linalg.cholesky(cov)
        sk.precisions_cholesky_ = np.stack([np.linalg.inv(c).T for c in chol])
    else:
        sk.precisions_cholesky_ = 1 / np.sqrt(cov)
    return sk


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_gmm_log_likelihood_equals_scikit_learn(covariance_type, digits):
    x = torch.tensor(PCA(n_components=4).fit_transform(digits.numpy()))  # real data, 4-D, no degenerate pixels
    model, result = GaussianMixture.fit(x, 5, covariance_type=covariance_type)
    np.testing.assert_allclose(model.log_prob(x).numpy(), sklearn_with(model).score_samples(x.numpy()), rtol=REL)
    np.testing.assert_allclose(model.responsibilities(x).numpy(), sklearn_with(model).predict_proba(x.numpy()), atol=1e-8)
    # EM never decreases the likelihood, and it converged
    assert result.converged
    assert all(b >= a - 1e-9 for a, b in zip(result.log_likelihood, result.log_likelihood[1:]))
    # as good as scikit-learn's own EM from its k-means start, within 1% (EM finds local optima and
    # the two starts differ: here full -14.80 vs -14.87 nats, diag -15.02 vs -15.00)
    sk = SkGaussianMixture(5, covariance_type=covariance_type, random_state=0, reg_covar=1e-6, tol=1e-6, max_iter=200).fit(x.numpy())
    assert result.log_likelihood[-1] > sk.score(x.numpy()) - 0.01 * abs(sk.score(x.numpy()))


def test_gmm_recovers_a_known_mixture_and_samples_it():
    g = torch.Generator().manual_seed(1)
    true = GaussianMixture(
        torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64),
        torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]], dtype=torch.float64),
        torch.tensor([[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]], [[1.0, -0.3], [-0.3, 0.4]]], dtype=torch.float64),
    )
    x, c = true.sample(20000, generator=g)
    # sampling: component frequencies within 5 binomial standard errors
    freq = torch.bincount(c, minlength=3).double() / 20000
    assert ((freq - true.weights).abs() / (true.weights * (1 - true.weights) / 20000).sqrt()).max() < 5
    fitted, _ = GaussianMixture.fit(x, 3, seed=3)
    order = fitted.means[:, 0].argsort()  # align components: true means sorted by first coordinate
    order_true = true.means[:, 0].argsort()
    torch.testing.assert_close(fitted.means[order], true.means[order_true], atol=0.1, rtol=0)
    torch.testing.assert_close(fitted.weights[order], true.weights[order_true], atol=0.02, rtol=0)
    # the fitted likelihood is at least the truth's on the data it was fitted to (maximum likelihood)
    assert fitted.log_prob(x).mean() >= true.log_prob(x).mean() - 1e-6


def test_gmm_errors():
    with pytest.raises(ConfigError, match="full, diag"):
        GaussianMixture.fit(torch.randn(10, 2), 2, covariance_type="spherical")
    with pytest.raises(ConfigError, match="components"):
        GaussianMixture.fit(torch.randn(3, 2), 5)
    with pytest.raises(ConfigError, match="do not fit together"):
        GaussianMixture(torch.ones(2) / 2, torch.zeros(2, 3), torch.ones(2, 3))


@pytest.mark.parametrize("max_iter", [1, 3, 200])
def test_gmm_fit_history_ends_with_the_returned_model(max_iter, digits):
    """``FitResult.log_likelihood[-1]`` is the mean log p(x) of the mixture ``fit`` returns, whether
    EM stopped at ``max_iter`` or converged; ``iterations`` counts the EM steps taken, and the
    history holds the start plus one entry per step."""
    x = torch.tensor(PCA(n_components=4).fit_transform(digits.numpy()))
    model, result = GaussianMixture.fit(x, 5, max_iter=max_iter, tol=1e-6)
    assert result.log_likelihood[-1] == pytest.approx(model.log_prob(x).mean().item(), rel=1e-12, abs=1e-12)
    assert len(result.log_likelihood) == result.iterations + 1
    if max_iter == 200:  # converges after 27 steps
        assert result.converged and result.iterations < max_iter
        assert result.log_likelihood[-1] - result.log_likelihood[-2] < 1e-6
    else:  # stopped by max_iter: every step counted, the last one's likelihood recorded
        assert not result.converged and result.iterations == max_iter
    assert all(b >= a - 1e-9 for a, b in zip(result.log_likelihood, result.log_likelihood[1:]))


def test_gmm_fit_with_no_iterations_returns_the_k_means_start(digits):
    x = torch.tensor(PCA(n_components=4).fit_transform(digits.numpy()))
    model, result = GaussianMixture.fit(x, 5, max_iter=0)
    assert result.iterations == 0 and not result.converged
    assert result.log_likelihood == [pytest.approx(model.log_prob(x).mean().item(), rel=1e-12)]
