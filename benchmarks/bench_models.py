"""Every registered model side by side: its training step and evaluation forward, in calibration blocks.

``python -m benchmarks.bench --models [NAME ...]`` (``make bench-models``): each model (default: every name of
:func:`utae.models.registry.list_models`) at the synthetic default's size (B=4, T=14, the middle of its 12 to 16
dates, 32x32) with the widths of the cross-architecture study (``params/architectures.yaml``: about the
parameters of the default study's U-TAE; a model the study leaves out at widths of that size,
:data:`STUDY_SIZE_EXTRA`, or at its official ones; the ``widths`` column says which); ``--pastis`` adds the PASTIS-scale rows (B=2, T=30, 128x128, official widths),
which take minutes a step on a CPU.

The steps are those of a run: the training step of :func:`benchmarks.common.train_step_fn` (forward, the
engine's loss, backward, Adam) and one evaluation forward of the same batch (no padded frame). They are timed in
turns with the calibration block (:func:`benchmarks.bench.calibration_step`), each keeping its best time, so
that a change of machine load affects them all alike; a figure is seconds over the block's seconds. The table
also gives each model's trainable parameters and the FLOPs of its training step (``torch.utils.flop_counter``):
models of one size can differ in compute by an order of magnitude (the recurrent ones and TSViT work at full
resolution).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import time_fn, train_step_fn
from utae.training.engine import make_optimizer
from utae.config.sweepfile import read_yaml
from utae.models.registry import count_parameters, create_model, list_models, uses_dates

__all__ = ["STUDY_SWEEP", "STUDY_SIZE_EXTRA", "UTAE_WIDTH_FIELDS", "study_options", "model_rows", "print_models"]

#: The cross-architecture study whose widths the synthetic-size rows use.
STUDY_SWEEP = Path(__file__).resolve().parents[1] / "params" / "architectures.yaml"
#: Widths of about the study's parameter count (88,892, U-TAE's) for the registered models that the study leaves
#: out: ConvGRU 90,170 parameters, BU-ConvLSTM 86,252.
STUDY_SIZE_EXTRA: dict[str, dict[str, Any]] = {
    "convgru": {"hidden_dim": 50},
    "buconvlstm": {"encoder_widths": [16, 16, 16, 16], "decoder_widths": [16, 16, 16, 16], "out_conv": [16, 20],
                   "hidden_dim": 8},
}
#: U-TAE's widths, RunConfig fields of their own (the other models' are in ``model_options``).
UTAE_WIDTH_FIELDS = ("encoder_widths", "decoder_widths", "out_conv", "n_head", "d_model", "d_k")


def study_options(path: str | Path = STUDY_SWEEP) -> dict[str, dict[str, Any]]:
    """The builder options of each model of a sweep file: its case-key cases that set ``model`` (U-TAE's widths
    from its case or ``fixed``, the others' ``model_options``), by model name. Reads the file only."""
    doc = read_yaml(Path(path).read_text(encoding="utf-8"), path) or {}
    fixed = dict(doc.get("fixed") or {})
    found: dict[str, dict[str, Any]] = {}
    for cases in (doc.get("grid") or {}).values():
        if not isinstance(cases, Mapping):
            continue
        for case in cases.values():
            if not isinstance(case, Mapping) or "model" not in case:
                continue
            fields = {**fixed, **case}
            options = dict(fields.get("model_options") or {})
            if fields["model"] == "utae":
                options.update({f: fields[f] for f in UTAE_WIDTH_FIELDS if f in fields})
            found.setdefault(str(fields["model"]), options)
    return found


def make_batch(b: int, t: int, size: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A random unpadded batch: ``x (B, T, 10, H, W)``, sorted days ``(B, T)`` int64 (0 to 364, days since
    the reference date), pad mask ``(B, T)`` all False (on the host, as in training), target ``(B, H, W)``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, 10, size, size, generator=g)
    days = torch.sort(torch.randint(0, 365, (b, t), generator=g), dim=1).values
    target = torch.randint(0, 20, (b, size, size), generator=g)
    return x.to(device), days.to(device), torch.zeros(b, t, dtype=torch.bool), target.to(device)


def _eval_fn(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> Callable[[], torch.Tensor]:
    x, days, pad_mask, _ = batch

    def step() -> torch.Tensor:
        model.eval()
        with torch.inference_mode():
            return model(x, days, pad_mask=pad_mask)

    return step


def model_rows(names: Sequence[str], options: Mapping[str, Mapping[str, Any]], shape: tuple[int, int, int],
               device: torch.device, calibration: Callable[[], None], repeats: int,
               flops: bool = True) -> pd.DataFrame:
    """One row per model: ``model``, ``widths`` ("study" where ``options`` has the model, else "official"),
    ``uses_dates``, ``parameters``, ``train_ms`` / ``eval_ms`` and the same in calibration blocks
    (``train_blocks``, ``eval_blocks``), ``train_gflop``; the calibration block's milliseconds in ``block_ms``.

    ``shape`` is ``(B, T, side)``; every model is built with ``input_size=side`` where it takes one."""
    b, t, side = shape
    batch = make_batch(b, t, side, device)
    fns: dict[tuple[str, str], Callable[[], object]] = {}
    rows: dict[str, dict[str, Any]] = {}
    for name in names:
        torch.manual_seed(0)
        model = create_model(name, input_size=side, **dict(options.get(name, {}))).to(device)
        optimizer = make_optimizer(model.parameters(), 1e-3, device)
        fns[(name, "train")] = train_step_fn(model, optimizer, batch, device)
        fns[(name, "eval")] = _eval_fn(model, batch)
        rows[name] = {"model": name, "widths": "study" if name in options else "official",
                      "uses_dates": uses_dates(model), "parameters": count_parameters(model)}
        if flops:
            with FlopCounterMode(display=False) as counter:
                fns[(name, "train")]()
            rows[name]["train_gflop"] = counter.get_total_flops() / 1e9
    best = {"calibration": float("inf"), **{key: float("inf") for key in fns}}
    calibration()
    for fn in fns.values():
        fn()  # one untimed call each
    for _ in range(max(1, repeats)):
        best["calibration"] = min(best["calibration"], time_fn(calibration, device, repeats=1, warmup=0))
        for key, fn in fns.items():
            best[key] = min(best[key], time_fn(fn, device, repeats=1, warmup=0))
    block = best["calibration"]
    for (name, kind), seconds in ((k, v) for k, v in best.items() if k != "calibration"):
        rows[name][f"{kind}_ms"] = seconds * 1e3
        rows[name][f"{kind}_blocks"] = seconds / block
    table = pd.DataFrame(list(rows.values()))
    table.insert(1, "shape", f"B{b}-T{t}-{side}px")
    table["block_ms"] = block * 1e3
    columns = ["model", "shape", "widths", "uses_dates", "parameters", "train_ms", "train_blocks", "eval_ms",
               "eval_blocks", "train_gflop", "block_ms"]
    return table[[c for c in columns if c in table.columns]]


def print_models(names: Sequence[str] | None, device: torch.device, calibration: Callable[[], None], repeats: int,
                 pastis: bool = False, sweep: str | Path = STUDY_SWEEP) -> pd.DataFrame:
    """Print (and return) the models' table at the synthetic default's size with the study's widths, and with
    ``pastis`` also at PASTIS scale with the official widths."""
    from benchmarks.common import print_table

    names = list(names or list_models())
    unknown = sorted(set(names) - set(list_models()))
    if unknown:
        raise SystemExit(f"--models: unknown model(s) {unknown}; registered: {', '.join(list_models())}")
    study = study_options(sweep)
    sized = {**STUDY_SIZE_EXTRA, **study}
    tables = [model_rows(names, sized, (4, 14, 32), device, calibration, repeats)]
    tables[0]["widths"] = [("study" if n in study else "study size") if w == "study" else w
                           for n, w in zip(tables[0]["model"], tables[0]["widths"])]
    if pastis:
        tables.append(model_rows(names, {}, (2, 30, 128), device, calibration, max(1, repeats // 3), flops=False))
    table = pd.concat(tables, ignore_index=True)
    print(f"\nEvery model, training step and evaluation forward ({device}, {torch.get_num_threads()} threads), "
          f"in calibration blocks; widths 'study' = {Path(sweep).name}, 'study size' = about its parameters "
          "(a model it leaves out), 'official' = the model's defaults:")
    print_table(table)
    return table
