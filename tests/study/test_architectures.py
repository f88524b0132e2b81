"""Tests of the cross-architecture comparison (utae.study.architectures) and its figures
(utae.report.architecture_figures), on hand-made frames whose answers are known."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from utae.report import architecture_figures
from utae.study import architectures as arch
from utae.study.corruption_scores import ALL_KINDS

MIX = {"kind": "mix", "severity": [1, 5], "fraction": 0.25}
KINDS = ("clouds", "missing_dates")


def make_frames(levels: dict[tuple[str, str], tuple[float, dict[str, float]]], seeds=(0, 1, 2, 3),
                noise: float = 0.0, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Runs and their corruption results: ``levels[(model, augmentation)] = (clean, {kind: miou at every
    severity})``, plus N(0, noise) per run and score."""
    rng = np.random.default_rng(seed)
    runs, corruptions = [], []
    for (model, aug), (clean, under) in levels.items():
        for s in seeds:
            run_id = f"arch-{model}-aug-{aug}-seed{s}"
            runs.append({"platform": "cpu-a", "run_id": run_id, "run_dir": "/nowhere", "cfg_seed": s,
                         "cfg_noise_std": 0.0, "cfg_model": model, "cfg_model_options": "{}",
                         "cfg_train_corruption": json.dumps(MIX) if aug == "mix" else None,
                         "test_miou": clean + noise * rng.standard_normal(), "test_oa": 0.8})
            for kind, miou in under.items():
                corruptions += [{"platform": "cpu-a", "run_id": run_id, "eval_mode": "pad_free", "kind": kind,
                                 "severity": sev, "miou": miou + noise * rng.standard_normal(), "oa": 0.7, "iou": ()}
                                for sev in range(1, 6)]
    return pd.DataFrame(runs), pd.DataFrame(corruptions)


def test_ce_is_relative_to_clean_trained_utae():
    runs, corr = make_frames({("utae", "none"): (0.6, {"clouds": 0.5, "missing_dates": 0.4}),
                              ("unet3d", "none"): (0.5, {"clouds": 0.75, "missing_dates": 0.4})})
    scores = arch.architecture_scores(runs, corr)
    ce = scores.set_index(["architecture", "kind"])["ce_ref"].groupby(level=[0, 1]).mean()
    assert ce[("utae", "clouds")] == pytest.approx(1.0)
    assert ce[("unet3d", "clouds")] == pytest.approx(0.25 / 0.5)  # half U-TAE's error under clouds
    assert ce[("unet3d", "missing_dates")] == pytest.approx(1.0)
    assert ce[("unet3d", ALL_KINDS)] == pytest.approx((0.5 + 1.0) / 2)  # the mCE: the mean over the kinds
    rpc = scores.set_index(["architecture", "kind"])["rpc"].groupby(level=[0, 1]).mean()
    assert rpc[("unet3d", "clouds")] == pytest.approx(0.75 / 0.5)
    table = arch.architecture_table(scores)
    row = table[(table["architecture"] == "unet3d") & (table["kind"] == "clouds")].iloc[0]
    assert row["mpc_mean"] == pytest.approx(75.0) and row["n_runs"] == 4


def test_ce_needs_a_clean_trained_reference():
    runs, corr = make_frames({("tsvit", "none"): (0.6, {"clouds": 0.5}), ("unet3d", "none"): (0.5, {"clouds": 0.4})})
    scores = arch.architecture_scores(runs, corr)
    assert scores["ce_ref"].isna().all()  # no U-TAE in the study: no CE, never a made-up one


def test_most_robust_separates_only_what_the_seeds_can_tell():
    runs, corr = make_frames({("utae", "none"): (0.6, {"clouds": 0.3, "missing_dates": 0.45}),
                              ("tsvit", "none"): (0.6, {"clouds": 0.54, "missing_dates": 0.45}),
                              ("unet3d", "none"): (0.6, {"clouds": 0.2, "missing_dates": 0.45})},
                             seeds=range(6), noise=0.01)
    best = arch.most_robust(arch.architecture_scores(runs, corr)).set_index("kind")
    assert best.loc["clouds", "best"] == "tsvit" and best.loc["clouds", "runner_up"] == "utae"
    assert best.loc["clouds", "p_holm"] < 0.001 and best.loc["clouds", "ci_low"] > 0.3
    assert best.loc["missing_dates", "p_holm"] > 0.05  # equal in truth: no separation claimed
    assert (best["p_holm"] >= best["p_value"]).all()


