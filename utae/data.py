"""Reading PASTIS (the real on-disk layout) into PyTorch.

Layout under ``root`` (Zenodo record 5012942, or :func:`utae.synthetic.make_synthetic_pastis`)::

    metadata.geojson           FeatureCollection, one feature per patch; properties ID_PATCH (int),
                               Fold (1..5), dates-S2 ({"0": YYYYMMDD, ...}, or that mapping as a
                               JSON string), N_Parcel, Parcel_Cover, TILE (ignored here)
    NORM_S2_patch.json         {"Fold_k": {"mean": [10 floats], "std": [10 floats]}, k = 1..5}
    DATA_S2/S2_<ID>.npy        (T, 10, H, W) reflectance x 10,000 (int16 in PASTIS), T = len(dates-S2)
    ANNOTATIONS/TARGET_<ID>.npy (3, H, W); channel 0 holds the semantic class 0..19

Checks are placed where they cost nothing on the hot path: metadata, statistics, file existence and
every selected patch's ``.npy`` headers (shape and dtype, a few hundred bytes per file, read without the
data: see :func:`check_headers`) at open time, so that a patch that disagrees with its metadata is refused
before training starts; finiteness and label range at item time, on data that has to be read and converted
anyway. :func:`validate` checks a whole dataset in one pass and reports every
problem it finds. Every read of a data file raises :class:`PastisFormatError` naming the file and
what it should hold when it is empty, truncated, not JSON or ``.npy`` or holds the wrong thing;
``.npy`` files are read with ``allow_pickle=False``. The file names come from :mod:`utae.layout`.
"""

from __future__ import annotations

import datetime as _dt
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from utae.arrays import ArrayFileError, ArrayHeader, npy_header
from utae.checks import is_int, is_whole_number
from utae.classes import N_CLASSES
from utae.layout import DATA_DIR, METADATA_FILE, NORM_FILE, TARGET_DIR, image_path, norm_key, target_path

__all__ = [
    "BANDS",
    "N_BANDS",
    "FOLDS",
    "FOLD_ROTATIONS",
    "REFERENCE_DATE",
    "METADATA_FILE",
    "NORM_FILE",
    "DATA_DIR",
    "TARGET_DIR",
    "image_path",
    "target_path",
    "PastisFormatError",
    "PatchRecord",
    "PastisDataset",
    "pad_collate",
    "read_metadata",
    "read_norm",
    "fold_norm_stats",
    "parse_date",
    "date_offsets",
    "validate",
    "check_headers",
]

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
# Dates (the file names and paths come from utae.layout)
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


def _read_npy(path: Path, expected: str) -> np.ndarray:
    """Memory-map the ``.npy`` array of ``path`` (``allow_pickle=False``: a file can never run code).

    Raises ``FileNotFoundError`` when the file is missing, and ``PastisFormatError`` naming the file and
    ``expected`` (what it should hold) when it is empty, truncated, not a ``.npy`` array or holds objects.
    """
    advice = "re-download it, or run utae.data.validate(root) to list every problem of the dataset"
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


def _image_expected(n_dates: int | None = None) -> str:
    t = "T" if n_dates is None else f"T={n_dates}"
    return (f"a .npy array of shape ({t}, {N_BANDS}, H, W) holding integer or float reflectance "
            f"(bands {', '.join(BANDS)})")


_TARGET_EXPECTED = f"a .npy array of shape (3, H, W) with integer class labels 0..{N_CLASSES - 1} in channel 0"


def _metadata_records(root: Path, problems: list[str]) -> list[PatchRecord]:
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
    records = _metadata_records(Path(root), problems)
    if problems:
        raise PastisFormatError(_join(problems))
    return records


