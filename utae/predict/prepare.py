"""A window's series as the model sees it: nodata dates dropped, nodata pixels filled, normalised (numpy only).

For one window (:func:`window_series`):

* **nodata dates** (no valid pixel in the window) are dropped, frames and dates together, so that the model runs
  on the window's real dates only (pad-free, as the suite evaluates); a window with no valid date at all is
  skipped and its pixels are nodata;
* **nodata pixels of a kept date** take the same pixel's values at its nearest valid date in time (the earlier
  one on a tie): a gap in one acquisition is filled from the acquisitions around it, as a cloud-free series is
  usually gap-filled. A pixel with no valid date in the window gets the normalisation mean (0 once normalised);
  it is written as nodata, but its neighbours within the model's receptive field see that flat fill;
* the series is **normalised** exactly as :class:`utae.pastis.dataset.PastisDataset` does, ``(raw - mean) * (1 / std)`` in
  float32, so that a window of a raster and the same patch read from a PASTIS folder give the model the same
  numbers, bit for bit;
* a window smaller than the model's patch (a raster smaller than the patch) is padded by mirroring its edge
  pixels (``numpy.pad(mode="symmetric")``) to the patch size; the prediction is cropped back.
"""

from __future__ import annotations

import numpy as np

__all__ = ["fill_gaps", "normalise", "window_series"]


def fill_gaps(raw: np.ndarray, valid: np.ndarray, days: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """``raw (T, C, H, W)`` with each nodata pixel (``valid (T, H, W)`` False) replaced by its values at the nearest
    valid date (``days (T,)``, ascending; the earlier on a tie), and by ``mean (C,)`` where it has none; float32."""
    raw = raw.astype(np.float32, copy=True)
    if valid.all():
        return raw
    t = raw.shape[0]
    index = np.arange(t).reshape(t, 1, 1)
    prev = np.maximum.accumulate(np.where(valid, index, -1), axis=0)
    after = np.minimum.accumulate(np.where(valid, index, t)[::-1], axis=0)[::-1]
    day = days.astype(np.int64).reshape(t, 1, 1)
    gap_prev = np.where(prev >= 0, day - days[np.clip(prev, 0, t - 1)], np.iinfo(np.int64).max)
    gap_next = np.where(after < t, days[np.clip(after, 0, t - 1)] - day, np.iinfo(np.int64).max)
    source = np.clip(np.where(gap_prev <= gap_next, prev, after), 0, t - 1)
    filled = np.take_along_axis(raw, source[:, None], axis=0)
    none = ~valid.any(axis=0)
    if none.any():
        filled[:, :, none] = np.asarray(mean, dtype=np.float32)[None, :, None]
    return filled


def normalise(raw: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``(raw - mean) * (1 / std)`` per band in float32, as :class:`utae.pastis.dataset.PastisDataset` computes it:
    ``raw (T, C, H, W)``, ``mean`` and ``std`` ``(C,)`` float32."""
    mean4 = np.asarray(mean, dtype=np.float32).reshape(1, -1, 1, 1)
    inv4 = (1.0 / np.asarray(std, dtype=np.float32)).astype(np.float32).reshape(1, -1, 1, 1)
    image = np.empty(raw.shape, dtype=np.float32)
    np.subtract(raw, mean4, out=image, casting="unsafe")
    image *= inv4
    return image


def window_series(raw: np.ndarray, valid: np.ndarray, days: np.ndarray, mean: np.ndarray, std: np.ndarray,
                  size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The model's input of a window (see the module docstring), or None when it has no valid date.

    Args:
        raw: ``(T, C, h, w)`` reflectance of the window (``h, w <= size``); valid: ``(T, h, w)`` bool;
        days: ``(T,)`` int64 day offsets; mean, std: ``(C,)`` the training normalisation; size: the patch size.

    Returns:
        ``(image (T', C, size, size) float32, days (T',) int64, pixels (h, w) bool)``: the kept dates' normalised
        series, their offsets and the pixels with at least one valid date.
    """
    keep = valid.any(axis=(1, 2))
    if not keep.any():
        return None
    raw, valid, days = raw[keep], valid[keep], np.asarray(days, dtype=np.int64)[keep]
    image = normalise(fill_gaps(raw, valid, days, mean), mean, std)
    h, w = image.shape[2:]
    if (h, w) != (size, size):
        image = np.pad(image, ((0, 0), (0, 0), (0, size - h), (0, size - w)), mode="symmetric")
    return image, days, valid.any(axis=0)
