"""The steps of the GPU campaign that run inside Python with torch and the package (see :mod:`benchmarks.gpu_campaign`,
which runs each of them as a child process with its own timeout).

``python -m benchmarks.gpu_campaign_steps env-check --json FILE [--tiny]``
    The versions (GPU, driver, CUDA, torch, cuDNN, Python and the packages the study needs), the platform record of
    :func:`utae.machine.record.platform_info`, an import of every module of the package and of the notebook runner
    (papermill, nbconvert, the kernel), and one U-TAE training step on the device in each precision mode it
    supports: the check that the package runs on the machine's own torch. Writes FILE even when a check fails
    (then exits 1).
``python -m benchmarks.gpu_campaign_steps bench --out-dir DIR [--copy-to DIR] [--deadline-s S] [--tiny]``
    ``make bench BENCH_ARGS=--compile``: the same rows (:func:`benchmarks.bench.bench_mode`, every shape and mode
    of :func:`benchmarks.bench.modes_for`), ordered so that a time limit costs the least: the eager rows first
    (PASTIS scale first), then the torch.compile rows (PASTIS scale first, bf16 channels-last first), each
    compiled row after :func:`torch._dynamo.reset` so that no row silently falls back to eager at dynamo's
    recompile limit. The CSV (``DIR/<platform>.csv``, the columns of ``make bench``) is rewritten after every
    row, so a step killed at its timeout keeps the rows it finished; rows not started before the deadline are
    listed as skipped.
``python -m benchmarks.gpu_campaign_steps tiny-bench-runs``
    ``make bench-runs`` on tiny settings (the CPU dry run): :func:`benchmarks.bench_runs.mode_runs` on a
    15-patch synthetic set, one epoch, the tiny widths of the benchmark tests.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import pkgutil
import platform as _pyplatform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import pandas as pd
import torch

import utae
from benchmarks.bench import (
    MATMUL_DTYPES,
    PASTIS,
    SMALL,
    SYNTHETIC,
    Mode,
    Shape,
    add_speedups,
    bench_mode,
    make_batch,
    matmul_peak_tflops,
    modes_for,
    print_best_speedups,
    run_calibration,
    supported_amps,
)
from benchmarks.bench_data import bench_loader
from benchmarks.bench_runs import mode_runs
from benchmarks.common import SMALL_WIDTHS, print_table, train_step_fn
from utae.models.utae import UTAE
from utae.machine.record import platform_id, platform_info, resolve_device
from utae.training.precision import float32_math, resolve_amp, tf32_enabled
from utae.util.atomic import atomic_write_csv, atomic_write_json
from utae.pastis.synthetic import make_synthetic_pastis

#: The distributions the study needs besides torch: the package's own ranges (pyproject.toml) and the notebook
#: runner. Their versions go into env.json.
PACKAGES = ("numpy", "pandas", "scipy", "statsmodels", "matplotlib", "seaborn", "tqdm", "PyYAML", "papermill",
            "nbconvert", "nbclient", "nbformat", "ipykernel", "jupyter_client", "ipython", "pyzmq", "tornado")
#: Modules imported by the environment check besides every module of ``utae``: the notebook runner and kernel.
RUNNER_MODULES = ("papermill", "nbconvert", "nbclient", "nbformat", "ipykernel", "jupyter_client", "IPython",
                  "zmq", "seaborn", "statsmodels.api", "scipy.stats")

#: The dry run's benchmark shape and widths (those of tests/test_bench.py): a row takes well under a second.
TINY_SHAPE = Shape("tiny B1-T3-16px", 1, 3, 16)
TINY_WIDTHS: dict = dict(encoder_widths=(8, 8, 16), decoder_widths=(8, 8, 16), out_conv=(8, 20), n_head=4, d_model=16)

#: Order of the torch.compile rows of one shape: the modes likeliest to be the fastest first.
COMPILE_PRIORITY = (("bf16", True), ("off", False), ("tf32", True), ("fp16", True),
                    ("bf16", False), ("off", True), ("tf32", False), ("fp16", False))


# --------------------------------------------------------------------------------------------------
# env-check
# --------------------------------------------------------------------------------------------------


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_smi() -> dict[str, str] | None:
    """GPU name, driver and memory as ``nvidia-smi`` reports them (None where it is missing or fails)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    name, driver, memory = (part.strip() for part in (out.stdout.splitlines() or [",,"])[0].split(",")[:3])
    return {"name": name, "driver": driver, "memory": memory}


