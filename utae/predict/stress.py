"""How far to trust a map: the same stack predicted under seeded corruptions of the suite, draw after draw.

``stress="clouds:3", draws=8`` predicts every window clean and under 8 corrupted draws of ``clouds`` at severity
3 (any kind and severity of :mod:`utae.perturb.corruptions`, :data:`utae.perturb.kinds.KINDS`). Each window is
corrupted as the suite corrupts a patch, on its normalised series with the training normalisation
(:func:`utae.perturb.corruptions.corrupt`): draw ``d`` of the window at ``(row, col)`` uses the suite's generator of
``(seed, patch id, kind, severity)`` with the patch id :func:`draw_id` of the window and the draw, so draws are
the same on every machine, whatever the batch, the order or the device, and two windows (or two draws) never
share theirs. Overlapping windows are corrupted independently (as two PASTIS patches would be); their corrupted
logits are blended like the clean ones.

Per pixel (``stress.tif``): the share of draws whose blended prediction keeps the clean class. Per class
(:class:`StressTally`, ``stress_classes.csv`` and ``stress.json``): over the pixels of each clean class, the share
that flips, for each draw; the table gives its mean over draws with a 95% Student t interval over the draws
(scipy; the draws are independent, the pixels of one draw are not, so the draw is the unit), the range over
draws, and the same for all classes together (``all``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from scipy import stats

from utae.util.atomic import atomic_write_csv, atomic_write_json
from utae.pastis.classes import CLASS_NAMES, N_CLASSES
from utae.perturb.kinds import parse_corruption_spec
from utae.perturb.corruptions import corrupt
from utae.predict.errors import PredictError
from utae.predict.geotiff import MAP_NODATA
from utae.predict.tiling import window_id

__all__ = ["MAX_DRAWS", "parse_stress", "draw_id", "corrupt_window", "StressTally"]

#: Draws per window at most (:func:`draw_id` packs the draw into 8 bits).
MAX_DRAWS = 256


def parse_stress(spec: str | None, draws: int) -> tuple[str, int] | None:
    """``(kind, severity)`` of ``"kind:severity"`` (None: no stress); a one-line error names ``stress`` or
    ``draws``."""
    if spec is None:
        return None
    try:
        parsed = parse_corruption_spec(spec, training=False, field="stress")
    except ValueError as exc:
        raise PredictError(str(exc)) from None
    if isinstance(draws, bool) or not isinstance(draws, int) or not 1 <= draws <= MAX_DRAWS:
        raise PredictError(f"draws must be an integer in 1..{MAX_DRAWS}, got {draws!r}")
    return parsed.kind, int(parsed.severity)


def draw_id(row: int, col: int, draw: int) -> int:
    """The patch id of draw ``draw`` of the window at ``(row, col)`` in the suite's seed key."""
    if not 0 <= draw < MAX_DRAWS:
        raise ValueError(f"draw must be in 0..{MAX_DRAWS - 1}, got {draw}")
    return window_id(row, col) * MAX_DRAWS + draw


def corrupt_window(image: torch.Tensor, dates: torch.Tensor, kind: str, severity: int, *, seed: int, row: int,
                   col: int, draw: int, norm: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``draw`` of the corruption of a window's normalised series: ``image (T, C, H, W)``, ``dates (T,)`` ->
    the corrupted ``(T', C, H, W)`` and ``(T',)`` (``T' < T`` for ``missing_dates``)."""
    x, d, _ = corrupt(image, dates, kind, severity, seed=seed, patch_id=draw_id(row, col, draw), norm=norm)
    return x, d


def _interval(values: np.ndarray) -> tuple[float, float]:
    """The 95% Student t interval of the mean of ``values`` (NaN with fewer than 2 values or none finite)."""
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return math.nan, math.nan
    sem = float(np.std(values, ddof=1)) / math.sqrt(len(values))
    if sem == 0.0:
        return float(values.mean()), float(values.mean())
    low, high = stats.t.interval(0.95, len(values) - 1, loc=float(values.mean()), scale=sem)
    return float(low), float(high)


class StressTally:
    """Per class and per draw, the pixels of the clean map and those that flip under the draw."""

    def __init__(self, draws: int) -> None:
        self.draws = int(draws)
        self.pixels = np.zeros(N_CLASSES, dtype=np.int64)
        self.flips = np.zeros((self.draws, N_CLASSES), dtype=np.int64)

    def add(self, clean: np.ndarray, drawn: np.ndarray) -> np.ndarray:
        """Count rows of the clean map ``clean (n, W)`` uint8 (:data:`MAP_NODATA` on nodata) against the draws'
        maps ``drawn (D, n, W)``; returns the share of draws keeping the clean class, ``(n, W)`` float32, NaN on
        nodata."""
        valid = clean != MAP_NODATA
        labels = clean[valid].astype(np.int64)
        self.pixels += np.bincount(labels, minlength=N_CLASSES)[:N_CLASSES]
        kept = np.zeros(clean.shape, dtype=np.int32)
        for d in range(self.draws):
            same = drawn[d] == clean
            kept += same
            self.flips[d] += np.bincount(labels[~same[valid]], minlength=N_CLASSES)[:N_CLASSES]
        share = kept.astype(np.float32) / np.float32(self.draws)
        share[~valid] = np.nan
        return share

    def table(self) -> pd.DataFrame:
        """One row per class present in the clean map, then ``all``: ``class``, ``name``, ``pixels``,
        ``flip_share`` (mean over draws), ``ci95_low``, ``ci95_high``, ``min_draw``, ``max_draw``."""
        rows = []
        groups = [(c, CLASS_NAMES[c], self.pixels[c], self.flips[:, c]) for c in range(N_CLASSES) if self.pixels[c]]
        groups.append((-1, "all", self.pixels.sum(), self.flips.sum(axis=1)))
        for c, name, n, flips in groups:
            share = flips / n if n else np.full(self.draws, np.nan)
            low, high = _interval(share)
            rows.append({"class": "all" if c < 0 else c, "name": name, "pixels": int(n),
                         "flip_share": float(np.mean(share)) if n else math.nan, "ci95_low": low, "ci95_high": high,
                         "min_draw": float(np.min(share)) if n else math.nan,
                         "max_draw": float(np.max(share)) if n else math.nan})
        return pd.DataFrame(rows)

    def write(self, csv_path: Path, json_path: Path, settings: dict[str, Any]) -> pd.DataFrame:
        """Write the table as CSV and, with ``settings`` and the per-draw shares, as JSON; returns the table."""
        table = self.table()
        atomic_write_csv(csv_path, table)
        per_draw = {CLASS_NAMES[c]: (self.flips[:, c] / self.pixels[c]).tolist()
                    for c in range(N_CLASSES) if self.pixels[c]}
        atomic_write_json(json_path, {**settings, "classes": table.to_dict(orient="records"),
                                      "flip_share_per_draw": per_draw,
                                      "interval": "95% Student t interval of the mean over draws (scipy)"})
        return table
