"""Architectures side by side under the corruption suite: which model is most robust, and what the mix buys each.

A study whose runs differ by their model (``cfg_model``, :mod:`utae.models.registry`), such as
``params/architectures.yaml``, is read through :func:`utae.study.corruption_scores.corruption_scores` (per run and
kind: clean mIoU, mPC, rPC) and :func:`utae.study.corruption_scores.corruption_long` (per run, kind and
severity). On top of those, per run and kind (:func:`architecture_scores`):

- ``ce_ref``: the corruption error relative to the clean-trained reference model (U-TAE), as ImageNet-C's mCE is
  relative to AlexNet: ``sum_s (1 - m_s) / sum_s (1 - r_s)`` with ``r_s`` the reference's mean mIoU over its
  seeds at that kind and severity on the same platform; below 1 errs less than clean-trained U-TAE. The
  ``all kinds`` row of a run holds its mCE (the mean over the kinds), its mean mPC and mean rPC.

And the four answers, every one with its interval (t intervals over seeds, scipy; statsmodels for the
contrasts, the interaction and the adjusted p-values):

- :func:`most_robust`: per kind, the clean-trained architecture of highest mean rPC, against the runner-up
  (Welch's t-test: two architectures share no weights, so seeds do not pair them), Holm-adjusted over the kinds;
- :func:`family_contrasts`: on ``missing_dates``, attention models (U-TAE, TSViT) against recurrent ones and
  against 3D convolutions, as contrasts of an OLS of rPC on the architecture (HC3 errors), Holm over the two;
- :func:`rank_agreement`: Spearman's rho between the architectures' clean mIoU and their mPC (and rPC), with a
  percentile interval from resampling each architecture's seeds;
- :func:`mix_gain`: per architecture, the mix's paired gain in mean mPC over its clean-trained runs of the same
  seeds, Holm-adjusted over the architectures, and the F-test of an OLS of those gains on the architecture
  (does the gain differ between architectures?).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from utae.study.corruption_scores import (ALL_KINDS, CLEAN, corruption_long, corruption_scores, kinds_in_order,
                                          mean_corruption_error)
from utae.study.inference import adjust_pvalues, ci_half_width
from utae.util.checks import require_columns

__all__ = ["REFERENCE", "FAMILIES", "MIN_CLEAN", "learned", "has_architectures", "architecture_labels",
           "architecture_scores", "architecture_table", "most_robust",
           "family_contrasts", "rank_agreement", "mix_gain", "architecture_answer_text"]

#: The model the CE is relative to (clean-trained), as AlexNet is ImageNet-C's.
REFERENCE = "utae"
#: How each registered model treats time (docs/models.md).
FAMILIES: Mapping[str, str] = {"utae": "attention", "tsvit": "attention", "convlstm": "recurrent",
                               "convgru": "recurrent", "uconvlstm": "recurrent", "buconvlstm": "recurrent",
                               "fpn_convlstm": "recurrent", "unet3d": "3D convolution"}
_ALPHA = 0.05
#: The clean test mIoU (fraction) under which an architecture is set aside from the rPC answers: a model that has
#: barely learned keeps "all" of a score that was hardly above chance, so its rPC says nothing about robustness.
#: Predicting one class everywhere scores about 0.03 on the synthetic data (the runs' validation mIoU before they
#: learn); 0.10 is about three times that.
MIN_CLEAN = 0.10


def has_architectures(runs: pd.DataFrame) -> bool:
    """Whether the runs were trained with more than one model (``cfg_model``, :func:`utae.study.runs.load_runs`)."""
    return "cfg_model" in runs.columns and runs["cfg_model"].astype(object).map(str).nunique() > 1


def learned(scores: pd.DataFrame, augmentation: str = CLEAN, min_clean: float = MIN_CLEAN
            ) -> tuple[pd.DataFrame, list[str]]:
    """The rows of ``scores`` trained with ``augmentation`` whose architecture's mean clean mIoU (on its
    platform) is at least ``min_clean``, and the architectures set aside (``"tsvit (clean mIoU 4.5)"``)."""
    sub = scores[scores["augmentation"] == augmentation]
    clean = sub[sub["kind"] == ALL_KINDS].groupby(["platform", "architecture"])["clean"].mean()
    low = clean[clean < min_clean]
    keep = ~pd.Series(list(zip(sub["platform"], sub["architecture"])), index=sub.index).isin(set(low.index))
    aside = [f"{a} (clean mIoU {100 * v:.1f})" for (_, a), v in low.items()]
    return sub[keep], sorted(set(aside))


def _t_ci(values: np.ndarray, alpha: float = _ALPHA) -> tuple[float, float, float]:
    """Mean and the ``1 - alpha`` t interval of ``values`` (:func:`utae.study.inference.ci_half_width`; NaN bounds
    with fewer than two)."""
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    if len(values) < 2:
        return mean, math.nan, math.nan
    half = ci_half_width(float(values.std(ddof=1)), len(values), alpha)
    return mean, mean - half, mean + half


def architecture_labels(runs: pd.DataFrame) -> pd.Series:
    """Each run's architecture (aligned with ``runs``): its model's name (``cfg_model``), followed, for a model run
    with several sets of options, by the options in which its set differs from the others (``tsvit
    (unpatchify=geometric)``); a set that only lacks them is the model's defaults."""
    names = runs["cfg_model"].astype(str)
    options = runs["cfg_model_options"].astype(str) if "cfg_model_options" in runs.columns else \
        pd.Series("{}", index=runs.index)
    parsed = {text: (json.loads(text) if text.startswith("{") else {}) for text in set(options)}
    labels = names.copy()
    for name in set(names):
        sets = sorted(set(options[names == name]))
        if len(sets) < 2:
            continue
        keys = sorted({k for text in sets for k in parsed[text]})
        differ = [k for k in keys if len({json.dumps(parsed[t].get(k), sort_keys=True) for t in sets}) > 1]
        for text in sets:
            extra = ", ".join(f"{k}={parsed[text][k]}" for k in differ if k in parsed[text])
            labels[(names == name) & (options == text)] = f"{name} ({extra})" if extra else name
    return labels


