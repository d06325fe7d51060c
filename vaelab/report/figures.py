"""Figures of a run: samples, reconstructions and, for a 2-D latent, the latent space.

Figures are drawn with matplotlib's object API (no pyplot, no global backend switch) and written
atomically.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from torch import Tensor, nn

from ..core.devices import fork_rng, generator, module_device
from ..core.errors import ConfigError
from ..core.files import atomic_path, read_metrics
from ..core.images import as_images, tile
from ..evaluation.sampling import can_reconstruct, reconstruct, sample_images

IMAGE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Writes a figure atomically; the format follows the file's suffix."""
    path = Path(path)
    fmt = path.suffix.lower().lstrip(".") or "png"
    if fmt not in IMAGE_FORMATS:
        raise ConfigError(f"cannot write {path}: unknown image format; use one of .{', .'.join(IMAGE_FORMATS)}")
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        # at the figure's own resolution, so that a figure sized in pixels keeps its pixels
        fig.savefig(tmp, format=fmt, dpi="figure", bbox_inches="tight", pad_inches=0.05)
    return path


DPI = 100  # figure pixels per inch: the pixel sizes below assume it
MIN_SIDE = 320  # pixels: small grids are magnified (by whole numbers) to at least this size


def _zoom(h: int, w: int, min_side: int = MIN_SIDE) -> int:
    """Whole-number magnification that brings an h x w canvas to ``min_side`` pixels (at most 8x)."""
    return max(1, min(8, math.ceil(min_side / max(h, w, 1))))


def _pixel_figure(
    canvas: np.ndarray, title: str | None = None, *, left: int = 4, top: int = 4, bottom: int = 4, zoom: int | None = None
) -> tuple[Figure, Axes, int]:
    """A figure whose axes show ``canvas`` with every data pixel on at least one screen pixel
    (``zoom`` x ``zoom`` of them), whatever the number of images; margins in pixels (for a title
    and labels). Returns the figure, its axes and the zoom."""
    h, w = canvas.shape[:2]
    zoom = _zoom(h, w) if zoom is None else zoom
    top += 22 if title else 0
    width, height = w * zoom + left + 4, h * zoom + top + bottom
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax = fig.add_axes((left / width, bottom / height, w * zoom / width, h * zoom / height))
    ax.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title, fontsize=9)
    return fig, ax, zoom


def _grid_figure(canvas: np.ndarray, title: str | None = None) -> Figure:
    return _pixel_figure(canvas, title)[0]


@torch.no_grad()
def samples_figure(
    model: nn.Module, path: str | Path, n: int = 64, seed: int = 0, latent_sampler=None, label: str = "p(z)"
) -> Path:
    """Draws z ~ p(z) (or from ``latent_sampler``, any object with ``sample(n, generator)``
    returning (z, ...)) and shows the mean of p(x|z) for each (the usual way to show samples)."""
    device = module_device(model)
    with fork_rng(device):  # the caller's random streams are left untouched
        torch.manual_seed(seed)
        if hasattr(model, "sample_images") and latent_sampler is None:  # a VQ-VAE, or an adversarial model
            images = as_images(model.sample_images(n, generator=generator(device, seed)))
            ncols = min(n, max(1, math.ceil(math.sqrt(n))))
            what = model.samples_description
            return save_figure(_grid_figure(tile(images, ncols), f"{n} samples: {what}"), path)
        if latent_sampler is None:
            z = model.prior().sample((n,))
        else:
            z = latent_sampler.sample(n, generator=torch.Generator().manual_seed(seed))[0]
            z = z.to(device=device, dtype=next(model.parameters()).dtype)
        images = as_images(model.decode(z).mean)
    ncols = min(n, max(1, math.ceil(math.sqrt(n))))
    return save_figure(_grid_figure(tile(images, ncols), f"{n} samples: mean of p(x|z), z ~ {label}"), path)


