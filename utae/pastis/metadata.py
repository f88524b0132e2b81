"""PASTIS's description files and the facts of its format: the bands, folds, fold rotations and reference
date; ``metadata.geojson`` (one record per patch: id, fold, dates) and ``NORM_S2_patch.json`` (per-fold band
means and stds), each read and checked in full (:func:`read_metadata`, :func:`read_norm`,
:func:`fold_norm_stats`); dates (:func:`parse_date`, :func:`date_offsets`); the one ``.npy`` reader of the
data files (:func:`read_npy`, ``allow_pickle=False``). Torch-free.

Layout under ``root`` (Zenodo record 5012942, or :func:`utae.pastis.synthetic.make_synthetic_pastis`)::

    metadata.geojson           FeatureCollection, one feature per patch; properties ID_PATCH (int),
                               Fold (1..5), dates-S2 ({"0": YYYYMMDD, ...}, or that mapping as a
                               JSON string), N_Parcel, Parcel_Cover, TILE (ignored here)
    NORM_S2_patch.json         {"Fold_k": {"mean": [10 floats], "std": [10 floats]}, k = 1..5}
    DATA_S2/S2_<ID>.npy        (T, 10, H, W) reflectance x 10,000 (int16 in PASTIS), T = len(dates-S2)
    ANNOTATIONS/TARGET_<ID>.npy (3, H, W); channel 0 holds the semantic class 0..19

Every read raises :class:`PastisFormatError` naming the file and what it should hold. The file names come
from :mod:`utae.pastis.layout`.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from utae.util.checks import is_int, is_whole_number
from utae.pastis.classes import N_CLASSES
from utae.pastis.layout import METADATA_FILE, NORM_FILE, norm_key

__all__ = ["BANDS", "N_BANDS", "FOLDS", "REFERENCE_DATE", "FOLD_ROTATIONS", "PastisFormatError", "PatchRecord", "parse_date", "date_offsets", "read_metadata", "read_norm", "fold_norm_stats"]

BANDS: tuple[str, ...] = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
N_BANDS: int = len(BANDS)
FOLDS: tuple[int, ...] = (1, 2, 3, 4, 5)
REFERENCE_DATE: str = "2018-09-01"

#: The official 5-fold rotations, as (train_folds, val_folds, test_folds).
FOLD_ROTATIONS: tuple[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]], ...] = (
    ((1, 2, 3), (4,), (5,)),
    ((2, 3, 4), (5,), (1,)),
    ((3, 4, 5), (1,), (2,)),
    ((4, 5, 1), (2,), (3,)),
    ((5, 1, 2), (3,), (4,)),
)

class PastisFormatError(ValueError):
    """A PASTIS file or field does not hold what the format expects."""


@dataclass(frozen=True)
class PatchRecord:
    """One patch of ``metadata.geojson``: its id, fold and acquisition dates (YYYYMMDD ints)."""

    patch_id: int
    fold: int
    dates: tuple[int, ...]


# --------------------------------------------------------------------------------------------
# Dates (the file names and paths come from utae.pastis.layout)
# --------------------------------------------------------------------------------------------


def parse_date(value: Any, what: str = "date") -> _dt.date:
    """A ``datetime.date`` from a ``YYYYMMDD`` int/str, an ISO ``"YYYY-MM-DD"`` str or a date.

    Raises ``PastisFormatError`` naming ``what`` when the value is not a valid date.
    """
    if isinstance(value, _dt.datetime):
        return value.date()
    if isinstance(value, _dt.date):
        return value
    text = str(value).strip()
    if isinstance(value, bool) or not text:
        raise PastisFormatError(f"{what}: expected a date (YYYYMMDD or YYYY-MM-DD), got {value!r}")
    try:
        if len(text) == 8 and text.isdigit():
            return _dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
        return _dt.date.fromisoformat(text)
    except ValueError:
        raise PastisFormatError(
            f"{what}: expected a date (YYYYMMDD or YYYY-MM-DD), got {value!r}"
        ) from None


def date_offsets(dates: Iterable[Any], reference_date: Any = REFERENCE_DATE) -> np.ndarray:
    """Days since ``reference_date`` of each date, as an int64 array ``(T,)``.

    Dates before the reference date give negative offsets.
    """
    ref = parse_date(reference_date, "reference_date")
    return np.array([(parse_date(d) - ref).days for d in dates], dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Metadata and normalisation statistics
# --------------------------------------------------------------------------------------------


def _parse_dates_field(raw: Any, where: str) -> tuple[int, ...]:
    """The ``dates-S2`` property: a mapping ``{"0": YYYYMMDD, ...}``, that mapping as a JSON
    string, or a plain list. Returns the dates ordered by index, as YYYYMMDD ints."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise PastisFormatError(
                f"{where}: 'dates-S2' is a string that is not valid JSON ({exc.msg}); "
                'expected a mapping {"0": YYYYMMDD, ...}'
            ) from None
    if isinstance(raw, Mapping):
        try:
            items = sorted(((int(k), v) for k, v in raw.items()), key=lambda kv: kv[0])
        except (TypeError, ValueError):
            raise PastisFormatError(
                f"{where}: 'dates-S2' keys must be integer indices '0', '1', ..., "
                f"got {list(raw)[:5]!r}"
            ) from None
        if [k for k, _ in items] != list(range(len(items))):
            raise PastisFormatError(
                f"{where}: 'dates-S2' indices must be 0..{len(items) - 1} without gaps, "
                f"got {[k for k, _ in items][:10]!r}"
            )
        values = [v for _, v in items]
    elif isinstance(raw, (list, tuple)):
        values = list(raw)
    else:
        raise PastisFormatError(
            f"{where}: 'dates-S2' must be a mapping {{\"0\": YYYYMMDD, ...}} (or its JSON "
            f"string), got {type(raw).__name__}"
        )
    if not values:
        raise PastisFormatError(f"{where}: 'dates-S2' is empty; expected at least one date")
    out = []
    for i, v in enumerate(values):
        d = parse_date(v, f"{where}: 'dates-S2'[{i}]")
        out.append(d.year * 10000 + d.month * 100 + d.day)
    return tuple(out)


