"""Where U-TAE's CPU training step goes: its convolutions alone against the whole step, in calibration blocks.

Run with ``python -m benchmarks.bench_step [--threads 1] [--contiguous]``. It takes the training step of
``make bench`` (official widths, B=2, T=12, 64x64, float32, channels-last unless ``--contiguous``), records every
convolution call of one step (forward and backward, with their arguments and layouts), and times, in turns with
the calibration block, the whole step and the replay of those calls alone. The difference is everything else:
normalisation, activations, padding, the skip aggregation, the L-TAE, the loss and Adam. It then prints the
operations outside the convolutions that take the most time (PyTorch's profiler, which adds its own overhead
to the many small ones). The step's goal is 2.63 blocks (:mod:`benchmarks.bench`); the convolutions alone
bound what any change outside them can reach.
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable

import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.bench import SMALL, Mode, build, calibration_step, make_batch
from benchmarks.common import time_fn, train_step_fn
from utae.machine.allocator import keep_freed_memory
from utae.training.engine import make_optimizer
from utae.training.precision import float32_math

_CONVOLUTIONS = (torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default)


class _RecordConvolutions(TorchDispatchMode):
    """Keeps a copy of the arguments of every convolution (forward and backward) dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Callable[..., object], list[object]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        out = func(*args, **(kwargs or {}))
        if func in _CONVOLUTIONS:
            copy = [a.detach().clone(memory_format=torch.preserve_format) if isinstance(a, torch.Tensor) else a
                    for a in args]
            self.calls.append((func, copy))
        return out


def step_and_convolutions(channels_last: bool, repeats: int) -> dict[str, float]:
    """Best seconds of the calibration block, the training step and its convolutions alone, timed in turns."""
    device = torch.device("cpu")
    batch = make_batch(SMALL, device)
    model = build({}, Mode(channels_last=channels_last), device)
    step = train_step_fn(model, make_optimizer(model.parameters(), 1e-3, device), batch, device)
    step()
    recorder = _RecordConvolutions()
    with recorder:
        step()

    def convolutions() -> None:
        for func, args in recorder.calls:
            func(*args)

    fns = {"calibration": calibration_step(device), "step": step, "convolutions": convolutions}
    best = {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            best[name] = min(best[name], time_fn(fn, device, repeats=1, warmup=1))
    best["calls"] = len(recorder.calls)
    return best


def top_operations(channels_last: bool, n: int = 15) -> list[tuple[str, float]]:
    """The ``n`` operations outside the convolutions with the most self time per step (ms), profiled."""
    device = torch.device("cpu")
    model = build({}, Mode(channels_last=channels_last), device)
    step = train_step_fn(model, make_optimizer(model.parameters(), 1e-3, device), make_batch(SMALL, device), device)
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            step()
    per_step: Counter[str] = Counter()
    for event in prof.key_averages():
        if "convolution" not in event.key and "conv2d" not in event.key:
            per_step[event.key] += event.self_cpu_time_total / 3e3
    return per_step.most_common(n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--contiguous", action="store_true", help="the contiguous model instead of channels-last")
    parser.add_argument("--repeats", type=int, default=7, help="timed turns (best of them is kept)")
    args = parser.parse_args(argv)
    if args.threads < 1 or args.repeats < 1:
        parser.error(f"--threads and --repeats must be at least 1, got {args.threads} and {args.repeats}")
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as the training engine does
    layout = "contiguous" if args.contiguous else "channels_last"
    with float32_math(False):
        best = step_and_convolutions(not args.contiguous, args.repeats)
        calib = best["calibration"]
        rest = best["step"] - best["convolutions"]
        print(f"U-TAE official widths, B=2 T=12 64x64, float32 {layout}, {torch.get_num_threads()} thread(s)")
        print(f"  calibration block      {calib * 1e3:8.1f} ms")
        print(f"  training step          {best['step'] * 1e3:8.1f} ms  {best['step'] / calib:5.2f} blocks")
        print(f"  its {int(best['calls'])} convolution calls {best['convolutions'] * 1e3:8.1f} ms  "
              f"{best['convolutions'] / calib:5.2f} blocks")
        print(f"  everything else        {rest * 1e3:8.1f} ms  {rest / calib:5.2f} blocks")
        print("Outside the convolutions, self time per step (profiled):")
        for name, ms in top_operations(not args.contiguous):
            print(f"  {ms:7.2f} ms  {name}")


if __name__ == "__main__":
    main()
