"""Tests of vaelab.distributions: the matrix of diagonal-Gaussian log-densities."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from vaelab.distributions.observation import diagonal_gaussian_log_prob_matrix
from vaelab.distributions.priors import DiagonalGaussianMixture

# (dimensions at the small scale, small scale): the remaining of the 50 dimensions keep scale 1,
# as inactive latent dimensions do. The expansion of the square cancels more as scales shrink.
SCALES = [(20, 0.1), (20, 0.05), (20, 0.02), (50, 0.01), (50, 0.003)]
PATHS = {"float64-product": None, "differences": False}  # the default path and the no-float64 one
FLOAT32_ULP = 2.0**-23


def sharp_mixture(active: int, small: float, seed: int, n: int = 256, k: int = 500, d: int = 50):
    """K components with N(0, 1) means and scales ``small`` (jittered by a factor of about
    exp(0.3)) on ``active`` dimensions, and N points each drawn from one random component: the
    points lie near a component, where the log-density matters and the expansion cancels most."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.randn(k, d, generator=g, dtype=torch.float64)
    scale = torch.ones(k, d, dtype=torch.float64)
    scale[:, :active] = small * torch.exp(0.3 * torch.randn(k, active, generator=g, dtype=torch.float64))
    owner = torch.randint(k, (n,), generator=g)
    z = loc[owner] + scale[owner] * torch.randn(n, d, generator=g, dtype=torch.float64)
    return z.float(), loc.float(), scale.float()


