"""Tests of the study's tables and statistics (utae.study.tables, utae.study.platform_effect) and the paired-differences figure, on small
hand-built frames (no training)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from utae.study import platform_effect

from utae.report import study_figures

from utae.study import tables as study
from utae.pastis.metrics import scores

from helpers import make_runs

MACHINE_LABELS = ("CPU arch", "instruction set", "torch CPU kernels", "CPU features", "GPU", "GPU compute capability",
                  "host", "fingerprint")


# --------------------------------------------------------------------------------------------------
# The study's figures of runs
# --------------------------------------------------------------------------------------------------


def test_metric_vs_noise_means_per_platform():
    runs = make_runs({"cpu-a": 0.0, "cuda-b": 0.05})
    fig = study_figures.metric_vs_noise(runs)
    assert len(fig.axes) == 2
    lines = fig.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["cpu-a", "cuda-b"]
    expected = runs[runs.platform == "cuda-b"].groupby("cfg_noise_std")["test_miou"].mean().to_numpy()
    np.testing.assert_allclose(lines[1].get_ydata(), expected)
    with pytest.raises(ValueError, match="empty"):
        study_figures.metric_vs_noise(runs.iloc[:0])


def test_timing_bars_and_seed_spread():
    runs = make_runs({"cpu-a": 0.0, "cuda-b": 0.0})
    fig = study_figures.timing_bars(runs)
    assert len(fig.axes) == 3
    widths = [p.get_width() for p in fig.axes[0].patches]
    assert widths == [2.0, 0.2]
    fig = study_figures.seed_spread(runs)
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == len(runs)
    with pytest.raises(ValueError, match="timing"):
        study_figures.timing_bars(runs[["platform", "test_miou"]])


# --------------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------------


def test_platform_vs_seed_detects_a_real_platform_difference():
    runs = make_runs({"cpu-a": 0.0, "cuda-b": 0.2}, seeds=range(5), seed_sd=0.01)
    table = platform_effect.platform_vs_seed(runs, n_permutations=300)
    assert len(table) == 3 and (table["n_platforms"] == 2).all()
    assert (table["platform_range"] > 0.15).all()
    assert (table["range_over_seed_std"] > 5).all()
    assert (table["p_perm"] < 0.05).all()
    text = platform_effect.platform_vs_seed_text(table)
    assert "At 3 configuration(s)" in text


def test_platform_vs_seed_finds_nothing_when_platforms_agree():
    runs = make_runs({"cpu-a": 0.0, "cuda-b": 0.0}, seeds=range(4), seed_sd=0.05, rng_seed=3)
    table = platform_effect.platform_vs_seed(runs, n_permutations=300)
    assert (table["p_perm"] > 0.05).all()
    assert "At no configuration" in platform_effect.platform_vs_seed_text(table)


def test_platform_vs_seed_with_one_platform_reports_the_seed_spread_only():
    runs = make_runs({"cpu-a": 0.0})
    table = platform_effect.platform_vs_seed(runs)
    assert table["p_perm"].isna().all() and table["platform_range"].isna().all()
    expected = runs[runs.cfg_noise_std == 0.5]["test_miou"].std(ddof=1)
    assert table.loc[table.cfg_noise_std == 0.5, "seed_std"].item() == pytest.approx(expected)
    assert "only the spread between seeds" in platform_effect.platform_vs_seed_text(table)


def test_study_summary_and_table_one():
    runs = make_runs({"cpu-a": 0.0, "cuda-b": 0.05})
    summary = study.study_summary(runs)
    assert len(summary) == 6 and (summary["n_runs"] == 3).all() and (summary["seeds"] == "0 1 2").all()
    sub = runs[(runs.platform == "cpu-a") & (runs.cfg_noise_std == 1.0)]
    row = summary[(summary.platform == "cpu-a") & (summary.cfg_noise_std == 1.0)].iloc[0]
    assert row["test_miou_mean"] == pytest.approx(sub["test_miou"].mean())
    assert row["test_miou_std"] == pytest.approx(sub["test_miou"].std(ddof=1))
    table = study.table_one(runs)
    assert list(table.index) == ["cpu-a", "cuda-b"]
    assert table.columns.get_level_values(0).unique().tolist() == [
        "without noise", "with noise (std 0.5)", "with noise (std 1)"]
    cell = table.loc["cpu-a", ("without noise", "val IoU")]
    m = runs[(runs.platform == "cpu-a") & (runs.cfg_noise_std == 0)]["val_miou"]
    assert cell == f"{m.mean():.3f} ± {m.std(ddof=1):.3f} (n=3)"
    counts = study.run_counts(runs)
    assert counts.loc["cpu-a", "noise 0.5"] == 3


def test_platform_settings_say_how_each_platform_computed():
    runs = pd.DataFrame({
        "platform": ["cpu-x", "cpu-x", "cuda-h100", "cuda-h100"],
        "plat_device_name": ["X", "X", "NVIDIA H100", "NVIDIA H100"],
        "plat_amp": ["off", "off", "bf16", "off"],
        "plat_float32_math": [np.nan, np.nan, "ieee", "tf32"],
        "plat_deterministic": [True, True, False, False],
        "plat_device_kind": ["cpu", "cpu", "cuda", "cuda"],
    })
    table = study.platform_settings(runs)
    machine = {label: study.NOT_RECORDED for label in MACHINE_LABELS}  # legacy runs: no machine fields
    assert table.loc["cpu-x"].to_dict() == {"runs": 2, "device": "X", **machine, "amp": "off", "float32 math": "ieee",
                                            "deterministic": "True"}  # float32 on a CPU is IEEE
    unknown = study.platform_settings(runs.assign(plat_float32_math=np.nan))
    assert unknown.loc["cuda-h100", "float32 math"] == ""  # not recorded: unknown on a GPU
    assert table.loc["cuda-h100", "amp"] == "bf16, off"  # runs that differ list every value
    assert table.loc["cuda-h100", "float32 math"] == "ieee, tf32"
    assert table.loc["cuda-h100", "deterministic"] == "False"
    with pytest.raises(ValueError, match="no runs"):
        study.platform_settings(runs.iloc[:0])


def test_config_columns_split_other_settings():
    runs = make_runs({"cpu-a": 0.0})
    assert study.config_columns(runs) == ["cfg_noise_std"]
    runs.loc[runs.cfg_seed == 0, "cfg_fold"] = 2
    assert study.config_columns(runs) == ["cfg_noise_std", "cfg_fold"]
    assert len(study.study_summary(runs)) == 6


def test_runs_evaluated_otherwise_are_never_paired_across_platforms():
    """A platform whose runs were evaluated in padded batches (every run before eval_mode was recorded) and one
    evaluated pad-free differ by the evaluation too: the platform effect must not pair them."""
    runs = make_runs({"cpu-a": 0.0, "cpu-b": 0.0})
    runs["eval_mode"] = "pad_free"
    assert platform_effect.paired_differences(runs, "test_miou", "cpu-a", "cpu-b").shape[0] == 9
    runs.loc[runs.platform == "cpu-a", "eval_mode"] = "padded_batches"
    assert study.config_columns(runs) == ["cfg_noise_std", "eval_mode"]
    assert platform_effect.paired_differences(runs, "test_miou", "cpu-a", "cpu-b").empty
    assert set(study.platform_settings(runs)["evaluation"]) == {"padded_batches", "pad_free"}
    text = platform_effect.platform_answer_text(platform_effect.platform_effect(runs), runs=runs)
    assert "were evaluated in other modes (cpu-a: padded_batches; cpu-b: pad_free)" in text


def test_bench_table_side_by_side(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    for plat, speed in (("cpu-a", 10.0), ("cuda-b", 500.0)):
        pd.DataFrame({"platform": plat, "shape": ["small", "large"], "amp": "off", "channels_last": False,
                      "train_samples_per_s": [speed, speed / 4], "peak_mem_mb": 100.0}).to_csv(
            bench / f"{plat}.csv", index=False)
    tables = study.load_bench(bench)
    assert list(tables) == ["cpu-a", "cuda-b"]
    wide = study.bench_table(tables)
    assert wide.loc[("small", "off", "False"), ("train_samples_per_s", "cuda-b")] == 500.0
    assert wide.loc[("large", "off", "False"), ("train_samples_per_s", "cpu-a")] == 2.5
    assert study.load_bench(tmp_path / "none") == {}
    with pytest.raises(ValueError, match="no benchmark"):
        study.bench_table({})


def test_platform_vs_seed_f_is_the_one_way_anova():
    # platform a: 1, 2, 3; platform b: 2, 4, 5 -> between SS 150/36 on 1 dof, within SS 60/9 on 4 dof: F = 2.5
    runs = pd.DataFrame({"platform": ["a"] * 3 + ["b"] * 3, "run_id": [f"r{i}" for i in range(6)],
                         "cfg_noise_std": 0.0, "cfg_seed": [0, 1, 2] * 2, "test_miou": [1.0, 2, 3, 2, 4, 5]})
    table = platform_effect.platform_vs_seed(runs, n_permutations=50)
    assert table["F"].item() == pytest.approx(2.5)


# --------------------------------------------------------------------------------------------------
# Does the hardware change the results? Paired runs
# --------------------------------------------------------------------------------------------------


def paired_runs(shift: float, pair_sd: float, levels=(0.0, 0.5, 1.0, 2.0, 3.0), seeds=range(6), seed_sd=0.03,
                platforms=("cpu-a", "cpu-b"), rng_seed=0) -> pd.DataFrame:
    """Runs of every (level, seed) on each platform. A seed's model is shared by the platforms (its value
    varies with sd ``seed_sd`` between seeds); every platform after the first adds ``shift`` to test mIoU and
    its own arithmetic noise of sd ``pair_sd`` (test OA moves with it, + 0.25)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for level in levels:
        for seed in seeds:
            base = 0.6 - 0.05 * level + rng.normal(0, seed_sd)
            for i, plat in enumerate(platforms):
                value = base if i == 0 else base + shift + (rng.normal(0, pair_sd) if pair_sd else 0.0)
                rows.append({"platform": plat, "run_id": f"noise{level:g}-seed{seed}", "cfg_noise_std": level,
                             "cfg_seed": seed, "cfg_fold": 1, "test_miou": value, "test_oa": value + 0.25})
    return pd.DataFrame(rows)


