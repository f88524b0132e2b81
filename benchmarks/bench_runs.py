"""Whole short runs in every precision mode the device supports: what each mode costs in accuracy and gains in speed.

Where :mod:`benchmarks.bench` times the model on random batches, this trains and tests it end to end with
:func:`utae.training.run.run` (loader, pinned memory and non-blocking copies on CUDA, grad scaler for fp16, the
confusion matrix on the device) on a small learnable synthetic set, once per mode, from the same seed. The
table gives each mode's test mIoU and OA, their change against the IEEE float32 run (``amp="off"``), the mean
training throughput and the settings ``platform.json`` recorded. It is the check that a mode runs at all on a
new device, and of the issue's target that mixed precision moves the test mIoU of a short run by under 1 point.

``make bench-runs`` (or ``python -m benchmarks.bench_runs [--device cuda] [--compile] [--channels-last]``).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--channels-last", action="store_true", help="channels-last memory format in every run")
    parser.add_argument("--compile", action="store_true", help="torch.compile in every run")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    amps = supported_amps(device)
    print(f"Device: {device} ({platform_id(device)}); modes: {', '.join(amps)}")
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_pastis(Path(tmp) / "pastis", n_patches=100, size=32, t_range=(8, 12), seed=1)
        table = mode_runs(root, Path(tmp) / "runs", str(device), amps, args.channels_last, args.compile)
    print_table(table)
    worst = table["d_miou_points"].abs().max()
    print(f"\nLargest change of test mIoU against IEEE float32: {worst:.2f} points (target: under 1)")


if __name__ == "__main__":
    main()