def architecture_scores(runs: pd.DataFrame, corruptions: pd.DataFrame, reference: str = REFERENCE,
                        scores: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per run and kind (then ``all kinds``): ``platform``, ``run_id``, ``architecture`` (``cfg_model``),
    ``augmentation``, ``cfg_seed``, ``kind``, ``clean``, ``mpc``, ``rpc`` (fractions) and ``ce_ref`` (see the
    module docstring; NaN without a clean-trained ``reference`` run tested on the kind on that platform).
    ``scores``: :func:`utae.study.corruption_scores.corruption_scores` of the same runs, when already computed."""
    require_columns(runs, ["cfg_model"], "architecture_scores(runs)")
    scores = corruption_scores(runs, corruptions) if scores is None else scores
    long = corruption_long(runs, corruptions)
    model = architecture_labels(runs).set_axis(pd.MultiIndex.from_frame(runs[["platform", "run_id"]]))
    long = long.assign(architecture=[model[(p, r)] for p, r in zip(long["platform"], long["run_id"])])
    scores = scores.assign(architecture=[model[(p, r)] for p, r in zip(scores["platform"], scores["run_id"])])
    sev = long[long["severity"] > 0]
    ref = (sev[(sev["architecture"] == reference) & (sev["augmentation"] == CLEAN)]
           .groupby(["platform", "kind", "severity"])["miou"].mean().rename("ref_miou").reset_index())
    sev = sev.merge(ref, on=["platform", "kind", "severity"], how="left")
    sev = sev.assign(err=1.0 - sev["miou"], ref_err=1.0 - sev["ref_miou"])
    ce = sev.groupby(["platform", "run_id", "kind"]).agg(err=("err", "sum"), ref_err=("ref_err", lambda s: s.sum(
        min_count=len(s)))).reset_index()
    ce["ce_ref"] = ce["err"] / ce["ref_err"].where(ce["ref_err"] > 0)
    cols = ["platform", "run_id", "architecture", "augmentation", "cfg_seed", "kind", "clean", "mpc", "rpc"]
    per_kind = scores[cols].merge(ce[["platform", "run_id", "kind", "ce_ref"]], on=["platform", "run_id", "kind"],
                                  how="left")
    # per run over the kinds: the mean mPC and rPC, and the mCE (NaN unless every kind has a CE)
    overall = mean_corruption_error(per_kind.rename(columns={"ce_ref": "ce"})).rename(columns={"mce": "ce_ref"})
    overall = overall.assign(kind=ALL_KINDS)
    return pd.concat([per_kind, overall[per_kind.columns]], ignore_index=True)


def architecture_table(scores: pd.DataFrame, alpha: float = _ALPHA) -> pd.DataFrame:
    """``architectures.csv``: per platform, architecture, augmentation and kind of :func:`architecture_scores`,
    ``n_runs`` and for ``clean``, ``mpc`` (points), ``rpc`` and ``ce_ref`` (``mce`` on the ``all kinds`` rows)
    the mean over seeds and its ``1 - alpha`` t interval (``<name>_mean``, ``_low``, ``_high``)."""
    rows = []
    keys = ["platform", "architecture", "augmentation", "kind"]
    for key, group in scores.groupby(keys, sort=False):
        row = dict(zip(keys, key), n_runs=len(group))
        for col, scale in (("clean", 100.0), ("mpc", 100.0), ("rpc", 1.0), ("ce_ref", 1.0)):
            mean, low, high = _t_ci(group[col].to_numpy(float) * scale, alpha)
            row.update({f"{col}_mean": mean, f"{col}_low": low, f"{col}_high": high})
        rows.append(row)
    table = pd.DataFrame(rows)
    order = {k: i for i, k in enumerate(kinds_in_order(list(table["kind"])))}
    return table.sort_values(["platform", "augmentation", "kind", "rpc_mean"], ascending=[True, False, True, False],
                             key=lambda c: c.map(order) if c.name == "kind" else c, ignore_index=True)


def most_robust(scores: pd.DataFrame, augmentation: str = CLEAN, alpha: float = _ALPHA,
                min_clean: float = MIN_CLEAN) -> pd.DataFrame:
    """Per platform and kind, among the runs trained with ``augmentation`` of the architectures that learned
    (:func:`learned`): the ``best`` architecture (highest mean rPC), those ``tied`` with it, and the ``runner_up``,
    their mean rPC, the difference with its Welch t interval, ``p_value``
    (``scipy.stats.ttest_ind(equal_var=False)``) and ``p_holm`` (Holm over the kinds of the platform)."""
    from scipy import stats

    rows = []
    sub, _ = learned(scores, augmentation, min_clean)
    for (platform, kind), group in sub.groupby(["platform", "kind"], sort=False):
        means = group.groupby("architecture")["rpc"].mean().sort_values(ascending=False)
        if len(means) < 2:
            continue
        best, second = means.index[0], means.index[1]
        a = group.loc[group["architecture"] == best, "rpc"].to_numpy(float)
        b = group.loc[group["architecture"] == second, "rpc"].to_numpy(float)
        low = high = p = math.nan
        if len(a) > 1 and len(b) > 1 and max(a.std(), b.std()) == 0:  # no spread to test against
            low = high = float(a.mean() - b.mean())
        elif len(a) > 1 and len(b) > 1:
            test = stats.ttest_ind(a, b, equal_var=False)
            ci = test.confidence_interval(confidence_level=1 - alpha)
            low, high, p = float(ci.low), float(ci.high), float(test.pvalue)
        tied = [arch for arch, v in means.items() if abs(v - means.iloc[0]) <= 1e-9]
        rows.append(dict(platform=platform, kind=kind, best=best, tied=", ".join(tied), best_rpc=float(means.iloc[0]),
                         runner_up=second,
                         runner_up_rpc=float(means.iloc[1]), diff=float(a.mean() - b.mean()), ci_low=low,
                         ci_high=high, p_value=p))
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    out["p_holm"] = np.nan
    for _, idx in out.groupby("platform").groups.items():
        out.loc[idx, "p_holm"] = adjust_pvalues(out.loc[idx, "p_value"].to_numpy(float), "holm")
    order = {k: i for i, k in enumerate(kinds_in_order(list(out["kind"])))}
    return out.sort_values(["platform", "kind"], key=lambda c: c.map(order) if c.name == "kind" else c,
                           ignore_index=True)


def family_contrasts(scores: pd.DataFrame, kind: str = "missing_dates", augmentation: str = CLEAN,
                     alpha: float = _ALPHA, min_clean: float = MIN_CLEAN) -> pd.DataFrame:
    """On ``kind``, per platform, among the architectures that learned (:func:`learned`): the mean rPC of the
    attention architectures (the mean of their means) minus that of the recurrent ones, and minus that of the 3D convolutions (:data:`FAMILIES`), each a contrast of an OLS of
    rPC on the architecture (statsmodels, HC3 errors): ``estimate``, ``ci_low``, ``ci_high``, ``p_value``,
    ``p_holm`` (Holm over the contrasts of the platform) and the architectures on each side."""
    import statsmodels.formula.api as smf

    rows = []
    sub, _ = learned(scores, augmentation, min_clean)
    sub = sub[sub["kind"] == kind].dropna(subset=["rpc"])
    for platform, group in sub.groupby("platform", sort=True):
        archs = sorted(group["architecture"].unique())
        members = {f: [a for a in archs if FAMILIES.get(a.split(" ")[0]) == f]
                   for f in ("attention", "recurrent", "3D convolution")}
        if not members["attention"]:
            continue
        fit = smf.ols("rpc ~ C(architecture) - 1", data=group).fit(cov_type="HC3")
        names = list(fit.params.index)
        for other in ("recurrent", "3D convolution"):
            if not members[other]:
                continue
            weights = np.zeros(len(names))
            for arch in members["attention"]:
                weights[names.index(f"C(architecture)[{arch}]")] += 1 / len(members["attention"])
            for arch in members[other]:
                weights[names.index(f"C(architecture)[{arch}]")] -= 1 / len(members[other])
            test = fit.t_test(weights)
            low, high = (float(v) for v in np.asarray(test.conf_int(alpha=alpha)).ravel())
            rows.append(dict(platform=platform, kind=kind, contrast=f"attention - {other}",
                             attention=", ".join(members["attention"]), other=", ".join(members[other]),
                             estimate=float(np.asarray(test.effect).ravel()[0]), ci_low=low, ci_high=high,
                             p_value=float(np.asarray(test.pvalue).ravel()[0])))
    out = pd.DataFrame(rows)
    if not out.empty:
        out["p_holm"] = np.nan
        for _, idx in out.groupby("platform").groups.items():
            out.loc[idx, "p_holm"] = adjust_pvalues(out.loc[idx, "p_value"].to_numpy(float), "holm")
    return out


def rank_agreement(scores: pd.DataFrame, augmentation: str = CLEAN, n_resamples: int = 2000, seed: int = 0,
                   alpha: float = _ALPHA, min_clean: float = MIN_CLEAN) -> pd.DataFrame:
    """Per platform, among the architectures that learned (:func:`learned`), Spearman's rho
    (``scipy.stats.spearmanr``) between the architectures' mean clean mIoU and their mean mPC over the kinds, and with their mean rPC: ``rho``, its exact-test ``p_value``, and a
    ``1 - alpha`` percentile interval from ``n_resamples`` resamplings of each architecture's runs with
    replacement (seeded by ``seed``)."""
    from scipy import stats

    rows = []
    sub, _ = learned(scores, augmentation, min_clean)
    sub = sub[sub["kind"] == ALL_KINDS]
    rng = np.random.default_rng(seed)
    for platform, group in sub.groupby("platform", sort=True):
        by_arch = {a: g[["clean", "mpc", "rpc"]].to_numpy(float) for a, g in group.groupby("architecture")}
        if len(by_arch) < 3:
            continue
        means = np.array([v.mean(axis=0) for v in by_arch.values()])
        draws = np.array([[v[rng.integers(0, len(v), len(v))].mean(axis=0) for v in by_arch.values()]
                          for _ in range(n_resamples)])
        for col, name in ((1, "mpc"), (2, "rpc")):
            rho = float(stats.spearmanr(means[:, 0], means[:, col]).statistic)
            p = float(stats.permutation_test((means[:, 0],), lambda x: stats.spearmanr(x, means[:, col]).statistic,
                                             permutation_type="pairings", n_resamples=math.inf).pvalue)
            with warnings.catch_warnings():  # a resampling may tie every architecture: rho undefined, left out
                warnings.simplefilter("ignore", stats.ConstantInputWarning)
                boot = np.array([stats.spearmanr(d[:, 0], d[:, col]).statistic for d in draws])
            low, high = np.nanquantile(boot, [alpha / 2, 1 - alpha / 2])
            rows.append(dict(platform=platform, against=name, n_architectures=len(by_arch), rho=rho,
                             ci_low=float(low), ci_high=float(high), p_value=p))
    return pd.DataFrame(rows)


def mix_gain(scores: pd.DataFrame, metric: str = "mpc", alpha: float = _ALPHA) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What each training augmentation (the mix, in ``params/architectures.yaml``) buys each architecture: per
    platform, augmentation other than the clean one and architecture, the paired difference (same seed) of the
    ``all kinds`` ``metric`` (points for mpc) against its clean-trained runs: ``n_pairs``, ``diff``, ``ci_low``,
    ``ci_high``, ``p_value`` (``scipy.stats.ttest_1samp``), ``p_holm`` (Holm over the architectures). Second
    frame, per platform and augmentation: the F-test (statsmodels OLS of the differences on the architecture)
    that the gain is the same for every architecture: ``f``, ``df_num``, ``df_den``, ``p_value``."""
    from scipy import stats
    import statsmodels.formula.api as smf

    scale = 100.0 if metric in ("mpc", "clean") else 1.0
    sub = scores[scores["kind"] == ALL_KINDS]
    keys = ["platform", "architecture", "cfg_seed"]
    clean = sub[sub["augmentation"] == CLEAN].set_index(keys)[metric]
    frames = []
    for aug in sorted(set(sub["augmentation"]) - {CLEAN}):
        diff = (sub[sub["augmentation"] == aug].set_index(keys)[metric] - clean).dropna().rename("diff") * scale
        frames.append(diff.reset_index().assign(augmentation=aug))
    if not frames:
        return pd.DataFrame(), pd.DataFrame()
    pairs = pd.concat(frames, ignore_index=True)
    rows, tests = [], []
    for (platform, aug, arch), group in pairs.groupby(["platform", "augmentation", "architecture"], sort=True):
        d = group["diff"].to_numpy(float)
        mean, low, high = _t_ci(d, alpha)
        p = float(stats.ttest_1samp(d, 0.0).pvalue) if len(d) > 1 and d.std() > 0 else math.nan
        rows.append(dict(platform=platform, augmentation=aug, architecture=arch, n_pairs=len(d), diff=mean,
                         ci_low=low, ci_high=high, p_value=p))
    gains = pd.DataFrame(rows)
    if gains.empty:
        return gains, pd.DataFrame()
    gains["p_holm"] = np.nan
    for (platform, aug), idx in gains.groupby(["platform", "augmentation"]).groups.items():
        gains.loc[idx, "p_holm"] = adjust_pvalues(gains.loc[idx, "p_value"].to_numpy(float), "holm")
        group = pairs[(pairs["platform"] == platform) & (pairs["augmentation"] == aug)]
        if group["architecture"].nunique() > 1 and len(group) > group["architecture"].nunique():
            fit = smf.ols("diff ~ C(architecture)", data=group).fit()
            tests.append(dict(platform=platform, augmentation=aug, f=float(fit.fvalue), df_num=float(fit.df_model),
                              df_den=float(fit.df_resid), p_value=float(fit.f_pvalue)))
    return gains, pd.DataFrame(tests)


def _p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def architecture_answer_text(scores: pd.DataFrame, alpha: float = _ALPHA, min_clean: float = MIN_CLEAN) -> str:
    """The four answers in words (Markdown), one paragraph each, with intervals and adjusted p-values."""
    parts = []
    _, aside = learned(scores, CLEAN, min_clean)
    if aside:
        parts.append(f"Set aside from the rPC answers, as they did not learn (clean-trained mean clean mIoU under "
                     f"{100 * min_clean:g} points, about three times the score of predicting one class everywhere): "
                     + ", ".join(aside) + ". A model near chance keeps most of a score that was hardly there.")
    robust = most_robust(scores, alpha=alpha, min_clean=min_clean)
    lines = []
    for _, r in robust.iterrows():
        if "," in r["tied"]:
            lines.append(f"- **{r['kind']}**: tied at rPC {r['best_rpc']:.3f}: " + ", ".join(
                f"`{a}`" for a in r["tied"].split(", ")) + (" (they do not read dates: a shifted calendar is their "
                                                              "clean test)" if r["kind"] == "date_shift" else ""))
            continue
        verdict = "ahead of" if r["p_holm"] < alpha else "not separable from"
        lines.append(f"- **{r['kind']}**: `{r['best']}` (rPC {r['best_rpc']:.3f}), {verdict} `{r['runner_up']}` "
                     f"({r['runner_up_rpc']:.3f}): difference {r['diff']:+.3f} ({r['ci_low']:+.3f} to "
                     f"{r['ci_high']:+.3f}), Holm p {_p(r['p_holm'])}")
    if lines:
        parts.append("**Most robust to each failure** (clean-trained; highest mean rPC against the runner-up, "
                     "Welch 95% interval, Holm over the kinds):\n\n" + "\n".join(lines))
    table = architecture_table(scores[scores["kind"] == ALL_KINDS], alpha)
    overall = table[table["augmentation"] == CLEAN].dropna(subset=["ce_ref_mean"]).sort_values("ce_ref_mean")
    if len(overall) > 1:
        words = [f"`{r['architecture']}` {r['ce_ref_mean']:.3f} ({r['ce_ref_low']:.3f} to {r['ce_ref_high']:.3f})"
                 for _, r in overall.iterrows()]
        parts.append("**In absolute terms** (mCE relative to clean-trained U-TAE, lower errs less under the "
                     "corruptions; clean-trained, 95% interval over seeds): " + "; ".join(words) + ".")
    fam = family_contrasts(scores, alpha=alpha, min_clean=min_clean)
    if not fam.empty:
        words = [f"{r['contrast']} ({r['attention']} vs {r['other']}): {r['estimate']:+.3f} rPC "
                 f"({r['ci_low']:+.3f} to {r['ci_high']:+.3f}), Holm p {_p(r['p_holm'])}" for _, r in fam.iterrows()]
        parts.append("**Attention against recurrence and 3D convolution on missing dates** (clean-trained, rPC on "
                     "`missing_dates`, OLS contrasts with HC3 errors): " + "; ".join(words) + ".")
    ranks = rank_agreement(scores, alpha=alpha, min_clean=min_clean)
    if not ranks.empty:
        words = [f"with {'mPC' if r['against'] == 'mpc' else 'rPC'} rho {r['rho']:+.2f} (exact permutation p "
                 f"{_p(r['p_value'])}; {r['ci_low']:+.2f} to {r['ci_high']:+.2f} over resampled seeds)"
                 for _, r in ranks.iterrows()]
        parts.append(f"**Does the clean ranking predict the ranking under corruptions?** Spearman's rho between "
                     f"the {int(ranks['n_architectures'].iloc[0])} architectures' clean mIoU and their mean score "
                     "over the kinds (clean-trained): " + "; ".join(words) + ". The p-value asks whether the "
                     "order could be chance among these architectures; the interval, how firmly the seeds fix it.")
    gains, tests = mix_gain(scores, alpha=alpha)
    if not gains.empty:
        words = [f"`{r['architecture']}` ({r['augmentation']}) {r['diff']:+.1f} ({r['ci_low']:+.1f} to "
                 f"{r['ci_high']:+.1f}, Holm p {_p(r['p_holm'])})"
                 for _, r in gains.sort_values("diff", ascending=False).iterrows()]
        same = ""
        if not tests.empty:
            t = tests.iloc[0]
            same = (f" That the gain is the same for every architecture: F({t['df_num']:.0f}, {t['df_den']:.0f}) = "
                    f"{t['f']:.2f}, p {_p(t['p_value'])}.")
        parts.append("**What the mix buys each architecture** (mean mPC over the kinds, points, paired by seed, "
                     "95% interval): " + "; ".join(words) + "." + same)
    return "\n\n".join(parts) if parts else "The runs hold fewer than two architectures tested on corruptions."
