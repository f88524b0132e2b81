"""The point runner: one point of a sweep, from its validated config to its finished run folder and report.

Each point runs ``notebooks/train_eval.ipynb`` with papermill into ``<results>/runs/<platform>/<run_id>/``
(``run.ipynb`` is the executed notebook), and its report is ``<results>/reports/<platform>/<run_id>.html``;
``<platform>`` is :func:`utae.machine.record.platform_id` of the point's device. Every point writes only inside its own
run directory and its own report file, so points run in parallel: in worker processes of this machine, or as the
tasks of a Slurm job array (:mod:`utae.sweep.executor`). Both call :func:`run_point`; so does :mod:`utae.exchange.verify`.

Skip and resume. :func:`run_point` skips a finished point (``metrics.json`` and its report there), only renders the
report of a finished run without one, and otherwise executes the notebook (:func:`utae.training.run.run` resumes an
interrupted run from its ``checkpoint.pt``). It never skips or resumes a run silently when that run is not the
point's: a started run whose ``config.json`` is another run's under the same-run rule
(:func:`utae.rundir.same_run.config_differences`) is an error that says how to proceed; so is a platform folder holding
runs of another machine (another ``platform.json`` fingerprint, :func:`utae.machine.record.check_same_machine`), and a
run directory in use by another process.

The point's :class:`utae.config.run_config.RunConfig` is built once in the process that runs it (:func:`point_config`) and
passed on; the notebook's kernel builds its own from the parameters cell.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from utae.util.atomic import read_json
from utae.config.run_config import RunConfig, run_config_fields
from utae.sweep.kernel import kernel_config
from utae.config.sweepfile import DEFAULT_TIMEOUT, REPO_ROOT, Sweep, SweepError, SweepPoint
from utae.report.pages import render_notebook_html, write_error
from utae.rundir.paths import CHECKPOINT, HISTORY, PLATFORM, RunDirError, is_finished, is_started, lock_run_dir, report_path, run_path
from utae.rundir.same_run import config_differences

__all__ = [
    "KERNEL_NAME",
    "LOG_TAIL_LINES",
    "tail",
    "detect_platform",
    "repo_relative",
    "make_jobs",
    "execute_notebook",
    "point_config",
    "point_state",
    "resume_epoch",
    "recorded_threads",
    "check_platform_folder",
    "run_point",
]

log = logging.getLogger(__name__)

KERNEL_NAME = "python3"
#: Lines of a failing notebook's traceback, or of a failing command's or Slurm job's output, in its error message.
LOG_TAIL_LINES = 20
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


# --------------------------------------------------------------------------------------------------
# Paths, platforms, threads
# --------------------------------------------------------------------------------------------------


def tail(lines: Sequence[str], n: int = LOG_TAIL_LINES) -> str:
    """The last ``n`` non-empty lines of ``lines`` (each may hold several), without terminal colour codes,
    indented for an error message."""
    text = [_ANSI.sub("", line).rstrip() for chunk in lines for line in str(chunk).splitlines()]
    text = [line for line in text if line.strip()]
    return "\n".join(f"    {line}" for line in text[-n:])


def detect_platform(device: str = "auto") -> str:
    """The platform slug (:func:`utae.machine.record.platform_id`) of ``device`` on this machine."""
    from utae.machine.record import platform_id, resolve_device  # imports torch: only when a platform is needed

    try:
        return platform_id(resolve_device(device))
    except ValueError as exc:
        raise SweepError(f"device {device!r}: {exc}") from exc


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository root when inside it (portable config.json), else absolute."""
    path = path.resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def make_jobs() -> int:
    """The -j of the calling make (MAKEFLAGS), or 1; an unlimited -j counts as the CPU count."""
    flags = os.environ.get("MAKEFLAGS", "").split(" -- ")[0]  # e.g. "ks -j2 --jobserver-auth=3,4"
    match = re.search(r"(?:^|\s)-j(\d*)(?:\s|$)", flags)
    if not match:
        return 1
    return max(1, int(match.group(1))) if match.group(1) else (os.cpu_count() or 1)


