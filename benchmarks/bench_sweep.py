"""Wall time of a tiny 2-point sweep with the local executor and through a Slurm cluster, and what each executor
adds to a point beyond the point's own run.

The sweep: two points (noise 0 and 0.5) of one epoch on a 10-patch synthetic dataset, the tiny widths of the
notebook tests; no compare.html (it costs the same with either executor). For each executor the table gives

* ``sweep_s``: :func:`utae.sweep.orchestrate.run_all` from start to end (preparing and checking the sweep included);
* ``point_s``: the mean time a point spent in the point runner (:func:`utae.sweep.point.run_point`: kernel start,
  training, test, report), measured inside the worker or the job;
* ``overhead_s`` / ``overhead_max_s``: per point, the time from dispatch (local) or submission (Slurm) to the
  moment the executor saw the point end, minus ``point_s``: worker start, or queueing, job start, submitit and
  the polling delay. The Slurm target is under 10 s.

``make bench-sweep`` (or ``python -m benchmarks.bench_sweep [--partition P] [--epochs N] [--keep DIR]``).
The Slurm row is left out, with the reason, when no cluster answers. The work folder is a temporary one; on a
cluster whose nodes do not share this machine's /tmp, give ``--keep`` a folder on the shared file system.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

from benchmarks.common import print_table
from utae.config.sweepfile import load_sweep
from utae.sweep.slurm import SlurmOptions
from utae.sweep.orchestrate import run_all
from utae.pastis.synthetic import make_synthetic_pastis

TINY: dict = {"batch_size": 4, "encoder_widths": [8, 8, 8, 16], "decoder_widths": [8, 8, 8, 16], "out_conv": [8, 20],
              "n_head": 4, "d_model": 32, "d_k": 4, "test_noise_stds": [0.0, 1.0], "n_examples": 2, "device": "cpu",
              "deterministic": True}


def cluster_unavailable() -> str | None:
    """Why no Slurm cluster can be used, or None."""
    missing = [c for c in ("sbatch", "srun", "sinfo", "scontrol", "sacct") if shutil.which(c) is None]
    if missing:
        return f"Slurm commands not on PATH: {', '.join(missing)}"
    ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    if ping.returncode != 0 or " is UP" not in ping.stdout:
        return "no Slurm controller answers (scontrol ping)"
    return None


def measure(sweep_path: Path, results: Path, executor: str, partition: str | None) -> dict:
    """One run of the sweep with ``executor`` into the empty folder ``results``; one table row."""
    sweep = load_sweep(sweep_path)
    start = time.perf_counter()
    outcome = run_all(sweep, results=results, executor=executor, synthetic_root=None, report=False,
                      slurm=SlurmOptions(partition=partition))
    wall = time.perf_counter() - start
    failed = [f"{r.run_id}: {r.error}" for r in outcome.failed]
    if failed:
        raise SystemExit(f"{executor}: {len(failed)} point(s) failed:\n" + "\n".join(failed))
    overheads = [r.wall - r.seconds for r in outcome.results]
    return {"executor": executor, "points": len(outcome.results), "sweep_s": wall,
            "point_s": statistics.mean(r.seconds for r in outcome.results),
            "overhead_s": statistics.mean(overheads), "overhead_max_s": max(overheads)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_sweep", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=1, help="epochs of each point (default 1)")
    parser.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's default)")
    parser.add_argument("--keep", default=None, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="utae-bench-sweep-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        data = work / "data"
        if not data.is_dir():
            make_synthetic_pastis(data, n_patches=10, size=32, t_range=(4, 6), seed=0)
        sweep = work / "tiny.yaml"
        sweep.write_text(yaml.safe_dump({"name": "bench", "dataset_root": str(data),
                                         "grid": {"noise_std": [0.0, 0.5]},
                                         "fixed": {**TINY, "epochs": args.epochs}}, sort_keys=False))
        stamp = time.strftime("%Y%m%d-%H%M%S")
        rows = [measure(sweep, work / f"local-{stamp}", "local", None)]
        reason = cluster_unavailable()
        if reason is None:
            rows.append(measure(sweep, work / f"slurm-{stamp}", "slurm", args.partition))
        print_table(pd.DataFrame(rows))
        if reason is not None:
            print(f"slurm: not measured ({reason})")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
