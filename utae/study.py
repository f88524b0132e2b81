"""The study's tables and statistics, on the DataFrames of :mod:`utae.results` (used by ``notebooks/compare.ipynb``).

Tables:
    :func:`config_columns` (what defines a configuration), :func:`run_counts`, :func:`platform_settings`
    (how each platform computed, and what tells the machines apart), :func:`study_summary` (``summary.csv``),
    :func:`table_one` (the layout of the study's Table I), :func:`load_bench` and :func:`bench_table`.
Does the hardware change the results?
    :func:`paired_differences` pairs the runs of one (configuration, seed) on two platforms: same initial
    weights, data order and noise, only the arithmetic differs. :func:`platform_effect` gives the
    study-level platform effect with a 95% CI and p-value, whether a seed reproduces exactly across
    platforms, the seed spread and the seeds needed to detect a 1-point effect (``platform_effect.csv``);
    :func:`platform_answer_text` says it in words. :func:`platform_vs_seed` and
    :func:`platform_vs_seed_text` are the older per-configuration test (unpaired, permutation p-value).
Robustness to test-time noise:
    :func:`robustness` (normalised area under the score vs test-noise curve, and the noise level that
    halves the clean score, per run), :func:`robustness_summary` (over seeds) and :func:`robustness_table`.
Convergence:
    :func:`convergence` (per run: best validation epoch, how much the validation score moved over the last
    epochs, and whether the run has settled by the rule of the default study) and :func:`convergence_text`.
Folds:
    :func:`has_several_folds`, :func:`pooled_over_folds` (the official protocol: confusion matrices summed
    over the test folds) and :func:`fold_noise_bands` (per-fold mean and band at each test-noise level).

Scores stored as fractions (mIoU, OA, F1) are reported in points (x100) by the platform-effect functions.
Statistics come from scipy and statsmodels.
"""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utae.report import format_value

__all__ = [
    "config_columns",
    "run_counts",
    "platform_settings",
    "study_summary",
    "table_one",
    "platform_vs_seed",
    "platform_vs_seed_text",
    "load_bench",
    "bench_table",
    "NOT_RECORDED",
    "FRACTION_METRICS",
    "EFFECT_COLUMNS",
    "paired_differences",
    "platform_effect",
    "platform_answer_text",
    "robustness",
    "robustness_summary",
    "robustness_table",
    "convergence",
    "convergence_text",
    "has_several_folds",
    "pooled_over_folds",
    "fold_noise_bands",
]

# --------------------------------------------------------------------------------------------------
# Configurations, counts, settings, summary
# --------------------------------------------------------------------------------------------------

_EXTRA_CONFIG = ("cfg_noise_fraction", "cfg_noise_space", "cfg_noise_resample", "cfg_fold", "cfg_epochs",
                 "cfg_batch_size", "cfg_lr", "cfg_train_limit", "dataset")
_STUDY_METRICS = ("test_miou", "test_oa", "val_miou", "train_oa", "sec_per_epoch", "train_samples_per_s",
                  "eval_samples_per_s", "peak_mem_mb")


def _with_dataset(runs: pd.DataFrame) -> pd.DataFrame:
    if "cfg_dataset_root" in runs.columns and "dataset" not in runs.columns:
        runs = runs.assign(dataset=runs["cfg_dataset_root"].map(lambda p: Path(str(p)).name))
    return runs


def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {missing}; got {list(frame.columns)}")


def config_columns(runs: pd.DataFrame) -> list[str]:
    """The columns that define a configuration of the study: ``cfg_noise_std``, plus any of the
    fraction / space / fold / epochs / batch size / lr / train limit / dataset name that vary.

    Seeds and platforms are not configuration: they are what the study compares within a configuration.
    """
    runs = _with_dataset(runs)
    if "cfg_noise_std" not in runs.columns:
        raise ValueError(f"runs: missing column cfg_noise_std; got {list(runs.columns)}")
    cols = ["cfg_noise_std"]
    for col in _EXTRA_CONFIG:
        if col in runs.columns and runs[col].astype(str).nunique() > 1:
            cols.append(col)
    return cols


def run_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """How many finished runs (seeds) each platform has at each training noise level."""
    if len(runs) == 0:
        raise ValueError("run_counts: no runs")
    table = runs.pivot_table(index="platform", columns="cfg_noise_std", values="run_id", aggfunc="count", fill_value=0)
    table.columns = [f"noise {float(c):g}" for c in table.columns]
    return table


#: ``platform.json`` fields that tell machines apart (:data:`utae.platform.IDENTITY_COLUMNS`, plus the CPU
#: features that ``cpu_isa`` summarises). Runs written before they existed (no ``fingerprint``) show
#: "not recorded"; on a run that has a fingerprint, a null field (e.g. the GPU of a CPU run) shows "none".
_IDENTITY = (("plat_cpu_arch", "CPU arch"), ("plat_cpu_isa", "instruction set"),
             ("plat_torch_cpu_capability", "torch CPU kernels"), ("plat_cpu_features", "CPU features"),
             ("plat_gpu_name", "GPU"), ("plat_gpu_compute_capability", "GPU compute capability"),
             ("plat_host_kind", "host"), ("plat_fingerprint", "fingerprint"))
