"""The run folder: where a run lives, which files make it finished, how they are read, and when two are one run.

One run is one folder, ``<results>/runs/<platform>/<run_id>/`` (:func:`run_path`; its HTML report is
:func:`report_path`). :func:`utae.run.run` writes it::

    config.json      RunConfig.to_dict()
    platform.json    utae.platform.platform_info(...): software, hardware, the machine's fingerprint
    history.csv      one row an epoch (utae.run.HISTORY_COLUMNS)
    checkpoint.pt    after every epoch (utae.checkpoint): an interrupted run resumes from it
    confusion.npy    the clean test confusion matrix, (20, 20) int64
    predictions.npz  optional: a few test patches for maps (rgb, target, pred, patch_id)
    metrics.json     written last: a run with it is finished (:func:`is_finished`)

Reading. :func:`read_record` is the one validating reader of ``config.json``, ``metrics.json`` and
``platform.json`` (a non-empty JSON object; metrics sections checked); :func:`read_confusion` and
:func:`read_predictions` read the arrays with bounded memory (:mod:`utae.arrays`: headers, shapes and sizes
checked before any data); :func:`validate_run` checks every file of a finished run (import uses it): only
:data:`RUN_FILES`, each within its :data:`FILE_LIMITS`, every score finite, the test scores equal to those of the
confusion matrix and of the std-0 test noise (:func:`check_consistency`; verify uses it through
:func:`read_checked_metrics`), the ``test_corruptions`` those of the config (:func:`check_test_corruptions`);
:func:`read_run` loads them all; :func:`readable_runs` walks a runs tree (leaving out, by name, a run whose
records do not read or whose ``test_corruptions`` are not its config's).

The same-run rule, :func:`config_differences`. Two configs are the same run when every field that can change
the arithmetic is equal. Exempt (:data:`utae.config.HARMLESS_FIELDS`): paths of a machine (``dataset_root``,
``out_dir``; of ``init_weights`` only whether it is set counts, the file itself is identified by the sha256
that metrics.json and the checkpoint record), ``num_workers`` and ``progress``. A field absent from an older
file counts as its default, so fields added since compare equal while the new value is the default. Nothing is
validated against this machine (a recorded data folder need not exist here). The sweep (skip or resume a point),
the run (its folder, its checkpoint), import and verify all use this rule; import and verify also compare the
results with :func:`result_differences` (equal apart from timings).
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utae.arrays import ArrayFileError, human_bytes, load_npy, load_npz
from utae.atomic import read_json, sha256_file
from utae.checks import is_int, is_number
from utae.classes import N_CLASSES
from utae.config import HARMLESS_FIELDS, RunConfig, run_config_fields
from utae.corruption_spec import SEVERITY_TABLE, parse_test_corruptions

__all__ = [
    "REQUIRED_FILES",
    "OPTIONAL_FILES",
    "RUN_FILES",
    "FILE_LIMITS",
    "MAX_PATCH_SIDE",
    "PREDICTION_SHAPES",
    "SCORE_TOLERANCE",
    "is_run_file",
    "is_local_file",
    "check_file_size",
    "read_confusion",
    "read_predictions",
    "check_consistency",
    "check_test_corruptions",
    "read_checked_metrics",
    "IDENTITY_FILES",
    "TIMING_COLUMNS",
    "RunFolderError",
    "RunDirError",
    "lock_run_dir",
    "SkippedRunWarning",
    "RunFiles",
    "run_path",
    "report_path",
    "is_finished",
    "is_started",
    "read_record",
    "metric_section",
    "check_metrics",
    "check_config_record",
    "validate_run",
    "read_run",
    "finished_run_dirs",
    "readable_runs",
    "normal_config",
    "config_differences",
    "result_differences",
    "as_float",
]

PathLike = str | os.PathLike

CONFIG, PLATFORM, METRICS, HISTORY, CONFUSION = "config.json", "platform.json", "metrics.json", "history.csv", \
    "confusion.npy"
CHECKPOINT, PREDICTIONS, LOCK_FILE = "checkpoint.pt", "predictions.npz", ".lock"
#: Files every finished run has (``predictions.npz`` is optional).
REQUIRED_FILES: tuple[str, ...] = (CONFIG, PLATFORM, METRICS, HISTORY, CONFUSION)
OPTIONAL_FILES: tuple[str, ...] = (PREDICTIONS,)
#: The files of a finished run that travel between machines (export, import): nothing else is ever imported.
RUN_FILES: tuple[str, ...] = REQUIRED_FILES + OPTIONAL_FILES
#: Files and folders of a run directory that stay on the machine that made it: the checkpoint, the executed
#: notebook, the lock, TensorBoard's event files (utae.tensorboard_log.TENSORBOARD_DIR); also hidden and
#: temporary files (:func:`is_local_file`).
LOCAL_FILES: tuple[str, ...] = (CHECKPOINT, "run.ipynb", LOCK_FILE, "tensorboard")
_LOCAL_SUFFIXES = (".tmp", ".partial.ipynb")
#: The largest size in bytes of each run file accepted from another machine, checked before anything is written
#: or read. Each is far above what a run writes: config.json and platform.json about 1 kB; metrics.json about
#: 5 kB (10 kB more per test-noise level); history.csv about 130 B an epoch; confusion.npy 3,328 B (a (20, 20)
#: int64 .npy); predictions.npz about 1.8 MB for the default 4 PASTIS patches of 128 x 128 (compressed less).
FILE_LIMITS: dict[str, int] = {CONFIG: 256_000, PLATFORM: 256_000, METRICS: 4_000_000, HISTORY: 16_000_000,
                               CONFUSION: 64_000, PREDICTIONS: 64_000_000}
#: The largest side of a patch in predictions.npz (PASTIS patches are 128 x 128).
MAX_PATCH_SIDE = 1024
#: The members of predictions.npz and their shapes (``N`` patches of ``S x S`` pixels; see :mod:`utae.arrays`).
PREDICTION_SHAPES: dict[str, tuple[int | str, ...]] = {"rgb": ("N", "S", "S", 3), "target": ("N", "S", "S"),
                                                        "pred": ("N", "S", "S"), "patch_id": ("N",)}
#: How far a test score of metrics.json may be from the same score computed again from confusion.npy (and the
#: clean test score from the test-noise entry at std 0). Both are float64 functions of the same integer counts
#: and JSON keeps a float exactly (Python writes the shortest repr that reads back to the same float64), so the
#: only difference can come from summing the up to N_CLASSES per-class IoUs in another order (numpy's pairwise
#: sum, another numpy version or SIMD width): each rounding is at most one eps relative on a sum of fractions
#: <= 1, so at most N_CLASSES roundings, with a factor 4 to spare. Any real disagreement is far larger.
SCORE_TOLERANCE: float = 4 * N_CLASSES * float(np.finfo(np.float64).eps)
#: The score keys of a metrics section (the others: ``loss``, ``iou``).
_SCALAR_SCORES = ("oa", "miou")
#: The files that hold a run's results (``platform.json`` holds thread counts, OS strings... that differ between
#: two sessions of one machine): two runs whose files agree (:func:`result_differences`) are the same run.
IDENTITY_FILES: tuple[str, ...] = (CONFIG, METRICS, CONFUSION, HISTORY)
#: Columns of history.csv that measure speed, not results (the ``timing`` section of metrics.json likewise).
TIMING_COLUMNS: tuple[str, ...] = ("sec_epoch", "train_samples_per_s", "eval_samples_per_s", "peak_mem_mb")
_ABSENT = "<absent>"


class RunFolderError(ValueError):
    """A run folder file that is missing, unreadable or malformed; the message names the file."""


class RunDirError(ValueError):
    """A run directory that this run cannot use: in use by another process, or holding another run."""


class SkippedRunWarning(UserWarning):
    """A run folder that a report cannot read (a truncated or malformed file): it is left out, by name."""


# --------------------------------------------------------------------------------------------------
# Where, and whether finished
# --------------------------------------------------------------------------------------------------


def run_path(results: PathLike, platform: str, run_id: str) -> Path:
    """The run directory of ``run_id`` on ``platform``: ``<results>/runs/<platform>/<run_id>``."""
    return Path(results) / "runs" / platform / run_id


def report_path(results: PathLike, platform: str, run_id: str) -> Path:
    """The HTML report of a run: ``<results>/reports/<platform>/<run_id>.html``."""
    return Path(results) / "reports" / platform / f"{run_id}.html"


def is_run_file(name: str) -> bool:
    """Whether ``name`` is a file of a finished run that may travel between machines (:data:`RUN_FILES`)."""
    return name in RUN_FILES


def is_local_file(name: str) -> bool:
    """Whether an entry of a run directory stays on its machine (:data:`LOCAL_FILES`, hidden and temporary
    files): left out of an export, ignored on import."""
    return name in LOCAL_FILES or name.startswith(".") or name.endswith(_LOCAL_SUFFIXES)


def check_file_size(name: str, size: int, shown: str) -> None:
    """Refuse a run file ``name`` of ``size`` bytes over its :data:`FILE_LIMITS` (or any file not in
    :data:`RUN_FILES`), before it is written or read.

    Raises:
        RunFolderError: naming ``shown`` (the file or archive member), its size and the limit.
    """
    if name not in FILE_LIMITS:
        raise RunFolderError(f"{shown}: not a run-folder file (a run folder holds {', '.join(RUN_FILES)})")
    if size > FILE_LIMITS[name]:
        raise RunFolderError(f"{shown}: {human_bytes(size)}, over the limit of {human_bytes(FILE_LIMITS[name])} "
                             f"for a run's {name}")


def is_finished(run_dir: PathLike) -> bool:
    """A finished run: its ``metrics.json`` (written last) is there."""
    return (Path(run_dir) / METRICS).is_file()


def is_started(run_dir: PathLike) -> bool:
    """A run that finished an epoch (``checkpoint.pt``) or the whole run: one whose config must not be replaced."""
    return is_finished(run_dir) or (Path(run_dir) / CHECKPOINT).is_file()


def as_float(value: Any) -> float:
    """A metric value as float; null, missing, a bool or a non-number is NaN."""
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@contextlib.contextmanager
def lock_run_dir(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run directory ``out`` (its ``.lock`` file) for the block.

    Raises:
        RunDirError: another process holds it; the message names the directory and that process.
    """
    import fcntl  # POSIX only: the rest of this module reads run folders anywhere

    out.mkdir(parents=True, exist_ok=True)
    path = out / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirError(f"{out} is in use by another process (pid {holder}, lock {path}): wait for it to "
                              "finish, or give this run another out_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------------
# The validating readers
# --------------------------------------------------------------------------------------------------


def read_record(run_dir: PathLike, name: str, shown: str | None = None) -> dict[str, Any]:
    """``config.json``, ``platform.json`` or ``metrics.json`` of ``run_dir``: a non-empty JSON object (the
    metrics' ``test``, ``val``, ``train`` and ``timing`` sections objects or null).

    Raises:
        RunFolderError: naming the file (as ``shown`` when given): missing, corrupt, not an object, empty.
    """
    file = Path(run_dir) / name
    where = shown or str(file)
    try:
        value = read_json(file)
    except (OSError, ValueError) as exc:
        raise RunFolderError(str(exc).replace(str(file), where)) from None
    if not isinstance(value, dict):
        raise RunFolderError(f"{where}: expected a JSON object, got {type(value).__name__}")
    if not value:
        raise RunFolderError(f"{where}: records nothing (an empty object)")
    if name == METRICS:
        for key in ("test", "val", "train", "timing"):
            metric_section(value, key, where)
    return value


def metric_section(metrics: Mapping[str, Any], key: str, where: PathLike) -> dict[str, Any]:
    """``metrics[key]`` as a dict (``{}`` when null or absent); anything else is a RunFolderError naming ``where``."""
    value = metrics.get(key) or {}
    if not isinstance(value, dict):
        raise RunFolderError(f"{where}: '{key}' must be a JSON object, got {type(value).__name__}")
    return value


def _undefined(value: Any) -> bool:
    """null, or NaN: a score that is undefined (JSON has no NaN; :mod:`utae.atomic` writes it as null)."""
    return value is None or (is_number(value) and math.isnan(value))


def _check_score(value: Any, where: str, *, undefined_ok: bool = False) -> None:
    """A finite fraction in [0, 1]; with ``undefined_ok`` (a per-class IoU: a class absent from both the target
    and the prediction, and void) also null or NaN."""
    if undefined_ok and _undefined(value):
        return
    if not is_number(value) or not math.isfinite(value) or not 0.0 <= float(value) <= 1.0:
        raise RunFolderError(f"{where}: expected a finite fraction in [0, 1], got {value!r}")


def _check_section(section: Any, where: str) -> None:
    if not isinstance(section, dict):
        raise RunFolderError(f"{where}: expected a JSON object, got {type(section).__name__}")
    for key, value in section.items():
        if key == "loss":
            if not (is_number(value) and math.isfinite(value) and value >= 0.0):
                raise RunFolderError(f"{where}.loss: expected a finite number >= 0, got {value!r}")
        elif key == "iou":
            if not isinstance(value, list):
                raise RunFolderError(f"{where}.iou: expected a list, got {type(value).__name__}")
            for i, v in enumerate(value):
                _check_score(v, f"{where}.iou[{i}]", undefined_ok=True)
        elif key in _SCALAR_SCORES or key.startswith(("macro_", "micro_")):
            _check_score(value, f"{where}.{key}")
    for key in ("oa", "miou"):
        if key not in section:
            raise RunFolderError(f"{where}: lacks {key!r}")


def check_metrics(metrics: Any, config: Mapping[str, Any], run_id: str, shown: str) -> None:
    """The values of a finished run's ``metrics.json``: its run id, epochs, score ranges, test-noise curve, and
    its ``test_corruptions`` against the config's (:func:`check_test_corruptions`).

    Raises:
        RunFolderError: naming ``shown`` and the key.
    """
    if not isinstance(metrics, dict):
        raise RunFolderError(f"{shown}: expected a JSON object, got {type(metrics).__name__}")
    if metrics.get("run_id") not in (None, run_id):
        raise RunFolderError(f"{shown}: run_id {metrics['run_id']!r}, but the folder is {run_id!r}")
    best, done = metrics.get("best_epoch"), metrics.get("epochs_completed")
    for key, value in (("best_epoch", best), ("epochs_completed", done)):
        if not is_int(value) or value < 1:
            raise RunFolderError(f"{shown}: {key} must be an int >= 1, got {value!r}")
    if best > done:
        raise RunFolderError(f"{shown}: best_epoch {best} > epochs_completed {done}")
    epochs = config.get("epochs")
    if is_int(epochs) and done > epochs:
        raise RunFolderError(f"{shown}: epochs_completed {done} > the config's epochs {epochs}")
    for key in ("train", "val", "test"):
        if key not in metrics:
            raise RunFolderError(f"{shown}: lacks {key!r}")
        _check_section(metrics[key], f"{shown}: {key}")
    curve = metrics.get("test_noise", [])
    if not isinstance(curve, list):
        raise RunFolderError(f"{shown}: test_noise: expected a list, got {type(curve).__name__}")
    for i, entry in enumerate(curve):
        where = f"{shown}: test_noise[{i}]"
        if not isinstance(entry, dict):
            raise RunFolderError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        std = entry.get("std")
        if not is_number(std) or not math.isfinite(std) or std < 0:
            raise RunFolderError(f"{where}.std: expected a number >= 0, got {std!r}")
        _check_section(entry, where)
    check_test_corruptions(metrics, config, shown)


def _test_corruption_label(entry: Any, where: str) -> str:
    """``"kind:severity"`` of a ``test_corruptions`` entry: an object with a string kind and an int severity."""
    if not isinstance(entry, dict):
        raise RunFolderError(f"{where}: expected a JSON object with kind, severity and scores, got "
                             f"{type(entry).__name__} {entry!r}")
    kind, severity = entry.get("kind"), entry.get("severity")
    if not isinstance(kind, str) or not is_int(severity):
        raise RunFolderError(f"{where}: expected a string 'kind' and an integer 'severity', got kind {kind!r}, "
                             f"severity {severity!r}")
    return f"{kind}:{severity}"


def check_test_corruptions(metrics: Mapping[str, Any], config: Mapping[str, Any], shown: str) -> None:
    """``metrics.json``'s ``test_corruptions`` is what the run's config asked for (:func:`utae.run.run` writes one
    entry per ``"kind:severity"`` of ``config.test_corruptions``, in its order): the same kinds and severities in
    the same order, each entry's ``oa`` and ``miou`` finite fractions in [0, 1] (per-class ``iou`` in [0, 1] or
    null), and, in ``"normalized"`` noise units, every ``gaussian`` entry whose std is a test-noise level equal to
    that ``test_noise`` entry (the run reuses that evaluation; to :data:`SCORE_TOLERANCE`). An absent or null
    ``test_corruptions`` (older runs) is an empty list.

    Raises:
        RunFolderError: naming ``shown`` and the entry (``test_corruptions[i]``) or the config's field.
    """
    try:
        wanted = parse_test_corruptions(config.get("test_corruptions"))
    except ValueError as exc:
        raise RunFolderError(f"{shown}: the run's config.json is not valid: {exc}") from None
    entries = metrics.get("test_corruptions")
    entries = [] if entries is None else entries
    if not isinstance(entries, list):
        raise RunFolderError(f"{shown}: test_corruptions: expected a list, got {type(entries).__name__}")
    labels: list[str] = []
    for i, entry in enumerate(entries):
        where = f"{shown}: test_corruptions[{i}]"
        label = _test_corruption_label(entry, where)
        if label in labels:
            raise RunFolderError(f"{where}: lists {label} a second time (the config's test_corruptions: each once)")
        if label not in wanted:
            raise RunFolderError(f"{where}: {label}, which the config's test_corruptions does not list "
                                 f"({len(wanted)} entries{': ' + ', '.join(wanted[:6]) if wanted else ''}"
                                 f"{', ...' if len(wanted) > 6 else ''})")
        if label != wanted[i]:
            raise RunFolderError(f"{where}: {label} where the config's test_corruptions[{i}] is {wanted[i]} (one "
                                 "entry per config entry, in its order)")
        _check_section(entry, where)
        labels.append(label)
    if len(labels) < len(wanted):
        raise RunFolderError(f"{shown}: test_corruptions lacks {wanted[len(labels)]} ({len(labels)} entries, the "
                             f"config's test_corruptions lists {len(wanted)})")
    if config.get("noise_space", run_config_fields()["noise_space"]) != "normalized":
        return  # test noise in raw units: not the gaussian corruption's draws
    noise = {float(e["std"]): (j, e) for j, e in enumerate(metrics.get("test_noise") or [])
             if isinstance(e, Mapping) and is_number(e.get("std"))}
    for i, (label, entry) in enumerate(zip(labels, entries)):
        kind, severity = label.split(":")
        std = float(SEVERITY_TABLE[kind][int(severity)]["std"]) if kind == "gaussian" else None
        if std in noise:
            j, same = noise[std]
            _compare_scores(entry, same, ("oa", "miou", "iou"), f"{shown}: test_corruptions[{i}] ({label})",
                            f"test_noise[{j}] (std {std:g}, the same evaluation)")


def _score_differs(a: Any, b: Any) -> bool:
    """Two scores that disagree: one undefined and not the other, or further apart than SCORE_TOLERANCE."""
    if _undefined(a) or _undefined(b):
        return not (_undefined(a) and _undefined(b))
    return abs(float(a) - float(b)) > SCORE_TOLERANCE


def _compare_scores(have: Mapping[str, Any], want: Mapping[str, Any], keys: Any, where: str, other: str) -> None:
    for key in keys:
        if key not in have or key not in want:
            continue
        a, b = have[key], want[key]
        if key == "iou":
            if not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
                raise RunFolderError(f"{where}.iou: {len(a) if isinstance(a, list) else a!r} classes, but "
                                     f"{other} has {len(b) if isinstance(b, list) else b!r}")
            bad = [i for i, (x, y) in enumerate(zip(a, b)) if _score_differs(x, y)]
            if bad:
                i = bad[0]
                raise RunFolderError(f"{where}.iou[{i}] = {a[i]!r} disagrees with {other} ({b[i]!r}; tolerance "
                                     f"{SCORE_TOLERANCE:.1e})")
        elif _score_differs(a, b):
            raise RunFolderError(f"{where}.{key} = {a!r} disagrees with {other} ({b!r}; tolerance "
                                 f"{SCORE_TOLERANCE:.1e})")


def check_consistency(metrics: Mapping[str, Any], confusion: np.ndarray, shown: str) -> None:
    """A finished run's ``metrics.json`` agrees with itself and with ``confusion.npy``: every test score
    (OA, mIoU, per-class IoU, macro and micro P/R/F1) equals :func:`utae.metrics.scores` of the confusion matrix,
    and the test-noise entry at std 0, when there is one, repeats the clean test scores (to
    :data:`SCORE_TOLERANCE`). Call it after :func:`check_metrics`.

    Raises:
        RunFolderError: naming ``shown`` and the field, both values and the tolerance.
    """
    from utae.metrics import SCORE_KEYS, scores  # torch: only when a run's results are checked

    test = metric_section(metrics, "test", shown)
    _compare_scores(test, scores(confusion), SCORE_KEYS, f"{shown}: test",
                    f"the score computed from {CONFUSION}")
    for i, entry in enumerate(metrics.get("test_noise") or []):
        if isinstance(entry, Mapping) and is_number(entry.get("std")) and entry["std"] == 0:
            _compare_scores(entry, test, ("oa", "miou", "iou"), f"{shown}: test_noise[{i}] (std 0)",
                            "the clean test score")


def check_config_record(config: Any, run_id: str, shown: str, existing_dir: Path) -> None:
    """A stored ``config.json``: every field a RunConfig field and every value valid. ``dataset_root``, a path of
    the machine that made the run, is only checked to be a non-empty string (``existing_dir``, any folder of this
    machine, stands in for it while the rest is validated).

    Raises:
        RunFolderError: naming ``shown`` and the field.
    """
    if not isinstance(config, dict):
        raise RunFolderError(f"{shown}: expected a JSON object, got {type(config).__name__}")
    known = run_config_fields()
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise RunFolderError(f"{shown}: unknown RunConfig field(s) {unknown} (written by another version of utae?); "
                             f"known fields: {', '.join(sorted(known))}")
    root = config.get("dataset_root")
    if not isinstance(root, str) or not root.strip():
        raise RunFolderError(f"{shown}: dataset_root must be a non-empty path, got {root!r}")
    try:
        RunConfig.from_dict({**config, "dataset_root": str(existing_dir)})
    except (TypeError, ValueError) as exc:
        raise RunFolderError(f"{shown}: {exc}") from None
    if config.get("run_id") not in (None, run_id):
        raise RunFolderError(f"{shown}: run_id {config['run_id']!r}, but the folder is {run_id!r}")


def validate_run(run_dir: Path, run_id: str, shown: str) -> dict[str, Any]:
    """Check every file of a finished run directory; returns its ``platform.json`` dict.

    Raises:
        RunFolderError: naming the file (``shown/<file>``): a missing required file, unreadable JSON, a config
            that is not a valid RunConfig, metrics out of range, a bad fingerprint, an unreadable history, a
            confusion matrix that is not ``(20, 20)`` non-negative integers, test scores that disagree with it
            or with the test-noise entry at std 0 (:func:`check_consistency`), test-corruption scores that are
            not those of the config's ``test_corruptions`` (:func:`check_test_corruptions`), a predictions file whose arrays
            are not those of the run (:func:`read_predictions`), a file that is not a run file or is over its
            :data:`FILE_LIMITS` (files that stay on their machine, :func:`is_local_file`, are ignored).
    """
    from utae.platform import record_fingerprint  # torch: only when a run is validated

    for entry in sorted(run_dir.iterdir()):
        if is_local_file(entry.name):
            continue
        if entry.is_symlink() or not entry.is_file():
            raise RunFolderError(f"{shown}/{entry.name}: a folder or special file where a run holds plain files only")
        check_file_size(entry.name, entry.stat().st_size, f"{shown}/{entry.name}")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise RunFolderError(f"{shown}: missing {', '.join(missing)} (an unfinished or incomplete run)")
    config = read_record(run_dir, CONFIG, f"{shown}/{CONFIG}")
    check_config_record(config, run_id, f"{shown}/{CONFIG}", run_dir)
    metrics = read_record(run_dir, METRICS, f"{shown}/{METRICS}")
    check_metrics(metrics, config, run_id, f"{shown}/{METRICS}")
    record = read_record(run_dir, PLATFORM, f"{shown}/{PLATFORM}")
    try:
        record_fingerprint(record)
    except ValueError as exc:
        raise RunFolderError(f"{shown}/{PLATFORM}: {exc}") from None
    try:
        history = pd.read_csv(run_dir / HISTORY)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise RunFolderError(f"{shown}/{HISTORY}: unreadable CSV ({exc})") from None
    if "epoch" not in history.columns or len(history) == 0:
        raise RunFolderError(f"{shown}/{HISTORY}: expected an 'epoch' column and one row per epoch")
    cm = read_confusion(run_dir, f"{shown}/{CONFUSION}")
    check_consistency(metrics, cm, f"{shown}/{METRICS}")
    if (run_dir / PREDICTIONS).is_file():
        read_predictions(run_dir, config, f"{shown}/{PREDICTIONS}")
    return record


def _array_error(exc: Exception, file: Path, where: str) -> RunFolderError:
    return RunFolderError(str(exc).replace(str(file), where))


def read_confusion(run_dir: PathLike, shown: str | None = None) -> np.ndarray:
    """``confusion.npy``: ``(20, 20)`` non-negative integer counts as int64, read with bounded memory
    (:func:`utae.arrays.load_npy`: the header is checked before any data is read, no pickle).

    Raises:
        RunFolderError: naming the file (as ``shown`` when given) and what was expected.
    """
    file = Path(run_dir) / CONFUSION
    where = shown or str(file)
    try:
        cm = load_npy(file, shape=(N_CLASSES, N_CLASSES), max_bytes=N_CLASSES * N_CLASSES * 8, kinds="iu")
    except ArrayFileError as exc:
        raise _array_error(exc, file, where) from None
    except OSError as exc:
        raise RunFolderError(f"{where}: unreadable ({exc.strerror or exc})") from None
    if (cm < 0).any():
        raise RunFolderError(f"{where}: negative counts; expected a ({N_CLASSES}, {N_CLASSES}) confusion matrix of "
                             "counts")
    return cm.astype(np.int64)


def read_predictions(run_dir: PathLike, config: Mapping[str, Any], shown: str | None = None
                     ) -> dict[str, np.ndarray]:
    """``predictions.npz``, read with bounded memory (:func:`utae.arrays.load_npz`): exactly the members of
    :data:`PREDICTION_SHAPES`, ``rgb`` ``(N, S, S, 3)`` finite floats, ``target`` and ``pred`` ``(N, S, S)``
    class indices in ``[0, 20)``, ``patch_id`` ``(N,)`` ints, with ``N`` at most the config's ``n_examples`` and
    ``S`` at most :data:`MAX_PATCH_SIDE`; shapes and sizes are checked in the headers before any data is read.

    Raises:
        RunFolderError: naming the file (as ``shown`` when given), the member and what was expected.
    """
    file = Path(run_dir) / PREDICTIONS
    where = shown or str(file)
    n_max = config.get("n_examples", run_config_fields()["n_examples"])
    if not is_int(n_max) or n_max < 0:
        raise RunFolderError(f"{where}: the config's n_examples {n_max!r} is not an int >= 0")
    limit = FILE_LIMITS[PREDICTIONS]
    try:
        arrays = load_npz(file, PREDICTION_SHAPES, max_bytes=limit, max_total_bytes=limit,
                          limits={"N": int(n_max), "S": MAX_PATCH_SIDE})
    except ArrayFileError as exc:
        raise _array_error(exc, file, where) from None
    except OSError as exc:
        raise RunFolderError(f"{where}: unreadable ({exc.strerror or exc})") from None
    kinds = {"rgb": "f", "target": "iu", "pred": "iu", "patch_id": "iu"}
    for name, array in arrays.items():
        if array.dtype.kind not in kinds[name]:
            raise RunFolderError(f"{where}: member {name!r} holds {array.dtype}; expected "
                                 f"{'floats' if kinds[name] == 'f' else 'integers'}")
    if not np.isfinite(arrays["rgb"]).all():
        raise RunFolderError(f"{where}: member 'rgb' holds NaN or infinite values; expected finite colours")
    for name in ("target", "pred"):
        values = arrays[name]
        if values.size and (values.min() < 0 or values.max() >= N_CLASSES):
            raise RunFolderError(f"{where}: member {name!r} holds values from {values.min()} to {values.max()}; "
                                 f"expected class indices in [0, {N_CLASSES})")
    return arrays


def read_checked_metrics(run_dir: PathLike, shown: str | None = None) -> dict[str, Any]:
    """``metrics.json`` of a finished run, checked (:func:`check_metrics`: every score finite and in range) and
    consistent with itself and with ``confusion.npy`` (:func:`check_consistency`): what verify compares.

    Raises:
        RunFolderError: naming the file and the field.
    """
    run_dir = Path(run_dir)
    shown = shown or str(run_dir)
    config = read_record(run_dir, CONFIG, f"{shown}/{CONFIG}")
    metrics = read_record(run_dir, METRICS, f"{shown}/{METRICS}")
    check_metrics(metrics, config, run_dir.name, f"{shown}/{METRICS}")
    check_consistency(metrics, read_confusion(run_dir, f"{shown}/{CONFUSION}"), f"{shown}/{METRICS}")
    return metrics


@dataclass
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


def read_run(run_dir: PathLike) -> RunFiles:
    """Load the files of a finished run directory (see :class:`RunFiles`).

    Raises:
        FileNotFoundError: naming the run directory and the missing file.
        RunFolderError: a JSON file that is corrupt or not an object (see :func:`read_record`), an array file
            whose header, shape or values are not those of a run (:func:`read_confusion`, :func:`read_predictions`).
    """
    run_dir = Path(run_dir)
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"run directory {run_dir} lacks {', '.join(missing)} (is the run finished?)")
    config = read_record(run_dir, CONFIG)
    predictions = read_predictions(run_dir, config) if (run_dir / PREDICTIONS).is_file() else None
    return RunFiles(
        run_dir=run_dir,
        config=config,
        platform=read_record(run_dir, PLATFORM),
        metrics=read_record(run_dir, METRICS),
        history=pd.read_csv(run_dir / HISTORY),
        confusion=read_confusion(run_dir),
        predictions=predictions,
    )


