"""Backbones: the residual convolutional net (``--net resnet``) has the right shapes, a real skip
path, refuses data it cannot take, and works with every accepted posterior and prior."""

from __future__ import annotations

import itertools

import pytest
import torch

from vaelab.core.errors import ConfigError
from vaelab.inference.objectives import get_objective
from vaelab.models import build_model
from vaelab.models.vae import check_combination
from vaelab.nets.backbones import (
    NETS,
    NetSpec,
    ResidualBlock,
    resnet_decoder_grid,
    resnet_encoder_grid,
)
from vaelab.runs import config as cfg
from vaelab.runs.rundir import model_from_config


def spec(event_shape, channels=8, res_blocks=1, latent_dim=5, encoder_out=10, params_per_dim=2):
    return NetSpec(event_shape=event_shape, latent_dim=latent_dim, encoder_out=encoder_out,
                   params_per_dim=params_per_dim, hidden=(16,), activation="tanh",
                   channels=channels, res_blocks=res_blocks)  # fmt: skip


def n_blocks(module):
    return sum(isinstance(m, ResidualBlock) for m in module.modules())


@pytest.mark.parametrize("event_shape", [(1, 28, 28), (3, 32, 32), (2, 28, 32)])
@pytest.mark.parametrize("res_blocks", [0, 2])
def test_resnet_nets_shapes(event_shape, res_blocks):
    torch.manual_seed(0)
    encoder, decoder = NETS["resnet"](spec(event_shape, res_blocks=res_blocks))
    assert n_blocks(encoder) == n_blocks(decoder) == res_blocks
    h = encoder(torch.rand(4, *event_shape))
    assert h.shape == (4, 10)
    out = decoder(torch.randn(6, 5))
    assert out.shape == (6, 2, *event_shape)
    assert torch.isfinite(h).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("res_blocks", [0, 1, 3])
def test_grid_builders_shapes(res_blocks):
    torch.manual_seed(0)
    enc = resnet_encoder_grid(3, 8, res_blocks, 5)
    dec = resnet_decoder_grid(5, 8, res_blocks, 6)
    assert n_blocks(enc) == n_blocks(dec) == res_blocks
    assert enc(torch.rand(2, 3, 32, 32)).shape == (2, 5, 8, 8)
    assert enc(torch.rand(2, 3, 28, 36)).shape == (2, 5, 7, 9)
    assert dec(torch.rand(2, 5, 7, 7)).shape == (2, 6, 28, 28)
    assert dec(torch.rand(2, 5, 8, 3)).shape == (2, 6, 32, 12)


def layout(module):
    """(kind, kernel, stride, in, out) of each convolution, in order."""
    return [(type(m).__name__, m.kernel_size[0], m.stride[0], m.in_channels, m.out_channels)
            for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]  # fmt: skip


def test_grid_builders_layout():
    block = [("Conv2d", 3, 1, 8, 8), ("Conv2d", 1, 1, 8, 8)]
    assert layout(resnet_encoder_grid(3, 8, 2, 5)) == [
        ("Conv2d", 4, 2, 3, 8), ("Conv2d", 4, 2, 8, 8), ("Conv2d", 3, 1, 8, 8), *block, *block, ("Conv2d", 1, 1, 8, 5),
    ]  # fmt: skip
    assert layout(resnet_decoder_grid(5, 8, 2, 6)) == [
        ("Conv2d", 3, 1, 5, 8), *block, *block, ("ConvTranspose2d", 4, 2, 8, 8), ("ConvTranspose2d", 4, 2, 8, 6),
    ]  # fmt: skip
    last = list(resnet_decoder_grid(5, 8, 0, 6).children())[-1]
    assert isinstance(last, torch.nn.ConvTranspose2d)  # no activation after the output layer


def test_residual_block_with_zeroed_last_conv_is_the_identity():
    torch.manual_seed(0)
    block = ResidualBlock(6)
    x = torch.randn(3, 6, 5, 7)
    assert block(x).shape == x.shape
    assert not torch.allclose(block(x), x)  # a random branch does change x ...
    last = block.branch[-1]
    assert isinstance(last, torch.nn.Conv2d) and last.kernel_size == (1, 1)
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    assert torch.equal(block(x), x)  # ... and without it, the skip path carries x unchanged
    first = block.branch[1]
    assert isinstance(first, torch.nn.Conv2d) and first.kernel_size == (3, 3)
    assert (first.in_channels, first.out_channels, last.in_channels, last.out_channels) == (6, 6, 6, 6)


@pytest.mark.parametrize("event_shape", [(1, 30, 30), (1, 28, 30), (64,), (4, 8)])
def test_resnet_refuses_data_that_is_not_an_image_of_multiples_of_4(event_shape):
    with pytest.raises(ConfigError, match="net= resnet"):
        NETS["resnet"](spec(event_shape))


@pytest.mark.parametrize("channels,res_blocks,flag", [(0, 1, "resnet_channels="), (-3, 1, "resnet_channels="),
                                                      (8, -1, "res_blocks=")])  # fmt: skip