#: ``platform.json`` fields that say how each platform's runs computed: software, precision, determinism.
_SETTINGS = (("plat_torch_version", "torch"), ("plat_cuda_version", "CUDA"),
             ("plat_amp", "amp"), ("plat_float32_math", "float32 math"), ("plat_deterministic", "deterministic"),
             ("plat_deterministic_warn_only", "deterministic (warn only)"), ("plat_channels_last", "channels last"),
             ("plat_compile", "compile"), ("plat_world_size", "processes"), ("plat_torch_threads", "torch threads"))
NOT_RECORDED = "not recorded"


def _missing(value: Any) -> bool:
    return not isinstance(value, (list, tuple)) and pd.isna(value)


def platform_settings(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per platform: its device; what tells the machine apart (CPU architecture, instruction set,
    torch's CPU kernels, CPU features, GPU and its compute capability, host kind, fingerprint); its software;
    and the precision and determinism settings its runs used (``platform.json``).

    Where runs of a platform differ, the cell lists every value. A machine field of a run written before
    fingerprints existed (legacy ``platform.json``) is ``"not recorded"``; on a run with a fingerprint a null
    machine field is ``"none"`` (e.g. no GPU). A setting that no run recorded is left empty (but float32
    math on a CPU is always IEEE). ``deterministic`` False means ``cudnn.benchmark`` picked the fastest kernels.
    """
    if len(runs) == 0:
        raise ValueError("platform_settings: no runs")

    def values(series: pd.Series) -> str:
        seen = sorted({format_value(v) for v in series if not _missing(v)})
        return ", ".join(seen)

    if "plat_device_kind" in runs.columns:  # float32 on a CPU is IEEE (runs older than the field lack it)
        recorded = runs.get("plat_float32_math", pd.Series(None, index=runs.index, dtype=object))
        on_gpu = runs["plat_device_kind"] != "cpu"
        runs = runs.assign(plat_float32_math=recorded.where(recorded.notna() | on_gpu, "ieee"))
    legacy = (runs["plat_fingerprint"].map(_missing) if "plat_fingerprint" in runs.columns
              else pd.Series(True, index=runs.index))
    identity = {}
    for col, _ in _IDENTITY:
        column = runs[col] if col in runs.columns else pd.Series(None, index=runs.index, dtype=object)
        identity[col] = [NOT_RECORDED if _missing(v) and old else "none" if _missing(v) else v
                         for v, old in zip(column, legacy)]
    runs = runs.assign(**identity)
    present = [(col, label) for col, label in (("plat_device_name", "device"), *_IDENTITY, *_SETTINGS)
               if col in runs.columns]
    grouped = runs.groupby("platform")
    out = grouped.size().rename("runs").to_frame()
    for col, label in present:
        out[label] = grouped[col].agg(values)
    return out


def study_summary(runs: pd.DataFrame, metrics: Sequence[str] = _STUDY_METRICS) -> pd.DataFrame:
    """One row per (platform, configuration): the number of runs, the seeds, and the mean and std
    over seeds of each metric (columns ``<metric>_mean``, ``<metric>_std``). This is ``summary.csv``.
    """
    if len(runs) == 0:
        raise ValueError("study_summary: no runs")
    runs = _with_dataset(runs)
    keys = ["platform", *config_columns(runs)]
    present = [m for m in metrics if m in runs.columns]
    grouped = runs.groupby(keys, dropna=False)
    out = grouped.size().rename("n_runs").to_frame()
    if "cfg_seed" in runs.columns:
        out["seeds"] = grouped["cfg_seed"].agg(lambda s: " ".join(str(v) for v in sorted(s)))
    for metric in present:
        out[f"{metric}_mean"] = grouped[metric].mean()
        out[f"{metric}_std"] = grouped[metric].std(ddof=1)
    return out.reset_index()


def _mean_std(values: pd.Series) -> str:
    values = values.dropna()
    if len(values) == 0:
        return ""
    if len(values) == 1:
        return f"{values.iloc[0]:.3f} (n=1)"
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f} (n={len(values)})"


def table_one(runs: pd.DataFrame, metrics: Sequence[tuple[str, str]] = (("train_oa", "train accuracy"),
                                                                         ("val_miou", "val IoU"))) -> pd.DataFrame:
    """The layout of the study's Table I from our runs: one row a platform; for training without
    noise and for each training noise level, the train accuracy and the val mIoU, as
    ``mean ± std (n=seeds)``.

    Columns are a MultiIndex (condition, metric label); the condition is ``"without noise"`` for
    ``cfg_noise_std == 0`` and ``"with noise (std s)"`` otherwise.
    """
    if len(runs) == 0:
        raise ValueError("table_one: no runs")
    table: dict[tuple[str, str], dict[str, str]] = {}
    for level in sorted(runs["cfg_noise_std"].unique()):
        cond = "without noise" if float(level) == 0.0 else f"with noise (std {float(level):g})"
        sub = runs[runs["cfg_noise_std"] == level]
        for col, label in metrics:
            if col not in runs.columns:
                continue
            table[(cond, label)] = {plat: _mean_std(g[col]) for plat, g in sub.groupby("platform")}
    out = pd.DataFrame(table)
    out.columns = pd.MultiIndex.from_tuples(out.columns, names=["training", "score"])
    out.index.name = "platform"
    return out.fillna("")


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
      smallest reachable p-value is coarse (2 platforms x 3 seeds: 1/10).

    This test ignores that runs of one seed on two platforms are paired; :func:`platform_effect` uses the
    pairing. With a single platform only ``seed_std`` is defined; the other columns are NaN.
    """
    if len(runs) == 0:
        raise ValueError("platform_vs_seed: no runs")
    if metric not in runs.columns:
        raise ValueError(f"platform_vs_seed: no column {metric!r} in runs")
    runs = _with_dataset(runs)
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
    return pd.DataFrame(rows)


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
    p = comparable["p_perm"]
    n_sig = int((p <= alpha).sum())
    ratio = comparable["range_over_seed_std"].dropna()
    parts = [f"{len(comparable)} of {n_configs} configuration(s) were run on two or more platforms; {spread}."]
    if len(ratio):
        parts.append(f"The difference between platform means is {ratio.min():.2g} to {ratio.max():.2g} times "
                     "the seed standard deviation.")
    min_p = comparable["p_perm"].min()
    if n_sig:
        parts.append(f"At {n_sig} configuration(s) the permutation test puts the platform difference beyond "
                     f"what reshuffling seeds between platforms gives (p <= {alpha}); with this many runs per "
                     "cell, and one test per configuration, read that as a hint rather than a proof.")
    else:
        parts.append(f"At no configuration does the platform difference exceed what reshuffling the runs between "
                     f"platforms gives (smallest permutation p = {min_p:.3g}, threshold {alpha}): with these seeds, "
                     "the platforms are not distinguishable from seed-to-seed variation.")
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
                                   "p_value", "same_seed_identical")
_EFFECT_EXTRA = ("max_abs_diff", "wilcoxon_p", "seed_sd", "diff_sd", "seeds_needed_1pt", "n_configs",
                 "seeds_per_config", "mean_a", "mean_b", "unit", "model")
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
    runs = _with_dataset(runs)
    _require_columns(runs, ["platform", "run_id", "cfg_seed", metric], "paired_differences(runs)")
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
    ``power`` at level ``alpha``: ``TTestPower.solve_power`` gives the number of pairs, divided by the
    number of configurations and rounded up. At least 2 pairs (a t-test needs a degree of freedom)."""
    from statsmodels.stats.power import TTestPower

    if not (math.isfinite(diff_sd) and diff_sd > 0 and n_configs > 0):
        return math.nan
    effect_size = detect / diff_sd
    analysis = TTestPower()
    if analysis.power(effect_size=effect_size, nobs=2, alpha=alpha) >= power:
        pairs = 2.0
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pairs = float(analysis.solve_power(effect_size=effect_size, alpha=alpha, power=power))
    return float(math.ceil(pairs / n_configs)) if math.isfinite(pairs) else math.nan


def _empty_row() -> dict[str, Any]:
    """A row of :func:`platform_effect` without pairs: every statistic undefined."""
    return dict(n_pairs=0, effect=math.nan, ci_low=math.nan, ci_high=math.nan, p_value=math.nan,
                same_seed_identical=None, max_abs_diff=math.nan, wilcoxon_p=math.nan, seed_sd=math.nan,
                diff_sd=math.nan, seeds_needed_1pt=math.nan, n_configs=0, seeds_per_config="", mean_a=math.nan,
                mean_b=math.nan, model="")


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
               seeds_needed_1pt=_seeds_needed(diff_sd, k, detect, alpha, power))
    if float(fit.ssr) == 0.0:  # every difference equal (e.g. identical platforms): no spread to test against
        row.update(ci_low=effect, ci_high=effect)
    else:
        low, high = fit.conf_int(alpha=alpha)[0]
        row.update(ci_low=float(low), ci_high=float(high), p_value=float(fit.pvalues[0]))
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
    """Does the hardware change the results? One row per metric and pair of platforms that share paired runs.

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
    spread to test against), ``same_seed_identical`` (every pair exactly equal)), then
    ``max_abs_diff`` (largest |difference| of a pair), ``wilcoxon_p`` (scipy's signed-rank test on the
    differences, ignoring the blocks; a check that does not assume normality; NaN when all are 0),
    ``seed_sd``, ``diff_sd`` (the residual standard deviation of the differences), ``seeds_needed_1pt``
    (seeds per configuration to detect an effect of ``detect`` with ``power`` at ``alpha``: statsmodels
    ``TTestPower.solve_power`` with effect size ``detect / diff_sd`` gives pairs, divided by ``n_configs``
    and rounded up), ``n_configs``, ``seeds_per_config`` ("3" or "2-3"), ``mean_a``, ``mean_b``, ``unit``
    and ``model``. Effects, CIs, differences and standard deviations are in points (x100) for the
    fraction metrics (:data:`FRACTION_METRICS`, ``unit`` "points"), in the metric's unit otherwise.

    When no two platforms share a pair (e.g. one platform), one row per metric and platform with
    ``platform_b`` empty, ``n_pairs`` 0 and only ``seed_sd`` and ``n_configs`` filled: the seed spread is
    the one thing that can be measured.

    Raises:
        ValueError: no runs, or a metric column is missing; see also :func:`paired_differences`.
    """
    if len(runs) == 0:
        raise ValueError("platform_effect: no runs")
    runs = _with_dataset(runs)
    _require_columns(runs, ["platform", "run_id", "cfg_seed", *metrics], "platform_effect(runs)")
    configs = config_columns(runs)
    platforms = sorted(runs["platform"].unique())
    rows = []
    for metric in metrics:
        scale, unit = _scale(metric)
        for plat_a, plat_b in itertools.combinations(platforms, 2):
            pairs = paired_differences(runs, metric, plat_a, plat_b)
            if pairs.empty:
                continue
            stats_row = _effect_row(pairs, configs, scale, alpha, power, detect)
            rows.append(dict(metric=metric, platform_a=plat_a, platform_b=plat_b, **stats_row, unit=unit))
    if not rows:
        for metric in metrics:
            scale, unit = _scale(metric)
            for plat in platforms:
                sub = runs[runs["platform"] == plat].dropna(subset=[metric])
                codes = _block_codes(sub, configs)
                row = _empty_row()
                row.update(n_configs=len(np.unique(codes)), seeds_per_config=_seeds_per_config(codes),
                           seed_sd=_pooled_sd(sub[metric].to_numpy(float) * scale, codes),
                           mean_a=float(sub[metric].mean() * scale) if len(sub) else math.nan)
                rows.append(dict(metric=metric, platform_a=plat, platform_b=None, **row, unit=unit))
    columns = [*EFFECT_COLUMNS, *_EFFECT_EXTRA]
    return pd.DataFrame(rows, columns=columns)


def _num(value: float, digits: int = 1) -> str:
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
    """The answer for one pair of platforms; ``rows`` are its rows of the effect table (one per metric)."""
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
            parts.append(f"Only the seed does (std {_num(seed_sd)}{unit} over seeds within a configuration).")
        return " ".join(parts)
    direction = "higher" if effect > 0 else "lower" if effect < 0 else "the same"
    size = (f"{_num(abs(effect))} {words.replace(' ', '-')} points {direction} than" if unit == " points"
            else f"{_num(abs(effect))} {direction} in {words} than")
    p = float(main["p_value"])
    ci_text = ""
    if math.isfinite(float(main["ci_low"])):
        ci_text = (f" (95% CI {_num(main['ci_low'])} to {_num(main['ci_high'])}, p {_p(p)}; "
                   f"Wilcoxon signed-rank p {_p(float(main['wilcoxon_p']))})")
    significant = math.isfinite(p) and p < alpha
    verdict = ("a detectable platform effect" if significant else
               "no detectable platform effect" if math.isfinite(p) else "too few pairs to test")
    lead = f"{b} scores the same as {a}" if direction == "the same" else f"{b} scores {size} {a}"
    parts.append(f"Across {_design_words(main)}, {lead}{ci_text}: {verdict}.")
    for _, other in rows[rows["metric"] != metric].iterrows():
        if not math.isfinite(float(other["effect"])):
            continue
        o_unit = " points" if other["unit"] == "points" else ""
        parts.append(f"In {_METRIC_WORDS.get(other['metric'], other['metric'])} the difference is "
                     f"{float(other['effect']):+.1f}{o_unit} (95% CI {_num(other['ci_low'])} to "
                     f"{_num(other['ci_high'])}, p {_p(float(other['p_value']))}).")
    parts.append(f"The same seed does not reproduce exactly across these platforms (max |difference| "
                 f"{_num(main['max_abs_diff'])}{unit}): a run of one seed follows a different path on each, as "
                 "small differences in the arithmetic grow during training into a different model.")
    if math.isfinite(seed_sd) and math.isfinite(float(main["ci_low"])):
        bound = max(abs(float(main["ci_low"])), abs(float(main["ci_high"])))
        if bound < seed_sd:
            parts.append(f"The seed spread (std {_num(seed_sd)}{unit} over seeds within a configuration) is larger "
                         f"than the platform effect, and larger than any effect the CI allows (at most "
                         f"{_num(bound)}{unit}): which seed a run uses changes {words} more than "
                         "which of these platforms runs it.")
        elif significant and abs(effect) > seed_sd:
            parts.append(f"The platform effect is larger than the seed spread (std {_num(seed_sd)}{unit}): the "
                         "platform moves the results more than the seed does.")
        else:
            parts.append(f"The platform effect ({_num(abs(effect))}{unit}) is "
                         f"{'smaller' if abs(effect) < seed_sd else 'not smaller'} than the seed spread (std "
                         f"{_num(seed_sd)}{unit}), but the CI reaches {_num(bound)}{unit}: with these runs a "
                         "platform effect as large as the seed spread cannot be ruled out.")
    elif math.isfinite(seed_sd):
        parts.append(f"The seed spread is {_num(seed_sd)}{unit} (std over seeds within a configuration).")
    else:
        parts.append("With one seed per configuration the seed spread cannot be measured, so it cannot be set "
                     "against the platform effect.")
    needed = float(main["seeds_needed_1pt"])
    if math.isfinite(needed) and unit == " points":
        parts.append(f"Detecting a 1-point platform effect (alpha 0.05, power 0.8) at this spread of the paired "
                     f"differences (sd {_num(main['diff_sd'])} points) would take about {int(needed)} seed(s) per "
                     "configuration.")
    return " ".join(parts)


def platform_answer_text(effect_table: pd.DataFrame, metric: str = "test_miou", alpha: float = 0.05) -> str:
    """:func:`platform_effect`'s table in plain words (Markdown), for the top of the study report: the
    platform effect with its CI and p-value, whether a seed reproduces exactly, the seed spread against
    the effect, and the seeds needed for a 1-point effect. With one platform, the seed spread and how to
    add a platform."""
    _require_columns(effect_table, EFFECT_COLUMNS, "platform_answer_text(effect_table)")
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
        spread = "; ".join(f"{p}: {_num(s)}{unit}" for p, s in sds.items() if math.isfinite(s))
        spread_text = (f"the seed std of {words} within a configuration is {spread}" if spread else
                       "no configuration has two seeds, so even the seed spread cannot be measured")
        where = (f"All runs come from one platform ({plats[0]}), so only the spread between seeds can be measured"
                 if len(plats) == 1 else
                 f"No configuration and seed was run on two of the {len(plats)} platforms ({', '.join(plats)}), so "
                 "only the spread between seeds can be measured")
        return (f"{head} {where}: {spread_text}. To measure the platform effect, run the same sweep (same "
                "configurations and seeds) on another machine and add its runs with `make import` (see the "
                "README), which puts them in `runs/<its platform>/` next to these; then re-render this report.")
    parts = [head]
    for (a, b), group in paired.groupby(["platform_a", "platform_b"], sort=True):
        if (group["metric"] == metric).any():
            parts.append(_pair_paragraph(group, metric, alpha))
    return "\n\n".join(parts) if len(parts) > 1 else f"{head} No pair of platforms has paired runs of {metric}."


# --------------------------------------------------------------------------------------------------
# Robustness to test-time noise
# --------------------------------------------------------------------------------------------------


def _half_level(x: np.ndarray, y: np.ndarray, clean: float) -> float:
    """The first test-noise level where ``y`` falls to ``clean / 2``, by linear interpolation between the
    tested levels ``x`` (sorted); NaN when it never does."""
    target = clean / 2.0
    below = np.flatnonzero(y <= target)
    if len(below) == 0:
        return math.nan
    i = int(below[0])
    if i == 0:
        return float(x[0])
    x0, x1, y0, y1 = float(x[i - 1]), float(x[i]), float(y[i - 1]), float(y[i])
    return x0 + (y0 - target) * (x1 - x0) / (y0 - y1)


def robustness(test_noise: pd.DataFrame, metric: str = "miou") -> pd.DataFrame:
    """How well each run holds up under test-time noise, from its score against the test-noise std.

    ``test_noise`` is :func:`utae.results.load_test_noise`'s frame (one row per run and test-noise level).
    Per run (platform, run_id), with ``s`` the tested stds (sorted) and ``m(s)`` the ``metric``:

    - ``clean``: ``m(0)`` (NaN if the run has no level 0);
    - ``auc``: the normalised area under the curve, ``trapezoid(m, s) / (clean * (max s - min s))``
      (``scipy.integrate.trapezoid``): 1 means no loss at any tested level, 0.5 e.g. a linear fall to zero;
      NaN with fewer than two levels or a clean score of 0;
    - ``half_std``: the test-noise std at which ``m`` first falls to half of ``clean`` (linear
      interpolation between the two tested levels around the crossing); **NaN when it never does within
      the tested range** (``half_reached`` False: the level is above ``max_test_std``);
    - ``half_reached``, ``max_test_std``, ``n_levels``.

    Other columns of ``test_noise`` that are constant within a run (``cfg_noise_std``, ``cfg_seed``, any
    ``cfg_*`` merged in) are kept.
    """
    from scipy.integrate import trapezoid

    _require_columns(test_noise, ["platform", "run_id", "test_noise_std", metric], "robustness(test_noise)")
    keep = [c for c in test_noise.columns if c.startswith("cfg_")]
    rows = []
    for (plat, run_id), sub in test_noise.groupby(["platform", "run_id"], sort=True):
        sub = sub.dropna(subset=[metric]).sort_values("test_noise_std")
        x = sub["test_noise_std"].to_numpy(dtype=float)
        y = sub[metric].to_numpy(dtype=float)
        if len(np.unique(x)) != len(x):
            raise ValueError(f"robustness: run {plat}/{run_id} has test-noise levels more than once: {x.tolist()}")
        clean = float(y[x == 0.0][0]) if (x == 0.0).any() else math.nan
        span = float(x.max() - x.min()) if len(x) else math.nan
        ok = len(x) >= 2 and math.isfinite(clean) and clean > 0 and span > 0
        auc = float(trapezoid(y, x) / (clean * span)) if ok else math.nan
        half = _half_level(x, y, clean) if math.isfinite(clean) and clean > 0 else math.nan
        row = {"platform": plat, "run_id": run_id}
        row.update({c: sub[c].iloc[0] if len(sub) else math.nan for c in keep})
        row.update(clean=clean, auc=auc, half_std=half, half_reached=bool(math.isfinite(half)),
                   max_test_std=float(x.max()) if len(x) else math.nan, n_levels=len(x))
        rows.append(row)
    columns = ["platform", "run_id", *keep, "clean", "auc", "half_std", "half_reached", "max_test_std", "n_levels"]
    return pd.DataFrame(rows, columns=columns)


def robustness_summary(table: pd.DataFrame, keys: Sequence[str] = ("platform", "cfg_noise_std")) -> pd.DataFrame:
    """:func:`robustness` over seeds: one row per ``keys`` (default platform and training-noise level) with
    ``n`` runs, the mean and std (ddof 1) over runs of ``clean``, ``auc`` and ``half_std``, and
    ``n_half_reached``. ``half_std_mean``/``_std`` are NaN unless every run reached half its clean score
    within the tested range (a mean over the runs that did would understate the level)."""
    _require_columns(table, [*keys, "clean", "auc", "half_std", "half_reached"], "robustness_summary(table)")
    if table.empty:
        raise ValueError("robustness_summary: no runs")
    grouped = table.groupby(list(keys), dropna=False)
    out = grouped.size().rename("n").to_frame()
    for col in ("clean", "auc"):
        out[f"{col}_mean"] = grouped[col].mean()
        out[f"{col}_std"] = grouped[col].std(ddof=1)
    out["n_half_reached"] = grouped["half_reached"].sum().astype(int)
    all_reached = out["n_half_reached"] == out["n"]
    out["half_std_mean"] = grouped["half_std"].mean().where(all_reached)
    out["half_std_std"] = grouped["half_std"].std(ddof=1).where(all_reached)
    out["max_test_std"] = grouped["max_test_std"].max()
    return out.reset_index()


def robustness_table(summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`robustness_summary` as text for a report: per row, ``n`` and ``mean ± std`` of the clean score,
    the normalised AUC and the half-score test-noise std; a half level that some runs never reached reads
    ``> max (k of n reached)`` (empty when no test-noise level above 0 was tested)."""
    _require_columns(summary, ["n", "clean_mean", "clean_std", "auc_mean", "auc_std", "n_half_reached",
                               "half_std_mean", "half_std_std", "max_test_std"], "robustness_table(summary)")

    def pm(mean: float, std: float, digits: int) -> str:
        if not math.isfinite(mean):
            return ""
        return f"{mean:.{digits}f}" if not math.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"

    keys = [c for c in summary.columns if c not in ("n", "clean_mean", "clean_std", "auc_mean", "auc_std",
                                                    "n_half_reached", "half_std_mean", "half_std_std",
                                                    "max_test_std")]
    out = summary[keys].copy()
    out["n"] = summary["n"]
    out["clean score"] = [pm(m, s, 3) for m, s in zip(summary["clean_mean"], summary["clean_std"])]
    out["normalised AUC"] = [pm(m, s, 3) for m, s in zip(summary["auc_mean"], summary["auc_std"])]
    out["test noise std at half the clean score"] = [
        pm(m, s, 2) if k == n else "" if not (math.isfinite(mx) and mx > 0) else f"> {mx:g} ({k} of {n} reached)"
        for m, s, k, n, mx in zip(summary["half_std_mean"], summary["half_std_std"], summary["n_half_reached"],
                                  summary["n"], summary["max_test_std"])]
    return out