def test_effect_table_columns():
    effect = platform_effect.platform_effect(paired_runs(0.0, 0.01))
    assert list(effect.columns[:10]) == ["metric", "platform_a", "platform_b", "n_pairs", "effect", "ci_low",
                                         "ci_high", "p_value", "p_holm", "same_seed_identical"]
    assert {"max_abs_diff", "wilcoxon_p", "seed_sd", "seeds_needed_1pt", "seeds_needed_3pt", "ci_half_width",
            "n_configs", "unpaired_reason"} <= set(effect.columns)
    assert list(effect["metric"]) == ["test_miou", "test_oa"] and (effect["unit"] == "points").all()


def test_identical_platforms_give_no_effect_and_reproduce_exactly():
    effect = platform_effect.platform_effect(paired_runs(0.0, 0.0)).set_index("metric")
    row = effect.loc["test_miou"]
    assert row["n_pairs"] == 30 and row["n_configs"] == 5 and row["seeds_per_config"] == "6"
    assert row["effect"] == 0.0 and row["ci_low"] == 0.0 and row["ci_high"] == 0.0
    assert effect["same_seed_identical"].tolist() == [True, True] and row["max_abs_diff"] == 0.0
    assert math.isnan(row["p_value"])  # no spread of the differences to test against
    text = platform_effect.platform_answer_text(effect.reset_index())
    assert "give exactly the same test mIoU" in text and "cpu-b and cpu-a" in text


