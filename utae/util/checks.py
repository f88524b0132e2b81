"""Type checks shared by the validators of configs and data files, the column check of the tables' inputs, and
the one rule for user-given names that become paths (torch-free)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

__all__ = ["is_int", "is_number", "is_whole_number", "item_index", "require_columns", "safe_path_name", "PATH_NAME_RE",
           "MAX_PATH_NAME"]

#: A name that becomes one path component: ASCII letters, digits, '.', '_', '+', '-', starting with a letter or
#: a digit (so never '', '.', '..', a hidden file or an option such as '-x'). The rule of ``--as`` on import,
#: which run ids (``noise0.5-seed1``, ``lr1e+06``) and platform ids (``cpu-amd-epyc-avx2``) already follow.
PATH_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
#: The longest accepted name: room under the 255-byte limit of file names for suffixes such as ``.html`` and
#: the temporary names of atomic writes.
MAX_PATH_NAME = 200


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


def safe_path_name(name: Any, what: str) -> str:
    """``name`` when it is safe as a single path component (see :data:`PATH_NAME_RE`, at most
    :data:`MAX_PATH_NAME` characters): what every user-given name that becomes a folder or file name passes
    (a platform, a run id, an import's ``--as``).

    Raises ``ValueError`` naming ``what`` (the parameter, e.g. ``"--platform"``), the value and the rule.
    """
    rule = (f"expected a single folder name of ASCII letters, digits, '.', '_', '+', '-', starting with a letter or "
            f"a digit, at most {MAX_PATH_NAME} characters")
    if not isinstance(name, str):
        raise ValueError(f"{what}: expected a name (str), got {type(name).__name__} {name!r}; {rule}")
    if PATH_NAME_RE.fullmatch(name) and len(name) <= MAX_PATH_NAME:
        return name
    if not name:
        why = "is empty"
    elif name in (".", ".."):
        why = "names the current or the parent folder"
    elif "/" in name or "\\" in name:
        why = "holds a path separator"
    elif len(name) > MAX_PATH_NAME:
        why = f"is {len(name)} characters long"
    elif not PATH_NAME_RE.match(name[0]):
        why = f"starts with {name[0]!r}"
    else:
        bad = next(c for c in name if not re.fullmatch(r"[A-Za-z0-9._+-]", c))
        why = f"holds {bad!r}"
    shown = name if len(name) <= 80 else name[:77] + "..."
    raise ValueError(f"{what} {shown!r} {why}; {rule}")


def item_index(index: int, n: int) -> int:
    """``index`` of a dataset of ``n`` items as a non-negative int (negative indices count from the end).

    Raises ``IndexError`` naming the index and the dataset's size."""
    if not -n <= index < n:
        raise IndexError(f"index {index} out of range for a dataset of {n} items")
    return int(index) % n
