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

Several models. When the sweep's points name several models (``params/architectures.yaml``), one point does not
stand for the others: a ConvLSTM step costs several U-TAE steps. Each model's training step and evaluation forward
are then timed in the same process (one thread, the sweep's widths, batch ``batch_size``, the middle of the
synthetic ``t_range``; :func:`benchmarks.bench_models.model_rows`), and each point is estimated as the timed point's
fixed part (kernel, report: the point less its run's ``timing.total_s``) plus its run scaled by the cost of its
model's run against the timed one's: ``epochs x ceil(n_train / batch_size)`` training steps plus
``epochs x n_val + tests x n_test`` patches evaluated. The study's estimate is the sum of the points over the jobs.

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
from typing import Any

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


def point_options(params: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A point's model and the options it is built with (U-TAE's width fields, or ``model_options``)."""
    from benchmarks.bench_models import UTAE_WIDTH_FIELDS

    model = str(params.get("model", "utae"))
    options = dict(params.get("model_options") or {})
    if model == "utae":
        options.update({f: params[f] for f in UTAE_WIDTH_FIELDS if f in params})
    return model, options


def run_cost(steps: dict[str, float], metrics: dict[str, Any], config: dict[str, Any]) -> float:
    """Seconds of compute of a run whose model takes ``steps["train"]`` a training step and ``steps["eval"]`` an
    evaluation forward of ``steps["batch"]`` patches, with the counts of the timed run (``metrics``, ``config``)."""
    epochs = int(metrics.get("epochs_completed") or config.get("epochs") or 1)
    train_steps = epochs * math.ceil(int(metrics["n_train"]) / int(config.get("batch_size", 1)))
    tests = len(config.get("test_noise_stds") or [0.0]) + len(config.get("test_corruptions") or [])
    patches = epochs * int(metrics["n_val"]) + tests * int(metrics["n_test"])
    return train_steps * steps["train"] + patches * steps["eval"] / steps["batch"]


def per_model_points(sweep: Any, timed: Any, point_s: float, metrics: dict[str, Any],
                     config: dict[str, Any]) -> dict[str, float]:
    """Each model's estimated point seconds (see the module docstring), the models' steps timed here."""
    from benchmarks.bench_models import model_rows

    models = {}
    for p in sweep.points:
        name, options = point_options(p.params)
        models.setdefault(name, options)
    t_range = (sweep.synthetic or {}).get("t_range") or [43, 43]
    side = int((sweep.synthetic or {}).get("size") or 128)
    batch = int(config.get("batch_size", 4))
    shape = (batch, round(sum(t_range) / 2), side)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = model_rows(list(models), models, shape, torch.device("cpu"), calibration_step(torch.device("cpu")),
                          repeats=5, flops=False)
    finally:
        torch.set_num_threads(threads)
    steps = {r.model: {"train": r.train_ms / 1e3, "eval": r.eval_ms / 1e3, "batch": batch} for r in rows.itertuples()}
    run_s = float((metrics.get("timing") or {}).get("total_s") or point_s)
    timed_model = point_options(timed.params)[0]
    base = run_cost(steps[timed_model], metrics, config)
    print(f"steps of each model at B{shape[0]}-T{shape[1]}-{side}px, 1 thread (train / eval forward, ms): "
          + "; ".join(f"{m} {v['train'] * 1e3:.0f} / {v['eval'] * 1e3:.0f}" for m, v in steps.items()))
    return {m: max(point_s - run_s, 0.0) + run_s * run_cost(v, metrics, config) / base for m, v in steps.items()}


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
        metrics = read_json(run_path(tmp, "bench", point.run_id) / "metrics.json")
        config = read_json(run_path(tmp, "bench", point.run_id) / "config.json")
        timing = metrics.get("timing") or {}
        n_corruptions = len(config.get("test_corruptions") or [])
        start = time.perf_counter()
        run_compare(tmp)
        compare_s = time.perf_counter() - start
    rounds = math.ceil(len(sweep.points) / max(1, args.jobs))
    study_s = rounds * point_s + compare_s
    models = [point_options(p.params)[0] for p in sweep.points]
    if len(set(models)) > 1:
        each = per_model_points(sweep, point, point_s, metrics, config)
        for name, seconds in each.items():
            print(f"  a point of {name}: about {seconds:.0f} s = {seconds / calib:,.0f} blocks "
                  f"({models.count(name)} points)")
        study_s = sum(each[m] for m in models) / max(1, args.jobs) + compare_s
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
    shape = f"{rounds} rounds" if len(set(models)) == 1 else f"{len(set(models))} models (the sum over the jobs)"
    print(f"{sweep.name}: {len(sweep.points)} points, {args.jobs} at a time -> {shape}; expected "
          f"make reproduce: {study_s / 60:.1f} min = {study_s / calib:,.0f} blocks "
          f"(15 min on a machine whose block takes {900 / (study_s / calib) * 1e3:.0f} ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
