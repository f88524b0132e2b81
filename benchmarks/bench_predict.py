"""The time per km2 and the peak memory of ``python -m utae predict`` on a synthetic Sentinel-2 raster.

Two measurements, each in a fresh process (its peak resident memory, ``ru_maxrss``, is the figure):

1. **Speed** (``--size`` px a side, ``--dates`` dates; the issue's case is 5,000 px and 20 dates): the official
   U-TAE architecture (``shared/reference/utae_official/state_dict.npz`` when present, else seeded random weights
   of that size: the speed is the same), 128 px windows overlapping by 32, one date per GeoTIFF. It prints the
   windows, the seconds, the seconds per km2 (a 10 m pixel is 100 m2) and the peak memory, and the time this
   rate gives for a 5,000 px, 20-date raster and for a full Sentinel-2 tile (10,980 px; 40 dates cost about
   twice as much a window as 20, the encoder's work being linear in the dates).
2. **The memory bound** (``--bound``): rasters of a full tile's width, 10,980 px, with 40 dates, at three heights
   (``--bound-heights``, default 128, 384 and 640 px: 1, 4 and 7 strips of windows), predicted with a stand-in
   model (a linear map of the input: every buffer of the prediction is real, the model's activations are not, so
   that the check takes minutes, not hours). The peak must not grow with the height: the two taller rasters
   must peak within 5% + 64 MiB of each other (the first strips warm up the allocator and GDAL's block cache;
   a buffer that grew with the rows would add as much again for the next three strips). Then a full tile
   (10,980 x 10,980 px, 40 dates) with the official model is estimated as the tallest peak plus the official
   model's activations for 40 dates (twice those measured in part 1 for 20 dates: the peak of part 1 less its
   idle process, an over-estimate that also counts part 1's own buffers) and must stay under 24 GiB. Either
   failure ends with exit status 1.

The synthetic raster repeats a 128 px synthetic PASTIS patch (``utae.pastis.synthetic``) over the area, written
uncompressed and tiled (256 px blocks) in EPSG:32631. ``python -m benchmarks.bench_predict [--size 1024]
[--dates 20] [--bound] [--threads 2] [--work DIR]``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference" / "utae_official" / "state_dict.npz"
GIB = 2**30
_CHILD = """
import json, resource, sys, time
import torch
from utae.predict import predict, run
args = json.loads(sys.argv[1])
if args.get("standin"):
    class StandIn(torch.nn.Module):  # a linear map of the input: the buffers are real, the activations are not
        def forward(self, x, batch_positions, pad_mask):
            return x[:, -1, :1] * torch.arange(20.0).view(1, 20, 1, 1)
    real = run.load_model_source
    def load(*a, **k):
        source = real(*a, **k)
        source.model = StandIn()
        return source
    run.load_model_source = load
start = time.perf_counter()
result = predict(args["inputs"], args["model"], args["out"], norm=args["norm"], window=128, overlap=32,
                 threads=args["threads"], progress=False, quicklook=False)
