"""Whole short runs in every precision mode the device supports: what each mode costs in accuracy and gains in speed.

Where :mod:`benchmarks.bench` times the model on random batches, this trains and tests it end to end with
:func:`utae.training.run.run` (loader, pinned memory and non-blocking copies on CUDA, grad scaler for fp16, the
confusion matrix on the device) on a small learnable synthetic set, once per mode, from the same seed. The
table gives each mode's test mIoU and OA, their change against the IEEE float32 run (``amp="off"``), the mean
training throughput and the settings ``platform.json`` recorded. It is the check that a mode runs at all on a
new device, and of the issue's target that mixed precision moves the test mIoU of a short run by under 1 point.

``make bench-runs`` (or ``python -m benchmarks.bench_runs [--device cuda] [--compile] [--channels-last]``).

``--sweep params/default.yaml --point noise0 --seeds 5`` instead runs a study's own configuration (the point
``noise0-seed0`` of the sweep, its synthetic data generated as ``make reproduce`` would) once per mode and seed
``0 .. seeds - 1``, and asks whether a mode's accuracy is the same within the seed spread: the paired differences
of test mIoU against float32 (same seed) give a mean with its 95% t interval (``scipy.stats.ttest_1samp``), set
beside the seed standard deviation of the float32 runs. A mode counts as the same when that interval lies within
plus or minus one seed standard deviation (an equivalence margin: the difference is smaller than what a seed
changes anyway).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import tempfile
from pathlib import Path

import numpy as np

import pandas as pd

from benchmarks.bench import supported_amps
from benchmarks.common import SMALL_WIDTHS, print_table
from utae.machine.record import platform_id, resolve_device
from utae.util.atomic import read_json
from utae.pastis.synthetic import make_synthetic_pastis
from utae.config.run_config import RunConfig
from utae.training.run import run

#: The short run: the default sweep's small widths on 100 patches of 32x32 (about 10 s per mode on one CPU core).
RUN: dict = dict(epochs=10, batch_size=4, seed=0, **SMALL_WIDTHS, test_noise_stds=(0.0,), n_examples=0, progress=False)


def mode_runs(root: Path, out: Path, device: str, amps: list[str], channels_last: bool = False,
              compile: bool = False, settings: dict | None = None) -> pd.DataFrame:
    """One short run per amp mode of ``amps`` (the first should be ``"off"``, the reference); one row each.
    ``settings`` override fields of :data:`RUN`."""
    rows = []
    for amp in amps:
        config = RunConfig(dataset_root=str(root), out_dir=str(out / amp), device=device, amp=amp,
                           channels_last=channels_last, compile=compile, **{**RUN, **(settings or {})})
        metrics = run(config)
        platform = read_json(out / amp / "platform.json")
        rows.append({
            "amp": platform["amp"], "float32_math": platform["float32_math"], "channels_last": channels_last,
            "compile": compile, "test_miou": metrics["test"]["miou"], "test_oa": metrics["test"]["oa"],
            "train_samples_per_s": metrics["timing"]["train_samples_per_s"],
            "eval_samples_per_s": metrics["timing"]["eval_samples_per_s"],
            "peak_mem_mb": metrics["timing"]["peak_mem_mb"],
        })
    table = pd.DataFrame(rows)
    ref = table.iloc[0]
    table["d_miou_points"] = 100 * (table["test_miou"] - ref["test_miou"])
    table["d_oa_points"] = 100 * (table["test_oa"] - ref["test_oa"])
    table["train_speedup"] = table["train_samples_per_s"] / ref["train_samples_per_s"]
    return table


def sweep_mode_runs(sweep_path: str, point: str, seeds: int, out: Path, device: str, amps: list[str],
                    threads: int | None = None) -> pd.DataFrame:
    """The sweep's point ``<point>-seed0`` (its RunConfig, data generated as ``make reproduce`` does) run once per
    amp mode of ``amps`` and seed ``0 .. seeds - 1``: one row each (``seed``, ``amp``, ``test_miou``, ``test_oa``,
    ``train_samples_per_s``, ``sec_per_epoch``)."""
    import torch

    from utae.config.sweepfile import load_sweep
    from utae.sweep.orchestrate import prepare_sweep

    configs = prepare_sweep(load_sweep(sweep_path))
    run_id = f"{point}-seed0"
    if run_id not in configs:
        raise SystemExit(f"--point: {sweep_path} has no point {run_id}; its points: {', '.join(sorted(configs))}")
    if threads:
        torch.set_num_threads(threads)
    rows = []
    for seed in range(seeds):
        for amp in amps:
            config = dataclasses.replace(configs[run_id], seed=seed, amp=amp, device=device, progress=False,
                                         out_dir=str(out / f"seed{seed}-{amp}"))
            metrics = run(config)
            rows.append({"seed": seed, "amp": amp, "test_miou": metrics["test"]["miou"],
                         "test_oa": metrics["test"]["oa"],
                         "train_samples_per_s": metrics["timing"]["train_samples_per_s"],
                         "sec_per_epoch": metrics["timing"]["sec_per_epoch"]})
            print(f"seed {seed} {amp}: test mIoU {metrics['test']['miou']:.4f}", flush=True)
    return pd.DataFrame(rows)


def same_within_seeds(runs: pd.DataFrame, reference: str = "off") -> pd.DataFrame:
    """Per mode of :func:`sweep_mode_runs` other than ``reference``: ``n`` seeds, the mean paired difference of
    test mIoU (points) with its 95% t interval and p-value, the reference's seed sd (points), the mean training
    speed-up, and ``same``: the interval within plus or minus one seed sd."""
    from scipy import stats

    wide = runs.pivot(index="seed", columns="amp", values="test_miou") * 100
    speed = runs.pivot(index="seed", columns="amp", values="train_samples_per_s")
    seed_sd = float(wide[reference].std(ddof=1))
    rows = []
    for amp in [a for a in wide.columns if a != reference]:
        d = (wide[amp] - wide[reference]).to_numpy(float)
        test = stats.ttest_1samp(d, 0.0)
        ci = test.confidence_interval(0.95)
        rows.append({"amp": amp, "n": len(d), "d_miou_points": float(d.mean()), "ci_low": float(ci.low),
                     "ci_high": float(ci.high), "p_value": float(test.pvalue), "seed_sd_points": seed_sd,
                     "train_speedup": float(np.mean(speed[amp] / speed[reference])),
                     "same": bool(math.isfinite(seed_sd) and -seed_sd <= ci.low and ci.high <= seed_sd)})
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format in every run")
    parser.add_argument("--compile", action="store_true", help="torch.compile in every run")
    parser.add_argument("--sweep", help="a sweep file: run its point --point (its own configuration and data)")
    parser.add_argument("--point", default="noise0", help="the point of --sweep, its run id without -seed<s>")
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 of --sweep's point, per mode")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's own)")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    amps = supported_amps(device)
    print(f"Device: {device} ({platform_id(device)}); modes: {', '.join(amps)}")
    if args.sweep:
        if args.seeds < 2:
            raise SystemExit(f"--seeds: at least 2 (a seed spread), got {args.seeds}")
        with tempfile.TemporaryDirectory() as tmp:
            runs = sweep_mode_runs(args.sweep, args.point, args.seeds, Path(tmp), str(device), amps, args.threads)
        print_table(runs)
        print()
        print_table(same_within_seeds(runs))
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_pastis(Path(tmp) / "pastis", n_patches=100, size=32, t_range=(8, 12), seed=1)
        table = mode_runs(root, Path(tmp) / "runs", str(device), amps, args.channels_last, args.compile)
    print_table(table)
    worst = table["d_miou_points"].abs().max()
    print(f"\nLargest change of test mIoU against IEEE float32: {worst:.2f} points (target: under 1)")


if __name__ == "__main__":
    main()