def test_a_shifted_platform_is_detected_in_points():
    shift, pair_sd = 0.02, 0.003
    effect = platform_effect.platform_effect(paired_runs(shift, pair_sd)).set_index("metric")
    row = effect.loc["test_miou"]
    n = row["n_pairs"]
    # the estimate is a mean of n differences of sd 100 * pair_sd points: 4 standard errors is a wide margin
    assert abs(row["effect"] - 100 * shift) < 4 * 100 * pair_sd / math.sqrt(n)
    assert row["ci_low"] < 100 * shift < row["ci_high"]
    assert row["p_value"] < 0.05 and row["wilcoxon_p"] < 0.05
    assert effect["same_seed_identical"].tolist() == [False, False] and row["max_abs_diff"] > 0
    assert effect.loc["test_oa", "effect"] == pytest.approx(row["effect"])  # OA moved with mIoU
    text = platform_effect.platform_answer_text(effect.reset_index())
    assert f"cpu-b scores {row['effect']:.1f} test-mIoU points higher than cpu-a" in text
    assert "a detectable platform effect" in text and "does not reproduce exactly" in text


def test_no_shift_gives_a_ci_around_zero():
    effect = platform_effect.platform_effect(paired_runs(0.0, 0.01, rng_seed=1))
    row = effect.set_index("metric").loc["test_miou"]
    assert row["ci_low"] < 0.0 < row["ci_high"]
    assert "no detectable platform effect" in platform_effect.platform_answer_text(effect)


