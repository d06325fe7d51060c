"""Models speak in distributions with the right shapes; observation models match their formulas."""

from __future__ import annotations

import math

import pytest
import torch

from vaelab.core.errors import ConfigError
from vaelab.distributions.observation import OBSERVATIONS
from vaelab.models import build_model


def vae(event_shape, likelihood="bernoulli", net="mlp", latent=3, precision=4.0):
    torch.manual_seed(0)
    return build_model("vae", event_shape, likelihood=likelihood, net=net, hidden=(16, 8),
                       activation="tanh", latent_dim=latent, obs_precision=precision)


@pytest.mark.parametrize("likelihood", OBSERVATIONS.names())
@pytest.mark.parametrize("net,shape", [("mlp", (1, 8, 8)), ("mlp", (10,)), ("conv", (1, 8, 8)), ("conv", (1, 28, 28))])
def test_distribution_shapes(likelihood, net, shape):
    if net == "conv" and len(shape) != 3:
        pytest.skip("conv needs images")
    model = vae(shape, likelihood, net)
    x = torch.rand(5, *shape).round()
    q = model.encode(x)
    assert q.batch_shape == (5,) and q.event_shape == (3,)
    z = q.rsample((7,))  # particles lead
    assert z.shape == (7, 5, 3)
    p = model.decode(z)
    assert p.batch_shape == (7, 5) and p.event_shape == shape
    assert p.log_prob(x).shape == (7, 5)
    prior = model.prior()
    assert prior.batch_shape == () and prior.event_shape == (3,)
    assert prior.log_prob(z).shape == (7, 5)


def test_bernoulli_log_prob_is_the_binary_log_likelihood():
    model = vae((6,))
    z = torch.randn(4, 3)
    x = (torch.rand(4, 6) < 0.5).float()
    p = model.decode(z)
    probs = p.mean
    expected = (x * probs.log() + (1 - x) * (1 - probs).log()).sum(-1)
    torch.testing.assert_close(p.log_prob(x), expected, rtol=1e-5, atol=1e-5)


def test_fixed_precision_gaussian_matches_seed_000_formula():
    """log p(x|z) = -beta/2 ||x - G(z)||^2 + D/2 log beta - D/2 log 2 pi (seed 000)."""
    beta = 4.0
    model = vae((6,), "gaussian", precision=beta)
    z, x = torch.randn(4, 3), torch.rand(4, 6)
    p = model.decode(z)
    g = p.mean
    expected = -beta / 2 * (x - g).square().sum(-1) + 6 / 2 * math.log(beta) - 6 / 2 * math.log(2 * math.pi)
    torch.testing.assert_close(p.log_prob(x), expected)
    torch.testing.assert_close(p.variance, torch.full_like(g, 1 / beta))


def test_learned_gaussian_has_its_own_scale_per_dimension():
    model = vae((6,), "gaussian-learned")
    p = model.decode(torch.randn(4, 3))
    assert p.variance.shape == (4, 6)
    assert (p.stddev >= OBSERVATIONS["gaussian-learned"].min_scale).all()
    assert p.stddev.std() > 0  # not a constant


def test_conv_rejects_shapes_it_cannot_handle():
    with pytest.raises(ConfigError, match="multiples of 4.*net= mlp"):
        vae((1, 10, 10), net="conv")
    with pytest.raises(ConfigError, match="net= mlp"):
        vae((64,), net="conv")


def test_linear_model_posterior_is_bayes_rule(linear_model, linear_data):
    """log p(z|x) = log p(x|z) + log p(z) - log p(x) for the exact marginal and posterior."""
    z = torch.randn(linear_data.shape[0], linear_model.latent_dim, dtype=torch.float64)
    lhs = linear_model.posterior(linear_data).log_prob(z)
    rhs = (linear_model.decode(z).log_prob(linear_data) + linear_model.prior().log_prob(z)
           - linear_model.log_prob(linear_data))
    torch.testing.assert_close(lhs, rhs)


def test_build_model_defaults_are_the_configuration_defaults():
    """build_model("vae", shape) from Python and `vaelab train` without flags build the same model."""
    import dataclasses
    import inspect

    from vaelab.models.adversarial import build_adversarial
    from vaelab.models.vae_builder import build_vae
    from vaelab.models.vqvae import build_vqvae
    from vaelab.runs.config import MODEL_OPTIONS, ModelConfig

    builders = {"vae": build_vae, "vqvae": build_vqvae, **{m: build_adversarial for m in ("gan", "vaegan", "aae", "alphagan", "veegan")}}
    specific = {name for names in MODEL_OPTIONS.values() for name in names}
    assert set(builders) == set(MODEL_OPTIONS)
    for model, builder in builders.items():
        config = ModelConfig(model=model)
        params = inspect.signature(builder).parameters
        for f in dataclasses.fields(ModelConfig):
            if f.name != "model" and (f.name not in specific or f.name in MODEL_OPTIONS[model]):
                assert params[f.name].default == getattr(config, f.name), (model, f.name)
