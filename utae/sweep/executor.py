"""Executors of sweep points: worker processes on this machine, or a Slurm job array.

Both run the same point runner, :func:`utae.sweep.point.run_point`, on :class:`PointTask` s and give back one
:class:`PointResult` a point; a failing point is reported (the tail of its traceback or log) while the others
go on. :func:`utae.sweep.orchestrate.run_all` prepares and checks the sweep, picks the unfinished points and calls one of:

* :class:`LocalExecutor`: a pool of ``jobs`` worker processes (``spawn``), a tqdm bar over the points. Without
  ``threads``, each point gets the CPU cores divided by ``jobs`` as torch threads (one each when there are as
  many workers as cores, as the default is); ``OMP_NUM_THREADS`` set by the caller wins. With ``gpus``, each
  worker owns one GPU (``CUDA_VISIBLE_DEVICES``).
* :class:`SlurmExecutor`: one job array of the points (:mod:`submitit`), each task a :class:`PointJob` that
  calls the point runner into the shared results folder. A job that reaches its time limit or is preempted is
  requeued (:meth:`PointJob.checkpoint`) and its run resumes from ``checkpoint.pt``; a job requeued by the
  cluster (``scontrol requeue``) resumes the same way. ``SlurmOptions.tasks_per_point`` > 1 trains the point
  with that many processes of ``torchrun --standalone`` inside its one job (one node; gloo on CPU, NCCL on
  GPU), then the notebook only shows the finished run. Submission files and job logs go to a fresh folder per
  submission, ``<results>/.slurm/<time stamp>/`` (Slurm job ids start again at 1 when a cluster's state is
  reset, so folders of earlier submissions are never reused). Before submitting, the cluster is checked:
  ``sbatch`` on PATH, the controller answering ``scontrol ping``, the partition known to ``sinfo``.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, replace
from datetime import datetime
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from utae.config.sweepfile import REPO_ROOT, Sweep, SweepError
from utae.util.console import configure_logging
from utae.sweep.point import LOG_TAIL_LINES, point_config, point_event, recorded_threads, run_point, tail
from utae.rundir.paths import run_path

try:
    import submitit
    from submitit.helpers import Checkpointable
except ImportError:  # the local executor does not need it
    submitit = None  # type: ignore[assignment]
    Checkpointable = object  # type: ignore[assignment,misc]

__all__ = [
    "PointTask",
    "PointResult",
    "run_task",
    "LocalExecutor",
    "SlurmOptions",
    "SlurmExecutor",
    "PointJob",
    "parse_sbatch_options",
]

log = logging.getLogger(__name__)
#: Default time limit of a point's Slurm job, minutes.
DEFAULT_SLURM_TIME = 240
#: A point's job is requeued after this many time-outs at most (preemptions do not count).
MAX_TIMEOUT_REQUEUES = 20


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


def _progress(total: int, desc: str) -> tqdm:
    """A tqdm bar over points on a terminal; on a pipe or file no bar (the log lines say the same)."""
    return tqdm(total=total, desc=desc, unit="point", file=sys.stderr, disable=not sys.stderr.isatty(),
                dynamic_ncols=True)


def _init_worker(level: int) -> None:
    """A worker process of :class:`LocalExecutor`: it ignores Ctrl-C (SIGINT), which the sweep process handles
    (it stops the workers and their kernels and says what will resume; no traceback of each worker), while staying
    in the sweep's process group, so that a hang-up or a kill of the group ends it too; its messages only from
    warnings up unless the parent shows debug messages (the parent says what each point does, one line an
    event). Jupyter kernels start in sessions of their own and set their own SIGINT handling."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(level if level < logging.INFO else logging.WARNING)


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def _point_label(task: PointTask) -> str:
    return f"{task.platform}/{task.run_id}" if task.platform else task.run_id


