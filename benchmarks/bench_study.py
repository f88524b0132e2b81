"""How long `make reproduce` of a sweep takes on this machine: one point timed end to end, the whole study
extrapolated, both also in calibration blocks so that two machines compare by their compute.

One point of the sweep (default: its first, of ``params/default.yaml``) runs through the point runner
(:func:`utae.point.run_point`: kernel start, data, training, test at every noise level, report) into a scratch
results folder, with one torch thread as in a parallel sweep; then the comparison notebook runs on that folder.
The study's expected time is ``ceil(points / jobs) * point + compare``, with one point per core (the local
executor's default): the last round may run alone, so an odd number of points costs a whole round.

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
from pathlib import Path

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

    from utae.sweepfile import load_sweep
    from utae.point import run_point
    from utae.sweep import run_compare
    from utae.synthetic import make_synthetic_pastis

    sweep = load_sweep(args.sweep)
    point = sweep.point(args.point) if args.point else sweep.points[0]
    root = Path(str(point.params.get("dataset_root", "")))
    if not root.is_dir():
        make_synthetic_pastis(root)
    calib = calibration_seconds()
    with tempfile.TemporaryDirectory(prefix="bench-study-") as tmp:
        start = time.perf_counter()
        run_point(sweep, point.run_id, results=tmp, platform="bench", threads=1)
        point_s = time.perf_counter() - start
        start = time.perf_counter()
        run_compare(tmp)
        compare_s = time.perf_counter() - start
    rounds = math.ceil(len(sweep.points) / max(1, args.jobs))
    study_s = rounds * point_s + compare_s
    print(f"calibration block (1 thread): {calib * 1e3:.1f} ms")
    print(f"one point ({point.run_id}, end to end, 1 thread): {point_s:.1f} s = {point_s / calib:,.0f} blocks")
    print(f"comparison notebook: {compare_s:.1f} s = {compare_s / calib:,.0f} blocks")
    print(f"{sweep.name}: {len(sweep.points)} points, {args.jobs} at a time -> {rounds} rounds; expected "
          f"make reproduce: {study_s / 60:.1f} min = {study_s / calib:,.0f} blocks "
          f"(15 min on a machine whose block takes {900 / (study_s / calib) * 1e3:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