def import_modules(names: list[str]) -> dict[str, str]:
    """Import each module of ``names``; ``{module: "ok" or the error}``."""
    found = {}
    for name in names:
        try:
            importlib.import_module(name)
            found[name] = "ok"
        except Exception as exc:  # any failure to import is what this check reports
            found[name] = f"{type(exc).__name__}: {exc}"
    return found


def render_check() -> str:
    """Render a one-cell notebook with :func:`utae.report.pages.render_notebook_html` (nbconvert and its templates, as
    every run report needs them): ``"ok"`` or the error."""
    try:
        import nbformat
        from utae.report.pages import render_notebook_html

        with tempfile.TemporaryDirectory(prefix="utae-campaign-report-") as tmp:
            notebook = Path(tmp) / "check.ipynb"
            nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# check")]), notebook)
            html = render_notebook_html(notebook, Path(tmp) / "check.html").read_text()
        return "ok" if "check" in html else "the page lacks the notebook's heading"
    except Exception as exc:  # nbconvert missing, or its templates not found
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def smoke_steps(device: torch.device, widths: dict, shape: Shape) -> dict[str, str]:
    """One U-TAE training step of ``shape`` on ``device`` in each precision mode it supports, with a finite
    loss; ``{amp: "ok" or the error}``."""
    found = {}
    for amp in supported_amps(device):
        try:
            amp_dtype, use_scaler = resolve_amp(amp, device)
            with float32_math(tf32_enabled(amp)):
                torch.manual_seed(0)
                model = UTAE(**widths).to(device)
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
                scaler = torch.amp.GradScaler(device.type) if use_scaler else None
                train_step_fn(model, optimizer, make_batch(shape, device), device, amp_dtype=amp_dtype,
                              scaler=scaler)()
                if not all(torch.isfinite(p).all() for p in model.parameters()):
                    raise FloatingPointError("non-finite weights after one step")
            found[amp] = "ok"
        except Exception as exc:  # a mode that fails is reported with its error
            found[amp] = f"{type(exc).__name__}: {exc}"
    return found


