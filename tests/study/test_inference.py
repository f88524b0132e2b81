"""Tests of power and multiplicity (utae.study.inference) and of the families that use them: the corruption study's
augmentation x kind table (Holm, power columns, the verdicts in words), the platform effect over three platforms
(Holm across the pairs of platforms, the platforms that pair with none) and the platform-vs-seed table (BH), on
hand-made frames (no training). Power is checked against scipy's noncentral t, adjustments against hand
arithmetic and statsmodels' multipletests."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from utae.study import corruption_scores as cs
from utae.study import inference, platform_effect, platform_family

from helpers import make_runs


def nct_power(effect_size: float, n: int, alpha: float = 0.05) -> float:
    """Power of a two-sided one-sample (paired) t test of ``n`` pairs at standardised effect ``effect_size``,
    from the noncentral t distribution (scipy): P(|T| > t_crit), T ~ nct(n - 1, effect_size * sqrt(n))."""
    dof, nc = n - 1, effect_size * math.sqrt(n)
    crit = stats.t.ppf(1 - alpha / 2, dof)
    return float(stats.nct.sf(crit, dof, nc) + stats.nct.cdf(-crit, dof, nc))


# --------------------------------------------------------------------------------------------------
# utae.study.inference
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("diff_sd", [0.5, 1.5, 2.2, 4.3, 5.4, 8.6, 20.0])
def test_seeds_needed_is_the_smallest_n_with_the_power_by_the_noncentral_t(diff_sd):
    n = inference.seeds_needed(diff_sd)  # 3 points, power 0.8, alpha 0.05
    assert n >= 2 and float(n).is_integer()
    d = inference.DETECT_POINTS / diff_sd
    assert nct_power(d, int(n)) >= 0.8
    if n > 2:
        below = nct_power(d, int(n) - 1)
        # one pair fewer falls short; scipy cannot evaluate the noncentral t at 1 degree of freedom and a very
        # large noncentrality (NaN), the one case where the n below is not checked
        assert below < 0.8 or (n == 3 and math.isnan(below))


def test_seeds_needed_grows_with_the_square_of_the_spread_and_has_its_limits():
    # n is about ((z_0.975 + z_0.8) * sd / detect)^2 for large n: doubling the spread about quadruples it
    big = inference.seeds_needed(20.0)
    assert 3.5 < inference.seeds_needed(40.0) / big < 4.5
    assert inference.seeds_needed(0.01) == 2.0  # an effect 300 sd wide: the fewest pairs a t test has
    assert math.isnan(inference.seeds_needed(0.0)) and math.isnan(inference.seeds_needed(math.nan))
    assert inference.seeds_needed(4.0, detect=1.0) > inference.seeds_needed(4.0, detect=3.0)
    with pytest.raises(ValueError, match="detect"):
        inference.seeds_needed(1.0, detect=0.0)
    with pytest.raises(ValueError, match="power"):
        inference.seeds_needed(1.0, power=1.0)


def test_ci_half_width_is_half_the_scipy_t_interval():
    rng = np.random.default_rng(3)
    for n in (2, 3, 7):
        d = rng.normal(1.0, 4.0, n)
        ci = stats.ttest_1samp(d, 0.0).confidence_interval(0.95)
        assert inference.ci_half_width(float(d.std(ddof=1)), n) == pytest.approx((ci.high - ci.low) / 2)
    # with blocks, fewer degrees of freedom: a wider interval
    assert inference.ci_half_width(4.0, 15, dof=10) == pytest.approx(stats.t.ppf(0.975, 10) * 4.0 / math.sqrt(15))
    assert inference.ci_half_width(4.0, 15, dof=10) > inference.ci_half_width(4.0, 15)
    assert math.isnan(inference.ci_half_width(4.0, 1)) and math.isnan(inference.ci_half_width(math.nan, 3))


def test_adjusted_pvalues_on_a_hand_table():
    p = [0.01, 0.04, 0.03, 0.005, math.nan]  # the NaN cell has no test: not a member of the family (m = 4)
    # Holm: sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04, then the running maximum
    holm = inference.adjust_pvalues(p, "holm")
    np.testing.assert_allclose(holm[:4], [0.03, 0.06, 0.06, 0.02])
    # BH: sorted times 4/1, 4/2, 4/3, 4/4 = 0.02, 0.02, 0.04, 0.04, then the running minimum from the top
    bh = inference.adjust_pvalues(p, "bh")
    np.testing.assert_allclose(bh[:4], [0.02, 0.04, 0.04, 0.02])
    assert math.isnan(holm[4]) and math.isnan(bh[4])
    np.testing.assert_allclose(holm[:4], multipletests(p[:4], method="holm")[1])
    np.testing.assert_allclose(bh[:4], multipletests(p[:4], method="fdr_bh")[1])
    assert math.isnan(inference.adjust_pvalues([math.nan], "holm")[0])  # an empty family
    assert inference.adjust_pvalues([0.3], "holm").tolist() == [0.3]  # a family of one: unchanged
    with pytest.raises(ValueError, match="method"):
        inference.adjust_pvalues(p, "bonferroni")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        inference.adjust_pvalues([0.2, 1.5], "bh")


# --------------------------------------------------------------------------------------------------
# The corruption study's confirmatory family
# --------------------------------------------------------------------------------------------------

#: Paired differences in mPC (points) of the clouds-trained model from the clean-trained one, per kind and seed:
#: clouds a large, steady gain (p about 0.003: survives Holm over the 5 tests of a platform); haze a steady loss
#: of p about 0.035 (below 0.05 alone, not after Holm); the other two spread around 0.
DIFFS = {"clouds": [10.0, 11.0, 12.0], "haze": [-2.0, -4.0, -3.0], "band_dropout": [1.0, -1.0, 2.0],
         "date_shift": [0.5, -2.0, 1.0]}


def hand_scores(platforms=("cpu-a",)) -> pd.DataFrame:
    """A corruption_scores-like frame: seeds 0-2 of a clean-trained and a clouds-trained model per platform, with
    the mPC differences of :data:`DIFFS` (the second platform's differences doubled)."""
    rows = []
    for p_index, plat in enumerate(platforms):
        for seed in range(3):
            base = {"platform": plat, "cfg_seed": seed, "eval_mode": "pad_free"}
            for kind, diffs in DIFFS.items():
                clean_mpc = 0.30 + 0.02 * seed
                rows.append({**base, "run_id": f"none-s{seed}", "augmentation": "none", "kind": kind, "clean": 0.5,
                             "mpc": clean_mpc, "rpc": clean_mpc / 0.5, "clean_run_id": f"none-s{seed}", "ce": 1.0})
                mpc = clean_mpc + diffs[seed] * (1 + p_index) / 100.0
                rows.append({**base, "run_id": f"clouds-s{seed}", "augmentation": "clouds 1-5", "kind": kind,
                             "clean": 0.5, "mpc": mpc, "rpc": mpc / 0.5, "clean_run_id": f"none-s{seed}",
                             "ce": (1 - mpc) / (1 - clean_mpc)})
    return pd.DataFrame(rows)


def test_robustness_table_holm_and_power_columns():
    table = cs.augmentation_table(hand_scores(("cpu-a", "cpu-b")))
    assert list(table.columns) == ["platform", *cs.ROBUSTNESS_COLUMNS]
    tested = table[table["augmentation"] != "none"]
    for plat, family in tested.groupby("platform"):
        # one family per platform: the 4 kinds and the all-kinds row
        assert len(family) == 5 and family["p_value"].notna().all()
        np.testing.assert_allclose(family["p_holm"], multipletests(family["p_value"], method="holm")[1])
        scale = 1 if plat == "cpu-a" else 2
        for kind, diffs in DIFFS.items():
            row = family[family["kind"] == kind].iloc[0]
            d = np.array(diffs) * scale
            assert row["diff_sd"] == pytest.approx(d.std(ddof=1))
            assert row["ci_half_width"] == pytest.approx((row["ci_high"] - row["ci_low"]) / 2)
            assert row["ci_half_width"] == pytest.approx(stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3))
            n = int(row["seeds_needed_3pt"])
            assert nct_power(3.0 / d.std(ddof=1), n) >= 0.8
    assert table.loc[table["augmentation"] == "none", ["p_holm", "diff_sd", "seeds_needed_3pt"]].isna().all().all()
    haze = tested[(tested["platform"] == "cpu-a") & (tested["kind"] == "haze")].iloc[0]
    assert haze["p_value"] < 0.05 < haze["p_holm"]


