"""Checking that this machine reproduces committed runs: :func:`verify` reruns points of a sweep and compares.

Each chosen point is rerun with the one point runner (:func:`utae.sweep.point.run_point`) into a scratch results folder,
and every metric (:func:`metric_values`) is paired with the committed run of the same point in each platform
folder. Equal fingerprints (:mod:`utae.machine.record`) must give identical numbers (:func:`verify_failures`); for other
machines the paired differences (this machine minus committed) are reported. A committed run of another config
(the same-run rule, :func:`utae.rundir.same_run.config_differences`) is not compared.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from utae.exchange.export import ExchangeError, subdirs
from utae.util.checks import is_int, is_number
from utae.config.sweepfile import Sweep, SweepError, SweepPoint, load_sweep
from utae.sweep.point import detect_platform, run_point
from utae.util.checks import safe_path_name
from utae.rundir.paths import as_float, is_finished, run_path
from utae.rundir.same_run import config_differences
from utae.rundir.readers import read_checked_metrics, read_record

__all__ = ["VERIFY_COLUMNS", "metric_values", "verify", "verify_failures"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Columns of the frame :func:`verify` returns.
VERIFY_COLUMNS: tuple[str, ...] = ("platform", "run_id", "metric", "committed", "here", "diff", "same_machine",
                                   "identical")


def metric_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a ``metrics.json`` dict that a rerun must reproduce, flat and in a fixed order:
    ``test.<key>``, ``val.<key>``, ``train.<key>`` for every scalar (oa, miou, loss, macro/micro P/R/F1),
    ``test_noise[<std>].oa`` / ``.miou`` for every test noise level, ``test_corruptions[<kind>:<severity>].oa`` /
    ``.miou`` for every test-time corruption, and ``best_epoch``. Null is NaN. (``timing`` is left out: it
    measures speed, not results.)"""
    out: dict[str, float] = {}
    for section in ("test", "val", "train"):
        values = metrics.get(section) or {}
        if isinstance(values, Mapping):
            for key, value in values.items():
                if value is None or is_number(value):
                    out[f"{section}.{key}"] = as_float(value)
    for entry in metrics.get("test_noise") or []:
        if isinstance(entry, Mapping) and is_number(entry.get("std")):
            for key in ("oa", "miou"):
                out[f"test_noise[{float(entry['std']):g}].{key}"] = as_float(entry.get(key))
    for entry in metrics.get("test_corruptions") or []:
        if isinstance(entry, Mapping) and isinstance(entry.get("kind"), str):
            for key in ("oa", "miou"):
                out[f"test_corruptions[{entry['kind']}:{entry.get('severity')}].{key}"] = as_float(entry.get(key))
    out["best_epoch"] = as_float(metrics.get("best_epoch"))
    return out


def _select_points(sweep: Sweep, points: int | Sequence[str] | None) -> list[SweepPoint]:
    if points is None:
        return list(sweep.points)
    if is_int(points):
        if points < 1:
            raise SweepError(f"points must be >= 1, got {points}")
        return list(sweep.points[:points])
    if isinstance(points, str):  # run ids separated by commas or spaces
        points = points.replace(",", " ").split()
    return [sweep.point(str(p).strip()) for p in points]


def _committed_threads(records: Sequence[Mapping[str, Any]]) -> int | None:
    threads = {r.get("torch_threads") for r in records}
    if len(threads) == 1:
        (value,) = threads
        return int(value) if is_int(value) and value >= 1 else None
    return None


