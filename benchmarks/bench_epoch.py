"""One training epoch of the default sweep's shape, with U-TAE's hand-written backward passes and without.

``python -m benchmarks.bench_epoch [--rounds 3] [--device cpu] [--threads 1]``.

The data are the default sweep's: the synthetic PASTIS of ``make reproduce`` (300 patches of 32x32, 20 to 30
dates; :func:`utae.pastis.synthetic.make_synthetic_pastis` defaults, written to a temporary folder), fold 1's 180
training patches in a seeded shuffled order, batches of 4 padded by :func:`utae.pastis.dataset.pad_collate`: 45 steps
of forward, float32 cross-entropy, backward and Adam (:func:`benchmarks.common.train_step_fn`), with the
small widths of ``params/default.yaml`` (:data:`benchmarks.common.SMALL_WIDTHS`, ``d_k`` 4).

Variants (every one starts from the same weights):

* ``reference``: PyTorch's reflect padding (:func:`utae.models.ops.reflect_pad_reference`) and the broadcast
  group-weighted sum (:func:`utae.models.ops.group_weighted_sum_reference`): the model before those two ops had
  hand-written backward passes.
* ``pad``: only :func:`utae.models.ops.reflect_pad`; ``aggregation``: only :func:`utae.models.ops.group_weighted_sum`.
* ``default``: both, as :class:`utae.models.utae.UTAE` builds itself.
* ``default channels_last``: the same in the channels-last memory format (``RunConfig.channels_last``).

The variants take each batch of the epoch in turns, with a calibration block
(:func:`benchmarks.bench.calibration_step`) every few batches, so that a change in machine load during the
run affects all of them alike; the table gives each variant's median epoch, the epoch in calibration blocks
(``epoch_blocks``: comparable across machines) and its speed-up over ``reference``. On the CPU the times are
the process's CPU time (``time.process_time``), which other processes on a shared machine disturb less than
wall time.
It also prints the largest logit difference from ``reference`` on the first batch (float rounding only).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from benchmarks.bench import calibration_step
from benchmarks.common import SMALL_WIDTHS, print_table, sync, train_step_fn
from utae.pastis.metadata import FOLD_ROTATIONS
from utae.pastis.dataset import PastisDataset, pad_collate
from utae.models.utae import UTAE
from utae.models.ops import ReflectConv2d, group_weighted_sum_reference, reflect_pad_reference
from utae.models.ltae import TemporalAggregator
from utae.machine.record import platform_id, resolve_device
from utae.pastis.synthetic import make_synthetic_pastis

#: The U-TAE of the default sweep (params/default.yaml).
WIDTHS: dict = dict(SMALL_WIDTHS, d_k=4)
BATCH_SIZE = 4
#: A calibration block runs after every this many batches' turns.
CALIBRATION_EVERY = 5

#: name -> (hand-written reflect padding, hand-written group-weighted sum, channels_last)
VARIANTS: dict[str, tuple[bool, bool, bool]] = {
    "reference": (False, False, False),
    "pad": (True, False, False),
    "aggregation": (False, True, False),
    "default": (True, True, False),
    "default channels_last": (True, True, True),
}


def epoch_batches(root: Path, device: torch.device, seed: int = 0) -> list[tuple[torch.Tensor, ...]]:
    """Fold 1's training patches of the synthetic set at ``root`` in a seeded order, as ``(x (B, T, C, H, W),
    dates (B, T), pad_mask (B, T) on the host, target (B, H, W))`` batches of :data:`BATCH_SIZE`."""
    dataset = PastisDataset(root, folds=FOLD_ROTATIONS[0][0])
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed)).tolist()
    batches = []
    for start in range(0, len(order), BATCH_SIZE):
        b = pad_collate([dataset[i] for i in order[start : start + BATCH_SIZE]])
        batches.append((b["image"].to(device), b["dates"].to(device), b["pad_mask"], b["mask"].to(device)))
    return batches


def build_variant(fast_pad: bool, fast_aggregation: bool, channels_last: bool, device: torch.device) -> UTAE:
    """The default sweep's U-TAE (seed 0) with the chosen implementations of the two ops."""
    torch.manual_seed(0)
    model = UTAE(**WIDTHS).to(device)
    for module in model.modules():
        if isinstance(module, ReflectConv2d) and not fast_pad:
            module.pad_fn = reflect_pad_reference
        if isinstance(module, TemporalAggregator) and not fast_aggregation:
            module.weighted_sum = group_weighted_sum_reference
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def step_fns(model: UTAE, batches: list[tuple[torch.Tensor, ...]], device: torch.device) -> list[Callable[[], None]]:
    """One training step per batch of the epoch (Adam, lr 1e-3)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return [train_step_fn(model, optimizer, batch, device) for batch in batches]


def max_logit_difference(models: dict[str, UTAE], batch: tuple[torch.Tensor, ...]) -> dict[str, float]:
    """Max |logits - reference logits| of each model on ``batch`` in eval mode (before any training)."""
    x, dates, pad_mask, _ = batch
    with torch.no_grad():
        logits = {name: m.eval()(x, dates, pad_mask=pad_mask) for name, m in models.items()}
    return {name: (out - logits["reference"]).abs().max().item() for name, out in logits.items()}


def measure(device: torch.device, rounds: int, root: Path) -> pd.DataFrame:
    """Median epoch seconds of every variant over ``rounds`` timed epochs, after one untimed warm-up epoch;
    one row per variant.

    The variants take the epoch's steps in turns (batch 1 with every variant, then batch 2, ...), with a
    calibration block every :data:`CALIBRATION_EVERY` batches, so that a change in machine load during the run
    affects them alike.
    """
    batches = epoch_batches(root, device)
    models = {name: build_variant(*flags, device) for name, flags in VARIANTS.items()}
    diffs = max_logit_difference(models, batches[0])
    steps = {name: step_fns(model, batches, device) for name, model in models.items()}
    calibration = calibration_step(device)
    clock = time.process_time if device.type == "cpu" else time.perf_counter
    epochs: dict[str, list[float]] = {name: [] for name in [*steps, "calibration"]}
    n_blocks = 0
    for r in range(rounds + 1):
        spent = dict.fromkeys(epochs, 0.0)
        for i in range(len(batches)):
            turn = [(name, fns[i]) for name, fns in steps.items()]
            if i % CALIBRATION_EVERY == 0:
                turn.append(("calibration", calibration))
                n_blocks += r > 0
            for name, fn in turn:
                sync(device)
                start = clock()
                fn()
                sync(device)
                spent[name] += clock() - start
        if r > 0:
            for name, seconds in spent.items():
                epochs[name].append(seconds)
    calib = sum(epochs.pop("calibration")) / n_blocks
    ref = statistics.median(epochs["reference"])
    rows = []
    for name, values in epochs.items():
        med = statistics.median(values)
        rows.append({"variant": name, "epoch_s": med, "min_s": min(values), "max_s": max(values),
                     "epoch_blocks": med / calib, "speedup_vs_reference": ref / med,
                     "max_dlogits": diffs[name]})
    print(f"Calibration block (2 plain 3x3 convs, batch 24, 64x64, fwd+bwd): {calib * 1e3:.1f} ms (mean)")
    print(f"One epoch: {len(batches)} steps of batch {BATCH_SIZE}")
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--rounds", type=int, default=3, help="timed epochs per variant (median reported)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (the sweep gives a run 1)")
    parser.add_argument("--data", default=None,
                        help="an existing default synthetic set (python -m utae.pastis.synthetic ROOT); default: a new one")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    print(f"Device: {device} ({platform_id(device)}), torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.rounds} timed epochs per variant")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data) if args.data else make_synthetic_pastis(Path(tmp) / "synthetic")
        table = measure(device, args.rounds, root)
    print_table(table)


if __name__ == "__main__":
    main()
