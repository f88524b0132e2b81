"""A study's design per CPU-minute: which configuration narrows a paired comparison most for the CPU time it costs.

Input: :func:`utae.study.corruption_scores.augmentation_table`'s ``all kinds`` rows (one a configuration and
augmentation: ``n_pairs`` seeds, ``diff_sd``, the standard deviation of the paired differences in mean mPC against
the clean-trained runs of the same seeds) and the runs' CPU time (``total_s`` of :func:`utae.study.runs.load_runs`,
a whole point: training, validation and every test).

With ``n`` seeds a comparison costs ``n * c`` (``c``: the CPU seconds of one pair, the run and its clean-trained
partner) and its 95% interval has the half-width ``t(0.975, n - 1) * sd / sqrt(n)``. For large ``n`` that is
``1.96 * sd * sqrt(c / B)`` at a budget of ``B`` CPU seconds: a design is better than another in proportion to
``sd**2 * c`` (:func:`design_table`'s ``variance_cost``), whatever the budget. More seeds move along a design's
curve (:func:`halfwidth_curve`); a larger training set, more epochs or a larger test set each change ``sd`` and
``c``, so each is a curve of its own. ``sd`` is estimated from few seeds: its 95% interval comes from the
chi-square distribution of ``(n - 1) s**2 / sd**2`` (scipy), and so does the interval of ``variance_cost``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from utae.study.corruption_scores import ALL_KINDS, CLEAN
from utae.study.inference import ci_half_width
from utae.study.tables import with_augmentation, with_dataset
from utae.util.checks import require_columns

__all__ = ["seeds_for_halfwidth", "design_table", "halfwidth_curve", "n_designs", "design_labels", "design_text"]

_ALPHA = 0.05


def seeds_for_halfwidth(diff_sd: float, target: float, alpha: float = _ALPHA, cap: int = 1000) -> float:
    """The fewest seeds ``n >= 2`` whose ``1 - alpha`` t interval of a paired mean is at most ``target`` wide on
    each side, for differences of standard deviation ``diff_sd``; NaN when ``diff_sd`` is not finite, inf past
    ``cap``."""
    if not math.isfinite(diff_sd) or not target > 0:
        return math.nan
    for n in range(2, cap + 1):
        if ci_half_width(diff_sd, n, alpha) <= target:
            return float(n)
    return math.inf


def design_table(robustness: pd.DataFrame, runs: pd.DataFrame, target: float = 3.0,
                 alpha: float = _ALPHA) -> pd.DataFrame:
    """Per configuration and augmentation (the ``all kinds`` rows of ``robustness``, ``robustness.csv``): the
    configuration columns, ``augmentation``, ``n_pairs``, ``diff_sd`` and its ``1 - alpha`` chi-square interval
    (``sd_low``, ``sd_high``), ``pair_cpu_s`` (the mean CPU seconds of a run plus its clean-trained partner,
    from ``runs``' ``total_s``), ``variance_cost`` (``diff_sd**2 * pair_cpu_s / 60``, points squared times
    CPU-minutes: lower is better) with its interval, ``seeds_for_target`` (:func:`seeds_for_halfwidth`) and
    ``cpu_min_for_target`` (those seeds times ``pair_cpu_s``, in minutes)."""
    from scipy import stats

    require_columns(robustness, ["augmentation", "kind", "n_pairs", "diff_sd", "seeds"], "design_table(robustness)")
    require_columns(runs, ["platform", "run_id", "cfg_seed", "total_s"], "design_table(runs)")
    rows = robustness[(robustness["kind"] == ALL_KINDS) & (robustness["augmentation"] != CLEAN)]
    keys = [c for c in robustness.columns[:list(robustness.columns).index("augmentation")]]
    frame = with_augmentation(with_dataset(runs))
    out = []
    for _, row in rows.iterrows():
        n, sd = int(row["n_pairs"]), float(row["diff_sd"])
        cost = _pair_cost(row, keys, frame)
        low = high = math.nan
        if n > 1 and math.isfinite(sd):
            chi = stats.chi2.ppf([1 - alpha / 2, alpha / 2], n - 1)
            low, high = (float(v) for v in np.sqrt((n - 1) * sd ** 2 / chi))
        needed = seeds_for_halfwidth(sd, target, alpha)
        out.append({**{k: row[k] for k in keys}, "augmentation": row["augmentation"], "n_pairs": n, "diff_sd": sd,
                    "sd_low": low, "sd_high": high, "pair_cpu_s": cost,
                    "variance_cost": sd ** 2 * cost / 60, "variance_cost_low": low ** 2 * cost / 60,
                    "variance_cost_high": high ** 2 * cost / 60, "seeds_for_target": needed,
                    "cpu_min_for_target": needed * cost / 60})
    return pd.DataFrame(out)


def _pair_cost(row: pd.Series, keys: Sequence[str], frame: pd.DataFrame) -> float:
    """The mean CPU seconds of a run of ``row``'s configuration and augmentation plus its clean-trained partner
    (``frame``: the runs with their ``augmentation`` and ``dataset`` columns)."""
    mask = pd.Series(True, index=frame.index)
    for key in keys:
        if key in frame.columns:
            mask &= frame[key].astype(object).map(str) == str(row[key])
    arm = frame[mask & (frame["augmentation"] == row["augmentation"])]["total_s"].mean()
    clean = frame[mask & (frame["augmentation"] == CLEAN)]["total_s"].mean()
    return float(arm + clean)


def halfwidth_curve(table: pd.DataFrame, seeds: Sequence[int] = tuple(range(2, 31)),
                    alpha: float = _ALPHA) -> pd.DataFrame:
    """Per row of :func:`design_table` and seed count ``n``: ``cpu_min`` (``n * pair_cpu_s / 60``) and the
    half-width at ``diff_sd`` and at its interval's ends (``halfwidth``, ``halfwidth_low``, ``halfwidth_high``)."""
    rows = []
    for i, row in table.iterrows():
        for n in seeds:
            rows.append({"row": i, "n": n, "cpu_min": n * row["pair_cpu_s"] / 60,
                         "halfwidth": ci_half_width(row["diff_sd"], n, alpha),
                         "halfwidth_low": ci_half_width(row["sd_low"], n, alpha),
                         "halfwidth_high": ci_half_width(row["sd_high"], n, alpha)})
    return pd.DataFrame(rows)