def test_verdicts_rest_on_the_holm_adjusted_p_value():
    table = cs.augmentation_table(hand_scores())
    text = cs.robustness_answer_text(table)
    assert "It helps against: clouds +11.0 points" in text  # p about 0.003, Holm-adjusted about 0.013
    assert "It hurts against" not in text  # haze: p about 0.035 alone, above 0.05 after Holm
    unresolved = text.split("Unresolved by these seeds")[1].split("\n\n")[0]
    assert "haze -3.0 points" in unresolved and "Holm-adjusted p" in unresolved
    assert "Holm-adjusted across the 5 tests" in text
    assert "**Power.**" in text and "seeds" in text
    words = cs.augmentation_text_table(table)
    assert {"p", "p (Holm)", "sd of differences", "CI half-width", "seeds for 3 points"} <= set(words.columns)
    assert words.loc[("clouds 1-5", "haze"), "sd of differences"] == "1.0"


# --------------------------------------------------------------------------------------------------
# The platform effect over three platforms
# --------------------------------------------------------------------------------------------------


def three_platform_runs(shift_c: float, pair_sd: float = 0.004, eval_modes=("pad_free",) * 3, levels=(0.0, 1.0, 2.0),
                        seeds=range(5), rng_seed=0) -> pd.DataFrame:
    """Runs of every (level, seed) on platforms a, b and c: a seed's model shared by the three (sd 0.03 between
    seeds), each platform adding its own arithmetic noise of sd ``pair_sd``; c adds ``shift_c`` to test mIoU
    (and OA). ``eval_modes`` gives each platform's evaluation mode."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for level in levels:
        for seed in seeds:
            base = 0.6 - 0.05 * level + rng.normal(0, 0.03)
            for plat, mode in zip(("cpu-a", "cpu-b", "cpu-c"), eval_modes):
                value = base + (shift_c if plat == "cpu-c" else 0.0) + rng.normal(0, pair_sd)
                rows.append({"platform": plat, "run_id": f"noise{level:g}-seed{seed}", "cfg_noise_std": level,
                             "cfg_seed": seed, "cfg_fold": 1, "eval_mode": mode, "test_miou": value,
                             "test_oa": value + 0.25})
    return pd.DataFrame(rows)


def test_three_platforms_holm_across_the_pairs_names_the_one_that_differs():
    effect = platform_effect.platform_effect(three_platform_runs(shift_c=0.03))
    for metric, family in effect.groupby("metric"):
        assert list(zip(family["platform_a"], family["platform_b"])) == [
            ("cpu-a", "cpu-b"), ("cpu-a", "cpu-c"), ("cpu-b", "cpu-c")]
        np.testing.assert_allclose(family["p_holm"], multipletests(family["p_value"], method="holm")[1])
    miou = effect[effect["metric"] == "test_miou"].set_index("platform_b")
    # c is 3 points above a and b; the pairs' noise (sd sqrt(2) * 0.4 points, 15 pairs) puts 3 points far out
    assert miou.loc["cpu-c", "p_holm"].max() < 0.05
    ab = effect[(effect["metric"] == "test_miou") & (effect["platform_b"] == "cpu-b")].iloc[0]
    assert ab["ci_low"] < 0 < ab["ci_high"]
    text = platform_effect.platform_answer_text(effect)
    family = text.split("\n\n")[1]
    assert "Of the 3 pairs of the 3 platforms, 3 have paired runs" in family
    assert "Does any platform differ from the others in test mIoU? Yes, after Holm's correction across the 3" in family
    assert "cpu-c against cpu-a +3.0 points" in family and family.count(", differs)") == 2
    assert "Holm-adjusted p" in text


def test_three_platforms_without_a_difference_say_so_with_intervals():
    effect = platform_effect.platform_effect(three_platform_runs(shift_c=0.0, rng_seed=4))
    text = platform_effect.platform_answer_text(effect)
    assert "Not detectably, after Holm's correction across the 3 paired comparisons" in text
    assert text.count("95% CI") >= 3 and ", differs)" not in text


def test_a_platform_evaluated_otherwise_pairs_with_neither_and_is_named():
    runs = three_platform_runs(shift_c=0.0, eval_modes=("padded_batches", "pad_free", "pad_free"))
    effect = platform_effect.platform_effect(runs)
    miou = effect[effect["metric"] == "test_miou"]
    assert len(miou) == 3
    unpaired = miou[miou["platform_a"] == "cpu-a"]
    assert (unpaired["n_pairs"] == 0).all() and unpaired["p_holm"].isna().all()
    assert all("eval_mode padded_batches against pad_free" in r for r in unpaired["unpaired_reason"])
    bc = miou[miou["platform_a"] == "cpu-b"].iloc[0]
    assert bc["n_pairs"] == 15 and bc["p_holm"] == pytest.approx(bc["p_value"])  # a family of one comparison
    text = platform_effect.platform_answer_text(effect, runs=runs)
    assert "Of the 3 pairs of the 3 platforms, 1 has paired runs" in text
    assert "cpu-a pairs with neither cpu-b nor cpu-c: evaluated in other modes" in text
    assert "cannot say whether it differs from them" in text
    other_seeds = runs.assign(eval_mode="pad_free")
    other_seeds.loc[other_seeds["platform"] == "cpu-a", "cfg_seed"] += 100
    assert platform_family.unpaired_reason(other_seeds, "cpu-a", "cpu-b") == "no configuration and seed run on both"


def test_two_platforms_evaluated_otherwise_keep_their_per_platform_rows_with_the_reason():
    runs = three_platform_runs(shift_c=0.0, eval_modes=("padded_batches", "pad_free", "pad_free"))
    runs = runs[runs["platform"] != "cpu-c"]
    effect = platform_effect.platform_effect(runs)
    assert (effect["n_pairs"] == 0).all() and effect["platform_b"].isna().all()
    assert all(r.startswith("with cpu-") and "evaluated in other modes" in r for r in effect["unpaired_reason"])
    assert "were evaluated in other modes" in platform_effect.platform_answer_text(effect, runs=runs)


def test_platform_power_columns_match_the_t_quantile_and_the_noncentral_t():
    runs = three_platform_runs(shift_c=0.0, pair_sd=0.02)
    effect = platform_effect.platform_effect(runs, metrics=("test_miou",))
    for _, row in effect.iterrows():
        n, k = int(row["n_pairs"]), int(row["n_configs"])
        # balanced blocks: the intercept's standard error is diff_sd / sqrt(n), on n - k degrees of freedom
        expected = stats.t.ppf(0.975, n - k) * row["diff_sd"] / math.sqrt(n)
        assert row["ci_half_width"] == pytest.approx(expected)
        pairs = inference.seeds_needed(row["diff_sd"])
        assert row["seeds_needed_3pt"] == math.ceil(pairs / k)
        assert nct_power(3.0 / row["diff_sd"], int(pairs)) >= 0.8
        assert row["seeds_needed_1pt"] >= row["seeds_needed_3pt"]
    text = platform_effect.platform_answer_text(effect)
    assert "95% CI half-width of" in text and "3-point platform effect" in text


def test_platform_vs_seed_is_adjusted_by_benjamini_hochberg():
    runs = make_runs({"cpu-a": 0.0, "cuda-b": 0.01}, levels=(0.0, 0.5, 1.0, 2.0), seeds=range(4), seed_sd=0.01)
    table = platform_effect.platform_vs_seed(runs, n_permutations=200)
    np.testing.assert_allclose(table["p_bh"], multipletests(table["p_perm"], method="fdr_bh")[1])
    assert (table["p_bh"] >= table["p_perm"]).all()
    assert "Benjamini-Hochberg" in platform_effect.platform_vs_seed_text(table)
