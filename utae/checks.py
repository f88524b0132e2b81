"""Type checks shared by the validators of configs and data files, and the column check of the tables' inputs
(torch-free)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

__all__ = ["is_int", "is_number", "is_whole_number", "require_columns"]


def is_int(value: Any) -> bool:
    """A python or numpy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: Any) -> bool:
    """A python or numpy integer or float, not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def is_whole_number(value: Any) -> bool:
    """An integer (:func:`is_int`), or a finite float holding a whole number such as ``10000.0``: how GIS tools
    often write integer GeoJSON properties (a column with a missing value becomes float)."""
    if is_int(value):
        return True
    return is_number(value) and math.isfinite(value) and float(value).is_integer()


def require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    """Raise ``ValueError`` naming ``what`` (the function and its argument) when ``frame`` lacks one of ``columns``."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; got {list(frame.columns)}")
