"""Benchmarks of U-TAE: training and eval throughput, peak memory, accuracy of fast modes, FLOP/s, loader speed.

Run with ``make bench`` (or ``python -m benchmarks.bench [--quick] [--device cuda] [--threads N]``). It prints:

1. A calibration block (two plain 3x3 convolutions, 10->64 with ReLU then 64->64, batch 24, 64x64, forward and
   backward) and the ratio of the U-TAE training step and eval forward to it, at B=2, T=12, 64x64 in float32.
   Ratios to a block measured in the same run make figures comparable across machines and machine load.
2. A table with one row per (shape, amp, channels_last, compile): training and eval samples/s, peak memory,
   max |delta logits| against the float32 eager forward on the same weights and batch, and the achieved FLOP/s
   of the training step (FLOPs counted by ``torch.utils.flop_counter``) with its fraction of the device's peak.
   "float32" means IEEE float32 (``amp="off"``: no TensorFloat-32); ``amp="tf32"`` rows (Ampere and newer GPUs)
   show what TensorFloat-32 tensor cores give, and the speed-up column compares every row with the
   ``amp="off"``, contiguous, eager row of the same shape.
3. The loader's throughput with ``pad_collate`` (patches/s), against the training step of the same batch.

The table is also written to ``results/bench/<platform>.csv``.

``--models [NAME ...]`` prints instead every registered model's training step and eval forward side by side, in
calibration blocks (:mod:`benchmarks.bench_models`; ``make bench-models``).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import SMALL_WIDTHS, print_table, time_fn, train_step_fn
from utae.training.engine import make_optimizer
from utae.models.utae import UTAE
from utae.machine.allocator import keep_freed_memory
from utae.machine.record import peak_memory_mb, platform_id, reset_peak_memory, resolve_device
from utae.training.precision import autocast, float32_math, resolve_amp, tf32_enabled
from utae.util.atomic import atomic_write_csv

#: Peak dense throughput (TFLOP/s) of known GPUs by name fragment: (float32, tf32, bf16/fp16 tensor cores). The first
#: fragment in the device's name wins, so a variant comes before its family ("h100 pcie" before "h100", the SXM).
KNOWN_PEAKS_TFLOPS: dict[str, tuple[float, float, float]] = {
    "h200": (67.0, 494.7, 989.4),
    "h100 pcie": (51.2, 378.0, 756.0),
    "h100": (67.0, 494.7, 989.4),
    "a100": (19.5, 156.0, 312.0),
    "a10g": (31.2, 62.5, 125.0),
    "l4": (30.3, 60.0, 121.0),
    "t4": (8.1, 8.1, 65.0),
    "v100": (15.7, 15.7, 125.0),
}


@dataclass(frozen=True)
class Shape:
    """A benchmark input: batch B, time steps T, square side H=W."""

    name: str
    b: int
    t: int
    size: int


SMALL = Shape("B2-T12-64px", 2, 12, 64)
PASTIS = Shape("B4-T43-128px (PASTIS)", 4, 43, 128)
SYNTHETIC = Shape("B4-T25-32px (synthetic default)", 4, 25, 32)

def make_batch(shape: Shape, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A random batch: ``x (B, T, 10, H, W)``, positions ``(B, T)``, pad mask ``(B, T)``, target ``(B, H, W)``,
    on ``device`` but for the pad mask, which stays on the host as in training (see :func:`utae.training.engine.to_device`)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape.b, shape.t, 10, shape.size, shape.size, generator=g)
    positions = torch.sort(torch.randint(0, 365, (shape.b, shape.t), generator=g), dim=1).values
    pad_mask = torch.zeros(shape.b, shape.t, dtype=torch.bool)
    target = torch.randint(0, 20, (shape.b, shape.size, shape.size), generator=g)
    return x.to(device), positions.to(device), pad_mask, target.to(device)


def calibration_step(device: torch.device) -> Callable[[], None]:
    """Two plain 3x3 convolutions (10->64, ReLU, 64->64), batch 24, 64x64, forward and backward, no norm."""
    torch.manual_seed(0)
    c1 = torch.nn.Conv2d(10, 64, 3, padding=1).to(device)
    c2 = torch.nn.Conv2d(64, 64, 3, padding=1).to(device)
    x = torch.randn(24, 10, 64, 64, device=device)

    def step() -> None:
        c1.zero_grad(set_to_none=True)
        c2.zero_grad(set_to_none=True)
        c2(F.relu(c1(x))).sum().backward()

    return step


@dataclass
class Mode:
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False


def build(widths: dict, mode: Mode, device: torch.device, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = UTAE(**widths).to(device)
    if mode.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def eval_fn(
    model: torch.nn.Module,
    batch: tuple[torch.Tensor, ...],
    device: torch.device,
    forward: Callable[..., torch.Tensor] | None = None,
    amp_dtype: torch.dtype | None = None,
) -> Callable[[], torch.Tensor]:
    """One eval forward of ``batch`` (as in :func:`benchmarks.common.train_step_fn`), returning the logits."""
    x, positions, pad_mask, _ = batch
    forward = model if forward is None else forward

    def step() -> torch.Tensor:
        model.eval()
        with torch.inference_mode(), autocast(device, amp_dtype):
            return forward(x, positions, pad_mask=pad_mask)

    return step


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    """Measured dense matmul throughput (TFLOP/s) of ``n x n`` matrices in ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_fn(lambda: a @ b, device, repeats)
    return 2 * n**3 / seconds / 1e12


