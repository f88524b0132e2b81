"""Loader throughput: ``PastisDataset`` + ``pad_collate`` against the training step of the same batch.

Two datasets are generated in a temporary folder with :func:`utae.pastis.synthetic.make_synthetic_pastis`:
the synthetic default (32x32, T 20-30) and patches of PASTIS size (128x128, T 38-61). For each,
the loader's throughput (patches/s, one process, memory-mapped reads, normalisation and
``pad_collate`` included) is measured over whole epochs, and a training step of U-TAE (forward,
backward, Adam) on a batch from the same loader is timed: the small widths of the default sweep
on the synthetic set, the official widths on the PASTIS-size set. ``ratio`` is training step time
over loading time per batch; loading is not a bottleneck when it is at least 10.

``python -m benchmarks.bench_data [--quick] [--device auto]`` prints the table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.common import SMALL_WIDTHS, time_fn, train_step_fn
from utae.pastis.dataset import PastisDataset, pad_collate
from utae.models.utae import UTAE
from utae.machine.record import resolve_device
from utae.pastis.synthetic import make_synthetic_pastis
from utae.training.engine import to_device

#: widths of the default sweep (params/default.yaml), used on the synthetic set
#: (name, generator arguments, model widths, (patches in quick mode, patches in full mode))
DATASETS: list[tuple[str, dict, dict | None, tuple[int, int]]] = [
    ("synthetic default 32px T20-30", dict(size=32, t_range=(20, 30)), SMALL_WIDTHS, (60, 300)),
    ("PASTIS size 128px T38-61", dict(size=128, t_range=(38, 61)), {}, (8, 16)),
]


def loader_epoch_seconds(loader: DataLoader, epochs: int) -> float:
    """Best wall-clock seconds of one full pass over ``loader``, over ``epochs`` passes."""
    best = float("inf")
    for _ in range(epochs):
        start = time.perf_counter()
        for _batch in loader:
            pass
        best = min(best, time.perf_counter() - start)
    return best


def train_step_seconds(widths: dict, batch: dict, device: torch.device, steps: int, warmup: int = 1) -> float:
    """Median seconds of a U-TAE training step (forward, cross-entropy, backward, Adam) on ``batch``."""
    torch.manual_seed(0)
    model = UTAE(**widths).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tensors = to_device(batch, device)  # as training moves a batch (the pad mask stays on the host)
    step = train_step_fn(model, optimizer, tensors, device)
    return time_fn(step, device, steps, warmup, reduce=statistics.median)


def _worker_counts(num_workers: int, quick: bool) -> list[int]:
    """``num_workers``, plus (full runs on machines with 4+ cores) a multi-process row: on a GPU the
    training step is fast enough that one loading process can fall short of the 10x margin."""
    counts = [num_workers]
    cores = os.cpu_count() or 1
    if not quick and cores >= 4:
        extra = min(8, cores - 1)
        if extra != num_workers:
            counts.append(extra)
    return counts


def bench_loader(quick: bool = False, device: str | torch.device = "auto", batch_size: int = 4,
                 num_workers: int = 0) -> list[dict]:
    """One row per dataset: loader throughput with ``pad_collate``, and the training step it feeds.

    Columns: ``dataset``, ``patches``, ``gen_s`` (seconds to write the dataset), ``batch_size``,
    ``num_workers``, ``load_patches_per_s``, ``load_ms_per_batch``, ``model`` (``small`` or
    ``official`` widths), ``device``, ``train_ms_per_batch``, ``ratio`` (train / load time per
    batch) and ``ok_10x`` (``ratio >= 10``). The training step is the median of 5 (quick: 3) steps after
    a warm-up step; the official widths on a CPU get a single step. Full runs on machines with 4 or more cores add a row
    with several loader workers per dataset. In quick mode on a CPU the official-width training step
    at PASTIS size (tens of seconds) is not timed: its columns are ``None``. Prints nothing.
    """
    dev = resolve_device(device)
    rows = []
    with tempfile.TemporaryDirectory(prefix="utae-bench-data-") as tmp:
        for name, gen_kwargs, widths, (n_quick, n_full) in DATASETS:
            n_patches = n_quick if quick else n_full
            start = time.perf_counter()
            root = make_synthetic_pastis(Path(tmp) / name.split()[0], n_patches=n_patches, seed=0, overwrite=True,
                                         **gen_kwargs)
            gen_s = time.perf_counter() - start
            ds = PastisDataset(root)
            official = not widths
            train_ms = None
            if not (quick and official and dev.type == "cpu"):
                batch = pad_collate([ds[i] for i in range(min(batch_size, len(ds)))])
                slow = dev.type == "cpu" and official  # about a minute per step on 2 cores
                steps = 1 if slow else (3 if quick else 5)
                train_ms = 1e3 * train_step_seconds(widths, batch, dev, steps=steps, warmup=0 if slow else 1)
            for workers in _worker_counts(num_workers, quick):
                loader = DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                    collate_fn=pad_collate, persistent_workers=workers > 0)
                epoch_s = loader_epoch_seconds(loader, epochs=2 if quick else 3)
                load_ms = 1e3 * epoch_s / len(loader)
                del loader
                ratio = train_ms / load_ms if train_ms is not None else None
                rows.append({
                    "dataset": name,
                    "patches": n_patches,
                    "gen_s": round(gen_s, 2),
                    "batch_size": batch_size,
                    "num_workers": workers,
                    "load_patches_per_s": round(len(ds) / epoch_s, 1),
                    "load_ms_per_batch": round(load_ms, 2),
                    "model": "official" if official else "small",
                    "device": str(dev),
                    "train_ms_per_batch": None if train_ms is None else round(train_ms, 1),
                    "ratio": None if ratio is None else round(ratio, 1),
                    "ok_10x": None if ratio is None else bool(ratio >= 10),
                })
    return rows


def format_table(rows: list[dict]) -> str:
    """A plain-text table of ``rows`` (list of dicts with the same keys)."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])
    cells = [[str(k) for k in keys]] + [["-" if r[k] is None else str(r[k]) for k in keys] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(keys))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer patches and steps")
    parser.add_argument("--device", default="auto", help="device of the training step: auto, cpu, cuda, cuda:N")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args(argv)
    rows = bench_loader(args.quick, device=args.device, batch_size=args.batch_size, num_workers=args.num_workers)
    print(format_table(rows))


if __name__ == "__main__":
    main()
