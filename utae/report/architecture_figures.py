"""The figures of a study across architectures (:mod:`utae.study.architectures`), one function per figure, each
returning a matplotlib ``Figure``: the architecture x corruption kind rPC heatmap, clean score against mCE, and
what the mix buys each architecture."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from utae.report.plots import DEFAULT_DPI, LINE_COLORS, annotate_heatmap, require_rows
from utae.study.corruption_scores import ALL_KINDS, CLEAN, kinds_in_order
from utae.util.checks import require_columns

__all__ = ["rpc_heatmap", "clean_vs_mce", "mix_gain_plot"]


def _arch_order(table: pd.DataFrame) -> list[str]:
    """Architectures by their clean-trained mean rPC over the kinds, most robust first."""
    overall = table[(table["kind"] == ALL_KINDS) & (table["augmentation"] == CLEAN)]
    order = list(overall.sort_values("rpc_mean", ascending=False)["architecture"].drop_duplicates())
    return order + sorted(set(table["architecture"]) - set(order))


def rpc_heatmap(table: pd.DataFrame, dpi: float = DEFAULT_DPI) -> Figure:
    """Mean rPC over seeds, architecture (rows, most robust first) x corruption kind (columns, then ``all
    kinds``), one panel per training augmentation (clean-trained first). ``table``:
    :func:`utae.study.architectures.architecture_table` of one platform."""
    require_columns(table, ["architecture", "augmentation", "kind", "rpc_mean"], "rpc_heatmap(table)")
    require_rows(table, "rpc_heatmap(table)")
    archs = _arch_order(table)
    kinds = kinds_in_order(list(table["kind"]))
    augs = sorted(table["augmentation"].unique(), key=lambda a: (a != CLEAN, a))
    values = [table[table["augmentation"] == a].pivot_table(index="architecture", columns="kind", values="rpc_mean")
              .reindex(index=archs, columns=kinds).to_numpy(float) for a in augs]
    finite = np.concatenate([v[np.isfinite(v)] for v in values])
    vmin, vmax = float(finite.min()) if finite.size else 0.0, 1.0
    fig = Figure(figsize=(1.0 + 0.75 * len(kinds) * len(augs), 0.9 + 0.42 * len(archs)), dpi=dpi,
                 layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(augs), sharey=True))
    for ax, aug, v in zip(axes, augs, values):
        image = ax.imshow(v, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
        annotate_heatmap(ax, v, fmt="{:.2f}", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(kinds)), [k.replace("_", " ") for k in kinds], rotation=35, ha="right", fontsize=8)
        ax.set_yticks(range(len(archs)), archs, fontsize=8)
        ax.set_title(f"trained {'clean' if aug == CLEAN else 'with ' + aug}", fontsize=9)
    fig.colorbar(image, ax=list(axes), label="rPC (mPC / clean mIoU)", shrink=0.9)
    fig.suptitle("Relative robustness per corruption kind (mean over seeds; 1 = no loss)", fontsize=10)
    return fig


def clean_vs_mce(table: pd.DataFrame, dpi: float = DEFAULT_DPI) -> Figure:
    """Clean test mIoU (x, points) against mCE relative to clean-trained U-TAE (y) per architecture and training
    augmentation, each a mean over seeds with its 95% interval as error bars. ``table``: the ``all kinds`` rows of
    :func:`utae.study.architectures.architecture_table` of one platform."""
    require_columns(table, ["architecture", "augmentation", "clean_mean", "clean_low", "clean_high", "ce_ref_mean",
                            "ce_ref_low", "ce_ref_high"], "clean_vs_mce(table)")
    rows = table[table["kind"] == ALL_KINDS] if "kind" in table.columns else table
    require_rows(rows, "clean_vs_mce(table)")
    fig = Figure(figsize=(7.6, 4.2), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    augs = sorted(rows["augmentation"].unique(), key=lambda a: (a != CLEAN, a))
    archs = _arch_order(rows.assign(rpc_mean=-rows["ce_ref_mean"]))  # one colour an architecture, lowest mCE first
    markers = {aug: "os^Dv"[i % 5] for i, aug in enumerate(augs)}
    for i, arch in enumerate(archs):
        color = LINE_COLORS[i % len(LINE_COLORS)]
        for aug in augs:
            sub = rows[(rows["architecture"] == arch) & (rows["augmentation"] == aug)]
            if sub.empty:
                continue
            x, y = sub["clean_mean"].to_numpy(float), sub["ce_ref_mean"].to_numpy(float)
            xerr = np.abs(np.vstack([x - sub["clean_low"].to_numpy(float), sub["clean_high"].to_numpy(float) - x]))
            yerr = np.abs(np.vstack([y - sub["ce_ref_low"].to_numpy(float), sub["ce_ref_high"].to_numpy(float) - y]))
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=markers[aug], color=color, capsize=2, lw=1, ms=5,
                        mfc=color if aug == CLEAN else "white")
    handles = [Line2D([], [], color=LINE_COLORS[i % len(LINE_COLORS)], marker="o", ls="", label=a)
               for i, a in enumerate(archs)]
    handles += [Line2D([], [], color="0.3", marker=markers[a], ls="", mfc="0.3" if a == CLEAN else "white",
                       label=f"trained {'clean' if a == CLEAN else 'with ' + a}") for a in augs]
    ax.axhline(1.0, color="0.5", lw=1, ls="--")
    ax.set_xlabel("clean test mIoU (points)")
    ax.set_ylabel("mCE relative to clean-trained U-TAE")
    ax.set_title("Clean score against corruption error (mean and 95% interval over seeds; lower is more robust)",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return fig


def mix_gain_plot(gains: pd.DataFrame, dpi: float = DEFAULT_DPI) -> Figure:
    """What the mix buys each architecture: the paired difference in mean mPC (points) against its clean-trained
    runs with its 95% interval, labelled with the Holm-adjusted p-value. ``gains``: the first frame of
    :func:`utae.study.architectures.mix_gain` for one platform."""
    require_columns(gains, ["architecture", "diff", "ci_low", "ci_high", "p_holm", "n_pairs"], "mix_gain_plot(gains)")
    require_rows(gains, "mix_gain_plot(gains)")
    gains = gains.sort_values("diff", ignore_index=True)
    fig = Figure(figsize=(6.2, 0.8 + 0.42 * len(gains)), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    y = np.arange(len(gains))
    diff = gains["diff"].to_numpy(float)
    err = np.abs(np.vstack([diff - gains["ci_low"].to_numpy(float), gains["ci_high"].to_numpy(float) - diff]))
    ax.errorbar(diff, y, xerr=err, fmt="o", color=LINE_COLORS[0], capsize=3, lw=1.2)
    ax.axvline(0.0, color="0.5", lw=1, ls="--")
    labels = [f"{a} (n={n}, Holm p {p:.3f})" if np.isfinite(p) else f"{a} (n={n})"
              for a, n, p in zip(gains["architecture"], gains["n_pairs"], gains["p_holm"])]
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_xlabel("mix minus clean-trained, mean mPC over the kinds (points)")
    ax.set_title("What the mix buys each architecture (paired by seed, 95% interval)", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return fig
