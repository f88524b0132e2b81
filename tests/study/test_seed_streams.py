"""The seed-stream study's statistics (utae.study.seed_streams) on hand-made run tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from utae.study.seed_streams import pairing_gain, stream_arm, variance_shares, with_arms

PINNED = {"all": {}, "weights": {"data_seed": 0, "augment_seed": 0}, "data": {"weights_seed": 0, "augment_seed": 0},
          "augment": {"weights_seed": 0, "data_seed": 0}}


def _runs(values: dict[tuple[str, float], list[float]], platform: str = "cpu-test-a") -> pd.DataFrame:
    """load_runs-like rows: test mIoU (a fraction) per (arm, noise), seeds 1, 2, ... in list order."""
    rows = []
    for (arm, noise), scores in values.items():
        for seed, score in enumerate(scores, start=1):
            row = {"platform": platform, "cfg_noise_std": noise, "cfg_seed": seed, "test_miou": score}
            for name in ("weights_seed", "data_seed", "augment_seed"):
                row[f"cfg_{name}"] = PINNED[arm].get(name)
            rows.append(row)
    return pd.DataFrame(rows)


def test_the_arm_is_the_set_of_streams_that_follow_the_seed() -> None:
    assert stream_arm({}) == "all"  # a run older than the fields
    assert stream_arm({"cfg_weights_seed": None, "cfg_data_seed": math.nan, "cfg_augment_seed": None}) == "all"
    assert stream_arm({"cfg_weights_seed": None, "cfg_data_seed": 0, "cfg_augment_seed": 0}) == "weights"
    assert stream_arm({"cfg_weights_seed": 3, "cfg_data_seed": None, "cfg_augment_seed": None}) == "data+augment"
    assert stream_arm({"cfg_weights_seed": 1, "cfg_data_seed": 1, "cfg_augment_seed": 1}) == "none"
    runs = _runs({("weights", 1.0): [0.3, 0.4], ("all", 1.0): [0.3, 0.5]})
    assert with_arms(runs)["arm"].tolist() == ["weights", "weights", "all", "all"]


def test_a_share_is_the_ratio_of_the_variances_with_an_interval_around_it() -> None:
    base = np.array([0.30, 0.34, 0.37, 0.41, 0.44])
    centred = base - base.mean()
    runs = _runs({("all", 1.0): base.tolist(), ("weights", 1.0): (0.4 + 2 * centred).tolist(),
                  ("data", 1.0): (0.2 + centred).tolist(), ("augment", 1.0): (0.4 + 0.5 * centred).tolist()})
    table = variance_shares(runs).set_index("arm")
    assert table.index[0] == "all"
    for arm, factor in (("all", 1.0), ("weights", 2.0), ("data", 1.0), ("augment", 0.5)):
        row = table.loc[arm]
        assert row["n"] == 5
        assert row["sd"] == pytest.approx(100 * factor * np.std(base, ddof=1))  # points
        assert row["share"] == pytest.approx(factor ** 2)
        assert row["share_low"] < row["share"] < row["share_high"]
        assert row["sd_low"] < row["sd"] < row["sd_high"]
    assert table.loc["data", "p_same"] == pytest.approx(1.0)  # the same spread: nothing to reject
    assert table.loc["weights", "p_same"] < table.loc["data", "p_same"]
    # an F interval scales with the ratio: twice the spread is four times the share, bounds included
    assert table.loc["weights", "share_low"] == pytest.approx(4 * table.loc["data", "share_low"])
    assert table.loc["data", "diff"] == pytest.approx(100 * (0.2 - base.mean()))  # a shifted mean, same spread
    assert table.loc["data", "diff_low"] < table.loc["data", "diff"] < table.loc["data", "diff_high"] < 0
    assert table.loc["data", "p_diff"] < 0.05 < table.loc["weights", "p_diff"]  # 0.4 vs a mean of 0.372
    more = _runs({("all", 1.0): np.tile(base, 4).tolist(), ("data", 1.0): np.tile(base, 4).tolist()})
    wide = table.loc["data", "share_high"] - table.loc["data", "share_low"]
    narrow = variance_shares(more).set_index("arm").loc["data"]
    assert narrow["share_high"] - narrow["share_low"] < wide  # more runs, a narrower interval


def test_pairing_removes_the_seed_variance_from_a_difference() -> None:
    seed_effect = np.array([-0.06, -0.02, 0.0, 0.03, 0.05])
    residual = np.array([0.01, -0.01, 0.005, -0.004, 0.0])
    runs = _runs({("weights", 0.0): (0.40 + seed_effect + residual).tolist(),
                  ("weights", 1.0): (0.35 + seed_effect - residual).tolist(),
                  ("all", 0.0): [0.4, 0.41, 0.39, 0.38, 0.42]})
    row = pairing_gain(runs, "weights").iloc[0]
    assert (row["n_seeds"], row["k"]) == (5, 2)
    d = 100 * ((0.35 + seed_effect - residual) - (0.40 + seed_effect + residual))
    assert row["sd_paired"] == pytest.approx(np.std(d, ddof=1))  # k = 2: the sd of the paired differences
    assert row["gain"] == pytest.approx(1 - row["sd_paired"] ** 2 / row["sd_unpaired"] ** 2)
    assert row["gain_low"] < row["gain"] < row["gain_high"] <= 1.0
    assert row["gain"] > 0.9 and row["p_seed"] < 0.05  # the seed effect dwarfs the residual
    # a shuffled pairing has no seed effect left to remove
    shuffled = _runs({("weights", 0.0): (0.40 + seed_effect).tolist(),
                      ("weights", 1.0): (0.35 + seed_effect[[2, 4, 0, 1, 3]]).tolist()})
    assert pairing_gain(shuffled, "weights").iloc[0]["gain"] < 0.5 < row["gain"]


def test_pairing_across_platforms_pools_every_platform_and_noise_as_a_configuration() -> None:
    a = _runs({("all", 0.0): [0.30, 0.40, 0.35], ("all", 1.0): [0.28, 0.41, 0.33]}, platform="cpu-test-a")
    b = _runs({("all", 0.0): [0.31, 0.38, 0.36], ("all", 1.0): [0.27, 0.43, 0.30]}, platform="cpu-test-b")
    runs = pd.concat([a, b], ignore_index=True)
    per = pairing_gain(runs, "all")
    assert per["platform"].tolist() == ["cpu-test-a", "cpu-test-b"] and set(per["k"]) == {2}
    pooled = pairing_gain(runs, "all", by_platform=False).iloc[0]
    assert (pooled["platform"], pooled["n_seeds"], pooled["k"]) == ("all", 3, 4)
    only = pairing_gain(runs, "all", noise_levels=[0.0], by_platform=False).iloc[0]
    assert only["k"] == 2  # the two platforms at noise 0
    assert pairing_gain(runs, "weights").empty  # no run of that arm
