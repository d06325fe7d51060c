"""Pictures researchers draw: latent traversals, interpolations, the 2-D latent map, training
curves, and figures that give every image at least its own pixels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from test_cli import assert_one_line_error, run_cli

import vaelab
from vaelab.core.errors import VaelabError
from vaelab.models import build_model
from vaelab.report.figures import (
    curve_panels,
    interpolate,
    latent_figure,
    prior_moments,
    reconstructions_figure,
    samples_figure,
    slerp,
    traversal_figure,
    traverse,
)
from vaelab.runs.rundir import load_data, read_config

TINY = ["--data", "digits", "--binarize", "threshold", "--limit", "200", "--epochs", "2", "--hidden", "16", "--quiet"]


@pytest.fixture(scope="module")
def run3(tmp_path_factory) -> Path:
    """A tiny VAE with a 3-D latent, trained with a KL warm-up (so metrics.jsonl has kl_scale)."""
    out = tmp_path_factory.mktemp("pictures") / "vae3"
    proc = run_cli("train", *TINY, "--latent-dim", "3", "--kl-warmup", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out


def _model(event_shape=(1, 8, 8), latent_dim=3, seed=0, **options):
    torch.manual_seed(seed)
    return build_model("vae", event_shape, hidden=(16,), latent_dim=latent_dim, **options).eval()


def _data(n=40, shape=(1, 8, 8), seed=1):
    return (torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) > 0.5).float()


# -- traversals ------------------------------------------------------------------------------------


def test_traversal_sweeps_one_dimension_around_the_posterior_mean_ordered_by_kl():
    model, x = _model(), _data()
    t = traverse(model, x, example=5, span=2.5, steps=6)
    with torch.no_grad():
        q = model.encode(x)
        mu, var = q.mean, q.variance
        kl = (0.5 * (mu.square() + var - 1 - var.log())).mean(0)  # closed form against N(0, I)
    assert t.score_name == "KL"
    assert t.dims == sorted(range(3), key=lambda d: -float(kl[d]))  # largest KL first
    assert t.scores == pytest.approx([float(kl[d]) for d in t.dims], rel=1e-5)
    assert t.values == pytest.approx(torch.linspace(-2.5, 2.5, 6).tolist())  # prior sds of N(0, I)
    for i, d in enumerate(t.dims):
        z = mu[5].repeat(6, 1)
        z[:, d] = torch.linspace(-2.5, 2.5, 6)
        with torch.no_grad():
            expected = model.decode(z).mean
        torch.testing.assert_close(t.images[i], expected)


def test_traversal_dims_pick_and_order_the_rows():
    model, x = _model(), _data()
    t = traverse(model, x, dims=[2, 0])
    assert t.dims == [2, 0] and t.images.shape[:2] == (2, 11)
    with pytest.raises(VaelabError, match="dims"):
        traverse(model, x, dims=[3])


def test_traversal_sweeps_in_prior_standard_deviations_of_a_learned_prior():
    """Under a mixture prior the sweep is centred on the prior mean and scaled by its standard
    deviation per dimension (estimated from 10000 draws), here checked against 20000 other draws
    within 4 standard errors of the difference."""
    model, x = _model(prior="mog:3"), _data()
    with torch.no_grad():
        model.latent_prior.means.mul_(3.0)  # components apart: the prior is far from N(0, I)
    mean, sd = prior_moments(model)
    torch.manual_seed(1)
    with torch.no_grad():
        z = model.prior().sample((20000,))
    se = z.std(0) * math.sqrt(1 / 10000 + 1 / 20000)
    assert ((mean - z.mean(0)).abs() < 4 * se).all()
    assert ((sd - z.std(0)).abs() < 4 * se).all()  # the sd's standard error is below the mean's here
    assert ((sd - 1).abs() > 0.5).any()
    t = traverse(model, x, dims=[1], steps=3, span=1.0)
    assert t.score_name == "activity"  # a mixture prior has no KL per dimension: ranked by Cov_x E[z_d|x]
    mu = model.encode(x).mean.detach()
    assert t.scores == pytest.approx([float(mu[:, 1].var(unbiased=False))], rel=1e-5)
    base = model.encode(x[:1]).mean[0]
    zs = base.repeat(3, 1)
    zs[:, 1] = mean[1] + torch.tensor([-1.0, 0.0, 1.0]) * sd[1]
    with torch.no_grad():
        torch.testing.assert_close(t.images[0], model.decode(zs).mean)


def test_traversal_figure_labels_rows_with_dimension_and_kl(tmp_path):
    model, x = _model(), _data()
    t = traverse(model, x)
    path = traversal_figure(t, tmp_path / "t.png")
    width, height = Image.open(path).size
    assert height >= 3 * 9 and width >= 11 * 9  # every image pixel on at least one screen pixel


# -- interpolations --------------------------------------------------------------------------------


def test_slerp_keeps_the_norm_and_moves_at_a_constant_angle():
    g = torch.Generator().manual_seed(0)
    z0 = torch.randn(8, generator=g, dtype=torch.float64)
    z1 = torch.randn(8, generator=g, dtype=torch.float64)
    z1 = z1 / z1.norm() * z0.norm()
    t = torch.linspace(0, 1, 7, dtype=torch.float64)
    path = slerp(z0, z1, t)
    torch.testing.assert_close(path[0], z0)
    torch.testing.assert_close(path[-1], z1)
    torch.testing.assert_close(path.norm(dim=1), z0.norm().expand(7))
    angles = torch.arccos(((path @ z0) / (path.norm(dim=1) * z0.norm())).clamp(-1, 1))
    torch.testing.assert_close(angles, t * angles[-1])
    assert float((0.5 * (z0 + z1)).norm()) < float(path[3].norm())  # the straight line dips inwards


def test_interpolation_is_spherical_for_a_standard_prior_and_linear_otherwise():
    x = _data()
    model = _model()
    result = interpolate(model, x, 3, 7, steps=5)
    mu = model.encode(x).mean.detach()
    assert result.method == "spherical"
    torch.testing.assert_close(result.codes, slerp(mu[3], mu[7], torch.linspace(0, 1, 5)))
    with torch.no_grad():
        torch.testing.assert_close(result.images, model.decode(result.codes).mean)
    mog = _model(prior="mog:2")
    result = interpolate(mog, x, 3, 7, steps=5)
    mu = mog.encode(x).mean.detach()
    assert result.method == "linear"
    torch.testing.assert_close(result.codes[2], 0.5 * (mu[3] + mu[7]))
    with pytest.raises(VaelabError, match="end"):
        interpolate(model, x, 0, len(x))


# -- figure sizes ----------------------------------------------------------------------------------


def test_many_samples_each_get_at_least_their_own_pixels(tmp_path):
    """2500 digits (50 x 50 of 8 x 8 pixels, 1 pixel apart) used to be squeezed into a fixed
    figure; now the image is at least as large as the tiled canvas."""
    model = _model()
    width, height = Image.open(samples_figure(model, tmp_path / "few.png", n=64)).size
    assert width >= 320 and height >= 320  # a small grid (71 x 71 pixels) magnified
    canvas = 50 * 9 - 1
    width, height = Image.open(samples_figure(model, tmp_path / "s.png", n=2500)).size
    assert width >= canvas and height >= canvas
    big = _model(event_shape=(1, 28, 28))
    width, height = Image.open(samples_figure(big, tmp_path / "b.png", n=256)).size
    assert width >= 16 * 29 - 1 and height >= 16 * 29 - 1
    x = _data(n=40, shape=(1, 28, 28))
    width, height = Image.open(reconstructions_figure(big, x, tmp_path / "r.png")).size
    assert width >= 8 * 29 - 1 and height >= 10 * 29 - 1


def test_latent_map_is_readable_and_decodes_prior_quantiles(tmp_path, monkeypatch):
    """The 2-D latent map: the manifold panel shows each of its 15 x 15 images of 28 x 28 pixels
    at full size at least, and decodes z = Phi^-1(u) at the centres of a 15 x 15 partition of the
    unit square (rows from high z2 to low)."""
    model = _model(event_shape=(1, 28, 28), latent_dim=2)
    x = _data(n=100, shape=(1, 28, 28))
    seen = []
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda z: seen.append(z.clone()) or decode(z))
    path = latent_figure(model, x, torch.arange(100) % 10, tmp_path / "latent.png")
    width, height = Image.open(path).size
    assert height >= 15 * 29 - 1 and width >= 2 * (15 * 29 - 1)
    (z,) = seen
    small = _model(latent_dim=2)
    assert Image.open(latent_figure(small, _data(), None, tmp_path / "small.png")).size[1] >= 400
    u = (torch.arange(15, dtype=torch.float64) + 0.5) / 15
    phi = torch.distributions.Normal(0.0, 1.0).cdf(z.double())
    torch.testing.assert_close(phi[:15, 0], u, atol=1e-5, rtol=0)  # first row: z1 left to right
    torch.testing.assert_close(phi[::15, 1], u.flip(0), atol=1e-5, rtol=0)  # first column: z2 top to bottom


# -- training curves -------------------------------------------------------------------------------


def test_curve_panels_follow_what_metrics_hold():
    vae = [{"epoch": 1, "train_bound": -3.0, "valid_bound": -3.1, "train_kl": 1.0, "mutual_info": None},
           {"epoch": 2, "train_bound": -2.0, "valid_bound": -2.1, "train_kl": 1.5, "mutual_info": 0.5}]  # fmt: skip
    titles = [p[0] for p in curve_panels(vae)]
    assert titles == ["bound", "KL", "mutual information I(x;z)"]
    gan = [{"epoch": 1, "train_generator_loss": 1.0, "train_disc_loss": 0.5, "train_loss": 9.0}]
    (panel,) = curve_panels(gan)
    assert panel[0] == "player losses" and panel[2] == ["train_disc_loss", "train_generator_loss"]
    assert curve_panels([{"epoch": 1}]) == []


def test_training_draws_the_curves(run3):
    path = run3 / "curves.png"
    assert Image.open(path).size[0] > 600
    records = [json.loads(line) for line in (run3 / "metrics.jsonl").read_text().splitlines()]
    titles = [p[0] for p in curve_panels(records)]
    for title in ("bound", "reconstruction", "KL", "kl_scale", "active units", "mutual information I(x;z)"):
        assert title in titles


# -- the commands ----------------------------------------------------------------------------------


def test_traverse_command_orders_by_kl_and_says_so(run3, tmp_path):
    out = tmp_path / "t.png"
    proc = run_cli("traverse", str(run3), "--range", "2", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.exists() and str(out) in proc.stdout
    assert "ordered by KL, largest first" in proc.stdout and "[-2, +2] prior standard deviations" in proc.stdout
    config, _ = read_config(run3)
    x = load_data(config, "test").fixed()
    t = traverse(vaelab.load(run3), x)
    listed = proc.stdout.splitlines()[1].strip()
    assert listed == ", ".join(f"z{d} {s:.3f} nats" for d, s in zip(t.dims, t.scores))
    proc = run_cli("traverse", str(run3), "--dims", "2,0", "-o", str(out))
    assert proc.returncode == 0 and "in the order given" in proc.stdout
    assert proc.stdout.splitlines()[1].strip().startswith("z2 ")
    assert (run_cli("traverse", str(run3)).returncode == 0) and (run3 / "traversal.png").exists()


def test_interpolate_command_says_which_path(run3, tmp_path):
    out = tmp_path / "i.png"
    proc = run_cli("interpolate", str(run3), "--from", "1", "--to", "4", "--steps", "6", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("spherical interpolation") and "test examples 1 and 4" in proc.stdout
    width, _ = Image.open(out).size
    assert width >= 8 * 9 - 1  # 6 steps and the two examples


def test_pictures_commands_refuse_bad_input_in_one_line(run3, tmp_path):
    assert_one_line_error(run_cli("traverse", str(run3), "--dims", "3"), "--dims 3", "0 to 2")
    assert_one_line_error(run_cli("traverse", str(run3), "--dims", "x"), "--dims")
    assert_one_line_error(run_cli("traverse", str(run3), "--range", "0"), "--range")
    assert_one_line_error(run_cli("traverse", str(run3), "--steps", "1"), "--steps")
    assert_one_line_error(run_cli("traverse", str(run3), "--example", "100000"), "--example")
    assert_one_line_error(run_cli("interpolate", str(run3), "--from", "0"), "--to")
    assert_one_line_error(run_cli("interpolate", str(run3), "--from", "0", "--to", "100000"), "--to 100000")
    assert_one_line_error(run_cli("interpolate", str(run3), "--from", "-1", "--to", "2"), "--from")
    assert_one_line_error(run_cli("traverse", str(tmp_path / "nope")), "does not exist")
    assert_one_line_error(run_cli("traverse", str(run3), "-o", str(tmp_path / "t.bmpx")), "image format")
    assert not (tmp_path / "t.bmpx").exists()


def test_pictures_commands_refuse_a_model_without_an_encoder(tmp_path):
    out = tmp_path / "gan"
    proc = run_cli("train", *TINY, "--model", "gan", "--latent-dim", "3", "--epochs", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert_one_line_error(run_cli("traverse", str(out)), "--model gan", "no encoder")
    assert_one_line_error(run_cli("interpolate", str(out), "--from", "0", "--to", "1"), "--model gan", "no encoder")
    assert (out / "curves.png").exists()  # the players' losses


def test_pictures_need_a_continuous_code_per_example(tmp_path):
    two_layers = _model(latent_dim=2, layers=2)
    with pytest.raises(VaelabError, match="one stochastic layer"):
        traverse(two_layers, _data())
    with pytest.raises(VaelabError, match="one stochastic layer"):
        interpolate(two_layers, _data(), 0, 1)
    out = tmp_path / "ring"
    proc = run_cli("train", "--data", "ring8", "--binarize", "none", "--likelihood", "gaussian", "--limit", "200",
                   "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--quiet", "--out", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert_one_line_error(run_cli("traverse", str(out)), "points in the plane")
    assert_one_line_error(run_cli("interpolate", str(out), "--from", "0", "--to", "1"), "points in the plane")
