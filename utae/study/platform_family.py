"""The platform effect as a family: with three platforms or more, does *any* platform differ from the others?

:func:`utae.study.platform_effect.platform_effect` measures one paired effect per pair of platforms whose runs pair,
and Holm-adjusts their p-values per metric (``p_holm``; :mod:`utae.study.inference`): the family of the question "does
any platform differ from the others?", whose chance of any false "differs" Holm bounds at alpha. This module
says it in words (:func:`family_text`), names why two platforms do not pair (:func:`unpaired_reason`: their runs
were evaluated in other modes, or run with other settings, or share no seed), so that a platform that pairs with
none is named rather than silently missing.

Inputs are the effect table of :func:`utae.study.platform_effect.platform_effect` (its ``metric``, ``platform_a``,
``platform_b``, ``n_pairs``, ``effect``, ``ci_low``, ``ci_high``, ``p_holm``, ``unpaired_reason`` columns,
points for mIoU and OA) and :func:`utae.study.runs.load_runs`'s runs.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from utae.study import inference
from utae.study.tables import config_columns, with_dataset

__all__ = ["unpaired_reason", "family_text"]

_WORDS = {"test_miou": "test mIoU", "test_oa": "test OA", "test_macro_f1": "test macro F1", "val_miou": "val mIoU",
          "val_oa": "val OA", "train_oa": "train OA"}


def _num(value: Any) -> str:
    value = float(value)
    return f"{value:.2g}" if value != 0 and abs(value) < 0.05 else f"{value:.1f}"


def _p(value: float) -> str:
    return "n/a" if not math.isfinite(value) else ("< 0.001" if value < 0.001 else f"= {value:.2g}")


def unpaired_reason(runs: pd.DataFrame, platform_a: str, platform_b: str) -> str:
    """Why no run of ``platform_a`` pairs with one of ``platform_b`` (:func:`utae.study.platform_effect.paired_differences`),
    in words: the configuration columns (:func:`utae.study.tables.config_columns`, e.g. ``eval_mode``) whose values the
    two platforms share none of, else that no configuration and seed was run on both."""
    runs = with_dataset(runs)
    a, b = runs[runs["platform"] == platform_a], runs[runs["platform"] == platform_b]
    apart = []
    for col in config_columns(runs):
        values_a, values_b = set(a[col].astype(object).map(str)), set(b[col].astype(object).map(str))
        if values_a and values_b and not values_a & values_b:
            apart.append(f"{col.removeprefix('cfg_')} {', '.join(sorted(values_a))} against "
                         f"{', '.join(sorted(values_b))}")
    if not apart:
        return "no configuration and seed run on both"
    if all(c.startswith("eval_mode ") for c in apart):
        return f"evaluated in other modes ({'; '.join(apart)}), which changes test scores by itself"
    return f"run with other settings ({'; '.join(apart)})"


def _whom(others: list[str]) -> str:
    if len(others) == 1:
        return others[0]
    return f"neither {others[0]} nor {others[1]}" if len(others) == 2 else f"none of {', '.join(others)}"


def family_text(effect_table: pd.DataFrame, metric: str, alpha: float = inference.ALPHA) -> str:
    """With three platforms or more (rows for more than one pair of platforms): whether any platform differs
    from the others in ``metric`` after Holm's correction across the paired comparisons, each with its effect,
    95% CI and adjusted p-value; then each platform that pairs with none of the others, and each other unpaired
    pair, with the reason (``unpaired_reason``). Markdown; "" for one pair of platforms or none."""
    rows = effect_table[effect_table["metric"] == metric]
    if len(rows) < 2 or rows["platform_b"].isna().all():
        return ""
    paired, unpaired = rows[rows["n_pairs"] > 0], rows[rows["n_pairs"] == 0]
    unit = " points" if (rows["unit"] == "points").all() else ""
    platforms = set(rows["platform_a"]) | set(rows["platform_b"])
    text = (f"Of the {len(rows)} pairs of the {len(platforms)} platforms, {len(paired)} "
            f"{'has' if len(paired) == 1 else 'have'} paired runs.")
    tested = paired[np.isfinite(paired["p_holm"].to_numpy(float))]
    if len(tested):
        family = f"Holm's correction across the {len(tested)} paired comparison{'s' if len(tested) != 1 else ''}"
        answer = ("Yes" if (tested["p_holm"] < alpha).any() else "Not detectably")
        each = "; ".join(f"{r.platform_b} against {r.platform_a} {float(r.effect):+.1f}{unit} (95% CI "
                         f"{_num(r.ci_low)} to {_num(r.ci_high)}, adjusted p {_p(float(r.p_holm))}"
                         f"{', differs' if float(r.p_holm) < alpha else ''})" for r in tested.itertuples())
        text += (f" Does any platform differ from the others in {_WORDS.get(metric, metric)}? {answer}, after "
                 f"{family} (alpha {alpha:g}): {each}.")
    paired_platforms = set(paired["platform_a"]) | set(paired["platform_b"])
    lonely = sorted(p for p in platforms if p not in paired_platforms) if len(paired) else []
    for plat in lonely:
        mine = unpaired[(unpaired["platform_a"] == plat) | (unpaired["platform_b"] == plat)]
        others = [b if a == plat else a for a, b in zip(mine["platform_a"], mine["platform_b"])]
        reasons = "; ".join(sorted(set(mine["unpaired_reason"])))
        text += (f" {plat} pairs with {_whom(others)}: {reasons}, so this study cannot say whether it differs "
                 f"from {'it' if len(others) == 1 else 'them'}.")
    rest = unpaired[~(unpaired["platform_a"].isin(lonely) | unpaired["platform_b"].isin(lonely))]
    for r in rest.itertuples():
        text += f" {r.platform_a} and {r.platform_b} are not paired: {r.unpaired_reason}."
    return text