def _load_json(path: Path, what: str) -> Any:
    """The parsed JSON of ``path``; ``FileNotFoundError`` when it is missing, ``PastisFormatError`` naming the
    file when it is empty, not UTF-8 text or not JSON."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: expected the file {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as exc:
        empty = " (the file is empty)" if exc.doc.strip() == "" else ""
        raise PastisFormatError(
            f"{path}: not valid JSON{empty} ({exc.msg}, line {exc.lineno}); expected the {what}"
        ) from None
    except UnicodeDecodeError as exc:
        raise PastisFormatError(
            f"{path}: not UTF-8 text (byte {exc.start}); expected the {what} as JSON"
        ) from None


def read_npy(path: Path, expected: str) -> np.ndarray:
    """Memory-map the ``.npy`` array of ``path`` (``allow_pickle=False``: a file can never run code).

    Raises ``FileNotFoundError`` when the file is missing, and ``PastisFormatError`` naming the file and
    ``expected`` (what it should hold) when it is empty, truncated, not a ``.npy`` array or holds objects.
    """
    advice = "re-download it, or run utae.pastis.validate.validate(root) to list every problem of the dataset"
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing; expected {expected}") from None
    except (ValueError, EOFError, OSError) as exc:
        # EOFError: an empty file; ValueError: a truncated header or data ("mmap length is greater than file
        # size"), a pickle, an object array or text; OSError: unreadable.
        raise PastisFormatError(
            f"{path} is truncated or not a .npy file ({type(exc).__name__}: {exc}): expected {expected}; {advice}"
        ) from None
    if not isinstance(arr, np.ndarray):  # a .npz archive under a .npy name
        if hasattr(arr, "close"):
            arr.close()
        raise PastisFormatError(f"{path} is a .npz archive, not a .npy array: expected {expected}; {advice}")
    return arr


def image_expected(n_dates: int | None = None) -> str:
    t = "T" if n_dates is None else f"T={n_dates}"
    return (f"a .npy array of shape ({t}, {N_BANDS}, H, W) holding integer or float reflectance "
            f"(bands {', '.join(BANDS)})")


TARGET_EXPECTED = f"a .npy array of shape (3, H, W) with integer class labels 0..{N_CLASSES - 1} in channel 0"


def metadata_records(root: Path, problems: list[str]) -> list[PatchRecord]:
    """Parse ``metadata.geojson``, appending one message per problem to ``problems``.

    Raises only when the file is missing or is not JSON at all (nothing else can be checked).
    """
    path = root / METADATA_FILE
    doc = _load_json(path, "PASTIS metadata")
    features = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(features, list):
        problems.append(f"{path}: expected a GeoJSON FeatureCollection with a 'features' list")
        return []
    records: list[PatchRecord] = []
    seen: dict[int, int] = {}
    for i, feat in enumerate(features):
        props = feat.get("properties") if isinstance(feat, dict) else None
        where = f"{path}: feature {i}"
        if not isinstance(props, dict):
            problems.append(f"{where}: expected a 'properties' object")
            continue
        pid, fold = props.get("ID_PATCH"), props.get("Fold")
        if not is_whole_number(pid):
            problems.append(f"{where}: 'ID_PATCH' must be an integer, got {pid!r}")
            continue
        pid = int(pid)
        where = f"{path}: patch {pid}"
        ok = True
        if pid in seen:
            problems.append(f"{where}: 'ID_PATCH' {pid} is listed twice (features {seen[pid]} and {i})")
            ok = False
        seen.setdefault(pid, i)
        if not is_whole_number(fold) or not 1 <= int(fold) <= 5:
            problems.append(f"{where}: 'Fold' must be an integer from 1 to 5, got {fold!r}")
            ok = False
        if "dates-S2" not in props:
            problems.append(f"{where}: missing the 'dates-S2' property")
            continue
        try:
            dates = _parse_dates_field(props["dates-S2"], where)
        except PastisFormatError as exc:
            problems.append(str(exc))
            continue
        if ok:
            records.append(PatchRecord(pid, int(fold), dates))
    if not features:
        problems.append(f"{path}: the FeatureCollection has no features; expected one per patch")
    return records


def read_metadata(root: str | Path) -> list[PatchRecord]:
    """Every patch listed in ``root/metadata.geojson``, in file order.

    Raises ``FileNotFoundError`` when the file is missing, ``PastisFormatError`` listing every
    bad field otherwise (non-integer ID, fold outside 1..5, bad or missing ``dates-S2``, ...).
    """
    problems: list[str] = []
    records = metadata_records(Path(root), problems)
    if problems:
        raise PastisFormatError(join_problems(problems))
    return records


def norm_stats(root: Path, problems: list[str]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    path = root / NORM_FILE
    doc = _load_json(path, "PASTIS normalisation statistics")
    out: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if not isinstance(doc, dict):
        problems.append(f"{path}: expected an object {{\"Fold_1\": {{\"mean\": [...], \"std\": [...]}}, ...}}")
        return out
    for fold in FOLDS:
        key = norm_key(fold)
        entry = doc.get(key)
        if not isinstance(entry, dict) or "mean" not in entry or "std" not in entry:
            problems.append(f"{path}: missing '{key}' with 'mean' and 'std' lists of {N_BANDS} floats")
            continue
        try:
            mean = np.asarray(entry["mean"], dtype=np.float64)
            std = np.asarray(entry["std"], dtype=np.float64)
        except (TypeError, ValueError):
            problems.append(f"{path}: '{key}' mean/std must be lists of {N_BANDS} numbers")
            continue
        bad = False
        for name, arr in (("mean", mean), ("std", std)):
            if arr.shape != (N_BANDS,):
                problems.append(f"{path}: '{key}.{name}' must hold {N_BANDS} values, got shape {arr.shape}")
                bad = True
            elif not np.all(np.isfinite(arr)):
                problems.append(f"{path}: '{key}.{name}' holds NaN or inf")
                bad = True
        if not bad and np.any(std <= 0):
            problems.append(f"{path}: '{key}.std' must be > 0 for every band, got {std.tolist()}")
            bad = True
        if not bad:
            out[fold] = (mean, std)
    return out


def read_norm(root: str | Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``{fold: (mean (10,), std (10,))}`` from ``root/NORM_S2_patch.json`` (float64 arrays)."""
    problems: list[str] = []
    stats = norm_stats(Path(root), problems)
    if problems:
        raise PastisFormatError(join_problems(problems))
    return stats


