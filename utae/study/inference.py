"""Power and multiplicity for the study's families of paired comparisons (torch-free; scipy and statsmodels).

Every table of the study that holds many tests is a *family*. Its p-values are adjusted across the family's
cells (:func:`adjust_pvalues`, ``statsmodels.stats.multitest.multipletests``), the raw p-value kept beside them:

- **Holm** (``p_holm``) for a *confirmatory* family, the questions a study was run to answer: the training
  augmentation x corruption kind table of the corruption study (:func:`utae.study.corruption_scores.augmentation_table`,
  one family per platform and configuration: each platform's runs answer the study's questions on their own),
  and the platform effect's pairs of platforms (:func:`utae.study.platform_effect.platform_effect`, one family per
  metric). Holm bounds the probability of *any* false claim in the family at alpha, under any dependence
  between its tests.
- **Benjamini-Hochberg** (``p_bh``) for an *exploratory* family, read to find where to look next: the
  per-configuration platform-vs-seed table (:func:`utae.study.platform_effect.platform_vs_seed`); a per-class table
  of tests would be one too (the study shows its per-class IoU without testing it). BH bounds the expected share
  of false claims among those made, so it flags more cells than Holm.

A headline sentence says "detectable" only when the adjusted p-value is below alpha.

Power of a paired comparison, with ``sd`` the standard deviation of the paired differences and ``n`` the number
of pairs (seeds): :func:`seeds_needed` is the number of pairs a two-sided paired t-test needs to detect a
difference of :data:`DETECT_POINTS` (3 points of mIoU, 0.03) with power 0.8 at alpha 0.05
(``statsmodels.stats.power.TTestPower().solve_power`` with effect size ``detect / sd``), and
:func:`ci_half_width` is the half-width of the 95% CI the present pairs give, ``t(0.975, dof) * sd / sqrt(n)``.
Both read ``sd`` as the truth, while with 3 seeds it is itself uncertain (its 95% CI spans about 0.5 to 6.3
times the estimate): they say what to plan for, not what is known.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

__all__ = ["DETECT_POINTS", "POWER", "ALPHA", "ADJUSTMENTS", "seeds_needed", "ci_half_width", "adjust_pvalues",
           "power_words", "power_sentence"]

#: The difference every family's power is stated for, in points (x100) of mIoU or OA.
DETECT_POINTS = 3.0
#: The power the seeds are planned for.
POWER = 0.8
#: The level of every test (two-sided).
ALPHA = 0.05
#: The adjustments of :func:`adjust_pvalues`: the column suffix -> the ``multipletests`` method.
ADJUSTMENTS = {"holm": "holm", "bh": "fdr_bh"}


def seeds_needed(diff_sd: float, detect: float = DETECT_POINTS, alpha: float = ALPHA, power: float = POWER) -> float:
    """Pairs (seeds) a two-sided paired t-test needs to detect a mean difference of ``detect`` with ``power`` at
    level ``alpha``, when the paired differences have standard deviation ``diff_sd`` (same unit as ``detect``).

    ``TTestPower().solve_power(effect_size=detect / diff_sd)`` rounded up; at least 2 (a t-test needs a degree of
    freedom). NaN when ``diff_sd`` is not a positive finite number (no spread: nothing to plan against). Where the
    root finder fails (answers of a few pairs, when the power at 2 pairs cannot be evaluated), the smallest ``n``
    whose ``TTestPower().power`` reaches ``power``.

    Raises:
        ValueError: ``detect`` not positive, ``alpha`` or ``power`` outside (0, 1).
    """
    from statsmodels.stats.power import TTestPower
    from statsmodels.tools import sm_exceptions  # noqa: F401  (its import sets a warnings filter: before ours)

    if not (math.isfinite(detect) and detect > 0):
        raise ValueError(f"seeds_needed: detect must be a positive number, got {detect!r}")
    for name, value in (("alpha", alpha), ("power", power)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"seeds_needed: {name} must be in (0, 1), got {value!r}")
    if not (math.isfinite(diff_sd) and diff_sd > 0):
        return math.nan
    analysis = TTestPower()
    effect_size = detect / diff_sd

    def power_at(n: int) -> float:
        return float(analysis.power(effect_size=effect_size, nobs=n, alpha=alpha, alternative="two-sided"))

    if power_at(2) >= power:
        return 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a root finder that fails warns and returns NaN: handled below
        pairs = float(np.squeeze(analysis.solve_power(effect_size=effect_size, alpha=alpha, power=power,
                                                      alternative="two-sided")))
    if math.isfinite(pairs) and pairs > 0:
        return float(max(math.ceil(pairs), 2))
    # The root finder fails only when the answer is a handful of pairs and the power at 2 pairs is NaN (scipy's
    # noncentral t at 1 degree of freedom and a very large effect): the smallest n whose power is known and enough.
    return float(next((n for n in range(2, 101) if power_at(n) >= power), math.nan))


def ci_half_width(diff_sd: float, n: int, alpha: float = ALPHA, dof: int | None = None) -> float:
    """Half-width of the ``1 - alpha`` t interval of a mean of ``n`` paired differences of standard deviation
    ``diff_sd``: ``t(1 - alpha / 2, dof) * diff_sd / sqrt(n)``, ``dof`` ``n - 1`` unless given (a model with
    blocks has fewer). NaN with no degree of freedom or an undefined ``diff_sd``."""
    from scipy import stats

    dof = n - 1 if dof is None else dof
    if n < 1 or dof < 1 or not math.isfinite(diff_sd):
        return math.nan
    return float(stats.t.ppf(1.0 - alpha / 2.0, dof) * diff_sd / math.sqrt(n))


def adjust_pvalues(pvalues: Sequence[float] | np.ndarray, method: str) -> np.ndarray:
    """``pvalues`` adjusted across the family they form, ``method`` ``"holm"`` or ``"bh"`` (:data:`ADJUSTMENTS`,
    ``statsmodels.stats.multitest.multipletests``). NaN entries (cells without a test) are not members of the
    family: they stay NaN and do not count in its size. Shape ``(m,)`` in, ``(m,)`` out.

    Raises:
        ValueError: an unknown ``method``, or a p-value outside [0, 1].
    """
    from statsmodels.stats.multitest import multipletests

    if method not in ADJUSTMENTS:
        raise ValueError(f"adjust_pvalues: method must be one of {sorted(ADJUSTMENTS)}, got {method!r}")
    p = np.asarray(pvalues, dtype=float).reshape(-1)
    out = np.full(p.shape, math.nan)
    tested = np.isfinite(p)
    if np.any((p[tested] < 0) | (p[tested] > 1)):
        raise ValueError(f"adjust_pvalues: p-values must be in [0, 1], got {p[tested].tolist()}")
    if tested.any():
        out[tested] = multipletests(p[tested], method=ADJUSTMENTS[method])[1]
    return out


def _span(values: np.ndarray, digits: int = 1) -> str:
    """``"a"`` or ``"a to b (median m)"`` of finite ``values``, shape ``(m,)``."""
    lo, hi, mid = float(values.min()), float(values.max()), float(np.median(values))
    if lo == hi:
        return f"{lo:.{digits}f}"
    return f"{lo:.{digits}f} to {hi:.{digits}f} (median {mid:.{digits}f})"


def power_words(rows: pd.DataFrame, what: str, alpha: float = ALPHA, unit: str = "points",
                per: str = "") -> str:
    """The power of a family's comparisons in words (Markdown; "" without a row of defined spread).

    ``rows``: one row a comparison, with ``n_pairs``, ``diff_sd``, ``ci_half_width`` and ``seeds_needed_3pt``
    (:func:`seeds_needed` for :data:`DETECT_POINTS`); ``what`` names the differences ("the paired differences
    in mPC"); ``per`` qualifies the seeds needed (", per configuration")."""
    from utae.util.checks import require_columns

    require_columns(rows, ["n_pairs", "diff_sd", "ci_half_width", "seeds_needed_3pt"], "power_words(rows)")
    rows = rows[np.isfinite(rows["diff_sd"].to_numpy(float)) & (rows["diff_sd"].to_numpy(float) > 0)]
    if rows.empty:
        return ""
    sd = rows["diff_sd"].to_numpy(float)
    half = rows["ci_half_width"].to_numpy(float)
    needed = rows["seeds_needed_3pt"].to_numpy(float)
    needed = needed[np.isfinite(needed)]
    pairs = rows["n_pairs"].astype(int)
    seeds = f"{pairs.min()}" if pairs.min() == pairs.max() else f"{pairs.min()} to {pairs.max()}"
    cells = f"{len(rows)} comparison{'s' if len(rows) != 1 else ''}"
    text = (f"**Power.** Over the {cells}, the standard deviation of {what} is {_span(sd)} {unit}; the present "
            f"{seeds} seed pairs give 95% CI half-widths of {_span(half[np.isfinite(half)])} {unit}, so a "
            "difference smaller than that cannot be told from 0.")
    if len(needed):
        text += (f" Detecting a difference of {DETECT_POINTS:g} {unit} with power {POWER:g} at alpha {alpha:g} "
                 f"(two-sided paired t test) would take {_span(needed, 0)} seeds{per}; each cell alone, before the "
                 "correction for the number of tests, which asks for more.")
    return text + (" These estimates take the spread measured on these seeds as the truth; with 3 seeds it is "
                   "itself uncertain (its 95% CI spans about 0.5 to 6.3 times the estimate)."
                   if pairs.min() <= 3 else "")


def power_sentence(diff_sd: float, half_width: float, needed: float, needed_1pt: float = math.nan,
                   what: str = "effect", per: str = "") -> str:
    """One comparison's power in words, points assumed: the 95% CI half-width its pairs give, and the seeds
    needed to detect :data:`DETECT_POINTS` (``needed``) and 1 point (``needed_1pt``, left out when NaN) at the
    spread ``diff_sd`` of its paired differences; ``what`` names the effect ("platform effect"), ``per`` qualifies
    the seeds (" per configuration"). "" when ``needed`` is NaN (no spread)."""
    if not math.isfinite(float(needed)):
        return ""
    text = (f"The present pairs give a 95% CI half-width of {float(half_width):.1f} points; at this spread of the "
            f"paired differences (sd {float(diff_sd):.1f} points), detecting a {DETECT_POINTS:g}-point {what} "
            f"(alpha {ALPHA:g}, power {POWER:g}) would take about {int(needed)} seed(s){per}")
    return text + (f", and a 1-point {what} about {int(needed_1pt)}." if math.isfinite(float(needed_1pt)) else ".")
