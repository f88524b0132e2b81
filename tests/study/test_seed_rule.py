"""Seeds chosen by precision (utae.study.seed_rule, utae.sweep.rounds, the ``seeds:`` key): the rule on run
folders written by hand stops at the target or at max, resumes from what is on disk, and reads only the spread of
the paired differences; a malformed ``seeds:`` mapping is a one-line error naming the key."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from helpers import PLAT, make_run, write_sweep
from utae.config.run_config import run_id_for
from utae.config.seedrule import read_seed_rule
from utae.config.sweepfile import Sweep, SweepError, SweepPoint, load_sweep
from utae.rundir.paths import run_path
from utae.study.seed_rule import (MAX_REACHED, TARGET_REACHED, SEED_RECORD, seed_decision, seed_table,
                                  seed_words, write_seed_record)

CASES = ("none", "clouds")
#: Paired differences (points) of seeds 0 .. 11: mean 2, a spread that halves after the first two seeds, so the
#: 95% half-width falls from about 10 (3 seeds) below 3 points at 8 seeds (expected_stop computes it).
DIFFS = 2.0 + 4.0 * np.array([1.0, -1.0, 0.5, -0.5] * 3)


def rule_sweep(tmp_path: Path, low: int = 3, high: int = 12, target: float = 3.0) -> Sweep:
    """A sweep of grid ``aug`` (none, clouds) x seeds 0 .. high - 1 with a seed rule on test mIoU, built without a
    notebook (only the grid matters to the rule)."""
    grid = {"aug": list(CASES)}
    rule = read_seed_rule(tmp_path / "s.yaml", {"min": low, "max": high, "target_halfwidth": target,
                                                "comparisons": [{"key": "aug", "against": "none",
                                                                 "metric": "test_miou"}]}, grid)
    grid["seed"] = list(range(high))
    points = tuple(SweepPoint(run_id=run_id_for({"aug": a, "seed": s}), params={}, grid_values={"aug": a, "seed": s})
                   for a in CASES for s in range(high))
    return Sweep(path=tmp_path / "s.yaml", name="s", description="", notebook=tmp_path / "nb.ipynb", timeout=1,
                 fixed={}, grid=grid, points=points, cases={"aug": {"none": {}, "clouds": {}}}, seed_rule=rule)


def write_runs(results: Path, seeds, diffs: np.ndarray, shift: float = 0.0) -> None:
    """Finished runs of both cases for ``seeds``: test mIoU 0.5 + 0.01 * seed for none, plus ``diffs[seed]`` points
    and ``shift`` points for clouds."""
    for seed in seeds:
        for aug in CASES:
            run_id = run_id_for({"aug": aug, "seed": seed})
            if run_path(results, PLAT, run_id).exists():
                continue
            run_dir = make_run(results, PLAT, run_id, seed=seed, report=False, local_files=False)
            metrics = json.loads((run_dir / "metrics.json").read_text())
            base = 0.5 + 0.01 * seed
            metrics["test"]["miou"] = base if aug == "none" else base + (diffs[seed] + shift) / 100.0
            (run_dir / "metrics.json").write_text(json.dumps(metrics))


def expected_stop(diffs: np.ndarray, low: int, high: int, target: float) -> int:
    """The seeds the rule should stop at, from the definition: the first n >= low whose t half-width is <= target."""
    for n in range(low, high + 1):
        d = diffs[:n]
        if stats.t.ppf(0.975, n - 1) * np.std(d, ddof=1) / math.sqrt(n) <= target:
            return n
    return high


def test_the_rule_stops_once_the_half_width_reaches_the_target(tmp_path: Path) -> None:
    diffs = DIFFS
    sweep = rule_sweep(tmp_path)
    want = expected_stop(diffs, 3, 12, 3.0)
    assert 3 < want < 12  # the data exercise a stop after more than one round and before max
    write_runs(tmp_path, range(12), diffs)
    decision = seed_decision(sweep, tmp_path, PLAT)
    assert (decision.seeds, decision.stopped) == (want, TARGET_REACHED)
    (comparison,) = decision.record["comparisons"]
    assert [r["seeds"] for r in comparison["rounds"]] == list(range(3, want + 1))
    assert comparison["rounds"][-1]["half_width"] <= 3.0 < comparison["rounds"][-2]["half_width"]
    assert comparison["seeds"] == list(range(want)) and comparison["reached_target_at"] == want


def test_the_rule_stops_at_max_when_the_target_is_out_of_reach(tmp_path: Path) -> None:
    diffs = 30.0 * np.array([1.0, -1.0] * 3)  # sd about 33 points: 6 seeds give a half-width of about 34
    sweep = rule_sweep(tmp_path, high=6, target=1.0)
    write_runs(tmp_path, range(6), diffs)
    decision = seed_decision(sweep, tmp_path, PLAT)
    assert (decision.seeds, decision.stopped) == (6, MAX_REACHED)
    (comparison,) = decision.record["comparisons"]
    assert len(comparison["rounds"]) == 4 and comparison["reached_target_at"] is None
    assert comparison["stopped"] == MAX_REACHED


def test_the_rule_resumes_from_the_runs_on_disk(tmp_path: Path) -> None:
    diffs = DIFFS
    sweep = rule_sweep(tmp_path / "a")
    full = tmp_path / "full"
    write_runs(full, range(12), diffs)
    final = seed_decision(sweep, full, PLAT)
    results = tmp_path / "a"
    assert seed_decision(sweep, results, PLAT).seeds == 3  # nothing on disk: the first round
    asked = []
    while True:  # each call is a fresh "make reproduce" that finds the seeds of the previous rounds finished
        decision = seed_decision(sweep, results, PLAT)
        if decision.stopped:
            break
        asked.append(decision.seeds)
        write_runs(results, range(decision.seeds), diffs)
    assert asked == list(range(3, final.seeds + 1))
    assert decision.record == final.record  # the same decision as with every seed finished from the start
    assert not run_path(results, PLAT, run_id_for({"aug": "none", "seed": final.seeds})).exists()


def test_the_rule_reads_the_spread_not_the_effect(tmp_path: Path) -> None:
    diffs = DIFFS
    sweep = rule_sweep(tmp_path)
    chosen = []
    for shift in (0.0, 10.0, -25.0):  # every paired difference moved by a constant: the effect, not the spread
        results = tmp_path / f"shift{shift:g}"
        write_runs(results, range(12), diffs, shift=shift)
        decision = seed_decision(sweep, results, PLAT)
        chosen.append((decision.seeds, decision.stopped,
                       [r["half_width"] for r in decision.record["comparisons"][0]["rounds"]]))
    assert chosen[0][:2] == chosen[1][:2] == chosen[2][:2]
    # The same half-widths up to rounding: a stored mIoU near 0.5 is exact to about 1e-16, so a difference of a few
    # points (x100) to about 1e-14 relative; seeds.json keeps 6 decimals of half-widths of about 1 to 10 points.
    for c in chosen[1:]:
        assert np.allclose(c[2], chosen[0][2], rtol=0, atol=2e-6)
    mean_diffs = [float(np.mean(diffs[:chosen[0][0]] + shift)) for shift in (0.0, 10.0, -25.0)]
    assert len(set(np.sign(mean_diffs))) == 2  # the effects differ in sign, and the seeds chosen do not


def test_the_record_is_written_and_shown_as_a_table(tmp_path: Path) -> None:
    diffs = DIFFS
    sweep = rule_sweep(tmp_path)
    write_runs(tmp_path, range(12), diffs)
    decision = seed_decision(sweep, tmp_path, PLAT)
    path = write_seed_record(tmp_path, decision)
    assert path == tmp_path / SEED_RECORD and json.loads(path.read_text())["stopped"] == TARGET_REACHED
    table = seed_table(tmp_path)
    assert table.loc[0, "seeds"] == decision.seeds and table.loc[0, "stopped"] == TARGET_REACHED
    assert table.loc[0, "half_width"] <= 3.0
    assert seed_table(tmp_path / "nowhere") is None
    assert f"{decision.seeds} seed(s) (target reached)" in seed_words(table)


def test_the_compare_notebook_shows_the_record_only_when_there_is_one(tmp_path: Path) -> None:
    import nbformat

    nb = nbformat.read(Path(__file__).resolve().parents[2] / "notebooks" / "compare.ipynb", as_version=4)
    (source,) = [c.source for c in nb.cells if c.get("id") == "seed-rule"]
    shown: list[object] = []
    namespace = {"results_dir": str(tmp_path), "display": shown.append, "Markdown": str}
    exec(compile(source, "compare.ipynb:seed-rule", "exec"), namespace)  # noqa: S102 - the repository's own cell
    assert shown == []  # no seeds.json: a sweep with a fixed seed list shows nothing
    write_runs(tmp_path, range(12), DIFFS)
    write_seed_record(tmp_path, seed_decision(rule_sweep(tmp_path), tmp_path, PLAT))
    exec(compile(source, "compare.ipynb:seed-rule", "exec"), namespace)  # noqa: S102
    assert "Seeds chosen by precision" in shown[0] and list(shown[1]["stopped"]) == [TARGET_REACHED]


def test_run_rounds_runs_round_after_round_and_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from utae.sweep import orchestrate
    from utae.sweep.orchestrate import RunAllOutcome

    diffs = DIFFS
    sweep = rule_sweep(tmp_path)
    rounds = []

    def fake_run_all(sub: Sweep, results: Path, **_: object) -> RunAllOutcome:
        assert sub.seed_rule is None
        seeds = sorted({p.grid_values["seed"] for p in sub.points})
        rounds.append(len(seeds))
        write_runs(results, seeds, diffs)
        return RunAllOutcome()

    from utae.sweep.rounds import run_rounds

    run_rounds(sweep, tmp_path, run_round=fake_run_all, study_report=orchestrate._study_report,
               outcome=RunAllOutcome(), platform=PLAT, report=False)
    want = expected_stop(diffs, 3, 12, 3.0)
    assert rounds == list(range(3, want + 1))
    assert json.loads((tmp_path / SEED_RECORD).read_text())["seeds"] == want


@pytest.mark.parametrize("seeds, key", [
    ("[3, 20]", "seeds must be a mapping"),
    ("{min: 3, max: 20, target_halfwidth: 3.0, comparisons: [{key: aug, against: none, metric: test_miou}], "
     "maxx: 4}", "seeds.maxx"),
    ("{min: 1, max: 20, target_halfwidth: 3.0, comparisons: [{key: aug, against: none, metric: test_miou}]}",
     "seeds.min"),
    ("{min: 3, max: 2, target_halfwidth: 3.0, comparisons: [{key: aug, against: none, metric: test_miou}]}",
     "seeds.max"),
    ("{min: 3, max: 20, target_halfwidth: -1, comparisons: [{key: aug, against: none, metric: test_miou}]}",
     "seeds.target_halfwidth"),
    ("{min: 3, max: 20, target_halfwidth: 3.0}", "seeds.comparisons"),
    ("{min: 3, max: 20, target_halfwidth: 3.0, comparisons: [{key: augx, against: none, metric: test_miou}]}",
     "seeds.comparisons[0].key"),
    ("{min: 3, max: 20, target_halfwidth: 3.0, comparisons: [{key: aug, against: nope, metric: test_miou}]}",
     "seeds.comparisons[0].against"),
    ("{min: 3, max: 20, target_halfwidth: 3.0, comparisons: [{key: aug, against: none, metric: miou}]}",
     "seeds.comparisons[0].metric"),
])
def test_a_malformed_seeds_mapping_is_a_one_line_error_naming_the_key(tmp_path: Path, data_root: Path, seeds: str,
                                                                      key: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(f"dataset_root: {data_root}\ngrid:\n  aug:\n    none: {{}}\n    gaussian: {{noise_std: 1.0}}\n"
                    f"seeds: {seeds}\n")
    with pytest.raises(SweepError) as exc:
        load_sweep(path)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and key in message


def test_a_sweep_with_seeds_gets_seeds_zero_to_max_in_its_grid(tmp_path: Path, data_root: Path) -> None:
    doc = {"dataset_root": str(data_root), "grid": {"aug": {"none": {}, "gaussian": {"noise_std": 1.0}}},
           "seeds": {"min": 2, "max": 4, "target_halfwidth": 2.5,
                     "comparisons": [{"key": "aug", "against": "none", "metric": "mpc"}]}}
    sweep = load_sweep(write_sweep(tmp_path, doc))
    assert sweep.grid["seed"] == [0, 1, 2, 3] and len(sweep.points) == 8
    assert sweep.points[0].run_id == "aug-none-seed0"
    assert [c.name for c in sweep.seed_rule.comparisons] == ["aug: gaussian vs none (mpc)"]
    doc["grid"]["seed"] = [0, 1]
    with pytest.raises(SweepError, match="grid.seed and seeds are both given"):
        load_sweep(write_sweep(tmp_path, doc))


def test_no_wait_submits_one_round_a_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from utae.sweep import orchestrate
    from utae.sweep.orchestrate import RunAllOutcome
    from utae.sweep.rounds import run_rounds

    sweep = rule_sweep(tmp_path)
    submitted = []

    def fake_submit(sub: Sweep, results: Path, **_: object) -> RunAllOutcome:  # jobs queued, nothing finished yet
        submitted.append(sorted({p.grid_values["seed"] for p in sub.points}))
        return RunAllOutcome(job_ids=[f"1_{i}" for i in range(len(sub.points))])

    def rounds_call() -> RunAllOutcome:
        return run_rounds(sweep, tmp_path, run_round=fake_submit, study_report=orchestrate._study_report,
                          outcome=RunAllOutcome(), executor="slurm", platform=PLAT, no_wait=True)

    outcome = rounds_call()
    assert submitted == [[0, 1, 2]] and len(outcome.job_ids) == 6 and outcome.report is None
    assert json.loads((tmp_path / SEED_RECORD).read_text())["stopped"] == "running"
    write_runs(tmp_path, range(3), DIFFS)  # the jobs ran; the next make reproduce submits the next round
    rounds_call()
    assert submitted[-1] == [0, 1, 2, 3]


def test_run_all_hands_a_sweep_with_seeds_to_the_rounds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from utae.sweep import orchestrate, rounds

    seen = {}
    monkeypatch.setattr(rounds, "run_rounds", lambda sweep, results, **kw: seen.update(results=results, **kw))
    orchestrate.run_all(rule_sweep(tmp_path), tmp_path / "r", platform=PLAT, jobs=2, report=False)
    assert seen["results"] == tmp_path / "r" and seen["platform"] == PLAT and seen["jobs"] == 2
    assert seen["report"] is False and seen["executor"] == "local"
    assert seen["run_round"] is orchestrate.run_all and isinstance(seen["outcome"], orchestrate.RunAllOutcome)


def test_mpc_is_the_mean_over_kinds_of_the_mean_over_severities(tmp_path: Path) -> None:
    from utae.study.seed_rule import run_metric

    run_dir = make_run(tmp_path, PLAT, "aug-none-seed0", report=False, local_files=False)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    with pytest.raises(ValueError, match="no test_corruptions, so no mpc"):
        run_metric(run_dir, "mpc")
    metrics["test_corruptions"] = [{"kind": "clouds", "severity": s, "miou": 0.1 * s} for s in (1, 2, 3)] + \
        [{"kind": "haze", "severity": 1, "miou": 0.6}]
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    assert run_metric(run_dir, "mpc") == pytest.approx((0.2 + 0.6) / 2)  # clouds: mean of 0.1, 0.2, 0.3
    assert run_metric(run_dir, "test_miou") == metrics["test"]["miou"]
