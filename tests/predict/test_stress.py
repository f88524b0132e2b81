"""The stress map: seeded draws of the suite's corruptions per window, the per-pixel share and the per-class table.

The tolerance of the recomputation is the one of test_predict.py (1e-5 of the logits' scale: another thread
count or grouping reorders float32 sums); a pixel is compared where its top class leads by more than twice it.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import rasterio
import torch

from utae.perturb.corruptions import corrupt
from utae.pastis.dataset import PastisDataset
from utae.predict import PredictError, predict
from utae.predict.stress import StressTally, draw_id, parse_stress


def _read(path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read(1)


@pytest.fixture(scope="module")
def one_window(scene, tmp_path_factory, gt):
    """A 32 x 32 px series: exactly one window, at (0, 0), of weight 1 everywhere."""
    return gt.write_series(tmp_path_factory.mktemp("one"), scene["raw"][:, :, 40:72, 50:82], scene["dates"])[0].parent


def test_stress_specs_are_checked():
    assert parse_stress("clouds:3", 8) == ("clouds", 3) and parse_stress(None, 8) is None
    for spec, draws, what in (("fog:3", 8, "stress.kind"), ("clouds:7", 8, "stress.severity"),
                              ("clouds", 8, "stress must read"), ("clouds:1-5", 8, "single severity"),
                              ("clouds:3", 0, "draws"), ("clouds:3", 257, "draws")):
        with pytest.raises(PredictError, match=what) as info:
            parse_stress(spec, draws)
        assert "\n" not in str(info.value)


def test_a_window_under_stress_is_the_suites_corruption_of_that_patch(one_window, scene, run_folder, run_model,
                                                                      tmp_path, gt):
    kind, severity, seed, draws = "clouds", 4, 7, 4
    out = predict(one_window, run_folder, tmp_path / "out", stress=f"{kind}:{severity}", draws=draws, seed=seed,
                  threads=1, progress=False, quicklook=False)
    share = _read(out.outputs["stress"])
    # The reference: the patch through the dataset path, corrupted by the suite with the window's draw ids.
    root = tmp_path / "pastis"
    gt.dataset_logits(run_model["model"], [scene["raw"][:, :, 40:72, 50:82]], scene["dates"],
                      (run_model["mean"], run_model["std"]), root)
    item = PastisDataset(root, folds=(1,), norm_stats=(run_model["mean"], run_model["std"]))[0]
    norm = (run_model["mean"], run_model["std"])
    with torch.no_grad():
        def logits(x, d):
            return run_model["model"](x[None], batch_positions=d[None],
                                      pad_mask=torch.zeros((1, len(d)), dtype=torch.bool))[0].numpy()

        clean = logits(item["image"], item["dates"])
        drawn = [logits(*corrupt(item["image"], item["dates"], kind, severity, seed=seed,
                                 patch_id=draw_id(0, 0, d), norm=norm)[:2]) for d in range(draws)]
    tol = 1e-5 * float(max(np.abs(clean).max(), *(np.abs(x).max() for x in drawn)))

    def decided(x):
        top2 = np.sort(x, axis=0)[-2:]
        return top2[1] - top2[0] > 2 * tol

    sure = decided(clean) & np.all([decided(x) for x in drawn], axis=0)
    assert sure.mean() > 0.9
    expected = np.mean([x.argmax(axis=0) == clean.argmax(axis=0) for x in drawn], axis=0)
    np.testing.assert_array_equal(share[sure], expected[sure].astype(np.float32))
    assert 0 < expected.mean() < 1  # the draws moved some pixels and not all: the comparison can tell


def test_stress_outputs_are_deterministic_and_consistent(scene, run_folder, tmp_path, gt):
    folder = gt.write_series(tmp_path / "in", scene["raw"][:, :, :56, :60], scene["dates"])[0].parent
    runs = [predict(folder, run_folder, tmp_path / f"out{i}", stress="missing_dates:3", draws=3,
                    seed=seed, batch_size=2, threads=1, progress=False, quicklook=False)
            for i, seed in enumerate((0, 0, 1))]
    share = [_read(r.outputs["stress"]) for r in runs]
    np.testing.assert_array_equal(share[0], share[1])
    assert runs[0].outputs["stress_csv"].read_bytes() == runs[1].outputs["stress_csv"].read_bytes()
    per_draw = [json.loads(r.outputs["stress_json"].read_text())["flip_share_per_draw"] for r in runs]
    assert per_draw[0] == per_draw[1] and per_draw[0] != per_draw[2]  # another seed, other draws
    assert set(np.unique(share[0])) <= {0.0, np.float32(1 / 3), np.float32(2 / 3), 1.0}
    classes = _read(runs[0].outputs["map"])
    table = pd.read_csv(runs[0].outputs["stress_csv"])
    crops = table[table["class"] != "all"]
    counts = np.bincount(classes.ravel(), minlength=20)
    assert crops["pixels"].tolist() == [int(counts[int(c)]) for c in crops["class"]]
    for _, row in crops.iterrows():
        flips = 1.0 - share[0][classes == int(row["class"])].astype(np.float64)
        assert row["flip_share"] == pytest.approx(flips.mean(), abs=1e-6)  # float32 shares of 3 draws
    everything = table[table["class"] == "all"].iloc[0]
    assert everything["pixels"] == classes.size
    assert everything["flip_share"] == pytest.approx(1.0 - share[0].astype(np.float64).mean(), abs=1e-6)
    assert everything["ci95_low"] <= everything["flip_share"] <= everything["ci95_high"]
    assert everything["min_draw"] <= everything["flip_share"] <= everything["max_draw"]


def test_the_tally_counts_flips_per_class_and_draw():
    tally = StressTally(draws=2)
    clean = np.array([[0, 0, 3], [3, 255, 3]], dtype=np.uint8)
    drawn = np.array([[[0, 1, 3], [3, 0, 3]], [[0, 0, 0], [0, 0, 3]]], dtype=np.int64)
    share = tally.add(clean, drawn)
    np.testing.assert_array_equal(share, [[1.0, 0.5, 0.5], [0.5, np.nan, 1.0]])
    table = tally.table().set_index("name")
    assert table.loc["Background", "pixels"] == 2 and table.loc["Corn", "pixels"] == 3
    assert table.loc["Background", "flip_share"] == pytest.approx(0.25)  # draws: 1/2 and 0/2
    assert table.loc["Corn", "flip_share"] == pytest.approx(1 / 3)  # draws: 0/3 and 2/3
    assert table.loc["all", "flip_share"] == pytest.approx(0.3)  # draws: 1/5 and 2/5
    low, high = table.loc["Corn", ["ci95_low", "ci95_high"]]
    from scipy import stats

    assert (low, high) == pytest.approx(stats.t.interval(0.95, 1, loc=1 / 3, scale=np.std([0, 2 / 3], ddof=1)
                                                         / np.sqrt(2)))