def test_family_contrast_is_the_mean_of_the_family_means():
    runs, corr = make_frames({("utae", "none"): (0.5, {"missing_dates": 0.45}),
                              ("tsvit", "none"): (0.5, {"missing_dates": 0.35}),
                              ("convlstm", "none"): (0.5, {"missing_dates": 0.2}),
                              ("unet3d", "none"): (0.5, {"missing_dates": 0.3})}, seeds=range(5), noise=0.005)
    scores = arch.architecture_scores(runs, corr)
    fam = arch.family_contrasts(scores).set_index("contrast")
    means = scores[scores["kind"] == "missing_dates"].groupby("architecture")["rpc"].mean()
    expected = (means["utae"] + means["tsvit"]) / 2 - means["convlstm"]
    assert fam.loc["attention - recurrent", "estimate"] == pytest.approx(expected)
    assert fam.loc["attention - recurrent", "ci_low"] < expected < fam.loc["attention - recurrent", "ci_high"]
    assert fam.loc["attention - recurrent", "p_holm"] < 0.01
    assert fam.loc["attention - 3D convolution", "other"] == "unet3d"


def test_rank_agreement_with_the_same_and_the_reversed_ranking():
    same = {(m, "none"): (c, {"clouds": c - 0.1}) for m, c in
            (("utae", 0.7), ("tsvit", 0.6), ("unet3d", 0.5), ("convlstm", 0.4))}
    runs, corr = make_frames(same, noise=0.002)
    row = arch.rank_agreement(arch.architecture_scores(runs, corr), n_resamples=200).set_index("against")
    assert row.loc["mpc", "rho"] == pytest.approx(1.0) and row.loc["mpc", "ci_low"] <= 1.0
    reversed_ = {(m, "none"): (c, {"clouds": 1.0 - c}) for m, c in
                 (("utae", 0.7), ("tsvit", 0.6), ("unet3d", 0.5), ("convlstm", 0.4))}
    runs, corr = make_frames(reversed_, noise=0.002)
    row = arch.rank_agreement(arch.architecture_scores(runs, corr), n_resamples=200).set_index("against")
    assert row.loc["mpc", "rho"] == pytest.approx(-1.0)
    assert row.loc["mpc", "p_value"] == pytest.approx(2 / math.factorial(4))  # exact: 2 of the 24 orders as extreme


def test_mix_gain_per_architecture_and_whether_it_differs():
    levels = {("utae", "none"): (0.6, {"clouds": 0.4}), ("utae", "mix"): (0.6, {"clouds": 0.5}),
              ("unet3d", "none"): (0.5, {"clouds": 0.3}), ("unet3d", "mix"): (0.5, {"clouds": 0.3})}
    runs, corr = make_frames(levels, seeds=range(6), noise=0.004)
    gains, tests = arch.mix_gain(arch.architecture_scores(runs, corr))
    gains = gains.set_index("architecture")
    assert gains.loc["utae", "diff"] == pytest.approx(10.0, abs=1.0)  # points of mPC
    assert gains.loc["utae", "p_holm"] < 0.001 and gains.loc["unet3d", "p_holm"] > 0.05
    assert (gains["n_pairs"] == 6).all() and set(gains["augmentation"]) == {"mix 1-5"}
    assert tests.iloc[0]["p_value"] < 0.001 and tests.iloc[0]["df_num"] == 1
    text = arch.architecture_answer_text(arch.architecture_scores(runs, corr))
    assert "What the mix buys each architecture" in text and "Holm p" in text