def _start_words(task: PointTask) -> str:
    """``"running"`` or ``"resuming from epoch N of M"`` for a task about to start (from its run folder)."""
    if task.platform is None:
        return "running"
    try:
        epochs: int | None = point_config(task.sweep, task.run_id).epochs
    except SweepError:
        epochs = None
    return point_event(run_path(task.results, task.platform, task.run_id), epochs)


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
        return ProcessPoolExecutor(max_workers=self.jobs, mp_context=get_context("spawn"), initializer=_init_worker,
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
        bar = _progress(len(queue), "points")
        counts = {"done": 0, "resuming": 0, "failed": 0}
        pool = self._pool()
        try:
            while queue or running:
                while queue and len(running) < self.jobs:
                    task = queue.pop(0)
                    gpu = free_gpus.pop(0) if free_gpus else None
                    task = replace(task, gpu=gpu, threads=self.threads_for(task))
                    words = _start_words(task)
                    counts["resuming"] += words.startswith("resuming")
                    threads = f" ({task.threads} torch thread{'s' if task.threads != 1 else ''})" \
                        if task.threads is not None else ""
                    log.info(f"[sweep] {_point_label(task)}: {words}{threads}")
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
                        log.info(f"[sweep] {_point_label(task)}: FAILED after {result.wall:.0f} s "
                                 f"({len(results)}/{len(tasks)}): {_first_line(result.error)}")
                    else:
                        log.info(f"[sweep] {_point_label(task)}: finished in {result.wall:.0f} s "
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


# --------------------------------------------------------------------------------------------------
# Slurm
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmOptions:
    """What each point's Slurm job asks for.

    Attributes:
        partition: None: the cluster's default partition.
        gpus_per_point: GPUs of each job (``--gpus-per-node``).
        time_min: time limit of each job in minutes (None: :data:`DEFAULT_SLURM_TIME`).
        cpus: CPUs of each job (None: one a training process).
        mem: memory of each job, e.g. ``"8G"`` (None: the cluster's default).
        tasks_per_point: training processes of each point (torchrun inside the one job).
        extra: more sbatch options, long form (``"--qos=high --account=me --exclusive"``).
    """

    partition: str | None = None
    gpus_per_point: int = 0
    time_min: int | None = None
    cpus: int | None = None
    mem: str | None = None
    tasks_per_point: int = 1
    extra: str = ""


def parse_sbatch_options(text: str) -> dict[str, Any]:
    """``"--qos=high --account me --exclusive"`` -> ``{"qos": "high", "account": "me", "exclusive": True}``.

    Raises:
        SweepError: a short option (``-A``) or a word that is not an option.
    """
    out: dict[str, Any] = {}
    words = shlex.split(text or "")
    i = 0
    while i < len(words):
        word = words[i]
        if not word.startswith("--") or word == "--":
            raise SweepError(f"SLURM_EXTRA: expected long sbatch options (--name=value or --flag), got {word!r} "
                             f"in {text!r}")
        name, eq, value = word[2:].partition("=")
        if eq:
            out[name] = value
        elif i + 1 < len(words) and not words[i + 1].startswith("-"):
            out[name] = words[i + 1]
            i += 1
        else:
            out[name] = True
        i += 1
    return out


def _run_command(cmd: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(list(cmd), 124, "", f"no answer within {timeout:g} s")


class PointJob(Checkpointable):  # type: ignore[misc,valid-type]
    """One point as a Slurm job: calls :func:`utae.sweep.point.run_point` into the shared results folder.

    The point's torch threads are the job's CPUs (``SLURM_CPUS_PER_TASK``) unless the task names them or the
    point resumes a run (the threads it started with, :func:`utae.sweep.point.recorded_threads`). A failed
    point raises (the job ends FAILED and its log holds the traceback).
    """

    def __init__(self, task: PointTask, submitted_at: float) -> None:
        self.task = task
        self.submitted_at = submitted_at

    def __call__(self) -> PointResult:
        configure_logging()  # the job's log shows the point runner's messages
        task = self.task
        threads = task.threads
        if threads is None and task.platform is not None:  # a resumed run keeps the threads it started with
            threads = recorded_threads(run_path(task.results, task.platform, task.run_id))
        if threads is None and os.environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
            threads = max(1, int(os.environ["SLURM_CPUS_PER_TASK"]) // (task.tasks if task.tasks > 1 else 1))
        start = time.perf_counter()
        status = run_point(task.sweep, task.run_id, results=task.results, platform=task.platform, threads=threads,
                           timeout=task.timeout, tasks=task.tasks)
        array, index = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
        job_id = f"{array}_{index}" if array and index else os.environ.get("SLURM_JOB_ID")
        return PointResult(task.run_id, status, time.perf_counter() - start, job_id=job_id)

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Called by submitit on a time-out or a preemption: resubmit this same point. Nothing needs saving
        here: the run keeps ``checkpoint.pt`` after every epoch, and the resubmitted job resumes from it."""
        return submitit.helpers.DelayedSubmission(PointJob(self.task, self.submitted_at), *args, **kwargs)


class SlurmExecutor:
    """Runs points as one Slurm job array (see the module docstring).

    Args:
        results: the results folder; submission files go to ``<results>/.slurm/<time stamp>/``.
        options: what each job asks for.
        jobs: the array's parallelism (None: unlimited).
        poll_s: seconds between two looks at the jobs while waiting.
    """

    def __init__(self, results: str | os.PathLike[str], options: SlurmOptions | None = None, jobs: int | None = None,
                 poll_s: float = 2.0) -> None:
        self.results = Path(results)
        self.options = options or SlurmOptions()
        self.jobs = jobs
        self.poll_s = poll_s
        self.extra = parse_sbatch_options(self.options.extra)
        if self.options.tasks_per_point < 1:
            raise SweepError(f"SLURM_TASKS_PER_POINT must be >= 1, got {self.options.tasks_per_point}")
        if self.options.gpus_per_point < 0:
            raise SweepError(f"SLURM_GPUS_PER_POINT must be >= 0, got {self.options.gpus_per_point}")

    # -- before submitting -----------------------------------------------------------------------
    def check_cluster(self) -> None:
        """Check that jobs can be submitted: the client commands, the controller, the partition.

        Raises:
            SweepError: saying which and what to do.
        """
        if shutil.which("sbatch") is None:
            raise SweepError("sbatch not found: EXECUTOR=slurm submits the points with the Slurm commands (sbatch, "
                             "sinfo, scontrol, sacct) and none is on PATH; install Slurm or use EXECUTOR=local")
        missing = [c for c in ("srun", "sinfo", "scontrol", "sacct") if shutil.which(c) is None]
        if missing:
            raise SweepError(f"{', '.join(missing)} not found on PATH (sbatch is): EXECUTOR=slurm needs the Slurm "
                             "client commands sbatch, srun, sinfo, scontrol and sacct; install them or use "
                             "EXECUTOR=local")
        if submitit is None:
            raise SweepError("EXECUTOR=slurm needs the submitit package: make venv installs it (requirements.lock)")
        ping = _run_command(["scontrol", "ping"])
        if ping.returncode != 0 or " is UP" not in ping.stdout:
            said = (ping.stdout + ping.stderr).strip().replace("\n", "; ") or f"exit status {ping.returncode}"
            raise SweepError(f"the Slurm controller does not answer (scontrol ping: {said}); start it or check "
                             "SLURM_CONF, or use EXECUTOR=local. Nothing was submitted.")
        partition = self.options.partition
        if partition:
            info = _run_command(["sinfo", "-h", "-p", partition, "-o", "%P"])
            if info.returncode != 0 or not info.stdout.strip():
                known = _run_command(["sinfo", "-h", "-o", "%P"]).stdout.split()
                raise SweepError(f"Slurm partition {partition!r} does not exist on this cluster; partitions: "
                                 f"{', '.join(known) or 'none'} (the default is marked *). Nothing was submitted.")

    def nodes_are_this_machine(self) -> bool:
        """Whether the partition's only node is this host (a single-machine cluster, as in CI): then the points
        run on this machine, and its platform and fingerprint are the nodes'."""
        cmd = ["sinfo", "-h", "-N", "-o", "%N"] + (["-p", self.options.partition] if self.options.partition else [])
        nodes = set(_run_command(cmd).stdout.split())
        return nodes == {socket.gethostname().split(".")[0]}

    # -- submitting --------------------------------------------------------------------------------
    def _executor(self, folder: Path) -> Any:
        opts = self.options
        executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=MAX_TIMEOUT_REQUEUES)
        time_min = opts.time_min or DEFAULT_SLURM_TIME
        params: dict[str, Any] = {
            "job_name": "utae-sweep",
            "time": time_min,
            "cpus_per_task": opts.cpus or opts.tasks_per_point,
            "ntasks_per_node": 1,
            # submitit's warning signal before the time limit: half the limit at most.
            "signal_delay_s": min(90, time_min * 30),
            # The job runs the repository's code from the repository, as make reproduce does.
            "setup": [f"cd {shlex.quote(str(REPO_ROOT))}",
                      f"export PYTHONPATH={shlex.quote(str(REPO_ROOT))}${{PYTHONPATH:+:$PYTHONPATH}}"],
        }
        if opts.partition:
            params["partition"] = opts.partition
        if opts.gpus_per_point:
            params["gpus_per_node"] = opts.gpus_per_point
        if opts.mem:
            params["mem"] = opts.mem
        if self.jobs:
            params["array_parallelism"] = self.jobs
        if self.extra:
            params["additional_parameters"] = dict(self.extra)
        try:
            executor.update_parameters(**params)
        except ValueError as exc:
            raise SweepError(f"Slurm options: {exc}") from None
        return executor

    def submit(self, tasks: Sequence[PointTask]) -> list[Any]:
        """Submit ``tasks`` as one job array; returns the submitit jobs (``job.job_id`` is ``<array>_<index>``).

        Raises:
            SweepError: sbatch refused the submission (its message is shown).
        """
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = self.results.resolve() / ".slurm" / stamp
        n = 1
        while folder.exists():  # two submissions in one second
            n += 1
            folder = folder.with_name(f"{stamp}-{n}")
        folder.mkdir(parents=True)
        executor = self._executor(folder)
        now = time.time()
        try:
            with executor.batch():
                jobs = [executor.submit(PointJob(task, now)) for task in tasks]
        except Exception as exc:  # submitit raises FailedSubmissionError / CalledProcessError with sbatch's words
            detail = getattr(exc, "stderr", None) or getattr(exc, "output", None) or exc
            if isinstance(detail, bytes):
                detail = detail.decode(errors="replace")
            raise SweepError(f"sbatch refused the job array: {str(detail).strip()}. Nothing was submitted.") from None
        self.folder = folder
        self.submitted_at = now
        array = jobs[0].job_id.split("_")[0] if jobs else "?"
        log.info(f"[sweep] submitted job array {array} ({len(jobs)} point(s), logs in {folder}):")
        for job, task in zip(jobs, tasks):
            log.info(f"[sweep]   {job.job_id}  {task.run_id}")
        return jobs

    # -- waiting -----------------------------------------------------------------------------------
    def wait(self, jobs: Sequence[Any], tasks: Sequence[PointTask]) -> list[PointResult]:
        """Wait for ``jobs`` (polling their states), with a progress bar; one result each, in order.

        A job the cluster ended (cancelled, out of memory, node failure) is a failed result naming its state;
        a point that failed in its job is a failed result with the tail of the job's log.
        """
        with logging_redirect_tqdm(loggers=[logging.getLogger("utae")]):  # log lines above the bar
            return self._wait(jobs, tasks)

    def _wait(self, jobs: Sequence[Any], tasks: Sequence[PointTask]) -> list[PointResult]:
        results: dict[int, PointResult] = {}
        bar = _progress(len(jobs), "points (slurm)")
        start = getattr(self, "submitted_at", time.time())
        watcher = jobs[0].watcher if jobs else None
        last_update = 0.0
        try:
            while len(results) < len(jobs):
                if watcher is not None and time.monotonic() - last_update >= max(self.poll_s, 5.0):
                    watcher.update()  # one sacct call for every job
                    last_update = time.monotonic()
                for i, (job, task) in enumerate(zip(jobs, tasks)):
                    if i in results:
                        continue
                    result = self._finished(job, task)
                    if result is None:
                        continue
                    result.wall = time.time() - start
                    results[i] = result
                    bar.update(1)
                    if result.status == "failed":
                        log.info(f"[sweep] {task.run_id} (job {job.job_id}): FAILED ({len(results)}/{len(jobs)}): "
                            f"{result.error}")
                    else:
                        log.info(f"[sweep] {task.run_id} (job {job.job_id}): {result.status} in {result.seconds:.1f} s "
                            f"({len(results)}/{len(jobs)} points done)")
                if len(results) < len(jobs):
                    time.sleep(self.poll_s)
        except KeyboardInterrupt:
            log.info(f"[sweep] stopped waiting; the jobs go on (squeue; scancel {jobs[0].job_id.split('_')[0]} "
                     f"cancels them). Once they are done: make report RESULTS={self.results}")
            raise
        finally:
            bar.close()
        return [results[i] for i in range(len(jobs))]

    def _finished(self, job: Any, task: PointTask) -> PointResult | None:
        """The result of a job that has ended, or None while it runs, waits or was requeued.

        A successful result file is final at once. A failure is final only once the cluster says the job ended:
        a job requeued by the cluster (``scontrol requeue``, a preemption) leaves the failure of its killed run
        behind, then runs again and replaces it. A job that ended without a result file (cancelled, out of
        memory, node failure) is a failure naming its state.
        """
        ended = job.watcher.is_done(job.job_id, mode="cache")
        if job.paths.result_pickle.exists():
            try:
                outcome, value = submitit.core.utils.pickle_load(job.paths.result_pickle)
            except Exception:  # being written
                return None
            if outcome == "success" and isinstance(value, PointResult):
                value.job_id = job.job_id
                return value
            if not ended:
                return None
            return PointResult(task.run_id, "failed", job_id=job.job_id,
                               error=f"the point failed in Slurm job {job.job_id}; the job's log "
                                     f"({job.paths.stderr}) ends:\n{self._log_tail(job, str(value))}")
        if not ended:
            return None
        state = job.watcher.get_state(job.job_id, mode="cache")
        return PointResult(task.run_id, "failed", job_id=job.job_id,
                           error=f"Slurm job {job.job_id} ended {state} without finishing the point (cancelled, "
                                 f"time limit, out of memory or node failure; run the sweep again to resume it); "
                                 f"its log ({job.paths.stderr}) ends:\n{self._log_tail(job, '')}")

    @staticmethod
    def _log_tail(job: Any, fallback: str) -> str:
        lines: list[str] = []
        for path in (job.paths.stderr, job.paths.stdout):
            try:
                lines = Path(path).read_text(errors="replace").splitlines()
            except OSError:
                continue
            lines = [line for line in lines if "submitit" not in line or "ERROR" in line]
            if lines:
                break
        return tail(lines or fallback.splitlines(), LOG_TAIL_LINES) or "    (no log)"
