"""The checks of a PASTIS folder: every selected patch's ``.npy`` headers against its metadata, read without
the data (a few hundred bytes a file; :func:`check_headers`, run when a dataset opens), and :func:`validate`,
which checks a whole dataset in one pass (headers, data, labels) and lists every problem it finds."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from utae.util.arrays import ArrayFileError, ArrayHeader, npy_header
from utae.pastis.classes import N_CLASSES
from utae.pastis.layout import METADATA_FILE, image_path, target_path
from utae.pastis.metadata import BANDS, N_BANDS, PastisFormatError, PatchRecord, TARGET_EXPECTED, image_expected, metadata_records, norm_stats, read_npy

__all__ = ["check_headers", "validate"]

# --------------------------------------------------------------------------------------------
# Headers: each patch's files against its metadata, without reading the data
# --------------------------------------------------------------------------------------------

_ADVICE = "re-download it, or run utae.pastis.validate.validate(root) to list every problem of the dataset"


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
        image = _header(ipath, image_expected(len(rec.dates)), problems)
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
        target = _header(tpath, TARGET_EXPECTED, problems)
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
# Whole-dataset validation
# --------------------------------------------------------------------------------------------


def _check_patch_files(root: Path, rec: PatchRecord, problems: list[str], first: dict[str, Any]) -> None:
    ipath, tpath = image_path(root, rec.patch_id), target_path(root, rec.patch_id)
    hw = None
    if not ipath.is_file():
        problems.append(f"patch {rec.patch_id} is listed in {METADATA_FILE} but its file {ipath} is missing")
    else:
        try:
            arr = read_npy(ipath, image_expected(len(rec.dates)))
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
        tgt = read_npy(tpath, TARGET_EXPECTED)
    except (PastisFormatError, FileNotFoundError) as exc:
        problems.append(str(exc))
        return
    if tgt.ndim not in (2, 3):
        problems.append(f"{tpath}: expected shape (3, H, W) with classes in channel 0, got {tgt.shape}")
        return
    sem = np.asarray(tgt[0] if tgt.ndim == 3 else tgt)
    if hw is not None and sem.shape != hw:
        problems.append(f"{tpath}: spatial shape {sem.shape} differs from the image's {hw}")
    problem = label_problem(sem, tpath)
    if problem:
        problems.append(problem)


def label_problem(sem: np.ndarray, tpath: Path) -> str | None:
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
        records = metadata_records(root, problems)
    except (FileNotFoundError, PastisFormatError) as exc:
        problems.append(str(exc))
        records = []
    try:
        norm_stats(root, problems)
    except (FileNotFoundError, PastisFormatError) as exc:
        problems.append(str(exc))
    first: dict[str, Any] = {}
    for rec in records:
        _check_patch_files(root, rec, problems, first)
    return problems