@torch.no_grad()
def reconstructions_figure(model: nn.Module, x: Tensor, path: str | Path, ncols: int = 8) -> Path:
    """Alternating rows of data and reconstructions (mean of p(x|z) at z = E_q[z|x], or at the
    nearest codes z_q(x) for a VQ-VAE)."""
    recon = reconstruct(model, x)
    data, rec = as_images(x), as_images(recon)
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
    images = as_images(means)
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
    points = data[:n].cpu().numpy()
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
    """For a 2-D latent: the learned manifold, the mean of p(x|z) on a grid of z = Phi^-1(u) for u
    at the centres of a ``grid`` x ``grid`` partition of the unit square (Kingma & Welling 2014,
    figure 4), beside the encoder means of ``x`` coloured by label. Both panels are at least 400
    pixels high and the manifold shows every image pixel."""
    means = _latent_codes(model, x).float().cpu().numpy()
    if means.shape[1] != 2:
        raise ConfigError(f"the latent plot needs a 2-D latent, this model has {means.shape[1]} dimensions")
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    q = torch.distributions.Normal(0.0, 1.0).icdf(u)
    z1, z2 = torch.meshgrid(q, q.flip(0), indexing="xy")  # rows: z2 from high to low
    z = torch.stack([z1.reshape(-1), z2.reshape(-1)], dim=1)
    parameter = next(model.parameters())
    manifold = tile(as_images(model.decode(z.to(parameter)).mean), grid, pad=1)
    side = max(manifold.shape[:2]) * _zoom(*manifold.shape[:2], min_side=400)  # pixels of each panel
    left, gap, right, bottom, top = 70, 110, 20, 55, 35
    width, height = left + side + gap + side + right, bottom + side + top
    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    ax1 = fig.add_axes((left / width, bottom / height, side / width, side / height))
    ax2 = fig.add_axes(((left + side + gap) / width, bottom / height, side / width, side / height))
    if labels is not None:
        y = labels.cpu().numpy()
        classes = np.unique(y)
        cmap = "tab10" if len(classes) <= 10 else "tab20" if len(classes) <= 20 else "viridis"
        sc = ax1.scatter(means[:, 0], means[:, 1], c=y, cmap=cmap, s=8, alpha=0.8, linewidths=0)
        if len(classes) <= 20:
            handles = [ax1.scatter([], [], color=sc.cmap(sc.norm(c)), s=30, label=str(c)) for c in classes]
            ax1.legend(handles=handles, title="label", fontsize=8, title_fontsize=8, loc="upper left",
                       bbox_to_anchor=(1.0, 1.0), frameon=False)  # fmt: skip
        else:
            fig.colorbar(sc, ax=ax1, label="label")
    else:
        ax1.scatter(means[:, 0], means[:, 1], s=8, alpha=0.8, linewidths=0)
    ax1.set_xlabel("E[z1|x]")
    ax1.set_ylabel("E[z2|x]")
    ax1.set_title(f"encoder means of {len(means)} test examples")
    ax2.imshow(manifold, cmap="gray", vmin=0, vmax=1, interpolation="nearest", extent=(0, 1, 0, 1), aspect="auto")
    ticks = [0.05, 0.25, 0.5, 0.75, 0.95]
    ax2.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax2.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax2.set_xlabel("u1, z1 = Phi^-1(u1)")
    ax2.set_ylabel("u2, z2 = Phi^-1(u2)")
    ax2.set_title("decoded manifold: mean of p(x|z)")
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


# -- pictures researchers draw: traversals, interpolations, training curves ----------------------


RANKING_EXAMPLES = 1000  # test examples on which traversals rank the latent dimensions


def latent_codes_available(model: nn.Module) -> str | None:
    """None when the model has a continuous latent code per example to traverse and interpolate
    (an encoder giving E_q[z|x] or z = E(x)); otherwise why not, in one phrase."""
    if hasattr(model, "codes") and hasattr(model, "codebook_size"):
        return "a VQ-VAE's latent is a grid of discrete codes, not a continuous vector to sweep, interpolate or map"
    if getattr(model, "layer_sizes", None) is not None:
        return "traversals and interpolations are implemented for one stochastic layer (this run has --layers 2)"
    if hasattr(model, "code"):
        return None
    if hasattr(model, "encode"):
        return None
    return "the model has no encoder, so an example has no latent code"


def _check_codes(model: nn.Module) -> None:
    reason = latent_codes_available(model)
    if reason is not None:
        raise ConfigError(reason)


def _latent_codes(model: nn.Module, x: Tensor) -> Tensor:
    """E_q[z|x] (or a deterministic encoder's E(x)) of every example, in chunks: (N, latent)."""
    device = module_device(model)
    parts = [_codes(model, x[i : i + 1000].to(device)) for i in range(0, len(x), 1000)]
    return torch.cat(parts).detach()


