"""Live training curves: one run's per-epoch scalars as TensorBoard event files.

A run writes, next to its ``history.csv``, the folder ``<run_dir>/tensorboard/`` (:data:`TENSORBOARD_DIR`), one
event file of the rows of ``history.csv``: ``tensorboard --logdir results/runs`` then shows every run of a study
as it trains, one TensorBoard run per run folder. The step of a row is its ``epoch``; the tags
(:data:`SCALAR_TAGS`) put train and val of one metric side by side (``loss/train``, ``loss/val``, ...).

The event files are derived from the history, never the other way round: :class:`EpochScalars` opened with the
history so far (the rows of a resumed run's checkpoint) writes those rows again into a new event file that starts
with a purge at step 0 and sorts after the earlier files, so that TensorBoard, reading the files in name order,
drops what it read from them (also one already showing them, live). After any resume the curves hold each epoch
once, with the values of ``history.csv``, and an epoch trained again after an interruption replaces the one that
was lost. The earlier files stay (deleting a file that TensorBoard is reading stops its updates); each holds the
history up to its time, about 100 bytes a scalar. Event file names carry the machine's host name (TensorBoard's
naming).
"""

from __future__ import annotations

import logging
import numbers
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

__all__ = ["TENSORBOARD_DIR", "SCALAR_TAGS", "EVENT_FILE_PREFIX", "EpochScalars", "tensorboard_dir", "read_scalars"]

#: The folder of a run's event files, inside its run directory.
TENSORBOARD_DIR = "tensorboard"
#: The start of every TensorBoard event file name.
EVENT_FILE_PREFIX = "events.out.tfevents."
#: The tag of each history column; any other numeric column keeps its own name, ``epoch`` is the step.
SCALAR_TAGS: dict[str, str] = {
    "train_loss": "loss/train", "val_loss": "loss/val",
    "train_miou": "miou/train", "val_miou": "miou/val",
    "train_oa": "oa/train", "val_oa": "oa/val",
    "lr": "lr",
    "sec_epoch": "time/sec_epoch",
    "train_samples_per_s": "throughput/train_samples_per_s", "eval_samples_per_s": "throughput/eval_samples_per_s",
    "peak_mem_mb": "memory/peak_mem_mb",
}


def tensorboard_dir(run_dir: str | Path) -> Path:
    """``<run_dir>/tensorboard``: where a run's event files go."""
    return Path(run_dir) / TENSORBOARD_DIR


def _step(row: Mapping[str, Any]) -> int:
    epoch = row.get("epoch")
    try:
        step = int(epoch)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"a history row needs an integer 'epoch', got {epoch!r} in {dict(row)!r}") from None
    if step != epoch or step < 0:
        raise ValueError(f"a history row needs an integer 'epoch' >= 0, got {epoch!r}")
    return step


def _latest_second(log_dir: Path) -> int:
    """The latest creation second among the event file names of ``log_dir`` (-1 when none)."""
    latest = -1
    for path in log_dir.glob(EVENT_FILE_PREFIX + "*"):
        stamp = path.name[len(EVENT_FILE_PREFIX):].split(".", 1)[0]
        if stamp.isdigit():
            latest = max(latest, int(stamp))
    return latest


def _wait_past(second: int) -> None:
    """Sleep until the clock is past ``second``: a new event file's name (which starts with the current second)
    then sorts after every earlier one, and TensorBoard reads the files in name order."""
    while int(time.time()) <= second:
        time.sleep(0.05)


class EpochScalars:
    """The event file of one run's per-epoch scalars, written as the run trains.

    Args:
        log_dir: the folder (normally :func:`tensorboard_dir` of the run directory); created when missing.
        history: the rows already in ``history.csv`` (a resumed run's rows, oldest first): written again into the
            new event file, which replaces the earlier ones for TensorBoard.

    :meth:`add` writes one row (a mapping of ``history.csv``'s columns, ``epoch`` among them) and flushes it, so
    that TensorBoard shows it at once. Rows must come in increasing epochs. Use as a context manager, or call
    :meth:`close`.
    """

    def __init__(self, log_dir: str | Path, history: Iterable[Mapping[str, Any]] = ()) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _wait_past(_latest_second(self.log_dir))
        # purge_step=0: TensorBoard drops every step read from the earlier files when it reaches this one
        self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=0)
        self.last_epoch: int | None = None
        for row in history:
            self.add(row, flush=False)
        self._writer.flush()

    def add(self, row: Mapping[str, Any], flush: bool = True) -> None:
        """Write the scalars of one history row at step ``row["epoch"]`` (NaN included: TensorBoard shows a gap);
        values that are not real numbers are left out.

        Raises ``ValueError`` when the epoch is not after the last one written (a step written twice)."""
        step = _step(row)
        if self.last_epoch is not None and step <= self.last_epoch:
            raise ValueError(f"{self.log_dir}: epoch {step} comes after epoch {self.last_epoch}; "
                             "each epoch is written once, in order")
        for key, value in row.items():
            if key == "epoch" or isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
                continue
            self._writer.add_scalar(SCALAR_TAGS.get(key, key), float(value), global_step=step)
        self.last_epoch = step
        if flush:
            self._writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()

    def __enter__(self) -> EpochScalars:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


#: The start of TensorBoard's warning when it purges the steps of earlier event files (``EventAccumulator._Purge``).
_PURGE_WARNING = "Detected out of order event.step"


class _PurgeWarningFilter(logging.Filter):
    """Drops TensorBoard's purge warning ("... Removing N scalars ..."): a resumed run's event file purges the
    earlier files' steps on purpose (see the module docstring), so the warning reports the design, not a fault."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_PURGE_WARNING)


def read_scalars(log_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the event files of ``log_dir``, as TensorBoard shows them (after its purges):
    ``{tag: [(step, value), ...]}`` in file order. TensorBoard's purge warning is silenced during this read only
    (a filter on its ``tensorboard`` logger, removed afterwards); its other messages pass."""
    logger = logging.getLogger("tensorboard")  # tensorboard.util.tb_logging's logger
    quiet = _PurgeWarningFilter()
    logger.addFilter(quiet)
    try:
        acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})  # 0: keep every event
        acc.Reload()
        return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    finally:
        logger.removeFilter(quiet)
