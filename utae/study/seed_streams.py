"""Which random stream drives the seed spread? The seed-stream study (``params/seed-streams.yaml``, docs/seeds.md)
on :func:`utae.study.runs.load_runs`'s runs.

A run's **arm** (:func:`stream_arm`) is the set of its streams that follow its ``seed``: the stream fields of
:data:`utae.config.run_config.STREAM_SEED_FIELDS` left None (``"weights"`` when ``data_seed`` and ``augment_seed``
are pinned, ``"all"`` when none is, as in every run of the other studies). Within one arm, configuration and
platform, the runs differ by the seeds of that arm's streams alone.

* :func:`variance_shares`: each arm's seed variance of a metric, and its ratio to the reference arm's (``"all"``,
  the three streams varying together): the share of the seed variance that the arm's streams carry alone. The
  95% CI of a standard deviation is the chi-square one, that of a ratio of two variances the F one
  (``scipy.stats``; both assume normal scores and independent runs, which the arms are: no run is in two arms),
  with the two-sided F-test p-value of "the same variance". Bartlett's test (``scipy.stats.bartlett``) asks whether
  all the arms of a configuration have one variance. The arm's mean against the reference's (Welch's CI) says what
  the seeds it pins are worth: in a chaotic training the spread of each arm need not add up, while a pinned draw
  that helps every run shows as a shift of the mean.
* :func:`pairing_gain`: configurations (training noise levels) compared in pairs of runs of one ``seed`` that
  share the arm's streams (arm ``"weights"`` at noise 0 and at noise 1: the same initial weights and data stream in
  each pair; arm ``"all"`` of the default study: every stream): the sd of a paired difference against that of two
  independent runs, and the share of the variance of a difference that the pairing removes, ICC(C,1) of a
  seed x configuration analysis of variance, with its F CI (``scipy.stats.f``).

Scores stored as fractions (mIoU, OA) are in points (x100). ``python -m utae.study.seed_streams RESULTS`` writes
both tables into ``RESULTS`` (``seed_streams.csv``, ``seed_pairing.csv``) and prints them.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utae.config.run_config import STREAM_SEED_FIELDS
from utae.util.atomic import atomic_write_csv
from utae.util.checks import require_columns

__all__ = ["ALL", "stream_arm", "with_arms", "variance_shares", "pairing_gain", "main"]

#: The arm of the runs whose three streams all follow ``seed``.
ALL = "all"
_STREAMS = tuple(name.removesuffix("_seed") for name in STREAM_SEED_FIELDS)  # weights, data, augment
_KEYS = ["platform", "cfg_noise_std"]


def _is_none(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def stream_arm(row: Any) -> str:
    """The arm of a :func:`load_runs` row (or a config.json dict with ``cfg_`` keys): the streams left None joined
    by ``+`` (``"weights"``, ``"data+augment"``), ``"all"`` for the three, ``"none"`` when every stream is pinned.
    A row without the columns (a run older than the fields) is ``"all"``."""
    free = [stream for stream, name in zip(_STREAMS, STREAM_SEED_FIELDS) if _is_none(row.get(f"cfg_{name}"))]
    if len(free) == len(_STREAMS):
        return ALL
    return "+".join(free) or "none"


def with_arms(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with an ``arm`` column (:func:`stream_arm`)."""
    out = runs.copy()
    out["arm"] = [stream_arm(row) for _, row in runs.iterrows()] if len(runs) else []
    return out


def _points(metric: str, values: pd.Series) -> np.ndarray:
    scale = 1.0 if metric.endswith("loss") else 100.0
    return values.to_numpy(dtype=float) * scale


def _sd_interval(sd: float, n: int, level: float) -> tuple[float, float]:
    from scipy import stats

    dof = n - 1
    if dof < 1 or not math.isfinite(sd):
        return math.nan, math.nan
    q_hi, q_lo = stats.chi2.ppf([(1 + level) / 2, (1 - level) / 2], dof)
    return sd * math.sqrt(dof / q_hi), sd * math.sqrt(dof / q_lo)


def _ratio_interval(ratio: float, n: int, n_ref: int, level: float) -> tuple[float, float, float]:
    """The F CI of ``var / var_ref`` estimated as ``ratio`` from n and n_ref runs, and the two-sided p-value of 1."""
    from scipy import stats

    d1, d2 = n - 1, n_ref - 1
    if d1 < 1 or d2 < 1 or not math.isfinite(ratio):
        return math.nan, math.nan, math.nan
    f_hi, f_lo = stats.f.ppf([(1 + level) / 2, (1 - level) / 2], d1, d2)
    p = 2 * min(stats.f.cdf(ratio, d1, d2), stats.f.sf(ratio, d1, d2))
    return ratio / f_hi, ratio / f_lo, min(1.0, float(p))