def test_has_architectures_and_the_figures():
    levels = {("utae", "none"): (0.6, dict.fromkeys(KINDS, 0.4)), ("utae", "mix"): (0.6, dict.fromkeys(KINDS, 0.5)),
              ("tsvit", "none"): (0.5, dict.fromkeys(KINDS, 0.3)), ("tsvit", "mix"): (0.5, dict.fromkeys(KINDS, 0.35))}
    runs, corr = make_frames(levels, noise=0.01)
    assert arch.has_architectures(runs) and not arch.has_architectures(runs[runs["cfg_model"] == "utae"])
    scores = arch.architecture_scores(runs, corr)
    table = arch.architecture_table(scores)
    heat = architecture_figures.rpc_heatmap(table)
    assert len(heat.axes) == 3  # clean-trained, mix, and the colour bar
    assert [t.get_text() for t in heat.axes[0].get_yticklabels()] == ["utae", "tsvit"]  # most robust first
    legend = [t.get_text() for t in architecture_figures.clean_vs_mce(table).axes[0].get_legend().get_texts()]
    assert legend == ["utae", "tsvit", "trained clean", "trained with mix 1-5"]  # lowest mCE first
    gains, _ = arch.mix_gain(scores)
    assert len(architecture_figures.mix_gain_plot(gains).axes[0].get_yticklabels()) == 2


def test_a_model_that_did_not_learn_is_set_aside_and_ties_are_named():
    levels = {("utae", "none"): (0.5, {"clouds": 0.3, "date_shift": 0.45}),
              ("tsvit", "none"): (0.04, {"clouds": 0.04, "date_shift": 0.04}),  # near chance: rPC 1, meaningless
              ("convlstm", "none"): (0.5, {"clouds": 0.2, "date_shift": 0.5}),
              ("unet3d", "none"): (0.4, {"clouds": 0.1, "date_shift": 0.4})}
    runs, corr = make_frames(levels, seeds=range(4))
    scores = arch.architecture_scores(runs, corr)
    kept, aside = arch.learned(scores)
    assert aside == ["tsvit (clean mIoU 4.0)"] and "tsvit" not in set(kept["architecture"])
    best = arch.most_robust(scores).set_index("kind")
    assert best.loc["clouds", "best"] == "utae"  # not tsvit, whose rPC of 1 is a score that was never there
    assert best.loc["date_shift", "tied"] == "convlstm, unet3d"
    text = arch.architecture_answer_text(scores)
    assert "Set aside from the rPC answers" in text and "tsvit (clean mIoU 4.0)" in text
    assert "tied at rPC 1.000: `convlstm`, `unet3d` (they do not read dates" in text
    assert "**In absolute terms**" in text


def test_a_model_run_with_two_sets_of_options_is_two_architectures():
    levels = {("utae", "none"): (0.5, {"clouds": 0.3}), ("tsvit", "none"): (0.3, {"clouds": 0.2})}
    runs, corr = make_frames(levels, seeds=range(3))
    fixed = runs[runs["cfg_model"] == "tsvit"].assign(
        run_id=lambda f: f["run_id"] + "-geo", cfg_model_options=json.dumps({"dim": 36, "unpatchify": "geometric"}),
        test_miou=0.45)
    runs = pd.concat([runs.assign(cfg_model_options=lambda f: f["cfg_model_options"].where(
        f["cfg_model"] != "tsvit", json.dumps({"dim": 36}))), fixed], ignore_index=True)
    corr = pd.concat([corr, corr[corr["run_id"].str.contains("tsvit")].assign(
        run_id=lambda f: f["run_id"] + "-geo", miou=0.4)], ignore_index=True)
    labels = arch.architecture_labels(runs)
    assert set(labels) == {"utae", "tsvit", "tsvit (unpatchify=geometric)"}
    table = arch.architecture_table(arch.architecture_scores(runs, corr))
    row = table[(table["architecture"] == "tsvit (unpatchify=geometric)") & (table["kind"] == "clouds")].iloc[0]
    assert row["clean_mean"] == pytest.approx(45.0) and row["mpc_mean"] == pytest.approx(40.0)
    fam = arch.family_contrasts(arch.architecture_scores(runs, corr), kind="clouds")
    assert fam.empty  # attention models only: no recurrent or 3D-convolution family to contrast with
