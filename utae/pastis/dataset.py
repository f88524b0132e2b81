"""PASTIS into PyTorch: :class:`PastisDataset` (one item per patch: image ``(T, 10, H, W)``, dates ``(T,)``,
mask ``(H, W)``) and :func:`pad_collate` (a batch padded on the time axis, with its ``pad_mask``).

Checks are placed where they cost nothing on the hot path: metadata, statistics, file existence and every
selected patch's ``.npy`` headers at open time (:func:`utae.pastis.validate.check_headers`), so that a patch that
disagrees with its metadata is refused before training starts; finiteness and label range at item time, on data
that has to be read and converted anyway. The files and their format: :mod:`utae.pastis.metadata`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from utae.util.checks import is_int
from utae.pastis.layout import METADATA_FILE, image_path, target_path
from utae.pastis.metadata import BANDS, N_BANDS, PastisFormatError, PatchRecord, REFERENCE_DATE, TARGET_EXPECTED, check_folds, check_stats_pair, image_expected, join_problems, read_npy, date_offsets, fold_norm_stats, parse_date, read_metadata, read_norm
from utae.pastis.validate import label_problem, check_headers

__all__ = ["PastisDataset", "pad_collate"]

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
        self.folds = check_folds(folds)
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
            raise FileNotFoundError(join_problems(missing))
        problems = check_headers(self.root, self.records)
        if problems:
            raise PastisFormatError(join_problems(problems))
        self.ids: list[int] = [r.patch_id for r in self.records]

        if norm_stats is not None:
            self.mean, self.std = check_stats_pair(norm_stats)
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
        raw = read_npy(ipath, image_expected(len(offsets)))
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
        tgt = read_npy(tpath, TARGET_EXPECTED)
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
        problem = label_problem(sem, tpath)
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


def _series_lengths(batch: Sequence[Mapping[str, Any]], images: Sequence[torch.Tensor]) -> list[int]:
    """Each item's ``T``, once every image is checked to be ``(T, C, H, W)`` with the first item's ``C, H, W``
    and every ``dates`` to be ``(T,)``."""
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
    return lengths


def _padded_images(images: Sequence[torch.Tensor], lengths: Sequence[int], pad_value: float) -> torch.Tensor:
    """The images ``(T_i, C, H, W)`` stacked into ``(B, Tmax, C, H, W)``, the frames after ``T_i`` holding
    ``pad_value``."""
    first = images[0]
    bsz, tmax, chw = len(images), max(lengths), tuple(first.shape[1:])
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
        return torch.from_numpy(buf)
    image = torch.full((bsz, tmax, *chw), float(pad_value), dtype=first.dtype, device=first.device)
    for i, (img, t) in enumerate(zip(images, lengths)):
        image[i, :t] = img
    return image


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
    lengths = _series_lengths(batch, images)
    bsz, tmax = len(batch), max(lengths)
    dates = torch.zeros((bsz, tmax), dtype=torch.int64)
    pad_mask = torch.ones((bsz, tmax), dtype=torch.bool)
    for i, (b, t) in enumerate(zip(batch, lengths)):
        dates[i, :t] = torch.as_tensor(b["dates"], dtype=torch.int64)
        pad_mask[i, :t] = False
    image = _padded_images(images, lengths, pad_value)
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