def test_effect_is_the_mean_over_configurations_of_the_mean_difference():
    runs = paired_runs(0.01, 0.01, levels=(0.0, 1.0), seeds=range(4), rng_seed=2)
    runs = runs[~((runs["cfg_noise_std"] == 1.0) & (runs["cfg_seed"] == 3))]  # 4 pairs at level 0, 3 at level 1
    pairs = platform_effect.paired_differences(runs, "test_miou", "cpu-a", "cpu-b")
    per_config = pairs.groupby("cfg_noise_std")["diff"].mean()
    row = platform_effect.platform_effect(runs, metrics=("test_miou",)).iloc[0]
    assert row["effect"] == pytest.approx(100 * per_config.mean())  # sum-to-zero contrasts: configurations weigh equally
    assert row["effect"] != pytest.approx(100 * pairs["diff"].mean())
    assert row["seeds_per_config"] == "3-4"


def test_seeds_needed_fall_when_the_paired_spread_falls():
    from statsmodels.stats.power import TTestPower

    noisy = platform_effect.platform_effect(paired_runs(0.0, 0.02), metrics=("test_miou",)).iloc[0]
    quiet = platform_effect.platform_effect(paired_runs(0.0, 0.005), metrics=("test_miou",)).iloc[0]
    assert quiet["diff_sd"] < noisy["diff_sd"]
    assert quiet["seeds_needed_1pt"] < noisy["seeds_needed_1pt"]
    pairs = TTestPower().solve_power(effect_size=1.0 / noisy["diff_sd"], alpha=0.05, power=0.8)
    assert noisy["seeds_needed_1pt"] == math.ceil(pairs / noisy["n_configs"])


def test_paired_differences_pair_configuration_and_seed():
    runs = paired_runs(0.01, 0.0, levels=(0.0, 1.0), seeds=range(2))
    runs = pd.concat([runs, runs.iloc[[0]].assign(platform="cpu-b", cfg_seed=7, run_id="lonely")], ignore_index=True)
    pairs = platform_effect.paired_differences(runs, "test_miou", "cpu-a", "cpu-b")
    assert list(pairs.columns) == ["cfg_noise_std", "cfg_seed", "value_a", "value_b", "diff", "run_id_a", "run_id_b"]
    assert len(pairs) == 4 and 7 not in set(pairs["cfg_seed"])  # a run without a partner is left out
    np.testing.assert_allclose(pairs["diff"], pairs["value_b"] - pairs["value_a"])
    np.testing.assert_allclose(pairs["diff"], 0.01)
    doubled = pd.concat([runs, runs.iloc[[1]].assign(run_id="again")], ignore_index=True)
    with pytest.raises(ValueError, match="several runs of one configuration"):
        platform_effect.paired_differences(doubled, "test_miou", "cpu-a", "cpu-b")
    with pytest.raises(ValueError, match="no runs of platform 'cuda-x'"):
        platform_effect.paired_differences(runs, "test_miou", "cpu-a", "cuda-x")


def test_every_pair_of_platforms_gets_a_row():
    effect = platform_effect.platform_effect(paired_runs(0.01, 0.005, platforms=("a", "b", "c")), metrics=("test_miou",))
    assert list(zip(effect["platform_a"], effect["platform_b"])) == [("a", "b"), ("a", "c"), ("b", "c")]


