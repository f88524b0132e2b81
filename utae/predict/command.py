"""``python -m utae predict``: its arguments and its run (imported by :mod:`utae.cli`; torch loads only to run).

Example::

    python -m utae predict S2_stack/ --model results/runs/<platform>/<run_id> --out maps/ --probabilities \\
        --stress clouds:3 --draws 8
"""

from __future__ import annotations

import argparse

__all__ = ["HELP", "add_arguments", "run_command"]

HELP = "predict a crop map from your own Sentinel-2 GeoTIFFs (docs/predict.md)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments of the ``predict`` sub-command."""
    p.add_argument("inputs", nargs="+", help="a folder of one 10-band GeoTIFF per date, the files, a CSV of "
                   "file,date rows, or one stack of 10 x T bands (with --dates); bands B2 B3 B4 B5 B6 B7 B8 B8A "
                   "B11 B12")
    p.add_argument("--model", required=True, help="a run folder (or its checkpoint.pt) or official weights "
                   "(Fold_k/model.pth.tar)")
    p.add_argument("--out", required=True, help="the output folder (map.tif, confidence.tif, ...)")
    p.add_argument("--dates", default=None, help="dates file: one date a line (YYYYMMDD or YYYY-MM-DD) for a stack, "
                   "or one a file (default: from the file names, ..._20190415T...)")
    p.add_argument("--norm", default=None, help="the training normalisation: a NORM_S2_patch.json (needed for "
                   "official weights; overrides a run's recorded one) or a JSON {mean: [...], std: [...]}")
    p.add_argument("--fold", type=int, default=None, help="the fold rotation of the weights (default: Fold_k in "
                   "the path, or the run's)")
    p.add_argument("--window", type=int, default=None, help="window size in px (default: the model's patch size)")
    p.add_argument("--overlap", type=int, default=None, help="px shared by neighbouring windows (default: window/4)")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward (default 1 on CPU, 4 on GPU)")
    p.add_argument("--no-confidence", action="store_true", help="do not write confidence.tif")
    p.add_argument("--probabilities", action="store_true", help="also write probabilities.tif (20 float32 bands)")
    p.add_argument("--stress", default=None, metavar="KIND:SEVERITY",
                   help="also predict under seeded corruptions of the suite, e.g. clouds:3 (stress.tif, "
                        "stress_classes.csv)")
    p.add_argument("--draws", type=int, default=8, help="corrupted draws for --stress (default 8)")
    p.add_argument("--seed", type=int, default=0, help="seed of the --stress draws (default 0)")
    p.add_argument("--reference-date", default="auto", help="day offsets count from this date (default auto: "
                   "1 September before the first date)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-quicklook", action="store_true", help="do not write quicklook.png")


def run_command(args: argparse.Namespace) -> int:
    """Run ``predict`` with the parsed ``args``; print the files written. Returns the exit status (0)."""
    from utae.predict.run import predict

    inputs = args.inputs[0] if len(args.inputs) == 1 else args.inputs
    result = predict(inputs, args.model, args.out, dates=args.dates, norm=args.norm, fold=args.fold,
                     window=args.window, overlap=args.overlap, batch_size=args.batch_size,
                     confidence=not args.no_confidence, probabilities=args.probabilities, stress=args.stress,
                     draws=args.draws, seed=args.seed, reference_date=args.reference_date, device=args.device,
                     threads=args.threads, progress=not args.no_progress, quicklook=not args.no_quicklook)
    print(f"[predict] {result.width} x {result.height} px, {len(result.series.dates)} dates, {result.n_windows} "
          f"windows in {result.seconds:.1f} s")
    for name, path in result.outputs.items():
        print(f"[predict] {name}: {path}")
    return 0