# --------------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Convergence
# --------------------------------------------------------------------------------------------------


def convergence(histories: pd.DataFrame, metric: str = "val_miou", last: int = 3,
                flat_points: float = 0.5) -> pd.DataFrame:
    """Has each run settled by the end of its training?

    A run has converged when its best epoch (by ``metric``) comes before its last epoch, or when ``metric``
    moved by less than ``flat_points`` points (x100) over its last ``last`` epochs: then more epochs of the same
    schedule would not change its model much. A run with fewer than ``last`` epochs is not judged (NaN range,
    ``converged`` False).

    Args:
        histories: :func:`utae.results.load_histories` (columns platform, run_id, epoch and ``metric``).

    Returns:
        One row per run: platform, run_id, epochs, best_epoch, ``last_range`` (points over the last ``last``
        epochs), ``converged`` and ``why`` ("best before last", "flat", or "still improving").
    """
    _require_columns(histories, ["platform", "run_id", "epoch", metric], "convergence(histories)")
    if last < 2:
        raise ValueError(f"last must be at least 2 epochs, got {last}")
    rows = []
    for (platform, run_id), h in histories.groupby(["platform", "run_id"], sort=True):
        h = h.sort_values("epoch")
        values = h[metric].to_numpy(dtype=float)
        epochs = int(h["epoch"].max())
        best = int(h["epoch"].to_numpy()[int(np.nanargmax(values))])
        tail = values[-last:]
        spread = float(np.ptp(tail) * 100) if len(values) >= last else math.nan
        judged = len(values) >= last
        before = best < epochs
        flat = spread < flat_points
        why = ("too few epochs" if not judged else "best before last" if before else "flat" if flat
               else "still improving")
        rows.append({"platform": platform, "run_id": run_id, "epochs": epochs, "best_epoch": best,
                     "last_range": spread, "converged": judged and (before or flat), "why": why})
    table = pd.DataFrame(rows, columns=["platform", "run_id", "epochs", "best_epoch", "last_range", "converged", "why"])
    table.attrs.update(last=last, flat_points=flat_points)  # the rule, for convergence_text
    return table


