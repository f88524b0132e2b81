"""Atomic result files, and reading every run under ``results/runs`` into pandas DataFrames.

Writing. Every writer puts the data in a temporary file in the destination's directory, flushes and
fsyncs it, then ``os.replace``-s it onto the destination (atomic on POSIX and Windows): a reader sees
the old file or the new one, never half of one, and a writer that fails (or is killed) midway leaves
the previous file intact. Temporary files are named ``.<name>.<random>.tmp`` and are removed on failure.

JSON. :func:`atomic_write_json` writes NaN and +-inf as ``null`` (JSON has no NaN), numpy scalars and
arrays and torch tensors as plain numbers and lists, tuples as lists, paths as strings. The loaders read
``null`` metric values back as NaN.

Layout read by the loaders (one directory a run; ``<platform>`` is :func:`utae.platform.platform_id`)::

    <root>/<platform>/<run_id>/config.json     RunConfig.to_dict()
                               platform.json   utae.platform.platform_info(...)
                               metrics.json    final metrics (written last: a run without it is unfinished)
                               history.csv     one row an epoch

Runs without ``metrics.json`` are unfinished and skipped. A corrupt JSON file raises a ValueError naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import io
import json
import math
import os
import tempfile
import warnings
from pathlib import Path
from collections.abc import Mapping
from typing import IO, Any, Callable, Iterator

import numpy as np
import pandas as pd

__all__ = [
    "SkippedRunWarning",
    "readable_runs",
    "platform_mismatches",
    "remove_stale_temp",
    "run_path",
    "report_path",
    "RunFiles",
    "read_run",
    "atomic_savez",
    "atomic_write_text",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_save_npy",
    "atomic_torch_save",
    "atomic_write_csv",
    "to_jsonable",
    "read_json",
    "finished_run_dirs",
    "load_runs",
    "load_test_noise",
    "load_per_class_iou",
    "load_histories",
    "RUN_COLUMNS",
    "TEST_NOISE_COLUMNS",
    "PER_CLASS_COLUMNS",
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
)
TEST_NOISE_COLUMNS: tuple[str, ...] = ("platform", "run_id", "cfg_noise_std", "cfg_seed", "test_noise_std", "oa", "miou")
PER_CLASS_COLUMNS: tuple[str, ...] = ("platform", "run_id", "cfg_noise_std", "cfg_seed", "class_id", "class_name", "iou")
_HISTORY_KEYS: tuple[str, ...] = ("platform", "run_id")


# --------------------------------------------------------------------------------------------------
# Atomic writers
# --------------------------------------------------------------------------------------------------


def _fsync_dir(directory: Path) -> None:
    """Persist a rename on POSIX (best effort: not every OS/filesystem allows opening a directory)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _file_mode() -> int:
    """The mode of a newly created file under the process umask (0644 with the usual umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def _atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a binary temp file next to it, then os.replace."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600 files; results are ordinary files
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = "the previous version is kept" if dest.exists() else "nothing was written"
            raise OSError(exc.errno, f"{dest}: disk full ({exc.strerror}); {kept}. Free some space and run "
                          "again: the run resumes from its last checkpoint") from exc
        raise
    _fsync_dir(dest.parent)
    return dest


def remove_stale_temp(directory: PathLike) -> list[Path]:
    """Delete the temporary files that a killed atomic write left in ``directory`` (``.<name>.<random>.tmp``;
    the file they were to replace is untouched). Call it only while no other process writes there (a run
    holds its directory's lock). Returns the deleted paths."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (parents created). Returns the path."""
    return _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` to ``path`` (parents created). Returns the path."""
    if not isinstance(text, str):
        raise TypeError(f"{path}: text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding))


def to_jsonable(obj: Any, _where: str = "$") -> Any:
    """A copy of ``obj`` made of JSON types only.

    NaN/inf -> None; numpy scalars -> Python numbers; numpy arrays and torch tensors -> nested lists;
    tuples/sets -> lists; Path -> str; dataclasses -> dicts. Anything else raises TypeError with its location.
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), _where)
    if type(obj).__module__.startswith("torch") and hasattr(obj, "tolist"):
        return to_jsonable(obj.detach().cpu().tolist(), _where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), _where)
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            if isinstance(key, (np.integer, np.floating, np.bool_)):
                key = key.item()
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise TypeError(f"cannot write a {type(key).__name__} key as JSON at {_where}")
            out[key] = to_jsonable(value, f"{_where}.{key}")
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(v, f"{_where}[{i}]") for i, v in enumerate(items)]
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON at {_where}")


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> Path:
    """Atomically write ``obj`` as JSON (see :func:`to_jsonable`); a non-serialisable object raises
    TypeError naming the file, and the previous file (if any) stays as it was."""
    try:
        text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{path}: {exc}") from exc
    return atomic_write_text(path, text)


def atomic_save_npy(path: PathLike, arr: Any) -> Path:
    """Atomically save an array as ``.npy`` (no pickling; object arrays are refused)."""
    array = np.asarray(arr)
    return _atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False))


def atomic_torch_save(path: PathLike, obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj`` (e.g. a checkpoint dict) to ``path``. The bytes are made in memory
    first, so that a failing write (a full disk) is an OSError that names the file."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_savez(path: PathLike, arrays: Mapping[str, Any]) -> Path:
    """Atomically ``np.savez_compressed`` the named arrays to ``path`` (no pickling)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_write_csv(path: PathLike, frame: pd.DataFrame) -> Path:
    """Atomically write a DataFrame as CSV, without the index."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{path}: expected a pandas DataFrame, got {type(frame).__name__}")
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return atomic_write_text(path, buffer.getvalue())


def read_json(path: PathLike) -> Any:
    """Read a JSON file; a missing file raises FileNotFoundError and a corrupt one ValueError, both naming it."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: no such JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: cannot read JSON file ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: corrupt JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc


# --------------------------------------------------------------------------------------------------
# One run: where it lives, its files
# --------------------------------------------------------------------------------------------------


def run_path(results: str | os.PathLike[str], platform: str, run_id: str) -> Path:
    """The run directory of ``run_id`` on ``platform``: ``<results>/runs/<platform>/<run_id>``."""
    return Path(results) / "runs" / platform / run_id


def report_path(results: str | os.PathLike[str], platform: str, run_id: str) -> Path:
    """The HTML report of a run: ``<results>/reports/<platform>/<run_id>.html``."""
    return Path(results) / "reports" / platform / f"{run_id}.html"


@dataclasses.dataclass
class RunFiles:
    """The files of one run directory, loaded.

    Attributes:
        run_dir: the directory.
        config: ``config.json``; platform: ``platform.json``; metrics: ``metrics.json``.
        history: ``history.csv`` (one row an epoch).
        confusion: ``confusion.npy``, ``(n_classes, n_classes)`` int64 counts of the clean test set.
        predictions: ``predictions.npz`` as a dict (``rgb`` ``(N, H, W, 3)``, ``target`` and ``pred``
            ``(N, H, W)``, ``patch_id`` ``(N,)``), or None when the run wrote none.
    """

    run_dir: Path
    config: dict[str, Any]
    platform: dict[str, Any]
    metrics: dict[str, Any]
    history: pd.DataFrame
    confusion: np.ndarray
    predictions: dict[str, np.ndarray] | None


def read_run(run_dir: str | os.PathLike[str]) -> RunFiles:
    """Load the files of a finished run directory (see :class:`RunFiles`).

    Raises:
        FileNotFoundError: naming the run directory and the missing file.
    """
    run_dir = Path(run_dir)
    required = ("config.json", "platform.json", "metrics.json", "history.csv", "confusion.npy")
    missing = [name for name in required if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"run directory {run_dir} lacks {', '.join(missing)} (is the run finished?)")
    predictions = None
    if (run_dir / "predictions.npz").is_file():
        with np.load(run_dir / "predictions.npz", allow_pickle=False) as npz:
            predictions = {key: npz[key] for key in npz.files}
    return RunFiles(
        run_dir=run_dir,
        config=read_json(run_dir / "config.json"),
        platform=read_json(run_dir / "platform.json"),
        metrics=read_json(run_dir / "metrics.json"),
        history=pd.read_csv(run_dir / "history.csv"),
        confusion=np.load(run_dir / "confusion.npy", allow_pickle=False),
        predictions=predictions,
    )


# --------------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------------


def _num(value: Any) -> float:
    """A metric value as float (None / missing -> NaN)."""
    if value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


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


def _check_root(root: PathLike) -> Path | None:
    base = Path(root)
    if not base.exists():
        return None
    if not base.is_dir():
        raise ValueError(f"{base}: the runs root must be a directory (<root>/<platform>/<run_id>/)")
    return base


def _subdirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def finished_run_dirs(root: PathLike = "results/runs", include_unfinished: bool = False) -> Iterator[tuple[str, str, Path]]:
    """Yield ``(platform, run_id, run_dir)`` for every run directory ``<root>/<platform>/<run_id>``
    holding ``metrics.json`` (every run directory with ``include_unfinished``), sorted by platform then run id.
    A missing root yields nothing."""
    base = _check_root(root)
    if base is None:
        return
    for platform_dir in _subdirs(base):
        for run_dir in _subdirs(platform_dir):
            if include_unfinished or (run_dir / "metrics.json").is_file():
                yield platform_dir.name, run_dir.name, run_dir


def _section(metrics: dict[str, Any], key: str, file: Path) -> dict[str, Any]:
    value = metrics.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{file}: '{key}' must be a JSON object, got {type(value).__name__}")
    return value


class SkippedRunWarning(UserWarning):
    """A run folder that a report cannot read (a truncated or malformed file): it is left out, by name."""


def _read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(config, platform, metrics)`` of a finished run, each a JSON object.

    Raises:
        ValueError or FileNotFoundError: naming the file that is missing, corrupt or not an object.
    """
    out = []
    for name in ("config.json", "platform.json", "metrics.json"):
        value = read_json(run_dir / name)
        if not isinstance(value, dict):
            raise ValueError(f"{run_dir / name}: expected a JSON object, got {type(value).__name__}")
        if not value:
            raise ValueError(f"{run_dir / name}: records nothing (an empty object)")
        out.append(value)
    config, platform, metrics = out
    return config, platform, metrics


def readable_runs(root: PathLike = "results/runs") -> Iterator[tuple[str, str, Path, dict, dict, dict]]:
    """``(platform, run_id, run_dir, config, platform_json, metrics)`` of every finished run under ``root``
    whose files read; a broken run is skipped with a :class:`SkippedRunWarning` that names it and why."""
    for platform, run_id, run_dir in finished_run_dirs(root):
        try:
            config, plat, metrics = _read_run(run_dir)
            for key in ("test", "val", "train", "timing"):
                _section(metrics, key, run_dir / "metrics.json")
        except (ValueError, OSError) as exc:
            warnings.warn(SkippedRunWarning(f"{run_dir}: left out of the report: {exc}"), stacklevel=2)
            continue
        yield platform, run_id, run_dir, config, plat, metrics


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
    test, val, train = (_section(metrics, k, file) for k in ("test", "val", "train"))
    timing = _section(metrics, "timing", file)
    row: dict[str, Any] = {
        "platform": platform,
        "run_id": run_id,
        "run_dir": str(run_dir),
        "test_oa": _num(test.get("oa")),
        "test_miou": _num(test.get("miou")),
        "test_macro_f1": _num(test.get("macro_f1")),
        "test_loss": _num(test.get("loss")),
        "val_oa": _num(val.get("oa")),
        "val_miou": _num(val.get("miou")),
        "train_oa": _num(train.get("oa")),
        "best_epoch": _num(metrics.get("best_epoch")),
        "epochs_completed": _num(metrics.get("epochs_completed")),
        "n_train": _num(metrics.get("n_train")),
        "n_val": _num(metrics.get("n_val")),
        "n_test": _num(metrics.get("n_test")),
        "sec_per_epoch": _num(timing.get("sec_per_epoch")),
        "train_samples_per_s": _num(timing.get("train_samples_per_s")),
        "eval_samples_per_s": _num(timing.get("eval_samples_per_s")),
        "peak_mem_mb": _num(timing.get("peak_mem_mb")),
        "total_s": _num(timing.get("total_s")),
    }
    row.update(_prefixed(config, "cfg_", run_dir / "config.json"))
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
            "cfg_noise_std": _num(config.get("noise_std")),
            "cfg_seed": config.get("seed"),
        }
        levels = []
        for entry in entries:
            if not isinstance(entry, dict) or "std" not in entry:
                raise ValueError(f"{file}: every 'test_noise' entry needs a 'std', got {entry!r}")
            levels.append(_num(entry["std"]))
            rows.append({**base, "test_noise_std": levels[-1], "oa": _num(entry.get("oa")), "miou": _num(entry.get("miou"))})
        test = _section(metrics, "test", file)
        if 0.0 not in levels and test:
            rows.append({**base, "test_noise_std": 0.0, "oa": _num(test.get("oa")), "miou": _num(test.get("miou"))})
    frame = pd.DataFrame(rows, columns=list(TEST_NOISE_COLUMNS))
    return frame.sort_values(["platform", "run_id", "test_noise_std"], ignore_index=True) if rows else frame


#: Columns of :func:`load_test_corruptions`.
TEST_CORRUPTION_COLUMNS: tuple[str, ...] = ("platform", "run_id", "cfg_noise_std", "cfg_seed", "eval_mode", "kind",
                                            "severity", "oa", "miou", "iou")


def load_test_corruptions(root: PathLike = "results/runs") -> pd.DataFrame:
    """Long frame of test scores under the corruptions of :mod:`utae.corruptions`: one row per (finished run,
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
        mode = metrics.get("eval_mode") or "padded_batches"
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
            rows.append({"platform": platform, "run_id": run_id, "cfg_noise_std": _num(config.get("noise_std")),
                         "cfg_seed": config.get("seed"), "eval_mode": str(mode), "kind": kind,
                         "severity": severity, "oa": _num(entry.get("oa")), "miou": _num(entry.get("miou")),
                         "iou": tuple(_num(v) for v in iou)})
    frame = pd.DataFrame(rows, columns=list(TEST_CORRUPTION_COLUMNS))
    if not rows:
        return frame.astype({"severity": "int64", "oa": float, "miou": float})
    return frame.sort_values(["platform", "run_id", "kind", "severity"], ignore_index=True)


def load_per_class_iou(root: PathLike = "results/runs") -> pd.DataFrame:
    """Long frame of the clean-test per-class IoU: one row per (finished run, class).

    Columns: platform, run_id, cfg_noise_std, cfg_seed, class_id, class_name (``utae.classes.CLASS_NAMES``),
    iou (NaN for the void class and for classes absent from both target and prediction).
    """
    from utae.classes import CLASS_NAMES

    rows: list[dict[str, Any]] = []
    for platform, run_id, run_dir, config, _, metrics in readable_runs(root):
        file = run_dir / "metrics.json"
        ious = _section(metrics, "test", file).get("iou") or []
        if not isinstance(ious, list):
            raise ValueError(f"{file}: 'test.iou' must be a list, got {type(ious).__name__}")
        for class_id, value in enumerate(ious):
            rows.append(
                {
                    "platform": platform,
                    "run_id": run_id,
                    "cfg_noise_std": _num(config.get("noise_std")),
                    "cfg_seed": config.get("seed"),
                    "class_id": class_id,
                    "class_name": CLASS_NAMES[class_id] if class_id < len(CLASS_NAMES) else f"class {class_id}",
                    "iou": _num(value),
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