@torch.no_grad()
def latent_ranking(model: nn.Module, x: Tensor) -> tuple[Tensor, str]:
    """A score per latent dimension (larger: the dimension carries more information), and its
    name: the mean over ``x`` of KL(q(z_d|x) || p(z_d)) in nats where posterior and prior factorize
    over dimensions; otherwise the activity Cov_x(E_q[z_d|x]) of Burda et al. (2016)."""
    q = model.encode(x.to(module_device(model))) if hasattr(model, "encode") else None
    if q is not None:
        from ..evaluation.diagnostics import kl_per_dim

        per_dim = kl_per_dim(q, model.prior())
        if per_dim is not None:
            return per_dim.detach().float().cpu(), "KL"
    codes = _latent_codes(model, x).float().cpu()
    return codes.var(0, unbiased=False) if len(codes) > 1 else torch.zeros(codes.shape[1]), "activity"


@torch.no_grad()
def prior_moments(model: nn.Module, draws: int = 10000) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of each latent dimension under p(z): in closed form where the
    prior has them (N(0, I), a mixture), else from ``draws`` samples with a fixed seed."""
    p = model.prior()
    try:
        return p.mean.detach().float().cpu(), p.stddev.detach().float().cpu()
    except (NotImplementedError, AttributeError):
        with fork_rng(module_device(model)):
            torch.manual_seed(0)
            z = p.sample((draws,)).float().cpu()
        return z.mean(0), z.std(0)


@dataclass
class Traversal:
    """Images of a latent traversal: ``images[i, j]`` decodes z with dimension ``dims[i]`` at
    ``values[j]`` prior standard deviations from the prior mean, the other dimensions at the
    example's code."""

    images: Tensor  # (len(dims), steps, *event)
    dims: list[int]
    scores: list[float]  # each dimension's score (KL in nats, or activity)
    score_name: str  # "KL" or "activity"
    values: list[float]  # sweep positions, in prior standard deviations
    example: int


@torch.no_grad()
def traverse(
    model: nn.Module, x: Tensor, *, example: int = 0, dims: Sequence[int] | None = None, span: float = 3.0, steps: int = 11
) -> Traversal:
    """The beta-VAE traversal figure's data (Higgins et al. 2017): each latent dimension swept
    over [-span, span] prior standard deviations around the prior mean, while the others stay at
    example ``example``'s posterior mean E_q[z|x] (E(x) for a deterministic encoder).

    Args:
        model: a model with a continuous latent and an encoder.
        x: examples ``(N, *event)``; the dimensions are ranked on all of them (``latent_ranking``).
        example: which example of ``x`` holds the other dimensions.
        dims: dimensions to sweep, in this order; default every dimension, the largest score first.
        span: half-width of the sweep, in prior standard deviations.
        steps: images per dimension (at least 2).
    """
    _check_codes(model)
    if not 0 <= example < len(x):
        raise ConfigError(f"example must be an index between 0 and {len(x) - 1}, got {example}")
    if not span > 0:
        raise ConfigError(f"span must be positive, got {span}")
    if steps < 2:
        raise ConfigError(f"steps must be at least 2, got {steps}")
    scores, score_name = latent_ranking(model, x)
    latent = len(scores)
    if dims is None:
        dims = sorted(range(latent), key=lambda d: -float(scores[d]))
    dims = list(dims)
    bad = [d for d in dims if not 0 <= d < latent]
    if bad or not dims:
        raise ConfigError(f"dims must be latent dimensions between 0 and {latent - 1}, got {bad or dims}")
    parameter = next(model.parameters())
    base = _latent_codes(model, x[example : example + 1])[0]  # (latent,)
    mean, sd = prior_moments(model)
    values = torch.linspace(-span, span, steps)
    z = base.repeat(len(dims), steps, 1)  # (dims, steps, latent)
    for i, d in enumerate(dims):
        z[i, :, d] = (mean[d] + values * sd[d]).to(z)
    images = model.decode(z.reshape(-1, latent).to(parameter)).mean
    images = images.reshape(len(dims), steps, *images.shape[1:]).cpu()
    return Traversal(images, dims, [float(scores[d]) for d in dims], score_name, values.tolist(), example)


