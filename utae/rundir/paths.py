"""The run folder's paths and files: where a run lives, which files make it finished, the lock.

One run is one folder, ``<results>/runs/<platform>/<run_id>/`` (:func:`run_path`; its HTML report is
:func:`report_path`). :func:`utae.training.run.run` writes it::

    config.json      RunConfig.to_dict()
    platform.json    utae.machine.record.platform_info(...): software, hardware, the machine's fingerprint
    history.csv      one row an epoch (utae.training.run.HISTORY_COLUMNS)
    checkpoint.pt    after every epoch (utae.training.checkpoint): an interrupted run resumes from it
    confusion.npy    the clean test confusion matrix, (20, 20) int64
    predictions.npz  optional: a few test patches for maps (rgb, target, pred, patch_id)
    metrics.json     written last: a run with it is finished (:func:`is_finished`)

What travels between machines is :data:`RUN_FILES` (each within its :data:`FILE_LIMITS`); :func:`lock_run_dir` keeps
a second process out of a folder in use. The readers are :mod:`utae.rundir.readers`, the same-run rule
:mod:`utae.rundir.same_run`.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from utae.util.arrays import human_bytes
from utae.pastis.classes import N_CLASSES

__all__ = ["PathLike", "REQUIRED_FILES", "OPTIONAL_FILES", "RUN_FILES", "LOCAL_FILES", "FILE_LIMITS", "MAX_PATCH_SIDE", "PREDICTION_SHAPES", "SCORE_TOLERANCE", "IDENTITY_FILES", "TIMING_COLUMNS", "RunFolderError", "RunDirError", "SkippedRunWarning", "run_path", "report_path", "is_run_file", "is_local_file", "check_file_size", "is_finished", "is_started", "as_float", "lock_run_dir", "finished_run_dirs"]



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
#: notebook, the lock, TensorBoard's event files (utae.training.tensorboard_log.TENSORBOARD_DIR); also hidden and
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
#: The members of predictions.npz and their shapes (``N`` patches of ``S x S`` pixels; see :mod:`utae.util.arrays`).
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
SCALAR_SCORES = ("oa", "miou")
#: The files that hold a run's results (``platform.json`` holds thread counts, OS strings... that differ between
#: two sessions of one machine): two runs whose files agree (:func:`result_differences`) are the same run.
IDENTITY_FILES: tuple[str, ...] = (CONFIG, METRICS, CONFUSION, HISTORY)
#: Columns of history.csv that measure speed, not results (the ``timing`` section of metrics.json likewise).
TIMING_COLUMNS: tuple[str, ...] = ("sec_epoch", "train_samples_per_s", "eval_samples_per_s", "peak_mem_mb")
ABSENT = "<absent>"


class RunFolderError(ValueError):
    """The one error of a run folder: a file that is missing, unreadable or malformed (the message names the file),
    or, as :class:`RunDirError`, a folder that a run cannot use."""


class RunDirError(RunFolderError):
    """A run folder that this run cannot use: in use by another process (:func:`lock_run_dir`), or holding another
    run's config or checkpoint (:func:`utae.training.run.run`)."""


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


