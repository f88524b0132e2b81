"""Parameter sweeps: run every point of a ``params/*.yaml`` sweep with one point runner, then the study report.

A sweep file (see :mod:`utae.config`) is a grid of :class:`utae.config.RunConfig` values; each point runs
``notebooks/train_eval.ipynb`` with papermill into ``<results>/runs/<platform>/<run_id>/`` (``run.ipynb`` is the
executed notebook) and its report is ``<results>/reports/<platform>/<run_id>.html``; ``<platform>`` is
:func:`utae.platform.platform_id` of the point's device. Every point writes only inside its own run directory and
its own report file, so points run in parallel: in worker processes of this machine, or as the tasks of a Slurm
job array (:mod:`utae.executor`). Both run the same point runner, :func:`run_point`.

Skip and resume. :func:`run_point` skips a finished point (``metrics.json`` and its report there), only renders
the report of a finished run without one, and otherwise executes the notebook (:func:`utae.run.run` resumes an
interrupted run from its ``checkpoint.pt``). It never skips or resumes a run silently when that run is not the
point's: a ``config.json`` that differs from the point's config (the sweep changed since; ``out_dir``,
``dataset_root`` and :data:`utae.config.HARMLESS_FIELDS` may differ) is an error that says how to proceed; so is
a platform folder holding runs of another machine (another ``platform.json`` fingerprint,
:func:`utae.platform.check_same_machine`), and a run directory in use by another process.

The results folder of a sweep is ``results`` for ``params/default.yaml`` and ``results/<sweep file stem>`` for any
other sweep (:func:`default_results`).

Command line (``python -m utae.sweep ...``)::

    list SWEEP                      the points, one "run_id<TAB>parameters" a line
    run SWEEP RUN_ID [--results R] [--platform P] [--gpu N] [--threads T] [--timeout S] [--tasks-per-point N]
                                    run one point (skipped when finished) and render its report
    run-all SWEEP [--executor local|slurm] [--jobs N] [--results R] [--platform P] [--gpus 0,1] [--threads T]
            [--timeout S] [--synthetic-root DIR] [--no-wait]
            [--slurm-partition P] [--slurm-gpus-per-point G] [--slurm-time MIN] [--slurm-cpus C]
            [--slurm-mem MEM] [--slurm-tasks-per-point N] [--slurm-extra 'sbatch options']
                                    every unfinished point, then compare.html and the index (``make reproduce``)
    compare [--results R]           execute notebooks/compare.ipynb and render <results>/reports/compare.html
    report [--results R ...] [--force]
                                    re-render run reports, compare and the index (no training); without
                                    --results: ``results`` and every study folder ``results/*/`` that has runs
    index [--results R]             write <results>/reports/index.html
    export, import, verify          exchange runs between machines (:mod:`utae.exchange`)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from utae import exchange
from utae.config import (
    COMPARE_NOTEBOOK,
    DEFAULT_TIMEOUT,
    REPO_ROOT,
    Sweep,
    SweepError,
    SweepPoint,
    config_differences,
    load_sweep,
    run_config_fields,
)
from utae.results import read_json, report_path, run_path

__all__ = [
    "detect_platform",
    "default_results",
    "execute_notebook",
    "point_config",
    "point_state",
    "check_platform_folder",
    "run_point",
    "prepare_sweep",
    "run_all",
    "RunAllOutcome",
    "run_compare",
    "render_reports",
    "report_studies",
    "study_folders",
    "default_jobs",
    "main",
]

KERNEL_NAME = "python3"
#: Lines of a failing notebook's traceback (or of a failing command's output) shown in the error message.
LOG_TAIL_LINES = 15
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

Log = Callable[[str], Any]


# --------------------------------------------------------------------------------------------------
# Paths, platforms, threads
# --------------------------------------------------------------------------------------------------


def detect_platform(device: str = "auto") -> str:
    """The platform slug (:func:`utae.platform.platform_id`) of ``device`` on this machine."""
    from utae.platform import platform_id, resolve_device

    try:
        return platform_id(resolve_device(device))
    except ValueError as exc:
        raise SweepError(f"device {device!r}: {exc}") from exc


def default_results(sweep_path: str | os.PathLike[str]) -> Path:
    """The results folder of a sweep file: ``results`` for ``params/default.yaml``, else ``results/<file stem>``
    (relative to the working directory, like the sweep's other relative paths)."""
    path = Path(sweep_path)
    if path.resolve() == (REPO_ROOT / "params" / "default.yaml").resolve():
        return Path("results")
    return Path("results") / path.stem


def _from_repo(path: Path) -> str:
    """``path`` relative to the repository root when inside it (portable config.json), else absolute."""
    path = path.resolve()
    try:
        return path.relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def _make_jobs() -> int:
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
        jobs = _make_jobs()
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


def _tail(lines: Sequence[str], n: int = LOG_TAIL_LINES) -> str:
    """The last ``n`` non-empty lines, without terminal colour codes, indented for an error message."""
    text = [_ANSI.sub("", line).rstrip() for chunk in lines for line in str(chunk).splitlines()]
    text = [line for line in text if line.strip()]
    return "\n".join(f"    {line}" for line in text[-n:])


# --------------------------------------------------------------------------------------------------
# One notebook
# --------------------------------------------------------------------------------------------------


def execute_notebook(
    notebook: str | os.PathLike[str],
    output: str | os.PathLike[str],
    parameters: Mapping[str, Any],
    timeout: int = DEFAULT_TIMEOUT,
    env: Mapping[str, str] | None = None,
) -> Path:
    """Execute ``notebook`` with papermill (kernel ``python3``, working directory the repository root)
    into ``output``, atomically: it runs into ``<output stem>.partial.ipynb``, renamed on success.

    Raises:
        SweepError: when a cell fails; the message names the cell, the partial notebook (kept) and ends with
            the tail of the cell's traceback.
    """
    import papermill
    from papermill.exceptions import PapermillExecutionError

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f"{output.stem}.partial.ipynb")
    with _environ(env or {}):
        try:
            papermill.execute_notebook(
                str(notebook), str(partial), parameters=dict(parameters), kernel_name=KERNEL_NAME,
                cwd=str(REPO_ROOT), progress_bar=False, log_output=False, execution_timeout=timeout,
            )
        except PapermillExecutionError as exc:
            raise SweepError(f"{notebook} failed in cell {exc.exec_count} ({exc.ename}: {exc.evalue}); "
                             f"the executed notebook is {partial}; its traceback ends:\n"
                             f"{_tail(exc.traceback or [])}") from None
    os.replace(partial, output)
    return output


