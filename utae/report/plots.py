"""The figures of the reports: one function per figure, each returning a matplotlib ``Figure``.

The functions build figures with the object-oriented API (``matplotlib.figure.Figure``), not
``pyplot``: nothing is registered globally, nothing needs closing, and a figure that is the last
expression of a notebook cell is shown once. Figures are small (a modest ``dpi``, flat colours) so
that HTML reports with inlined PNGs stay light.

Inputs are plain arrays and the pandas DataFrames of :mod:`utae.study.runs`:

- one run: ``history.csv`` as a DataFrame, per-class IoU lists, the ``(20, 20)`` confusion matrix,
  ``predictions.npz`` arrays (``rgb`` ``(N, H, W, 3)``, ``target`` and ``pred`` ``(N, H, W)``);
- the study: ``load_runs`` (one row a run), ``load_test_noise`` and ``load_per_class_iou`` (long), and
  the tables of :mod:`utae.study.platform_effect` (``paired_differences``, ``platform_effect``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import ListedColormap, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from utae.util.checks import require_columns

__all__ = [
    "DEFAULT_DPI",
    "class_colors_rgb",
    "training_curves",
    "per_class_iou",
    "confusion_heatmap",
    "patch_grid",
    "test_noise_curve",
    "metric_vs_noise",
    "noise_matrix",
    "per_class_heatmap",
    "timing_bars",
    "seed_spread",
    "validation_curves",
    "paired_differences",
    "corruption_curves",
    "corruption_gallery",
]

DEFAULT_DPI: float = 72.0
"""Resolution of every figure (pixels per inch); 72 keeps inlined PNGs to tens of kB."""

_LINE_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
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


def _classes(class_names: Sequence[str] | None, colors: Sequence[Any] | None) -> tuple[list[str], np.ndarray]:
    """Class names and an ``(n, 3)`` float RGB array, defaulting to :mod:`utae.pastis.classes`."""
    if class_names is None or colors is None:
        from utae.pastis import classes

        class_names = list(classes.CLASS_NAMES) if class_names is None else class_names
        colors = list(classes.CLASS_COLORS) if colors is None else colors
    rgb = class_colors_rgb(colors)
    if len(class_names) != len(rgb):
        raise ValueError(f"class_names has {len(class_names)} entries but colors has {len(rgb)}")
    return list(class_names), rgb


def _names(class_names: Sequence[str] | None) -> list[str]:
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


def _label(metric: str) -> str:
    return _METRIC_LABELS.get(metric, metric.replace("_", " "))


def _fmt_level(value: float) -> str:
    return f"{float(value):g}"


def _require_rows(df: pd.DataFrame, what: str) -> None:
    if len(df) == 0:
        raise ValueError(f"{what}: the DataFrame is empty (no finished runs?)")


def _platform_colors(platforms: Sequence[str]) -> dict[str, str]:
    return {p: _LINE_COLORS[i % len(_LINE_COLORS)] for i, p in enumerate(platforms)}


def _annotate_heatmap(ax: Any, values: np.ndarray, fmt: str = "{:.2f}", vmin: float = 0.0, vmax: float = 1.0) -> None:
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
    _require_rows(history, "training_curves(history)")
    fig = Figure(figsize=(9.0, 2.8), dpi=dpi, layout="constrained")
    axes = fig.subplots(1, 3)
    epochs = history["epoch"].to_numpy()
    marker = "o" if len(history) <= 30 else None
    for ax, key, title in zip(axes, ("loss", "oa", "miou"), ("loss", "overall accuracy", "mIoU")):
        ax.plot(epochs, history[f"train_{key}"], marker=marker, ms=3, color=_LINE_COLORS[0], label="train")
        ax.plot(epochs, history[f"val_{key}"], marker=marker, ms=3, color=_LINE_COLORS[1], label="val")
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
    names, rgb = _classes(class_names, colors)
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
    names = _names(class_names)
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
        _annotate_heatmap(ax, norm, fmt="{:.2f}")
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
    names, crgb = _classes(class_names, colors)
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
    _require_rows(df, "test_noise_curve(test_noise)")
    df = df.sort_values("std")
    fig = Figure(figsize=(5.5, 3.0), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    ax.plot(df["std"], df["miou"], marker="o", color=_LINE_COLORS[0], label="mIoU")
    ax.plot(df["std"], df["oa"], marker="s", color=_LINE_COLORS[2], label="OA")
    if train_noise_std is not None:
        ax.axvline(train_noise_std, color="0.4", ls=":", lw=1, label=f"training noise {train_noise_std:g}")
    ax.set_xlabel("std of the test-time noise")
    ax.set_ylabel("score")
    ax.set_ylim(0, 1)
    ax.set_title("test scores under test-time noise", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------------
# The study (many runs)
# --------------------------------------------------------------------------------------------------


def metric_vs_noise(
    runs: pd.DataFrame,
    metrics: Sequence[str] = ("test_miou", "test_oa"),
    x: str = "cfg_noise_std",
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """Scores against the training noise level: one line a platform (mean over seeds), a band of
    +-1 std over seeds, and each seed as a dot.

    Args:
        runs: ``utae.study.runs.load_runs()``: columns ``platform``, ``x`` and every metric.
        metrics: one panel each.
    """
    require_columns(runs, ["platform", x, *metrics], "metric_vs_noise(runs)")
    _require_rows(runs, "metric_vs_noise(runs)")
    platforms = sorted(runs["platform"].unique())
    pcolors = _platform_colors(platforms)
    fig = Figure(figsize=(4.2 * len(metrics), 3.2), dpi=dpi, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for ax, metric in zip(axes, metrics):
        for plat in platforms:
            sub = runs[runs["platform"] == plat]
            agg = sub.groupby(x)[metric].agg(["mean", "std", "count"]).reset_index().sort_values(x)
            color = pcolors[plat]
            ax.plot(agg[x], agg["mean"], marker="o", color=color, label=plat)
            band = agg["std"].fillna(0.0)
            ax.fill_between(agg[x], agg["mean"] - band, agg["mean"] + band, color=color, alpha=0.18, lw=0)
            ax.scatter(sub[x], sub[metric], s=10, color=color, alpha=0.6, zorder=3)
        ax.set_xlabel("training noise std")
        ax.set_ylabel(_label(metric))
        ax.set_title(f"{_label(metric)} (mean +- std over seeds)", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, title="platform", title_fontsize=7)
    return fig


def noise_matrix(
    test_noise: pd.DataFrame,
    metric: str = "miou",
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """Heatmap of the score for each (training noise, test noise) pair, mean over seeds, one panel a platform.

    Args:
        test_noise: ``utae.study.runs.load_test_noise()``: ``platform``, ``cfg_noise_std``,
            ``test_noise_std`` and ``metric``.
    """
    require_columns(test_noise, ["platform", "cfg_noise_std", "test_noise_std", metric], "noise_matrix(test_noise)")
    _require_rows(test_noise, "noise_matrix(test_noise)")
    platforms = sorted(test_noise["platform"].unique())
    first = test_noise.pivot_table(index="cfg_noise_std", columns="test_noise_std", values=metric, aggfunc="mean")
    w = max(3.6, 0.75 * first.shape[1] + 2.2)
    h = max(2.6, 0.45 * first.shape[0] + 1.6)
    fig = Figure(figsize=(w * len(platforms), h), dpi=dpi, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(platforms)))
    im = None
    for ax, plat in zip(axes, platforms):
        table = test_noise[test_noise["platform"] == plat].pivot_table(
            index="cfg_noise_std", columns="test_noise_std", values=metric, aggfunc="mean")
        values = table.to_numpy(dtype=float)
        im = ax.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
        _annotate_heatmap(ax, values)
        ax.set_xticks(range(table.shape[1]), [_fmt_level(v) for v in table.columns], fontsize=8)
        ax.set_yticks(range(table.shape[0]), [_fmt_level(v) for v in table.index], fontsize=8)
        ax.set_xlabel("test noise std")
        ax.set_ylabel("training noise std")
        ax.set_title(plat, fontsize=9)
    fig.suptitle(f"test {_label(metric)}: training noise x test noise (mean over seeds)", fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.9, label=_label(metric))
    return fig


def per_class_heatmap(
    per_class: pd.DataFrame,
    class_names: Sequence[str] | None = None,
    ignore_index: int | None = 19,
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """Heatmap of the clean-test IoU of each class (rows) for each training noise level (columns),
    mean over seeds, one panel a platform. Classes never defined stay blank.

    Args:
        per_class: ``utae.study.runs.load_per_class_iou()``: ``platform``, ``cfg_noise_std``,
            ``class_id``, ``iou``.
    """
    require_columns(per_class, ["platform", "cfg_noise_std", "class_id", "iou"], "per_class_heatmap(per_class)")
    _require_rows(per_class, "per_class_heatmap(per_class)")
    names = _names(class_names)
    keep = [i for i in range(len(names)) if i != ignore_index]
    platforms = sorted(per_class["platform"].unique())
    levels = sorted(per_class["cfg_noise_std"].unique())
    w = max(3.2, 0.6 * len(levels) + 2.6)
    fig = Figure(figsize=(w * len(platforms) + 1.0, 5.6), dpi=dpi, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(platforms)))
    im = None
    for k, (ax, plat) in enumerate(zip(axes, platforms)):
        table = (per_class[per_class["platform"] == plat]
                 .pivot_table(index="class_id", columns="cfg_noise_std", values="iou", aggfunc="mean", dropna=False)
                 .reindex(index=keep, columns=levels))
        values = table.to_numpy(dtype=float)
        im = ax.imshow(np.ma.masked_invalid(values), cmap="magma", vmin=0.0, vmax=1.0, aspect="auto",
                       interpolation="nearest")
        ax.set_xticks(range(len(levels)), [_fmt_level(v) for v in levels], fontsize=8)
        ax.set_yticks(range(len(keep)), [names[i] for i in keep] if k == 0 else [], fontsize=7)
        ax.set_xlabel("training noise std")
        ax.set_title(plat, fontsize=9)
    fig.suptitle("per-class IoU on the clean test set (mean over seeds)", fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.8, label="IoU")
    return fig


def timing_bars(
    runs: pd.DataFrame,
    metrics: Sequence[str] = ("sec_per_epoch", "train_samples_per_s", "eval_samples_per_s"),
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """Seconds per epoch and throughput per platform: bars of the mean over runs, with +-1 std.

    Args:
        runs: ``utae.study.runs.load_runs()`` with ``platform`` and the timing columns.
    """
    metrics = [m for m in metrics if m in runs.columns]
    require_columns(runs, ["platform"], "timing_bars(runs)")
    if not metrics:
        raise ValueError("timing_bars(runs): no timing column (sec_per_epoch, train_samples_per_s, ...) in runs")
    _require_rows(runs, "timing_bars(runs)")
    platforms = sorted(runs["platform"].unique())
    pcolors = _platform_colors(platforms)
    fig = Figure(figsize=(3.3 * len(metrics), 0.35 * len(platforms) + 2.2), dpi=dpi, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    for k, (ax, metric) in enumerate(zip(axes, metrics)):
        agg = runs.groupby("platform")[metric].agg(["mean", "std"]).reindex(platforms)
        y = np.arange(len(platforms))
        ax.barh(y, agg["mean"], xerr=agg["std"].fillna(0.0), color=[pcolors[p] for p in platforms], alpha=0.8,
                capsize=3)
        for yi, v in zip(y, agg["mean"]):
            if np.isfinite(v):
                ax.text(v, yi, f" {v:.3g}", va="center", fontsize=7)
        ax.set_yticks(y, platforms if k == 0 else [], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(_label(metric), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.margins(x=0.25)
    return fig


def seed_spread(
    runs: pd.DataFrame,
    metric: str = "test_miou",
    x: str = "cfg_noise_std",
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """Every run as a dot: the metric per training noise level, platforms side by side within a level.

    The vertical scatter within one platform is the seed spread; the offset between platforms at
    the same level is the platform difference.
    """
    require_columns(runs, ["platform", x, metric], "seed_spread(runs)")
    _require_rows(runs, "seed_spread(runs)")
    platforms = sorted(runs["platform"].unique())
    pcolors = _platform_colors(platforms)
    levels = sorted(runs[x].unique())
    width = 0.7
    fig = Figure(figsize=(max(4.5, 0.9 * len(levels) + 2.5), 3.0), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    for j, plat in enumerate(platforms):
        offset = (j - (len(platforms) - 1) / 2) * width / max(1, len(platforms))
        sub = runs[runs["platform"] == plat]
        pos = np.array([levels.index(v) for v in sub[x]], dtype=float) + offset
        ax.scatter(pos, sub[metric], s=16, color=pcolors[plat], label=plat, alpha=0.85)
        means = sub.groupby(x)[metric].mean()
        for level, m in means.items():
            i = levels.index(level) + offset
            ax.plot([i - 0.12, i + 0.12], [m, m], color=pcolors[plat], lw=2)
    ax.set_xticks(range(len(levels)), [_fmt_level(v) for v in levels])
    ax.set_xlabel("training noise std")
    ax.set_ylabel(_label(metric))
    ax.set_title(f"{_label(metric)} of every run (bar: mean over seeds)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def validation_curves(
    histories: pd.DataFrame,
    runs: pd.DataFrame,
    metric: str = "val_miou",
    x: str = "cfg_noise_std",
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """The validation curve of every run, one panel per platform, coloured by training noise level.

    Args:
        histories: :func:`utae.study.runs.load_histories` (platform, run_id, epoch, ``metric``).
        runs: :func:`utae.study.runs.load_runs` (platform, run_id, ``x``), for each run's noise level.
    """
    require_columns(histories, ["platform", "run_id", "epoch", metric], "validation_curves(histories)")
    require_columns(runs, ["platform", "run_id", x], "validation_curves(runs)")
    _require_rows(histories, "validation_curves(histories)")
    frame = histories.merge(runs[["platform", "run_id", x]], on=["platform", "run_id"], how="inner")
    _require_rows(frame, "validation_curves(histories joined with runs)")
    platforms = sorted(frame["platform"].unique())
    levels = sorted(frame[x].unique())
    cmap = colormaps["viridis"]
    colors = {v: cmap(i / max(1, len(levels) - 1)) for i, v in enumerate(levels)}
    fig = Figure(figsize=(4.2 * len(platforms) + 0.8, 3.0), dpi=dpi, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(platforms), sharey=True))
    for ax, plat in zip(axes, platforms):
        sub = frame[frame["platform"] == plat]
        for (run_id, level), h in sub.groupby(["run_id", x], sort=True):
            h = h.sort_values("epoch")
            ax.plot(h["epoch"], h[metric], color=colors[level], lw=1, alpha=0.8)
        ax.set_title(plat, fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(_label(metric))
    handles = [Line2D([], [], color=colors[v], label=_fmt_level(v)) for v in levels]
    axes[-1].legend(handles=handles, title="training noise", fontsize=7, title_fontsize=7, loc="lower right")
    return fig


def _config_label(columns: Sequence[str], values: Sequence[Any]) -> str:
    parts = []
    for col, value in zip(columns, values):
        name = "noise" if col == "cfg_noise_std" else col.removeprefix("cfg_").replace("_", " ")
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        parts.append(f"{name} {_fmt_level(value) if number else value}")
    return "\n".join(parts)


def paired_differences(
    pairs: pd.DataFrame,
    effect: Mapping[str, Any] | pd.Series | None = None,
    scale: float = 100.0,
    metric: str = "test_miou",
    dpi: float = DEFAULT_DPI,
) -> Figure:
    """The paired differences between two platforms, per configuration: each seed a dot, the
    configuration's mean a short bar; the study-level platform effect a line with its CI as a band.

    Args:
        pairs: ``utae.study.platform_effect.paired_differences()``: the configuration columns (those before ``cfg_seed``),
            ``cfg_seed`` and ``diff`` (platform b minus platform a, in the metric's stored unit).
        effect: the matching row of ``utae.study.platform_effect.platform_effect()`` (``effect``, ``ci_low``, ``ci_high``
            already scaled, ``platform_a``, ``platform_b``); None draws the differences only.
        scale: multiplies ``diff`` (100: fractions to points, matching ``effect``).
        metric: for the axis label.
    """
    require_columns(pairs, ["cfg_seed", "diff"], "paired_differences(pairs)")
    _require_rows(pairs, "paired_differences(pairs)")
    configs = list(pairs.columns[: list(pairs.columns).index("cfg_seed")])
    keys = configs or ["cfg_seed"]
    groups = list(pairs.groupby(keys, sort=True, dropna=False)) if configs else [((), pairs)]
    seeds = sorted(pairs["cfg_seed"].unique())
    unit = " (points)" if scale == 100.0 else ""
    fig = Figure(figsize=(max(4.5, 0.9 * len(groups) + 2.5), 3.2), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    ax.axhline(0.0, color="0.4", lw=1, ls="--")
    if effect is not None:
        ax.axhspan(float(effect["ci_low"]), float(effect["ci_high"]), color=_LINE_COLORS[1], alpha=0.15, lw=0,
                   label="95% CI")
        ax.axhline(float(effect["effect"]), color=_LINE_COLORS[1], lw=1.5,
                   label=f"platform effect {float(effect['effect']):+.2f}")
    labels = []
    for i, (key, sub) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        labels.append(_config_label(configs, key) if configs else "all")
        diffs = sub["diff"].to_numpy(dtype=float) * scale
        jitter = np.array([seeds.index(s) for s in sub["cfg_seed"]], dtype=float)
        jitter = (jitter - (len(seeds) - 1) / 2) * (0.3 / max(1, len(seeds)))
        ax.scatter(i + jitter, diffs, s=18, color=_LINE_COLORS[0], alpha=0.85, zorder=3,
                   label="one seed" if i == 0 else None)
        ax.plot([i - 0.2, i + 0.2], [diffs.mean()] * 2, color=_LINE_COLORS[0], lw=2)
    ax.set_xticks(range(len(groups)), labels, fontsize=8)
    title = "paired differences"
    if effect is not None:
        title = f"{effect['platform_b']} minus {effect['platform_a']}"
    ax.set_ylabel(f"difference in {_label(metric)}{unit}")
    ax.set_title(f"{_label(metric)}: {title} (dot: one seed; bar: mean)", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------------------------------
# Corruptions
# --------------------------------------------------------------------------------------------------


def corruption_curves(curves: pd.DataFrame, kinds: Sequence[str] | None = None, ncols: int = 4,
                      dpi: float = DEFAULT_DPI) -> Figure:
    """Test mIoU against corruption severity, one panel per kind, one line per training augmentation.

    Args:
        curves: :func:`utae.study.corruption_scores.severity_curves` (columns ``label``, ``kind``, ``severity``
            (0 = clean test), ``miou_mean``, ``miou_std``, ``n``): the line is the mean over seeds, the band
            plus or minus one std over seeds (none for a single run).
        kinds: the panels, in this order (default: every kind of ``curves`` in its order of appearance).
        ncols: panels per row.
    """
    require_columns(curves, ["label", "kind", "severity", "miou_mean", "miou_std"], "corruption_curves(curves)")
    _require_rows(curves, "corruption_curves(curves)")
    kinds = list(dict.fromkeys(curves["kind"])) if kinds is None else list(kinds)
    labels = list(dict.fromkeys(curves["label"]))
    colors = _platform_colors(labels)
    ncols = max(1, min(ncols, len(kinds)))
    nrows = -(-len(kinds) // ncols)
    fig = Figure(figsize=(2.9 * ncols + 0.4, 2.5 * nrows + 0.7), dpi=dpi, layout="constrained")
    grid = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    for ax in grid.flat[len(kinds):]:
        fig.delaxes(ax)
    for ax, kind in zip(grid.flat, kinds):
        sub = curves[curves["kind"] == kind]
        for label in labels:
            line = sub[sub["label"] == label].sort_values("severity")
            if line.empty:
                continue
            x = line["severity"].to_numpy(dtype=float)
            y = line["miou_mean"].to_numpy(dtype=float)
            sd = line["miou_std"].to_numpy(dtype=float)
            ax.plot(x, y, marker="o", ms=3, color=colors[label], label=label)
            if np.isfinite(sd).any():
                ax.fill_between(x, y - np.nan_to_num(sd), y + np.nan_to_num(sd), color=colors[label], alpha=0.15,
                                lw=0)
        ax.set_title(kind.replace("_", " "), fontsize=9)
        ax.set_xticks(range(6))
        ax.set_xlabel("severity (0 = clean)", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in grid[:, 0]:
        ax.set_ylabel("test mIoU")
    handles = [Line2D([], [], color=colors[lb], marker="o", ms=3, label=lb) for lb in labels]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)), fontsize=8, frameon=False,
               title="training augmentation (mean ± std over seeds)", title_fontsize=8)
    return fig


def corruption_gallery(
    clean: np.ndarray,
    corrupted: Mapping[str, Mapping[int, np.ndarray | None]],
    target: np.ndarray,
    pred: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    colors: Sequence[Any] | None = None,
    dpi: float = DEFAULT_DPI,
    titles: Mapping[str, Mapping[int, str]] | None = None,
) -> Figure:
    """What each corruption does at each severity to one date of one test patch.

    The top row holds the label and (when given) the clean-trained model's prediction; below, one row per kind:
    the clean frame, then the corrupted frame at each severity (an empty panel for a frame that is None, e.g. a
    date that ``missing_dates`` removed).

    Args:
        clean: ``(H, W, 3)`` RGB in [0, 1] (shown as is: put every frame on the same scale beforehand so that the
            frames compare, see :func:`utae.report.gallery.gallery_frames`).
        corrupted: kind -> severity -> ``(H, W, 3)`` RGB in [0, 1] or None; every kind must have the same
            severities.
        target, pred: ``(H, W)`` integer class maps.
        titles: kind -> severity -> the panel's title (default ``"severity <s>"``).
    """
    names, crgb = _classes(class_names, colors)
    clean, target = np.asarray(clean), np.asarray(target)
    if clean.ndim != 3 or clean.shape[-1] != 3:
        raise ValueError(f"corruption_gallery: clean must be (H, W, 3), got {clean.shape}")
    if target.shape != clean.shape[:2] or (pred is not None and np.asarray(pred).shape != clean.shape[:2]):
        raise ValueError(f"corruption_gallery: target and pred must be (H, W) = {clean.shape[:2]}")
    if not corrupted:
        raise ValueError("corruption_gallery: no corrupted frames to show")
    severities = [sorted(v) for v in corrupted.values()]
    if any(s != severities[0] for s in severities):
        raise ValueError(f"corruption_gallery: every kind needs the same severities, got {severities}")
    ncols = 1 + len(severities[0])
    cmap = ListedColormap(crgb)
    fig = Figure(figsize=(1.9 * ncols + 0.6, 1.9 * (len(corrupted) + 1) + 0.8), dpi=dpi, layout="constrained")
    grid = fig.subplots(len(corrupted) + 1, ncols, squeeze=False)
    top = [(target, cmap, "label")] + ([(np.asarray(pred), cmap, "clean-trained prediction")] if pred is not None
                                       else [])
    panels = [top, *[[(clean, None, "clean"),
                      *[(img, None, (titles or {}).get(kind, {}).get(s, f"severity {s}"))
                        for s, img in sorted(frames.items())]] for kind, frames in corrupted.items()]]
    for r, (row, items) in enumerate(zip(grid, panels)):
        for col, ax in enumerate(row):
            if col >= len(items):
                fig.delaxes(ax)
                continue
            img, cm, title = items[col]
            if cm is not None:
                ax.imshow(img, cmap=cm, vmin=0, vmax=len(names) - 1, interpolation="nearest")
            elif img is None:
                ax.set_facecolor("0.85")
                ax.text(0.5, 0.5, "date removed", ha="center", va="center", fontsize=7, transform=ax.transAxes)
            else:
                ax.imshow(np.clip(np.asarray(img, dtype=float), 0.0, 1.0), interpolation="nearest")
            ax.set_title(title, fontsize=6.5)
            if r > 0 and col == 0:
                ax.set_ylabel(list(corrupted)[r - 1].replace("_", " "), fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    maps = [target] + ([np.asarray(pred)] if pred is not None else [])
    present = sorted(set().union(*(np.unique(m).tolist() for m in maps)))
    handles = [Patch(facecolor=crgb[c], edgecolor="0.3", label=f"{c} {names[c]}")
               for c in present if 0 <= c < len(names)]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, max(1, len(handles))), fontsize=7,
               frameon=False)
    return fig
