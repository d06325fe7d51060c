"""The gated PixelCNN prior: exact causality, exact normalisation, sampling from the model."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vaelab.nets.pixelcnn import GatedPixelCNN


def make_model(num_codes: int, layers: int, channels: int, seed: int = 0, jitter: float = 0.0) -> GatedPixelCNN:
    """A float64 model; ``jitter`` adds N(0, jitter^2) to every parameter so that the
    distribution is far from uniform (default init gives nearly flat logits)."""
    torch.manual_seed(seed)
    model = GatedPixelCNN(num_codes, layers=layers, channels=channels).double()
    if jitter:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(jitter * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def all_grids(num_codes: int, h: int, w: int) -> torch.Tensor:
    grids = list(itertools.product(range(num_codes), repeat=h * w))
    return torch.tensor(grids, dtype=torch.int64).reshape(-1, h, w)


def before(i: int, j: int, h: int, w: int) -> torch.Tensor:
    """(h, w) bool: the positions strictly before (i, j) in raster order."""
    r = torch.arange(h).view(h, 1).expand(h, w)
    c = torch.arange(w).view(1, w).expand(h, w)
    return (r < i) | ((r == i) & (c < j))


# -- 1. causality --------------------------------------------------------------------------------


def test_logits_depend_exactly_on_the_positions_before_them():
    h, w = 5, 6
    model = make_model(5, layers=3, channels=8)
    e = torch.randn(1, 8, h, w, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True)
    out = model.logits_from_embedding(e)
    assert out.shape == (1, 5, h, w)
    for i in range(h):
        for j in range(w):
            (grad,) = torch.autograd.grad(out[0, :, i, j].sum(), e, retain_graph=True)
            seen = grad[0].abs().sum(0) != 0  # (h, w): positions whose embedding moves the logits
            allowed = before(i, j, h, w)
            leaks = (seen & ~allowed).nonzero().tolist()
            assert not leaks, f"logits at {(i, j)} depend on {leaks}, which are not before it"
            if j > 0:
                assert seen[i, j - 1], f"logits at {(i, j)} ignore the code to the left"
            if i > 0:
                assert seen[i - 1, j], f"logits at {(i, j)} ignore the code above"
            if i > 0 and j + 1 < w:  # the blind spot of a plain masked PixelCNN
                assert seen[i - 1, j + 1], f"logits at {(i, j)} ignore the code above-right"
            # Three layers (first kernel 7, then 3) reach 5 columns either side and 6 rows up,
            # which covers the whole 5 x 6 grid: no blind spot anywhere.
            missed = (allowed & ~seen).nonzero().tolist()
            assert not missed, f"logits at {(i, j)} ignore {missed}, which are before it"


def test_logits_is_logits_from_embedding_of_embed():
    model = make_model(6, layers=2, channels=4, jitter=0.3)
    codes = torch.randint(0, 6, (3, 4, 5), generator=torch.Generator().manual_seed(0))
    e = model.embed(codes)
    assert e.shape == (3, 4, 4, 5)
    torch.testing.assert_close(model.logits(codes), model.logits_from_embedding(e), rtol=0, atol=0)


# -- 2. normalisation ----------------------------------------------------------------------------


def test_probabilities_of_all_grids_sum_to_one():
    model = make_model(3, layers=2, channels=8, jitter=0.5)
    grids = all_grids(3, 2, 2)
    assert grids.shape == (81, 2, 2)
    with torch.no_grad():
        p = model.log_prob(grids).exp()
    assert abs(p.sum().item() - 1.0) < 1e-10
    # Not trivially so: the distribution is far from uniform (1/81 each).
    assert p.max().item() > 2 / 81 and p.min().item() < 0.5 / 81


# -- 3. log_prob is the chain rule; sample draws from it -----------------------------------------


def test_log_prob_is_the_sum_of_the_conditionals():
    model = make_model(4, layers=2, channels=6, jitter=0.3)
    codes = torch.randint(0, 4, (5, 3, 4), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logp = torch.log_softmax(model.logits(codes), dim=1)
        expected = torch.zeros(5, dtype=torch.float64)
        for b in range(5):
            for i in range(3):
                for j in range(4):
                    expected[b] += logp[b, codes[b, i, j], i, j]
        got = model.log_prob(codes)
    assert got.shape == (5,) and got.dtype == torch.float64
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_sample_frequencies_match_the_model():
    model = make_model(3, layers=1, channels=8, seed=1, jitter=0.5)
    grids = all_grids(3, 1, 2)  # (9, 1, 2)
    with torch.no_grad():
        p = model.log_prob(grids).exp()
    assert abs(p.sum().item() - 1.0) < 1e-12
    # The second code depends on the first, so drawing both codes from the logits of one
    # forward pass (not ancestrally) would show up in the frequencies.
    joint = p.view(3, 3)
    first = joint.sum(1)
    cond = joint / first.unsqueeze(1)
    assert first.min().item() > 0.05
    assert max(0.5 * (cond[a] - cond[b]).abs().sum().item() for a in range(3) for b in range(3)) > 0.2

    n = 20000
    s = model.sample(n, (1, 2), generator=torch.Generator().manual_seed(0))
    index = s[:, 0, 0] * 3 + s[:, 0, 1]
    freq = torch.bincount(index, minlength=9).double() / n
    se = (p * (1 - p) / n).sqrt()
    z = ((freq - p) / se).abs()
    assert z.max().item() < 4, f"frequencies {freq.tolist()} vs probabilities {p.tolist()}"


def test_low_temperature_sampling_is_greedy():
    model = make_model(5, layers=2, channels=8, jitter=0.5)
    s = model.sample(6, (3, 3), generator=torch.Generator().manual_seed(0), temperature=1e-3)
    with torch.no_grad():
        # Greedy ancestral decoding: every code is the argmax of its conditional given the codes
        # drawn before it.
        assert torch.equal(model.logits(s).argmax(1), s)


# -- 4. reproducibility, shapes, devices ---------------------------------------------------------


def test_sample_is_reproducible_and_well_formed():
    model = make_model(7, layers=2, channels=8, jitter=0.3)
    a = model.sample(5, (3, 4), generator=torch.Generator().manual_seed(11))
    b = model.sample(5, (3, 4), generator=torch.Generator().manual_seed(11))
    c = model.sample(5, (3, 4), generator=torch.Generator().manual_seed(12))
    assert a.shape == (5, 3, 4) and a.dtype == torch.int64 and a.device == next(model.parameters()).device
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min().item() >= 0 and a.max().item() < 7
    torch.manual_seed(5)
    d = model.sample(5, (3, 4))
    torch.manual_seed(5)
    assert torch.equal(d, model.sample(5, (3, 4)))
    assert model.sample(0, (2, 2)).shape == (0, 2, 2)
    assert not a.requires_grad


def test_logits_and_log_prob_run_on_the_meta_device():
    with torch.device("meta"):
        model = GatedPixelCNN(512, layers=3, channels=16)
    codes = torch.zeros((2, 7, 5), dtype=torch.int64, device="meta")
    logits = model.logits(codes)
    assert logits.device.type == "meta" and logits.shape == (2, 512, 7, 5)
    lp = model.log_prob(codes)
    assert lp.device.type == "meta" and lp.shape == (2,)


# -- 5. bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "codes, match",
    [
        (torch.tensor([[[0, 5]]]), r"codes must lie in \[0, 5\), got values from 0 to 5"),
        (torch.tensor([[[-1, 0]]]), r"codes must lie in \[0, 5\)"),
        (torch.zeros(1, 2, 2), r"codes must be int64 .*got dtype torch.float32"),
        (torch.zeros(1, 2, 2, dtype=torch.int32), r"codes must be int64 .*got dtype torch.int32"),
        (torch.zeros(2, 2, dtype=torch.int64), r"codes must be int64 of shape \(B, h, w\), got shape \(2, 2\)"),
        (torch.zeros(1, 1, 2, 2, dtype=torch.int64), r"got shape \(1, 1, 2, 2\)"),
    ],
)
def test_bad_codes_raise_value_error(codes, match):
    model = GatedPixelCNN(5, layers=1, channels=2)
    for method in (model.log_prob, model.logits, model.embed):
        with pytest.raises(ValueError, match=match) as info:
            method(codes)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_codes=1), "num_codes must be an integer >= 2, got 1"),
        (dict(num_codes=2.0), "num_codes must be an integer >= 2"),
        (dict(num_codes=4, layers=0), "layers must be an integer >= 1, got 0"),
        (dict(num_codes=4, channels=0), "channels must be an integer >= 1, got 0"),
        (dict(num_codes=4, channels=True), "channels must be an integer >= 1"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GatedPixelCNN(**kwargs)


def test_bad_sample_and_embedding_arguments_raise_value_error():
    model = GatedPixelCNN(4, layers=1, channels=3)
    with pytest.raises(ValueError, match="shape must be a pair of positive integers"):
        model.sample(2, (0, 3))
    with pytest.raises(ValueError, match="shape must be a pair of positive integers"):
        model.sample(2, (3,))
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        model.sample(-1, (2, 2))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.sample(2, (2, 2), temperature=0.0)
    with pytest.raises(ValueError, match=r"e must be a float tensor of shape \(B, 3, h, w\)"):
        model.logits_from_embedding(torch.zeros(1, 4, 2, 2))
    assert math.isfinite(model.log_prob(torch.zeros(1, 2, 2, dtype=torch.int64)).item())
