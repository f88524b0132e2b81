"""Tests of the scores under corruptions (utae.study.corruption_scores), their reader (utae.study.runs.load_test_corruptions),
their figures (utae.report.study_figures.corruption_curves, corruption_gallery), the gallery's frames (utae.report.gallery)
and robustness.csv (utae.study.loading), on hand-made frames and hand-made run folders (no training)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from utae.study import loading as compare
from utae.perturb.kinds import KINDS, SEVERITY_TABLE
from utae.rundir.paths import SkippedRunWarning

from utae.report import gallery as corruption_examples

from utae.study import corruption_scores as cs

from utae.report import study_figures

from utae.study import runs as results

from utae.study import tables as study

REPO_ROOT = Path(__file__).resolve().parents[2]
#: The committed runs of the default study (today's format: no corruption keys in config.json or metrics.json).
#: A committed platform folder of the default study (runs of today's format, evaluated in padded batches).
COMMITTED = REPO_ROOT / "results" / "runs" / "cpu-amd-epyc-avx2"
#: What a clone holds of a run folder: the run's own files, not what a run left on the machine that made it.
LOCAL_FILES = shutil.ignore_patterns("*.ipynb", "*.pt", "tensorboard", ".lock", "*.tmp")


def copy_committed(runs: Path) -> Path:
    """The committed platform folder copied into ``runs`` (its run files only)."""
    return Path(shutil.copytree(COMMITTED, runs / COMMITTED.name, ignore=LOCAL_FILES))
CLOUDS = {"kind": "clouds", "severity": [1, 5], "fraction": 0.25}


# --------------------------------------------------------------------------------------------------
# Hand-made frames
# --------------------------------------------------------------------------------------------------


def run_row(run_id: str, seed: int, noise: float = 0.0, train_corruption: dict | None = None, clean: float = 0.6,
            platform: str = "cpu-a") -> dict:
    return {"platform": platform, "run_id": run_id, "run_dir": f"/nowhere/{run_id}", "cfg_seed": seed,
            "cfg_noise_std": noise, "cfg_fold": 1, "cfg_dataset_root": "data/x",
            "cfg_train_corruption": None if train_corruption is None else json.dumps(train_corruption),
            "test_miou": clean, "test_oa": clean + 0.2}


def corruption_rows(run_id: str, kind: str, mious: list[float], platform: str = "cpu-a") -> list[dict]:
    return [{"platform": platform, "run_id": run_id, "eval_mode": "pad_free", "kind": kind, "severity": s,
             "miou": m, "oa": m + 0.2, "iou": ()} for s, m in enumerate(mious, start=1)]


@pytest.fixture()
def hand_made() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Two seeds of a clean-trained and a clouds-trained model, tested on clouds and haze; one haze-trained run
    of a seed with no clean-trained run."""
    runs = pd.DataFrame([run_row("none-s0", 0, clean=0.6), run_row("none-s1", 1, clean=0.5),
                         run_row("clouds-s0", 0, train_corruption=CLOUDS, clean=0.6),
                         run_row("clouds-s1", 1, train_corruption=CLOUDS, clean=0.4),
                         run_row("haze-s9", 9, train_corruption={"kind": "haze", "severity": 3, "fraction": 0.5})])
    rows = [*corruption_rows("none-s0", "clouds", [0.5, 0.4, 0.3, 0.2, 0.1]),
            *corruption_rows("none-s0", "haze", [0.6, 0.6, 0.5, 0.5, 0.4]),
            *corruption_rows("none-s1", "clouds", [0.4, 0.4, 0.2, 0.2, 0.2]),
            *corruption_rows("none-s1", "haze", [0.5, 0.5, 0.5, 0.4, 0.4]),
            *corruption_rows("clouds-s0", "clouds", [0.6, 0.5, 0.5, 0.4, 0.4]),
            *corruption_rows("clouds-s0", "haze", [0.6, 0.5, 0.5, 0.5, 0.4]),
            *corruption_rows("clouds-s1", "clouds", [0.4, 0.4, 0.4, 0.3, 0.3]),
            *corruption_rows("clouds-s1", "haze", [0.4, 0.4, 0.3, 0.3, 0.3]),
            *corruption_rows("haze-s9", "haze", [0.6, 0.6, 0.6, 0.6, 0.6])]
    return runs, pd.DataFrame(rows)


