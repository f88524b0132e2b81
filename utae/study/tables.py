"""The study's tables, on the DataFrames of :mod:`utae.study.runs` (used by ``notebooks/compare.ipynb``).

Tables:
    :func:`config_columns` (what defines a configuration), :func:`run_counts`, :func:`platform_settings`
    (how each platform computed, and what tells the machines apart), :func:`study_summary` (``summary.csv``),
    :func:`table_one` (the layout of the study's Table I), :func:`load_bench` and :func:`bench_table`.
Robustness to test-time noise:
    :func:`robustness` (normalised area under the score vs test-noise curve, and the noise level that
    halves the clean score, per run), :func:`robustness_summary` (over seeds) and :func:`robustness_table`.
Convergence:
    :func:`convergence` (per run: best validation epoch, how much the validation score moved over the last
    epochs, and whether the run has settled by the rule of the default study) and :func:`convergence_text`.
Folds:
    :func:`has_several_folds`, :func:`pooled_over_folds` (the official protocol: confusion matrices summed
    over the test folds) and :func:`fold_noise_bands` (per-fold mean and band at each test-noise level).

Whether the hardware changes the results (the paired platform effect) is :mod:`utae.study.platform_effect`; the
study loaded and its CSVs written in one call is :func:`utae.study.loading.load_study`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utae.util.checks import require_columns
from utae.util.format import format_value

__all__ = [
    "config_columns",
    "with_dataset",
    "AUGMENTATION_COLUMNS",
    "training_augmentation",
    "with_augmentation",
    "run_counts",
    "platform_settings",
    "study_summary",
    "table_one",
    "load_bench",
    "bench_table",
    "NOT_RECORDED",
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

_EXTRA_CONFIG = ("cfg_model", "cfg_model_options", "cfg_train_corruption", "cfg_noise_fraction", "cfg_noise_space",
                 "cfg_noise_resample", "cfg_fold", "cfg_epochs", "cfg_batch_size", "cfg_lr", "cfg_train_limit",
                 "cfg_val_limit", "cfg_test_limit", "dataset", "eval_mode")
_STUDY_METRICS = ("test_miou", "test_oa", "val_miou", "train_oa", "sec_per_epoch", "train_samples_per_s",
                  "eval_samples_per_s", "peak_mem_mb")


def with_dataset(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with a ``dataset`` column (the folder name of ``cfg_dataset_root``) where it has none, so that
    runs on two datasets are two configurations (:func:`config_columns`)."""
    if "cfg_dataset_root" in runs.columns and "dataset" not in runs.columns:
        runs = runs.assign(dataset=runs["cfg_dataset_root"].map(lambda p: Path(str(p)).name))
    return runs


#: The configuration columns that say how a run's training inputs were augmented (:func:`training_augmentation`).
AUGMENTATION_COLUMNS: tuple[str, ...] = ("cfg_noise_std", "cfg_noise_fraction", "cfg_noise_space", "cfg_noise_resample",
                                         "cfg_train_corruption")


def training_augmentation(noise_std: Any, train_corruption: Any = None) -> str:
    """A run's training augmentation in words: ``"none"`` (no noise, no ``train_corruption``), ``"gaussian σ=<std>"``
    (``noise_std`` > 0), ``"<kind> <severity>"`` or ``"<kind> <lo>-<hi>"`` for ``train_corruption`` (a
    ``config.json`` object ``{"kind", "severity", "fraction"}``, or its JSON text as :func:`utae.study.runs.load_runs`
    holds it; None or NaN for none), both joined by ``" + "``."""
    parts = []
    std = float(noise_std) if noise_std is not None and not _missing(noise_std) else 0.0
    if std > 0:
        parts.append(f"gaussian σ={std:g}")
    spec = train_corruption
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ValueError(f"train_corruption: expected a JSON object, got {train_corruption!r}") from exc
    if spec is not None and not (not isinstance(spec, Mapping) and _missing(spec)):
        if not isinstance(spec, Mapping) or not isinstance(spec.get("kind"), str) or "severity" not in spec:
            raise ValueError(f"train_corruption: expected {{'kind': str, 'severity': int or [lo, hi], "
                             f"'fraction': float}} or null, got {train_corruption!r}")
        sev = spec["severity"]
        sev_text = f"{sev[0]}-{sev[1]}" if isinstance(sev, (list, tuple)) else str(sev)
        parts.append(f"{spec['kind']} {sev_text}")
    return " + ".join(parts) if parts else "none"


def with_augmentation(runs: pd.DataFrame) -> pd.DataFrame:
    """``runs`` with an ``augmentation`` column (:func:`training_augmentation` of ``cfg_noise_std`` and
    ``cfg_train_corruption``; runs written before ``train_corruption`` existed have none)."""
    require_columns(runs, ["cfg_noise_std"], "with_augmentation(runs)")
    corruption = runs["cfg_train_corruption"] if "cfg_train_corruption" in runs.columns else [None] * len(runs)
    return runs.assign(augmentation=[training_augmentation(s, c) for s, c in zip(runs["cfg_noise_std"], corruption)])


