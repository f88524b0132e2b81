"""Scores under the corruptions of :mod:`utae.perturb.corruptions`: per run, per training augmentation, and in words.

Inputs are :func:`utae.study.runs.load_runs` (one row a run; its clean test scores) and
:func:`utae.study.runs.load_test_corruptions` (one row a run and tested ``(kind, severity)``). mIoU and OA are
fractions in the per-run tables and points (x100) in :func:`augmentation_table` (``robustness.csv``).

Per run and kind (:func:`corruption_scores`), as in the corruption benchmarks (ImageNet-C; the remote-sensing
suites' mPC and rPC), with ``m_s`` the test mIoU at severity ``s``:

- ``mpc``: the mean performance under corruption, the mean of ``m_s`` over the tested severities (1 to 5);
- ``rpc``: ``mpc / clean`` (the clean test mIoU);
- ``ce``: the corruption error relative to the clean-trained run of the same seed (:func:`clean_partners`),
  ``sum_s (1 - m_s) / sum_s (1 - m_s of the clean-trained run)`` over the severities both runs were tested at;
  1 for the clean-trained run itself, below 1 for a run that errs less under the corruption.

Per run (:func:`mean_corruption_error`): ``mce``, the mean CE over the kinds, and the mean mPC and rPC.

Pairing. A run's clean-trained partner shares its platform, its configuration (:func:`utae.study.tables.config_columns`)
except how training was augmented (:data:`utae.study.tables.AUGMENTATION_COLUMNS`), and its seed: hence its initial
weights and data order, as the platform effect pairs runs (:mod:`utae.study.platform_effect`). "Clean-trained" is the
augmentation ``"none"`` (:func:`utae.study.tables.training_augmentation`). A run without such a partner gets no CE and no
paired difference; :func:`corruption_scores` names it in ``attrs["notes"]``.

Per training augmentation and kind (:func:`augmentation_table`, written as ``robustness.csv``): mPC, rPC and CE,
mean and std over seeds, and the paired difference in mPC from the clean-trained model (same seed) with its
t-based 95% CI and p-value (``scipy.stats.ttest_1samp`` over the seed pairs), the p-value Holm-adjusted across
the table (the corruption study's confirmatory family, :mod:`utae.study.inference`), and the power of the comparison:
the standard deviation of the paired differences, the CI half-width the seeds give and the seeds needed to detect
3 points. :func:`robustness_answer_text` says it in words, by the adjusted p-values; :func:`severity_curves` gives
the mean and band over seeds of mIoU against severity (0 is the clean test) for :func:`utae.report.study_figures.corruption_curves`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from utae.study import inference
from utae.util.checks import require_columns
from utae.perturb.kinds import KINDS, SEVERITY_TABLE
from utae.study.tables import AUGMENTATION_COLUMNS, config_columns, with_augmentation, with_dataset

__all__ = [
    "CLEAN",
    "ALL_KINDS",
    "ROBUSTNESS_COLUMNS",
    "pairing_columns",
    "kinds_in_order",
    "clean_partners",
    "corruption_long",
    "corruption_scores",
    "mean_corruption_error",
    "severity_curves",
    "augmentation_table",
    "robustness_answer_text",
    "clean_trained_run",
    "unpaired_text",
    "severity_table",
    "augmentation_text_table",
]

#: The augmentation label of the clean-trained model (:func:`utae.study.tables.training_augmentation`).
CLEAN = "none"
#: The ``kind`` of :func:`augmentation_table`'s rows that average over every tested kind (mean mPC, rPC; mCE).
ALL_KINDS = "all kinds"
#: The columns of :func:`augmentation_table` after the platform and configuration columns.
ROBUSTNESS_COLUMNS: tuple[str, ...] = (
    "augmentation", "kind", "n_runs", "seeds", "clean_mean", "clean_std", "mpc_mean", "mpc_std", "rpc_mean",
    "rpc_std", "ce_mean", "ce_std", "n_pairs", "diff_mpc", "ci_low", "ci_high", "p_value", "p_holm", "diff_sd",
    "ci_half_width", "seeds_needed_3pt", "eval_mode")


def pairing_columns(runs: pd.DataFrame) -> list[str]:
    """The columns a run and its clean-trained partner share besides the seed: the platform and the configuration
    (:func:`utae.study.tables.config_columns`) without the augmentation columns."""
    runs = with_dataset(runs)
    return ["platform", *[c for c in config_columns(runs) if c not in AUGMENTATION_COLUMNS]]


def clean_partners(runs: pd.DataFrame) -> pd.DataFrame:
    """Each run's clean-trained partner: ``runs`` (:func:`utae.study.runs.load_runs`) with ``augmentation`` and
    ``clean_run_id`` (the run id of the run of augmentation ``"none"`` that shares :func:`pairing_columns` and
    ``cfg_seed``; None when there is none, or when there are several and the pair would be ambiguous).

    ``attrs["notes"]`` names the runs left without a partner, and why."""
    runs = with_augmentation(with_dataset(runs))
    require_columns(runs, ["platform", "run_id", "cfg_seed"], "clean_partners(runs)")
    keys = [*pairing_columns(runs), "cfg_seed"]
    clean = runs[runs["augmentation"] == CLEAN]
    notes = []
    counts = clean.groupby(keys, dropna=False)["run_id"].agg(list).reset_index()
    ambiguous = counts[counts["run_id"].map(len) > 1]
    for _, row in ambiguous.iterrows():
        notes.append(f"several clean-trained runs share {dict(zip(keys, row[keys]))} ({', '.join(row['run_id'])}): "
                     "their runs are not paired")
    unique = counts[counts["run_id"].map(len) == 1].assign(clean_run_id=lambda f: f["run_id"].map(lambda r: r[0]))
    out = runs.merge(unique[[*keys, "clean_run_id"]], on=keys, how="left")
    out["clean_run_id"] = pd.Series([r if isinstance(r, str) else None for r in out["clean_run_id"]], index=out.index,
                                    dtype=object)
    out.attrs["notes"] = notes + _lonely_notes(out)
    return out


def _lonely_notes(partners: pd.DataFrame) -> list[str]:
    """One note per augmented run of ``partners`` (:func:`clean_partners`) without a clean-trained partner."""
    lonely = partners[partners["clean_run_id"].isna() & (partners["augmentation"] != CLEAN)]
    return [f"{row['platform']}/{row['run_id']} ({row['augmentation']}) has no clean-trained run of seed "
            f"{row['cfg_seed']} with the same configuration: left out of the CE and the paired differences"
            for _, row in lonely.iterrows()]


def corruption_long(runs: pd.DataFrame, corruptions: pd.DataFrame) -> pd.DataFrame:
    """Per run and ``(kind, severity)``: test mIoU and OA, severity 0 being the clean test (``test_miou``,
    ``test_oa`` of ``runs``) for every kind the run was tested on.

    Columns: :func:`pairing_columns`, ``cfg_seed``, ``run_id``, ``augmentation``, ``eval_mode``, ``kind``,
    ``severity`` (0..5), ``miou``, ``oa``; sorted by platform, run, kind and severity. Runs without corruption
    results add no row."""
    require_columns(runs, ["platform", "run_id", "cfg_seed", "cfg_noise_std", "test_miou", "test_oa"],
                    "corruption_long(runs)")
    require_columns(corruptions, ["platform", "run_id", "kind", "severity", "miou", "oa"],
                    "corruption_long(corruptions)")
    runs = with_augmentation(with_dataset(runs))
    keys = pairing_columns(runs)
    # eval_mode comes with the corruption results (it may also be a pairing key, when the runs' modes differ)
    info = runs[[c for c in dict.fromkeys([*keys, "run_id", "cfg_seed", "augmentation", "test_miou", "test_oa"])
                 if c != "eval_mode"]]
    cols = ["platform", "run_id", "kind", "severity", "miou", "oa"]
    mode = corruptions["eval_mode"] if "eval_mode" in corruptions.columns else "padded_batches"
    tested = corruptions[cols].assign(eval_mode=mode)
    first = tested.groupby(["platform", "run_id", "kind"], sort=False).first().reset_index()
    clean = first[["platform", "run_id", "kind", "eval_mode"]].merge(
        runs[["platform", "run_id", "test_miou", "test_oa"]], on=["platform", "run_id"], how="inner")
    clean = clean.rename(columns={"test_miou": "miou", "test_oa": "oa"}).assign(severity=0)
    long = pd.concat([clean[tested.columns], tested], ignore_index=True)
    long = info.drop(columns=["test_miou", "test_oa"]).merge(long, on=["platform", "run_id"], how="inner")
    long["severity"] = long["severity"].astype(int)
    out_cols = [*dict.fromkeys([*keys, "cfg_seed", "run_id", "augmentation", "eval_mode", "kind", "severity",
                                "miou", "oa"])]
    return long[out_cols].sort_values(["platform", "run_id", "kind", "severity"], ignore_index=True)


def _ce(run: pd.DataFrame, partner: pd.DataFrame) -> tuple[float, int]:
    """CE of one run and kind against its partner's rows (both indexed by severity 1..5): over the shared
    severities, and their number."""
    shared = run.index.intersection(partner.index)
    if len(shared) == 0:
        return math.nan, 0
    num = float((1.0 - run.loc[shared]).sum())
    den = float((1.0 - partner.loc[shared]).sum())
    return (num / den if den > 0 else math.nan), len(shared)


def kinds_in_order(kinds: Sequence[str]) -> list[str]:
    """The distinct ``kinds`` in :data:`utae.perturb.kinds.KINDS` order, then any other (sorted), then
    ``all kinds``."""
    seen = set(kinds)
    known = [k for k in KINDS if k in seen]
    return [*known, *sorted(k for k in seen if k not in KINDS and k != ALL_KINDS),
            *([ALL_KINDS] if ALL_KINDS in seen else [])]


def corruption_scores(runs: pd.DataFrame, corruptions: pd.DataFrame) -> pd.DataFrame:
    """Per run and corruption kind: ``clean`` (test mIoU), ``mpc``, ``mpc_oa`` (the mean OA over severities),
    ``rpc``, ``n_severities``, ``clean_run_id`` and ``ce`` (see the module docstring), beside
    :func:`pairing_columns`, ``cfg_seed``, ``run_id``, ``augmentation`` and ``eval_mode``.

    ``ce`` is NaN for a run without a clean-trained partner, or whose partner was not tested on the kind (or at
    no shared severity), or whose partner makes no error at all. ``attrs["notes"]`` lists the runs left unpaired
    (:func:`clean_partners`).
    """
    long = corruption_long(runs, corruptions)
    partners = clean_partners(runs)
    keys = pairing_columns(runs)
    ambiguous = [n for n in partners.attrs["notes"] if n.startswith("several")]
    tested = set(zip(long["platform"], long["run_id"]))
    partners = partners[[(p, r) in tested for p, r in zip(partners["platform"], partners["run_id"])]]
    notes = ambiguous + _lonely_notes(partners)
    by_run = {(p, r, k): g.set_index("severity") for (p, r, k), g in long.groupby(["platform", "run_id", "kind"])}
    partner_of = {(p, r): c for p, r, c in zip(partners["platform"], partners["run_id"], partners["clean_run_id"])}
    rows = []
    for (plat, run_id, kind), g in by_run.items():
        sev = g[g.index > 0]
        clean = float(g.loc[0, "miou"]) if 0 in g.index else math.nan
        mpc = float(sev["miou"].mean()) if len(sev) else math.nan
        partner = partner_of.get((plat, run_id))
        ce = math.nan
        if partner is not None and (plat, partner, kind) in by_run:
            other = by_run[(plat, partner, kind)]
            ce, _ = _ce(sev["miou"], other[other.index > 0]["miou"])
        first = g.iloc[0]
        row = {c: first[c] for c in [*keys, "cfg_seed", "run_id", "augmentation", "eval_mode"]}
        row.update(kind=kind, n_severities=len(sev), clean=clean, mpc=mpc,
                   mpc_oa=float(sev["oa"].mean()) if len(sev) else math.nan,
                   rpc=mpc / clean if clean > 0 else math.nan, clean_run_id=partner, ce=ce)
        rows.append(row)
    columns = [*dict.fromkeys([*keys, "cfg_seed", "run_id", "augmentation", "eval_mode"]), "kind", "n_severities",
               "clean", "mpc", "mpc_oa", "rpc", "clean_run_id", "ce"]
    out = pd.DataFrame(rows, columns=columns)
    out["clean_run_id"] = pd.Series([r if isinstance(r, str) else None for r in out["clean_run_id"]], index=out.index,
                                    dtype=object)
    out.attrs["notes"] = notes
    return out


def mean_corruption_error(scores: pd.DataFrame) -> pd.DataFrame:
    """Per run, over the kinds of :func:`corruption_scores`: ``n_kinds``, ``mpc`` and ``rpc`` (means over the
    kinds) and ``mce`` (the mean CE over the kinds; NaN unless every kind has a CE, so that runs tested on
    different kinds are never averaged over different sets)."""
    require_columns(scores, ["platform", "run_id", "kind", "mpc", "rpc", "ce"], "mean_corruption_error(scores)")
    keep = [c for c in scores.columns if c not in ("kind", "n_severities", "mpc", "mpc_oa", "rpc", "ce")]
    grouped = scores.groupby(["platform", "run_id"], sort=True)
    out = grouped[keep].first().drop(columns=["platform", "run_id"], errors="ignore")
    out["n_kinds"] = grouped["kind"].nunique()
    out["mpc"] = grouped["mpc"].mean()
    out["rpc"] = grouped["rpc"].mean()
    out["mce"] = grouped["ce"].mean().where(grouped["ce"].apply(lambda s: bool(s.notna().all())))
    return out.reset_index()


def _line_label(keys: Sequence[str], values: Sequence[Any], augmentation: str, several: bool) -> str:
    if not several:
        return augmentation
    context = ", ".join(f"{k.removeprefix('cfg_')} {v}" for k, v in zip(keys, values) if k != "platform")
    platform = dict(zip(keys, values)).get("platform", "")
    return f"{augmentation} ({platform}{', ' + context if context else ''})"


def severity_curves(runs: pd.DataFrame, corruptions: pd.DataFrame) -> pd.DataFrame:
    """mIoU against severity per training augmentation and kind, over seeds: columns :func:`pairing_columns`,
    ``augmentation``, ``label`` (the augmentation, with the platform and configuration when the study has
    several), ``kind``, ``severity`` (0 = clean test), ``n`` runs, ``miou_mean``, ``miou_std`` (ddof 1; NaN for
    one run), ``miou_min``, ``miou_max``."""
    long = corruption_long(runs, corruptions)
    keys = pairing_columns(runs)
    grouped = long.groupby([*keys, "augmentation", "kind", "severity"], dropna=False, sort=True)["miou"]
    out = grouped.agg(n="count", miou_mean="mean", miou_std=lambda s: s.std(ddof=1), miou_min="min",
                      miou_max="max").reset_index()
    order = {k: i for i, k in enumerate(kinds_in_order(list(out["kind"])))}
    out = out.sort_values([*keys, "augmentation", "kind", "severity"], key=lambda c: c.map(order) if c.name == "kind"
                          else c, ignore_index=True)
    out = out.sort_values("augmentation", key=lambda c: c != CLEAN, kind="stable", ignore_index=True)
    several = len(out.groupby(keys, dropna=False)) > 1 if len(out) else False
    out.insert(len(keys) + 1, "label", [_line_label(keys, [r[k] for k in keys], r["augmentation"], several)
                                        for _, r in out.iterrows()])
    return out


def _t_interval(d: np.ndarray, alpha: float) -> tuple[float, float, float]:
    """``(ci_low, ci_high, p_value)`` of the mean of ``d`` by a one-sample t-test (scipy); with every value
    equal the interval is the value itself and the p-value NaN; with fewer than two values all NaN."""
    from scipy import stats

    if len(d) < 2:
        return math.nan, math.nan, math.nan
    if np.allclose(d, d[0], rtol=1e-9, atol=1e-9):
        # every difference equal up to the rounding of the means they come from: no spread to test against
        return float(d.mean()), float(d.mean()), math.nan
    test = stats.ttest_1samp(d, 0.0)
    ci = test.confidence_interval(confidence_level=1.0 - alpha)
    return float(ci.low), float(ci.high), float(test.pvalue)


def _mean_std(values: pd.Series) -> tuple[float, float]:
    values = values.dropna().astype(float)
    if len(values) == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def augmentation_table(scores: pd.DataFrame, alpha: float = 0.05) -> pd.DataFrame:
    """The training augmentation x corruption kind table (``robustness.csv``).

    One row per :func:`pairing_columns` group, ``augmentation`` and ``kind`` (each kind, then ``"all kinds"``:
    per run the mean mPC and rPC over the kinds and the mCE, :func:`mean_corruption_error`). Columns:
    the group columns, then :data:`ROBUSTNESS_COLUMNS`: ``n_runs``, ``seeds``; ``clean_mean``/``_std``,
    ``mpc_mean``/``_std`` (points, mean and std over seeds, ddof 1), ``rpc_mean``/``_std``, ``ce_mean``/``_std``
    (ratios); ``n_pairs`` (seeds with a clean-trained partner), ``diff_mpc`` (the mean over those seeds of the
    run's mPC minus its partner's, points), ``ci_low``, ``ci_high`` (the ``1 - alpha`` t interval of that mean,
    ``scipy.stats.ttest_1samp``; NaN with fewer than two pairs), ``p_value`` (NaN when every difference is
    equal), ``p_holm`` (``p_value`` Holm-adjusted across every tested row of the same platform and configuration,
    the ``all kinds`` rows included: the table is the corruption study's confirmatory family, so one false
    "helps" or "hurts" anywhere in it is what alpha bounds; :func:`utae.study.inference.adjust_pvalues`), ``diff_sd``
    (the standard deviation of the paired differences, ddof 1, points), ``ci_half_width`` (``t(0.975, n - 1) *
    diff_sd / sqrt(n_pairs)``, half the CI's width), ``seeds_needed_3pt`` (the pairs a two-sided paired t-test
    needs to detect 3 points with power 0.8 at alpha 0.05, :func:`utae.study.inference.seeds_needed`), and
    ``eval_mode`` (the runs' evaluation modes). The clean-trained rows have no paired difference.
    """
    require_columns(scores, ["platform", "run_id", "cfg_seed", "augmentation", "kind", "clean", "mpc", "rpc", "ce",
                             "clean_run_id"], "augmentation_table(scores)")
    keys = [c for c in scores.columns if c not in ("cfg_seed", "run_id", "augmentation", "eval_mode", "kind",
                                                     "n_severities", "clean", "mpc", "mpc_oa", "rpc",
                                                     "clean_run_id", "ce")]
    per_run = mean_corruption_error(scores).assign(kind=ALL_KINDS).rename(columns={"mce": "ce"})
    frames = [scores, per_run[[c for c in scores.columns if c in per_run.columns]]]
    data = pd.concat(frames, ignore_index=True)
    lookup = {(p, r, k): m for p, r, k, m in zip(data["platform"], data["run_id"], data["kind"], data["mpc"])}
    kind_order = {k: i for i, k in enumerate(kinds_in_order([*scores["kind"], ALL_KINDS]))}
    rows = []
    for key, g in data.groupby([*keys, "augmentation", "kind"], dropna=False, sort=True):
        row = dict(zip([*keys, "augmentation", "kind"], key))
        row["n_runs"] = len(g)
        row["seeds"] = " ".join(str(s) for s in sorted(g["cfg_seed"]))
        for col, scale in (("clean", 100.0), ("mpc", 100.0), ("rpc", 1.0), ("ce", 1.0)):
            mean, std = _mean_std(g[col] * scale)
            row[f"{col}_mean"], row[f"{col}_std"] = mean, std
        diffs = []
        if row["augmentation"] != CLEAN:
            for plat, partner, mpc in zip(g["platform"], g["clean_run_id"], g["mpc"]):
                other = lookup.get((plat, partner, row["kind"])) if partner is not None else None
                if other is not None and math.isfinite(other) and math.isfinite(mpc):
                    diffs.append((mpc - other) * 100.0)
        d = np.asarray(diffs, dtype=float)
        low, high, p = _t_interval(d, alpha)
        sd = float(d.std(ddof=1)) if len(d) > 1 else math.nan
        row.update(n_pairs=len(d), diff_mpc=float(d.mean()) if len(d) else math.nan, ci_low=low, ci_high=high,
                   p_value=p, p_holm=math.nan, diff_sd=sd, ci_half_width=inference.ci_half_width(sd, len(d), alpha),
                   seeds_needed_3pt=inference.seeds_needed(sd, inference.DETECT_POINTS, alpha),
                   eval_mode=", ".join(sorted({str(m) for m in g.get("eval_mode", pd.Series(dtype=str))
                                               if isinstance(m, str)})))
        rows.append(row)
    table = pd.DataFrame(rows, columns=[*keys, *ROBUSTNESS_COLUMNS])
    if table.empty:
        return table
    for _, family in table.groupby(keys, dropna=False, sort=False):  # one Holm family per platform and configuration
        table.loc[family.index, "p_holm"] = inference.adjust_pvalues(family["p_value"], "holm")
    order = table["augmentation"].map(lambda a: (a != CLEAN, a))
    table = table.assign(_a=order, _k=table["kind"].map(kind_order))
    return table.sort_values([*keys, "_a", "_k"], ignore_index=True).drop(columns=["_a", "_k"])


# --------------------------------------------------------------------------------------------------
# In words
# --------------------------------------------------------------------------------------------------


def _pts(value: float) -> str:
    return f"{value:.1f}" if math.isfinite(value) else "n/a"


def _pm(mean: float, std: float, digits: int = 1) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.{digits}f}" if not math.isfinite(std) else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _p(value: float) -> str:
    return "n/a" if not math.isfinite(value) else ("< 0.001" if value < 0.001 else f"= {value:.2g}")


def _verdict(row: pd.Series, alpha: float) -> str:
    """"helps"/"hurts"/"unresolved"/"too few pairs" for one augmentation x kind row, by its
    Holm-adjusted p-value (below ``alpha``: detectable); a difference equal in every seed (no p-value) by its
    sign."""
    if int(row["n_pairs"]) < 2 or not math.isfinite(float(row["ci_low"])):
        return "too few pairs"
    diff, p_holm = float(row["diff_mpc"]), float(row["p_holm"])
    detectable = p_holm < alpha if math.isfinite(p_holm) else (
        not math.isfinite(float(row["p_value"])) and diff != 0)
    if detectable:
        return "helps" if diff > 0 else "hurts"
    return "unresolved"


def _effect_words(row: pd.Series) -> str:
    diff = float(row["diff_mpc"])
    if int(row["n_pairs"]) == 0:
        return "(no clean-trained run of the same seed)"
    if float(row["ci_low"]) == float(row["ci_high"]) and not math.isfinite(float(row["p_value"])):
        return f"{diff:+.1f} points (the same in each of the {int(row['n_pairs'])} seeds: no spread to test against)"
    if not math.isfinite(float(row["ci_low"])):
        return f"{diff:+.1f} points ({int(row['n_pairs'])} pair{'s' if int(row['n_pairs']) != 1 else ''}: no interval)"
    return (f"{diff:+.1f} points (95% CI {_pts(float(row['ci_low']))} to {_pts(float(row['ci_high']))}, "
            f"p {_p(float(row['p_value']))}, Holm-adjusted p {_p(float(row['p_holm']))}, {int(row['n_pairs'])} seeds)")


def _group_text(table: pd.DataFrame, alpha: float) -> list[str]:
    """The paragraphs of one platform and configuration of :func:`robustness_answer_text`: which corruption hurts
    most, each augmentation's verdicts, whether Gaussian-noise training protects, and the power."""
    kinds = [k for k in dict.fromkeys(table["kind"]) if k != ALL_KINDS]
    parts = [_worst_corruption_text(table)]
    augmentations = [a for a in dict.fromkeys(table["augmentation"]) if a != CLEAN]
    for aug in augmentations:
        sub = table[(table["augmentation"] == aug) & (table["kind"] != ALL_KINDS)]
        if not sub.empty:
            parts.append(_augmentation_text(table, aug, sub, alpha))
    gaussian = [a for a in augmentations if a.startswith("gaussian") and "+" not in a]
    realistic = [k for k in kinds if k != "gaussian"]
    for aug in gaussian:
        sub = table[(table["augmentation"] == aug) & table["kind"].isin(realistic)]
        if not sub.empty:
            parts.append(_gaussian_transfer_text(table, aug, sub, alpha))
    power = inference.power_words(table[table["n_pairs"] >= 2], "the paired differences in mPC", alpha)
    if power:
        parts.append(power)
    return parts


def _worst_corruption_text(table: pd.DataFrame) -> str:
    """Which corruption hurts the clean-trained model most, and every kind's rPC from most to least harmful."""
    clean = table[(table["augmentation"] == CLEAN) & (table["kind"] != ALL_KINDS)]
    if clean.empty:
        return ("No clean-trained model (no augmentation) was tested on corruptions, so neither which "
                "corruption hurts most nor the paired differences can be given.")
    drop = clean.assign(loss=clean["clean_mean"] - clean["mpc_mean"]).sort_values("rpc_mean")
    worst = drop.iloc[0]
    ranking = "; ".join(f"{r.kind} {_pm(r.rpc_mean, r.rpc_std, 2)} (mPC {_pts(r.loss)} points below clean)"
                        for r in drop.itertuples())
    return (f"**Which corruption hurts most?** For the clean-trained model, **{worst['kind']}**: its mean "
            f"mIoU over severities 1-5 (mPC) is {_pm(worst['mpc_mean'], worst['mpc_std'])} points against "
            f"{_pm(worst['clean_mean'], worst['clean_std'])} on the clean test set (mean ± std over "
            f"{int(worst['n_runs'])} seed(s)). From most to least harmful, the share of the clean mIoU kept "
            f"(rPC): {ranking}.")


def _augmentation_text(table: pd.DataFrame, aug: str, sub: pd.DataFrame, alpha: float) -> str:
    """Training augmentation ``aug`` against the clean-trained model: its kinds (``sub``, its rows) grouped by
    verdict, then its mCE."""
    by_verdict: dict[str, list[str]] = {}
    for _, row in sub.iterrows():
        by_verdict.setdefault(_verdict(row, alpha), []).append(f"{row['kind']} {_effect_words(row)}")
    words = []
    for verdict, label in (("helps", "It helps against"), ("hurts", "It hurts against"),
                           ("unresolved", f"Unresolved by these seeds (Holm-adjusted p >= {alpha:g}: the effect "
                                          "lies somewhere in its interval) against"),
                           ("too few pairs", "Too few paired seeds to judge")):
        if verdict in by_verdict:
            words.append(f"{label}: " + "; ".join(by_verdict[verdict]) + ".")
    overall = table[(table["augmentation"] == aug) & (table["kind"] == ALL_KINDS)]
    mce = (f" Its mCE is {_pm(float(overall['ce_mean'].iloc[0]), float(overall['ce_std'].iloc[0]), 2)} "
           "(1 is the clean-trained model's)." if len(overall) and math.isfinite(float(overall["ce_mean"].iloc[0]))
           else "")
    return (f"**Training with {aug}**, against the clean-trained model of the same seed (paired difference "
            f"in mPC): " + " ".join(words) + mce)


def _gaussian_transfer_text(table: pd.DataFrame, aug: str, sub: pd.DataFrame, alpha: float) -> str:
    """Whether Gaussian-noise training ``aug`` protects against the realistic corruptions (``sub``, its rows of
    every kind but ``gaussian``), and its verdict against Gaussian noise itself."""
    verdicts = [_verdict(r, alpha) for _, r in sub.iterrows()]
    helped = [k for k, v in zip(sub["kind"], verdicts) if v == "helps"]
    hurt = [k for k, v in zip(sub["kind"], verdicts) if v == "hurts"]
    own = table[(table["augmentation"] == aug) & (table["kind"] == "gaussian")]
    own_text = (f" Against Gaussian noise itself: {_verdict(own.iloc[0], alpha)}, {_effect_words(own.iloc[0])}."
                if len(own) else "")
    if helped:
        answer = (f"it helps against {len(helped)} of the {len(sub)} realistic corruptions tested "
                  f"({', '.join(helped)})" + (f" and hurts against {', '.join(hurt)}" if hurt else ""))
    elif hurt:
        answer = (f"it helps against none of the {len(sub)} realistic corruptions, and hurts against "
                  f"{', '.join(hurt)}")
    else:
        answer = (f"it helps detectably against none of the {len(sub)} realistic corruptions tested (no "
                  "Holm-adjusted p-value of the paired difference is below "
                  f"{alpha:g}, or there are too few seeds)")
    return (f"**Does Gaussian-noise training ({aug}) protect against realistic corruptions?** "
            f"{answer[0].upper() + answer[1:]}.{own_text}")


def robustness_answer_text(table: pd.DataFrame, alpha: float = 0.05) -> str:
    """:func:`augmentation_table` in plain words (Markdown): which corruption hurts the clean-trained model most
    (its mPC and rPC per kind, with the seed spread); for each training augmentation and kind whether it helps,
    hurts or is unresolved by the seeds (the paired difference's Holm-adjusted p-value below alpha, or not), with the
    interval and its raw and Holm-adjusted p-values; and whether Gaussian-noise training helps against the
    realistic corruptions (every kind but ``gaussian``); then the power of the comparisons (the spread of the paired
    differences, the CI half-widths, the seeds needed for 3 points). A verdict ("helps", "hurts") rests on the
    Holm-adjusted p-value (:func:`_verdict`): the table is one confirmatory family per platform and
    configuration. One paragraph group per platform and configuration when the table has several."""
    require_columns(table, ["platform", *ROBUSTNESS_COLUMNS], "robustness_answer_text(table)")
    if table.empty:
        return "No run was tested on corruptions."
    keys = [c for c in table.columns if c not in ROBUSTNESS_COLUMNS]
    groups = list(table.groupby(keys, dropna=False, sort=True))
    out = []
    for key, sub in groups:
        key = key if isinstance(key, tuple) else (key,)
        paragraphs = _group_text(sub, alpha)
        if len(groups) > 1:
            out.append("*" + ", ".join(f"{k.removeprefix('cfg_')} {v}" for k, v in zip(keys, key)) + "*")
        out.extend(paragraphs)
    n_tests = table.groupby(keys, dropna=False)["p_value"].apply(lambda p: int(p.notna().sum()))
    counts = " and ".join(str(n) for n in sorted(set(n_tests)))
    out.append(f"Each augmentation x kind cell is a paired t test over the seeds; its p-value is Holm-adjusted across "
               f"the {counts} tests of its platform and configuration (the kinds and the `all kinds` rows), the "
               "confirmatory family of this study, and a cell is called helped or hurt only when the adjusted p-value "
               f"is below {alpha:g}. The 95% CIs are those of each cell alone.")
    return "\n\n".join(out)


def clean_trained_run(runs: pd.DataFrame, scores: pd.DataFrame) -> str | None:
    """The run folder of the first clean-trained run (by platform, then seed, then run id) tested on corruptions
    (a row of ``scores``, :func:`corruption_scores`), e.g. for :mod:`utae.report.gallery`; None when
    there is none."""
    require_columns(runs, ["platform", "run_id", "run_dir"], "clean_trained_run(runs)")
    if scores.empty:
        return None
    clean = scores[scores["augmentation"] == CLEAN].sort_values(["platform", "cfg_seed", "run_id"])
    if clean.empty:
        return None
    first = clean.iloc[0]
    match = runs[(runs["platform"] == first["platform"]) & (runs["run_id"] == first["run_id"])]
    return str(match["run_dir"].iloc[0]) if len(match) else None


def unpaired_text(scores: pd.DataFrame) -> str:
    """The runs :func:`corruption_scores` left out of the CE and the paired differences, as Markdown ("" when
    every run is paired)."""
    notes = scores.attrs.get("notes", [])
    if not notes:
        return ""
    return "**Left out of the paired comparison:**\n" + "\n".join(f"* {n}" for n in notes)


def severity_table() -> pd.DataFrame:
    """:data:`utae.perturb.kinds.SEVERITY_TABLE` for a report: one row a kind, one column a severity, each cell its
    parameters (e.g. ``"date_share 0.1, cover 0.3"``)."""
    return pd.DataFrame({s: {kind: ", ".join(f"{k} {v:g}" for k, v in levels[s].items())
                             for kind, levels in SEVERITY_TABLE.items()} for s in (1, 2, 3, 4, 5)}
                        ).rename_axis(index="kind", columns="severity")


def augmentation_text_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`augmentation_table` as text for a report: one row per (platform and configuration where they vary,)
    training augmentation and kind; columns ``seeds``, ``clean mIoU``, ``mPC`` (points, mean ± std over seeds),
    ``rPC``, ``CE`` (mCE on the ``all kinds`` rows), ``mPC - clean-trained`` (the paired difference, points, with
    its 95% CI), ``p``, ``p (Holm)``, ``sd of differences``, ``CI half-width`` and ``seeds for 3 points``."""
    require_columns(table, ["platform", *ROBUSTNESS_COLUMNS], "augmentation_text_table(table)")
    keys = [c for c in table.columns if c not in ROBUSTNESS_COLUMNS]
    keys = [c for c in keys if table[c].astype(object).map(str).nunique() > 1]

    def diff(row: pd.Series) -> str:
        if int(row["n_pairs"]) == 0:
            return ""
        if not math.isfinite(float(row["ci_low"])):
            return f"{float(row['diff_mpc']):+.1f} (1 pair)"
        return f"{float(row['diff_mpc']):+.1f} [{float(row['ci_low']):.1f}, {float(row['ci_high']):.1f}]"

    out = table[[*keys, "augmentation", "kind"]].copy()
    out["seeds"] = table["seeds"]
    for col, label, digits in (("clean", "clean mIoU", 1), ("mpc", "mPC", 1), ("rpc", "rPC", 2), ("ce", "CE", 2)):
        out[label] = [_pm(m, s, digits) for m, s in zip(table[f"{col}_mean"], table[f"{col}_std"])]
    out["mPC - clean-trained [95% CI]"] = [diff(r) for _, r in table.iterrows()]
    for col, label in (("p_value", "p"), ("p_holm", "p (Holm)")):
        out[label] = [_p(float(p)).removeprefix("= ") if math.isfinite(float(p)) else "" for p in table[col]]
    for col, label in (("diff_sd", "sd of differences"), ("ci_half_width", "CI half-width")):
        out[label] = [f"{float(v):.1f}" if math.isfinite(float(v)) else "" for v in table[col]]
    out["seeds for 3 points"] = [f"{int(v)}" if math.isfinite(float(v)) else "" for v in table["seeds_needed_3pt"]]
    return out.set_index([*keys, "augmentation", "kind"])