def test_training_augmentation_labels():
    assert study.training_augmentation(0.0, None) == "none"
    assert study.training_augmentation(float("nan"), float("nan")) == "none"
    assert study.training_augmentation(0.5, None) == "gaussian σ=0.5"
    assert study.training_augmentation(0.0, json.dumps(CLOUDS)) == "clouds 1-5"
    assert study.training_augmentation(0.25, {"kind": "haze", "severity": 3, "fraction": 1.0}) == \
        "gaussian σ=0.25 + haze 3"
    with pytest.raises(ValueError, match="train_corruption"):
        study.training_augmentation(0.0, {"severity": 3})


def test_mpc_rpc_ce_and_mce_by_hand(hand_made):
    runs, corruptions = hand_made
    scores = cs.corruption_scores(runs, corruptions).set_index(["run_id", "kind"])
    # mPC: mean over severities 1-5; rPC: over the clean mIoU
    assert scores.loc[("none-s0", "clouds"), "mpc"] == pytest.approx(0.3)
    assert scores.loc[("none-s0", "clouds"), "rpc"] == pytest.approx(0.5)
    assert scores.loc[("clouds-s1", "clouds"), "mpc"] == pytest.approx(0.36)
    assert scores.loc[("clouds-s1", "clouds"), "rpc"] == pytest.approx(0.9)
    # CE = sum(1 - m_s) / sum(1 - m_s of the clean-trained run of the same seed)
    assert scores.loc[("clouds-s0", "clouds"), "ce"] == pytest.approx((0.4 + 0.5 + 0.5 + 0.6 + 0.6) / 3.5)
    assert scores.loc[("clouds-s1", "clouds"), "ce"] == pytest.approx(3.2 / 3.6)
    assert scores.loc[("clouds-s1", "haze"), "ce"] == pytest.approx(3.3 / 2.7)
    assert scores.loc[("none-s0", "haze"), "ce"] == 1.0
    assert scores.loc[("clouds-s0", "clouds"), "clean_run_id"] == "none-s0"
    # the haze-trained seed 9 has no clean-trained partner: no CE, named in the notes
    assert math.isnan(scores.loc[("haze-s9", "haze"), "ce"]) and scores.loc[("haze-s9", "haze"), "clean_run_id"] is None
    notes = cs.corruption_scores(runs, corruptions).attrs["notes"]
    assert len(notes) == 1 and "haze-s9" in notes[0] and "seed 9" in notes[0]
    assert "haze-s9" in cs.unpaired_text(cs.corruption_scores(runs, corruptions))
    per_run = cs.mean_corruption_error(cs.corruption_scores(runs, corruptions)).set_index("run_id")
    assert per_run.loc["clouds-s1", "mce"] == pytest.approx((3.2 / 3.6 + 3.3 / 2.7) / 2)
    assert per_run.loc["clouds-s1", "mpc"] == pytest.approx((0.36 + 0.34) / 2)
    assert math.isnan(per_run.loc["haze-s9", "mce"]) and per_run.loc["none-s1", "mce"] == 1.0


def test_ce_uses_the_severities_both_runs_were_tested_at(hand_made):
    runs, corruptions = hand_made
    partial = corruptions[~((corruptions["run_id"] == "none-s0") & (corruptions["kind"] == "clouds")
                            & (corruptions["severity"] > 2))]
    scores = cs.corruption_scores(runs, partial).set_index(["run_id", "kind"])
    assert scores.loc[("none-s0", "clouds"), "n_severities"] == 2
    assert scores.loc[("clouds-s0", "clouds"), "ce"] == pytest.approx((0.4 + 0.5) / (0.5 + 0.6))


def test_pairs_share_platform_and_configuration(hand_made):
    runs, corruptions = hand_made
    other = runs[runs["run_id"] == "none-s0"].assign(platform="cuda-b")  # a clean run of seed 0 elsewhere
    moved = runs.assign(platform=np.where(runs["run_id"] == "none-s0", "cuda-b", runs["platform"]))
    corr = corruptions.assign(platform=np.where(corruptions["run_id"] == "none-s0", "cuda-b", corruptions["platform"]))
    scores = cs.corruption_scores(moved, corr).set_index(["run_id", "kind"])
    assert math.isnan(scores.loc[("clouds-s0", "clouds"), "ce"])  # its clean partner is on another platform
    assert any("clouds-s0" in n for n in scores.attrs["notes"])
    twice = pd.concat([runs, other.assign(platform="cpu-a", run_id="none-s0-again")], ignore_index=True)
    partners = cs.clean_partners(twice).set_index("run_id")
    assert partners.loc["clouds-s0", "clean_run_id"] is None  # two clean runs of seed 0: ambiguous, not paired
    assert any(n.startswith("several clean-trained runs") for n in partners.attrs["notes"])