def config_columns(runs: pd.DataFrame) -> list[str]:
    """The columns that define a configuration of the study: ``cfg_noise_std``, plus any of the model and its
    options / training corruption (``train_corruption``) / noise fraction / space / fold / epochs / batch size /
    lr / train, validation and test limits / dataset name that vary.

    Seeds and platforms are not configuration: they are what the study compares within a configuration.
    """
    runs = with_dataset(runs)
    if "cfg_noise_std" not in runs.columns:
        raise ValueError(f"runs: missing column cfg_noise_std; got {list(runs.columns)}")
    cols = ["cfg_noise_std"]
    for col in _EXTRA_CONFIG:
        if col in runs.columns and runs[col].astype(object).map(str).nunique() > 1:
            cols.append(col)
    return cols


def run_counts(runs: pd.DataFrame) -> pd.DataFrame:
    """How many finished runs (seeds) each platform has at each training noise level (at each training
    augmentation, :func:`with_augmentation`, where some run was trained on a corruption)."""
    if len(runs) == 0:
        raise ValueError("run_counts: no runs")
    if "cfg_train_corruption" in runs.columns and runs["cfg_train_corruption"].notna().any():
        runs = with_augmentation(runs)
        return runs.pivot_table(index="platform", columns="augmentation", values="run_id", aggfunc="count",
                                fill_value=0)
    table = runs.pivot_table(index="platform", columns="cfg_noise_std", values="run_id", aggfunc="count", fill_value=0)
    table.columns = [f"noise {float(c):g}" for c in table.columns]
    return table


#: ``platform.json`` fields that tell machines apart (:data:`utae.machine.record.IDENTITY_COLUMNS`, plus the CPU
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
             ("plat_compile", "compile"), ("plat_world_size", "processes"), ("plat_torch_threads", "torch threads"),
             ("eval_mode", "evaluation"))
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
    runs = with_dataset(runs)
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

    ``test_noise`` is :func:`utae.study.runs.load_test_noise`'s frame (one row per run and test-noise level).
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

    require_columns(test_noise, ["platform", "run_id", "test_noise_std", metric], "robustness(test_noise)")
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
    require_columns(table, [*keys, "clean", "auc", "half_std", "half_reached"], "robustness_summary(table)")
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
    require_columns(summary, ["n", "clean_mean", "clean_std", "auc_mean", "auc_std", "n_half_reached",
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
        histories: :func:`utae.study.runs.load_histories` (columns platform, run_id, epoch and ``metric``).

    Returns:
        One row per run: platform, run_id, epochs, best_epoch, ``last_range`` (points over the last ``last``
        epochs), ``converged`` and ``why`` ("best before last", "flat", or "still improving").
    """
    require_columns(histories, ["platform", "run_id", "epoch", metric], "convergence(histories)")
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


# --------------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------------


def _fold_keys(runs: pd.DataFrame) -> list[str]:
    """Platform, the configuration without the fold, and the seed: what the folds of one model share."""
    return ["platform", *[c for c in config_columns(runs) if c != "cfg_fold"], "cfg_seed"]


def has_several_folds(runs: pd.DataFrame) -> bool:
    """Whether some (platform, configuration without the fold, seed) has runs of more than one ``cfg_fold``."""
    runs = with_dataset(runs)
    if "cfg_fold" not in runs.columns or runs.empty:
        return False
    require_columns(runs, ["platform", "cfg_seed"], "has_several_folds(runs)")
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
    :func:`utae.pastis.metrics.scores`; plus the per-fold scores for a band.

    Columns: the keys, ``n_folds``, ``folds`` (e.g. "1 2 3"), ``pooled_oa``, ``pooled_miou``, and for
    ``oa`` and ``miou`` the per-fold ``fold_<m>_mean``, ``_std`` (ddof 1), ``_min``, ``_max``. Per-fold
    scores are recomputed from each fold's matrix with the same ``ignore_index``.

    Raises:
        ValueError: a column is missing, a group has one fold twice, or matrices have different shapes.
    """
    from utae.pastis.metrics import scores

    runs = with_dataset(runs)
    require_columns(runs, ["platform", "run_id", "run_dir", "cfg_seed", "cfg_fold"], "pooled_over_folds(runs)")
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
    pools the clean one. ``runs`` (:func:`utae.study.runs.load_runs`) supplies the fold and configuration."""
    runs = with_dataset(runs)
    require_columns(test_noise, ["platform", "run_id", "test_noise_std", "miou", "oa"], "fold_noise_bands(test_noise)")
    require_columns(runs, ["platform", "run_id", "cfg_seed", "cfg_fold"], "fold_noise_bands(runs)")
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
    data[keys] = data[keys].astype(object).map(str)
    return data.pivot_table(index=keys, columns="platform", values=values, aggfunc="mean")
