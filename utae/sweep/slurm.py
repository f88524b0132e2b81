"""The Slurm backend of the executors (:mod:`utae.sweep.executor`):

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
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tqdm.contrib.logging import logging_redirect_tqdm

from utae.config.sweepfile import REPO_ROOT, SweepError
from utae.util.console import configure_logging
from utae.sweep.point import LOG_TAIL_LINES, recorded_threads, run_point, tail
from utae.rundir.paths import run_path
from utae.sweep.executor import PointResult, PointTask, progress

__all__ = ["log", "DEFAULT_SLURM_TIME", "MAX_TIMEOUT_REQUEUES", "SlurmOptions", "parse_sbatch_options", "PointJob", "SlurmExecutor"]

try:
    import submitit
    from submitit.helpers import Checkpointable
except ImportError:  # the local executor does not need it
    submitit = None  # type: ignore[assignment]
    Checkpointable = object  # type: ignore[assignment,misc]

log = logging.getLogger(__name__)
#: Default time limit of a point's Slurm job, minutes.
DEFAULT_SLURM_TIME = 240
#: A point's job is requeued after this many time-outs at most (preemptions do not count).
MAX_TIMEOUT_REQUEUES = 20
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
        bar = progress(len(jobs), "points (slurm)")
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