def test_augmentation_table_paired_difference_and_ci_match_scipy(hand_made):
    runs, corruptions = hand_made
    table = cs.augmentation_table(cs.corruption_scores(runs, corruptions))
    assert list(table.columns) == ["platform", *cs.ROBUSTNESS_COLUMNS]
    row = table[(table["augmentation"] == "clouds 1-5") & (table["kind"] == "clouds")].iloc[0]
    diffs = np.array([0.48 - 0.3, 0.36 - 0.28]) * 100  # mPC of the clouds-trained run minus its clean partner's
    ci = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
    assert row["n_pairs"] == 2 and row["diff_mpc"] == pytest.approx(diffs.mean())
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert row["p_value"] == pytest.approx(stats.ttest_rel([48, 36], [30, 28]).pvalue)
    assert row["mpc_mean"] == pytest.approx(42.0) and row["mpc_std"] == pytest.approx(np.std([48, 36], ddof=1))
    assert row["seeds"] == "0 1" and row["eval_mode"] == "pad_free"
    overall = table[(table["augmentation"] == "clouds 1-5") & (table["kind"] == cs.ALL_KINDS)].iloc[0]
    assert overall["ce_mean"] == pytest.approx(np.mean([(2.6 / 3.5 + 2.5 / 2.4) / 2, (3.2 / 3.6 + 3.3 / 2.7) / 2]))
    clean = table[table["augmentation"] == "none"]
    assert (clean["n_pairs"] == 0).all() and clean["diff_mpc"].isna().all() and (clean["ce_mean"] == 1).all()
    haze = table[table["augmentation"] == "haze 3"].iloc[0]
    assert haze["n_pairs"] == 0 and math.isnan(haze["ci_low"])
    assert table["augmentation"].iloc[0] == "none"  # the clean-trained rows first
    assert list(table[table["augmentation"] == "none"]["kind"]) == ["clouds", "haze", cs.ALL_KINDS]


def test_augmentation_text_table(hand_made):
    runs, corruptions = hand_made
    text = cs.augmentation_text_table(cs.augmentation_table(cs.corruption_scores(runs, corruptions)))
    assert text.index.names == ["augmentation", "kind"]  # one platform and configuration: not repeated
    row = text.loc[("clouds 1-5", "clouds")]
    assert row["mPC"] == "42.0 ± 8.5" and row["mPC - clean-trained [95% CI]"].startswith("+13.0 [")
    assert text.loc[("none", "clouds"), "mPC - clean-trained [95% CI]"] == "" and text.loc[("none", "haze"), "CE"] == \
        "1.00 ± 0.00"


def test_answer_text_names_the_worst_corruption_and_the_verdicts(hand_made):
    runs, corruptions = hand_made
    table = cs.augmentation_table(cs.corruption_scores(runs, corruptions))
    text = cs.robustness_answer_text(table)
    assert "For the clean-trained model, **clouds**" in text  # rPC 0.5 and 0.56 against 0.87 and 0.92 for haze
    assert "**Training with clouds 1-5**" in text and "95% CI" in text
    assert "Too few paired seeds" in text  # haze 3: no partner
    # a Gaussian-trained model that loses on clouds in every seed, by a consistent margin
    g_runs = pd.concat([runs, pd.DataFrame([run_row("g-s0", 0, noise=0.5), run_row("g-s1", 1, noise=0.5)])])
    g_corr = pd.concat([corruptions, pd.DataFrame([*corruption_rows("g-s0", "clouds", [0.4, 0.3, 0.2, 0.1, 0.0]),
                                                   *corruption_rows("g-s1", "clouds", [0.3, 0.3, 0.1, 0.1, 0.1])])])
    text = cs.robustness_answer_text(cs.augmentation_table(cs.corruption_scores(g_runs, g_corr)))
    assert "protect against realistic corruptions?** It helps against none" in text and "hurts against clouds" in text
    assert cs.robustness_answer_text(table.iloc[:0]) == "No run was tested on corruptions."