def traversal_figure(t: Traversal, path: str | Path) -> Path:
    """One row per dimension, labelled with the dimension and its KL (or activity); columns at
    the swept values, in prior standard deviations."""
    rows, steps = t.images.shape[:2]
    images = as_images(t.images.reshape(rows * steps, *t.images.shape[2:]))
    h, w = images.shape[1:3]
    canvas = tile(images, steps)
    unit = "nats" if t.score_name == "KL" else ""
    title = f"traversal around test example {t.example}: each row sweeps one z_d, the others at E_q[z|x]"
    fig, ax, zoom = _pixel_figure(canvas, title, left=130, bottom=36, zoom=max(_zoom(*canvas.shape[:2]), math.ceil(24 / h)))
    ax.set_yticks([(h + 1) * i + (h - 1) / 2 for i in range(rows)])
    ax.set_yticklabels([f"z{d}  {t.score_name} {s:.2f} {unit}".rstrip() for d, s in zip(t.dims, t.scores)], fontsize=8)
    every = max(1, math.ceil(steps * 40 / (canvas.shape[1] * zoom)))  # keep the tick labels apart
    cols = list(range(0, steps, every))
    ax.set_xticks([(w + 1) * j + (w - 1) / 2 for j in cols])
    ax.set_xticklabels([f"{t.values[j]:+.1f}" for j in cols], fontsize=8)
    ax.set_xlabel("z_d, in prior standard deviations from the prior mean", fontsize=8)
    ax.tick_params(length=0)
    return save_figure(fig, path)


@dataclass
class Interpolation:
    """Decoded points on the path between two examples' codes."""

    images: Tensor  # (steps, *event): the mean of p(x|z) at each code
    codes: Tensor  # (steps, latent): the path, from example start's code to example end's
    method: str  # "spherical" or "linear"
    start: int
    end: int


def slerp(z0: Tensor, z1: Tensor, t: Tensor) -> Tensor:
    """Spherical linear interpolation (Shoemake 1985; for latent spaces, White 2016): points whose
    norm stays typical of a standard Gaussian, unlike the straight line, which passes near the
    origin where a high-dimensional N(0, I) has almost no mass. ``t`` (steps,) -> (steps, D)."""
    cos = (z0 @ z1 / (z0.norm() * z1.norm()).clamp_min(1e-12)).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    if float(omega.sin()) < 1e-6:  # (anti)parallel codes: the arc is undefined, take the line
        return torch.lerp(z0, z1, t[:, None])
    return (torch.sin((1 - t)[:, None] * omega) * z0 + torch.sin(t[:, None] * omega) * z1) / omega.sin()


def _standard_gaussian_prior(model: nn.Module) -> bool:
    from ..distributions.priors import StandardNormalPrior

    return isinstance(getattr(model, "latent_prior", None), StandardNormalPrior)


@torch.no_grad()
def interpolate(model: nn.Module, x: Tensor, start: int, end: int, *, steps: int = 10) -> Interpolation:
    """Decodes ``steps`` points from example ``start``'s code to example ``end``'s (both
    included): E_q[z|x] (E(x) for a deterministic encoder), joined by a great-circle arc
    (``slerp``) when the prior is N(0, I), else by a straight line (a learned prior has no
    reason to be spherical)."""
    _check_codes(model)
    for name, i in (("start", start), ("end", end)):
        if not 0 <= i < len(x):
            raise ConfigError(f"{name} must be an example index between 0 and {len(x) - 1}, got {i}")
    if steps < 2:
        raise ConfigError(f"steps must be at least 2, got {steps}")
    codes = _latent_codes(model, torch.stack([x[start], x[end]]))
    t = torch.linspace(0, 1, steps, dtype=codes.dtype, device=codes.device)
    method = "spherical" if _standard_gaussian_prior(model) else "linear"
    z = slerp(codes[0], codes[1], t) if method == "spherical" else torch.lerp(codes[0], codes[1], t[:, None])
    return Interpolation(model.decode(z).mean.cpu(), z.cpu(), method, start, end)


def interpolation_figure(result: Interpolation, path: str | Path, x: Tensor | None = None) -> Path:
    """The decoded interpolation in one row, framed by the two examples themselves when ``x``
    (the examples the indices refer to) is given."""
    images = result.images
    if x is not None:
        images = torch.cat([x[result.start : result.start + 1].cpu().to(images), images, x[result.end : result.end + 1].cpu().to(images)])
    canvas = tile(as_images(images), len(images))
    title = f"{result.method} interpolation between the codes of test examples {result.start} and {result.end}"
    if x is not None:
        title += "\n(first and last: the examples themselves)"
    h = canvas.shape[0]
    fig, ax, _ = _pixel_figure(canvas, title, top=16 if x is not None else 4,
                               zoom=max(_zoom(*canvas.shape[:2], min_side=600), math.ceil(48 / h)))  # fmt: skip
    return save_figure(fig, path)


