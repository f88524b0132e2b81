"""Does the hardware change the results? The platform effect of the study, on :func:`utae.study.runs.load_runs`'s runs.

:func:`paired_differences` pairs the runs of one (configuration, seed) on two platforms: same initial weights,
data order and noise, only the arithmetic differs. :func:`platform_effect` gives the study-level platform effect
of every pair of platforms whose runs pair, with a 95% CI and p-value, the p-value Holm-adjusted across those
pairs (the confirmatory family "does any platform differ from the others?", :mod:`utae.study.inference`), whether a
seed reproduces exactly across platforms, the seed spread, the CI half-width and the seeds needed to detect a 1-
and a 3-point effect, and why the pairs of platforms that do not pair do not (``platform_effect.csv``);
:func:`platform_answer_text` says it in words. :func:`platform_vs_seed` and :func:`platform_vs_seed_text` are the
older per-configuration test (unpaired, permutation p-value, Benjamini-Hochberg across the configurations: an
exploratory family).

A configuration is :func:`utae.study.tables.config_columns`. Scores stored as fractions (mIoU, OA, F1) are reported in
points (x100). Statistics come from scipy and statsmodels.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from utae.study import inference
from utae.study.platform_family import family_text, unpaired_reason
from utae.util.checks import require_columns
from utae.study.tables import config_columns, with_dataset

__all__ = [
    "FRACTION_METRICS",
    "EFFECT_COLUMNS",
    "paired_differences",
    "platform_effect",
    "platform_answer_text",
    "platform_vs_seed",
    "platform_vs_seed_text",
]


# --------------------------------------------------------------------------------------------------
# Platforms against seeds, per configuration (unpaired)
# --------------------------------------------------------------------------------------------------


def _anova_f(values: np.ndarray, groups: np.ndarray) -> float:
    """One-way ANOVA F statistic (``scipy.stats.f_oneway``) of ``values`` grouped by the integer labels
    ``groups``: NaN with fewer than two groups or no within-group degree of freedom; +inf when every
    group is constant but the group means differ."""
    from scipy import stats

    labels = np.unique(groups)
    if len(labels) < 2 or len(values) - len(labels) < 1:
        return math.nan
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore")  # constant groups: scipy warns and returns inf / nan, as documented here
        return float(stats.f_oneway(*(values[groups == g] for g in labels)).statistic)


def platform_vs_seed(
    runs: pd.DataFrame,
    metric: str = "test_miou",
    n_permutations: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Within each configuration, compare the difference between platforms with the spread between seeds.

    For every configuration (see :func:`config_columns`), with ``runs`` grouped by platform:

    - ``platform_means``: the mean over seeds of each platform;
    - ``platform_range``: the largest minus the smallest platform mean;
    - ``seed_std``: the pooled within-platform standard deviation over seeds (ddof=1);
    - ``range_over_seed_std``: their ratio;
    - ``F``: the one-way ANOVA F statistic (between-platform over within-platform variance,
      ``scipy.stats.f_oneway``);
    - ``p_perm``: a permutation p-value of F (platform labels shuffled over the runs of the
      configuration, ``n_permutations`` times; ``(1 + #{F* >= F}) / (1 + n)``, an F* equal to F up to
      rounding counting as a tie, hence >= F). With few seeds the
      smallest reachable p-value is coarse (2 platforms x 3 seeds: 1/10);
    - ``p_bh``: ``p_perm`` Benjamini-Hochberg-adjusted across the configurations
      (:func:`utae.study.inference.adjust_pvalues`). This per-configuration table is exploratory (it asks where to
      look, :func:`platform_effect` answers the question), so it bounds the share of false flags rather than
      the chance of any.

    This test ignores that runs of one seed on two platforms are paired; :func:`platform_effect` uses the
    pairing. With a single platform only ``seed_std`` is defined; the other columns are NaN.
    """
    if len(runs) == 0:
        raise ValueError("platform_vs_seed: no runs")
    if metric not in runs.columns:
        raise ValueError(f"platform_vs_seed: no column {metric!r} in runs")
    runs = with_dataset(runs)
    keys = config_columns(runs)
    rng = np.random.default_rng(seed)
    rows = []
    for key, sub in runs.groupby(keys, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        sub = sub.dropna(subset=[metric])
        values = sub[metric].to_numpy(dtype=float)
        plats, groups = np.unique(sub["platform"].to_numpy(), return_inverse=True)
        means = {p: float(values[groups == i].mean()) for i, p in enumerate(plats)}
        dof = len(values) - len(plats)
        ss_within = sum(((values[groups == i] - values[groups == i].mean()) ** 2).sum() for i in range(len(plats)))
        seed_std = math.sqrt(ss_within / dof) if dof > 0 else math.nan
        row: dict[str, Any] = dict(zip(keys, key))
        row.update(n_platforms=len(plats), n_runs=len(values),
                   platform_means="; ".join(f"{p}: {m:.4f}" for p, m in means.items()), seed_std=seed_std)
        if len(plats) >= 2:
            prange = max(means.values()) - min(means.values())
            f_obs = _anova_f(values, groups)
            p_perm = math.nan
            if math.isfinite(f_obs) or f_obs == math.inf:
                count = 0
                for _ in range(n_permutations):
                    f_perm = _anova_f(values, rng.permutation(groups))
                    # ties count: the same split with the labels swapped gives the same F up to rounding
                    count += bool(f_perm >= f_obs or math.isclose(f_perm, f_obs, rel_tol=1e-9))
                p_perm = (1 + count) / (1 + n_permutations)
            row.update(platform_range=prange,
                       range_over_seed_std=prange / seed_std if seed_std and math.isfinite(seed_std) else math.nan,
                       F=f_obs, p_perm=p_perm)
        else:
            row.update(platform_range=math.nan, range_over_seed_std=math.nan, F=math.nan, p_perm=math.nan)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["p_bh"] = inference.adjust_pvalues(table["p_perm"], "bh")
    return table


def platform_vs_seed_text(table: pd.DataFrame, metric: str = "test mIoU", alpha: float = 0.05) -> str:
    """A short, plain reading of :func:`platform_vs_seed`'s table, as Markdown."""
    if len(table) == 0:
        return "No runs to compare."
    n_configs = len(table)
    max_plat = int(table["n_platforms"].max())
    seed_std = table["seed_std"].dropna()
    spread = (f"the seed standard deviation of {metric} ranges from {seed_std.min():.4f} to {seed_std.max():.4f}"
              if len(seed_std) else "no configuration has two seeds on one platform, so even the seed spread "
              "cannot be measured")
    if max_plat < 2:
        return (f"All runs come from one platform, so only the spread between seeds can be measured: {spread} "
                f"over the {n_configs} configuration(s). Copy the `results/runs/<platform>/` folder of another "
                "machine next to this one and re-render to compare platforms.")
    comparable = table[table["n_platforms"] >= 2]
    p = comparable["p_bh"] if "p_bh" in comparable.columns else comparable["p_perm"]
    n_sig = int((p <= alpha).sum())
    ratio = comparable["range_over_seed_std"].dropna()
    parts = [f"{len(comparable)} of {n_configs} configuration(s) were run on two or more platforms; {spread}."]
    if len(ratio):
        parts.append(f"The difference between platform means is {ratio.min():.2g} to {ratio.max():.2g} times "
                     "the seed standard deviation.")
    min_p = comparable["p_perm"].min()
    min_bh = p.min()
    if n_sig:
        parts.append(f"At {n_sig} configuration(s) the permutation test puts the platform difference beyond "
                     f"what reshuffling seeds between platforms gives (Benjamini-Hochberg-adjusted p <= {alpha} "
                     f"across the {len(comparable)} configurations); this table is exploratory: read that as where "
                     "to look, and the paired platform effect as the answer.")
    else:
        parts.append(f"At no configuration does the platform difference exceed what reshuffling the runs between "
                     f"platforms gives (smallest permutation p = {min_p:.3g}, {min_bh:.3g} after the "
                     f"Benjamini-Hochberg adjustment across the {len(comparable)} configurations, threshold {alpha}): "
                     "with these seeds, the platforms are not distinguishable from seed-to-seed variation.")
    if comparable["n_runs"].min() <= 6:
        parts.append("With three seeds or fewer per platform the test has little power: a real but small platform "
                     "effect could go unseen.")
    return " ".join(parts)


# --------------------------------------------------------------------------------------------------
# Does the hardware change the results? Paired runs
# --------------------------------------------------------------------------------------------------

#: Metrics stored as fractions in [0, 1]: the platform-effect functions report them in points (x100).
FRACTION_METRICS = ("test_miou", "test_oa", "test_macro_f1", "val_miou", "val_oa", "train_oa")
#: The first columns of :func:`platform_effect`, in this order.
EFFECT_COLUMNS: tuple[str, ...] = ("metric", "platform_a", "platform_b", "n_pairs", "effect", "ci_low", "ci_high",
                                   "p_value", "p_holm", "same_seed_identical")
_EFFECT_EXTRA = ("max_abs_diff", "wilcoxon_p", "seed_sd", "diff_sd", "ci_half_width", "seeds_needed_1pt",
                 "seeds_needed_3pt", "n_configs", "seeds_per_config", "mean_a", "mean_b", "unit", "model",
                 "unpaired_reason")
_METRIC_WORDS = {"test_miou": "test mIoU", "test_oa": "test OA", "test_macro_f1": "test macro F1",
                 "val_miou": "val mIoU", "val_oa": "val OA", "train_oa": "train OA"}


def _scale(metric: str) -> tuple[float, str]:
    return (100.0, "points") if metric in FRACTION_METRICS else (1.0, "")


def paired_differences(runs: pd.DataFrame, metric: str, platform_a: str, platform_b: str) -> pd.DataFrame:
    """The runs of one (configuration, seed) on two platforms, side by side.

    A pair shares the configuration (:func:`config_columns`) and the seed, hence the initial weights, the
    data order and the noise draws: only the arithmetic of the two platforms differs.

    Returns:
        one row per pair, sorted by configuration and seed: the configuration columns, ``cfg_seed``,
        ``value_a`` and ``value_b`` (``metric`` on ``platform_a`` / ``platform_b``, as stored: fractions
        for mIoU and OA), ``diff = value_b - value_a``, ``run_id_a``, ``run_id_b``. Runs whose metric is
        NaN on either side, and runs without a partner, are left out.

    Raises:
        ValueError: a column is missing, a platform has no runs, or a platform has two runs of one
            (configuration, seed) -- then some setting outside :func:`config_columns` varies and the pairs
            would be ambiguous.
    """
    runs = with_dataset(runs)
    require_columns(runs, ["platform", "run_id", "cfg_seed", metric], "paired_differences(runs)")
    keys = [*config_columns(runs), "cfg_seed"]

    def side(platform: str, suffix: str) -> pd.DataFrame:
        sub = runs[runs["platform"] == platform]
        if sub.empty:
            raise ValueError(f"paired_differences: no runs of platform {platform!r}; platforms: "
                             f"{sorted(runs['platform'].unique())}")
        dup = sub[sub.duplicated(keys, keep=False)]
        if len(dup):
            raise ValueError(f"paired_differences: platform {platform!r} has several runs of one configuration "
                             f"and seed ({sorted(dup['run_id'])}); configuration columns: {keys}")
        return sub[[*keys, "run_id", metric]].rename(columns={"run_id": f"run_id_{suffix}", metric: f"value_{suffix}"})

    pairs = side(platform_a, "a").merge(side(platform_b, "b"), on=keys, how="inner")
    pairs = pairs.dropna(subset=["value_a", "value_b"])
    pairs["value_a"] = pairs["value_a"].astype(float)
    pairs["value_b"] = pairs["value_b"].astype(float)
    pairs["diff"] = pairs["value_b"] - pairs["value_a"]
    pairs = pairs[[*keys, "value_a", "value_b", "diff", "run_id_a", "run_id_b"]]
    return pairs.sort_values(keys, ignore_index=True)


def _block_codes(frame: pd.DataFrame, columns: Sequence[str]) -> np.ndarray:
    """An integer code per row for its configuration (the values of ``columns``)."""
    if frame.empty:
        return np.zeros(0, dtype=int)
    return frame.groupby(list(columns), dropna=False, sort=True).ngroup().to_numpy()


def _pooled_sd(values: np.ndarray, codes: np.ndarray) -> float:
    """The pooled within-group standard deviation (ddof 1 per group); NaN without a degree of freedom."""
    ss, dof = 0.0, 0
    for code in np.unique(codes):
        group = values[codes == code]
        ss += float(((group - group.mean()) ** 2).sum())
        dof += len(group) - 1
    return math.sqrt(ss / dof) if dof > 0 else math.nan


def _seeds_per_config(codes: np.ndarray) -> str:
    counts = np.bincount(codes) if len(codes) else np.zeros(0, dtype=int)
    counts = counts[counts > 0]
    if len(counts) == 0:
        return ""
    lo, hi = int(counts.min()), int(counts.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def _seeds_needed(diff_sd: float, n_configs: int, detect: float, alpha: float, power: float) -> float:
    """Seeds per configuration for a paired t-test to detect ``detect`` (same unit as ``diff_sd``) with
    ``power`` at level ``alpha``: the pairs of :func:`utae.study.inference.seeds_needed` (``TTestPower.solve_power``,
    at least 2), divided by the number of configurations and rounded up."""
    if not n_configs > 0:
        return math.nan
    pairs = inference.seeds_needed(diff_sd, detect, alpha, power)
    return float(math.ceil(pairs / n_configs)) if math.isfinite(pairs) else math.nan


def _empty_row() -> dict[str, Any]:
    """A row of :func:`platform_effect` without pairs: every statistic undefined."""
    return dict(n_pairs=0, effect=math.nan, ci_low=math.nan, ci_high=math.nan, p_value=math.nan, p_holm=math.nan,
                same_seed_identical=None, max_abs_diff=math.nan, wilcoxon_p=math.nan, seed_sd=math.nan,
                diff_sd=math.nan, ci_half_width=math.nan, seeds_needed_1pt=math.nan, seeds_needed_3pt=math.nan,
                n_configs=0, seeds_per_config="", mean_a=math.nan, mean_b=math.nan, model="", unpaired_reason="")


def _effect_row(pairs: pd.DataFrame, configs: Sequence[str], scale: float, alpha: float, power: float,
                detect: float) -> dict[str, Any]:
    """The statistics of one platform pair and metric (see :func:`platform_effect`)."""
    import statsmodels.api as sm
    from scipy import stats

    d = pairs["diff"].to_numpy(dtype=float) * scale
    n = len(d)
    codes = _block_codes(pairs, configs)
    k = len(np.unique(codes))
    row = _empty_row()
    row.update(n_pairs=n, n_configs=k, seeds_per_config=_seeds_per_config(codes))
    if n == 0:
        return row
    values = np.concatenate([pairs["value_a"].to_numpy(float), pairs["value_b"].to_numpy(float)]) * scale
    row.update(same_seed_identical=bool((pairs["value_a"] == pairs["value_b"]).all()),
               max_abs_diff=float(np.abs(d).max()),
               seed_sd=_pooled_sd(values, np.concatenate([codes, codes + k])),
               mean_a=float(pairs["value_a"].mean() * scale), mean_b=float(pairs["value_b"].mean() * scale))
    if k >= 2 and n - k >= 1:
        # Sum-to-zero (deviation) coding of the configurations: the intercept is the unweighted mean over
        # configurations of the per-configuration mean difference.
        design = np.ones((n, k))
        for j in range(k - 1):
            design[:, j + 1] = (codes == j).astype(float) - (codes == k - 1).astype(float)
        row["model"] = "OLS diff ~ 1 + C(configuration, Sum)"
    else:
        design = np.ones((n, 1))  # one configuration, or one pair per configuration: a one-sample t-test
        row["model"] = "one-sample t on diff"
    if n - design.shape[1] < 1:
        row.update(effect=float(d.mean()), model="one pair: no test")
        return row
    fit = sm.OLS(d, design).fit()
    effect = float(fit.params[0])
    diff_sd = math.sqrt(max(float(fit.scale), 0.0))
    row.update(effect=effect, diff_sd=diff_sd,
               seeds_needed_1pt=_seeds_needed(diff_sd, k, detect, alpha, power),
               seeds_needed_3pt=_seeds_needed(diff_sd, k, inference.DETECT_POINTS, alpha, power))
    if float(fit.ssr) == 0.0:  # every difference equal (e.g. identical platforms): no spread to test against
        row.update(ci_low=effect, ci_high=effect, ci_half_width=0.0)
    else:
        low, high = fit.conf_int(alpha=alpha)[0]
        row.update(ci_low=float(low), ci_high=float(high), p_value=float(fit.pvalues[0]),
                   ci_half_width=float(high - low) / 2.0)
    if np.any(d != 0):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ties and zeros: scipy warns and falls back to the normal approximation
            row["wilcoxon_p"] = float(stats.wilcoxon(d).pvalue)
    return row


def platform_effect(
    runs: pd.DataFrame,
    metrics: Sequence[str] = ("test_miou", "test_oa"),
    alpha: float = 0.05,
    power: float = 0.8,
    detect: float = 1.0,
) -> pd.DataFrame:
    """Does the hardware change the results? One row per metric and pair of platforms.

    The design: a (configuration, seed) run on two platforms is a pair (:func:`paired_differences`); the
    configurations are blocks. ``diff = value_b - value_a`` (``platform_b`` minus ``platform_a``, platforms
    in sorted order) is modelled as ``diff ~ 1 + C(configuration, Sum)`` (statsmodels OLS, sum-to-zero
    contrasts): the intercept is the platform effect averaged over configurations (each configuration
    weighted equally), its t-based CI and p-value use the spread of the differences within configurations.
    Configurations enter as fixed effects: the answer is about these configurations. With one
    configuration, or one pair per configuration, the model is a one-sample t-test on ``diff``.

    Seed against platform: ``seed_sd`` is the pooled within-configuration standard deviation of the
    metric over seeds, within each platform (the runs of the pairs). Comparing it with the effect *and the
    CI bounds* says whether the seed or the platform moves the metric more, and whether the data could
    hide a platform effect as large as the seed spread (:func:`platform_answer_text`). This is used
    instead of a two-way variance decomposition because the platform effect is a fixed shift measured on
    the same seeds, while the seed spread is the random variation a single run of either platform has.

    Columns: :data:`EFFECT_COLUMNS` (``metric``, ``platform_a``, ``platform_b``, ``n_pairs``, ``effect``,
    ``ci_low``, ``ci_high`` (the ``1 - alpha`` CI), ``p_value`` (NaN when every difference is equal: no
    spread to test against), ``p_holm`` (``p_value`` Holm-adjusted across the pairs of platforms with paired
    runs, per metric: with three platforms or more the question is whether *any* platform differs from the
    others, a confirmatory family whose chance of any false "differs" Holm bounds at alpha;
    :func:`utae.study.inference.adjust_pvalues`), ``same_seed_identical`` (every pair exactly equal)), then
    ``max_abs_diff`` (largest |difference| of a pair), ``wilcoxon_p`` (scipy's signed-rank test on the
    differences, ignoring the blocks; a check that does not assume normality; NaN when all are 0),
    ``seed_sd``, ``diff_sd`` (the residual standard deviation of the differences), ``ci_half_width`` (half the
    CI's width: ``t(1 - alpha / 2, n_pairs - n_configs) * diff_sd / sqrt(n_pairs)`` when every configuration
    has the same number of pairs), ``seeds_needed_1pt`` and ``seeds_needed_3pt`` (seeds per configuration to
    detect an effect of ``detect``, and of 3 points, :data:`utae.study.inference.DETECT_POINTS`, with ``power`` at
    ``alpha``: statsmodels ``TTestPower.solve_power`` with effect size ``detect / diff_sd`` gives pairs,
    divided by ``n_configs`` and rounded up), ``n_configs``, ``seeds_per_config`` ("3" or "2-3"), ``mean_a``,
    ``mean_b``, ``unit``, ``model`` and ``unpaired_reason`` (see below). Effects, CIs, differences and
    standard deviations are in points (x100) for the fraction metrics (:data:`FRACTION_METRICS`, ``unit``
    "points"), in the metric's unit otherwise.

    A pair of platforms without paired runs, beside pairs that have some, gets a row with ``n_pairs`` 0 and
    ``unpaired_reason`` (:func:`utae.study.platform_family.unpaired_reason`, e.g. their runs were evaluated in other
    modes): it is not left out silently. When no two platforms share a pair (e.g. one platform), one row per metric and
    platform with ``platform_b`` empty, ``n_pairs`` 0 and only ``seed_sd``, ``n_configs`` and
    ``unpaired_reason`` filled: the seed spread is the one thing that can be measured.

    Raises:
        ValueError: no runs, or a metric column is missing; see also :func:`paired_differences`.
    """
    if len(runs) == 0:
        raise ValueError("platform_effect: no runs")
    runs = with_dataset(runs)
    require_columns(runs, ["platform", "run_id", "cfg_seed", *metrics], "platform_effect(runs)")
    configs = config_columns(runs)
    platforms = sorted(runs["platform"].unique())
    rows = []
    for metric in metrics:
        scale, unit = _scale(metric)
        for plat_a, plat_b in itertools.combinations(platforms, 2):
            pairs = paired_differences(runs, metric, plat_a, plat_b)
            if pairs.empty:
                row = dict(_empty_row(), unpaired_reason=unpaired_reason(runs, plat_a, plat_b))
            else:
                row = _effect_row(pairs, configs, scale, alpha, power, detect)
            rows.append(dict(metric=metric, platform_a=plat_a, platform_b=plat_b, **row, unit=unit))
    if not any(r["n_pairs"] > 0 for r in rows):
        rows = [_platform_row(runs, metric, plat, configs) for metric in metrics for plat in platforms]
    table = pd.DataFrame(rows, columns=[*EFFECT_COLUMNS, *_EFFECT_EXTRA])
    for _, family in table.groupby("metric", sort=False):  # one Holm family per metric: the pairs of platforms
        table.loc[family.index, "p_holm"] = inference.adjust_pvalues(family["p_value"], "holm")
    return table


def _platform_row(runs: pd.DataFrame, metric: str, platform: str, configs: Sequence[str]) -> dict[str, Any]:
    """The row of one platform when no two platforms pair: its seed spread, and why it pairs with no other."""
    scale, unit = _scale(metric)
    sub = runs[runs["platform"] == platform].dropna(subset=[metric])
    codes = _block_codes(sub, configs)
    others = [p for p in sorted(runs["platform"].unique()) if p != platform]
    row = _empty_row()
    row.update(n_configs=len(np.unique(codes)), seeds_per_config=_seeds_per_config(codes),
               seed_sd=_pooled_sd(sub[metric].to_numpy(float) * scale, codes),
               mean_a=float(sub[metric].mean() * scale) if len(sub) else math.nan,
               unpaired_reason="; ".join(f"with {o}: {unpaired_reason(runs, platform, o)}" for o in others))
    return dict(metric=metric, platform_a=platform, platform_b=None, **row, unit=unit)


def _number(value: float, digits: int = 1) -> str:
    """A number of points for prose: one decimal, or two significant digits when it would print as 0.0."""
    value = float(value)
    if value != 0 and abs(value) < 0.5 * 10 ** -digits:
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def _p(value: float) -> str:
    return "n/a" if not math.isfinite(value) else ("< 0.001" if value < 0.001 else f"= {value:.2g}")


def _design_words(row: Mapping[str, Any]) -> str:
    n, k, per = int(row["n_pairs"]), int(row["n_configs"]), str(row["seeds_per_config"])
    configs = f"{k} configuration{'s' if k != 1 else ''}"
    seeds = f"{per} seed{'s' if per != '1' else ''}"
    return f"{n} paired run{'s' if n != 1 else ''} ({configs} x {seeds})" if "-" not in per else \
        f"{n} paired runs ({configs}, {per} seeds each)"


def _pair_paragraph(rows: pd.DataFrame, metric: str, alpha: float) -> str:
    """The answer for one pair of platforms; ``rows`` are its rows of the effect table (one per metric). The
    verdict rests on the Holm-adjusted p-value (``p_holm``)."""
    main = rows[rows["metric"] == metric].iloc[0]
    a, b = main["platform_a"], main["platform_b"]
    words = _METRIC_WORDS.get(metric, metric)
    unit = f" {main['unit']}" if main["unit"] else ""
    seed_sd = float(main["seed_sd"])
    effect = float(main["effect"])
    parts = []
    if main["same_seed_identical"]:
        parts.append(f"Across {_design_words(main)}, {b} and {a} give exactly the same {words} "
                     "for every configuration and seed: the platform does not change the results of this study.")
        if math.isfinite(seed_sd):
            parts.append(f"Only the seed does (std {_number(seed_sd)}{unit} over seeds within a configuration).")
        return " ".join(parts)
    direction = "higher" if effect > 0 else "lower" if effect < 0 else "the same"
    size = (f"{_number(abs(effect))} {words.replace(' ', '-')} points {direction} than" if unit == " points"
            else f"{_number(abs(effect))} {direction} in {words} than")
    p, p_holm = float(main["p_value"]), float(main["p_holm"])
    ci_text = ""
    if math.isfinite(float(main["ci_low"])):
        ci_text = (f" (95% CI {_number(main['ci_low'])} to {_number(main['ci_high'])}, p {_p(p)}, Holm-adjusted "
                   f"p {_p(p_holm)}; Wilcoxon signed-rank p {_p(float(main['wilcoxon_p']))})")
    significant = math.isfinite(p_holm) and p_holm < alpha
    verdict = ("a detectable platform effect" if significant else
               "no detectable platform effect" if math.isfinite(p) else "too few pairs to test")
    lead = f"{b} scores the same as {a}" if direction == "the same" else f"{b} scores {size} {a}"
    parts.append(f"Across {_design_words(main)}, {lead}{ci_text}: {verdict}.")
    parts.extend(_other_metric_sentences(rows[rows["metric"] != metric]))
    parts.append(f"The same seed does not reproduce exactly across these platforms (max |difference| "
                 f"{_number(main['max_abs_diff'])}{unit}): a run of one seed follows a different path on each, as "
                 "small differences in the arithmetic grow during training into a different model.")
    parts.append(_seed_spread_sentence(main, words, unit, significant))
    if unit == " points":
        parts.append(inference.power_sentence(main["diff_sd"], main["ci_half_width"], main["seeds_needed_3pt"],
                                              main["seeds_needed_1pt"], "platform effect", " per configuration"))
    return " ".join(parts)


def _other_metric_sentences(others: pd.DataFrame) -> list[str]:
    """One sentence per other metric of the pair (rows of the effect table) that has an effect: its difference,
    CI and p-values."""
    out = []
    for _, other in others.iterrows():
        if not math.isfinite(float(other["effect"])):
            continue
        o_unit = " points" if other["unit"] == "points" else ""
        out.append(f"In {_METRIC_WORDS.get(other['metric'], other['metric'])} the difference is "
                   f"{float(other['effect']):+.1f}{o_unit} (95% CI {_number(other['ci_low'])} to "
                   f"{_number(other['ci_high'])}, p {_p(float(other['p_value']))}, Holm-adjusted p "
                   f"{_p(float(other['p_holm']))}).")
    return out


def _seed_spread_sentence(main: pd.Series, words: str, unit: str, significant: bool) -> str:
    """The seed spread set against the platform effect of ``main`` (the pair's row of the chosen metric) and
    against the largest effect its CI allows; or why it cannot be."""
    seed_sd = float(main["seed_sd"])
    effect = float(main["effect"])
    if math.isfinite(seed_sd) and math.isfinite(float(main["ci_low"])):
        bound = max(abs(float(main["ci_low"])), abs(float(main["ci_high"])))
        if bound < seed_sd:
            return (f"The seed spread (std {_number(seed_sd)}{unit} over seeds within a configuration) is larger "
                    f"than the platform effect, and larger than any effect the CI allows (at most "
                    f"{_number(bound)}{unit}): which seed a run uses changes {words} more than "
                    "which of these platforms runs it.")
        if significant and abs(effect) > seed_sd:
            return (f"The platform effect is larger than the seed spread (std {_number(seed_sd)}{unit}): the "
                    "platform moves the results more than the seed does.")
        return (f"The platform effect ({_number(abs(effect))}{unit}) is "
                f"{'smaller' if abs(effect) < seed_sd else 'not smaller'} than the seed spread (std "
                f"{_number(seed_sd)}{unit}), but the CI reaches {_number(bound)}{unit}: with these runs a "
                "platform effect as large as the seed spread cannot be ruled out.")
    if math.isfinite(seed_sd):
        return f"The seed spread is {_number(seed_sd)}{unit} (std over seeds within a configuration)."
    return ("With one seed per configuration the seed spread cannot be measured, so it cannot be set "
            "against the platform effect.")


def platform_answer_text(effect_table: pd.DataFrame, metric: str = "test_miou", alpha: float = 0.05,
                         runs: pd.DataFrame | None = None) -> str:
    """:func:`platform_effect`'s table in plain words (Markdown), for the top of the study report: the
    platform effect with its CI and p-value, whether a seed reproduces exactly, the seed spread against
    the effect, and the seeds needed for a 1-point effect. With one platform, the seed spread and how to
    add a platform. Given the ``runs`` (:func:`utae.study.runs.load_runs`), unpaired platforms whose runs were
    evaluated in other modes (``eval_mode``) are named as the reason."""
    require_columns(effect_table, EFFECT_COLUMNS, "platform_answer_text(effect_table)")
    head = "**Does the hardware change the results?**"
    if len(effect_table) == 0:
        return f"{head} No runs to compare."
    rows = effect_table[effect_table["metric"] == metric]
    if rows.empty:
        raise ValueError(f"platform_answer_text: no row for metric {metric!r}; metrics: "
                         f"{sorted(effect_table['metric'].unique())}")
    words = _METRIC_WORDS.get(metric, metric)
    paired = effect_table[effect_table["n_pairs"] > 0]
    if paired.empty:
        plats = sorted(rows["platform_a"])
        sds = {r["platform_a"]: float(r["seed_sd"]) for _, r in rows.iterrows()}
        unit = " points" if rows["unit"].iloc[0] == "points" else ""
        spread = "; ".join(f"{p}: {_number(s)}{unit}" for p, s in sds.items() if math.isfinite(s))
        spread_text = (f"the seed std of {words} within a configuration is {spread}" if spread else
                       "no configuration has two seeds, so even the seed spread cannot be measured")
        modes = ({} if runs is None or "eval_mode" not in runs.columns else
                 runs.groupby("platform")["eval_mode"].agg(lambda m: ", ".join(sorted(set(map(str, m))))).to_dict())
        if len(plats) == 1:
            where = f"All runs come from one platform ({plats[0]}), so only the spread between seeds can be measured"
        elif len(set(modes.values())) > 1:
            where = (f"The runs of the {len(plats)} platforms were evaluated in other modes ("
                     + "; ".join(f"{p}: {modes.get(p, 'unknown')}" for p in plats)
                     + "), which changes test scores by itself, so no run is paired across them and only the spread "
                     "between seeds can be measured")
        else:
            where = (f"No configuration and seed was run on two of the {len(plats)} platforms ({', '.join(plats)}), "
                     "so only the spread between seeds can be measured")
        return (f"{head} {where}: {spread_text}. To measure the platform effect, run the same sweep (same "
                "configurations and seeds) on another machine and add its runs with `make import` (see the "
                "README), which puts them in `runs/<its platform>/` next to these; then re-render this report.")
    parts = [head]
    family = family_text(effect_table, metric, alpha)
    if family:
        parts.append(family)
    for (a, b), group in paired.groupby(["platform_a", "platform_b"], sort=True):
        if (group["metric"] == metric).any():
            parts.append(_pair_paragraph(group, metric, alpha))
    return "\n\n".join(parts) if len(parts) > 1 else f"{head} No pair of platforms has paired runs of {metric}."