def n_designs(table: pd.DataFrame) -> int:
    """How many configurations :func:`design_table` compares (platforms and augmentations apart)."""
    keys = [c for c in table.columns[:list(table.columns).index("augmentation")] if c != "platform"] if len(
        table) else []
    return len(table[keys].astype(object).map(str).drop_duplicates()) if keys else min(len(table), 1)


def design_labels(table: pd.DataFrame) -> list[str]:
    """One short label a row of :func:`design_table`: the configuration values that vary between its rows (e.g.
    ``epochs 8, train limit 90``), then the augmentation where several are compared."""
    keys = [c for c in table.columns[:list(table.columns).index("augmentation")] if c != "platform"]
    varying = [k for k in keys if table[k].astype(object).map(str).nunique() > 1]
    if "cfg_model" in varying and "cfg_model_options" in varying and \
            table.groupby("cfg_model")["cfg_model_options"].nunique().max() == 1:
        varying.remove("cfg_model_options")  # one set of options a model: its name says which row it is
    several = table["augmentation"].nunique() > 1 or table["platform"].nunique() > 1
    labels = []
    for _, row in table.iterrows():
        parts = [str(row[k]) if k == "cfg_model" else f"{k.removeprefix('cfg_').replace('_', ' ')} {_value(row[k])}"
                 for k in varying]
        if several:
            parts.append(f"{row['augmentation']} ({row['platform']})" if table["platform"].nunique() > 1
                         else str(row["augmentation"]))
        labels.append(", ".join(parts) or str(row["augmentation"]))
    return labels


def _value(value: object) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "all"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def design_text(table: pd.DataFrame, target: float = 3.0) -> str:
    """The rows of :func:`design_table` in words (Markdown): the designs by ``variance_cost``, each with its interval,
    the seeds and CPU-minutes it needs for a half-width of ``target`` points, and how far apart the estimates
    can tell them."""
    if table.empty:
        return "No paired comparison to size."
    order = table.assign(label=design_labels(table)).sort_values("variance_cost")
    lines = [f"- **{r['label']}**: sd of the paired differences {r['diff_sd']:.2f} points ({r['sd_low']:.2f} to "
             f"{r['sd_high']:.2f}) over {r['n_pairs']} seeds, {r['pair_cpu_s']:.0f} CPU-s a pair: sd² x cost "
             f"{r['variance_cost']:.1f} ({r['variance_cost_low']:.1f} to {r['variance_cost_high']:.1f}); ±{target:g} "
             f"needs {_value(r['seeds_for_target'])} seeds, {r['cpu_min_for_target']:.0f} CPU-minutes"
             for _, r in order.iterrows()]
    best = order.iloc[0]
    overlap = (order["variance_cost_low"] <= best["variance_cost_high"]).sum() - 1
    tail = (f" The intervals of {overlap} other design(s) overlap the best one's: the seeds measured cannot rank "
            "those apart; the cost per pair is known far better than the spread." if overlap else "")
    return ("Designs by sd² x CPU-minutes per pair (points² x minutes; the half-width a budget buys scales with "
            "its square root, lower is better):\n\n" + "\n".join(lines) + "\n\n" + tail).strip()
