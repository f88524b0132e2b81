"""The figures of one run's report, and what every figure shares (colours, labels, the resolution): one function
per figure, each returning a matplotlib ``Figure``. The study's figures are :mod:`utae.report.study_figures`.

The functions build figures with the object-oriented API (``matplotlib.figure.Figure``), not ``pyplot``: nothing
is registered globally, nothing needs closing, and a figure that is the last expression of a notebook cell is shown
once. Figures are small (a modest ``dpi``, flat colours) so that HTML reports with inlined PNGs stay light.

Inputs: ``history.csv`` as a DataFrame, per-class IoU lists, the ``(20, 20)`` confusion matrix, ``predictions.npz``
arrays (``rgb`` ``(N, H, W, 3)``, ``target`` and ``pred`` ``(N, H, W)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap, to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from utae.util.checks import require_columns

__all__ = ["DEFAULT_DPI", "class_colors_rgb", "training_curves", "per_class_iou", "confusion_heatmap", "patch_grid", "test_noise_curve"]


DEFAULT_DPI: float = 72.0
"""Resolution of every figure (pixels per inch); 72 keeps inlined PNGs to tens of kB."""

LINE_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
_METRIC_LABELS = {
    "test_miou": "test mIoU",
    "test_oa": "test OA",
    "val_miou": "val mIoU",
    "train_oa": "train OA",
    "miou": "mIoU",
    "oa": "OA",
    "sec_per_epoch": "seconds per epoch",
    "train_samples_per_s": "train samples/s",
    "eval_samples_per_s": "eval samples/s",
}


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def class_style(class_names: Sequence[str] | None, colors: Sequence[Any] | None) -> tuple[list[str], np.ndarray]:
    """Class names and an ``(n, 3)`` float RGB array, defaulting to :mod:`utae.pastis.classes`."""
    if class_names is None or colors is None:
        from utae.pastis import classes

        class_names = list(classes.CLASS_NAMES) if class_names is None else class_names
        colors = list(classes.CLASS_COLORS) if colors is None else colors
    rgb = class_colors_rgb(colors)
    if len(class_names) != len(rgb):
        raise ValueError(f"class_names has {len(class_names)} entries but colors has {len(rgb)}")
    return list(class_names), rgb


def class_names_or_default(class_names: Sequence[str] | None) -> list[str]:
    """Class names, defaulting to :data:`utae.pastis.classes.CLASS_NAMES`."""
    if class_names is None:
        from utae.pastis import classes

        return list(classes.CLASS_NAMES)
    return list(class_names)


def class_colors_rgb(colors: Sequence[Any]) -> np.ndarray:
    """Colours (hex strings, names, or RGB tuples in 0..1 or 0..255) as an ``(n, 3)`` float array in [0, 1]."""
    out = []
    for c in colors:
        if isinstance(c, str):
            out.append(to_rgb(c))
            continue
        arr = np.asarray(c, dtype=float)[:3]
        out.append(tuple(arr / 255.0) if arr.max() > 1.0 else tuple(arr))
    return np.asarray(out, dtype=float)


def metric_label(metric: str) -> str:
    return _METRIC_LABELS.get(metric, metric.replace("_", " "))


def level_text(value: float) -> str:
    return f"{float(value):g}"


def require_rows(df: pd.DataFrame, what: str) -> None:
    if len(df) == 0:
        raise ValueError(f"{what}: the DataFrame is empty (no finished runs?)")


def platform_colors(platforms: Sequence[str]) -> dict[str, str]:
    return {p: LINE_COLORS[i % len(LINE_COLORS)] for i, p in enumerate(platforms)}


def annotate_heatmap(ax: Any, values: np.ndarray, fmt: str = "{:.2f}", vmin: float = 0.0, vmax: float = 1.0) -> None:
    """Write each finite cell value on an ``imshow`` heatmap, in black or white for contrast."""
    mid = vmin + 0.6 * (vmax - vmin)
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, color="white" if v < mid else "black")


# --------------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------------


def training_curves(history: pd.DataFrame, best_epoch: int | None = None, dpi: float = DEFAULT_DPI) -> Figure:
    """Loss, overall accuracy and mIoU per epoch, for train and validation (three panels).

    Args:
        history: ``history.csv`` as a DataFrame, columns ``epoch``, ``train_loss``, ``val_loss``,
            ``train_oa``, ``val_oa``, ``train_miou``, ``val_miou``.
        best_epoch: marked with a dotted vertical line when given (the epoch kept for testing).
    """
    require_columns(history, ["epoch", "train_loss", "val_loss", "train_oa", "val_oa", "train_miou", "val_miou"],
                     "training_curves(history)")
    require_rows(history, "training_curves(history)")
    fig = Figure(figsize=(9.0, 2.8), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, 3)
    epochs = history["epoch"].to_numpy()
    marker = "o" if len(history) <= 30 else None
    for ax, key, title in zip(axes, ("loss", "oa", "miou"), ("loss", "overall accuracy", "mIoU")):
        ax.plot(epochs, history[f"train_{key}"], marker=marker, ms=3, color=LINE_COLORS[0], label="train")
        ax.plot(epochs, history[f"val_{key}"], marker=marker, ms=3, color=LINE_COLORS[1], label="val")
        if best_epoch is not None:
            ax.axvline(best_epoch, color="0.4", ls=":", lw=1, label=f"best epoch ({best_epoch})")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if key != "loss":
            ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    return fig


def per_class_iou(
    iou: Sequence[float],
    class_names: Sequence[str] | None = None,
    colors: Sequence[Any] | None = None,
    ignore_index: int | None = 19,
    title: str = "per-class IoU (test)",
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """Bar chart of the IoU of each class, in the class colours; classes without a value say "n/a".

    Args:
        iou: one IoU per class (length ``n_classes``), NaN where undefined.
        ignore_index: a class left out of the chart (the void label), or None.
    """
    names, rgb = class_style(class_names, colors)
    values = np.asarray(iou, dtype=float)
    if values.shape != (len(names),):
        raise ValueError(f"per_class_iou: iou must hold {len(names)} values (one a class), got shape {values.shape}")
    keep = [i for i in range(len(names)) if i != ignore_index]
    fig = Figure(figsize=(9.0, 3.4), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(keep))
    shown = np.nan_to_num(values[keep], nan=0.0)
    ax.bar(x, shown, color=rgb[keep], edgecolor="0.3", linewidth=0.5)
    for xi, v in zip(x, values[keep]):
        ax.text(xi, (0.0 if np.isnan(v) else v) + 0.01, "n/a" if np.isnan(v) else f"{v:.2f}",
                ha="center", va="bottom", fontsize=7, rotation=90)
    miou = np.nanmean(values[keep]) if np.isfinite(values[keep]).any() else np.nan
    if np.isfinite(miou):
        ax.axhline(miou, color="0.3", ls="--", lw=1, label=f"mIoU {miou:.3f}")
        ax.legend(fontsize=8, loc="upper right")
    ax.set_xticks(x, [names[i] for i in keep], rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("IoU")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return fig


def confusion_heatmap(
    cm: np.ndarray,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = 19,
    annotate: bool = False,
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """The confusion matrix normalised per true class (each row sums to 1), as a heatmap.

    Args:
        cm: ``(n, n)`` counts, rows the true class and columns the predicted class.
        ignore_index: a class whose row and column are dropped (void), or None.
        annotate: write the fractions in the cells.

    Rows of classes absent from the target stay blank.
    """
    names = class_names_or_default(class_names)
    cm = np.asarray(cm, dtype=float)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] != len(names):
        raise ValueError(f"confusion_heatmap: cm must be ({len(names)}, {len(names)}), got {cm.shape}")
    keep = [i for i in range(len(names)) if i != ignore_index]
    sub = cm[np.ix_(keep, keep)]
    support = sub.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = np.where(support > 0, sub / np.where(support > 0, support, 1.0), np.nan)
    fig = Figure(figsize=(7.0, 6.0), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    cmap = ListedColormap(np.linspace([1.0, 1.0, 1.0], [0.03, 0.19, 0.42], 256)).with_extremes(bad="0.92")
    im = ax.imshow(np.ma.masked_invalid(norm), cmap=cmap, vmin=0.0, vmax=1.0, interpolation="nearest")
    if annotate:
        annotate_heatmap(ax, norm, fmt="{:.2f}")
    labels = [names[i] for i in keep]
    ax.set_xticks(range(len(keep)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(keep)), labels, fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title("confusion matrix (normalised per true class)", fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of the true class")
    return fig


def _stretch_rgb(rgb: np.ndarray) -> np.ndarray:
    """An ``(H, W, 3)`` image as floats in [0, 1]: uint8 as is, else a 2-98 percentile stretch."""
    arr = np.asarray(rgb)
    if arr.dtype == np.uint8:
        return arr.astype(float) / 255.0
    arr = arr.astype(float)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return np.zeros(arr.shape, dtype=float)
    lo, hi = np.percentile(finite, [2, 98])
    if hi <= lo:
        hi = lo + 1e-6
    return np.clip((np.nan_to_num(arr, nan=lo) - lo) / (hi - lo), 0.0, 1.0)


def patch_grid(
    rgb: np.ndarray,
    target: np.ndarray,
    pred: np.ndarray,
    patch_ids: Sequence[int] | None = None,
    max_patches: int = 4,
    class_names: Sequence[str] | None = None,
    colors: Sequence[Any] | None = None,
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """A grid of test patches: the RGB image (B4/B3/B2 at one date), the ground truth and the prediction.

    One row a patch; the maps use the PASTIS class colours and a legend lists the classes shown.

    Args:
        rgb: ``(N, H, W, 3)`` RGB (uint8, or reflectances / normalised values, stretched per patch).
        target, pred: ``(N, H, W)`` integer class maps.
        patch_ids: ``(N,)`` ids shown as row titles.
        max_patches: at most this many rows.
    """
    names, crgb = class_style(class_names, colors)
    rgb, target, pred = np.asarray(rgb), np.asarray(target), np.asarray(pred)
    if rgb.ndim != 4 or rgb.shape[-1] != 3:
        raise ValueError(f"patch_grid: rgb must be (N, H, W, 3), got {rgb.shape}")
    if target.shape != rgb.shape[:3] or pred.shape != rgb.shape[:3]:
        raise ValueError(f"patch_grid: target {target.shape} and pred {pred.shape} must be (N, H, W) = {rgb.shape[:3]}")
    n = min(len(rgb), max_patches)
    if n == 0:
        raise ValueError("patch_grid: no patches to show")
    cmap = ListedColormap(crgb)
    fig = Figure(figsize=(7.2, 2.2 * n + 0.6), dpi=dpi, layout="constrained")
    axes = np.atleast_2d(fig.subplots(n, 3, squeeze=False))
    for row in range(n):
        pid = f"patch {int(patch_ids[row])}" if patch_ids is not None else f"patch {row}"
        panels = ((_stretch_rgb(rgb[row]), None, f"{pid}: RGB"), (target[row], cmap, "ground truth"),
                  (pred[row], cmap, "prediction"))
        for ax, (img, cm, title) in zip(axes[row], panels):
            if cm is None:
                ax.imshow(img, interpolation="nearest")
            else:
                ax.imshow(img, cmap=cm, vmin=0, vmax=len(names) - 1, interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    present = sorted(set(np.unique(target[:n]).tolist()) | set(np.unique(pred[:n]).tolist()))
    handles = [Patch(facecolor=crgb[c], edgecolor="0.3", label=f"{c} {names[c]}") for c in present if 0 <= c < len(names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, max(1, len(handles))), fontsize=7, frameon=False)
    return fig


def test_noise_curve(
    test_noise: Sequence[Mapping[str, Any]] | pd.DataFrame,
    train_noise_std: float | None = None,
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """Test mIoU and OA against the std of the Gaussian noise added to the test images.

    Args:
        test_noise: ``metrics.json["test_noise"]``, records with ``std``, ``oa``, ``miou``.
        train_noise_std: the training noise level, marked with a vertical line when given.
    """
    df = pd.DataFrame(list(test_noise)) if not isinstance(test_noise, pd.DataFrame) else test_noise.copy()
    require_columns(df, ["std", "oa", "miou"], "test_noise_curve(test_noise)")
    require_rows(df, "test_noise_curve(test_noise)")
    df = df.sort_values("std")
    fig = Figure(figsize=(5.5, 3.0), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    ax.plot(df["std"], df["miou"], marker="o", color=LINE_COLORS[0], label="mIoU")
    ax.plot(df["std"], df["oa"], marker="s", color=LINE_COLORS[2], label="OA")
    if train_noise_std is not None:
        ax.axvline(train_noise_std, color="0.4", ls=":", lw=1, label=f"training noise {train_noise_std:g}")
    ax.set_xlabel("std of the test-time noise")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.set_title("test scores under test-time noise", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