def test_severity_curves_and_their_figure(hand_made):
    runs, corruptions = hand_made
    curves = cs.severity_curves(runs, corruptions)
    clean = curves[(curves["augmentation"] == "none") & (curves["kind"] == "clouds")].set_index("severity")
    assert list(clean.index) == [0, 1, 2, 3, 4, 5]
    assert clean.loc[0, "miou_mean"] == pytest.approx(0.55) and clean.loc[0, "miou_std"] == pytest.approx(
        np.std([0.6, 0.5], ddof=1))
    assert clean.loc[3, "miou_mean"] == pytest.approx(0.25) and clean.loc[3, "n"] == 2
    fig = study_figures.corruption_curves(curves)
    assert len(fig.axes) == 2  # one panel per kind
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == ["none", "clouds 1-5"]  # the clean-trained model first; no haze-trained run was tested on clouds
    assert len(fig.axes[1].get_lines()) == 3
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), clean["miou_mean"])
    assert len(fig.axes[0].collections) == 2  # a seed band per line of two seeds
    fig = study_figures.corruption_curves(curves, kinds=["haze", "clouds", "gaussian"], ncols=2)
    assert len(fig.axes) == 3 and fig.axes[0].get_title() == "haze"
    with pytest.raises(ValueError, match="empty"):
        study_figures.corruption_curves(curves.iloc[:0])


def test_corruption_gallery_figure():
    rng = np.random.default_rng(0)
    clean, target = rng.random((8, 8, 3)), rng.integers(0, 20, (8, 8))
    corrupted = {k: {s: rng.random((8, 8, 3)) for s in (1, 3, 5)} for k in ("clouds", "haze", "missing_dates")}
    corrupted["missing_dates"][5] = None  # a date that missing_dates removed: an empty panel
    fig = study_figures.corruption_gallery(clean, corrupted, target, target, titles={"haze": {3: "3: opacity 0.3"}})
    # the label and prediction, then per kind a row: the clean frame and one panel per severity
    assert len([ax for ax in fig.axes if ax.images]) == 2 + 3 * (1 + 3) - 1
    rows = [[ax.get_title() for ax in fig.axes[2 + 4 * r:6 + 4 * r]] for r in range(3)]
    assert rows[0] == ["clean", "severity 1", "severity 3", "severity 5"] and rows[1][2] == "3: opacity 0.3"
    assert [fig.axes[2 + 4 * r].get_ylabel() for r in range(3)] == ["clouds", "haze", "missing dates"]
    assert not fig.axes[-1].images and fig.axes[-1].texts[0].get_text() == "date removed"
    with pytest.raises(ValueError, match="same severities"):
        study_figures.corruption_gallery(clean, {**corrupted, "haze": {1: clean}}, target)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        study_figures.corruption_gallery(clean, corrupted, target[:4])


def test_severity_table_lists_every_kind_and_severity():
    table = cs.severity_table()
    assert list(table.columns) == [1, 2, 3, 4, 5] and "clouds" in table.index
    assert table.loc["clouds", 1] == "date_share 0.1, cover 0.3"


# --------------------------------------------------------------------------------------------------
# Run folders: the reader, old formats, robustness.csv
# --------------------------------------------------------------------------------------------------


def _entries(clean: float, kinds: dict[str, float], gain: float, test_noise: list[dict]) -> list[dict]:
    """test_corruptions entries: mIoU falls linearly with severity, by ``slope * (1 - gain)`` per level; a gaussian
    severity whose std is a level of ``test_noise`` is that entry's scores, as a run writes it (the same evaluation)."""
    noise = {e["std"]: e for e in test_noise}
    out = []
    for kind, slope in kinds.items():
        for s in range(1, 6):
            m = max(clean - slope * (1.0 - gain) * s, 0.0)
            entry = {"kind": kind, "severity": s, "oa": min(m + 0.2, 1.0), "miou": m, "iou": [m] * 19 + [None]}
            std = SEVERITY_TABLE["gaussian"][s]["std"] if kind == "gaussian" else None
            if std in noise:
                entry.update({k: noise[std][k] for k in ("oa", "miou", "iou")})
            out.append(entry)
    return out