# --------------------------------------------------------------------------------------------------
# One point: its config, its state, the checks
# --------------------------------------------------------------------------------------------------


def _point_params(point: SweepPoint, run_dir: Path) -> dict[str, Any]:
    """The notebook parameters of a point that runs into ``run_dir``."""
    return {**point.params, "out_dir": _from_repo(run_dir), "run_id": point.run_id, "progress": False}


def point_config(sweep: Sweep, run_id: str, run_dir: str | os.PathLike[str] | None = None) -> Any:
    """The :class:`utae.config.RunConfig` of point ``run_id`` running into ``run_dir`` (validated: a bad value
    raises a SweepError naming the sweep file and the point)."""
    from utae.config import RunConfig

    point = sweep.point(run_id)
    params = _point_params(point, Path(run_dir)) if run_dir is not None else dict(point.params)
    fields = run_config_fields()
    try:
        return RunConfig.from_dict({k: v for k, v in params.items() if k in fields})
    except (TypeError, ValueError) as exc:
        raise SweepError(f"{sweep.path}: point {run_id}: {exc}") from None


def _check_config(sweep: Sweep, run_id: str, params: Mapping[str, Any]) -> None:
    """Build the RunConfig of a point's parameters before starting a kernel, so a bad value fails early."""
    from utae.config import RunConfig

    fields = run_config_fields()
    try:
        RunConfig.from_dict({k: v for k, v in params.items() if k in fields})
    except (TypeError, ValueError) as exc:
        raise SweepError(f"{sweep.path}: point {run_id}: {exc}") from None


def _started(run_dir: Path) -> bool:
    """A run that finished an epoch (checkpoint) or the whole run (metrics)."""
    return (run_dir / "metrics.json").is_file() or (run_dir / "checkpoint.pt").is_file()


def _config_conflict(sweep: Sweep, run_id: str, run_dir: Path, report: Path) -> None:
    """Refuse a run directory whose ``config.json`` is another run's (see the module docstring).

    A run that never finished an epoch (no checkpoint, no metrics) is not checked: :func:`utae.run.run` replaces
    its config, and nothing of it is lost.
    """
    path = run_dir / "config.json"
    if not path.is_file() or not _started(run_dir):
        return
    new = point_config(sweep, run_id, run_dir)
    try:
        stored = read_json(path)
    except (OSError, ValueError) as exc:
        raise SweepError(f"{path}: {exc}; delete that run directory to run point {run_id} again") from None
    if not isinstance(stored, dict):
        raise SweepError(f"{path}: expected a JSON object of RunConfig fields; delete that run directory to run "
                         f"point {run_id} again")
    # A moved run (another clone, another machine) sees its data and its folder elsewhere.
    stored = {**stored, "dataset_root": new.dataset_root, "out_dir": new.out_dir}
    diffs = config_differences(stored, new)
    if diffs:
        raise SweepError(
            f"{path}: config.json belongs to a different run; differing fields: {'; '.join(diffs)}. "
            f"The sweep {sweep.path} no longer describes the run stored there, so point {run_id} is neither "
            f"skipped nor run again. To keep that run, run the changed sweep into a new results folder "
            f"(make reproduce RESULTS=<new folder>, or --results); to replace it, delete {run_dir} and {report}.")