def _thread_env(threads: int | None) -> dict[str, str]:
    """Environment for the kernel: ``threads`` torch/OpenMP threads, or, when running under ``make -jN``
    without an explicit setting, the CPU count divided by N (so parallel points do not oversubscribe)."""
    if threads is None:
        if "OMP_NUM_THREADS" in os.environ:
            return {}
        jobs = make_jobs()
        if jobs <= 1:
            return {}
        threads = max(1, (os.cpu_count() or 1) // jobs)
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


class _environ:
    """Temporarily set environment variables (the kernel papermill starts inherits them)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self.values = dict(values)
        self.saved: dict[str, str | None] = {}

    def __enter__(self) -> None:
        for key, value in self.values.items():
            self.saved[key] = os.environ.get(key)
            os.environ[key] = value

    def __exit__(self, *exc: Any) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --------------------------------------------------------------------------------------------------
# One notebook
# --------------------------------------------------------------------------------------------------


def execute_notebook(
    notebook: str | os.PathLike[str],
    output: str | os.PathLike[str],
    parameters: Mapping[str, Any],
    timeout: int = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
    keeps: Sequence[Path] = (),
) -> Path:
    """Execute ``notebook`` with papermill (kernel ``python3``, working directory the repository root)
    into ``output``, atomically: it runs into ``<output stem>.partial.ipynb``, renamed on success.

    Args:
        keeps: files made from ``output`` afterwards (its HTML page), named in the error of a failed write
            (a full disk) as kept as they were.

    Raises:
        SweepError: when a cell fails; the message names the cell, the partial notebook (kept) and ends with
            the tail of the cell's traceback. A write that fails (a full disk): one line naming the file.
    """
    import papermill  # slow to import: only when a notebook runs
    from papermill.exceptions import PapermillExecutionError

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f"{output.stem}.partial.ipynb")
    with _environ(env or {}):
        try:
            papermill.execute_notebook(
                str(notebook), str(partial), parameters=dict(parameters), kernel_name=KERNEL_NAME,
                cwd=str(REPO_ROOT), progress_bar=False, log_output=False, execution_timeout=timeout,
                config=kernel_config(),  # no unencrypted-TCP warning, no interrupt at shutdown
            )
        except PapermillExecutionError as exc:
            raise SweepError(f"{notebook} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue}); "
                             f"the executed notebook is {partial}; its traceback ends:\n"
                             f"{tail(exc.traceback or [])}") from None
        except OSError as exc:  # papermill writing the notebook (a full disk), or the kernel's files
            raise SweepError(write_error(exc, partial, output, *keeps)) from None
    try:
        os.replace(partial, output)
    except OSError as exc:
        raise SweepError(write_error(exc, output, output, *keeps)) from None
    return output


# --------------------------------------------------------------------------------------------------
# One point: its config, its state, the checks
# --------------------------------------------------------------------------------------------------


def _point_params(point: SweepPoint, run_dir: Path | None = None) -> dict[str, Any]:
    """The notebook parameters of a point (that runs into ``run_dir``, when given)."""
    params = {**point.params, "run_id": point.run_id, "progress": False}
    if run_dir is not None:
        params["out_dir"] = repo_relative(run_dir)
    return params


def point_config(sweep: Sweep, run_id: str, run_dir: str | os.PathLike[str] | None = None) -> RunConfig:
    """The :class:`utae.config.run_config.RunConfig` of point ``run_id`` (running into ``run_dir``, when given; the same run
    either way under the same-run rule), validated: a bad value raises a SweepError naming the sweep file and the
    point."""
    params = _point_params(sweep.point(run_id), Path(run_dir) if run_dir is not None else None)
    fields = run_config_fields()
    try:
        return RunConfig.from_dict({k: v for k, v in params.items() if k in fields})
    except (TypeError, ValueError) as exc:
        raise SweepError(f"{sweep.path}: point {run_id}: {exc}") from None


def _config_conflict(sweep: Sweep, run_id: str, config: RunConfig, run_dir: Path, report: Path) -> None:
    """Refuse a started run directory whose ``config.json`` is another run's (the same-run rule,
    :func:`utae.rundir.same_run.config_differences`). A run that never finished an epoch (no checkpoint, no metrics)
    is not checked: :func:`utae.training.run.run` replaces its config, and nothing of it is lost."""
    path = run_dir / "config.json"
    if not path.is_file() or not is_started(run_dir):
        return
    try:
        stored = read_json(path)
    except (OSError, ValueError) as exc:
        raise SweepError(f"{path}: {exc}; delete that run directory to run point {run_id} again") from None
    if not isinstance(stored, dict):
        raise SweepError(f"{path}: expected a JSON object of RunConfig fields; delete that run directory to run "
                         f"point {run_id} again")
    diffs = config_differences(stored, config)
    if diffs:
        raise SweepError(
            f"{path}: config.json belongs to a different run; differing fields: {'; '.join(diffs)}. "
            f"The sweep {sweep.path} no longer describes the run stored there, so point {run_id} is neither "
            f"skipped nor run again. To keep that run, run the changed sweep into a new results folder "
            f"(make reproduce RESULTS=<new folder>, or --results); to replace it, delete {run_dir} and {report}.")


def check_platform_folder(results: str | os.PathLike[str], platform: str, device: str = "auto") -> None:
    """Refuse a platform folder ``<results>/runs/<platform>`` that holds runs of another machine.

    Every ``platform.json`` there must carry this machine's fingerprint for ``device``
    (:func:`utae.machine.record.current_fingerprint`); a record without one (written before fingerprints existed)
    counts as another machine.

    Raises:
        utae.machine.record.OtherMachineError: naming the run and both machines, and how to proceed.
    """
    folder = Path(results) / "runs" / platform
    records = sorted(folder.glob("*/platform.json")) if folder.is_dir() else []
    if not records:
        return
    from utae.machine.record import check_same_machine, current_fingerprint, record_fingerprint  # torch: only here

    mine = current_fingerprint(device)
    for path in records:
        record = read_json(path)
        try:
            theirs = record_fingerprint(record)
        except ValueError as exc:
            raise SweepError(f"{path}: {exc}") from None
        if theirs != mine:
            check_same_machine(record, device, path.parent)


def _check_not_in_use(run_dir: Path) -> None:
    """A run directory locked by another process (:func:`utae.rundir.paths.lock_run_dir`) is a SweepError naming it."""
    if not run_dir.is_dir():
        return
    try:
        with lock_run_dir(run_dir):
            pass
    except RunDirError as exc:
        raise SweepError(str(exc)) from None


def point_state(sweep: Sweep, run_id: str, results: str | os.PathLike[str], platform: str,
                config: RunConfig | None = None) -> str:
    """What :func:`run_point` has to do for a point: ``"finished"`` (run and report there), ``"render"`` (a
    finished run whose report is missing) or ``"run"``.

    Args:
        config: the point's validated config (default: built here, :func:`point_config`).

    Raises:
        SweepError: the run directory holds another run's config (see :func:`_config_conflict`).
    """
    run_dir, report = run_path(results, platform, run_id), report_path(results, platform, run_id)
    if (run_dir / "config.json").is_file() and is_started(run_dir):
        _config_conflict(sweep, run_id, config or point_config(sweep, run_id), run_dir, report)
    if is_finished(run_dir):
        if report.is_file():
            return "finished"
        if (run_dir / "run.ipynb").is_file():
            return "render"
    return "run"


def resume_epoch(run_dir: str | os.PathLike[str]) -> int | None:
    """The epoch an interrupted run resumes from: the ``epoch`` of the last row of its ``history.csv`` (0 when
    that file is missing or unreadable), when ``checkpoint.pt`` is there and the run is not finished; else None.
    Read as plain CSV: no torch or pandas in the sweep process."""
    run_dir = Path(run_dir)
    if is_finished(run_dir) or not (run_dir / CHECKPOINT).is_file():
        return None
    try:
        with open(run_dir / HISTORY, newline="") as f:
            rows = list(csv.DictReader(f))
        return int(float(rows[-1]["epoch"])) if rows else 0
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def recorded_threads(run_dir: str | os.PathLike[str]) -> int | None:
    """The torch threads an interrupted run started with (``torch_threads`` of its ``platform.json``), when it
    will resume (see :func:`resume_epoch`); else, or when not recorded, None. A resumed run keeps them: another
    thread count changes the arithmetic of the epochs still to train."""
    run_dir = Path(run_dir)
    if resume_epoch(run_dir) is None or not (run_dir / PLATFORM).is_file():
        return None
    try:
        threads = read_json(run_dir / PLATFORM).get("torch_threads")
    except (OSError, ValueError, AttributeError):
        return None
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1 else None


def point_event(run_dir: str | os.PathLike[str], epochs: int | None) -> str:
    """What starting a point does, in words: ``"running"`` or ``"resuming from epoch N of M"``."""
    epoch = resume_epoch(run_dir)
    if epoch is None:
        return "running"
    return f"resuming from epoch {epoch}" + (f" of {epochs}" if epochs else "")


# --------------------------------------------------------------------------------------------------
# The point runner
# --------------------------------------------------------------------------------------------------


def run_point(
    sweep: Sweep,
    run_id: str,
    results: str | os.PathLike[str] = "results",
    platform: str | None = None,
    gpu: str | int | None = None,
    threads: int | None = None,
    timeout: int | None = None,
    validate: bool = True,
    tasks: int = 1,
) -> str:
    """Run one point of ``sweep`` and render its report: the one point runner of every executor.

    - report and ``metrics.json`` both there: nothing is done (no kernel is started);
    - ``metrics.json`` and the executed ``run.ipynb`` there, report missing: the report is rendered;
    - otherwise the notebook is executed (``utae.training.run.run`` resumes an interrupted run from its checkpoint, and
      returns a finished one at once), then the report is rendered.

    Before any of that, the point is checked: its run directory must not hold another run's ``config.json``
    (:func:`point_state`), its platform folder must hold only runs of this machine
    (:func:`check_platform_folder`), and the run directory must not be in use by another process.

    Args:
        gpu: a GPU index: ``CUDA_VISIBLE_DEVICES`` for the kernel.
        threads: torch/OpenMP threads of the kernel (see :func:`_thread_env`); with ``tasks > 1``, the threads
            of each training process.
        validate: build the point's RunConfig first (once), so that a bad value fails before a kernel starts;
            False only for a notebook whose parameters are not all RunConfig fields.
        tasks: training processes. With more than one, the run is trained first by
            ``torchrun --standalone --nproc_per_node=tasks -m utae.train`` (gloo on CPU, NCCL on CUDA; one
            machine), then the notebook finds the finished run and only shows it.

    Returns:
        ``"skipped"``, ``"rendered"`` or ``"executed"``.

    Raises:
        SweepError: a bad point, a changed sweep, a run directory in use, a failed notebook or training.
        utae.machine.record.OtherMachineError: the platform folder holds runs of another machine.
    """
    point = sweep.point(run_id)
    device = str(point.params.get("device", "auto"))
    if platform is None:
        platform = detect_platform(device)
    run_dir, report = run_path(results, platform, run_id), report_path(results, platform, run_id)
    executed = run_dir / "run.ipynb"
    config = point_config(sweep, run_id, run_dir) if validate else None
    state = point_state(sweep, run_id, results, platform, config)
    check_platform_folder(results, platform, device)
    if state == "finished":
        log.info("[sweep] %s/%s: finished, skipped", platform, run_id)
        return "skipped"
    if state == "render":
        render_notebook_html(executed, report, index_href="../index.html")
        log.info("[sweep] %s/%s: report rendered (%s)", platform, run_id, report)
        return "rendered"
    _check_not_in_use(run_dir)
    threads, env = _kernel_env(run_dir, threads, gpu)
    shown = ", ".join(f"{k}={v}" for k, v in env.items() if k != "MKL_NUM_THREADS")
    epochs = config.epochs if config is not None else None
    log.info("[sweep] %s/%s: %s%s%s", platform, run_id, point_event(run_dir, epochs), f" ({shown})" if shown else "",
             f", {tasks} training processes" if tasks > 1 else "")
    start = time.perf_counter()
    _execute_point(sweep, point, run_dir, config, tasks, threads, env, timeout)
    render_notebook_html(executed, report, index_href="../index.html")
    log.info("[sweep] %s/%s: done in %.1f s -> %s", platform, run_id, time.perf_counter() - start, report)
    return "executed"


def _kernel_env(run_dir: Path, threads: int | None, gpu: str | int | None) -> tuple[int | None, dict[str, str]]:
    """The point's threads (a resumed run keeps those it started with, unless ``threads`` or ``OMP_NUM_THREADS``
    is given) and the kernel's environment: the thread variables (:func:`_thread_env`) and
    ``CUDA_VISIBLE_DEVICES`` for ``gpu``."""
    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = recorded_threads(run_dir)  # a resumed run keeps the threads it started with
    env = _thread_env(threads)
    if gpu is not None and str(gpu) != "":
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return threads, env


def _execute_point(sweep: Sweep, point: SweepPoint, run_dir: Path, config: RunConfig | None, tasks: int,
                   threads: int | None, env: dict[str, str], timeout: int | None) -> None:
    """Train the point (first with ``tasks`` processes when more than one) by executing its notebook into
    ``run_dir/run.ipynb``; a SweepError when the notebook ends without a finished run."""
    executed = run_dir / "run.ipynb"
    if tasks > 1 and not is_finished(run_dir):
        _train_multiprocess(config or point_config(sweep, point.run_id, run_dir), tasks, threads, env)
    execute_notebook(sweep.notebook, executed, _point_params(point, run_dir), timeout=timeout or sweep.timeout,
                     env=env)
    if not is_finished(run_dir):
        raise SweepError(f"{executed} ran without error but {run_dir / 'metrics.json'} is missing: "
                         "does the notebook call utae.training.run.run with out_dir?")


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _train_multiprocess(config: RunConfig, tasks: int, threads: int | None, env: Mapping[str, str]) -> None:
    """Train ``config`` (a point's, with its ``out_dir`` and ``run_id``) with ``tasks`` processes of
    ``torchrun --standalone`` (this machine), from a single-run config file. The output is streamed to this
    process's standard output; a failure raises a SweepError with its tail."""
    run_id = config.default_run_id()
    per_process = threads if threads is not None else max(1, _available_cpus() // tasks)
    child_env = {**os.environ, **env, "OMP_NUM_THREADS": str(per_process), "MKL_NUM_THREADS": str(per_process)}
    with tempfile.TemporaryDirectory(prefix="utae-point-") as tmp:
        config_file = Path(tmp) / f"{run_id}.yaml"
        config_file.write_text(json.dumps(config.to_dict(), indent=1))  # JSON is YAML
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={tasks}",
               "-m", "utae.train", "--config", str(config_file)]
        log.info("[sweep] %s: training with %d processes, %d thread(s) each: torchrun --standalone "
                 "--nproc_per_node=%d -m utae.train", run_id, tasks, per_process, tasks)
        lines: deque[str] = deque(maxlen=200)
        with subprocess.Popen(cmd, cwd=REPO_ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace") as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.append(line)
                print(line, end="", flush=True)
            code = proc.wait()
    if code != 0:
        raise SweepError(f"point {run_id}: multi-process training ({tasks} processes) failed with exit status "
                         f"{code}; its output ends:\n{tail(list(lines))}")