def known_peak_tflops(device: torch.device, amp: str) -> float | None:
    """The spec-sheet dense peak of the arithmetic that ``amp`` uses on a known GPU (None elsewhere)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device).lower()
    for key, (fp32, tf32, half) in KNOWN_PEAKS_TFLOPS.items():
        if key in name:
            return {"off": fp32, "tf32": tf32}.get(amp, half)
    return None


#: The matmul dtype whose measured peak each amp mode is compared with (tf32: float32 with TF32 on).
MATMUL_DTYPES = {"off": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def bench_mode(
    shape: Shape, widths: dict, mode: Mode, device: torch.device, repeats: int, reference: dict, matmul_peaks: dict
) -> dict:
    """One row of the table. ``reference`` caches the IEEE float32 eager logits of the same weights and batch;
    ``matmul_peaks`` maps an amp mode to the measured matmul TFLOP/s of its arithmetic."""
    amp_dtype, use_scaler = resolve_amp(mode.amp, device)
    batch = make_batch(shape, device)
    if shape.name not in reference:  # float32 eager logits of the same weights on the same batch
        ref_model = build(widths, Mode(), device)
        ref_model.eval()
        with torch.inference_mode(), float32_math(False):
            reference[shape.name] = ref_model(batch[0], batch[1], pad_mask=batch[2]).float()
        del ref_model
    with float32_math(tf32_enabled(mode.amp)):  # the arithmetic of the mode, for the timings below
        model = build(widths, mode, device)
        if mode.compile:
            # Each compiled row starts from a clean compiler cache: past torch's recompile limit, later rows
            # would silently run eager and report eager timings as compiled.
            torch._dynamo.reset()
        forward = torch.compile(model) if mode.compile else model
        optimizer = make_optimizer(model.parameters(), 1e-3, device)
        scaler = torch.amp.GradScaler(device.type) if use_scaler else None

        evaluate = eval_fn(model, batch, device, forward, amp_dtype)
        with torch.no_grad():
            delta = (evaluate().float() - reference[shape.name]).abs().max().item()
        reset_peak_memory(device)
        eval_s = time_fn(evaluate, device, repeats)
        train = train_step_fn(model, optimizer, batch, device, forward, amp_dtype, scaler)
        train_s = time_fn(train, device, repeats)
        peak = peak_memory_mb(device)
        with FlopCounterMode(display=False) as counter:
            train_step_fn(model, optimizer, batch, device, amp_dtype=amp_dtype)()
        flops = counter.get_total_flops()
        peak_tflops = known_peak_tflops(device, mode.amp)
        achieved = flops / train_s / 1e12
        return {
            "shape": shape.name,
            "amp": mode.amp,
            "channels_last": mode.channels_last,
            "compile": mode.compile,
            "train_samples_per_s": shape.b / train_s,
            "eval_samples_per_s": shape.b / eval_s,
            "train_step_ms": train_s * 1e3,
            "eval_ms": eval_s * 1e3,
            "peak_mem_mb": peak,
            "max_abs_dlogits": delta,
            "train_gflop": flops / 1e9,
            "train_tflops": achieved,
            "peak_tflops": peak_tflops,
            "frac_of_peak": None if peak_tflops is None else achieved / peak_tflops,
            "matmul_tflops": matmul_peaks.get(mode.amp),
            "frac_of_matmul": achieved / matmul_peaks[mode.amp] if matmul_peaks.get(mode.amp) else None,
        }


def supported_amps(device: torch.device) -> list[str]:
    """The amp modes (other than ``auto``) that ``device`` supports."""
    amps = []
    for amp in ("off", "tf32", "bf16", "fp16"):
        try:
            resolve_amp(amp, device)
        except ValueError:
            continue
        amps.append(amp)
    return amps


def modes_for(device: torch.device, quick: bool, try_compile: bool) -> list[Mode]:
    amps = supported_amps(device)
    layouts = [False, True]
    compiles = [False, True] if try_compile else [False]
    modes = [Mode(a, cl, c) for a, cl, c in itertools.product(amps, layouts, compiles)]
    if quick:
        modes = [m for m in modes if not m.compile and (m.amp == "off" or m.channels_last)]
    return modes


def add_speedups(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``train_speedup`` and ``eval_speedup``: samples/s over those of the IEEE float32, contiguous, eager
    row of the same shape (NaN where that row is missing)."""
    base = table[(table["amp"] == "off") & ~table["channels_last"].astype(bool) & ~table["compile"].astype(bool)]
    base = base.set_index("shape")
    out = table.copy()
    for kind in ("train", "eval"):
        ref = out["shape"].map(base[f"{kind}_samples_per_s"])
        out[f"{kind}_speedup"] = out[f"{kind}_samples_per_s"] / ref
    return out