def make_corruption_results(tmp: Path, dataset: Path | None = None) -> Path:
    """A results folder from the committed runs: the clean-trained runs (noise 0) and the Gaussian-trained runs of
    noise 0.5, seeds 0 and 1, tested on three corruption kinds (the other runs stay in today's format), plus
    clouds-trained copies of the clean runs and a haze-trained run without a clean partner. With ``dataset``, the
    runs name it as their dataset, and the first clean-trained run's predictions.npz holds a patch of its test fold."""
    root = tmp / "results"
    plat_dir = copy_committed(root / "runs")
    kinds = {"gaussian": 0.02, "clouds": 0.05, "missing_dates": 0.03}
    copies = [(f"clouds-seed{seed}", f"noise0-seed{seed}", seed, CLOUDS) for seed in (0, 1, 2)]
    copies.append(("haze-seed9", "noise0-seed2", 9, {"kind": "haze", "severity": 3, "fraction": 0.5}))
    for name, source, seed, spec in copies:
        dst = plat_dir / name
        shutil.copytree(plat_dir / source, dst)
        config = json.loads((dst / "config.json").read_text())
        config.update(run_id=name, train_corruption=spec, seed=seed)
        (dst / "config.json").write_text(json.dumps(config))
        metrics = json.loads((dst / "metrics.json").read_text())
        metrics["run_id"] = name
        (dst / "metrics.json").write_text(json.dumps(metrics))
    for run_dir in sorted(plat_dir.iterdir()):
        config = json.loads((run_dir / "config.json").read_text())
        if config["noise_std"] not in (0.0, 0.5) or run_dir.name == "noise0.5-seed2":
            continue  # today's format
        metrics = json.loads((run_dir / "metrics.json").read_text())
        gain = 0.6 if "train_corruption" in config else 0.3 if config["noise_std"] > 0 else 0.0
        config["test_corruptions"] = [f"{k}:{s}" for k in kinds for s in range(1, 6)]
        metrics.update(eval_mode="pad_free",
                       test_corruptions=_entries(metrics["test"]["miou"], kinds, gain, metrics["test_noise"]))
        (run_dir / "config.json").write_text(json.dumps(config))
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if dataset is not None:  # every run names it (one dataset, one configuration)
        from utae.pastis.metadata import FOLD_ROTATIONS
        from utae.pastis.dataset import PastisDataset

        for run_dir in plat_dir.iterdir():
            config = json.loads((run_dir / "config.json").read_text())
            (run_dir / "config.json").write_text(json.dumps({**config, "dataset_root": str(dataset)}))
        run_dir = plat_dir / "noise0-seed0"
        test = PastisDataset(dataset, folds=FOLD_ROTATIONS[config["fold"] - 1][2])
        item = test[0]
        np.savez(run_dir / "predictions.npz", rgb=np.zeros((1, *item["mask"].shape, 3), np.float32),
                 target=item["mask"].numpy()[None], pred=item["mask"].numpy()[None],
                 patch_id=np.array([item["patch_id"]]))
    return root


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> Path:
    from utae.pastis.synthetic import make_synthetic_pastis

    return make_synthetic_pastis(tmp_path / "data", n_patches=10, size=32, t_range=(6, 8), seed=0)


def test_committed_runs_of_todays_format_load_without_corruptions(tmp_path):
    copy_committed(tmp_path / "results" / "runs")
    assert results.load_test_corruptions(tmp_path / "results" / "runs").empty
    data = compare.load_study(tmp_path / "results")
    assert not data.has_corruptions and data.robustness.empty and data.corruption_scores.empty
    assert not (tmp_path / "results" / compare.ROBUSTNESS_CSV).exists()
    assert (tmp_path / "results" / compare.SUMMARY_CSV).is_file()
    levels = sorted({json.loads(d.read_text())["noise_std"] for d in COMMITTED.glob("*/config.json")})
    assert list(study.run_counts(data.runs).columns) == [f"noise {v:g}" for v in levels]  # as before