def convergence_text(table: pd.DataFrame) -> str:
    """One paragraph on :func:`convergence`'s table: its rule, how many runs converged, per platform, and which
    did not."""
    if table.empty:
        return "No run has a training history (`history.csv`)."
    last, flat_points = table.attrs["last"], table.attrs["flat_points"]
    parts = []
    for platform, sub in table.groupby("platform", sort=True):
        n, ok = len(sub), int(sub["converged"].sum())
        spread = sub["last_range"].dropna()
        ranges = f" Over the last {last} epochs the validation mIoU moved by {spread.min():.1f} to " \
                 f"{spread.max():.1f} points (median {spread.median():.1f})." if len(spread) else ""
        late = sub.loc[~sub["converged"], "run_id"].tolist()
        tail = f" Still improving at the end: {', '.join(late)}." if late else ""
        parts.append(f"**{platform}**: {ok} of {n} runs converged, {int((sub['why'] == 'best before last').sum())} "
                     f"of them with their best epoch before the last.{ranges}{tail}")
    rule = (f"A run counts as converged when its best validation epoch comes before its last, or when its "
            f"validation mIoU moved by less than {flat_points:g} points over its last {last} epochs.")
    return rule + "\n\n" + "\n\n".join(parts)


def _fold_keys(runs: pd.DataFrame) -> list[str]:
    """Platform, the configuration without the fold, and the seed: what the folds of one model share."""
    return ["platform", *[c for c in config_columns(runs) if c != "cfg_fold"], "cfg_seed"]


