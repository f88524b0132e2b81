"""The figure of a study's design per CPU-minute (:mod:`utae.study.design`): the half-width of a paired comparison
against the CPU time its seeds cost, one curve a configuration."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

from utae.report.plots import DEFAULT_DPI, LINE_COLORS, require_rows
from utae.util.checks import require_columns

__all__ = ["halfwidth_per_cpu_minute"]


def halfwidth_per_cpu_minute(table: pd.DataFrame, curve: pd.DataFrame, labels: list[str], target: float = 3.0,
                             dpi: float = DEFAULT_DPI) -> Figure:
    """Half-width of the 95% interval (points) against CPU-minutes, log-log: per row of ``table``
    (:func:`utae.study.design.design_table`) a line over the seed counts of ``curve``
    (:func:`utae.study.design.halfwidth_curve`), its band from the interval of ``diff_sd``, dots at 5, 10 and 20
    seeds; ``labels`` name the rows; the dashed line is ``target``."""
    require_columns(curve, ["row", "n", "cpu_min", "halfwidth", "halfwidth_low", "halfwidth_high"],
                    "halfwidth_per_cpu_minute(curve)")
    require_rows(table, "halfwidth_per_cpu_minute(table)")
    fig = Figure(figsize=(8.4, 4.2), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    for i, (row, label) in enumerate(zip(table.index, labels)):
        sub = curve[curve["row"] == row]
        color = LINE_COLORS[i % len(LINE_COLORS)]
        ax.plot(sub["cpu_min"], sub["halfwidth"], color=color, lw=1.6, label=label)
        ax.fill_between(sub["cpu_min"], sub["halfwidth_low"], sub["halfwidth_high"], color=color, alpha=0.08, lw=0)
        dots = sub[sub["n"].isin([5, 10, 20])]
        ax.scatter(dots["cpu_min"], dots["halfwidth"], color=color, s=14, zorder=3)
    ax.axhline(target, color="0.4", ls="--", lw=1, label=f"target ±{target:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers on the log axes (2, 5, 10, not 10^0)
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(ScalarFormatter())
        axis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("CPU-minutes (seeds x a run and its clean-trained partner)")
    ax.set_ylabel("95% half-width (points of mPC)")
    ax.set_title("Precision per CPU-minute (dots: 5, 10, 20 seeds; band: the sd's 95% interval)", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    finite = curve[["halfwidth"]].to_numpy(float)
    ax.set_ylim(max(0.3, float(np.nanmin(finite)) * 0.7), float(np.nanmax(finite[curve["n"] >= 3])) * 1.5)
    return fig