# --------------------------------------------------------------------------------------------------
# A tree of runs
# --------------------------------------------------------------------------------------------------


def _subdirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def finished_run_dirs(root: PathLike = "results/runs", include_unfinished: bool = False
                      ) -> Iterator[tuple[str, str, Path]]:
    """Yield ``(platform, run_id, run_dir)`` for every run directory ``<root>/<platform>/<run_id>``
    holding ``metrics.json`` (every run directory with ``include_unfinished``), sorted by platform then run id.
    A missing root yields nothing."""
    base = Path(root)
    if not base.exists():
        return
    if not base.is_dir():
        raise ValueError(f"{base}: the runs root must be a directory (<root>/<platform>/<run_id>/)")
    for platform_dir in _subdirs(base):
        for run_dir in _subdirs(platform_dir):
            if include_unfinished or is_finished(run_dir):
                yield platform_dir.name, run_dir.name, run_dir


def readable_runs(root: PathLike = "results/runs") -> Iterator[tuple[str, str, Path, dict, dict, dict]]:
    """``(platform, run_id, run_dir, config, platform_json, metrics)`` of every finished run under ``root``
    whose files read (:func:`read_record`) and whose ``test_corruptions`` are those of its config
    (:func:`check_test_corruptions`); a broken run is skipped with a :class:`SkippedRunWarning` that names it and
    why."""
    for platform, run_id, run_dir in finished_run_dirs(root):
        try:
            config, plat, metrics = (read_record(run_dir, name) for name in (CONFIG, PLATFORM, METRICS))
            check_test_corruptions(metrics, config, str(run_dir / METRICS))
        except (ValueError, OSError) as exc:
            warnings.warn(SkippedRunWarning(f"{run_dir}: left out of the report: {exc}"), stacklevel=2)
            continue
        yield platform, run_id, run_dir, config, plat, metrics


