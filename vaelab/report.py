"""Figures of a run: samples, reconstructions and, for a 2-D latent, the latent space.

Figures are drawn with matplotlib's object API (no pyplot, no global backend switch) and written
atomically.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor, nn

from .errors import ConfigError
from .files import atomic_path
from .sampling import can_reconstruct, reconstruct, sample_images

IMAGE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def _as_images(x: Tensor) -> np.ndarray:
    """(n, *event) -> (n, H, W) or (n, H, W, 3) floats in [0, 1] for display.

    Vectors of square length become square images; other vectors become 1-pixel-high strips.
    Values outside [0, 1] (continuous data) are rescaled to the batch's range.
    """
    x = x.detach().float().cpu()
    if x.dim() == 2:
        d = x.shape[1]
        side = math.isqrt(d)
        x = x.view(-1, 1, side, side) if side * side == d else x.view(-1, 1, 1, d)
    if x.dim() != 4:
        raise ConfigError(f"cannot draw data of shape {tuple(x.shape[1:])} as images")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        x = (x - lo) / max(hi - lo, 1e-12)
    if x.shape[1] == 1:
        return x[:, 0].numpy()
    if x.shape[1] == 3:
        return x.permute(0, 2, 3, 1).numpy()
    return x.mean(1).numpy()  # other channel counts: show the channel mean


def tile(images: np.ndarray, ncols: int, pad: int = 1) -> np.ndarray:
    """Arranges (n, H, W[, 3]) images in a grid with ``ncols`` columns and ``pad`` pixels between."""
    n, h, w = images.shape[:3]
    nrows = math.ceil(n / ncols)
    shape = (nrows * (h + pad) - pad, ncols * (w + pad) - pad, *images.shape[3:])
    canvas = np.ones(shape, dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, ncols)
        canvas[r * (h + pad) : r * (h + pad) + h, c * (w + pad) : c * (w + pad) + w] = images[i]
    return canvas


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Writes a figure atomically; the format follows the file's suffix."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    if fmt not in IMAGE_FORMATS:
        raise ConfigError(f"cannot write {path}: unknown image format; use one of .{', .'.join(IMAGE_FORMATS)}")
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, bbox_inches="tight", pad_inches=0.05)
    return path


def _grid_figure(canvas: np.ndarray, title: str | None = None, scale: float = 1.0) -> Figure:
    h, w = canvas.shape[:2]
    inches = max(h, w) / 100 * scale
    fig = Figure(figsize=(max(2.0, w / max(h, w) * max(inches, 4)), max(2.0, h / max(h, w) * max(inches, 4))))
    ax = fig.add_subplot()
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)
    return fig


@torch.no_grad()
def samples_figure(
    model: nn.Module, path: str | Path, n: int = 64, seed: int = 0, latent_sampler=None, label: str = "p(z)"
) -> Path:
    """Draws z ~ p(z) (or from ``latent_sampler``, any object with ``sample(n, generator)``
    returning (z, ...)) and shows the mean of p(x|z) for each (the usual way to show samples)."""
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left untouched
        torch.manual_seed(seed)
        if hasattr(model, "sample_images") and latent_sampler is None:  # a VQ-VAE, or an adversarial model
            images = _as_images(model.sample_images(n, generator=torch.Generator().manual_seed(seed)))
            ncols = min(n, max(1, math.ceil(math.sqrt(n))))
            what = "G(z), z ~ p(z)" if hasattr(model, "players") else "mean of p(x|z), code grids z from the learned prior"
            return save_figure(_grid_figure(tile(images, ncols), f"{n} samples: {what}"), path)
        if latent_sampler is None:
            z = model.prior().sample((n,))
        else:
            z = latent_sampler.sample(n, generator=torch.Generator().manual_seed(seed))[0]
            z = z.to(next(model.parameters()).dtype)
        images = _as_images(model.decode(z).mean)
    ncols = min(n, max(1, math.ceil(math.sqrt(n))))
    return save_figure(_grid_figure(tile(images, ncols), f"{n} samples: mean of p(x|z), z ~ {label}"), path)


@torch.no_grad()
def reconstructions_figure(model: nn.Module, x: Tensor, path: str | Path, ncols: int = 8) -> Path:
    """Alternating rows of data and reconstructions (mean of p(x|z) at z = E_q[z|x], or at the
    nearest codes z_q(x) for a VQ-VAE)."""
    recon = reconstruct(model, x)
    data, rec = _as_images(x), _as_images(recon)
    rows = []
    for start in range(0, len(data), ncols):
        block = slice(start, start + ncols)
        for part in (data[block], rec[block]):
            if len(part) < ncols:  # pad the last pair of rows to full width
                part = np.concatenate([part, np.ones((ncols - len(part), *part.shape[1:]), np.float32)])
            rows.append(part)
    canvas = tile(np.concatenate(rows), ncols)
    return save_figure(_grid_figure(canvas, "data (odd rows) and reconstructions (even rows)"), path)


def codes_figure(means: Tensor, path: str | Path, title: str) -> Path:
    """Decoded codes (n, *event) as a grid of about square shape (``vaelab decode``)."""
    images = _as_images(means)
    ncols = min(len(images), max(1, math.ceil(math.sqrt(len(images)))))
    return save_figure(_grid_figure(tile(images, ncols), title), path)


def _codes(model: nn.Module, x: Tensor) -> Tensor:
    """E_q[z|x], or a deterministic encoder's z = E(x)."""
    return model.code(x, sample=False) if hasattr(model, "code") else model.encode(x).mean


