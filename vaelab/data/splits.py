"""Splits held in memory (``Split``) and their in-memory batching.

Whole splits live in memory as float32 tensors and are batched by index: there is no per-example
Python work and no ``DataLoader`` (only an image folder too large for memory is streamed, see
``vaelab.imagefolder.StreamSplit``). Randomness (shuffling, dynamic binarization) is drawn only
from a ``torch.Generator`` the caller passes in, so a trainer that checkpoints the generator state
can resume bitwise-identically.

Binarization modes (``BINARIZE_MODES``), for grey levels in [0, 1]:

- ``none``: the grey levels as they are.
- ``threshold``: ``x > 0.5``.
- ``static``: one Bernoulli draw per split, fixed by ``(seed, split)`` (Larochelle & Murray 2011).
- ``dynamic``: a fresh Bernoulli draw every training pass (Salakhutdinov & Murray 2008; Burda et
  al. 2016); the deterministic view used for scoring is a single seeded draw, as for ``static``.

With ``binarize="none"``, ``dequantize=True`` serves grey level k as (k + u) / levels with fresh
uniform noise u every training pass (one seeded draw for scoring), so that a density model of
the data is honest about discrete pixels (Theis et al. 2016).

Posterior codes: a ``.npz`` that holds ``scale_train`` and ``scale_test`` beside ``x_train`` and
``x_test`` (``vaelab encode`` writes the posterior means as x and their standard deviations as
scale) is served, with ``codes="draw"`` (the default), as fresh draws z = x + scale * N(0, I) every
training pass (one seeded draw for scoring): samples of the aggregate posterior
q(z) = E_x q(z|x), the distribution the second stage of a two-stage VAE must learn (Dai & Wipf
2019). ``codes="mean"`` serves the means alone, as fixed data.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from ..core.errors import DataError
from .common import BINARIZE_MODES, SPLITS, check_choice, derived_seed

__all__ = ["Split"]


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors field by field is meaningless
class Split:
    """One split of a dataset held in memory.

    Build it with :func:`load_split`; constructing it directly (e.g. from synthetic tensors in
    tests) is fine too. ``x`` is cast to float32 and ``y`` to int64. Data stays on the CPU.

    Attributes:
        x: float32 ``[N, C, H, W]`` for images, ``[N, D]`` for vector data; grey levels of image
            sets and uint8 arrays are scaled to [0, 1].
        y: int64 labels ``[N]``, or None when the data has none.
        name: the dataset name or path as given.
        split: ``"train"``, ``"valid"`` or ``"test"``.
        binarize: one of ``BINARIZE_MODES``.
        seed: the seed of the validation carve and of the fixed Bernoulli draws.
        levels: the number of discrete grey levels (256 for uint8/IDX data, 17 for digits, 2 for
            bool arrays), None for continuous floats.
        dequantize: serve grey level k (of ``levels``) as (k + u) / levels with u ~ U[0, 1),
            so that a density model of the result bounds the discrete log-likelihood
            (Theis et al. 2016): log P(k) >= E_u[log p((k + u) / L)] - D log L.
        sd: per-element standard deviations shaped like ``x`` (posterior codes), or None: each
            training pass serves x + sd * N(0, I), drawn afresh; the fixed view is one seeded draw.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    name: str
    split: str
    binarize: str = "none"
    seed: int = 0
    levels: int | None = None
    dequantize: bool = False
    sd: torch.Tensor | None = None
    # Memo of fixed() and the reused buffer of dynamic draws; a mutable dict lets a frozen
    # dataclass cache without object.__setattr__.
    _cache: dict[str, Any] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        check_choice(self.split, SPLITS, "split")
        check_choice(self.binarize, BINARIZE_MODES, "binarize mode")
        if not isinstance(self.x, torch.Tensor) or self.x.ndim < 2:
            raise DataError(
                f"{self.name}: x must be a tensor of shape [N, D] or [N, C, H, W], got "
                f"{_shape_of(self.x)}; reshape the data so the first axis indexes examples"
            )
        if not (self.x.is_floating_point() or self.x.dtype == torch.bool):
            raise DataError(
                f"{self.name}: x has dtype {self.x.dtype}; pass floats in [0, 1] (divide uint8 "
                "grey levels by 255)"
            )
        if self.x.dtype != torch.float32:
            object.__setattr__(self, "x", self.x.to(torch.float32))
        if self.y is not None:
            if not isinstance(self.y, torch.Tensor) or self.y.shape != (self.x.shape[0],):
                raise DataError(
                    f"{self.name}: labels must be a 1-D tensor with one entry per example "
                    f"({self.x.shape[0]}), got {_shape_of(self.y)}; fix the labels or pass y=None"
                )
            if self.y.dtype != torch.int64:
                object.__setattr__(self, "y", self.y.to(torch.int64))
        if self.sd is not None:
            if not isinstance(self.sd, torch.Tensor) or self.sd.shape != self.x.shape:
                raise DataError(
                    f"{self.name}: sd must be a tensor shaped like x {list(self.x.shape)}, got "
                    f"{_shape_of(self.sd)}; store one standard deviation per value"
                )
            if self.binarize != "none" or self.dequantize:
                raise DataError(
                    f"{self.name} holds posterior codes drawn as x + sd * N(0, I); binarization and "
                    "dequantization do not apply to them: use binarize='none' without dequantize"
                )
            if self.sd.dtype != torch.float32:
                object.__setattr__(self, "sd", self.sd.to(torch.float32))
        if self.dequantize and self.binarize != "none":
            raise DataError(
                f"dequantization adds noise to grey levels, but binarize={self.binarize!r} makes "
                "the data binary; use binarize='none' with dequantize"
            )
        if self.dequantize and not self.levels:
            raise DataError(
                f"{self.name} holds continuous values, so there is nothing to dequantize; "
                "dequantize needs discrete grey levels (uint8 arrays, digits, the IDX sets)"
            )
        if self.binarize != "none" and self.x.numel() > 0:
            low, high = float(self.x.min()), float(self.x.max())
            if not (0.0 <= low and high <= 1.0):  # also rejects NaN
                raise DataError(
                    f"binarization needs values in [0, 1], but {self.name} ({self.split}) has "
                    f"values in [{low:g}, {high:g}]; rescale the data to [0, 1] or use "
                    "binarize='none'"
                )

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __repr__(self) -> str:
        labels = "none" if self.y is None else "int64"
        return (
            f"Split(name={self.name!r}, split={self.split!r}, x={list(self.x.shape)}, "
            f"y={labels}, binarize={self.binarize!r}, seed={self.seed}, levels={self.levels})"
        )

    @property
    def event_shape(self) -> tuple[int, ...]:
        """The shape of one example: ``x.shape[1:]``."""
        return tuple(self.x.shape[1:])

    def fixed(self) -> torch.Tensor:
        """The deterministic float32 view used for validation, testing and plots.

        ``none`` -> ``x``; ``threshold`` -> ``x > 0.5``; ``static`` and ``dynamic`` -> one
        Bernoulli draw seeded by ``(seed, split)``, so scores are reproducible and comparable
        between models, and the train/valid/test draws are independent; dequantized grey levels
        and codes with ``sd`` likewise one seeded draw. The result is cached.
        Because CPU ``torch.rand`` fills row-major, ``load_split(..., limit=n).fixed()`` equals
        the first ``n`` rows of the unlimited split's ``fixed()`` for the test split.

        Returns:
            float32 tensor shaped like ``x``; treat it as read-only (it may be ``x`` itself).
        """
        view = self._cache.get("fixed")
        if view is None:
            if self.sd is not None:
                generator = torch.Generator().manual_seed(derived_seed(self.seed, self.split))
                view = self._code_draw(generator)
            elif self.dequantize:
                generator = torch.Generator().manual_seed(derived_seed(self.seed, self.split))
                view = self._dequantized(generator)
            elif self.binarize == "none":
                view = self.x
            elif self.binarize == "threshold":
                view = (self.x > 0.5).to(torch.float32)
            else:
                generator = torch.Generator().manual_seed(derived_seed(self.seed, self.split))
                view = (torch.rand(self.x.shape, generator=generator) < self.x).to(torch.float32)
            self._cache["fixed"] = view
        return view

    def draw(self, generator: torch.Generator | None) -> torch.Tensor:
        """The view for one training pass.

        ``dynamic`` -> a fresh Bernoulli draw of the whole split in one vectorized call (a bool
        tensor: a quarter of the memory of float32); dequantization and codes with ``sd`` -> a
        fresh draw of their noise; every other mode -> :meth:`fixed`.

        Args:
            generator: the only source of random numbers; required for ``dynamic``.

        Returns:
            bool (dynamic) or float32 tensor shaped like ``x``.
        """
        if self.sd is not None or self.dequantize:
            if generator is None:
                raise ValueError("fresh draws of codes or of dequantization noise need a torch.Generator; pass generator=...")
            return self._code_draw(generator) if self.sd is not None else self._dequantized(generator)
        if self.binarize != "dynamic":
            return self.fixed()
        if generator is None:
            raise ValueError("dynamic binarization needs a torch.Generator; pass generator=...")
        return torch.rand(self.x.shape, generator=generator) < self.x

    def fixed_batches(self, batch_size: int) -> Iterator[torch.Tensor]:
        """Slices of :meth:`fixed` of ``batch_size`` rows, in order (validation, scoring)."""
        view = self.fixed()
        return (view[i : i + batch_size] for i in range(0, len(view), batch_size))

    def head(self, n: int | None) -> torch.Tensor:
        """The first ``n`` rows of :meth:`fixed` (all when None)."""
        return self.fixed() if n is None else self.fixed()[:n]

    def _dequantized(self, generator: torch.Generator) -> torch.Tensor:
        # grey level k = x * (L - 1) -> (k + u) / L, in [0, 1)
        levels = float(self.levels)
        k = torch.round(self.x * (levels - 1))
        return (k + torch.rand(self.x.shape, generator=generator)).div_(levels)

    def _code_draw(self, generator: torch.Generator) -> torch.Tensor:
        # z = mean + sd * eps, eps ~ N(0, I): one draw from each example's q(z|x)
        assert self.sd is not None
        return torch.randn(self.x.shape, generator=generator).mul_(self.sd).add_(self.x)

    def batches(
        self,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
    ) -> Iterator[torch.Tensor]:
        """One pass over the split in batches.

        Random numbers come only from ``generator``, in a fixed order: the permutation first
        (when shuffling), then the binarization draw (when dynamic). Both are drawn when this
        method is called, not lazily, so the generator state right after the call already
        reflects the whole pass.

        Args:
            batch_size: examples per batch (>= 1); the last batch may be smaller.
            generator: source of the permutation and of dynamic draws; required for
                ``shuffle=True`` or ``binarize="dynamic"``.
            shuffle: visit the examples in a random order.
            drop_last: skip the final batch when it is smaller than ``batch_size``.

        Returns:
            an iterator (with ``len()``, the number of batches) of float32 tensors
            ``[b, *event_shape]``; treat them as read-only, they may share memory with ``x``.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if generator is None and (shuffle or self.binarize == "dynamic" or self.dequantize or self.sd is not None):
            # The global RNG would make resumed training irreproducible.
            raise ValueError(
                "shuffle=True and dynamic binarization need a torch.Generator; pass generator=..."
            )
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else None
        reuse = self.binarize == "dynamic" and not self.dequantize and self.sd is None and generator is not None
        view = self._draw_into_buffer(generator) if reuse else self.draw(generator)
        stop = n - n % batch_size if drop_last else n
        batches = _Batches(view, order, batch_size, stop)
        if reuse:
            self._cache["draw_pass"] = weakref.ref(batches)  # type: ignore[assignment]
        return batches

    def _draw_into_buffer(self, generator: torch.Generator) -> torch.Tensor:
        """``draw(generator)`` for dynamic binarization, written into a bool tensor that the split
        keeps from pass to pass, the uniform numbers drawn a slice of examples at a time into a small
        float buffer: the same numbers in the same order as one ``torch.rand`` of the whole split
        (the CPU generator fills row-major, one number per element), without allocating and
        faulting in 4 bytes per element of every pass (0.44 -> 0.26 s per Fashion-MNIST epoch on
        one thread). The buffer is reused only once the previous pass over it is exhausted or gone;
        a pass still being iterated keeps its own draw."""
        previous = self._cache.get("draw_pass")
        last = previous() if previous is not None else None
        busy = last is not None and not last.exhausted
        out = self._cache.get("draw")
        if out is None or busy:
            out = torch.empty(self.x.shape, dtype=torch.bool)
            if not busy:
                self._cache["draw"] = out
        rows = max(1, (1 << 20) // max(1, math.prod(self.x.shape[1:])))
        buffer = torch.empty(min(rows, len(self)), *self.x.shape[1:])  # torch.rand's default dtype, as in draw()
        for i in range(0, len(self), rows):
            u = buffer[: min(rows, len(self) - i)]
            torch.rand(u.shape, generator=generator, out=u)
            torch.lt(u, self.x[i : i + u.shape[0]], out=out[i : i + u.shape[0]])
        return out


class _Batches(Iterator[torch.Tensor]):
    """Slices of a prepared view; an iterator with a length so progress bars know the total."""

    def __init__(
        self, view: torch.Tensor, order: torch.Tensor | None, batch_size: int, stop: int
    ) -> None:
        self._view, self._order, self._size, self._stop = view, order, batch_size, stop
        self._start = 0

    def __len__(self) -> int:
        return -(-self._stop // self._size)

    def __iter__(self) -> _Batches:
        return self

    @property
    def exhausted(self) -> bool:
        return self._start >= self._stop

    def __next__(self) -> torch.Tensor:
        start = self._start
        if start >= self._stop:
            raise StopIteration
        end = min(start + self._size, self._stop)
        self._start = end
        if self._order is None:
            batch = self._view[start:end]
        else:
            batch = self._view.index_select(0, self._order[start:end])
        return batch.to(torch.float32)


def _shape_of(obj: object) -> str:
    shape = getattr(obj, "shape", None)
    return type(obj).__name__ if shape is None else str(list(shape))