def test_load_test_corruptions_reads_the_new_keys_and_rejects_bad_entries(tmp_path):
    root = make_corruption_results(tmp_path)
    frame = frame_before = results.load_test_corruptions(root / "runs")
    assert list(frame.columns) == list(results.TEST_CORRUPTION_COLUMNS)
    assert set(frame["kind"]) == {"gaussian", "clouds", "missing_dates"}
    assert frame.groupby("run_id").size().eq(15).all() and "noise0.5-seed2" not in set(frame["run_id"])
    assert (frame["eval_mode"] == "pad_free").all() and len(frame["iou"].iloc[0]) == 20
    assert math.isnan(frame["iou"].iloc[0][19])
    run = next((root / "runs").iterdir()) / "noise0-seed1"
    metrics = json.loads((run / "metrics.json").read_text())
    entries = metrics["test_corruptions"]
    forged = {  # entries that are not those of the run's config: the run is left out, named with the field
        "test_corruptions[0]: expected a string 'kind' and an integer 'severity'": [{"severity": 2}, *entries[1:]],
        "test_corruptions[0]: clouds:6, which the config's": [{**entries[0], "kind": "clouds", "severity": 6}],
        "test_corruptions[1]: lists gaussian:1 a second time": [entries[0], *entries[:-1]],
        "test_corruptions[6].miou: expected a finite fraction in [0, 1], got 5.0": [
            *entries[:6], {**entries[6], "miou": 5.0}, *entries[7:]],
    }
    for reason, bad in forged.items():
        (run / "metrics.json").write_text(json.dumps({**metrics, "test_corruptions": bad}))
        with pytest.warns(SkippedRunWarning) as caught:
            frame = results.load_test_corruptions(root / "runs")
        assert "noise0-seed1" not in set(frame["run_id"]) and len(frame) == len(frame_before) - 15
        message = " ".join(str(w.message) for w in caught)
        assert f"noise0-seed1/metrics.json: {reason}" in message, message


def test_a_run_with_forged_corruption_scores_is_left_out_of_the_study_by_name(tmp_path):
    """The red team's case: a clouds mIoU of 5.0 showed as an mPC of 500 points; now the run is left out and listed."""
    root = make_corruption_results(tmp_path)
    run = next((root / "runs").iterdir()) / "clouds-seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    clouds = next(i for i, e in enumerate(metrics["test_corruptions"]) if e["kind"] == "clouds")
    metrics["test_corruptions"][clouds]["miou"] = 5.0
    (run / "metrics.json").write_text(json.dumps(metrics))
    data = compare.load_study(root)
    assert any("clouds-seed0" in n and f"test_corruptions[{clouds}].miou" in n for n in data.left_out), data.left_out
    assert "clouds-seed0" not in set(data.runs["run_id"]) and "clouds-seed0" not in set(data.corruptions["run_id"])
    table = pd.read_csv(root / compare.ROBUSTNESS_CSV)
    assert table[["mpc_mean", "diff_mpc"]].abs().max().max() <= 100  # percentage points of mIoU: at most 100


def test_load_study_writes_robustness_csv(tmp_path):
    root = make_corruption_results(tmp_path)
    data = compare.load_study(root)
    assert data.has_corruptions
    written = pd.read_csv(root / compare.ROBUSTNESS_CSV)
    assert list(written.columns) == ["platform", *cs.ROBUSTNESS_COLUMNS]
    assert set(written["augmentation"]) == {"none", "gaussian σ=0.5", "clouds 1-5", "haze 3"}
    clouds = written[(written["augmentation"] == "clouds 1-5") & (written["kind"] == "clouds")].iloc[0]
    # every clouds-trained run is a copy of its clean partner, losing 60% less per severity: diff = 0.6 * 0.05 * 3
    assert clouds["n_pairs"] == 3 and clouds["diff_mpc"] == pytest.approx(9.0)
    gauss = written[(written["augmentation"] == "gaussian σ=0.5") & (written["kind"] == "clouds")].iloc[0]
    assert gauss["n_pairs"] == 2 and gauss["seeds"] == "0 1"
    assert any("haze-seed9" in n for n in data.corruption_scores.attrs["notes"])
    levels = sorted({json.loads(d.read_text())["noise_std"] for d in COMMITTED.glob("*/config.json")})
    assert sorted(study.run_counts(data.runs).columns) == sorted(
        ["clouds 1-5", "haze 3", "none", *[f"gaussian σ={v:g}" for v in levels if v > 0]])