print(json.dumps({"seconds": time.perf_counter() - start, "n_windows": result.n_windows,
                  "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""
_IDLE = """
import json, resource, sys
from utae.predict.model_source import load_model_source
import rasterio, torch
load_model_source(sys.argv[1], norm=sys.argv[2], window=128)
print(json.dumps({"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_raster(folder: Path, height: int, width: int, n_dates: int, seed: int = 0) -> tuple[Path, Path]:
    """One GeoTIFF per date of a ``height x width`` raster tiled from a 128 px synthetic patch; returns the folder
    and the normalisation JSON (the synthetic dataset's fold-1 training statistics)."""
    import rasterio
    from rasterio.transform import Affine

    from utae.pastis.metadata import FOLD_ROTATIONS, fold_norm_stats, read_metadata, read_norm
    from utae.pastis.layout import image_path
    from utae.pastis.synthetic import make_synthetic_pastis

    data = make_synthetic_pastis(folder / "pastis", n_patches=5, size=128, t_range=(n_dates, n_dates), seed=seed)
    record = read_metadata(data)[0]
    patch = np.load(image_path(data, record.patch_id))
    mean, std = fold_norm_stats(read_norm(data), FOLD_ROTATIONS[0][0])
    norm = folder / "norm.json"
    norm.write_text(json.dumps({"mean": mean.tolist(), "std": std.tolist()}))
    tifs = folder / "series"
    tifs.mkdir()
    transform = Affine(10.0, 0.0, 300000.0, 0.0, -10.0, 5000000.0)
    reps = math.ceil(width / 128)
    for t, day in enumerate(record.dates):
        name = tifs / f"S2A_MSIL2A_{day}T105031_N0213_R051_T31TCJ_{day}T140000.tif"
        with rasterio.open(name, "w", driver="GTiff", width=width, height=height, count=10, dtype="int16",
                           crs="EPSG:32631", transform=transform, tiled=True, blockxsize=256, blockysize=256) as dst:
            row = np.tile(patch[t], (1, 1, reps))[:, :, :width]
            for y in range(0, height, 128):
                rows = min(128, height - y)
                dst.write(row[:, :rows], window=rasterio.windows.Window(0, y, width, rows))
    return tifs, norm


def write_model(folder: Path, small: bool) -> Path:
    """Official-format weights (``Fold_1/model.pth.tar`` and ``conf.json``): the official architecture (the
    reference stand-in's weights when present) or the default study's small widths."""
    import torch

    from utae.models.utae import UTAE

    widths = dict(encoder_widths=[16, 16, 16, 32], decoder_widths=[16, 16, 16, 32], out_conv=[16, 20], n_head=4,
                  d_model=64) if small else {}
    torch.manual_seed(0)
    model = UTAE(**widths)
    if not small and REFERENCE.is_file():
        from utae.training.weights import load_official_weights

        load_official_weights(model, REFERENCE)
    (folder / "Fold_1").mkdir(parents=True)
    torch.save({"state_dict": model.state_dict()}, folder / "Fold_1" / "model.pth.tar")
    (folder / "conf.json").write_text(json.dumps(widths))
    return folder / "Fold_1" / "model.pth.tar"


def run_child(code: str, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    if proc.returncode:
        raise RuntimeError(f"the measured process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(work: Path, height: int, width: int, n_dates: int, small: bool, threads: int,
            standin: bool = False) -> dict:
    """Write a raster and a model under ``work``, predict in a fresh process; its figures (the folder is removed)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    written = time.perf_counter()
    tifs, norm = write_raster(work, height, width, n_dates)
    model = write_model(work / "model", small)
    written = time.perf_counter() - written
    idle = run_child(_IDLE, str(model), str(norm))["peak_mib"]
    args = {"inputs": str(tifs), "model": str(model), "out": str(work / "out"), "norm": str(norm), "threads": threads,
            "standin": standin}
    out = run_child(_CHILD, json.dumps(args))
    shutil.rmtree(work, ignore_errors=True)
    km2 = height * width * 100 / 1e6
    return {"height": height, "width": width, "dates": n_dates,
            "model": "stand-in" if standin else "small" if small else "official",
            "windows": out["n_windows"], "seconds": out["seconds"], "s_per_window": out["seconds"] / out["n_windows"],
            "km2": km2, "s_per_km2": out["seconds"] / km2, "peak_mib": out["peak_mib"], "idle_mib": idle,
            "write_s": written}


def windows(n: int, size: int = 128, overlap: int = 32) -> int:
    """Windows along an axis of ``n`` px (utae.predict.tiling.window_starts)."""
    from utae.predict.tiling import window_starts

    return len(window_starts(n, size, overlap))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="raster side in px for the speed (default 1024)")
    parser.add_argument("--dates", type=int, default=20, help="dates of the speed raster (default 20)")
    parser.add_argument("--bound", action="store_true", help="also check the memory bound at a full tile's width")
    parser.add_argument("--bound-heights", type=int, nargs=3, default=(128, 384, 640))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_predict."))
    status = 0
    try:
        speed = measure(work / "speed", args.size, args.size, args.dates, small=False, threads=args.threads)
        print(json.dumps(speed))
        rate = speed["s_per_window"]
        for label, side, n_dates in (("5,000 px, 20 dates", 5000, 20), ("10,980 px, 40 dates", 10980, 40)):
            n = windows(side) ** 2
            hours = n * rate * (n_dates / args.dates) / 3600
            print(f"extrapolated at {rate:.2f} s a window of {args.dates} dates: {label}: {n} windows, {hours:.1f} h "
                  f"({hours * 3600 / (side * side * 100 / 1e6):.2f} s/km2)")
        if args.bound:
            peaks = [measure(work / f"bound{h}", h, 10980, 40, small=True, threads=args.threads, standin=True)
                     for h in args.bound_heights]
            for p in peaks:
                print(json.dumps(p))
            mib = [p["peak_mib"] for p in peaks]
            activations = 2 * (speed["peak_mib"] - speed["idle_mib"])  # 40 dates: twice the 20-date activations
            tile = max(mib) + activations
            print(f"peak at heights {list(args.bound_heights)} px (full tile width, 40 dates, stand-in model): "
                  f"{', '.join(f'{m:.0f}' for m in mib)} MiB; a full tile, 40 dates, official model: about "
                  f"{tile:.0f} MiB ({tile / 1024:.1f} GiB)")
            if mib[-1] - mib[-2] > 0.05 * mib[-2] + 64 or tile > 24 * 1024:
                print("FAILED: the peak grows with the height, or a full tile would exceed 24 GiB")
                status = 1
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
