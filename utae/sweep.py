"""Sweeps: prepare every point of a ``params/*.yaml`` sweep, run the unfinished ones with an executor, then the
study report (compare.html and the index).

A sweep file (see :mod:`utae.sweepfile`) is a grid of :class:`utae.config.RunConfig` values. :func:`run_all` prepares
the sweep once (:func:`prepare_sweep`: the synthetic dataset, every point's validated RunConfig), checks every
point before anything runs (:func:`utae.point.point_state`, :func:`utae.point.check_platform_folder`), skips the
finished ones and hands the others to an executor (:mod:`utae.executor`), which runs each with the one point
runner, :func:`utae.point.run_point`. :func:`run_compare`, :func:`render_reports` and :func:`report_studies`
render the reports without training.

The results folder of a sweep is ``results`` for ``params/default.yaml`` and ``results/<sweep file stem>`` for any
other sweep (:func:`default_results`). The command line is :mod:`utae.cli` (``python -m utae ...``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utae.checks import safe_path_name
from utae.config import RunConfig

from utae.sweepfile import COMPARE_NOTEBOOK, DEFAULT_TIMEOUT, REPO_ROOT, Sweep, SweepError, SweepPoint
from utae.executor import LocalExecutor, PointResult, PointTask, SlurmExecutor, SlurmOptions
from utae.point import (
    check_platform_folder,
    detect_platform,
    execute_notebook,
    make_jobs,
    point_config,
    point_state,
    repo_relative,
)
from utae.report import render_notebook_html, write_index
from utae.runfolder import report_path, run_path
from utae.synthetic import OPTIONS_FILE, generator_options, make_synthetic_pastis, read_generator_options

__all__ = [
    "default_results",
    "prepare_sweep",
    "default_jobs",
    "run_all",
    "RunAllOutcome",
    "run_compare",
    "render_reports",
    "report_studies",
    "study_folders",
]

log = logging.getLogger(__name__)


def default_results(sweep_path: str | os.PathLike[str]) -> Path:
    """The results folder of a sweep file: ``results`` for ``params/default.yaml``, else ``results/<file stem>``
    (relative to the working directory, like the sweep's other relative paths)."""
    path = Path(sweep_path)
    if path.resolve() == (REPO_ROOT / "params" / "default.yaml").resolve():
        return Path("results")
    return Path("results") / path.stem


# --------------------------------------------------------------------------------------------------
# Every point
# --------------------------------------------------------------------------------------------------


def prepare_sweep(sweep: Sweep, synthetic_root: str | os.PathLike[str] | None = "data/synthetic_pastis"
                  ) -> dict[str, RunConfig]:
    """Make every point runnable before any runs: the synthetic data is generated, then every point's
    RunConfig is built, once. Returns them by run id.

    A sweep with a ``synthetic:`` key has synthetic data with those generator options at its ``dataset_root``:
    a missing folder is generated, an existing one must have been generated with the same options (its
    ``SYNTHETIC.json``). Without the key, a missing ``dataset_root`` equal to ``synthetic_root`` is generated
    with the default options.

    Raises:
        SweepError: a missing dataset_root that is not synthetic, a synthetic dataset_root made with other
            options, or a point that is not a valid RunConfig (naming the sweep file and the point).
    """
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
            log.info(f"[sweep] synthetic dataset written to {path} in {time.perf_counter() - start:.1f} s")
        else:
            raise SweepError(f"{sweep.path}: dataset_root {root!r} does not exist "
                             "(for real PASTIS pass PASTIS_ROOT=/path/to/PASTIS)")
    return {point.run_id: point_config(sweep, point.run_id) for point in sweep.points}


def _differing(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``ours`` whose value differs in ``theirs`` (all of ``ours`` when nothing differs)."""
    diff = {k: v for k, v in ours.items() if theirs.get(k) != v}
    return diff or ours


def default_jobs(sweep: Sweep, gpus: Sequence[str] = (), points: int | None = None) -> int:
    """How many points run at a time when not told: one per GPU of ``gpus`` (or one) when a point runs on an
    accelerator, else one per CPU core (each then gets one torch thread), at most the number of points
    (``points``, default all of the sweep)."""
    from utae.platform import resolve_device  # imports torch: only when the job count is not given

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
    results: list[PointResult] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    report: Path | None = None

    @property
    def failed(self) -> list[PointResult]:
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
    slurm: SlurmOptions | None = None,
    report: bool = True,
) -> RunAllOutcome:
    """Run every unfinished point of ``sweep`` with ``executor``, then compare.html and the index.

    1. The sweep is prepared once (:func:`prepare_sweep`: the synthetic dataset, every point's RunConfig).
    2. Every point is checked before anything runs: a run directory holding another run's config stops
       everything (:func:`utae.point.point_state`), and so does a platform folder holding runs of another machine
       (:func:`utae.point.check_platform_folder`). Finished points are skipped; finished runs without a report are rendered
       here. On a cluster whose nodes may differ from this machine (it is not the partition's only node), the
       nodes' platform is unknown here: with ``platform`` the config check and the skipping use that folder,
       without it every point is submitted; either way each job checks and skips in its own node's folder.
    3. The other points run through :func:`utae.point.run_point`: ``"local"``, a pool of ``jobs`` worker processes
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
    platform = None if platform is None else safe_path_name(platform, "platform")  # one folder of results/runs
    results = Path(default_results(sweep.path) if results is None else results)
    if executor not in ("local", "slurm"):
        raise SweepError(f"executor must be 'local' or 'slurm', got {executor!r}")
    slurm = slurm if slurm is not None else SlurmOptions()
    cluster = None
    if executor == "slurm":
        cluster = SlurmExecutor(results, slurm, jobs=jobs)
        cluster.check_cluster()  # before anything is written
    configs = prepare_sweep(sweep, synthetic_root)
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
        state = point_state(sweep, point.run_id, results, plat, configs[point.run_id]) if plat is not None else "run"
        plans.append((point, plat, state))
    if here:
        for plat, device in {plat: str(p.params.get("device", "auto")) for p, plat, _ in plans}.items():
            assert plat is not None
            check_platform_folder(results, plat, device)
    elif platform is None:
        log.info("[sweep] the cluster's nodes may not be this machine: every point is submitted, and each job skips its "
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
            log.info(f"[sweep] {plat}/{point.run_id}: report rendered")
            outcome.skipped.append(point.run_id)
        else:
            todo.append((point, plat))
    log.info(f"[sweep] {sweep.path}: {len(sweep.points)} point(s), {len(outcome.skipped)} finished, "
        f"{len(todo)} to run ({executor} executor) -> {results}")
    if todo:
        if executor == "local":
            n = jobs or (make_jobs() if make_jobs() > 1 else default_jobs(sweep, gpus, points=len(todo)))
            tasks = [PointTask(sweep=sweep, run_id=p.run_id, results=str(results.resolve()), platform=plat,
                               timeout=timeout) for p, plat in todo]  # the platform detected here
            outcome.results = LocalExecutor(jobs=n, gpus=gpus, threads=threads).run(tasks)
        else:
            assert cluster is not None
            tasks = [PointTask(sweep=sweep, run_id=p.run_id, results=str(results.resolve()), platform=platform,
                               threads=threads, timeout=timeout, tasks=slurm.tasks_per_point) for p, _ in todo]
            submitted = cluster.submit(tasks)
            outcome.job_ids = [job.job_id for job in submitted]
            if no_wait:
                log.info(f"[sweep] not waiting; once the jobs are done: make report RESULTS={results} "
                    f"(or python -m utae report --results {results})")
                return outcome
            outcome.results = cluster.wait(submitted, tasks)
    if report:
        outcome.report = _study_report(results, timeout=timeout)
    if outcome.failed:
        for failure in outcome.failed:  # the whole error was shown when the point ended
            log.info(f"[sweep] FAILED {failure.run_id}: {failure.error.splitlines()[0] if failure.error else ''}")
        log.info(f"[sweep] {len(outcome.failed)} of {len(todo)} point(s) failed: "
            f"{', '.join(r.run_id for r in outcome.failed)}. Fix the cause and run the sweep again: finished points "
            "are skipped.")
    return outcome


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------


def run_compare(results: str | os.PathLike[str] = "results", timeout: int = DEFAULT_TIMEOUT) -> Path:
    """Execute ``notebooks/compare.ipynb`` on ``<results>`` (it writes ``<results>/summary.csv``) and render
    ``<results>/reports/compare.html``. The executed notebook is ``<results>/runs/compare.ipynb``."""
    results = Path(results)
    executed = results / "runs" / "compare.ipynb"
    start = time.perf_counter()
    execute_notebook(COMPARE_NOTEBOOK, executed, {"results_dir": repo_relative(results)}, timeout=timeout)
    out = render_notebook_html(executed, results / "reports" / "compare.html", index_href="index.html")
    log.info(f"[sweep] compare: done in {time.perf_counter() - start:.1f} s -> {out}")
    return out


def _newer_than(target: Path, sources: Sequence[Path]) -> bool:
    """``target`` exists and no source is newer (make's rule)."""
    if not target.is_file():
        return False
    stamp = target.stat().st_mtime_ns
    return all(src.stat().st_mtime_ns <= stamp for src in sources if src.exists())


def _study_report(results: Path, timeout: int | None = None) -> Path | None:
    """compare.html and the index of ``results``, each only when missing or older than what it shows (the runs'
    metrics and reports, the compare notebook), as make would. Returns compare.html (None without runs)."""
    reports = results / "reports"
    metrics = sorted((results / "runs").glob("*/*/metrics.json"))
    run_reports = sorted(reports.glob("*/*.html"))
    compare = reports / "compare.html"
    if metrics and not _newer_than(compare, [*metrics, *run_reports, COMPARE_NOTEBOOK]):
        run_compare(results, timeout=timeout or DEFAULT_TIMEOUT)
    index = reports / "index.html"
    if not _newer_than(index, [compare, *run_reports, *metrics]):
        log.info(f"[sweep] index -> {write_index(results)}")
    else:
        log.info(f"[sweep] {compare} and {index} are up to date")
    return compare if compare.is_file() else None


def render_reports(results: str | os.PathLike[str] = "results", force: bool = False) -> list[Path]:
    """Render the report of every executed run notebook ``<results>/runs/<platform>/<run_id>/run.ipynb``
    whose report is missing or older (all of them with ``force``). Nothing is executed."""
    results = Path(results)
    done = []
    for executed in sorted((results / "runs").glob("*/*/run.ipynb")):
        run_dir = executed.parent
        report = report_path(results, run_dir.parent.name, run_dir.name)
        if force or not report.is_file() or report.stat().st_mtime < executed.stat().st_mtime:
            done.append(render_notebook_html(executed, report, index_href="../index.html"))
    log.info(f"[sweep] {results}: {len(done)} run report(s) rendered")
    return done


def study_folders(root: str | os.PathLike[str] = "results") -> list[Path]:
    """``root`` and every folder ``root/*/`` that holds finished runs (``runs/<platform>/<run_id>/metrics.json``)."""
    root = Path(root)
    candidates = [root, *sorted(p for p in root.glob("*") if p.is_dir())] if root.is_dir() else []
    return [p for p in candidates if next((p / "runs").glob("*/*/metrics.json"), None) is not None]


def report_studies(results: Sequence[str | os.PathLike[str]] = (), force: bool = False,
                   timeout: int = DEFAULT_TIMEOUT) -> list[Path]:
    """Re-render the run reports, compare.html and the index of each results folder (no training); without
    folders, of :func:`study_folders` of ``results``. Returns the folders done.

    Raises:
        SweepError: a folder given that holds no finished run, or no study found at all.
    """
    folders = [Path(r) for r in results] or study_folders("results")
    if not folders:
        raise SweepError("no results folder with finished runs: neither results/runs nor results/*/runs holds "
                         "a run; run make reproduce first")
    for folder in folders:
        if next((folder / "runs").glob("*/*/metrics.json"), None) is None:
            raise SweepError(f"{folder}: no finished run under {folder / 'runs'} (nothing to report)")
        render_reports(folder, force=force)
        run_compare(folder, timeout=timeout)
        log.info(f"[sweep] index -> {write_index(folder)}")
    return folders
