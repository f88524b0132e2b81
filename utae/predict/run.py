""":func:`predict`: a Sentinel-2 series in GeoTIFFs -> a georeferenced crop map, in bounded memory.

The raster is read one strip of windows at a time (``window`` rows of every date, :mod:`utae.predict.tiling`);
each window's series is prepared (:mod:`utae.predict.prepare`: nodata dates dropped, gaps filled, normalised)
and predicted by the model in eval mode, pad-free, in groups of up to ``batch_size`` windows of the same number
of dates (:func:`utae.models.registry.forward_logits`, the call training and evaluation make: ``x (B, T, C, H,
W)``, ``batch_positions (B, T)``, ``pad_mask (B, T)`` all False, no padded step; a model that does not read dates
ignores ``batch_positions``); the logits are
blended (:class:`~utae.predict.tiling.RollingBlend`) and the rows that no later window covers are written out.
With ``stress``, every window is also predicted under ``draws`` corrupted draws (:mod:`utae.predict.stress`).

Memory. What is held at once: one strip of the input, ``T x 10 x window x W`` values in the files' type (int16:
1.1 GB for a full tile of 10,980 px and 40 dates; the same arrays are filled again for every strip), its nodata
masks (a byte a pixel and date), the blended sums of ``1 + draws`` layers of 20 classes over ``window`` rows
(float32: 112 MB a layer at that width), the rows being written and their softmax, GDAL's block cache (capped,
:func:`utae.predict.geotiff.gdal_env`) and the model's activations for a group of windows. None of it grows with
the raster's height.

Dates. ``batch_positions`` are days since ``reference_date``: ``"auto"`` (the default) is 1 September before
the first acquisition (:func:`utae.predict.dates.season_reference`), PASTIS's 2018-09-01 for a series of the
PASTIS season, and the same day of the season for a series of another year; a date string sets it.
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from utae import __version__
from utae.util.atomic import atomic_write_json
from utae.models.registry import forward_logits
from utae.pastis.classes import N_CLASSES
from utae.pastis.metadata import parse_date
from utae.predict.dates import InputSeries, resolve_inputs, season_reference
from utae.predict.errors import PredictError
from utae.predict.geotiff import MAP_NODATA, OutputWriter, RasterSeries, gdal_env
from utae.predict.model_source import ModelSource, load_model_source, to_device
from utae.predict.prepare import window_series
from utae.predict.stress import StressTally, corrupt_window, parse_stress
from utae.predict.tiling import RollingBlend, Window, grid

__all__ = ["PredictResult", "predict", "OUTPUT_NAMES"]

log = logging.getLogger(__name__)

#: The output files under ``out_dir``.
OUTPUT_NAMES: dict[str, str] = {"map": "map.tif", "confidence": "confidence.tif", "probabilities":
                                "probabilities.tif", "stress": "stress.tif", "stress_csv": "stress_classes.csv",
                                "stress_json": "stress.json", "quicklook": "quicklook.png",
                                "record": "prediction.json"}
_PENDING_GROUPS = 4
_EMIT_ROWS = 32


@dataclass
class PredictResult:
    """What :func:`predict` wrote: ``outputs`` (name -> path, :data:`OUTPUT_NAMES`), the raster's ``height`` and
    ``width``, the ``series`` (files and dates), the windows predicted, the seconds it took and, with stress, the
    per-class ``stress_table``."""

    outputs: dict[str, Path]
    height: int
    width: int
    series: InputSeries
    n_windows: int
    seconds: float
    stress_table: pd.DataFrame | None = None
    record: dict[str, Any] = field(default_factory=dict)


class _Groups:
    """Jobs (one window's series for one layer) grouped by series length and run ``size`` at a time."""

    def __init__(self, model: torch.nn.Module, device: torch.device, size: int, blend: RollingBlend) -> None:
        self.model, self.device, self.size, self.blend = model, device, size, blend
        self.pending: dict[int, list[tuple[int, Window, np.ndarray, torch.Tensor, torch.Tensor]]] = {}
        self.n = 0

    def put(self, layer: int, window: Window, weight: np.ndarray, image: torch.Tensor, days: torch.Tensor) -> None:
        group = self.pending.setdefault(int(image.shape[0]), [])
        group.append((layer, window, weight, image, days))
        self.n += 1
        if len(group) == self.size:
            self._run(self.pending.pop(int(image.shape[0])))
        elif self.n >= self.size * _PENDING_GROUPS:
            self.flush()

    def flush(self) -> None:
        for t in sorted(self.pending):
            self._run(self.pending[t])
        self.pending = {}

    def _run(self, jobs: list) -> None:
        self.n -= len(jobs)
        x = torch.stack([j[3] for j in jobs]).to(self.device)
        days = torch.stack([j[4] for j in jobs]).to(self.device)
        pad = torch.zeros(days.shape, dtype=torch.bool, device=self.device)
        logits = forward_logits(self.model, x, days, pad).float().cpu().numpy()
        for (layer, window, weight, _, _), out in zip(jobs, logits):
            self.blend.add(layer, window, out[:, : window.h, : window.w], weight)


def _softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over axis 0 of ``(K, ...)`` float32 logits."""
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


class _Emitter:
    """Turns finished rows of blended sums into the output rows and writes them."""

    def __init__(self, writer: OutputWriter, keys: set[str], tally: StressTally | None) -> None:
        self.writer, self.keys, self.tally = writer, keys, tally
        self.counts = np.zeros(N_CLASSES, dtype=np.int64)

    def __call__(self, top: int, sums: np.ndarray, weight: np.ndarray) -> None:
        for r in range(0, weight.shape[0], _EMIT_ROWS):  # in chunks: the softmax's temporaries stay small
            self._rows(top + r, sums[:, :, r:r + _EMIT_ROWS], weight[r:r + _EMIT_ROWS])

    def _rows(self, top: int, sums: np.ndarray, weight: np.ndarray) -> None:
        nodata = weight == 0
        logits = sums / np.where(nodata, np.float32(1.0), weight)  # (L, K, n, W)
        classes = logits[0].argmax(axis=0).astype(np.uint8)
        classes[nodata] = MAP_NODATA
        self.counts += np.bincount(classes[~nodata], minlength=N_CLASSES)[:N_CLASSES]
        rows: dict[str, np.ndarray] = {"map": classes}
        if self.keys & {"confidence", "probabilities"}:
            probs = _softmax(logits[0])
            probs[:, nodata] = np.nan
            if "confidence" in self.keys:
                rows["confidence"] = probs.max(axis=0)
            if "probabilities" in self.keys:
                rows["probabilities"] = probs
        if self.tally is not None:
            rows["stress"] = self.tally.add(classes, logits[1:].argmax(axis=1))
        self.writer.write(top, rows)


def _reference(value: str | _dt.date, first: _dt.date) -> _dt.date:
    if isinstance(value, str) and value == "auto":
        return season_reference(first)
    try:
        return parse_date(value, "reference_date")
    except ValueError as exc:
        raise PredictError(str(exc)) from None


def _checked(name: str, value: Any, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise PredictError(f"{name} must be an integer {bound}, got {value!r}")
    return value


def predict(inputs: str | Path | Sequence[str | Path], model: str | Path, out_dir: str | Path, *,
            dates: str | Path | None = None, norm: str | Path | None = None, fold: int | None = None,
            window: int | None = None, overlap: int | None = None, batch_size: int | None = None,
            confidence: bool = True, probabilities: bool = False, stress: str | None = None, draws: int = 8,
            seed: int = 0, reference_date: str | _dt.date = "auto", device: str = "auto",
            threads: int | None = None, progress: bool = True, quicklook: bool = True) -> PredictResult:
    """Predict the crop map of a Sentinel-2 series of GeoTIFFs into ``out_dir`` (see ``docs/predict.md``).

    Args:
        inputs: a folder of one GeoTIFF per date, a list of them, a CSV of ``file,date`` rows, or one stack of
            ``10 x T`` bands with ``dates`` (:func:`utae.predict.dates.resolve_inputs`). Bands in PASTIS's order.
        model: a run folder (or its ``checkpoint.pt``) or official weights (``Fold_k/model.pth.tar``);
            ``norm``, ``fold`` and ``window``: see :func:`utae.predict.model_source.load_model_source`.
        overlap: pixels shared by neighbouring windows (default a quarter of the window; at most half).
        batch_size: windows per forward (default 1 on the CPU, 4 on a GPU).
        confidence, probabilities: also write ``confidence.tif`` (top class probability) and
            ``probabilities.tif`` (one band a class).
        stress: ``"kind:severity"`` of :mod:`utae.perturb.corruptions`, with ``draws`` seeded draws from ``seed``
            (``stress.tif``, ``stress_classes.csv``, ``stress.json``).
        reference_date: ``"auto"`` or the date day offsets count from (see the module docstring).
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...; threads: torch's CPU threads (None: unchanged).
        progress: a tqdm bar of the windows; quicklook: write ``quicklook.png``.

    Returns:
        The :class:`PredictResult`. Raises :class:`PredictError` (one line naming the file or option).
    """
    start = time.perf_counter()
    series = resolve_inputs(inputs, dates)
    source = load_model_source(model, norm=norm, fold=fold, window=window)
    spec = parse_stress(stress, draws)
    size = source.window
    ref = _reference(reference_date, series.dates[0])
    dev = to_device(source, device)
    settings = {"window": size, "overlap": size // 4 if overlap is None else _checked("overlap", overlap, 0, size // 2),
                "batch_size": (_checked("batch_size", batch_size, 1) if batch_size is not None
                               else (4 if dev.type == "cuda" else 1)),
                "device": str(dev), "reference_date": ref.isoformat(), "stress": stress,
                "draws": draws if spec else None, "seed": _checked("seed", seed, 0) if spec else None}
    keys = {"map"} | ({"confidence"} if confidence else set()) | ({"probabilities"} if probabilities else set())
    keys |= {"stress"} if spec else set()
    out_dir = Path(out_dir)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(_checked("threads", threads, 1))
    try:
        with gdal_env(), RasterSeries(series.files, len(series.dates), series.stack) as rasters:
            days = np.array([(d - ref).days for d in series.dates], dtype=np.int64)
            outputs, n_windows, emit = _write_maps(rasters, source, dev, days, settings, spec, keys, out_dir,
                                                   str(model), progress)
            height, width = rasters.height, rasters.width
        table = None
        if emit.tally is not None:
            outputs["stress_csv"], outputs["stress_json"] = (out_dir / OUTPUT_NAMES["stress_csv"],
                                                             out_dir / OUTPUT_NAMES["stress_json"])
            table = emit.tally.write(outputs["stress_csv"], outputs["stress_json"],
                                     {"kind": spec[0], "severity": spec[1], "draws": draws, "seed": seed})
        if quicklook:
            from utae.predict.quicklook import write_quicklook

            with gdal_env():
                outputs["quicklook"] = write_quicklook(series, outputs["map"], out_dir / OUTPUT_NAMES["quicklook"])
    finally:
        torch.set_num_threads(old_threads)
    seconds = time.perf_counter() - start
    record = {"utae_version": __version__, "torch": torch.__version__, "inputs": [str(f) for f in series.files],
              "dates": [d.isoformat() for d in series.dates], "stack": series.stack, "height": height,
              "width": width, "model": source.record, **settings, "n_windows": n_windows,
              "seconds": round(seconds, 3), "class_pixels": emit.counts.tolist(),
              "outputs": {k: p.name for k, p in outputs.items()}}
    outputs["record"] = atomic_write_json(out_dir / OUTPUT_NAMES["record"], record)
    log.info("[predict] %d x %d px, %d dates, %d windows in %.1f s -> %s", height, width, len(series.dates),
             n_windows, seconds, out_dir)
    return PredictResult(outputs=outputs, height=height, width=width, series=series, n_windows=n_windows,
                         seconds=seconds, stress_table=table, record=record)


def _write_maps(rasters: RasterSeries, source: ModelSource, device: torch.device, days: np.ndarray,
                settings: dict[str, Any], spec: tuple[str, int] | None, keys: set[str], out_dir: Path, model: str,
                progress: bool) -> tuple[dict[str, Path], int, _Emitter]:
    """Predict every window into the output GeoTIFFs ``keys``, renamed into place only when complete."""
    tags = {"UTAE_MODEL": model, "UTAE_VERSION": __version__, "UTAE_REFERENCE_DATE": settings["reference_date"]}
    writer = OutputWriter(out_dir, {k: OUTPUT_NAMES[k] for k in sorted(keys)}, rasters, tags)
    try:
        emit = _Emitter(writer, keys, StressTally(settings["draws"]) if spec else None)
        n_windows = _predict_windows(rasters, source, device, days, settings["window"], settings["overlap"],
                                     settings["batch_size"], spec, settings["seed"], emit, progress)
        return writer.commit(), n_windows, emit
    except BaseException:
        writer.abort()
        raise


def _predict_windows(rasters: RasterSeries, source: ModelSource, device: torch.device, days: np.ndarray,
                     size: int, overlap: int, batch: int, spec: tuple[str, int] | None, seed: int,
                     emit: _Emitter, progress: bool) -> int:
    """Predict every window, strip by strip, blending and emitting finished rows; returns the number of windows."""
    from tqdm.auto import tqdm

    strips = grid(rasters.height, rasters.width, size, overlap)
    layers = 1 + (0 if spec is None else emit.tally.draws)
    blend = RollingBlend(layers, N_CLASSES, min(size, rasters.height), rasters.width)
    groups = _Groups(source.model, device, batch, blend)
    norm = (source.mean, source.std)
    n_windows = sum(len(s) for s in strips)
    bar = tqdm(total=n_windows, desc="predict", unit="window", disable=not progress, dynamic_ncols=True)
    buffers = None  # the strip's arrays, filled again for each strip
    with torch.inference_mode(), bar:
        for strip in strips:
            for rows in blend.advance(strip[0].row):
                emit(*rows)
            buffers = rasters.read_rows(strip[0].row, strip[0].h, out=buffers)
            raw, valid = buffers
            for win in strip:
                cols = slice(win.col, win.col + win.w)
                prepared = window_series(raw[..., cols], valid[..., cols], days, source.mean, source.std, size)
                if prepared is not None:
                    image, kept_days, pixels = prepared
                    weight = win.weight * pixels
                    blend.add_weight(win, weight)
                    x, d = torch.from_numpy(image), torch.from_numpy(kept_days)
                    groups.put(0, win, weight, x, d)
                    for draw in range(layers - 1):
                        xc, dc = corrupt_window(x, d, spec[0], spec[1], seed=seed, row=win.row, col=win.col,
                                                draw=draw, norm=norm)
                        groups.put(draw + 1, win, weight, xc, dc)
                bar.update(1)
            groups.flush()
        for rows in blend.finish(rasters.height):
            emit(*rows)
    return n_windows