def variance_shares(runs: pd.DataFrame, metric: str = "test_miou", reference: str = ALL,
                    level: float = 0.95) -> pd.DataFrame:
    """One row per (platform, training noise, arm): ``n`` runs, ``mean`` and ``sd`` of ``metric`` (points) with the
    sd's chi-square CI (``sd_low``, ``sd_high``), the ``share`` of the reference arm's variance
    (``sd**2 / sd_ref**2``) with its F CI (``share_low``, ``share_high``) and the F-test ``p_same`` of a share of 1,
    and per (platform, noise) Bartlett's p-value that every arm has one variance (``p_bartlett``); ``diff``, the
    arm's mean minus the reference arm's, with Welch's CI (``diff_low``, ``diff_high``) and p-value (``p_diff``):
    what the seeds an arm pins are worth against seeds drawn afresh (a main effect of those draws). Arms of fewer
    than 2 runs have NaN spreads."""
    from scipy import stats

    require_columns(runs, [*_KEYS, "cfg_seed", metric], "variance_shares")
    arms = with_arms(runs)
    rows = []
    for (platform, noise), group in arms.groupby(_KEYS, sort=True):
        spreads = {arm: _points(metric, part[metric]) for arm, part in group.groupby("arm", sort=False)}
        ref = spreads.get(reference)
        ref_var = float(np.var(ref, ddof=1)) if ref is not None and len(ref) > 1 else math.nan
        usable = [v for v in spreads.values() if len(v) > 1]
        bartlett = float(stats.bartlett(*usable).pvalue) if len(usable) > 1 else math.nan
        for arm in sorted(spreads, key=lambda a: (a != reference, a)):
            values = spreads[arm]
            n = len(values)
            sd = float(np.std(values, ddof=1)) if n > 1 else math.nan
            share = sd ** 2 / ref_var if ref_var > 0 else math.nan
            low, high, p = _ratio_interval(share, n, len(ref) if ref is not None else 0, level)
            rows.append({"platform": platform, "noise_std": float(noise), "arm": arm, "n": n,
                         "mean": float(np.mean(values)), "sd": sd, **dict(zip(("sd_low", "sd_high"),
                                                                             _sd_interval(sd, n, level))),
                         "share": share, "share_low": low, "share_high": high, "p_same": p,
                         "p_bartlett": bartlett, **_mean_difference(values, ref, level)})
    return pd.DataFrame(rows)


def _mean_difference(values: np.ndarray, ref: np.ndarray | None, level: float) -> dict[str, float]:
    """The arm's mean minus the reference arm's, Welch's CI and p-value (``scipy.stats.ttest_ind``)."""
    from scipy import stats

    if ref is None or len(values) < 2 or len(ref) < 2:
        return {"diff": math.nan, "diff_low": math.nan, "diff_high": math.nan, "p_diff": math.nan}
    test = stats.ttest_ind(values, ref, equal_var=False)
    ci = test.confidence_interval(confidence_level=level)
    return {"diff": float(np.mean(values) - np.mean(ref)), "diff_low": float(ci.low), "diff_high": float(ci.high),
            "p_diff": float(test.pvalue)}


def _icc(table: np.ndarray, level: float) -> dict[str, float]:
    """Two-way analysis of variance of ``table`` ``(n seeds, k configurations)`` without replication: the seed
    effect's F-test and ICC(C,1) (McGraw and Wong 1996) with its F CI; see :func:`pairing_gain`."""
    from scipy import stats

    n, k = table.shape
    grand = table.mean()
    rows, cols = table.mean(axis=1, keepdims=True), table.mean(axis=0, keepdims=True)
    ms_r = k * float(((rows - grand) ** 2).sum()) / (n - 1)
    df1, df2 = n - 1, (n - 1) * (k - 1)
    ms_e = float(((table - rows - cols + grand) ** 2).sum()) / df2
    out = {"ms_seed": ms_r, "ms_residual": ms_e, "sd_paired": math.sqrt(2 * ms_e),
           "sd_unpaired": math.sqrt(2 * (ms_e + max(0.0, (ms_r - ms_e) / k)))}
    if ms_e <= 0:
        return {**out, "f": math.nan, "p_seed": math.nan, "gain": math.nan, "gain_low": math.nan,
                "gain_high": math.nan}
    f = ms_r / ms_e
    f_lo = f / stats.f.ppf((1 + level) / 2, df1, df2)
    f_hi = f * stats.f.ppf((1 + level) / 2, df2, df1)
    return {**out, "f": f, "p_seed": float(stats.f.sf(f, df1, df2)), "gain": (f - 1) / (f + k - 1),
            "gain_low": (f_lo - 1) / (f_lo + k - 1), "gain_high": (f_hi - 1) / (f_hi + k - 1)}


