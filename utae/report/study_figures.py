"""The figures of a study (many runs), one function per figure, each returning a matplotlib ``Figure``: scores
against the noise, the train x test noise matrix, per-class IoU, timings, seed spread, validation curves, paired
platform differences, and the corruption figures (severity curves, the gallery). Shared style: :mod:`utae.report.plots`.

Inputs are the pandas DataFrames of :mod:`utae.study.runs` (``load_runs``: one row a run; ``load_test_noise`` and
``load_per_class_iou``: long) and the tables of :mod:`utae.study.platform_effect` and
:mod:`utae.study.corruption_scores`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from utae.study.tables import training_augmentation
from utae.util.checks import require_columns
from utae.report.plots import DEFAULT_DPI, LINE_COLORS, annotate_heatmap, class_names_or_default, class_style, level_text, metric_label, platform_colors, require_rows

__all__ = ["metric_vs_noise", "noise_matrix", "per_class_heatmap", "timing_bars", "seed_spread", "validation_curves", "paired_differences", "corruption_curves", "corruption_gallery"]


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
    require_rows(runs, "metric_vs_noise(runs)")
    platforms = sorted(runs["platform"].unique())
    pcolors = platform_colors(platforms)
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
        ax.set_ylabel(metric_label(metric))
        ax.set_title(f"{metric_label(metric)} (mean +- std over seeds)", fontsize=10)
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
    require_rows(test_noise, "noise_matrix(test_noise)")
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
        annotate_heatmap(ax, values)
        ax.set_xticks(range(table.shape[1]), [level_text(v) for v in table.columns], fontsize=8)
        ax.set_yticks(range(table.shape[0]), [level_text(v) for v in table.index], fontsize=8)
        ax.set_xlabel("test noise std")
        ax.set_ylabel("training noise std")
        ax.set_title(plat, fontsize=9)
    fig.suptitle(f"test {metric_label(metric)}: training noise x test noise (mean over seeds)", fontsize=10)
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.9, label=metric_label(metric))
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
    require_rows(per_class, "per_class_heatmap(per_class)")
    names = class_names_or_default(class_names)
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
        ax.set_xticks(range(len(levels)), [level_text(v) for v in levels], fontsize=8)
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
    require_rows(runs, "timing_bars(runs)")
    platforms = sorted(runs["platform"].unique())
    pcolors = platform_colors(platforms)
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
        ax.set_title(metric_label(metric), fontsize=10)
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
    require_rows(runs, "seed_spread(runs)")
    platforms = sorted(runs["platform"].unique())
    pcolors = platform_colors(platforms)
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
    ax.set_xticks(range(len(levels)), [level_text(v) for v in levels])
    ax.set_xlabel("training noise std")
    ax.set_ylabel(metric_label(metric))
    ax.set_title(f"{metric_label(metric)} of every run (bar: mean over seeds)", fontsize=10)
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
    require_rows(histories, "validation_curves(histories)")
    frame = histories.merge(runs[["platform", "run_id", x]], on=["platform", "run_id"], how="inner")
    require_rows(frame, "validation_curves(histories joined with runs)")
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
    axes[0].set_ylabel(metric_label(metric))
    handles = [Line2D([], [], color=colors[v], label=level_text(v)) for v in levels]
    axes[-1].legend(handles=handles, title="training noise", fontsize=7, title_fontsize=7, loc="lower right")
    return fig


def _config_label(columns: Sequence[str], values: Sequence[Any]) -> str:
    """A configuration as short lines under a tick: a training corruption as its kind and severities (the
    corruption study's ``mix 1-5``), not its JSON."""
    parts = []
    for col, value in zip(columns, values):
        if col == "cfg_train_corruption":
            parts.append(training_augmentation(0.0, value))
            continue
        name = "noise" if col == "cfg_noise_std" else col.removeprefix("cfg_").replace("_", " ")
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        parts.append(f"{name} {level_text(value) if number else value}")
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
    require_rows(pairs, "paired_differences(pairs)")
    configs = list(pairs.columns[: list(pairs.columns).index("cfg_seed")])
    keys = configs or ["cfg_seed"]
    groups = list(pairs.groupby(keys, sort=True, dropna=False)) if configs else [((), pairs)]
    seeds = sorted(pairs["cfg_seed"].unique())
    unit = " (points)" if scale == 100.0 else ""
    fig = Figure(figsize=(max(4.5, 0.9 * len(groups) + 2.5), 3.2), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    ax.axhline(0.0, color="0.4", lw=1, ls="--")
    if effect is not None:
        ax.axhspan(float(effect["ci_low"]), float(effect["ci_high"]), color=LINE_COLORS[1], alpha=0.15, lw=0,
                   label="95% CI")
        ax.axhline(float(effect["effect"]), color=LINE_COLORS[1], lw=1.5,
                   label=f"platform effect {float(effect['effect']):+.2f}")
    labels = []
    for i, (key, sub) in enumerate(groups):
        key = key if isinstance(key, tuple) else (key,)
        labels.append(_config_label(configs, key) if configs else "all")
        diffs = sub["diff"].to_numpy(dtype=float) * scale
        jitter = np.array([seeds.index(s) for s in sub["cfg_seed"]], dtype=float)
        jitter = (jitter - (len(seeds) - 1) / 2) * (0.3 / max(1, len(seeds)))
        ax.scatter(i + jitter, diffs, s=18, color=LINE_COLORS[0], alpha=0.85, zorder=3,
                   label="one seed" if i == 0 else None)
        ax.plot([i - 0.2, i + 0.2], [diffs.mean()] * 2, color=LINE_COLORS[0], lw=2)
    ax.set_xticks(range(len(groups)), labels, fontsize=8)
    title = "paired differences"
    if effect is not None:
        title = f"{effect['platform_b']} minus {effect['platform_a']}"
    ax.set_ylabel(f"difference in {metric_label(metric)}{unit}")
    ax.set_title(f"{metric_label(metric)}: {title} (dot: one seed; bar: mean)", fontsize=9)
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
    require_rows(curves, "corruption_curves(curves)")
    kinds = list(dict.fromkeys(curves["kind"])) if kinds is None else list(kinds)
    labels = list(dict.fromkeys(curves["label"]))
    colors = platform_colors(labels)
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
    names, crgb = class_style(class_names, colors)
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