def _norm_stats(root: Path, problems: list[str]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
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
    stats = _norm_stats(Path(root), problems)
    if problems:
        raise PastisFormatError(_join(problems))
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


def _join(problems: Sequence[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    head = f"{len(problems)} problems:\n  - "
    shown = list(problems[:20])
    tail = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    return head + "\n  - ".join(shown) + tail


def _check_folds(folds: Iterable[int] | int | None) -> tuple[int, ...]:
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


def _check_stats_pair(norm_stats: Any) -> tuple[np.ndarray, np.ndarray]:
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


# --------------------------------------------------------------------------------------------
# Headers: each patch's files against its metadata, without reading the data
# --------------------------------------------------------------------------------------------

_ADVICE = "re-download it, or run utae.data.validate(root) to list every problem of the dataset"


def _header(path: Path, expected: str, problems: list[str]) -> ArrayHeader | None:
    """The ``.npy`` header of ``path`` (refused when truncated), or None after appending its problem."""
    try:
        return npy_header(path, expected=expected)
    except ArrayFileError as exc:
        problems.append(f"{exc}; {_ADVICE}")
    except OSError as exc:  # a folder under the file's name, no permission, ...
        problems.append(f"{path} cannot be read ({exc.strerror or exc}); expected {expected}")
    return None


def _size_problem(ipath: Path, hw: tuple[int, ...], first: dict[str, Any]) -> str | None:
    """The size rule of patches, or None: square, and of the size of the first patch seen (``first`` keeps it)."""
    if hw[0] != hw[1]:
        return f"{ipath}: expected a square patch (H = W, 128 x 128 in PASTIS), got H x W = {hw[0]} x {hw[1]}"
    if "size" not in first:
        first.update(size=hw, name=ipath.name)
    elif hw != first["size"]:
        size = first["size"]
        return (f"{ipath}: expected every patch of the size of {first['name']}, {size[0]} x {size[1]} "
                f"(batches stack them), got {hw[0]} x {hw[1]}")
    return None


def check_headers(root: str | Path, records: Iterable[PatchRecord]) -> list[str]:
    """Check each patch's ``.npy`` headers against its metadata, reading a few hundred bytes per file and no
    array data; return one line per problem (empty when all agree).

    For each record: the image ``DATA_S2/S2_<ID>.npy`` is a readable, untruncated ``.npy`` of shape
    ``(T, 10, H, W)`` with ``T`` its number of ``dates-S2``, square (``H = W``, 128 in PASTIS), of the same size
    as the first patch's (items are stacked into batches), holding integers or floats; the target
    ``ANNOTATIONS/TARGET_<ID>.npy`` is a readable ``.npy`` of shape ``(3, H, W)`` (or ``(H, W)``) of the image's
    size holding integer or float labels. Missing files are reported by the caller.
    """
    root = Path(root)
    problems: list[str] = []
    first: dict[str, Any] = {}
    for rec in records:
        ipath, tpath = image_path(root, rec.patch_id), target_path(root, rec.patch_id)
        hw = None
        image = _header(ipath, _image_expected(len(rec.dates)), problems)
        if image is not None:
            shape = image.shape
            if len(shape) != 4 or shape[1] != N_BANDS:
                problems.append(f"{ipath}: expected shape (T, {N_BANDS}, H, W) (bands {', '.join(BANDS)}), "
                                f"got {shape}")
            else:
                hw = shape[2:]
                if shape[0] != len(rec.dates):
                    problems.append(f"{ipath}: holds T={shape[0]} dates but {METADATA_FILE} lists {len(rec.dates)} "
                                    f"dates-S2 entries for patch {rec.patch_id}; they must be equal")
                problem = _size_problem(ipath, hw, first)
                if problem:
                    problems.append(problem)
            if image.dtype.kind not in "iuf":
                problems.append(f"{ipath}: expected integer or float reflectance (int16 in PASTIS), "
                                f"got dtype {image.dtype}")
        target = _header(tpath, _TARGET_EXPECTED, problems)
        if target is not None:
            tshape = target.shape
            if len(tshape) not in (2, 3) or (len(tshape) == 3 and tshape[0] < 1):
                problems.append(f"{tpath}: expected shape (3, H, W) with classes in channel 0, got {tshape}")
            elif hw is not None and tshape[-2:] != hw:
                problems.append(f"{tpath}: spatial shape {tshape[-2:]} differs from the image's {hw} ({ipath.name})")
            if target.dtype.kind not in "iuf":
                problems.append(f"{tpath}: expected integer class labels, got dtype {target.dtype}")
    return problems


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


class PastisDataset(Dataset):
    """PASTIS semantic segmentation patches, read with memory mapping.

    Parameters
    ----------
    root: the dataset folder (see the module docstring for its layout).
    folds: the folds to load (ints 1 to 5); ``None`` loads all five.
    norm: normalise each band as ``(raw - mean[c]) / std[c]``; ``False`` returns raw
        reflectance x 10,000 as float32.
    target: only ``"semantic"`` is supported.
    reference_date: day 0 of the ``"dates"`` offsets (``"YYYY-MM-DD"``, ``YYYYMMDD`` or a date).
    mono_date: ``None`` for the whole series; an int to keep that date index (negative
        indices count from the end); a ``"YYYY-MM-DD"`` string to keep, per patch, the
        acquisition closest to that day (the earlier one on a tie). Items then have ``T = 1``.
    cache: keep decoded items in memory after their first read. Cached tensors are shared
        between calls: do not modify an item in place.
    norm_stats: explicit ``(mean, std)``, each of 10 values, used instead of the average of the
        selected folds' ``NORM_S2_patch.json`` statistics (e.g. the training folds' statistics
        for the validation and test sets).

    Attributes: ``root`` (Path), ``folds`` (tuple of ints), ``ids`` (patch ids in item order),
    ``records`` (:class:`PatchRecord` per item), ``mean`` and ``std`` (float32 ``(10,)``, the
    statistics used, also when ``norm=False``), ``reference_date`` (``datetime.date``).

    An item is a dict: ``"image"`` float32 ``(T, 10, H, W)``, ``"dates"`` int64 ``(T,)`` days since
    ``reference_date``, ``"mask"`` int64 ``(H, W)`` classes 0..19, ``"patch_id"`` int.

    Opening checks every selected patch's files (:func:`check_headers`: their ``.npy`` headers against the
    metadata, no array data read) and raises ``FileNotFoundError`` or :class:`PastisFormatError`, one line per
    problem naming the file and what was expected; values (finiteness, label range) are checked as items are read.
    """

    def __init__(
        self,
        root: str | Path,
        folds: Iterable[int] | int | None = None,
        norm: bool = True,
        target: str = "semantic",
        reference_date: Any = REFERENCE_DATE,
        mono_date: int | str | _dt.date | None = None,
        cache: bool = False,
        norm_stats: tuple[Any, Any] | None = None,
    ) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"PASTIS root not found: {self.root} is not a directory")
        if target != "semantic":
            raise ValueError(f"target must be 'semantic' (the only supported task), got {target!r}")
        self.target = target
        self.folds = _check_folds(folds)
        self.norm = bool(norm)
        self.reference_date = parse_date(reference_date, "reference_date")
        self.cache = bool(cache)

        records = read_metadata(self.root)
        self.records: list[PatchRecord] = [r for r in records if r.fold in self.folds]
        if not self.records:
            raise ValueError(
                f"{self.root / METADATA_FILE}: no patch in folds {list(self.folds)} "
                f"(the metadata lists {len(records)} patches in folds "
                f"{sorted({r.fold for r in records})}); the selection is empty"
            )
        missing = []
        for r in self.records:
            for p in (image_path(self.root, r.patch_id), target_path(self.root, r.patch_id)):
                if not p.is_file():
                    missing.append(f"patch {r.patch_id} is listed in {METADATA_FILE} but its file {p} is missing")
        if missing:
            raise FileNotFoundError(_join(missing))
        problems = check_headers(self.root, self.records)
        if problems:
            raise PastisFormatError(_join(problems))
        self.ids: list[int] = [r.patch_id for r in self.records]

        if norm_stats is not None:
            self.mean, self.std = _check_stats_pair(norm_stats)
        else:
            self.mean, self.std = fold_norm_stats(read_norm(self.root), self.folds)
        # Broadcastable (1, C, 1, 1) copies for the hot path.
        self._mean4 = self.mean.reshape(1, N_BANDS, 1, 1)
        self._inv_std4 = (1.0 / self.std).astype(np.float32).reshape(1, N_BANDS, 1, 1)

        self._offsets = [date_offsets(r.dates, self.reference_date) for r in self.records]
        self.mono_date = mono_date
        self._mono_index = [self._resolve_mono(i, mono_date) for i in range(len(self.records))]
        self._cache: dict[int, dict[str, Any]] = {}

    # -- mono_date ---------------------------------------------------------------------------
    def _resolve_mono(self, i: int, mono_date: Any) -> int | None:
        if mono_date is None:
            return None
        t = len(self._offsets[i])
        if is_int(mono_date):
            idx = int(mono_date)
            if not -t <= idx < t:
                raise ValueError(
                    f"mono_date={idx} is out of range for patch {self.records[i].patch_id}, "
                    f"which has {t} dates (valid indices {-t}..{t - 1})"
                )
            return idx % t
        if isinstance(mono_date, (str, _dt.date)):
            target_day = (parse_date(mono_date, "mono_date") - self.reference_date).days
            # argmin returns the first minimum: the earlier date on a tie.
            return int(np.argmin(np.abs(self._offsets[i] - target_day)))
        raise ValueError(
            f"mono_date must be None, an int index or a 'YYYY-MM-DD' string, got {mono_date!r}"
        )

    # -- items -------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def dates(self, index: int) -> np.ndarray:
        """Day offsets ``(T,)`` of item ``index`` (the whole series, ignoring ``mono_date``)."""
        return self._offsets[index].copy()

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} patches")
        index = index % len(self)
        if self.cache and index in self._cache:
            return dict(self._cache[index])
        item = self._load(index)
        if self.cache:
            self._cache[index] = item
            return dict(item)
        return item

    def _load(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        offsets = self._offsets[index]
        ipath = image_path(self.root, rec.patch_id)
        raw = _read_npy(ipath, _image_expected(len(offsets)))
        if raw.ndim != 4 or raw.shape[1] != N_BANDS:
            raise PastisFormatError(
                f"{ipath}: expected shape (T, {N_BANDS}, H, W) (bands {', '.join(BANDS)}), got {raw.shape}"
            )
        if raw.shape[0] != len(offsets):
            raise PastisFormatError(
                f"{ipath}: holds T={raw.shape[0]} dates but {METADATA_FILE} lists "
                f"{len(offsets)} dates-S2 entries for patch {rec.patch_id}; they must be equal"
            )
        if not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
            raise PastisFormatError(
                f"{ipath}: expected integer or float reflectance (int16 in PASTIS), got dtype {raw.dtype}"
            )
        mono = self._mono_index[index]
        if mono is not None:
            raw = raw[mono : mono + 1]
            offsets = offsets[mono : mono + 1]
        # One pass reads the (selected) frames from the page cache and converts them. Arrays are
        # allocated by numpy, which backs large ones with huge pages: much faster than fresh
        # torch allocations, which page-fault on every 4 KiB.
        image = np.empty(raw.shape, dtype=np.float32)
        if self.norm:
            np.subtract(raw, self._mean4, out=image, casting="unsafe")
        else:
            np.copyto(image, raw, casting="unsafe")
        if np.issubdtype(raw.dtype, np.floating) and not np.isfinite(image).all():
            raise PastisFormatError(f"{ipath}: holds NaN or inf values; expected finite reflectance")
        if self.norm:
            image *= self._inv_std4

        tpath = target_path(self.root, rec.patch_id)
        tgt = _read_npy(tpath, _TARGET_EXPECTED)
        if tgt.ndim == 3:
            sem = tgt[0]
        elif tgt.ndim == 2:
            sem = tgt
        else:
            raise PastisFormatError(f"{tpath}: expected shape (3, H, W) with classes in channel 0, got {tgt.shape}")
        if sem.shape != image.shape[2:]:
            raise PastisFormatError(
                f"{tpath}: spatial shape {sem.shape} differs from the image's {image.shape[2:]} ({ipath.name})"
            )
        sem = np.asarray(sem)
        problem = _label_problem(sem, tpath)
        if problem:
            raise PastisFormatError(problem)
        mask = sem.astype(np.int64)
        return {
            "image": torch.from_numpy(image),
            "dates": torch.from_numpy(np.array(offsets, dtype=np.int64)),
            "mask": torch.from_numpy(mask),
            "patch_id": rec.patch_id,
        }

    def __repr__(self) -> str:
        return (
            f"PastisDataset(root={str(self.root)!r}, folds={self.folds}, n={len(self)}, norm={self.norm}, "
            f"mono_date={self.mono_date!r}, cache={self.cache})"
        )


# --------------------------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------------------------


_NUMPY_FLOATS = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def pad_collate(batch: Sequence[Mapping[str, Any]], pad_value: float = 0.0) -> dict[str, torch.Tensor]:
    """Stack items of different lengths ``T`` by padding the time axis to the longest one.

    Returns ``"image"`` ``(B, Tmax, C, H, W)`` (padded frames hold ``pad_value``), ``"dates"``
    ``(B, Tmax)`` int64 (0 on padding), ``"pad_mask"`` ``(B, Tmax)`` bool (True on padding),
    ``"mask"`` ``(B, H, W)`` and ``"patch_id"`` ``(B,)`` int64.
    """
    if len(batch) == 0:
        raise ValueError("pad_collate: the batch is empty; expected at least one item")
    for key in ("image", "dates", "mask", "patch_id"):
        if key not in batch[0]:
            raise ValueError(f"pad_collate: items must have an {key!r} key, got keys {sorted(batch[0])}")
    images = [torch.as_tensor(b["image"]) for b in batch]
    first = images[0]
    if first.ndim != 4:
        raise ValueError(f"pad_collate: 'image' must be (T, C, H, W), got shape {tuple(first.shape)}")
    chw = tuple(first.shape[1:])
    lengths = []
    for i, (img, b) in enumerate(zip(images, batch)):
        if img.ndim != 4 or tuple(img.shape[1:]) != chw:
            raise ValueError(
                f"pad_collate: item {i} 'image' has shape {tuple(img.shape)}; every item must be "
                f"(T, {', '.join(map(str, chw))})"
            )
        if torch.as_tensor(b["dates"]).shape != (img.shape[0],):
            raise ValueError(
                f"pad_collate: item {i} 'dates' has shape {tuple(torch.as_tensor(b['dates']).shape)}, "
                f"expected ({img.shape[0]},) to match its image"
            )
        lengths.append(img.shape[0])
    bsz, tmax = len(batch), max(lengths)
    dates = torch.zeros((bsz, tmax), dtype=torch.int64)
    pad_mask = torch.ones((bsz, tmax), dtype=torch.bool)
    for i, (b, t) in enumerate(zip(batch, lengths)):
        dates[i, :t] = torch.as_tensor(b["dates"], dtype=torch.int64)
        pad_mask[i, :t] = False
    np_dtype = _NUMPY_FLOATS.get(first.dtype)
    if np_dtype is not None and all(
        img.device.type == "cpu" and img.dtype == first.dtype and not img.requires_grad for img in images
    ):
        # numpy allocates large buffers on huge pages (see PastisDataset._load); each element is
        # written once: the frames are copied and only the padded tail is filled.
        buf = np.empty((bsz, tmax, *chw), dtype=np_dtype)
        for i, (img, t) in enumerate(zip(images, lengths)):
            buf[i, :t] = img.numpy()
            buf[i, t:] = pad_value
        image = torch.from_numpy(buf)
    else:
        image = torch.full((bsz, tmax, *chw), float(pad_value), dtype=first.dtype, device=first.device)
        for i, (img, t) in enumerate(zip(images, lengths)):
            image[i, :t] = img
    masks = [torch.as_tensor(b["mask"]) for b in batch]
    if any(m.shape != masks[0].shape for m in masks):
        raise ValueError(f"pad_collate: 'mask' shapes differ: {[tuple(m.shape) for m in masks]}")
    return {
        "image": image,
        "dates": dates,
        "pad_mask": pad_mask,
        "mask": torch.stack(masks),
        "patch_id": torch.as_tensor([int(b["patch_id"]) for b in batch], dtype=torch.int64),
    }


# --------------------------------------------------------------------------------------------
# Whole-dataset validation
# --------------------------------------------------------------------------------------------


def _check_patch_files(root: Path, rec: PatchRecord, problems: list[str], first: dict[str, Any]) -> None:
    ipath, tpath = image_path(root, rec.patch_id), target_path(root, rec.patch_id)
    hw = None
    if not ipath.is_file():
        problems.append(f"patch {rec.patch_id} is listed in {METADATA_FILE} but its file {ipath} is missing")
    else:
        try:
            arr = _read_npy(ipath, _image_expected(len(rec.dates)))
        except (PastisFormatError, FileNotFoundError) as exc:
            problems.append(str(exc))
            arr = None
        if arr is not None:
            if arr.ndim != 4:
                problems.append(f"{ipath}: expected shape (T, {N_BANDS}, H, W), got {arr.shape}")
            else:
                hw = arr.shape[2:]
                size_problem = _size_problem(ipath, hw, first)
                if size_problem:
                    problems.append(size_problem)
                if arr.shape[1] != N_BANDS:
                    problems.append(f"{ipath}: expected {N_BANDS} bands in axis 1, got {arr.shape[1]} (shape {arr.shape})")
                if arr.shape[0] != len(rec.dates):
                    problems.append(
                        f"{ipath}: holds T={arr.shape[0]} dates but {METADATA_FILE} lists "
                        f"{len(rec.dates)} dates-S2 entries for patch {rec.patch_id}"
                    )
            if np.issubdtype(arr.dtype, np.floating):
                # frame by frame, so that memory stays bounded on large patches
                if not all(np.isfinite(arr[t]).all() for t in range(arr.shape[0])):
                    problems.append(f"{ipath}: holds NaN or inf values; expected finite reflectance")
            elif not np.issubdtype(arr.dtype, np.integer):
                problems.append(
                    f"{ipath}: expected integer or float reflectance (int16 in PASTIS), got dtype {arr.dtype}"
                )
    if not tpath.is_file():
        problems.append(f"patch {rec.patch_id} is listed in {METADATA_FILE} but its file {tpath} is missing")
        return
    try:
        tgt = _read_npy(tpath, _TARGET_EXPECTED)
    except (PastisFormatError, FileNotFoundError) as exc:
        problems.append(str(exc))
        return
    if tgt.ndim not in (2, 3):
        problems.append(f"{tpath}: expected shape (3, H, W) with classes in channel 0, got {tgt.shape}")
        return
    sem = np.asarray(tgt[0] if tgt.ndim == 3 else tgt)
    if hw is not None and sem.shape != hw:
        problems.append(f"{tpath}: spatial shape {sem.shape} differs from the image's {hw}")
    problem = _label_problem(sem, tpath)
    if problem:
        problems.append(problem)


def _label_problem(sem: np.ndarray, tpath: Path) -> str | None:
    """What is wrong with the semantic labels ``sem`` (channel 0 of ``tpath``), or None: the one rule of the
    loader and :func:`validate` (integer, or float holding whole numbers, from 0 to 19)."""
    if sem.dtype.kind not in "iuf":
        return f"{tpath}: expected integer class labels, got dtype {sem.dtype}"
    whole = sem.dtype.kind != "f" or bool(np.all(np.isfinite(sem)) and np.array_equal(sem, np.round(sem)))
    if not sem.size or (whole and 0 <= sem.min() and sem.max() < N_CLASSES):
        return None
    return (f"{tpath}: semantic labels (channel 0) must be integers from 0 to {N_CLASSES - 1}, "
            f"found values in [{sem.min()}, {sem.max()}]")


def validate(root: str | Path) -> list[str]:
    """Check a whole PASTIS folder in one pass; return every problem found (empty when fine).

    Checks: the root, ``metadata.geojson`` and ``NORM_S2_patch.json`` exist and parse; every
    feature has an integer ``ID_PATCH`` (no duplicates), a ``Fold`` from 1 to 5 and a valid
    ``dates-S2``; the statistics hold 10 finite means and 10 positive stds per fold; each patch
    has both ``.npy`` files, ``T`` equal to its number of dates, 10 bands, a square size shared by
    every patch, finite values, a target of the image's size with labels 0 to 19.
    """
    root = Path(root)
    if not root.is_dir():
        return [f"PASTIS root not found: {root} is not a directory"]
    problems: list[str] = []
    try:
        records = _metadata_records(root, problems)
    except (FileNotFoundError, PastisFormatError) as exc:
        problems.append(str(exc))
        records = []
    try:
        _norm_stats(root, problems)
    except (FileNotFoundError, PastisFormatError) as exc:
        problems.append(str(exc))
    first: dict[str, Any] = {}
    for rec in records:
        _check_patch_files(root, rec, problems, first)
    return problems