def test_one_platform_measures_the_seed_spread_only():
    runs = paired_runs(0.0, 0.0, platforms=("cpu-a",))
    effect = platform_effect.platform_effect(runs)
    row = effect.set_index("metric").loc["test_miou"]
    assert row["n_pairs"] == 0 and row["platform_b"] is None and math.isnan(row["effect"])
    # pooled within-configuration std: with equal seeds per configuration, the root mean of the variances
    expected = 100 * math.sqrt(runs.groupby("cfg_noise_std")["test_miou"].var(ddof=1).mean())
    assert row["seed_sd"] == pytest.approx(expected)
    text = platform_effect.platform_answer_text(effect)
    assert "only the spread between seeds can be measured" in text and "make import" in text
    assert f"{expected:.1f} points" in text


def test_platforms_without_shared_seeds_cannot_be_paired():
    runs = paired_runs(0.0, 0.01)
    runs.loc[runs["platform"] == "cpu-b", "cfg_seed"] += 100
    effect = platform_effect.platform_effect(runs)
    assert (effect["n_pairs"] == 0).all() and sorted(set(effect["platform_a"])) == ["cpu-a", "cpu-b"]
    assert "No configuration and seed was run on two of the 2 platforms" in platform_effect.platform_answer_text(effect)


def test_paired_differences_figure():
    runs = paired_runs(0.02, 0.003)
    pairs = platform_effect.paired_differences(runs, "test_miou", "cpu-a", "cpu-b")
    row = platform_effect.platform_effect(runs).iloc[0]
    fig = study_figures.paired_differences(pairs, row, metric="test_miou")
    ax = fig.axes[0]
    dots = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if len(c.get_offsets())])
    np.testing.assert_allclose(np.sort(dots), np.sort(100 * pairs["diff"]))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["noise 0", "noise 0.5", "noise 1", "noise 2", "noise 3"]
    assert any(np.allclose(line.get_ydata(), row["effect"]) for line in ax.get_lines())
    with pytest.raises(ValueError, match="diff"):
        study_figures.paired_differences(pairs.drop(columns="diff"))


# --------------------------------------------------------------------------------------------------
# Platform settings: what tells the machines apart
# --------------------------------------------------------------------------------------------------


def test_platform_settings_show_the_machine_fields_of_platform_json():
    from utae.machine.record import IDENTITY_COLUMNS

    new = {f"plat_{name}": f"value-{name}" for name in IDENTITY_COLUMNS}
    new.update(plat_fingerprint="0123456789ab", plat_gpu_name=None, plat_gpu_compute_capability=None,
               plat_cpu_features=("avx", "avx2"))
    runs = pd.DataFrame([{"platform": "cpu-new", **new}, {"platform": "cpu-old", "plat_device_name": "Old CPU"}])
    table = study.platform_settings(runs)
    shown = set(table.loc["cpu-new"])
    for name in IDENTITY_COLUMNS:
        if name not in ("gpu_name", "gpu_compute_capability", "fingerprint"):
            assert f"value-{name}" in shown, name  # every identity field of platform.json is shown
    assert table.loc["cpu-new", "fingerprint"] == "0123456789ab"
    assert table.loc["cpu-new", "GPU"] == "none"  # recorded as null: this machine has no GPU
    assert table.loc["cpu-new", "CPU features"] == "(avx, avx2)"
    assert table.loc["cpu-old", "GPU"] == study.NOT_RECORDED and table.loc["cpu-old", "fingerprint"] == study.NOT_RECORDED


# --------------------------------------------------------------------------------------------------
# Robustness to test-time noise
# --------------------------------------------------------------------------------------------------


def noise_curves(curves: dict[str, list[float]], stds=(0.0, 1.0, 2.0, 3.0), platform="cpu-a") -> pd.DataFrame:
    rows = []
    for i, (run_id, values) in enumerate(curves.items()):
        for std, value in zip(stds, values):
            rows.append({"platform": platform, "run_id": run_id, "cfg_noise_std": 0.5, "cfg_seed": i,
                         "test_noise_std": std, "oa": 0.9, "miou": value})
    return pd.DataFrame(rows)


