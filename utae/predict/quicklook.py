"""Pictures of a prediction: the RGB composite of the input, and the map, the confidence and the stress over it.

:func:`rgb_composite` reads the B4, B3, B2 bands of up to 7 dates spread over the series, averaged down to at most
``max_side`` pixels a side (a full tile is never read at full resolution), takes the per-pixel median of the
valid values (fewer clouds than any one date) and stretches each channel from its 2nd to its 98th percentile.
:func:`write_quicklook` writes ``quicklook.png``, the class map in the PASTIS colours over that composite;
:func:`plot_map` and :func:`plot_values` draw the same on a matplotlib axis (the notebook's figures).
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from utae.util.atomic import atomic_write_bytes
from utae.pastis.classes import CLASS_COLORS, CLASS_NAMES, N_CLASSES
from utae.predict.dates import InputSeries
from utae.predict.geotiff import MAP_NODATA, RasterSeries, read_decimated

__all__ = ["QUICKLOOK_SIDE", "rgb_composite", "class_colours", "overlay", "write_quicklook", "plot_map",
           "plot_values", "read_output"]

#: The longest side of the quick-look pictures, in pixels.
QUICKLOOK_SIDE = 1024
_DATES = 7


def _shape(height: int, width: int, max_side: int) -> tuple[int, int]:
    scale = max(1.0, max(height, width) / max_side)
    return max(1, round(height / scale)), max(1, round(width / scale))


def rgb_composite(series: InputSeries, max_side: int = QUICKLOOK_SIDE) -> np.ndarray:
    """The stretched RGB composite of ``series`` (see the module docstring): ``(h, w, 3)`` float32 in [0, 1]."""
    with RasterSeries(series.files, len(series.dates), series.stack) as rasters:
        shape = _shape(rasters.height, rasters.width, max_side)
        n = len(series.dates)
        dates = sorted({int(round(i)) for i in np.linspace(0, n - 1, min(n, _DATES))})
        rgb = rasters.read_rgb(dates, shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels (nodata at every date)
        median = np.nanmedian(rgb, axis=0)  # (3, h, w)
        out = np.zeros(median.shape, dtype=np.float32)
        for c in range(3):
            band = median[c]
            if np.isfinite(band).any():
                low, high = np.nanpercentile(band, (2, 98))
                out[c] = np.clip((band - low) / max(high - low, 1e-6), 0.0, 1.0)
    out[~np.isfinite(median)] = 0.0
    return out.transpose(1, 2, 0)


def class_colours() -> np.ndarray:
    """``(256, 3)`` float32: the RGB of each class value in [0, 1] (black for values that are no class)."""
    table = np.zeros((256, 3), dtype=np.float32)
    for i, c in enumerate(CLASS_COLORS):
        table[i] = [int(c[k:k + 2], 16) / 255.0 for k in (1, 3, 5)]
    return table


def overlay(rgb: np.ndarray, classes: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """The class colours over ``rgb (h, w, 3)``: ``classes (h, w)`` uint8 (nodata shows the RGB alone)."""
    colours = class_colours()[classes]
    a = np.where(classes == MAP_NODATA, 0.0, alpha)[..., None]
    return (1.0 - a) * rgb + a * colours


def write_quicklook(series: InputSeries, map_path: Path, out: Path, max_side: int = QUICKLOOK_SIDE) -> Path:
    """Write ``out`` (PNG): the class map of ``map_path`` over the RGB composite of ``series``."""
    from matplotlib.image import imsave  # no pyplot: the caller's backend (a notebook's inline one) is left alone

    rgb = rgb_composite(series, max_side)
    classes = read_decimated(map_path, max_side)
    if classes.shape != rgb.shape[:2]:  # both are read down to the same shape; guard against rounding
        classes = classes[: rgb.shape[0], : rgb.shape[1]]
        rgb = rgb[: classes.shape[0], : classes.shape[1]]
    buffer = io.BytesIO()
    imsave(buffer, np.clip(overlay(rgb, classes), 0.0, 1.0), format="png")
    return atomic_write_bytes(out, buffer.getvalue())


def plot_map(ax: Any, rgb: np.ndarray, classes: np.ndarray, title: str = "Crop map", legend: bool = True) -> None:
    """The class map over ``rgb`` on ``ax``, with a legend of the classes it shows."""
    from matplotlib.patches import Patch

    ax.imshow(np.clip(overlay(rgb, classes), 0.0, 1.0), interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()
    if legend:
        shown = [c for c in range(N_CLASSES) if (classes == c).any()]
        ax.legend(handles=[Patch(color=CLASS_COLORS[c], label=CLASS_NAMES[c]) for c in shown], loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)


def plot_values(ax: Any, rgb: np.ndarray, values: np.ndarray, title: str, label: str, cmap: str = "magma",
                alpha: float = 0.75) -> None:
    """``values (h, w)`` in [0, 1] (NaN: nodata) over ``rgb`` on ``ax``, with a colour bar labelled ``label``."""
    ax.imshow(rgb, interpolation="nearest")
    shown = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha,
                      interpolation="nearest")
    ax.figure.colorbar(shown, ax=ax, fraction=0.046, pad=0.04, label=label)
    ax.set_title(title)
    ax.set_axis_off()


def read_output(path: str | Path, max_side: int = QUICKLOOK_SIDE) -> np.ndarray:
    """An output GeoTIFF's first band read down to at most ``max_side`` pixels a side (see
    :func:`utae.predict.geotiff.read_decimated`)."""
    return read_decimated(path, max_side)