def check_platform_folder(results: str | os.PathLike[str], platform: str, device: str = "auto") -> None:
    """Refuse a platform folder ``<results>/runs/<platform>`` that holds runs of another machine.

    Every ``platform.json`` there must carry this machine's fingerprint for ``device``
    (:func:`utae.platform.current_fingerprint`); a record without one (written before fingerprints existed)
    counts as another machine.

    Raises:
        utae.platform.OtherMachineError: naming the run and both machines, and how to proceed.
    """
    folder = Path(results) / "runs" / platform
    records = sorted(folder.glob("*/platform.json")) if folder.is_dir() else []
    if not records:
        return
    from utae.platform import check_same_machine, current_fingerprint, record_fingerprint

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
    """A run directory locked by another process (:func:`utae.run.lock_run_dir`) is a SweepError naming it."""
    if not run_dir.is_dir():
        return
    from utae.run import RunDirError, lock_run_dir

    try:
        with lock_run_dir(run_dir):
            pass
    except RunDirError as exc:
        raise SweepError(str(exc)) from None


def point_state(sweep: Sweep, run_id: str, results: str | os.PathLike[str], platform: str) -> str:
    """What :func:`run_point` has to do for a point: ``"finished"`` (run and report there), ``"render"`` (a
    finished run whose report is missing) or ``"run"``.

    Raises:
        SweepError: the run directory holds another run's config (see :func:`_config_conflict`).
    """
    run_dir, report = run_path(results, platform, run_id), report_path(results, platform, run_id)
    _config_conflict(sweep, run_id, run_dir, report)
    if (run_dir / "metrics.json").is_file():
        if report.is_file():
            return "finished"
        if (run_dir / "run.ipynb").is_file():
            return "render"
    return "run"


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
    log: Log = print,
    tasks: int = 1,
) -> str:
    """Run one point of ``sweep`` and render its report: the one point runner of every executor.

    - report and ``metrics.json`` both there: nothing is done (no kernel is started);
    - ``metrics.json`` and the executed ``run.ipynb`` there, report missing: the report is rendered;
    - otherwise the notebook is executed (``utae.run.run`` resumes an interrupted run from its checkpoint, and
      returns a finished one at once), then the report is rendered.

    Before any of that, the point is checked: its run directory must not hold another run's ``config.json``
    (:func:`point_state`), its platform folder must hold only runs of this machine
    (:func:`check_platform_folder`), and the run directory must not be in use by another process.

    Args:
        gpu: a GPU index: ``CUDA_VISIBLE_DEVICES`` for the kernel.
        threads: torch/OpenMP threads of the kernel (see :func:`_thread_env`); with ``tasks > 1``, the threads
            of each training process.
        validate: build the point's RunConfig first, so that a bad value fails before a kernel starts.
        tasks: training processes. With more than one, the run is trained first by
            ``torchrun --standalone --nproc_per_node=tasks -m utae.train`` (gloo on CPU, NCCL on CUDA; one
            machine), then the notebook finds the finished run and only shows it.

    Returns:
        ``"skipped"``, ``"rendered"`` or ``"executed"``.

    Raises:
        SweepError: a bad point, a changed sweep, a run directory in use, a failed notebook or training.
        utae.platform.OtherMachineError: the platform folder holds runs of another machine.
    """
    point = sweep.point(run_id)
    device = str(point.params.get("device", "auto"))
    if platform is None:
        platform = detect_platform(device)
    run_dir, report = run_path(results, platform, run_id), report_path(results, platform, run_id)
    executed = run_dir / "run.ipynb"
    state = point_state(sweep, run_id, results, platform)
    check_platform_folder(results, platform, device)
    if state == "finished":
        log(f"[sweep] {platform}/{run_id}: finished, skipped")
        return "skipped"
    from utae.report import render_notebook_html

    if state == "render":
        render_notebook_html(executed, report, index_href="../index.html")
        log(f"[sweep] {platform}/{run_id}: report rendered ({report})")
        return "rendered"
    params = _point_params(point, run_dir)
    if validate:
        _check_config(sweep, run_id, params)
    _check_not_in_use(run_dir)
    env = _thread_env(threads)
    if gpu is not None and str(gpu) != "":
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    shown = ", ".join(f"{k}={v}" for k, v in env.items() if k != "MKL_NUM_THREADS")
    log(f"[sweep] {platform}/{run_id}: running" + (f" ({shown})" if shown else "")
        + (f", {tasks} training processes" if tasks > 1 else ""))
    start = time.perf_counter()
    if tasks > 1 and not (run_dir / "metrics.json").is_file():
        _train_multiprocess(sweep, run_id, run_dir, tasks, threads, env, log)
    execute_notebook(sweep.notebook, executed, params, timeout=timeout or sweep.timeout, env=env)
    if not (run_dir / "metrics.json").is_file():
        raise SweepError(f"{executed} ran without error but {run_dir / 'metrics.json'} is missing: "
                         "does the notebook call utae.run.run with out_dir?")
    render_notebook_html(executed, report, index_href="../index.html")
    log(f"[sweep] {platform}/{run_id}: done in {time.perf_counter() - start:.1f} s -> {report}")
    return "executed"


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _train_multiprocess(sweep: Sweep, run_id: str, run_dir: Path, tasks: int, threads: int | None,
                        env: Mapping[str, str], log: Log) -> None:
    """Train point ``run_id`` into ``run_dir`` with ``tasks`` processes of ``torchrun --standalone`` (this
    machine), from a single-run config file holding the point's RunConfig. The output is streamed to this
    process's standard output; a failure raises a SweepError with its tail."""
    import json

    config = point_config(sweep, run_id, run_dir)
    per_process = threads if threads is not None else max(1, _available_cpus() // tasks)
    child_env = {**os.environ, **env, "OMP_NUM_THREADS": str(per_process), "MKL_NUM_THREADS": str(per_process)}
    with tempfile.TemporaryDirectory(prefix="utae-point-") as tmp:
        config_file = Path(tmp) / f"{run_id}.yaml"
        config_file.write_text(json.dumps(config.to_dict(), indent=1))  # JSON is YAML
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={tasks}",
               "-m", "utae.train", "--config", str(config_file)]
        log(f"[sweep] {run_id}: training with {tasks} processes, {per_process} thread(s) each: "
            f"torchrun --standalone --nproc_per_node={tasks} -m utae.train")
        tail: deque[str] = deque(maxlen=200)
        with subprocess.Popen(cmd, cwd=REPO_ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace") as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                tail.append(line)
                print(line, end="", flush=True)
            code = proc.wait()
    if code != 0:
        raise SweepError(f"point {run_id}: multi-process training ({tasks} processes) failed with exit status "
                         f"{code}; its output ends:\n{_tail(list(tail))}")


# --------------------------------------------------------------------------------------------------
# Every point
# --------------------------------------------------------------------------------------------------


def prepare_sweep(sweep: Sweep, synthetic_root: str | os.PathLike[str] | None = "data/synthetic_pastis",
                  log: Log = print) -> None:
    """Make every point runnable before any runs: the synthetic data is generated, then every point's
    RunConfig is built.

    A sweep with a ``synthetic:`` key has synthetic data with those generator options at its ``dataset_root``:
    a missing folder is generated, an existing one must have been generated with the same options (its
    ``SYNTHETIC.json``). Without the key, a missing ``dataset_root`` equal to ``synthetic_root`` is generated
    with the default options.

    Raises:
        SweepError: a missing dataset_root that is not synthetic, a synthetic dataset_root made with other
            options, or a point that is not a valid RunConfig (naming the sweep file and the point).
    """
    from utae.synthetic import OPTIONS_FILE, generator_options, make_synthetic_pastis, read_generator_options

    synth = Path(synthetic_root).resolve() if synthetic_root else None
    for root in dict.fromkeys(str(p.params.get("dataset_root")) for p in sweep.points if p.params.get("dataset_root")):
        path = Path(root)
        if sweep.synthetic is not None and path.is_dir():
            try:
                found = read_generator_options(path)
            except ValueError as exc:
                raise SweepError(f"{sweep.path}: {exc}") from None
            if found != sweep.synthetic:
                have = "no record of its options" if found is None else \
                    f"options {_differing(found, sweep.synthetic)}"
                raise SweepError(f"{sweep.path}: dataset_root {root} has {have} ({OPTIONS_FILE}), but the sweep's "
                                 f"'synthetic' asks for {_differing(sweep.synthetic, found or {})}; delete the folder "
                                 "to have it generated again, or point dataset_root at another folder")
            continue
        if path.is_dir():
            continue
        if sweep.synthetic is not None or (synth is not None and path.resolve() == synth):
            options = sweep.synthetic or generator_options()
            start = time.perf_counter()
            try:
                make_synthetic_pastis(path, **options)
            except ValueError as exc:
                raise SweepError(f"{sweep.path}: synthetic: {exc}") from None
            log(f"[sweep] synthetic dataset written to {path} in {time.perf_counter() - start:.1f} s")
        else:
            raise SweepError(f"{sweep.path}: dataset_root {root!r} does not exist "
                             "(for real PASTIS pass PASTIS_ROOT=/path/to/PASTIS)")
    for point in sweep.points:
        point_config(sweep, point.run_id)


def _differing(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``ours`` whose value differs in ``theirs`` (all of ``ours`` when nothing differs)."""
    diff = {k: v for k, v in ours.items() if theirs.get(k) != v}
    return diff or ours


def default_jobs(sweep: Sweep, gpus: Sequence[str] = (), points: int | None = None) -> int:
    """How many points run at a time when not told: one per GPU of ``gpus`` (or one) when a point runs on an
    accelerator, else one per CPU core (each then gets one torch thread), at most the number of points
    (``points``, default all of the sweep)."""
    from utae.platform import resolve_device

    on_accelerator = False
    for device in {str(p.params.get("device", "auto")) for p in sweep.points}:
        try:
            on_accelerator = on_accelerator or resolve_device(device).type != "cpu"
        except ValueError:
            on_accelerator = True  # a CUDA device this machine lacks: the point will say so when it runs
    jobs = max(1, len(gpus)) if on_accelerator else (os.cpu_count() or 1)
    return max(1, min(jobs, len(sweep.points) if points is None else points))


@dataclass
class RunAllOutcome:
    """What :func:`run_all` did.

    Attributes:
        skipped: run ids of points that were finished already.
        results: one :class:`utae.executor.PointResult` a point that an executor ran (empty with ``no_wait``).
        job_ids: the Slurm job ids (``<array>_<task>``) of the submitted points; empty for the local executor.
        report: compare.html, or None when it was not rendered.
    """

    skipped: list[str] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    report: Path | None = None

    @property
    def failed(self) -> list[Any]:
        """The point results that failed."""
        return [r for r in self.results if r.status == "failed"]


def run_all(
    sweep: Sweep,
    results: str | os.PathLike[str] | None = None,
    executor: str = "local",
    jobs: int | None = None,
    platform: str | None = None,
    gpus: Sequence[str] = (),
    threads: int | None = None,
    timeout: int | None = None,
    synthetic_root: str | os.PathLike[str] | None = "data/synthetic_pastis",
    no_wait: bool = False,
    slurm: Any = None,
    report: bool = True,
    log: Log = print,
) -> RunAllOutcome:
    """Run every unfinished point of ``sweep`` with ``executor``, then compare.html and the index.

    1. The sweep is prepared once (:func:`prepare_sweep`: the synthetic dataset, every point's RunConfig).
    2. Every point is checked before anything runs: a run directory holding another run's config stops
       everything (:func:`point_state`), and so does a platform folder holding runs of another machine
       (:func:`check_platform_folder`). Finished points are skipped; finished runs without a report are rendered
       here. On a cluster whose nodes may differ from this machine (it is not the partition's only node), the
       nodes' platform is unknown here: with ``platform`` the config check and the skipping use that folder,
       without it every point is submitted; either way each job checks and skips in its own node's folder.
    3. The other points run through :func:`run_point`: ``"local"``, a pool of ``jobs`` worker processes
       (:class:`utae.executor.LocalExecutor`); ``"slurm"``, one Slurm job array
       (:class:`utae.executor.SlurmExecutor`, options in ``slurm``, a :class:`utae.executor.SlurmOptions`).
       A failing point is reported while the others go on.
    4. compare.html and the index are rendered (``report``), unless ``no_wait`` (Slurm: submit and return).

    Args:
        results: the results folder (default :func:`default_results` of the sweep file).
        platform: the platform folder of every point (default: detected, per device).
        gpus: GPU indices to spread the points over (local executor).
        threads: torch threads of every point (default: the CPU cores shared out, see
            :class:`utae.executor.LocalExecutor`; on Slurm the job's CPUs).

    Raises:
        SweepError, utae.platform.OtherMachineError: before anything runs (see 1 and 2), or a cluster that
            cannot take the jobs.
    """
    from utae.executor import LocalExecutor, PointTask, SlurmExecutor, SlurmOptions
    from utae.report import render_notebook_html

    results = Path(default_results(sweep.path) if results is None else results)
    if executor not in ("local", "slurm"):
        raise SweepError(f"executor must be 'local' or 'slurm', got {executor!r}")
    slurm = slurm if slurm is not None else SlurmOptions()
    cluster = None
    if executor == "slurm":
        cluster = SlurmExecutor(results, slurm, jobs=jobs, log=log)
        cluster.check_cluster()  # before anything is written
    prepare_sweep(sweep, synthetic_root, log=log)
    # Where the points run is known here for the local executor, with --platform, and on a cluster whose only
    # node is this machine; else (a GPU partition seen from a login node, say) each job finds its own.
    here = executor == "local" or (cluster is not None and cluster.nodes_are_this_machine())
    platforms: dict[str, str] = {}
    plans: list[tuple[SweepPoint, str | None, str]] = []  # point, platform, state
    for point in sweep.points:
        device = str(point.params.get("device", "auto"))
        if platform is not None:
            plat: str | None = platform
        elif here:
            if device not in platforms:
                platforms[device] = detect_platform(device)
            plat = platforms[device]
        else:
            plat = None
        plans.append((point, plat, point_state(sweep, point.run_id, results, plat) if plat is not None else "run"))
    if here:
        for plat, device in {plat: str(p.params.get("device", "auto")) for p, plat, _ in plans}.items():
            assert plat is not None
            check_platform_folder(results, plat, device)
    elif platform is None:
        log("[sweep] the cluster's nodes may not be this machine: every point is submitted, and each job skips its "
            "point if it is finished in its node's platform folder (give PLATFORM=<the nodes' platform> to skip "
            "finished points without a job)")
    outcome = RunAllOutcome()
    todo = []
    for point, plat, state in plans:
        if state == "finished":
            outcome.skipped.append(point.run_id)
        elif state == "render":
            assert plat is not None
            render_notebook_html(run_path(results, plat, point.run_id) / "run.ipynb",
                                 report_path(results, plat, point.run_id), index_href="../index.html")
            log(f"[sweep] {plat}/{point.run_id}: report rendered")
            outcome.skipped.append(point.run_id)
        else:
            todo.append((point, plat))
    log(f"[sweep] {sweep.path}: {len(sweep.points)} point(s), {len(outcome.skipped)} finished, "
        f"{len(todo)} to run ({executor} executor) -> {results}")
    if todo:
        if executor == "local":
            n = jobs or (_make_jobs() if _make_jobs() > 1 else default_jobs(sweep, gpus, points=len(todo)))
            tasks = [PointTask(sweep=sweep, run_id=p.run_id, results=str(results.resolve()), platform=plat,
                               timeout=timeout) for p, plat in todo]  # the platform detected here
            outcome.results = LocalExecutor(jobs=n, gpus=gpus, threads=threads, log=log).run(tasks)
        else:
            assert cluster is not None
            tasks = [PointTask(sweep=sweep, run_id=p.run_id, results=str(results.resolve()), platform=platform,
                               threads=threads, timeout=timeout, tasks=slurm.tasks_per_point) for p, _ in todo]
            submitted = cluster.submit(tasks)
            outcome.job_ids = [job.job_id for job in submitted]
            if no_wait:
                log(f"[sweep] not waiting; once the jobs are done: make report RESULTS={results} "
                    f"(or python -m utae.sweep report --results {results})")
                return outcome
            outcome.results = cluster.wait(submitted, tasks)
    if report:
        outcome.report = _study_report(results, timeout=timeout, log=log)
    if outcome.failed:
        for failure in outcome.failed:  # the whole error was shown when the point ended
            log(f"[sweep] FAILED {failure.run_id}: {failure.error.splitlines()[0] if failure.error else ''}")
        log(f"[sweep] {len(outcome.failed)} of {len(todo)} point(s) failed: "
            f"{', '.join(r.run_id for r in outcome.failed)}. Fix the cause and run the sweep again: finished points "
            "are skipped.")
    return outcome


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def run_compare(results: str | os.PathLike[str] = "results", timeout: int = DEFAULT_TIMEOUT,
                log: Log = print) -> Path:
    """Execute ``notebooks/compare.ipynb`` on ``<results>`` (it writes ``<results>/summary.csv``) and render
    ``<results>/reports/compare.html``. The executed notebook is ``<results>/runs/compare.ipynb``."""
    from utae.report import render_notebook_html

    results = Path(results)
    executed = results / "runs" / "compare.ipynb"
    start = time.perf_counter()
    execute_notebook(COMPARE_NOTEBOOK, executed, {"results_dir": _from_repo(results)}, timeout=timeout)
    out = render_notebook_html(executed, results / "reports" / "compare.html", index_href="index.html")
    log(f"[sweep] compare: done in {time.perf_counter() - start:.1f} s -> {out}")
    return out


def _newer_than(target: Path, sources: Sequence[Path]) -> bool:
    """``target`` exists and no source is newer (make's rule)."""
    if not target.is_file():
        return False
    stamp = target.stat().st_mtime_ns
    return all(src.stat().st_mtime_ns <= stamp for src in sources if src.exists())


def _study_report(results: Path, timeout: int | None = None, log: Log = print) -> Path | None:
    """compare.html and the index of ``results``, each only when missing or older than what it shows (the runs'
    metrics and reports, the compare notebook), as make would. Returns compare.html (None without runs)."""
    from utae.report import write_index

    reports = results / "reports"
    metrics = sorted((results / "runs").glob("*/*/metrics.json"))
    run_reports = sorted(reports.glob("*/*.html"))
    compare = reports / "compare.html"
    if metrics and not _newer_than(compare, [*metrics, *run_reports, COMPARE_NOTEBOOK]):
        run_compare(results, timeout=timeout or DEFAULT_TIMEOUT, log=log)
    index = reports / "index.html"
    if not _newer_than(index, [compare, *run_reports, *metrics]):
        log(f"[sweep] index -> {write_index(results)}")
    else:
        log(f"[sweep] {compare} and {index} are up to date")
    return compare if compare.is_file() else None


def render_reports(results: str | os.PathLike[str] = "results", force: bool = False, log: Log = print) -> list[Path]:
    """Render the report of every executed run notebook ``<results>/runs/<platform>/<run_id>/run.ipynb``
    whose report is missing or older (all of them with ``force``). Nothing is executed."""
    from utae.report import render_notebook_html

    results = Path(results)
    done = []
    for executed in sorted((results / "runs").glob("*/*/run.ipynb")):
        run_dir = executed.parent
        report = report_path(results, run_dir.parent.name, run_dir.name)
        if force or not report.is_file() or report.stat().st_mtime < executed.stat().st_mtime:
            done.append(render_notebook_html(executed, report, index_href="../index.html"))
    log(f"[sweep] {results}: {len(done)} run report(s) rendered")
    return done


def study_folders(root: str | os.PathLike[str] = "results") -> list[Path]:
    """``root`` and every folder ``root/*/`` that holds finished runs (``runs/<platform>/<run_id>/metrics.json``)."""
    root = Path(root)
    candidates = [root, *sorted(p for p in root.glob("*") if p.is_dir())] if root.is_dir() else []
    return [p for p in candidates if next((p / "runs").glob("*/*/metrics.json"), None) is not None]


def report_studies(results: Sequence[str | os.PathLike[str]] = (), force: bool = False,
                   timeout: int = DEFAULT_TIMEOUT, log: Log = print) -> list[Path]:
    """Re-render the run reports, compare.html and the index of each results folder (no training); without
    folders, of :func:`study_folders` of ``results``. Returns the folders done.

    Raises:
        SweepError: a folder given that holds no finished run, or no study found at all.
    """
    from utae.report import write_index

    folders = [Path(r) for r in results] or study_folders("results")
    if not folders:
        raise SweepError("no results folder with finished runs: neither results/runs nor results/*/runs holds "
                         "a run; run make reproduce first")
    for folder in folders:
        if next((folder / "runs").glob("*/*/metrics.json"), None) is None:
            raise SweepError(f"{folder}: no finished run under {folder / 'runs'} (nothing to report)")
        render_reports(folder, force=force, log=log)
        run_compare(folder, timeout=timeout, log=log)
        log(f"[sweep] index -> {write_index(folder)}")
    return folders


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utae.sweep", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="print the points of a sweep")
    p.add_argument("sweep")
    p = sub.add_parser("run", help="run one point (skipped when finished) and render its report")
    p.add_argument("sweep")
    p.add_argument("run_id")
    p.add_argument("--results", default=None, help="results folder (default: results, or results/<sweep stem>)")
    p.add_argument("--platform", default=None, help="results/runs/<platform> (default: detected)")
    p.add_argument("--gpu", default=None, help="GPU index for this point (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--threads", type=_positive_int, default=None, help="torch threads (default: CPUs / make -j)")
    p.add_argument("--timeout", type=_positive_int, default=None, help="execution timeout per cell, seconds")
    p.add_argument("--tasks-per-point", type=_positive_int, default=1,
                   help="training processes (torchrun --standalone on this machine; gloo on CPU, NCCL on CUDA)")
    p.add_argument("--no-check", action="store_true", help="skip the RunConfig check of the point")
    p = sub.add_parser("run-all", help="run every unfinished point, then compare.html and the index")
    p.add_argument("sweep")
    p.add_argument("--executor", choices=("local", "slurm"), default="local")
    p.add_argument("--jobs", type=_positive_int, default=None,
                   help="points at a time (local default: one a CPU core, or one a GPU of --gpus; slurm: the "
                        "array's parallelism, default unlimited)")
    p.add_argument("--results", default=None, help="results folder (default: results, or results/<sweep stem>)")
    p.add_argument("--platform", default=None, help="platform folder name (default: detected)")
    p.add_argument("--gpus", default="", help="comma-separated GPU indices to spread the points over (local)")
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch threads of every point (default: the cores shared out among the points)")
    p.add_argument("--timeout", type=_positive_int, default=None, help="execution timeout per cell, seconds")
    p.add_argument("--synthetic-root", default="data/synthetic_pastis",
                   help="a missing dataset_root equal to this folder is generated first")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit, print the job ids and return")
    p.add_argument("--no-report", action="store_true", help="do not render compare.html and the index")
    g = p.add_argument_group("slurm executor")
    g.add_argument("--slurm-partition", default=None, help="partition (default: the cluster's default)")
    g.add_argument("--slurm-gpus-per-point", type=int, default=0, help="GPUs of each point's job")
    g.add_argument("--slurm-time", type=_positive_int, default=None,
                   help="time limit of a job in minutes (default 240); a point that runs out is requeued and "
                        "resumes from its checkpoint")
    g.add_argument("--slurm-cpus", type=_positive_int, default=None,
                   help="CPUs of each point's job (default: one a training process)")
    g.add_argument("--slurm-mem", default=None, help="memory of each point's job, e.g. 8G (default: the cluster's)")
    g.add_argument("--slurm-tasks-per-point", type=_positive_int, default=1,
                   help="training processes of each point, in its one job (torchrun; gloo on CPU, NCCL on GPU)")
    g.add_argument("--slurm-extra", default="", help="more sbatch options, e.g. '--qos=high --account=me'")
    p = sub.add_parser("compare", help="execute compare.ipynb and render compare.html")
    p.add_argument("--results", default="results")
    p.add_argument("--timeout", type=_positive_int, default=DEFAULT_TIMEOUT)
    p = sub.add_parser("report", help="re-render every report (no training), then compare and the index")
    p.add_argument("--results", action="append", default=[],
                   help="a results folder (repeatable; default: results and every results/*/ with runs)")
    p.add_argument("--force", action="store_true", help="re-render run reports even when up to date")
    p.add_argument("--timeout", type=_positive_int, default=DEFAULT_TIMEOUT)
    p = sub.add_parser("index", help="write results/reports/index.html")
    p.add_argument("--results", default="results")
    exchange.add_commands(sub)  # export, import, verify
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring). Returns the exit status: 0, 1 when a point
    failed (the others ran), 2 for an error before anything ran."""
    from utae.platform import OtherMachineError

    args = _parser().parse_args(argv)
    if getattr(args, "exchange_command", None):
        return exchange.run_command(args)
    try:
        if args.command == "list":
            sweep = load_sweep(args.sweep)
            for p in sweep.points:
                print(f"{p.run_id}\t{' '.join(f'{k}={v}' for k, v in p.params.items())}")
        elif args.command == "run":
            validate = not args.no_check
            sweep = load_sweep(args.sweep, check_run_config=validate)
            results = args.results if args.results is not None else default_results(sweep.path)
            run_point(sweep, args.run_id, results=results, platform=args.platform, gpu=args.gpu,
                      threads=args.threads, timeout=args.timeout, validate=validate, tasks=args.tasks_per_point)
        elif args.command == "run-all":
            return _run_all_command(args)
        elif args.command == "compare":
            run_compare(args.results, timeout=args.timeout)
        elif args.command == "report":
            report_studies(args.results, force=args.force, timeout=args.timeout)
        elif args.command == "index":
            from utae.report import write_index

            print(f"[sweep] index -> {write_index(args.results)}")
    except (SweepError, OtherMachineError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_all_command(args: argparse.Namespace) -> int:
    from utae.executor import SlurmOptions

    sweep = load_sweep(args.sweep)
    options = SlurmOptions(partition=args.slurm_partition, gpus_per_point=args.slurm_gpus_per_point,
                           time_min=args.slurm_time, cpus=args.slurm_cpus, mem=args.slurm_mem,
                           tasks_per_point=args.slurm_tasks_per_point, extra=args.slurm_extra)
    gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
    outcome = run_all(sweep, results=args.results, executor=args.executor, jobs=args.jobs, platform=args.platform,
                      gpus=gpus, threads=args.threads, timeout=args.timeout, synthetic_root=args.synthetic_root,
                      no_wait=args.no_wait, slurm=options, report=not args.no_report)
    return 1 if outcome.failed else 0


if __name__ == "__main__":
    sys.exit(main())