def print_best_speedups(table: pd.DataFrame) -> None:
    """One line per shape: the fastest training mode and its speed-up over the float32 eager path."""
    print("\nFastest training mode per shape, against IEEE float32 eager (contiguous, no compile):")
    for shape, rows in table.groupby("shape", sort=False):
        best = rows.loc[rows["train_samples_per_s"].idxmax()]
        print(f"  {shape}: amp={best['amp']}, channels_last={bool(best['channels_last'])}, "
              f"compile={bool(best['compile'])}: {best['train_samples_per_s']:.2f} samples/s, "
              f"{best['train_speedup']:.2f} x")


def run_calibration(device: torch.device, repeats: int) -> dict[str, float]:
    """Print the calibration block, and the official-config step times at B=2, T=12, 64x64 against it.

    The block and the steps are timed in turns, each keeping its best time, so that a change in machine
    load during the run affects all of them alike. Returns the ratios.
    """
    batch = make_batch(SMALL, device)
    fns: dict[str, Callable[[], object]] = {"calibration": calibration_step(device)}
    for mode in (Mode(), Mode(channels_last=True), Mode(amp="bf16", channels_last=True)):
        try:
            amp_dtype, _ = resolve_amp(mode.amp, device)
        except ValueError:  # no bf16 on this GPU
            continue
        model = build({}, mode, device)
        optimizer = make_optimizer(model.parameters(), 1e-3, device)
        label = ("channels_last" if mode.channels_last else "contiguous") + ("" if amp_dtype is None else " bf16")
        fns[f"train {label}"] = train_step_fn(model, optimizer, batch, device, amp_dtype=amp_dtype)
        fns[f"eval {label}"] = eval_fn(model, batch, device, amp_dtype=amp_dtype)
    best = {name: float("inf") for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(max(repeats, 5)):
        for name, fn in fns.items():
            best[name] = min(best[name], time_fn(fn, device, repeats=1, warmup=0))
    calib = best.pop("calibration")
    print(f"Calibration block (2 plain 3x3 convs, batch 24, 64x64, fwd+bwd): {calib * 1e3:.1f} ms")
    print("U-TAE official widths, B=2 T=12 64x64, as multiples of the calibration block (float32 unless bf16)")
    print("(official implementation: train step about 4.3 x, eval forward about 1.8 x; goals: train step <= 2.63 x,")
    print(" 90% of the block's FLOP rate, and eval forward <= 1.0 x):")
    ratios = {}
    for name, seconds in best.items():
        ratios[name] = seconds / calib
        print(f"  {name:<24} {seconds * 1e3:8.1f} ms  {seconds / calib:5.2f} x")
    return ratios


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats; skip PASTIS-size shapes on CPU")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per figure (default 7, quick 3)")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile modes")
    parser.add_argument("--no-loader", action="store_true", help="skip the loader benchmark")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument("--out", default="results/bench", help="folder of the per-platform CSV")
    parser.add_argument("--models", nargs="*", default=None, metavar="NAME",
                        help="only the models' table: these registered models (none named: all of them)")
    parser.add_argument("--pastis", action="store_true", help="with --models: also at PASTIS scale (minutes on a CPU)")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    repeats = args.repeats or (3 if args.quick else 7)
    torch.backends.cudnn.benchmark = True
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    kept = device.type == "cpu" and keep_freed_memory()  # as the training engine does
    platform = platform_id(device)
    print(f"Device: {device} ({platform}), torch {torch.__version__}, {torch.get_num_threads()} threads"
          + (", freed memory kept (utae.machine.allocator)" if kept else ""))
    if args.models is not None:
        from benchmarks.bench_models import print_models

        with float32_math(False):
            print_models(args.models, device, calibration_step(device), repeats, pastis=args.pastis)
        return

    with float32_math(False):
        run_calibration(device, repeats)

    shapes: list[tuple[Shape, dict]] = [(SYNTHETIC, SMALL_WIDTHS), (SMALL, {})]
    if not (args.quick and device.type == "cpu"):
        shapes.append((PASTIS, {}))
    matmul_peaks: dict = {}
    for amp in supported_amps(device):
        with float32_math(tf32_enabled(amp)):
            matmul_peaks[amp] = matmul_peak_tflops(device, MATMUL_DTYPES[amp])
        print(f"Measured matmul peak (amp={amp}, 2048x2048): {matmul_peaks[amp]:.3f} TFLOP/s")
    reference: dict = {}
    rows = []
    for (shape, widths), mode in itertools.product(shapes, modes_for(device, args.quick, args.compile)):
        try:
            rows.append(bench_mode(shape, widths, mode, device, repeats, reference, matmul_peaks))
        except Exception as err:  # a mode the platform lacks (e.g. no compiler) is reported, not fatal
            print(f"  skipped {shape.name} {mode}: {type(err).__name__}: {str(err).splitlines()[0][:120]}")
    table = add_speedups(pd.DataFrame(rows))
    table.insert(0, "platform", platform)
    print()
    print_table(table)
    print_best_speedups(table)
    out = Path(args.out) / f"{platform}.csv"
    atomic_write_csv(out, table)
    print(f"\nWritten to {out}")

    if not args.no_loader:
        from benchmarks.bench_data import bench_loader

        print("\nLoader (pad_collate):")
        print_table(pd.DataFrame(bench_loader(args.quick)))


if __name__ == "__main__":
    main()