# --------------------------------------------------------------------------------------------------
# The same-run rule
# --------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (config.json holds lists; a RunConfig tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def normal_config(config: Mapping[str, Any] | RunConfig) -> dict[str, Any]:
    """A config (a config.json dict or a RunConfig) as the same-run rule compares it: RunConfig's defaults for
    absent fields, lists for tuples, ``init_weights`` reduced to whether it is set, and without the
    :data:`utae.config.HARMLESS_FIELDS`. Nothing is checked against this machine."""
    values = config.to_dict() if isinstance(config, RunConfig) else dict(config)
    full = {**run_config_fields(), **values}
    out = {k: _plain(v) for k, v in full.items() if k not in HARMLESS_FIELDS}
    out["init_weights"] = None if full.get("init_weights") is None else "set"
    return out


def config_differences(stored: Mapping[str, Any] | RunConfig, new: Mapping[str, Any] | RunConfig) -> list[str]:
    """The same-run rule (see the module docstring): the fields that make ``stored`` and ``new`` two runs, one
    ``"<field>: stored <value> != new <value>"`` each; empty for the same run."""
    a, b = normal_config(stored), normal_config(new)
    return [f"{k}: stored {a.get(k, _ABSENT)!r} != new {b.get(k, _ABSENT)!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, _ABSENT) != b.get(k, _ABSENT)]


def _result_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """metrics.json without what measures speed (``timing``) or names a path (``init_weights.path``)."""
    out = {k: v for k, v in metrics.items() if k != "timing"}
    if isinstance(out.get("init_weights"), Mapping):
        out["init_weights"] = {k: v for k, v in out["init_weights"].items() if k != "path"}
    return out


def _same_history(a: Path, b: Path) -> bool:
    frames = [pd.read_csv(p) for p in (a, b)]
    frames = [f.drop(columns=[c for c in TIMING_COLUMNS if c in f.columns]) for f in frames]
    return frames[0].columns.tolist() == frames[1].columns.tolist() and frames[0].equals(frames[1])


def result_differences(a: Path, b: Path) -> list[str]:
    """The :data:`IDENTITY_FILES` in which two finished run directories differ, under the same-run rule:
    config.json by :func:`config_differences`, metrics.json and history.csv apart from timings, confusion.npy
    byte for byte. A missing or unreadable file differs. Empty: the same run with the same results."""
    differ = []
    for name in IDENTITY_FILES:
        fa, fb = a / name, b / name
        try:
            if name == CONFIG:
                same = not config_differences(read_json(fa), read_json(fb))
            elif name == METRICS:
                same = _result_metrics(read_json(fa)) == _result_metrics(read_json(fb))
            elif name == HISTORY:
                same = _same_history(fa, fb)
            else:
                same = sha256_file(fa) == sha256_file(fb)
        except (OSError, ValueError, AttributeError, TypeError, pd.errors.ParserError, pd.errors.EmptyDataError):
            same = False
        if not same:
            differ.append(name)
    return differ