def fold_norm_stats(
    stats: Mapping[int, tuple[np.ndarray, np.ndarray]], folds: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The official combination of per-fold statistics: the plain average of the folds' mean
    vectors and of their std vectors. Returns float32 arrays ``(10,)``."""
    missing = [f for f in folds if f not in stats]
    if missing:
        raise PastisFormatError(f"{NORM_FILE}: no statistics for folds {missing}")
    mean = np.mean([stats[f][0] for f in folds], axis=0)
    std = np.mean([stats[f][1] for f in folds], axis=0)
    return mean.astype(np.float32), std.astype(np.float32)


def join_problems(problems: Sequence[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    head = f"{len(problems)} problems:\n  - "
    shown = list(problems[:20])
    tail = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return head + "\n  - ".join(shown) + tail


def check_folds(folds: Iterable[int] | int | None) -> tuple[int, ...]:
    if folds is None:
        return FOLDS
    if is_int(folds):
        folds = (int(folds),)
    try:
        out = tuple(folds)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"folds must be None or a sequence of ints from 1 to 5, got {folds!r}") from None
    bad = [f for f in out if not is_whole_number(f) or not 1 <= int(f) <= 5]
    if bad or not out:
        raise ValueError(f"folds must be ints from 1 to 5 (PASTIS has 5 folds), got {folds!r}")
    return tuple(sorted(set(int(f) for f in out)))


def check_stats_pair(norm_stats: Any) -> tuple[np.ndarray, np.ndarray]:
    try:
        mean, std = norm_stats
        mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        std = np.asarray(std, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(
            f"norm_stats must be a pair (mean, std) of {N_BANDS} numbers each, got {type(norm_stats).__name__}"
        ) from None
    if mean.shape != (N_BANDS,) or std.shape != (N_BANDS,):
        raise ValueError(
            f"norm_stats: mean and std must each hold {N_BANDS} values, got {mean.shape} and {std.shape}"
        )
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std))) or np.any(std <= 0):
        raise ValueError("norm_stats: mean must be finite and std finite and > 0 for every band")
    return mean, std


