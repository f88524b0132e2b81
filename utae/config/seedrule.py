"""The ``seeds:`` key of a sweep file: seeds chosen by precision instead of a fixed list.

::

    seeds:
      min: 3                       # seeds every point runs first (at least 2: a half-width needs a spread)
      max: 20                      # seeds a point runs at most
      target_halfwidth: 3.0        # points (x100 of the metric): stop when every comparison's 95% CI is this narrow
      step: 1                      # optional: seeds added per round (default 1)
      comparisons:                 # the paired comparisons the target applies to
        - {key: aug, against: none, metric: mpc}                  # every other case of aug against none
        - {key: aug, cases: [clouds], against: none, metric: test_miou}

The sweep then runs the seeds ``0 .. max - 1`` of its grid in rounds (:mod:`utae.sweep.rounds`); the grid must not
list ``seed`` itself. ``key`` is a grid key (a case key such as ``aug``, or a plain one such as ``noise_std``),
``against`` one of its values, ``cases`` the values compared with it (default: every other value), ``metric`` one of
:data:`METRICS`. A comparison is made for every combination of the other grid keys (each must reach the target).
The rule itself is :mod:`utae.study.seed_rule`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["METRICS", "Comparison", "SeedRule", "read_seed_rule"]

#: The metrics a comparison may name: the run's value, as a fraction; the rule works in points (x100).
METRICS: dict[str, str] = {
    "test_miou": "test mIoU (metrics.json test.miou)",
    "test_oa": "test OA (metrics.json test.oa)",
    "val_miou": "validation mIoU (metrics.json val.miou)",
    "mpc": "mean performance under corruption: the test mIoU averaged over severities, then over kinds",
}
_KEYS = ("min", "max", "target_halfwidth", "step", "comparisons")
_COMPARISON_KEYS = ("key", "against", "cases", "metric")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``case`` against ``against`` on grid key ``key``, paired by seed, on ``metric`` (points)."""

    key: str
    case: Any
    against: Any
    metric: str

    @property
    def name(self) -> str:
        """E.g. ``"aug: clouds vs none (mpc)"``."""
        return f"{self.key}: {self.case} vs {self.against} ({self.metric})"


@dataclasses.dataclass(frozen=True)
class SeedRule:
    """A sweep's ``seeds:`` mapping (see the module docstring)."""

    min: int
    max: int
    target_halfwidth: float
    step: int
    comparisons: tuple[Comparison, ...]

    def to_dict(self) -> dict[str, Any]:
        """The rule as plain values (for ``seeds.json``)."""
        return {"min": self.min, "max": self.max, "target_halfwidth": self.target_halfwidth, "step": self.step,
                "comparisons": [c.name for c in self.comparisons]}


def _count(path: Path, raw: Mapping[str, Any], key: str, low: int, default: int | None = None) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{path}: seeds.{key} must be an integer >= {low}, got {value!r}")
    return value


def read_seed_rule(path: str | os.PathLike[str], raw: Any, grid: Mapping[str, list[Any]]) -> SeedRule:
    """The ``seeds:`` mapping ``raw`` of sweep file ``path`` checked against its ``grid`` (key -> values; a case
    key -> its labels), the comparisons expanded to one :class:`Comparison` per compared value.

    Raises:
        ValueError: one line naming the file and the key: not a mapping, an unknown key, ``min`` < 2, ``max`` <
            ``min``, a ``target_halfwidth`` that is not a positive number, no comparison, a comparison whose
            ``key``, ``against``, ``cases`` or ``metric`` the sweep does not have, or a grid that lists ``seed``.
    """
    path = Path(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: seeds must be a mapping (min, max, target_halfwidth, comparisons), got {raw!r}")
    unknown = [str(k) for k in raw if k not in _KEYS]
    if unknown:
        raise ValueError(f"{path}: unknown key seeds.{unknown[0]}; seeds takes {', '.join(_KEYS)}")
    for key in ("min", "max", "target_halfwidth", "comparisons"):
        if key not in raw:
            raise ValueError(f"{path}: seeds.{key} is missing (seeds takes {', '.join(_KEYS)})")
    low = _count(path, raw, "min", 2)
    high = _count(path, raw, "max", low)
    step = _count(path, raw, "step", 1, default=1)
    target = raw["target_halfwidth"]
    if isinstance(target, bool) or not isinstance(target, (int, float)) or not math.isfinite(target) or target <= 0:
        raise ValueError(f"{path}: seeds.target_halfwidth must be a positive number of points, got {target!r}")
    if "seed" in grid:
        raise ValueError(f"{path}: grid.seed and seeds are both given; the seeds rule runs seeds 0 .. max - 1, "
                         "remove grid.seed")
    items = raw["comparisons"]
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: seeds.comparisons must be a non-empty list of {{key, against, metric}}, "
                         f"got {items!r}")
    comparisons: list[Comparison] = []
    for i, item in enumerate(items):
        comparisons.extend(_read_comparison(path, f"seeds.comparisons[{i}]", item, grid))
    return SeedRule(min=low, max=high, target_halfwidth=float(target), step=step,
                    comparisons=tuple(dict.fromkeys(comparisons)))


def _read_comparison(path: Path, where: str, item: Any, grid: Mapping[str, list[Any]]) -> list[Comparison]:
    """One entry of ``seeds.comparisons``: a Comparison for each compared value."""
    if not isinstance(item, dict):
        raise ValueError(f"{path}: {where} must be a mapping {{key, against, metric}}, got {item!r}")
    unknown = [str(k) for k in item if k not in _COMPARISON_KEYS]
    if unknown:
        raise ValueError(f"{path}: unknown key {where}.{unknown[0]}; a comparison takes "
                         f"{', '.join(_COMPARISON_KEYS)}")
    for key in ("key", "against", "metric"):
        if key not in item:
            raise ValueError(f"{path}: {where}.{key} is missing")
    key, against, metric = item["key"], item["against"], item["metric"]
    if key not in grid or key == "seed":
        raise ValueError(f"{path}: {where}.key {key!r} is not a grid key; grid keys: {', '.join(map(str, grid))}")
    values = grid[key]
    if against not in values:
        raise ValueError(f"{path}: {where}.against {against!r} is not a value of grid.{key} ({values})")
    if metric not in METRICS:
        raise ValueError(f"{path}: {where}.metric {metric!r} is not one of {', '.join(METRICS)}")
    cases = item.get("cases", [v for v in values if v != against])
    if not isinstance(cases, list) or not cases:
        raise ValueError(f"{path}: {where}.cases must be a non-empty list of values of grid.{key}, got {cases!r}")
    for case in cases:
        if case not in values or case == against:
            raise ValueError(f"{path}: {where}.cases: {case!r} is not a value of grid.{key} other than {against!r}")
    return [Comparison(key=str(key), case=case, against=against, metric=str(metric)) for case in cases]