def has_several_folds(runs: pd.DataFrame) -> bool:
    """Whether some (platform, configuration without the fold, seed) has runs of more than one ``cfg_fold``."""
    runs = _with_dataset(runs)
    if "cfg_fold" not in runs.columns or runs.empty:
        return False
    _require_columns(runs, ["platform", "cfg_seed"], "has_several_folds(runs)")
    return bool((runs.groupby(_fold_keys(runs), dropna=False)["cfg_fold"].nunique() > 1).any())


def _load_confusion(run_dir: str | os.PathLike[str]) -> np.ndarray:
    path = Path(run_dir) / "confusion.npy"
    try:
        cm = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from exc
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"{path}: expected a square (n, n) confusion matrix, got shape {cm.shape}")
    return cm


def pooled_over_folds(runs: pd.DataFrame, ignore_index: int | None = 19) -> pd.DataFrame:
    """The official protocol's scores: per (platform, configuration without the fold, seed), the clean-test
    confusion matrices (``<run_dir>/confusion.npy``, ``(n, n)``) summed over the test folds, scored with
    :func:`utae.metrics.scores`; plus the per-fold scores for a band.

    Columns: the keys, ``n_folds``, ``folds`` (e.g. "1 2 3"), ``pooled_oa``, ``pooled_miou``, and for
    ``oa`` and ``miou`` the per-fold ``fold_<m>_mean``, ``_std`` (ddof 1), ``_min``, ``_max``. Per-fold
    scores are recomputed from each fold's matrix with the same ``ignore_index``.

    Raises:
        ValueError: a column is missing, a group has one fold twice, or matrices have different shapes.
    """
    from utae.metrics import scores

    runs = _with_dataset(runs)
    _require_columns(runs, ["platform", "run_id", "run_dir", "cfg_seed", "cfg_fold"], "pooled_over_folds(runs)")
    keys = _fold_keys(runs)
    rows = []
    for key, sub in runs.groupby(keys, dropna=False, sort=True):
        folds = sub["cfg_fold"].tolist()
        if len(set(folds)) != len(folds):
            raise ValueError(f"pooled_over_folds: {dict(zip(keys, key))} has fold(s) more than once: "
                             f"{sorted(sub['run_id'])}")
        matrices = [_load_confusion(d) for d in sub["run_dir"]]
        if len({m.shape for m in matrices}) != 1:
            raise ValueError(f"pooled_over_folds: confusion matrices of {sorted(sub['run_dir'])} differ in shape")
        per_fold = [scores(m, ignore_index=ignore_index) for m in matrices]
        pooled = scores(np.sum(matrices, axis=0), ignore_index=ignore_index)
        row: dict[str, Any] = dict(zip(keys, key))
        row.update(n_folds=len(folds), folds=" ".join(str(f) for f in sorted(folds)),
                   pooled_oa=float(pooled["oa"]), pooled_miou=float(pooled["miou"]))
        for m in ("oa", "miou"):
            values = pd.Series([float(s[m]) for s in per_fold])
            row.update({f"fold_{m}_mean": values.mean(), f"fold_{m}_std": values.std(ddof=1),
                        f"fold_{m}_min": values.min(), f"fold_{m}_max": values.max()})
        rows.append(row)
    return pd.DataFrame(rows)


