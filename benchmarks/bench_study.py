"""How long `make reproduce` of a sweep takes on this machine: one point timed end to end, the whole study
extrapolated, both also in calibration blocks so that two machines compare by their compute.

One point of the sweep (default: its first, of ``params/default.yaml``) runs through the point runner
(:func:`utae.sweep.point.run_point`: kernel start, data, training, test at every noise level, report) into a scratch
results folder, with one torch thread as in a parallel sweep; then the comparison notebook runs on that folder.
The study's expected time is ``ceil(points / jobs) * point + compare``, with one point per core (the local
executor's default): the last round may run alone, so an odd number of points costs a whole round.

The test-time corruption suite. When the point is tested on corruptions (``test_corruptions``, e.g. every kind at
5 severities in ``params/corruptions.yaml``), its ``metrics.json`` times them (``timing.test_corruptions_s``,
the evaluations alone): the benchmark states what they add to the point, ``suite / (point - suite)``, the
point's time with the suite against the same point without it (target: at most 25%).

The calibration block is :func:`benchmarks.bench.calibration_step` (two plain 3x3 convolutions, batch 24,
64x64, forward and backward, one thread). A machine whose block takes twice as long will take about twice
as long for the study: the figure in blocks is what stays the same.

``make bench-study`` (or ``python -m benchmarks.bench_study [--sweep FILE] [--point RUN_ID] [--jobs N]``).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time

import torch

from benchmarks.bench import calibration_step
from benchmarks.common import time_fn


def calibration_seconds(repeats: int = 7) -> float:
    """The best of ``repeats`` calibration blocks on the CPU with one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return time_fn(calibration_step(torch.device("cpu")), torch.device("cpu"), repeats=repeats)
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_study", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", default="params/default.yaml")
    parser.add_argument("--point", default=None, help="run id of the point to time (default: the sweep's first)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="points at a time (default: cores)")
    args = parser.parse_args(argv)

    from utae.util.atomic import read_json
    from utae.sweep.point import run_point
    from utae.rundir.paths import run_path
    from utae.sweep.orchestrate import prepare_sweep, run_compare
    from utae.config.sweepfile import load_sweep

    sweep = load_sweep(args.sweep)
    point = sweep.point(args.point) if args.point else sweep.points[0]
    prepare_sweep(sweep)  # the synthetic data of the sweep's generator options, when missing
    calib = calibration_seconds()
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        start = time.perf_counter()
        run_point(sweep, point.run_id, results=tmp, platform="bench", threads=1)
        point_s = time.perf_counter() - start
        timing = read_json(run_path(tmp, "bench", point.run_id) / "metrics.json").get("timing") or {}
        n_corruptions = len(read_json(run_path(tmp, "bench", point.run_id) / "config.json")
                            .get("test_corruptions") or [])
        start = time.perf_counter()
        run_compare(tmp)
        compare_s = time.perf_counter() - start
    rounds = math.ceil(len(sweep.points) / max(1, args.jobs))
    study_s = rounds * point_s + compare_s
    print(f"calibration block (1 thread): {calib * 1e3:.1f} ms")
    print(f"one point ({point.run_id}, end to end, 1 thread): {point_s:.1f} s = {point_s / calib:,.0f} blocks")
    print(f"comparison notebook: {compare_s:.1f} s = {compare_s / calib:,.0f} blocks")
    suite_s = float(timing.get("test_corruptions_s") or 0.0)
    if n_corruptions:
        print(f"corruption suite ({n_corruptions} corruptions): {suite_s:.1f} s = {100 * suite_s / point_s:.1f}% of "
              f"the point; it adds {100 * suite_s / max(point_s - suite_s, 1e-9):.1f}% to the point without it "
              "(target: at most 25%)")
    else:
        print("this point is tested on no corruption (test_corruptions is empty)")
    print(f"{sweep.name}: {len(sweep.points)} points, {args.jobs} at a time -> {rounds} rounds; expected "
          f"make reproduce: {study_s / 60:.1f} min = {study_s / calib:,.0f} blocks "
          f"(15 min on a machine whose block takes {900 / (study_s / calib) * 1e3:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