def test_gallery_frames_from_the_dataset(tmp_path, tiny_dataset):
    from utae.pastis.dataset import PastisDataset
    from utae.pastis.metadata import BANDS, FOLD_ROTATIONS

    root = make_corruption_results(tmp_path, dataset=tiny_dataset)
    run_dir = next((root / "runs").iterdir()) / "noise0-seed0"
    frames, caption = corruption_examples.gallery_or_reason(run_dir)
    assert frames is not None and "date_shift moves the acquisition dates only" in caption
    assert "clearest date" in caption and "one fixed scale" in caption
    clean, shown = frames["clean"], frames["corrupted"]
    assert clean.shape == (32, 32, 3) and list(shown) == list(KINDS)
    assert all(list(by_sev) == [1, 2, 3, 4, 5] for by_sev in shown.values())
    # the date: the lowest mean blue reflectance of the clean series (the patch's test item, read independently)
    train = PastisDataset(tiny_dataset, folds=FOLD_ROTATIONS[0][0])
    test = PastisDataset(tiny_dataset, folds=FOLD_ROTATIONS[0][2], norm_stats=(train.mean, train.std))
    item = test[test.ids.index(frames["patch_id"])]
    blue = item["image"][:, 0].double().mean((1, 2)) * float(test.std[0]) + float(test.mean[0])
    assert frames["date_index"] == int(blue.argmin()) and frames["date"] == int(item["dates"][frames["date_index"]])
    # one scale: black is reflectance 0, white twice the clean date's 98th percentile, so the clean date's 98th
    # percentile sits at one half (up to float64 rounding of one division)
    lo, hi = frames["scale"]
    assert lo == 0.0 and np.percentile(clean, 98) == pytest.approx(0.5, abs=1e-12)
    for s in range(1, 6):
        np.testing.assert_array_equal(shown["date_shift"][s], clean)  # dates move, not images
        for kind in ("gaussian", "haze", "misregistration"):  # every severity hits the date shown
            assert not np.array_equal(shown[kind][s], clean), (kind, s)
        assert shown["haze"][s].mean() > clean.mean()  # a layer brighter than the ground (3,000 x its spectrum)
        # clouds: exactly round(cover x 32 x 32) pixels of the date are cloud, at 7,000 x a flat spectrum, far above
        # white, so white in all three channels; the clean date has no white pixel, a shadow only darkens
        assert not (clean >= 1.0).all(-1).any()
        cover = SEVERITY_TABLE["clouds"][s]["cover"]
        assert (shown["clouds"][s] >= 1.0).all(-1).sum() == round(cover * 32 * 32)
        # band dropout: the title names the bands lost; a lost band among B4, B3, B2 is black (0) in its channel
        title = frames["titles"]["band_dropout"][s]
        lost = title.split(": ")[1].split(" lost")[0].split()
        assert len(lost) == SEVERITY_TABLE["band_dropout"][s]["n_bands"] and set(lost) <= set(BANDS)
        # 0 up to the float32 rounding of the normalised dead value (about 1e-7 x std, std ~ 1,500: 1e-4 of
        # reflectance x 10,000, i.e. < 1e-6 of the scale), far below any pixel of the clean date (hundreds of units)
        black = {BANDS[b] for b, ch in zip(corruption_examples.RGB_BANDS, range(3))
                 if (shown["band_dropout"][s][..., ch] <= 1e-3).all()}
        assert black == set(lost) & {"B2", "B3", "B4"}
        # missing dates: the date is shown while the draw keeps it, an empty panel once it removes it
        left = frames["n_dates"]["missing_dates"][s]
        assert f"{left}/{frames['n_dates_clean']} left" in frames["titles"]["missing_dates"][s]
        panel = shown["missing_dates"][s]
        assert panel is None or np.array_equal(panel, clean)
    assert frames["n_dates"]["missing_dates"][5] < frames["n_dates_clean"]
    fig = study_figures.corruption_gallery(clean, shown, frames["target"], frames["pred"], titles=frames["titles"])
    n_removed = sum(p is None for p in shown["missing_dates"].values())
    assert len([ax for ax in fig.axes if ax.images]) == 2 + 7 * 6 - n_removed
    fig.savefig(tmp_path / "gallery.png")  # renders
    other = next((root / "runs").iterdir()) / "noise0-seed1"
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "dataset_root": str(tmp_path / "absent")}))
    frames, reason = corruption_examples.gallery_or_reason(other)
    assert frames is None and reason.startswith("No corruption gallery:") and "is not here" in reason
    assert corruption_examples.gallery_or_reason(None)[0] is None