def pairing_gain(runs: pd.DataFrame, arm: str = "weights", noise_levels: Sequence[float] | None = None,
                 by_platform: bool = True, metric: str = "test_miou", level: float = 0.95) -> pd.DataFrame:
    """How much tighter a comparison of configurations is when its runs are paired by ``seed``, for the runs of
    ``arm`` (:func:`stream_arm`; a pair then shares that arm's seed and the pinned streams: in arm ``"weights"``
    the initial weights and the data stream). The configurations are the training noise levels
    (``noise_levels``, default all), per platform; with ``by_platform`` False every (platform, noise) is one
    configuration, so a pair also spans two machines (the same seeds, another arithmetic).

    The seeds present in every configuration are the rows of a two-way analysis of variance without replication
    (seed x configuration, ``scipy.stats.f``): one row per platform (``"all"`` when pooled) with ``n_seeds``,
    ``k`` configurations; ``sd_paired`` = ``sqrt(2 MS_residual)``, the sd of the difference of two runs of one seed
    (for k = 2 the sd of the paired differences); ``sd_unpaired``, that of two runs of different seeds
    (``sqrt(2 (MS_residual + sigma2_seed))``); ``gain``, the share of the variance of a difference that the
    pairing removes, ``sigma2_seed / (sigma2_seed + sigma2_residual)``, which is ICC(C,1) (negative estimates
    kept: no gain), with its F CI (``gain_low``, ``gain_high``); ``f`` and ``p_seed``, the F-test of no seed
    effect."""
    require_columns(runs, [*_KEYS, "cfg_seed", metric], "pairing_gain")
    arms = with_arms(runs)
    arms = arms[arms["arm"] == arm].copy()
    arms["cfg_noise_std"] = arms["cfg_noise_std"].astype(float)
    if noise_levels is not None:
        arms = arms[arms["cfg_noise_std"].isin([float(x) for x in noise_levels])]
    arms["value"] = _points(metric, arms[metric])
    groups = arms.groupby("platform", sort=True) if by_platform else [("all", arms)]
    columns = ["cfg_noise_std"] if by_platform else ["platform", "cfg_noise_std"]
    rows = []
    for platform, group in groups:
        table = group.pivot_table(index="cfg_seed", columns=columns, values="value", aggfunc="first").dropna()
        n, k = table.shape
        if n < 2 or k < 2:
            continue
        rows.append({"platform": platform, "arm": arm,
                     "noise_levels": " ".join(f"{x:g}" for x in sorted(group["cfg_noise_std"].unique())),
                     "n_seeds": n, "k": k, **_icc(table.to_numpy(dtype=float), level)})
    return pd.DataFrame(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m utae.study.seed_streams RESULTS [--metric test_miou]``: both tables of RESULTS/runs into RESULTS."""
    from utae.study.runs import load_runs

    parser = argparse.ArgumentParser(prog="python -m utae.study.seed_streams", description=__doc__.split("\n")[0])
    parser.add_argument("results", type=Path, help="the study folder (its runs/ are read)")
    parser.add_argument("--metric", default="test_miou", help="a score column of load_runs (default test_miou)")
    args = parser.parse_args(argv)
    runs = load_runs(args.results / "runs")
    if runs.empty:
        print(f"{args.results / 'runs'}: no finished run", file=sys.stderr)
        return 1
    shares = variance_shares(runs, args.metric)
    pairs = pd.concat([pairing_gain(runs, arm, metric=args.metric) for arm in sorted(set(with_arms(runs)["arm"]))],
                      ignore_index=True)
    atomic_write_csv(args.results / "seed_streams.csv", shares)
    atomic_write_csv(args.results / "seed_pairing.csv", pairs)
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        print(shares.to_string(index=False))
        print(pairs.to_string(index=False))
    return 0


if __name__ == "__main__":  # pragma: no cover - the command line
    raise SystemExit(main())