def verify(
    sweep_path: PathLike,
    results: PathLike,
    *,
    points: int | Sequence[str] | None = None,
    scratch: PathLike | None = None,
    platform: str | None = None,
    threads: int | None = None,
) -> pd.DataFrame:
    """Rerun points of a sweep on this machine and compare their metrics with the committed runs.

    Each chosen point runs with :func:`utae.sweep.point.run_point` into ``<scratch>/runs/<platform>/<run_id>``
    (a finished one there is reused), then every metric of :func:`metric_values` is paired with the committed
    run of that point in every platform folder of ``<results>/runs`` that has it. A committed run whose
    ``platform.json`` fingerprint equals the rerun's (this machine) must give identical numbers; any
    difference is a failure (:func:`verify_failures`). For another machine (or a run without fingerprint) the
    paired differences are reported, with the largest ``|diff|``. A committed run made with another config
    (the same-run rule, :func:`utae.rundir.same_run.config_differences`) is not compared (a line says so). Points without
    any committed run are not rerun.

    Args:
        points: None (all), the first N points, or run ids (a list, or one comma-separated string).
        scratch: the results folder of the reruns (default: a temporary folder, removed afterwards).
        platform: the platform folder name of the reruns in ``scratch`` (default: this machine's).
        threads: torch threads of the reruns (default: the ``torch_threads`` of the committed runs of this
            machine when they agree, else :func:`utae.sweep.point.run_point`'s default).

    Returns:
        One row per (committed platform, point, metric): :data:`VERIFY_COLUMNS`, i.e. platform, run_id,
        metric, committed, here, diff (here - committed), same_machine, identical (equal, or both NaN).

    Raises:
        SweepError: an unreadable sweep, an unknown point, a point that fails to run.
        ExchangeError: ``scratch`` is ``results``.
        ValueError: a ``platform`` that is not a single folder name (:func:`utae.util.checks.safe_path_name`).
        utae.rundir.paths.RunFolderError: a committed run (or the rerun) whose metrics.json is not finite or does
            not agree with its confusion matrix (:func:`utae.rundir.readers.read_checked_metrics`), before any rerun.
    """
    if platform is not None:
        safe_path_name(platform, "platform")
    if scratch is not None and Path(scratch).resolve() == Path(results).resolve():
        raise ExchangeError(f"--scratch {scratch} is the results folder of the committed runs: the reruns need "
                            "a folder of their own (or none: a temporary one)")
    sweep = load_sweep(sweep_path)
    chosen = _select_points(sweep, points)
    committed_root = Path(results) / "runs"
    committed_platforms = [p.name for p in subdirs(committed_root)] if committed_root.is_dir() else []
    own_scratch = scratch is None
    scratch_dir = Path(tempfile.mkdtemp(prefix="utae-verify-")) if own_scratch else Path(scratch)
    rows: list[dict[str, Any]] = []
    try:
        for point in chosen:
            rows.extend(_verify_point(sweep, point, results, committed_platforms, scratch_dir, platform, threads))
    finally:
        if own_scratch:
            shutil.rmtree(scratch_dir, ignore_errors=True)
    frame = pd.DataFrame(rows, columns=list(VERIFY_COLUMNS))
    _log_verify(frame)
    return frame


def _verify_point(sweep: Sweep, point: SweepPoint, results: PathLike, committed_platforms: Sequence[str],
                  scratch_dir: Path, platform: str | None, threads: int | None) -> list[dict[str, Any]]:
    """The :data:`VERIFY_COLUMNS` rows of one point: rerun it and compare it with each committed run of the same
    config; no rows (and no rerun) when no platform has it."""
    from utae.machine.record import record_fingerprint  # imports torch: only when rerunning

    rid = point.run_id
    pairs = [(p, run_path(results, p, rid)) for p in committed_platforms if is_finished(run_path(results, p, rid))]
    if not pairs:
        log.info(f"[verify] {rid}: no committed run in {Path(results) / 'runs'}; not rerun")
        return []
    committed_metrics = {p: read_checked_metrics(d, str(d)) for p, d in pairs}  # finite, consistent
    records, here_dir, fingerprint_here = _rerun(sweep, point, pairs, scratch_dir, platform, threads)
    here_metrics = metric_values(read_checked_metrics(here_dir, str(here_dir)))
    here_record = read_record(here_dir, "platform.json")
    fingerprint_ran = record_fingerprint(here_record) or fingerprint_here
    here_config = read_record(here_dir, "config.json")
    rows: list[dict[str, Any]] = []
    for plat, committed_dir in pairs:
        changed = [d.split(":")[0] for d in config_differences(read_record(committed_dir, "config.json"),
                                                               here_config)]
        if changed:
            log.info(f"[verify] {plat}/{rid}: committed with another config ({', '.join(changed)} differ); "
                "not compared")
            continue
        record = records[plat]
        same = isinstance(record, Mapping) and record_fingerprint(record) == fingerprint_ran
        rows.extend(_metric_rows(plat, rid, metric_values(committed_metrics[plat]), here_metrics, bool(same)))
    return rows


