"""The results tree as pandas DataFrames: every finished run under ``results/runs`` read into tables.

Layout read by the loaders (one directory a run, owned by :mod:`utae.rundir`; ``<platform>`` is
:func:`utae.machine.record.platform_id`)::

    <root>/<platform>/<run_id>/config.json     RunConfig.to_dict()
                               platform.json   utae.machine.record.platform_info(...)
                               metrics.json    final metrics (written last: a run without it is unfinished)
                               history.csv     one row an epoch

Runs without ``metrics.json`` are unfinished and skipped; a run whose files do not read is left out with a
:class:`utae.rundir.paths.SkippedRunWarning` naming it. ``null`` metric values are read back as NaN.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from utae.pastis.classes import CLASS_NAMES
from utae.rundir.paths import as_float, finished_run_dirs
from utae.rundir.readers import metric_section, readable_runs

__all__ = [
    "load_runs",
    "load_test_noise",
    "load_per_class_iou",
    "load_histories",
    "platform_mismatches",
    "RUN_COLUMNS",
    "TEST_NOISE_COLUMNS",
    "PER_CLASS_COLUMNS",
    "LEGACY_EVAL_MODE",
    "load_test_corruptions",
    "TEST_CORRUPTION_COLUMNS",
]

PathLike = str | os.PathLike


#: Columns of :func:`load_runs` that are always present (then ``cfg_*`` and ``plat_*`` columns).
RUN_COLUMNS: tuple[str, ...] = (
    "platform",
    "run_id",
    "run_dir",
    "test_oa",
    "test_miou",
    "test_macro_f1",
    "test_loss",
    "val_oa",
    "val_miou",
    "train_oa",
    "best_epoch",
    "epochs_completed",
    "n_train",
    "n_val",
    "n_test",
    "sec_per_epoch",
    "train_samples_per_s",
    "eval_samples_per_s",
    "peak_mem_mb",
    "total_s",
    "eval_mode",
)
#: How a run's validation and test batches were formed (metrics.json "eval_mode"): runs written before it was
#: recorded were evaluated in padded batches.
LEGACY_EVAL_MODE = "padded_batches"
TEST_NOISE_COLUMNS: tuple[str, ...] = ("platform", "run_id", "cfg_noise_std", "cfg_seed", "test_noise_std", "oa", "miou")
PER_CLASS_COLUMNS: tuple[str, ...] = ("platform", "run_id", "cfg_noise_std", "cfg_seed", "class_id", "class_name", "iou")
_HISTORY_KEYS: tuple[str, ...] = ("platform", "run_id")



def _frame_cell(value: Any) -> Any:
    """A config/platform field as a DataFrame cell: lists -> tuples (hashable), dicts -> JSON text."""
    if isinstance(value, list):
        return tuple(_frame_cell(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def _prefixed(mapping: Any, prefix: str, file: Path) -> dict[str, Any]:
    if not isinstance(mapping, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(mapping).__name__}")
    return {f"{prefix}{key}": _frame_cell(value) for key, value in mapping.items()}



def platform_mismatches(runs: pd.DataFrame) -> pd.DataFrame:
    """Platform folders whose runs' ``platform.json`` names another platform (a folder renamed on import, or
    runs copied by hand): columns platform (the folder), recorded (``platform_id`` in platform.json), n_runs."""
    if runs.empty or "plat_platform_id" not in runs:
        return pd.DataFrame(columns=["platform", "recorded", "n_runs"])
    differ = runs[runs["plat_platform_id"].notna() & (runs["plat_platform_id"] != runs["platform"])]
    return (differ.groupby(["platform", "plat_platform_id"]).size().reset_index(name="n_runs")
            .rename(columns={"plat_platform_id": "recorded"}))


def _run_row(platform: str, run_id: str, run_dir: Path, config: dict, plat: dict, metrics: dict) -> dict[str, Any]:
    file = run_dir / "metrics.json"
    test, val, train = (metric_section(metrics, k, file) for k in ("test", "val", "train"))
    timing = metric_section(metrics, "timing", file)
    row: dict[str, Any] = {
        "platform": platform,
        "run_id": run_id,
        "run_dir": str(run_dir),
        "test_oa": as_float(test.get("oa")),
        "test_miou": as_float(test.get("miou")),
        "test_macro_f1": as_float(test.get("macro_f1")),
        "test_loss": as_float(test.get("loss")),
        "val_oa": as_float(val.get("oa")),
        "val_miou": as_float(val.get("miou")),
        "train_oa": as_float(train.get("oa")),
        "best_epoch": as_float(metrics.get("best_epoch")),
        "epochs_completed": as_float(metrics.get("epochs_completed")),
        "n_train": as_float(metrics.get("n_train")),
        "n_val": as_float(metrics.get("n_val")),
        "n_test": as_float(metrics.get("n_test")),
        "sec_per_epoch": as_float(timing.get("sec_per_epoch")),
        "train_samples_per_s": as_float(timing.get("train_samples_per_s")),
        "eval_samples_per_s": as_float(timing.get("eval_samples_per_s")),
        "peak_mem_mb": as_float(timing.get("peak_mem_mb")),
        "total_s": as_float(timing.get("total_s")),
        "eval_mode": str(metrics.get("eval_mode") or LEGACY_EVAL_MODE),
    }
    # a config written before the model registry means U-TAE with its own options (utae.config.run_config)
    row.update(_prefixed({"model": "utae", "model_options": {}, **config}, "cfg_", run_dir / "config.json"))
    row.update(_prefixed(plat, "plat_", run_dir / "platform.json"))
    return row


def load_runs(root: PathLike = "results/runs") -> pd.DataFrame:
    """One row per finished run under ``root``.

    Columns: :data:`RUN_COLUMNS` (platform, run_id, run_dir; test_oa, test_miou, test_macro_f1, test_loss;
    val_oa, val_miou and train_oa at the best epoch; best_epoch, epochs_completed, n_train/n_val/n_test;
    sec_per_epoch, train_samples_per_s, eval_samples_per_s, peak_mem_mb, total_s), then every
    ``config.json`` field as ``cfg_<name>`` (lists as tuples, objects as JSON text) and every
    ``platform.json`` field as ``plat_<name>``. Metric values that are null or missing are NaN. A run whose
    files cannot be read is left out with a :class:`SkippedRunWarning` naming it (see :func:`readable_runs`).
    With no finished run: an empty frame with the :data:`RUN_COLUMNS`.
    """
    rows = [_run_row(*run) for run in readable_runs(root)]
    if not rows:
        return pd.DataFrame(columns=list(RUN_COLUMNS))
    frame = pd.DataFrame(rows)
    extra = sorted(c for c in frame.columns if c not in RUN_COLUMNS)
    cfg = [c for c in extra if c.startswith("cfg_")]
    plat = [c for c in extra if c.startswith("plat_")]
    return frame[list(RUN_COLUMNS) + cfg + plat]


def load_test_noise(root: PathLike = "results/runs") -> pd.DataFrame:
    """Long frame of test scores under test-time noise: one row per (finished run, test noise level).

    Columns: platform, run_id, cfg_noise_std, cfg_seed, test_noise_std, oa, miou. The clean test set is
    included as ``test_noise_std = 0.0`` (from ``metrics["test"]``) when ``test_noise`` has no level 0.
    """
    rows: list[dict[str, Any]] = []
    for platform, run_id, run_dir, config, _, metrics in readable_runs(root):
        file = run_dir / "metrics.json"
        entries = metrics.get("test_noise") or []
        if not isinstance(entries, list):
            raise ValueError(f"{file}: 'test_noise' must be a list, got {type(entries).__name__}")
        base = {
            "platform": platform,
            "run_id": run_id,
            "cfg_noise_std": as_float(config.get("noise_std")),
            "cfg_seed": config.get("seed"),
        }
        levels = []
        for entry in entries:
            if not isinstance(entry, dict) or "std" not in entry:
                raise ValueError(f"{file}: every 'test_noise' entry needs a 'std', got {entry!r}")
            levels.append(as_float(entry["std"]))
            rows.append({**base, "test_noise_std": levels[-1], "oa": as_float(entry.get("oa")), "miou": as_float(entry.get("miou"))})
        test = metric_section(metrics, "test", file)
        if 0.0 not in levels and test:
            rows.append({**base, "test_noise_std": 0.0, "oa": as_float(test.get("oa")), "miou": as_float(test.get("miou"))})
    frame = pd.DataFrame(rows, columns=list(TEST_NOISE_COLUMNS))
    return frame.sort_values(["platform", "run_id", "test_noise_std"], ignore_index=True) if rows else frame


#: Columns of :func:`load_test_corruptions`.
TEST_CORRUPTION_COLUMNS: tuple[str, ...] = ("platform", "run_id", "cfg_noise_std", "cfg_seed", "eval_mode", "kind",
                                            "severity", "oa", "miou", "iou")


def load_test_corruptions(root: PathLike = "results/runs") -> pd.DataFrame:
    """Long frame of test scores under the corruptions of :mod:`utae.perturb.corruptions`: one row per (finished run,
    ``metrics.json`` ``test_corruptions`` entry).

    Columns: :data:`TEST_CORRUPTION_COLUMNS`: platform, run_id, cfg_noise_std, cfg_seed, ``eval_mode`` (the
    run's ``metrics.json`` field; ``"padded_batches"`` where it is missing, as in every run written before the
    field existed), ``kind``, ``severity`` (int 1..5), ``oa``, ``miou`` and ``iou`` (a tuple of the per-class
    IoUs, NaN where undefined). Runs without ``test_corruptions`` (older ``metrics.json`` files, or runs not
    tested on corruptions) add no row; the clean test score is in :func:`load_runs` (``test_miou``).

    Raises:
        ValueError: naming the ``metrics.json`` whose ``test_corruptions`` is not a list of objects with a
            string ``kind`` and an integer ``severity`` from 1 to 5, or that lists one (kind, severity) twice.
    """
    rows: list[dict[str, Any]] = []
    for platform, run_id, run_dir, config, _, metrics in readable_runs(root):
        file = run_dir / "metrics.json"
        entries = metrics.get("test_corruptions") or []
        if not isinstance(entries, list):
            raise ValueError(f"{file}: 'test_corruptions' must be a list, got {type(entries).__name__}")
        mode = metrics.get("eval_mode") or LEGACY_EVAL_MODE
        seen: set[tuple[str, int]] = set()
        for entry in entries:
            kind = entry.get("kind") if isinstance(entry, dict) else None
            severity = entry.get("severity") if isinstance(entry, dict) else None
            if not isinstance(kind, str) or isinstance(severity, bool) or not isinstance(severity, int) \
                    or not 1 <= severity <= 5:
                raise ValueError(f"{file}: every 'test_corruptions' entry needs a string 'kind' and an integer "
                                 f"'severity' from 1 to 5, got {entry!r}")
            if (kind, severity) in seen:
                raise ValueError(f"{file}: 'test_corruptions' lists {kind}:{severity} more than once")
            seen.add((kind, severity))
            iou = entry.get("iou") or []
            if not isinstance(iou, list):
                raise ValueError(f"{file}: 'iou' of test corruption {kind}:{severity} must be a list, got {iou!r}")
            rows.append({"platform": platform, "run_id": run_id, "cfg_noise_std": as_float(config.get("noise_std")),
                         "cfg_seed": config.get("seed"), "eval_mode": str(mode), "kind": kind,
                         "severity": severity, "oa": as_float(entry.get("oa")), "miou": as_float(entry.get("miou")),
                         "iou": tuple(as_float(v) for v in iou)})
    frame = pd.DataFrame(rows, columns=list(TEST_CORRUPTION_COLUMNS))
    if not rows:
        return frame.astype({"severity": "int64", "oa": float, "miou": float})
    return frame.sort_values(["platform", "run_id", "kind", "severity"], ignore_index=True)


def load_per_class_iou(root: PathLike = "results/runs") -> pd.DataFrame:
    """Long frame of the clean-test per-class IoU: one row per (finished run, class).

    Columns: platform, run_id, cfg_noise_std, cfg_seed, class_id, class_name (``utae.pastis.classes.CLASS_NAMES``),
    iou (NaN for the void class and for classes absent from both target and prediction).
    """
    rows: list[dict[str, Any]] = []
    for platform, run_id, run_dir, config, _, metrics in readable_runs(root):
        file = run_dir / "metrics.json"
        ious = metric_section(metrics, "test", file).get("iou") or []
        if not isinstance(ious, list):
            raise ValueError(f"{file}: 'test.iou' must be a list, got {type(ious).__name__}")
        for class_id, value in enumerate(ious):
            rows.append(
                {
                    "platform": platform,
                    "run_id": run_id,
                    "cfg_noise_std": as_float(config.get("noise_std")),
                    "cfg_seed": config.get("seed"),
                    "class_id": class_id,
                    "class_name": CLASS_NAMES[class_id] if class_id < len(CLASS_NAMES) else f"class {class_id}",
                    "iou": as_float(value),
                }
            )
    return pd.DataFrame(rows, columns=list(PER_CLASS_COLUMNS))


def load_histories(root: PathLike = "results/runs", include_unfinished: bool = False) -> pd.DataFrame:
    """Every run's ``history.csv`` stacked, with ``platform`` and ``run_id`` columns first.

    Only finished runs unless ``include_unfinished``; runs without a history.csv are skipped. An unreadable
    history.csv raises a ValueError naming it. With none: an empty frame with columns platform, run_id.
    """
    frames: list[pd.DataFrame] = []
    for platform, run_id, run_dir in finished_run_dirs(root, include_unfinished=include_unfinished):
        file = run_dir / "history.csv"
        if not file.is_file():
            continue
        try:
            history = pd.read_csv(file)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
            raise ValueError(f"{file}: unreadable history CSV ({exc})") from exc
        history.insert(0, "run_id", run_id)
        history.insert(0, "platform", platform)
        frames.append(history)
    if not frames:
        return pd.DataFrame(columns=list(_HISTORY_KEYS))
    return pd.concat(frames, ignore_index=True)
