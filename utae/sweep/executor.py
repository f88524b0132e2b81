"""The core of the executors of sweep points: what one point is (:class:`PointTask`), what comes back
(:class:`PointResult`) and :func:`run_task`, which runs the one point runner (:func:`utae.sweep.point.run_point`)
on a task. A failing point is reported (the tail of its traceback or log) while the others go on.
:func:`utae.sweep.orchestrate.run_all` prepares and checks the sweep, picks the unfinished points and hands them
to a backend: :class:`utae.sweep.local.LocalExecutor` (worker processes on this machine) or
:class:`utae.sweep.slurm.SlurmExecutor` (a Slurm job array).
"""

from __future__ import annotations

import logging
import signal
import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

from utae.config.sweepfile import Sweep, SweepError
from utae.util.console import configure_logging
from utae.sweep.point import point_config, point_event, run_point
from utae.rundir.paths import run_path

__all__ = ["PointTask", "PointResult", "run_task"]

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class PointTask:
    """One point to run (picklable: it goes to worker processes and into Slurm jobs).

    Attributes:
        sweep: the loaded sweep (the job runs exactly what was validated at submission).
        run_id: the point.
        results: the results folder (absolute).
        platform: the platform folder; None: detected where the point runs.
        gpu: ``CUDA_VISIBLE_DEVICES`` of the point (local executor).
        threads: torch threads; None: decided by the executor.
        timeout: papermill's timeout per cell (None: the sweep's).
        tasks: training processes of the point (see :func:`utae.sweep.point.run_point`).
    """

    sweep: Sweep
    run_id: str
    results: str
    platform: str | None = None
    gpu: str | None = None
    threads: int | None = None
    timeout: int | None = None
    tasks: int = 1


@dataclass
class PointResult:
    """The outcome of one point.

    Attributes:
        status: ``"executed"``, ``"rendered"``, ``"skipped"`` (see :func:`utae.sweep.point.run_point`) or ``"failed"``.
        seconds: time spent in the point runner (None where unknown, e.g. a job killed by the cluster).
        error: for a failed point, what went wrong and the tail of its traceback or log.
        job_id: the Slurm job (``<array>_<task>``), None locally.
        wall: seconds from dispatch (or submission) to the moment the executor saw the point end.
    """

    run_id: str
    status: str
    seconds: float | None = None
    error: str = ""
    job_id: str | None = None
    wall: float | None = None


def run_task(task: PointTask) -> PointResult:
    """Run one point with :func:`utae.sweep.point.run_point`; an exception becomes a failed result (its message
    carries the traceback's tail)."""
    start = time.perf_counter()
    try:
        status = run_point(task.sweep, task.run_id, results=task.results, platform=task.platform, gpu=task.gpu,
                           threads=task.threads, timeout=task.timeout, tasks=task.tasks)
    except Exception as exc:  # reported by the executor; the other points go on
        return PointResult(task.run_id, "failed", time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    return PointResult(task.run_id, status, time.perf_counter() - start)


def progress(total: int, desc: str) -> tqdm:
    """A tqdm bar over points on a terminal; on a pipe or file no bar (the log lines say the same)."""
    return tqdm(total=total, desc=desc, unit="point", file=sys.stderr, disable=not sys.stderr.isatty(),
                dynamic_ncols=True)


def init_worker(level: int) -> None:
    """A worker process of :class:`LocalExecutor`: it ignores Ctrl-C (SIGINT), which the sweep process handles
    (it stops the workers and their kernels and says what will resume; no traceback of each worker), while staying
    in the sweep's process group, so that a hang-up or a kill of the group ends it too; its messages only from
    warnings up unless the parent shows debug messages (the parent says what each point does, one line an
    event). Jupyter kernels start in sessions of their own and set their own SIGINT handling."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(level if level < logging.INFO else logging.WARNING)


def first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def point_label(task: PointTask) -> str:
    return f"{task.platform}/{task.run_id}" if task.platform else task.run_id


def start_words(task: PointTask) -> str:
    """``"running"`` or ``"resuming from epoch N of M"`` for a task about to start (from its run folder)."""
    if task.platform is None:
        return "running"
    try:
        epochs: int | None = point_config(task.sweep, task.run_id).epochs
    except SweepError:
        epochs = None
    return point_event(run_path(task.results, task.platform, task.run_id), epochs)