def reference(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Broadcast ``Normal.log_prob`` in float64 over (..., K, D), from the same (rounded) inputs."""
    return Normal(loc.double(), scale.double()).log_prob(z.double().unsqueeze(-2)).sum(-1)


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("active,small", SCALES)
def test_float32_log_densities_match_float64(active, small, seed, path):
    z, loc, scale = sharp_mixture(active, small, seed)
    out = diagonal_gaussian_log_prob_matrix(z, loc, scale, float64=PATHS[path])
    assert out.dtype == torch.float32 and out.shape == (256, 500)
    ref = reference(z, loc, scale)
    err = (out.double() - ref).abs()
    # entries within 100 nats of their row's largest decide a mixture's density: 1e-3 nats there
    near = ref > ref.max(-1, keepdim=True).values - 100
    assert err[near].max() < 1e-3
    mixture_err = (torch.logsumexp(out.double(), -1) - torch.logsumexp(ref, -1)).abs().max()
    assert mixture_err < 1e-3
    # far entries reach -1e7 nats, where float32 itself is spaced by about 1: there, float32
    # rounding of the exact value (the float64 product) or a few roundings (the differences)
    rtol = FLOAT32_ULP if PATHS[path] is None else 1e-6
    assert (err <= 1e-3 + rtol * ref.abs()).all()


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
@pytest.mark.parametrize("active,small", [(20, 0.1), (50, 0.01), (50, 0.003)])
def test_float32_gradients_match_float64(active, small, path):
    z, loc, scale = sharp_mixture(active, small, seed=2, n=64, k=100)
    weights = 1e-3 * torch.randn(64, 100, generator=torch.Generator().manual_seed(3))

    def grads(fn, *inputs):
        inputs = [t.detach().requires_grad_() for t in inputs]
        out = fn(*inputs)  # (N, K)
        loss = torch.logsumexp(out, -1).sum() + (weights.to(out.dtype) * out).sum()
        return torch.autograd.grad(loss, inputs)

    ours = grads(lambda *a: diagonal_gaussian_log_prob_matrix(*a, float64=PATHS[path]), z, loc, scale)
    exact = grads(reference, z.double(), loc.double(), scale.double())
    for name, g, e in zip(("z", "loc", "scale"), ours, exact):
        assert g.dtype == torch.float32, name
        assert (g.double() - e).abs().max() <= 1e-6 * e.abs().max(), name


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
def test_gradcheck_float64(path):
    g = torch.Generator().manual_seed(4)
    z = torch.randn(2, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    loc = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    scale = (0.2 + torch.rand(5, 4, generator=g, dtype=torch.float64)).requires_grad_()
    fn = lambda *a: diagonal_gaussian_log_prob_matrix(*a, float64=PATHS[path])  # noqa: E731
    assert torch.autograd.gradcheck(fn, (z, loc, scale))
    torch.testing.assert_close(fn(z, loc, scale), reference(z, loc, scale), rtol=0, atol=1e-10)


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
def test_differences_path_works_in_chunks(path, monkeypatch):
    """The no-float64 path bounds its (..., chunk, D) tensor; several chunks give the same matrix."""
    import vaelab.distributions.observation as module

    z, loc, scale = sharp_mixture(50, 0.01, seed=5, n=32, k=70)
    whole = diagonal_gaussian_log_prob_matrix(z, loc, scale, float64=PATHS[path])
    original = module._log_prob_matrix_by_differences
    monkeypatch.setattr(module, "_log_prob_matrix_by_differences", lambda *a: original(*a, budget=32 * 50 * 8))
    chunked = diagonal_gaussian_log_prob_matrix(z, loc, scale, float64=False)  # 9 chunks of <= 8
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-3)


def test_default_path_depends_on_the_device(monkeypatch):
    """Devices without float64 (Apple's MPS) take the differences; others the float64 product."""
    import vaelab.distributions.observation as module

    calls = []
    original = module._log_prob_matrix_by_differences
    spy = lambda *a: calls.append(1) or original(*a)  # noqa: E731
    monkeypatch.setattr(module, "_log_prob_matrix_by_differences", spy)
    z, loc, scale = sharp_mixture(50, 0.01, seed=6, n=8, k=10)
    diagonal_gaussian_log_prob_matrix(z, loc, scale)
    assert calls == []
    monkeypatch.setattr(module, "_DEVICES_WITHOUT_FLOAT64", frozenset({"cpu"}))
    out = diagonal_gaussian_log_prob_matrix(z, loc, scale)
    assert calls == [1]
    ref = reference(z, loc, scale)
    assert ((out.double() - ref).abs() <= 1e-3 + 1e-6 * ref.abs()).all()


@pytest.mark.parametrize("path", PATHS, ids=list(PATHS))
@pytest.mark.parametrize("device", ["cpu", "meta"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_shapes_dtypes_and_devices_follow_the_inputs(path, device, dtype):
    z = torch.randn(3, 7, 6).to(device=device, dtype=dtype)
    loc = torch.randn(5, 6).to(device=device, dtype=dtype)
    scale = torch.rand(5, 6).add(0.5).to(device=device, dtype=dtype)
    for points, shape in ((z, (3, 7, 5)), (z[0, 0], (5,)), (z.transpose(0, 1), (7, 3, 5))):
        out = diagonal_gaussian_log_prob_matrix(points, loc, scale, float64=PATHS[path])
        assert (out.shape, out.dtype, out.device.type) == (shape, dtype, device)
        if device == "cpu":
            tol = 1e-3 + (1e-2 if dtype == torch.bfloat16 else 1e-6) * reference(points, loc, scale).abs()
            assert ((out.double() - reference(points, loc, scale)).abs() <= tol).all()


def test_sharp_mixture_prior_log_prob_in_float32():
    """The mixture prior (MoG, VampPrior) at posterior scales 0.003 agrees with float64 to 1e-3 nats."""
    z, loc, scale = sharp_mixture(50, 0.003, seed=7)
    logits = torch.randn(500, generator=torch.Generator().manual_seed(8))
    out = DiagonalGaussianMixture(logits, loc, scale).log_prob(z.view(4, 64, 50))  # (4, 64)
    ref = torch.logsumexp(reference(z, loc, scale) + logits.double().log_softmax(-1), -1).view(4, 64)
    assert out.dtype == torch.float32
    assert (out.double() - ref).abs().max() < 1e-3
    assert math.isfinite(out.sum().item())


@pytest.mark.parametrize("logits_shape,x_shape,event_ndim", [
    ((9, 5, 1, 4, 4), (5, 1, 4, 4), 3),  # particles: the matrix-vector path
    ((2, 5, 1, 4, 4), (5, 1, 4, 4), 3),  # few particles: the cross-entropy kernel
    ((5, 1, 4, 4), (5, 1, 4, 4), 3),
    ((9, 5, 6), (1, 6), 1),  # x broadcast over examples too
    ((9, 2, 3), (3,), 0),
])  # fmt: skip
def test_the_fused_bernoulli_log_prob_is_torchs_with_its_gradient(logits_shape, x_shape, event_ndim):
    from torch.distributions import Bernoulli, Independent

    from vaelab.distributions.observation import IndependentBernoulli

    torch.manual_seed(0)
    logits = (torch.randn(logits_shape, dtype=torch.float64) * 5).requires_grad_()
    x = torch.rand(x_shape, dtype=torch.float64).round()
    ours = IndependentBernoulli(logits, event_ndim).log_prob(x)
    theirs = Independent(Bernoulli(logits=logits), event_ndim).log_prob(x)
    assert ours.shape == theirs.shape
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    (g_ours,) = torch.autograd.grad(ours.sum(), logits)
    (g_theirs,) = torch.autograd.grad(theirs.sum(), logits)
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-12, atol=1e-12)