CURVES = (  # (panel title, y label, metrics keys drawn in it)
    ("bound", "nats", ("train_bound", "valid_bound")),
    ("reconstruction", "nats", ("train_reconstruction", "valid_reconstruction")),
    ("KL", "nats", ("train_kl", "valid_kl")),
    ("kl_scale", "KL weight", ("kl_scale",)),
    ("active units", "units", ("active_units",)),
    ("mutual information I(x;z)", "nats", ("mutual_info",)),
)


def curve_panels(records: list[dict]) -> list[tuple[str, str, list[str]]]:
    """The panels of ``curves_figure`` that ``records`` (metrics.jsonl) has numbers for: the
    CURVES, then the losses of a model with several players (one panel)."""
    def has(key: str) -> bool:
        return any(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in records)

    panels = [(title, unit, [k for k in keys if has(k)]) for title, unit, keys in CURVES]
    panels = [p for p in panels if p[2]]
    losses = sorted({k for r in records for k in r if k.endswith("_loss") and k not in ("train_loss", "valid_loss")})
    losses = [k for k in losses if has(k)]
    if losses:
        panels.append(("player losses", "loss per example", losses))
    return panels


def curves_figure(records: list[dict], path: str | Path) -> Path | None:
    """Training curves against the epoch from a run's metrics.jsonl records: bound,
    reconstruction, KL, kl_scale, active units and mutual information, each where the records
    have it (and the players' losses for the adversarial models). None when there is nothing to
    draw."""
    panels = curve_panels(records)
    if not panels:
        return None
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.0 * nrows), dpi=DPI, layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax, (title, unit, keys) in zip(axes, panels):
        for key in keys:
            points = [(r["epoch"], r.get(key)) for r in records if "epoch" in r]
            epochs = [e for e, _ in points]
            values = [v if isinstance(v, (int, float)) and not isinstance(v, bool) else np.nan for _, v in points]
            ax.plot(epochs, values, "o-" if len(epochs) < 30 else "-", markersize=3, label=key)
        ax.set_title(title, fontsize=10)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if title == "active units":
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    return save_figure(fig, path)


def write_run_figures(run_dir: str | Path, n_samples: int = 64, n_reconstructions: int = 32, *,
                      trust_code: bool = False, device: str | torch.device | None = None) -> list[Path]:  # fmt: skip
    """Writes ``curves.png`` (the training curves of metrics.jsonl, ``curves_figure``), ``samples.png``, ``reconstructions.png`` (models with an encoder) and, for a 2-D
    latent, ``latent.png`` (test data, up to 5000 points) into a run directory. For 2-D data
    (``ring8``, ``grid25``) ``samples.png`` is a scatter plot of samples over the test points, and
    there are no reconstructions. A VQ-VAE gets ``samples.png`` only once ``vaelab prior`` has
    trained its prior over code grids. ``trust_code`` and ``device`` (where the model draws them;
    None: the CPU) as in ``runs.load``."""
    from ..runs.rundir import load, load_data, read_config

    run_dir = Path(run_dir)
    config, _ = read_config(run_dir)
    model = load(run_dir, trust_code=trust_code, device=device)
    test = load_data(config, "test", limit=5000)
    written = []
    curves = curves_figure(read_metrics(run_dir), run_dir / "curves.png")
    if curves is not None:
        written.append(curves)
    if test.event_shape == (2,):  # points in the plane (ring8, grid25): a scatter plot says more
        written.append(points_figure(model, test.fixed(), run_dir / "samples.png"))
    elif getattr(model, "code_prior", True) is not None:  # a VQ-VAE samples once its prior is trained
        written.append(samples_figure(model, run_dir / "samples.png", n=n_samples))
    if test.event_shape != (2,) and can_reconstruct(model):  # not the GAN
        written.append(reconstructions_figure(model, test.fixed()[:n_reconstructions], run_dir / "reconstructions.png"))
    if getattr(model, "latent_dim", None) == 2 and test.event_shape != (2,) and (hasattr(model, "code") or hasattr(model, "encode")):
        written.append(latent_figure(model, test.fixed(), test.y, run_dir / "latent.png"))
    return written
