"""The local backend of the executors (:mod:`utae.sweep.executor`):

* :class:`LocalExecutor`: a pool of ``jobs`` worker processes (``spawn``), a tqdm bar over the points. Without
  ``threads``, each point gets the CPU cores divided by ``jobs`` as torch threads (one each when there are as
  many workers as cores, as the default is); ``OMP_NUM_THREADS`` set by the caller wins. With ``gpus``, each
  worker owns one GPU (``CUDA_VISIBLE_DEVICES``).
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path
from typing import Callable

from tqdm.contrib.logging import logging_redirect_tqdm

from utae.sweep.executor import PointResult, PointTask, first_line, init_worker, point_label, progress, start_words, run_task

__all__ = ["LocalExecutor"]

log = logging.getLogger(__name__)
# --------------------------------------------------------------------------------------------------
# Local
# --------------------------------------------------------------------------------------------------


class LocalExecutor:
    """A pool of ``jobs`` worker processes on this machine (see the module docstring).

    Args:
        jobs: points at a time.
        gpus: GPU indices; a point runs on the GPU of the worker slot it starts in.
        threads: torch threads of every point; None shares out the cores (see :meth:`threads_for`).
        cores: CPU cores to share (default ``os.cpu_count()``).
        worker: the function a worker runs on each task (tests pass a fake; it must be importable by name).
    """

    def __init__(self, jobs: int, gpus: Sequence[str] = (), threads: int | None = None, cores: int | None = None,
                 worker: Callable[[PointTask], PointResult] = run_task) -> None:
        if jobs < 1:
            raise ValueError(f"jobs must be >= 1, got {jobs}")
        self.jobs = jobs if not gpus else min(jobs, len(gpus))
        self.gpus = list(gpus)
        self.threads = threads
        self.cores = cores or os.cpu_count() or 1
        self.worker = worker

    def threads_for(self, task: PointTask | None = None) -> int | None:
        """Torch threads of a point: ``threads`` if given; None when the caller set ``OMP_NUM_THREADS`` (the
        kernel inherits it); else the task's own (a resumed run keeps the threads it started with,
        :func:`utae.sweep.point.recorded_threads`); else the cores shared among the workers, at least 1.

        ``jobs`` is the executor's, not the number of points left: an interrupted sweep run again gives its
        points the threads they had (:func:`utae.sweep.orchestrate.run_all` derives ``jobs`` from the whole sweep).

        A point's threads are fixed when its kernel starts, so the cores that free up when the other points
        finish cannot go to a point already running (the last point does not speed up when it runs alone). Nor
        does a point get more than its share when it starts: on a 2-core machine shared with other work, an
        epoch of the default sweep's model took 13-36 s with 1 torch thread and 127-168 s with 2."""
        if self.threads is not None:
            return self.threads
        if "OMP_NUM_THREADS" in os.environ:
            return None
        if task is not None and task.threads is not None:
            return task.threads
        return max(1, self.cores // self.jobs)

    def _pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.jobs, mp_context=get_context("spawn"), initializer=init_worker,
                                   initargs=(logging.getLogger("utae").getEffectiveLevel(),))

    def run(self, tasks: Sequence[PointTask]) -> list[PointResult]:
        """Run ``tasks`` (at most ``jobs`` at a time) and return one result each, in the order of ``tasks``."""
        with logging_redirect_tqdm(loggers=[logging.getLogger("utae")]):  # log lines above the bar
            return self._run(tasks)

    def _run(self, tasks: Sequence[PointTask]) -> list[PointResult]:
        queue = list(tasks)
        results: dict[str, PointResult] = {}
        running: dict[Future[PointResult], tuple[PointTask, float, str | None]] = {}
        free_gpus = list(self.gpus)
        bar = progress(len(queue), "points")
        counts = {"done": 0, "resuming": 0, "failed": 0}
        pool = self._pool()
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    task = queue.pop(0)
                    gpu = free_gpus.pop(0) if free_gpus else None
                    task = replace(task, gpu=gpu, threads=self.threads_for(task))
                    words = start_words(task)
                    counts["resuming"] += words.startswith("resuming")
                    threads = f" ({task.threads} torch thread{'s' if task.threads != 1 else ''})" \
                        if task.threads is not None else ""
                    log.info(f"[sweep] {point_label(task)}: {words}{threads}")
                    bar.set_postfix(counts, refresh=True)
                    try:
                        future = pool.submit(self.worker, task)
                    except BrokenProcessPool:  # a worker died (killed, out of memory): start a new pool
                        pool.shutdown(wait=False, cancel_futures=True)
                        pool = self._pool()
                        future = pool.submit(self.worker, task)
                    running[future] = (task, time.perf_counter(), gpu)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    task, started, gpu = running.pop(future)
                    if gpu is not None:
                        free_gpus.append(gpu)
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        result = PointResult(task.run_id, "failed", error="its worker process died (killed? out of "
                                             "memory?); run the sweep again to resume it")
                    except Exception as exc:  # the task or its result could not cross to or from the worker
                        result = PointResult(task.run_id, "failed", error=f"{type(exc).__name__}: {exc}")
                    result.wall = time.perf_counter() - started
                    results[task.run_id] = result
                    counts["failed" if result.status == "failed" else "done"] += 1
                    bar.set_postfix(counts, refresh=False)
                    bar.update(1)
                    if result.status == "failed":  # the whole error comes again in run_all's summary
                        log.info(f"[sweep] {point_label(task)}: FAILED after {result.wall:.0f} s "
                                 f"({len(results)}/{len(tasks)}): {first_line(result.error)}")
                    else:
                        log.info(f"[sweep] {point_label(task)}: finished in {result.wall:.0f} s "
                                 f"({len(results)}/{len(tasks)} points done)")
        except BaseException:  # Ctrl-C: stop the running points now (their runs resume next time)
            bar.close()
            _stop_workers(pool)
            raise
        pool.shutdown(wait=True)
        bar.close()
        return [results[t.run_id] for t in tasks]


def _descendants(pid: int) -> list[int]:
    """The processes started by ``pid`` and theirs (from ``/proc``; none where there is no ``/proc``)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        found.extend(children)
        todo.extend(children)
    return found


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """End the pool's worker processes and their notebook kernels at once (a kernel left alone would notice its
    parent gone and say so on the console). Their run folders keep the last checkpoint, written atomically."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # no public way before Python 3.14
    kernels = [pid for process in processes if process.pid is not None for pid in _descendants(process.pid)]
    pool.shutdown(wait=False, cancel_futures=True)
    for pid in kernels:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:  # ended already
            pass
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)