def test_robustness_of_a_flat_and_a_linear_curve():
    # flat: no loss at any level; linear: m(s) = 0.6 (1 - s/4), half of 0.6 at s = 2, mean over [0, 3] 0.625 * 0.6
    table = study.robustness(noise_curves({"flat": [0.5] * 4, "linear": [0.6 * (1 - s / 4) for s in range(4)]}))
    flat, linear = table.set_index("run_id").loc["flat"], table.set_index("run_id").loc["linear"]
    assert flat["auc"] == pytest.approx(1.0) and math.isnan(flat["half_std"]) and not flat["half_reached"]
    assert linear["auc"] == pytest.approx(0.625) and linear["half_std"] == pytest.approx(2.0)
    assert linear["clean"] == pytest.approx(0.6) and linear["max_test_std"] == 3.0 and linear["n_levels"] == 4


def test_robustness_summary_over_seeds():
    curves = {"r0": [0.6, 0.5, 0.2, 0.1], "r1": [0.5, 0.4, 0.3, 0.1], "r2": [0.6, 0.6, 0.6, 0.6]}
    table = study.robustness(noise_curves(curves))
    summary = study.robustness_summary(table)
    row = summary.iloc[0]
    assert row["n"] == 3 and row["n_half_reached"] == 2
    assert row["auc_mean"] == pytest.approx(table["auc"].mean()) and row["auc_std"] == pytest.approx(table["auc"].std())
    assert math.isnan(row["half_std_mean"])  # one run never fell to half: a mean over the others would understate it
    text = study.robustness_table(summary)
    assert text["test noise std at half the clean score"].item() == "> 3 (2 of 3 reached)"
    both = study.robustness_summary(table[table["run_id"] != "r2"]).iloc[0]
    assert both["half_std_mean"] == pytest.approx(table["half_std"].iloc[:2].mean())


# --------------------------------------------------------------------------------------------------
# Folds
# --------------------------------------------------------------------------------------------------


def fold_runs(tmp_path, folds=(1, 2, 3), seeds=(0,)) -> tuple[pd.DataFrame, list[np.ndarray]]:
    rng = np.random.default_rng(0)
    rows, matrices = [], []
    for seed in seeds:
        for fold in folds:
            run_dir = tmp_path / f"fold{fold}-seed{seed}"
            run_dir.mkdir()
            cm = rng.integers(0, 50, (20, 20)) + np.diag(rng.integers(100, 400, 20))
            np.save(run_dir / "confusion.npy", cm)
            matrices.append(cm)
            rows.append({"platform": "cpu-a", "run_id": run_dir.name, "run_dir": str(run_dir), "cfg_noise_std": 0.0,
                         "cfg_seed": seed, "cfg_fold": fold})
    return pd.DataFrame(rows), matrices


def test_pooled_over_folds_scores_the_summed_matrices(tmp_path):
    runs, matrices = fold_runs(tmp_path)
    assert study.has_several_folds(runs) and not study.has_several_folds(runs[runs["cfg_fold"] == 1])
    pooled = study.pooled_over_folds(runs)
    assert len(pooled) == 1
    row = pooled.iloc[0]
    expected = scores(np.sum(matrices, axis=0))
    assert row["pooled_miou"] == pytest.approx(expected["miou"]) and row["pooled_oa"] == pytest.approx(expected["oa"])
    per_fold = [scores(m)["miou"] for m in matrices]
    assert row["fold_miou_mean"] == pytest.approx(np.mean(per_fold))
    assert row["fold_miou_min"] == pytest.approx(min(per_fold)) and row["fold_miou_max"] == pytest.approx(max(per_fold))
    assert row["n_folds"] == 3 and row["folds"] == "1 2 3"


def test_fold_noise_bands(tmp_path):
    runs, _ = fold_runs(tmp_path)
    test_noise = pd.DataFrame([{"platform": "cpu-a", "run_id": r, "test_noise_std": s, "oa": 0.8, "miou": m - s / 10}
                               for r, m in zip(runs["run_id"], (0.5, 0.6, 0.7)) for s in (0.0, 1.0)])
    bands = study.fold_noise_bands(test_noise, runs).set_index("test_noise_std")
    assert bands.loc[1.0, "n_folds"] == 3
    assert bands.loc[1.0, "miou_mean"] == pytest.approx(0.5) and bands.loc[1.0, "miou_min"] == pytest.approx(0.4)
    assert bands.loc[0.0, "miou_std"] == pytest.approx(stats.tstd([0.5, 0.6, 0.7]))


