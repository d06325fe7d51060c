"""Arrays of images for display: a batch of data as images in [0, 1], and a grid of them."""

from __future__ import annotations

import math

import numpy as np
from torch import Tensor

from .errors import ConfigError


def as_images(x: Tensor) -> np.ndarray:
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
