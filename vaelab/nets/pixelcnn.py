"""A gated PixelCNN over grids of discrete codes: an autoregressive prior p(codes).

After van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves and Kavukcuoglu (2016),
"Conditional Image Generation with PixelCNN Decoders" (NeurIPS), used as the learned prior over
the latent code grids of a VQ-VAE (van den Oord, Vinyals and Kavukcuoglu 2017, "Neural Discrete
Representation Learning").

The model factorises a grid of codes ``c`` of shape ``(h, w)`` in raster order,

    log p(c) = sum_{i, j} log p(c_ij | c_{i'j'} for (i', j') before (i, j)),

where ``(i', j')`` is before ``(i, j)`` iff ``i' < i`` or ``(i' == i and j' < j)``. The logits at
``(i, j)`` depend only on codes strictly before it; ``tests/test_pixelcnn.py`` checks this
exactly with gradients.

What is implemented (the unconditional model of the paper; no class or latent conditioning):

* An embedding of each code into ``channels`` features feeds both stacks.
* Two stacks, so there is no blind spot (a stack of plain masked 3x3 convolutions never sees
  the region above and to the right of a pixel):

  - the *vertical* stack sees whole rows above. Each layer is a ``(k//2 + 1) x k`` convolution
    on the input padded with ``k//2`` rows on top and ``k//2`` columns on either side (no mask
    needed): its output at row ``i`` sees rows ``i - k//2 .. i`` of its input, all columns within
    ``k//2``. It therefore does see the current row, which is harmless because the vertical stack
    reaches the output only through the horizontal stack, and on the way it is *shifted down one
    row* (zero row on top, last row dropped), so row ``i`` of the horizontal stack receives
    vertical features computed from rows ``< i`` only. That shift is the vertical stack's strict
    ("A") mask; every vertical layer is the same "B"-style kernel.
  - the *horizontal* stack sees pixels to the left in the same row, through ``1 x m``
    convolutions on the input padded on the left. The first layer is strict ("A"): ``m = k//2``
    taps covering columns ``j - k//2 .. j - 1``. Later layers include the current position of
    their own input ("B"): ``m = k//2 + 1`` taps covering ``j - k//2 .. j``.
  - the down-shifted vertical pre-activations (``2 * channels`` maps) go through a 1x1
    convolution and are added to the horizontal pre-activations, as in Figure 2 of the paper.

* Gated activations ``tanh(a) * sigmoid(b)`` in both stacks, where ``a`` and ``b`` are the two
  halves of the ``2 * channels`` pre-activation maps.
* A 1x1 convolution after the horizontal gate and a residual connection around it, in every
  layer but the first (the first layer's input is the embedding of the current code itself, so a
  residual there would leak it).
* An output head on the last horizontal stack: ReLU, 1x1 convolution, ReLU, 1x1 convolution to
  ``num_codes`` logits.

Kernel sizes: 7 for the first layer (``FIRST_KERNEL_SIZE``: a wide first layer lets a shallow
model see 3 columns either side and 3 rows up at once, as in the paper's and common
implementations), 3 for the later layers (``KERNEL_SIZE``). Each later layer grows the
receptive field by one row up and one column on either side.

Everything is device-agnostic: tensors are made from the inputs or the parameters, so the module
works on CPU, CUDA and the ``meta`` device (``logits``, ``log_prob``). Sampling is ancestral, one
position at a time in raster order, i.e. ``h * w`` forward passes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GatedPixelCNN"]

FIRST_KERNEL_SIZE = 7
KERNEL_SIZE = 3


def _gate(x: Tensor) -> Tensor:
    """``tanh(a) * sigmoid(b)`` for the two channel halves ``a, b`` of ``x``."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


def _shift_down(x: Tensor) -> Tensor:
    """Move every row one down: a zero row on top, the last row dropped."""
    return F.pad(x, (0, 0, 1, 0))[:, :, : x.shape[2], :]


class _GatedLayer(nn.Module):
    """One gated layer: (vertical, horizontal) -> (vertical, horizontal), same shapes."""

    def __init__(self, channels: int, kernel_size: int, first: bool) -> None:
        super().__init__()
        if kernel_size < 3 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3, got {kernel_size}")
        self.first = first
        self.reach = kernel_size // 2
        self.v_conv = nn.Conv2d(channels, 2 * channels, (self.reach + 1, kernel_size))
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        # "A": taps at j - reach .. j - 1; "B": taps at j - reach .. j.
        self.h_conv = nn.Conv2d(channels, 2 * channels, (1, self.reach if first else self.reach + 1))
        self.h_out = nn.Conv2d(channels, channels, 1)

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        r, width = self.reach, h.shape[3]
        # Vertical: row i sees input rows i - r .. i, columns j - r .. j + r.
        v_pre = self.v_conv(F.pad(v, (r, r, r, 0)))
        # Horizontal: pad r on the left. With r taps ("A") the output is one column too wide and
        # output column j sees input columns j - r .. j - 1; with r + 1 taps ("B") it is exact.
        h_pre = self.h_conv(F.pad(h, (r, 0)))[:, :, :, :width]
        h_pre = h_pre + self.v_to_h(_shift_down(v_pre))  # row i gets vertical rows < i only
        h_new = self.h_out(_gate(h_pre))
        if not self.first:
            h_new = h + h_new
        return _gate(v_pre), h_new


