"""Tests of a study's design per CPU-minute (utae.study.design) and its figure (utae.report.design_figures), on
hand-made robustness rows and runs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from utae.report import design_figures
from utae.study import design
from utae.study.corruption_scores import ALL_KINDS
from utae.study.inference import ci_half_width


@pytest.mark.parametrize("sd", [0.5, 2.0, 4.5, 9.0])
def test_seeds_for_halfwidth_is_the_fewest_that_reach_the_target(sd):
    n = int(design.seeds_for_halfwidth(sd, 3.0))
    assert ci_half_width(sd, n) <= 3.0
    assert n == 2 or ci_half_width(sd, n - 1) > 3.0
    assert math.isnan(design.seeds_for_halfwidth(math.nan, 3.0))


def frames(sds: dict[int, float], seconds: dict[int, float], n: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``robustness.csv``'s all-kinds rows of designs keyed by their epochs, and runs costing ``seconds``."""
    rows, runs = [], []
    for epochs, sd in sds.items():
        rows.append({"platform": "cpu-a", "cfg_epochs": epochs, "augmentation": "mix 1-5", "kind": ALL_KINDS,
                     "n_runs": n, "seeds": "0-4", "n_pairs": n, "diff_sd": sd})
        rows.append({"platform": "cpu-a", "cfg_epochs": epochs, "augmentation": "none", "kind": ALL_KINDS,
                     "n_runs": n, "seeds": "0-4", "n_pairs": 0, "diff_sd": math.nan})
        for aug, corruption in (("none", None), ("mix", '{"fraction": 0.25, "kind": "mix", "severity": [1, 5]}')):
            for seed in range(n):
                runs.append({"platform": "cpu-a", "run_id": f"e{epochs}-{aug}-{seed}", "cfg_seed": seed,
                             "cfg_epochs": epochs, "cfg_noise_std": 0.0, "cfg_train_corruption": corruption,
                             "total_s": seconds[epochs] + (seed - 2)})
    return pd.DataFrame(rows), pd.DataFrame(runs)


def test_design_table_costs_a_pair_and_bounds_the_spread():
    robustness, runs = frames({8: 4.0, 16: 3.0}, {8: 30.0, 16: 60.0})
    table = design.design_table(robustness, runs).set_index("cfg_epochs")
    assert len(table) == 2  # the clean-trained rows are no comparison
    assert table.loc[8, "pair_cpu_s"] == pytest.approx(60.0)  # a run and its partner, mean over the seeds
    assert table.loc[8, "variance_cost"] == pytest.approx(16.0 * 60.0 / 60)
    assert table.loc[16, "variance_cost"] == pytest.approx(9.0 * 120.0 / 60)
    # the chi-square interval of the sd: (n - 1) s^2 / sd^2 ~ chi2(n - 1)
    low, high = np.sqrt(4 * 9.0 / stats.chi2.ppf([0.975, 0.025], 4))
    assert table.loc[16, "sd_low"] == pytest.approx(low) and table.loc[16, "sd_high"] == pytest.approx(high)
    assert table.loc[16, "sd_low"] < 3.0 < table.loc[16, "sd_high"]
    assert table.loc[16, "cpu_min_for_target"] == pytest.approx(table.loc[16, "seeds_for_target"] * 2.0)
    assert design.n_designs(design.design_table(robustness, runs)) == 2


def test_design_words_and_figure():
    robustness, runs = frames({8: 4.0, 16: 3.0}, {8: 30.0, 16: 60.0})
    table = design.design_table(robustness, runs)
    assert design.design_labels(table) == ["epochs 8", "epochs 16"]
    text = design.design_text(table)
    assert text.index("**epochs 8**") < text.index("**epochs 16**")  # 16 x 1 < 9 x 2: the shorter design first
    assert "overlap" in text  # 5 seeds cannot tell sd 3 from sd 4
    curve = design.halfwidth_curve(table, seeds=range(2, 11))
    assert curve.groupby("row")["halfwidth"].apply(lambda h: bool(np.all(np.diff(h) < 0))).all()
    fig = design_figures.halfwidth_per_cpu_minute(table, curve, design.design_labels(table))
    assert len(fig.axes[0].get_lines()) == 3  # two designs and the target