def env_check(json_path: Path, tiny: bool) -> int:
    """Write the environment record to ``json_path`` and print it; 1 when an import or a step failed."""
    device = resolve_device("auto")
    # every module of every subpackage but utae.predict (GeoTIFF maps: rasterio, which the campaign neither needs nor
    # carries to the GPU machine)
    modules = [m.name for m in pkgutil.walk_packages(utae.__path__, "utae.")
               if not m.name.rpartition(".")[2].startswith("_") and not m.name.startswith("utae.predict")]
    record: dict = {
        "python": sys.version.split()[0], "python_executable": sys.executable, "machine": _pyplatform.machine(),
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": torch.cuda.is_available(), "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "nvidia_smi": nvidia_smi(), "packages": {name: _version(name) for name in PACKAGES},
    }
    try:
        record["platform"] = platform_info(device, deterministic=False)
    except Exception as exc:  # recorded, and the check fails
        record["platform"] = {"error": f"{type(exc).__name__}: {exc}"}
    record["imports"] = import_modules(modules + list(RUNNER_MODULES))
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        record["kernels"] = sorted(KernelSpecManager().find_kernel_specs())
    except Exception as exc:  # no kernel: papermill cannot run a point
        record["kernels"] = f"{type(exc).__name__}: {exc}"
    record["report"] = render_check()
    shape = TINY_SHAPE if tiny else SYNTHETIC
    record["train_step"] = smoke_steps(device, TINY_WIDTHS if tiny else SMALL_WIDTHS, shape)
    problems = [f"import {k}: {v}" for k, v in record["imports"].items() if v != "ok"]
    problems += [f"train step amp={k}: {v}" for k, v in record["train_step"].items() if v != "ok"]
    if not isinstance(record["kernels"], list) or "python3" not in record["kernels"]:
        problems.append(f"no python3 Jupyter kernel: {record['kernels']}")
    if record["report"] != "ok":
        problems.append(f"report rendering: {record['report']}")
    if "error" in record["platform"]:
        problems.append(f"platform record: {record['platform']['error']}")
    record["problems"] = problems
    atomic_write_json(json_path, record)
    smi = record["nvidia_smi"] or {}
    print(f"GPU: {record['gpu']} (nvidia-smi: {smi.get('name')}, driver {smi.get('driver')}, {smi.get('memory')})")
    print(f"torch {record['torch']}, CUDA {record['cuda']}, cuDNN {record['cudnn']}, Python {record['python']}")
    print(f"platform: {record['platform'].get('platform_id')} (fingerprint {record['platform'].get('fingerprint')})")
    print("packages: " + ", ".join(f"{k} {v}" for k, v in record["packages"].items()))
    print(f"imports: {sum(v == 'ok' for v in record['imports'].values())} of {len(record['imports'])} modules ok; "
          f"kernels: {record['kernels']}; report rendering: {record['report']}; train step: {record['train_step']}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    print(f"written to {json_path}")
    return 1 if problems else 0


# --------------------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------------------


def bench_plan(device: torch.device, tiny: bool) -> list[tuple[Shape, dict, Mode]]:
    """The rows of ``make bench BENCH_ARGS=--compile`` in the order the campaign times them: every eager row
    (PASTIS scale, then the official widths at 64x64, then the synthetic default's shape; the float32 contiguous
    row of each shape first, as the reference of its speed-ups), then every compiled row (PASTIS first, in the
    order of :data:`COMPILE_PRIORITY`). ``tiny``: the dry run's one tiny shape, float32 eager in both layouts."""
    if tiny:
        return [(TINY_SHAPE, TINY_WIDTHS, Mode()), (TINY_SHAPE, TINY_WIDTHS, Mode(channels_last=True))]
    shapes = [(PASTIS, {}), (SMALL, {}), (SYNTHETIC, SMALL_WIDTHS)]
    modes = modes_for(device, quick=False, try_compile=True)
    eager = [(s, w, m) for s, w in shapes for m in modes if not m.compile]
    rank = {key: i for i, key in enumerate(COMPILE_PRIORITY)}
    compiled = sorted((m for m in modes if m.compile), key=lambda m: rank.get((m.amp, m.channels_last), len(rank)))
    return eager + [(s, w, m) for s, w in shapes for m in compiled]


def write_bench_table(rows: list[dict], platform: str, out_dir: Path, copy_to: Path | None) -> pd.DataFrame:
    """The table of ``rows`` with its speed-ups, written to ``out_dir/<platform>.csv`` (and ``copy_to``)."""
    table = add_speedups(pd.DataFrame(rows))
    table.insert(0, "platform", platform)
    atomic_write_csv(out_dir / f"{platform}.csv", table)
    if copy_to is not None:
        atomic_write_csv(copy_to / f"bench-{platform}.csv", table)
    return table


def bench(out_dir: Path, copy_to: Path | None, deadline_s: float, tiny: bool) -> int:
    """Time every row of :func:`bench_plan` that starts before ``deadline_s`` seconds; 1 when a row failed."""
    start = time.monotonic()
    device = resolve_device("auto")
    torch.backends.cudnn.benchmark = True
    platform = platform_id(device)
    repeats = 1 if tiny else 7
    print(f"Device: {device} ({platform}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"rows not started within {deadline_s:.0f} s are skipped")
    if not tiny:
        with float32_math(False):
            run_calibration(device, repeats)
    matmul_peaks = {}
    for amp in supported_amps(device):
        with float32_math(tf32_enabled(amp)):
            matmul_peaks[amp] = matmul_peak_tflops(device, MATMUL_DTYPES[amp], n=256 if tiny else 2048,
                                                   repeats=1 if tiny else 5)
        print(f"Measured matmul peak (amp={amp}): {matmul_peaks[amp]:.3f} TFLOP/s")
    reference: dict = {}
    rows: list[dict] = []
    failed, skipped = [], []
    table = None
    for shape, widths, mode in bench_plan(device, tiny):
        label = f"{shape.name} amp={mode.amp} channels_last={mode.channels_last} compile={mode.compile}"
        if time.monotonic() - start > deadline_s:
            skipped.append(label)
            continue
        row_start = time.monotonic()
        try:
            if mode.compile:
                torch._dynamo.reset()  # a fresh compile: no row falls back to eager at the recompile limit
            rows.append(bench_mode(shape, widths, mode, device, repeats, reference, matmul_peaks))
        except Exception as exc:  # a mode the platform lacks is reported, and the next row runs
            failed.append(label)
            print(f"  failed {label}: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}")
            continue
        row = rows[-1]
        print(f"  {label}: train {row['train_samples_per_s']:.3g} samples/s, eval {row['eval_samples_per_s']:.3g} "
              f"samples/s, {row['train_tflops']:.3g} TFLOP/s ({time.monotonic() - row_start:.1f} s)", flush=True)
        table = write_bench_table(rows, platform, out_dir, copy_to)
    if table is not None:
        print()
        print_table(table)
        print_best_speedups(table)
        print(f"\nWritten to {out_dir / f'{platform}.csv'}")
    if skipped:
        print(f"\n{len(skipped)} row(s) skipped at the {deadline_s:.0f} s deadline: " + "; ".join(skipped))
    if not tiny and time.monotonic() - start < deadline_s:
        print("\nLoader (pad_collate):")
        print_table(pd.DataFrame(bench_loader(quick=True)))
    if failed:
        print(f"error: {len(failed)} row(s) failed: " + "; ".join(failed), file=sys.stderr)
    return 1 if failed or table is None else 0


# --------------------------------------------------------------------------------------------------
# tiny bench-runs (the dry run's make bench-runs)
# --------------------------------------------------------------------------------------------------


def tiny_bench_runs() -> int:
    """``make bench-runs`` on tiny settings: one epoch per precision mode of the CPU on 15 tiny patches."""
    device = resolve_device("auto")
    amps = supported_amps(device)
    print(f"Device: {device} ({platform_id(device)}); modes: {', '.join(amps)} (tiny settings)")
    with tempfile.TemporaryDirectory(prefix="utae-campaign-runs-") as tmp:
        root = make_synthetic_pastis(Path(tmp) / "pastis", n_patches=15, size=16, t_range=(3, 4), seed=2)
        table = mode_runs(root, Path(tmp) / "runs", str(device), amps, settings=dict(epochs=1, **TINY_WIDTHS, d_k=4))
    print_table(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_campaign_steps",
                                     description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("env-check", help="versions, imports and a training step per precision mode")
    p.add_argument("--json", required=True, type=Path, help="where to write the record")
    p.add_argument("--tiny", action="store_true", help="tiny shapes (the CPU dry run)")
    p = sub.add_parser("bench", help="make bench BENCH_ARGS=--compile, one row at a time, within a deadline")
    p.add_argument("--out-dir", default=Path("results/bench"), type=Path, help="folder of <platform>.csv")
    p.add_argument("--copy-to", default=None, type=Path, help="also write bench-<platform>.csv here")
    p.add_argument("--deadline-s", default=float("inf"), type=float, help="start no row after this many seconds")
    p.add_argument("--tiny", action="store_true", help="one tiny shape, float32 eager (the CPU dry run)")
    sub.add_parser("tiny-bench-runs", help="make bench-runs on tiny settings (the CPU dry run)")
    args = parser.parse_args(argv)
    try:
        if args.command == "env-check":
            return env_check(args.json, args.tiny)
        if args.command == "bench":
            return bench(args.out_dir, args.copy_to, args.deadline_s, args.tiny)
        return tiny_bench_runs()
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