def fold_noise_bands(test_noise: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """Per (platform, configuration without the fold, seed, test-noise level): the mean, std (ddof 1), min
    and max over folds of ``miou`` and ``oa``. ``metrics.json`` stores only the scores of each noisy test
    level, not its confusion matrix, so the noisy levels cannot be pooled like :func:`pooled_over_folds`
    pools the clean one. ``runs`` (:func:`utae.results.load_runs`) supplies the fold and configuration."""
    runs = _with_dataset(runs)
    _require_columns(test_noise, ["platform", "run_id", "test_noise_std", "miou", "oa"], "fold_noise_bands(test_noise)")
    _require_columns(runs, ["platform", "run_id", "cfg_seed", "cfg_fold"], "fold_noise_bands(runs)")
    keys = _fold_keys(runs)
    extra = [c for c in dict.fromkeys([*keys, "cfg_fold"]) if c not in ("platform",)]
    merged = test_noise[["platform", "run_id", "test_noise_std", "miou", "oa"]].merge(
        runs[["platform", "run_id", *extra]], on=["platform", "run_id"], how="inner")
    grouped = merged.groupby([*keys, "test_noise_std"], dropna=False, sort=True)
    out = grouped["cfg_fold"].nunique().rename("n_folds").to_frame()
    for m in ("miou", "oa"):
        out[f"{m}_mean"] = grouped[m].mean()
        out[f"{m}_std"] = grouped[m].std(ddof=1)
        out[f"{m}_min"] = grouped[m].min()
        out[f"{m}_max"] = grouped[m].max()
    return out.reset_index()


# --------------------------------------------------------------------------------------------------
# Benchmarks
# --------------------------------------------------------------------------------------------------


def load_bench(bench_dir: str | os.PathLike[str]) -> dict[str, pd.DataFrame]:
    """Every ``*.csv`` of ``bench_dir`` (e.g. ``results/bench``), by file stem; empty when there are none."""
    bench_dir = Path(bench_dir)
    if not bench_dir.is_dir():
        return {}
    tables = {}
    for path in sorted(bench_dir.glob("*.csv")):
        try:
            tables[path.stem] = pd.read_csv(path)
        except (OSError, ValueError, pd.errors.ParserError) as exc:
            raise ValueError(f"cannot read benchmark table {path}: {exc}") from exc
    return tables


_BENCH_VALUES = ("train_samples_per_s", "train_speedup", "eval_samples_per_s", "train_step_ms", "eval_ms",
                 "peak_mem_mb", "train_tflops")


def bench_table(tables: Mapping[str, pd.DataFrame], values: Sequence[str] | None = None) -> pd.DataFrame:
    """Benchmark tables side by side: one row a benchmark setting, one column group a measure with
    one column a platform.

    Each table's platform is its ``platform`` column when it has one, else its file stem. The
    non-numeric (and boolean) columns form the row index. ``values`` are the measures shown (default:
    the throughputs, step times, peak memory and TFLOP/s that are present, else every numeric column).
    """
    if not tables:
        raise ValueError("bench_table: no benchmark tables")
    frames = []
    for stem, df in tables.items():
        df = df.copy()
        if "platform" not in df.columns:
            df["platform"] = stem
        frames.append(df)
    data = pd.concat(frames, ignore_index=True)

    def is_measure(col: str) -> bool:
        return pd.api.types.is_numeric_dtype(data[col]) and not pd.api.types.is_bool_dtype(data[col])

    numeric = [c for c in data.columns if c != "platform" and is_measure(c)]
    keys = [c for c in data.columns if c != "platform" and c not in numeric]
    if values is None:
        values = [c for c in _BENCH_VALUES if c in numeric] or numeric
    else:
        unknown = [c for c in values if c not in numeric]
        if unknown:
            raise ValueError(f"bench_table: no numeric column(s) {unknown}; numeric columns: {numeric}")
    values = [c for c in values if data[c].notna().any()]
    if not values:
        return data
    if not keys:
        return data.groupby("platform")[values].mean().T
    data[keys] = data[keys].astype(str)
    return data.pivot_table(index=keys, columns="platform", values=values, aggfunc="mean")