@torch.no_grad()
def points_figure(model: nn.Module, data: Tensor, path: str | Path, n: int = 2500, seed: int = 0) -> Path:
    """For 2-D data: n samples of the model (G(z), or the mean of p(x|z) at z ~ p(z)) over the
    test points, to see which modes it covers."""
    samples = sample_images(model, n, seed=seed).cpu().numpy()
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.subplots()
    points = data[:n].numpy()
    ax.scatter(points[:, 0], points[:, 1], s=3, c="0.6", label=f"{len(points)} test points")
    ax.scatter(samples[:, 0], samples[:, 1], s=3, c="C3", alpha=0.6, label=f"{n} samples")
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8, markerscale=3)
    ax.set_title("samples over the data")
    return save_figure(fig, path)


@torch.no_grad()
def latent_figure(
    model: nn.Module, x: Tensor, labels: Tensor | None, path: str | Path, grid: int = 15
) -> Path:
    """For a 2-D latent: encoder means of ``x`` coloured by label, beside the decoded manifold
    (p(x|z) means on a grid of prior quantiles, Kingma & Welling 2014, fig. 4)."""
    means = _codes(model, x).numpy()
    if means.shape[1] != 2:
        raise ConfigError(f"the latent plot needs a 2-D latent, this model has {means.shape[1]} dimensions")
    q = torch.distributions.Normal(0.0, 1.0).icdf(torch.linspace(0.05, 0.95, grid))
    z1, z2 = torch.meshgrid(q, q.flip(0), indexing="xy")  # rows: z2 from high to low
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1)
    manifold = tile(_as_images(model.decode(z).mean), grid, pad=1)
    fig = Figure(figsize=(11, 5))
    ax1, ax2 = fig.subplots(1, 2)
    if labels is not None:
        sc = ax1.scatter(means[:, 0], means[:, 1], c=labels.numpy(), cmap="tab10", s=4, alpha=0.8)
        fig.colorbar(sc, ax=ax1, label="label")
    else:
        ax1.scatter(means[:, 0], means[:, 1], s=4, alpha=0.8)
    ax1.set_xlabel("E[z1|x]")
    ax1.set_ylabel("E[z2|x]")
    ax1.set_title("encoder means of test data")
    ax2.imshow(manifold, cmap="gray", vmin=0, vmax=1, interpolation="nearest",
               extent=(0.05, 0.95, 0.05, 0.95))  # fmt: skip
    ax2.set_xlabel("prior quantile of z1")
    ax2.set_ylabel("prior quantile of z2")
    ax2.set_title("decoded manifold")
    return save_figure(fig, path)


def snr_figure(result: dict, path: str | Path, title: str | None = None) -> Path:
    """Gradient SNR of encoder and decoder, and the normalized ESS, against K (log scales), from a
    ``diagnostics.snr_sweep`` result or several of them ({label: result})."""
    runs = result if "k" not in result else {"": result}
    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    for label, r in runs.items():
        name = f"{label}: " if label else ""
        ax1.plot(r["k"], r["encoder_snr"], "o-", label=f"{name}encoder")
        ax1.plot(r["k"], r["decoder_snr"], "s--", label=f"{name}decoder")
        ax2.plot(r["k"], r["ess"], "o-", label=label or None)
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("K (particles)")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("gradient SNR, mean over parameters")
    ax1.set_title(title or "gradient signal-to-noise ratio")
    ax1.legend(fontsize=8)
    ax2.set_ylabel("ESS / K")
    ax2.set_title("effective sample size of the importance weights")
    if len(runs) > 1:
        ax2.legend(fontsize=8)
    return save_figure(fig, path)


def write_run_figures(run_dir: str | Path, n_samples: int = 64, n_reconstructions: int = 32) -> list[Path]:
    """Writes ``samples.png``, ``reconstructions.png`` (models with an encoder) and, for a 2-D
    latent, ``latent.png`` (test data, up to 5000 points) into a run directory. For 2-D data
    (``ring8``, ``grid25``) ``samples.png`` is a scatter plot of samples over the test points, and
    there are no reconstructions. A VQ-VAE gets ``samples.png`` only once ``vaelab prior`` has
    trained its prior over code grids."""
    from .runs import load, load_data, read_config

    run_dir = Path(run_dir)
    config, _ = read_config(run_dir)
    model = load(run_dir)
    test = load_data(config, "test", limit=5000)
    written = []
    if test.event_shape == (2,):  # points in the plane (ring8, grid25): a scatter plot says more
        written.append(points_figure(model, test.fixed(), run_dir / "samples.png"))
    elif getattr(model, "code_prior", True) is not None:  # a VQ-VAE samples once its prior is trained
        written.append(samples_figure(model, run_dir / "samples.png", n=n_samples))
    if test.event_shape != (2,) and can_reconstruct(model):  # not the GAN
        written.append(reconstructions_figure(model, test.fixed()[:n_reconstructions], run_dir / "reconstructions.png"))
    if getattr(model, "latent_dim", None) == 2 and test.event_shape != (2,) and (hasattr(model, "code") or hasattr(model, "encode")):
        written.append(latent_figure(model, test.fixed(), test.y, run_dir / "latent.png"))
    return written