# --------------------------------------------------------------------------------------------------
# Convergence
# --------------------------------------------------------------------------------------------------


def _histories(curves: dict[str, list[float]], platform: str = "cpu-x") -> pd.DataFrame:
    return pd.DataFrame([{"platform": platform, "run_id": rid, "epoch": e + 1, "val_miou": v}
                         for rid, values in curves.items() for e, v in enumerate(values)])


def test_convergence_applies_the_rule_to_each_run():
    curves = {
        "peaked": [0.1, 0.4, 0.52, 0.50, 0.51],      # best epoch 3 of 5: converged whatever the tail
        "flat": [0.1, 0.4, 0.500, 0.502, 0.504],     # best at the last, but 0.4 points over the last 3: flat
        "rising": [0.1, 0.4, 0.50, 0.51, 0.52],      # best at the last and 2 points over the last 3
        "short": [0.1, 0.2],                         # fewer epochs than the window: not judged
    }
    table = study.convergence(_histories(curves)).set_index("run_id")
    assert table.loc["peaked", "best_epoch"] == 3 and table.loc["peaked", "why"] == "best before last"
    assert table.loc["flat", "why"] == "flat" and table.loc["flat", "last_range"] == pytest.approx(0.4)
    assert table.loc["rising", "why"] == "still improving" and table.loc["rising", "last_range"] == pytest.approx(2.0)
    assert table["converged"].to_dict() == {"flat": True, "peaked": True, "rising": False, "short": False}
    assert math.isnan(table.loc["short", "last_range"]) and table.loc["short", "why"] == "too few epochs"
    # A stricter rule turns the flat run into a rising one.
    strict = study.convergence(_histories(curves), flat_points=0.3).set_index("run_id")
    assert not strict.loc["flat", "converged"]
    assert "less than 0.3 points over its last 3 epochs" in study.convergence_text(strict.reset_index())
    text = study.convergence_text(study.convergence(_histories(curves)))
    assert "2 of 4 runs converged" in text and "Still improving at the end: rising, short." in text
    with pytest.raises(ValueError, match="last must be at least 2"):
        study.convergence(_histories(curves), last=1)
    with pytest.raises(ValueError, match="val_miou"):
        study.convergence(_histories(curves).drop(columns="val_miou"))


def test_validation_curves_draw_one_line_per_run_and_panel_per_platform():
    curves = {"noise0-seed0": [0.1, 0.3, 0.4], "noise1-seed0": [0.1, 0.2, 0.35]}
    histories = pd.concat([_histories(curves, "cpu-a"), _histories(curves, "cpu-b")])
    runs = pd.DataFrame([{"platform": p, "run_id": r, "cfg_noise_std": 0.0 if r.startswith("noise0") else 1.0}
                         for p in ("cpu-a", "cpu-b") for r in curves])
    fig = study_figures.validation_curves(histories, runs)
    axes = fig.get_axes()
    assert [ax.get_title() for ax in axes] == ["cpu-a", "cpu-b"]
    for ax in axes:
        assert len(ax.lines) == 2
        assert sorted(tuple(line.get_ydata()) for line in ax.lines) == sorted(tuple(v) for v in curves.values())
    assert len({line.get_color() for line in axes[0].lines}) == 2  # coloured by noise level


# --------------------------------------------------------------------------------------------------
# The study of a results folder, in one call (utae.study.loading)
# --------------------------------------------------------------------------------------------------


