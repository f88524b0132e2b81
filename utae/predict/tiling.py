"""Windows over a raster and the smooth blending of their logits (numpy only).

Windows. A raster of ``H x W`` pixels is covered by square windows of ``size`` pixels (the model's patch size)
whose starts step by ``size - overlap`` along each axis (:func:`window_starts`); the last window of a row or
column is moved back to end on the raster's edge, so it overlaps its neighbour by more. A raster smaller than
``size`` along an axis gets one window there, read padded (:mod:`utae.predict.run`) and cropped.

Blending. Window ``k`` gives logits ``L_k`` and a weight ``w_k(y, x) = r(y) r(x)``: 1 in its core and, over the
``overlap`` pixels along each side that has a neighbouring window, a ramp ``sin^2(pi/2 (i + 1/2) / overlap)``
(:func:`ramp`); a side on the raster's edge has no ramp. Where two windows overlap by exactly ``overlap`` the
ramps sum to 1 (``sin^2 + cos^2``), so the blend fades from one window to the next without a seam. The blended
logits are ``sum_k w_k L_k / sum_k w_k``; every weight is > 0 inside its window, so every pixel has a weight.

The blending's bound. The blend is a convex combination of the covering windows' logits, so at every pixel and
for every class ``min_k L_k <= blend <= max_k L_k``, and likewise for every difference of two classes' logits
(the log-ratio of their probabilities). A pixel covered by a single window (its core, away from its
neighbours) gets that window's logits exactly (weight 1). Where all covering windows predict the same class,
the blend predicts it too.

:class:`RollingBlend` keeps the sums of only ``size`` rows (and of several layers: the clean prediction and the
stress draws), so its memory grows with the raster's width, not its height.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = ["window_starts", "ramp", "Window", "grid", "window_id", "RollingBlend"]

#: Window offsets must stay below this (2^20 px = 10,485 km of 10 m pixels): :func:`window_id` packs them.
MAX_OFFSET = 1 << 20


def window_starts(n: int, size: int, overlap: int) -> list[int]:
    """The starts of the windows along an axis of ``n`` pixels: ``0, step, 2 step, ...`` with ``step = size -
    overlap``, the last one moved to ``n - size`` (``[0]`` when ``n <= size``)."""
    if size < 1 or not 0 <= overlap <= size // 2:
        raise ValueError(f"overlap must be in 0..{size // 2} (half the window of {size} px), got {overlap}")
    if n <= size:
        return [0]
    step = size - overlap
    starts = list(range(0, n - size + 1, step))
    if starts[-1] != n - size:
        starts.append(n - size)
    return starts


def ramp(size: int, overlap: int, before: bool, after: bool) -> np.ndarray:
    """The weight of a window along one axis, ``(size,)`` float32: 1, with a ``sin^2`` ramp over ``overlap`` pixels
    at the start (``before``: a neighbour there) and at the end (``after``)."""
    w = np.ones(size, dtype=np.float64)
    if overlap > 0:
        up = np.sin(0.5 * np.pi * (np.arange(overlap) + 0.5) / overlap) ** 2
        if before:
            w[:overlap] = up
        if after:
            w[size - overlap:] *= up[::-1]
    return w.astype(np.float32)


@dataclass(frozen=True)
class Window:
    """One window: its top-left pixel ``(row, col)``, the rows and columns of it inside the raster ``(h, w)``
    (``size`` unless the raster is smaller) and its weight ``(h, w)`` float32."""

    row: int
    col: int
    h: int
    w: int
    weight: np.ndarray


def grid(height: int, width: int, size: int, overlap: int) -> list[list[Window]]:
    """The windows of a ``height x width`` raster, one list a row of windows (a strip), top to bottom, each
    left to right."""
    if height >= MAX_OFFSET or width >= MAX_OFFSET:
        raise ValueError(f"rasters of up to {MAX_OFFSET - 1} px a side are supported, got {height} x {width}")
    rows, cols = window_starts(height, size, overlap), window_starts(width, size, overlap)
    strips = []
    for i, r in enumerate(rows):
        wy = ramp(size, overlap, i > 0, i < len(rows) - 1)[: min(size, height)]
        strip = []
        for j, c in enumerate(cols):
            wx = ramp(size, overlap, j > 0, j < len(cols) - 1)[: min(size, width)]
            strip.append(Window(r, c, min(size, height), min(size, width), np.outer(wy, wx)))
        strips.append(strip)
    return strips


def window_id(row: int, col: int) -> int:
    """An integer that names the window at ``(row, col)`` (its seed key: :mod:`utae.predict.stress`)."""
    if not (0 <= row < MAX_OFFSET and 0 <= col < MAX_OFFSET):
        raise ValueError(f"window offsets must be in 0..{MAX_OFFSET - 1}, got ({row}, {col})")
    return row * MAX_OFFSET + col


class RollingBlend:
    """Weighted sums of the logits of ``layers`` predictions (the clean one, then the stress draws) over the rows
    of the current strip of windows: ``(layers, K, rows, width)`` float32 plus the weight sum ``(rows, width)``.

    Strips come top to bottom: :meth:`advance` to a strip's first row returns the rows above it, which no later
    window covers, and drops them; :meth:`add` accumulates a window; :meth:`finish` returns the rest."""

    def __init__(self, layers: int, classes: int, rows: int, width: int) -> None:
        self.sums = np.zeros((layers, classes, rows, width), dtype=np.float32)
        self.weight = np.zeros((rows, width), dtype=np.float32)
        self.top = 0  # the raster row of the buffer's first row

    def add(self, layer: int, window: Window, logits: np.ndarray, weight: np.ndarray) -> None:
        """Add ``weight * logits`` of ``window`` to ``layer``: ``logits`` ``(K, h, w)`` (already cropped),
        ``weight`` ``(h, w)`` (the window's, 0 on pixels without any valid date)."""
        r0 = window.row - self.top
        if r0 < 0 or r0 + window.h > self.weight.shape[0]:
            raise ValueError(f"window at row {window.row} is outside the buffered rows from {self.top}")
        area = (slice(r0, r0 + window.h), slice(window.col, window.col + window.w))
        self.sums[(layer, slice(None), *area)] += weight * logits

    def add_weight(self, window: Window, weight: np.ndarray) -> None:
        """Count ``window``'s ``weight (h, w)`` once (whatever the number of layers added)."""
        r0 = window.row - self.top
        self.weight[r0:r0 + window.h, window.col:window.col + window.w] += weight

    def advance(self, row: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Move the buffer down to start at raster row ``row``; yields once ``(top, sums (L, K, n, W), weight (n,
        W))`` for the rows from the old top to ``row`` (nothing when ``row`` is the top)."""
        n = row - self.top
        if n < 0:
            raise ValueError(f"strips must come top to bottom: row {row} is above {self.top}")
        if n == 0:
            return
        n = min(n, self.weight.shape[0])
        yield self.top, self.sums[:, :, :n].copy(), self.weight[:n].copy()
        self.sums[:, :, :-n or None] = self.sums[:, :, n:]
        self.sums[:, :, self.weight.shape[0] - n:] = 0.0
        self.weight[: self.weight.shape[0] - n] = self.weight[n:]
        self.weight[self.weight.shape[0] - n:] = 0.0
        self.top = row

    def finish(self, height: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """The rows left, from the top to ``height``."""
        n = height - self.top
        if n > 0:
            yield self.top, self.sums[:, :, :n].copy(), self.weight[:n].copy()
        self.top = height