class GatedPixelCNN(nn.Module):
    """Gated PixelCNN prior over ``(h, w)`` grids of codes in ``[0, num_codes)``.

    ``logits(codes)`` gives ``(B, num_codes, h, w)`` where position ``(i, j)`` depends only on
    codes strictly before it in raster order; ``log_prob`` sums the resulting conditionals;
    ``sample`` draws grids ancestrally. Any grid size works (the convolutions are translation
    equivariant; context is limited by the receptive field: ``FIRST_KERNEL_SIZE // 2 + (layers -
    1) * (KERNEL_SIZE // 2)`` columns either side through the vertical stack, that many plus one
    rows up).
    """

    num_codes: int

    def __init__(self, num_codes: int, layers: int = 8, channels: int = 64) -> None:
        super().__init__()
        for name, value, low in (("num_codes", num_codes, 2), ("layers", layers, 1), ("channels", channels, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        self.num_codes = num_codes
        self.layers = layers
        self.channels = channels
        self.embedding = nn.Embedding(num_codes, channels)
        self.stack = nn.ModuleList(
            _GatedLayer(channels, FIRST_KERNEL_SIZE if i == 0 else KERNEL_SIZE, first=i == 0) for i in range(layers)
        )
        self.head = nn.Sequential(
            nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU(), nn.Conv2d(channels, num_codes, 1)
        )

    # -- checks ---------------------------------------------------------------------------------

    def _check_codes(self, codes: Tensor) -> None:
        if not isinstance(codes, Tensor):
            raise ValueError(f"codes must be a torch.Tensor of int64, got {type(codes).__name__}")
        if codes.dtype != torch.int64:
            raise ValueError(f"codes must be int64 of shape (B, h, w), got dtype {codes.dtype}")
        if codes.dim() != 3:
            raise ValueError(f"codes must be int64 of shape (B, h, w), got shape {tuple(codes.shape)}")
        if codes.device.type != "meta" and codes.numel() > 0:  # meta tensors have no values
            low, high = int(codes.min()), int(codes.max())
            if low < 0 or high >= self.num_codes:
                raise ValueError(
                    f"codes must lie in [0, {self.num_codes}), got values from {low} to {high}"
                )

    # -- the model ------------------------------------------------------------------------------

    def embed(self, codes: Tensor) -> Tensor:
        """Embedded codes: ``(B, h, w)`` int64 -> ``(B, channels, h, w)``."""
        self._check_codes(codes)
        return self.embedding(codes).permute(0, 3, 1, 2)

    def logits_from_embedding(self, e: Tensor) -> Tensor:
        """Logits ``(B, num_codes, h, w)`` from embedded codes ``e`` of shape ``(B, channels, h, w)``.

        The output at ``(i, j)`` is a function of ``e`` at positions strictly before ``(i, j)``
        only (differentiable, so causality can be checked with gradients).
        """
        if not isinstance(e, Tensor) or e.dim() != 4 or e.shape[1] != self.channels or not e.is_floating_point():
            got = f"shape {tuple(e.shape)}, dtype {e.dtype}" if isinstance(e, Tensor) else type(e).__name__
            raise ValueError(f"e must be a float tensor of shape (B, {self.channels}, h, w), got {got}")
        v = h = e
        for layer in self.stack:
            v, h = layer(v, h)
        return self.head(h)

    def logits(self, codes: Tensor) -> Tensor:
        """Logits ``(B, num_codes, h, w)`` of ``p(code_ij | codes before (i, j))``."""
        return self.logits_from_embedding(self.embed(codes))

    def log_prob(self, codes: Tensor) -> Tensor:
        """``(B,)``: ``log p(codes)``, the sum over positions of the raster-order conditionals."""
        logp = torch.log_softmax(self.logits(codes), dim=1)
        return logp.gather(1, codes.unsqueeze(1)).squeeze(1).sum(dim=(1, 2))

    @torch.no_grad()
    def sample(
        self,
        n: int,
        shape: tuple[int, int],
        *,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """Draw ``n`` grids ``(n, h, w)`` int64 ancestrally in raster order.

        Each code is drawn from ``softmax(logits / temperature)`` given the codes drawn before
        it. The result lies on the module's device; ``generator`` (on that device) makes the draw
        reproducible, ``None`` uses the global RNG. Costs ``h * w`` forward passes (each over
        the rows up to the current one, which is all the current position can see).
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        if (
            not isinstance(shape, (tuple, list))
            or len(shape) != 2
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)
        ):
            raise ValueError(f"shape must be a pair of positive integers (h, w), got {shape!r}")
        if not float(temperature) > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        height, width = shape
        device = next(self.parameters()).device
        codes = torch.zeros((n, height, width), dtype=torch.int64, device=device)
        if n == 0:
            return codes
        for i in range(height):
            for j in range(width):
                # Rows below i cannot influence rows <= i, so the forward pass stops at row i.
                logits = self.logits(codes[:, : i + 1])[:, :, i, j]
                logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # no half softmax
                probs = torch.softmax(logits / temperature, dim=1)
                codes[:, i, j] = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        return codes