def write_results(results_dir, runs: pd.DataFrame):  # type: ignore[no-untyped-def]
    """Run folders (``runs/<platform>/<run_id>/``: config, platform, metrics, history) holding ``runs``' scores,
    written with the package's writers as a finished run writes them."""
    from utae.util.atomic import atomic_write_csv, atomic_write_json

    for row in runs.itertuples():
        run_dir = results_dir / "runs" / row.platform / row.run_id
        atomic_write_json(run_dir / "config.json", {"noise_std": row.cfg_noise_std, "seed": row.cfg_seed, "fold": 1,
                                                    "dataset_root": row.cfg_dataset_root})
        atomic_write_json(run_dir / "platform.json", {"device_kind": "cpu", "platform_id": row.platform})
        atomic_write_csv(run_dir / "history.csv", pd.DataFrame({"epoch": [1, 2, 3], "val_miou": [0.2, 0.3, 0.3]}))
        scores_ = {"oa": row.test_oa, "miou": row.test_miou}
        atomic_write_json(run_dir / "metrics.json", {
            "run_id": row.run_id, "best_epoch": 2, "epochs_completed": 3, "test": scores_,
            "val": {"oa": row.test_oa, "miou": row.val_miou}, "train": {"oa": row.train_oa},
            "test_noise": [{"std": 0.0, **scores_}, {"std": 1.0, "oa": row.test_oa / 2, "miou": row.test_miou / 2}],
            "timing": {"sec_per_epoch": row.sec_per_epoch}})


def test_load_study_reads_every_run_and_writes_its_tables(tmp_path) -> None:
    import warnings

    from utae.study import loading as compare

    from utae.study import runs as results

    write_results(tmp_path, make_runs({"cpu-a": 0.0, "cpu-b": 0.01}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing escapes to the report's stderr
        data = compare.load_study(tmp_path, effect_metrics=("test_miou",))
    runs = results.load_runs(tmp_path / "runs")
    assert len(data.runs) == 18 and data.left_out == () and data.platform_mismatches.empty
    assert len(data.test_noise) == 36 and data.histories is not None and len(data.histories) == 54
    pd.testing.assert_frame_equal(data.summary, study.study_summary(runs))
    pd.testing.assert_frame_equal(data.effect, platform_effect.platform_effect(runs, metrics=("test_miou",)))
    assert data.effect_metrics == ("test_miou",) and data.bench == {}
    # the CSVs hold the tables (pandas writes floats as repr and its parser reads them back exactly)
    written = pd.read_csv(tmp_path / "summary.csv")
    assert written["test_miou_mean"].tolist() == data.summary["test_miou_mean"].tolist()
    effect = pd.read_csv(tmp_path / "platform_effect.csv")
    assert effect["effect"].tolist() == data.effect["effect"].tolist()
    text = compare.loading_text(data)
    assert text.startswith("**18 finished runs** on 2 platform(s).") and "Left out" not in text


def test_load_study_names_what_it_leaves_out(tmp_path) -> None:
    from utae.study import loading as compare

    runs = make_runs({"cpu-a": 0.0}, levels=(0.0,))
    write_results(tmp_path, runs)
    (tmp_path / "runs" / "cpu-a" / "noise0-seed1" / "metrics.json").write_text('{"test": ')
    (tmp_path / "runs" / "cpu-a" / "noise0-seed2" / "history.csv").write_bytes(b"\xff\xfe\x00bad")
    (tmp_path / "runs" / "cpu-copy").mkdir()  # a run copied by hand into a folder of another name
    (tmp_path / "runs" / "cpu-a" / "noise0-seed0").rename(tmp_path / "runs" / "cpu-copy" / "noise0-seed0")
    data = compare.load_study(tmp_path, write_tables=False)
    assert not (tmp_path / "summary.csv").exists() and not (tmp_path / "platform_effect.csv").exists()
    assert len(data.runs) == 2 and len(data.left_out) == 1 and "noise0-seed1" in data.left_out[0]
    assert data.histories is None and "noise0-seed2" in data.histories_error
    assert data.platform_mismatches.to_dict("records") == [{"platform": "cpu-copy", "recorded": "cpu-a", "n_runs": 1}]
    text = compare.loading_text(data)
    assert "**Left out**" in text and "`cpu-copy` holds 1 run(s) recorded as `cpu-a`" in text


def test_load_study_of_a_folder_without_runs(tmp_path) -> None:
    from utae.study import loading as compare

    with pytest.raises(ValueError, match="no finished run under .*runs"):
        compare.load_study(tmp_path)
    write_results(tmp_path, make_runs({"cpu-a": 0.0}, levels=(0.0,)))
    with pytest.raises(ValueError, match="effect_metrics"):
        compare.load_study(tmp_path, effect_metrics=())
    assert not (tmp_path / "summary.csv").exists()