def _rerun(sweep: Sweep, point: SweepPoint, pairs: Sequence[tuple[str, Path]], scratch_dir: Path,
           platform: str | None, threads: int | None) -> tuple[dict[str, Any], Path, str | None]:
    """Run ``point`` on this machine into ``scratch_dir`` (with the committed threads of this machine unless
    ``threads``); return the committed runs' ``platform.json`` records, the rerun's folder and this machine's
    fingerprint."""
    from utae.machine.record import current_fingerprint, resolve_device  # imports torch: only when rerunning

    rid = point.run_id
    device = str(point.params.get("device", "auto"))
    try:
        fingerprint_here = current_fingerprint(resolve_device(device))
    except ValueError as exc:
        raise SweepError(f"{sweep.path}: point {rid}: device {device!r}: {exc}") from None
    records = {p: (read_record(d, "platform.json") if (d / "platform.json").is_file() else {}) for p, d in pairs}
    same_records = [r for r in records.values()
                    if isinstance(r, Mapping) and r.get("fingerprint") == fingerprint_here]
    run_threads = threads if threads is not None else _committed_threads(same_records)
    here_platform = platform or detect_platform(device)
    run_point(sweep, rid, results=scratch_dir, platform=here_platform, threads=run_threads)
    return records, run_path(scratch_dir, here_platform, rid), fingerprint_here


def _metric_rows(plat: str, rid: str, committed: Mapping[str, float], here: Mapping[str, float],
                 same: bool) -> list[dict[str, Any]]:
    """One row per metric of either run (the committed run's order first; a metric one run lacks is NaN there)."""
    rows = []
    for metric in list(committed) + [m for m in here if m not in committed]:
        a, b = committed.get(metric, math.nan), here.get(metric, math.nan)
        identical = (math.isnan(a) and math.isnan(b)) or a == b
        rows.append({"platform": plat, "run_id": rid, "metric": metric, "committed": a, "here": b,
                     "diff": b - a, "same_machine": same, "identical": bool(identical)})
    return rows


def verify_failures(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`verify` frame where this machine (same fingerprint) did not reproduce a number."""
    return frame[frame["same_machine"].astype(bool) & ~frame["identical"].astype(bool)]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _log_verify(frame: pd.DataFrame) -> None:
    if frame.empty:
        log.info("[verify] nothing compared: no committed run of the chosen points")
        return
    for plat, part in frame.groupby("platform", sort=True):
        n_points = part["run_id"].nunique()
        if part["same_machine"].all():
            bad = part[~part["identical"]]
            if bad.empty:
                log.info(f"[verify] {plat}: same machine, {len(part)} metric(s) of {n_points} point(s) identical")
            else:
                log.info(f"[verify] {plat}: same machine, {len(bad)} metric(s) DIFFER (must be identical):")
                log.info(bad[["run_id", "metric", "committed", "here", "diff"]].to_string(index=False, float_format=_fmt))
            continue
        summary = part.assign(abs_diff=part["diff"].abs()).groupby("metric", sort=False).agg(
            mean_diff=("diff", "mean"), max_abs_diff=("abs_diff", "max"), points=("run_id", "nunique"))
        worst = summary["max_abs_diff"].max()
        log.info(f"[verify] {plat}: another machine; paired differences (this machine - committed) over "
            f"{n_points} point(s), max |diff| {worst:.3g}:")
        log.info(summary.to_string(float_format=_fmt))