def test_resnet_refuses_bad_sizes(channels, res_blocks, flag):
    with pytest.raises(ConfigError, match=flag):
        NETS["resnet"](spec((1, 28, 28), channels=channels, res_blocks=res_blocks))
    with pytest.raises(ConfigError, match=flag):
        resnet_encoder_grid(1, channels, res_blocks, 4)
    with pytest.raises(ConfigError, match=flag):
        resnet_decoder_grid(4, channels, res_blocks, 1)


POSTERIORS = ("gaussian", "full", "planar:2", "iaf:2")
PRIORS = ("standard", "mog:3", "vamp:3")
FLOWS = ("planar:2", "iaf:2")
ACCEPTED = [(q, p) for q, p in itertools.product(POSTERIORS, PRIORS) if not (q in FLOWS and p == "vamp:3")]


def test_the_accepted_combinations_are_all_but_vamp_with_a_flow():
    for q, p in itertools.product(POSTERIORS, PRIORS):
        if (q, p) in ACCEPTED:
            check_combination(q, p, "amortized")
        else:
            with pytest.raises(ConfigError):
                check_combination(q, p, "amortized")
    assert len(ACCEPTED) == 10


def resnet_vae(posterior, prior):
    torch.manual_seed(0)
    return build_model("vae", (1, 28, 28), net="resnet", resnet_channels=8, res_blocks=1, latent_dim=4,
                       posterior=posterior, prior=prior)  # fmt: skip


@pytest.mark.parametrize("posterior,prior", ACCEPTED)
def test_elbo_forward_and_backward(posterior, prior):
    model = resnet_vae(posterior, prior)
    assert n_blocks(model.encoder) == n_blocks(model.decoder) == 1
    torch.manual_seed(1)
    x = torch.rand(3, 1, 28, 28).round()
    result = get_objective("elbo")(model, x)
    assert result.objective.shape == (3,) and torch.isfinite(result.objective).all()
    result.objective.mean().backward()
    for name, p in model.encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    for name, p in model.decoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("posterior,prior", ACCEPTED)
def test_elbo_keeps_its_tensors_on_the_models_device(posterior, prior):
    """On the ``meta`` device: a tensor created on the CPU by mistake fails here."""
    model = resnet_vae(posterior, prior).to("meta")
    x = torch.empty(3, 1, 28, 28, device="meta")
    result = get_objective("elbo")(model, x)
    result.objective.mean().backward()
    assert result.objective.device.type == "meta"
    assert all(p.grad is None or p.grad.device.type == "meta" for p in model.parameters())
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_the_config_accepts_resnet():
    config = cfg.build({"model": {"net": "resnet", "resnet_channels": 8, "res_blocks": 1}})
    assert (config.model.net, config.model.resnet_channels, config.model.res_blocks) == ("resnet", 8, 1)
    model = model_from_config(config, (1, 28, 28))
    assert n_blocks(model.encoder) == n_blocks(model.decoder) == 1
    convs = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.out_channels == 8 for m in convs)
    x = torch.rand(2, 1, 28, 28).round()
    assert model.encode(x).batch_shape == (2,)


def test_old_config_files_name_the_resnet_width_channels(tmp_path):
    """Runs written before the data's --channels existed stored the resnet width as
    model.channels; they still load, with it as resnet_channels."""
    import json

    config = cfg.build({"model": {"net": "resnet", "resnet_channels": 8, "res_blocks": 1}})
    doc = json.loads(cfg.save_json(config, (1, 28, 28)))
    doc["model"]["channels"] = doc["model"].pop("resnet_channels")
    (tmp_path / "config.json").write_text(json.dumps(doc))
    loaded, shape = cfg.load_json(tmp_path / "config.json")
    assert loaded == config and loaded.model.resnet_channels == 8 and shape == (1, 28, 28)


def test_tanh_is_torchs_within_float_rounding_with_tanhs_gradient():
    from vaelab.nets.backbones import ACTIVATIONS

    tanh = ACTIVATIONS["tanh"]()
    assert isinstance(tanh, torch.nn.Tanh)
    x = torch.linspace(-30, 30, 100_001)
    assert (tanh(x) - torch.tanh(x)).abs().max() <= 3e-7
    x64 = (torch.randn(40, 7, dtype=torch.float64) * 3).requires_grad_()
    assert torch.autograd.gradcheck(tanh, (x64,))
    from vaelab.nets.backbones import _SigmoidTanh

    assert torch.autograd.gradcheck(_SigmoidTanh.apply, (x64,))  # the form large batches take
    big = torch.randn(300, 300, requires_grad=True)
    (g,) = torch.autograd.grad(tanh(big).sum(), big)
    torch.testing.assert_close(g, 1 - torch.tanh(big.detach()) ** 2, rtol=0, atol=1e-6)
    with torch.no_grad():  # no autograd: the input is left alone
        before = x64.detach().clone()
        tanh(x64.detach())
        assert torch.equal(x64.detach(), before)
    assert tanh(torch.zeros(3, 4, device="meta")).device.type == "meta"
