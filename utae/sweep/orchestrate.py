"""Sweeps: prepare every point of a ``params/*.yaml`` sweep, run the unfinished ones with an executor, then the
study report (compare.html and the index).

A sweep file (see :mod:`utae.config.sweepfile`) is a grid of :class:`utae.config.run_config.RunConfig` values. :func:`run_all` prepares
the sweep once (:func:`prepare_sweep`: the synthetic dataset, every point's validated RunConfig), checks every
point before anything runs (:func:`utae.sweep.point.point_state`, :func:`utae.sweep.point.check_platform_folder`), skips the
finished ones and hands the others to an executor (:mod:`utae.sweep.executor`), which runs each with the one point
runner, :func:`utae.sweep.point.run_point`. :func:`run_compare`, :func:`render_reports` and :func:`report_studies`
render the reports without training.

The results folder of a sweep is ``results`` for ``params/default.yaml`` and ``results/<sweep file stem>`` for any
other sweep (:func:`default_results`). The command line is :mod:`utae.cli` (``python -m utae ...``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utae import __version__
from utae.util.checks import safe_path_name
from utae.config.run_config import RunConfig

from utae.config.sweepfile import COMPARE_NOTEBOOK, DEFAULT_TIMEOUT, REPO_ROOT, Sweep, SweepError, SweepPoint
from utae.sweep.local import LocalExecutor
from utae.sweep.executor import PointResult, PointTask
from utae.sweep.slurm import SlurmExecutor, SlurmOptions
from utae.sweep.point import (
    check_platform_folder,
    detect_platform,
    execute_notebook,
    make_jobs,
    point_config,
    point_state,
    recorded_threads,
    repo_relative,
    resume_epoch,
)
from utae.report.pages import render_notebook_html, write_error, write_index
from utae.util.atomic import atomic_write_json, read_json
from utae.rundir.paths import CONFIG, HISTORY, METRICS, PLATFORM, is_finished, report_path, run_path
from utae.report.run_page import render_run_page
from utae.pastis.synthetic import OPTIONS_FILE, generator_options, make_synthetic_pastis, read_generator_options

__all__ = [
    "default_results",
    "prepare_sweep",
    "default_jobs",
    "run_all",
    "RunAllOutcome",
    "SweepInterrupted",
    "interruption_summary",
    "RENDERED_RECORD",
    "rendered_from",
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
    from utae.machine.record import resolve_device  # imports torch: only when the job count is not given

    on_accelerator = False
    for device in {str(p.params.get("device", "auto")) for p in sweep.points}:
        try:
            on_accelerator = on_accelerator or resolve_device(device).type != "cpu"
        except ValueError:
            on_accelerator = True  # a CUDA device this machine lacks: the point will say so when it runs
    jobs = max(1, len(gpus)) if on_accelerator else (os.cpu_count() or 1)
    return max(1, min(jobs, len(sweep.points) if points is None else points))


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`run_all`; ``summary`` says what finished, what will resume and what did not start
    (:func:`interruption_summary`), as logged when it was raised."""

    def __init__(self, summary: str) -> None:
        super().__init__(summary)
        self.summary = summary


def interruption_summary(sweep: Sweep, results: str | os.PathLike[str], platforms: dict[str, str | None],
                         epochs: dict[str, int] | None = None) -> str:
    """What an interrupted sweep leaves, from its run folders: the points finished, those that will resume (from
    which epoch, :func:`utae.sweep.point.resume_epoch`) and those not started. ``platforms``: run id -> platform folder
    (None: unknown here, e.g. a Slurm node's)."""
    finished, resuming, fresh, unknown = [], [], [], []
    for point in sweep.points:
        plat = platforms.get(point.run_id)
        if plat is None:
            unknown.append(point.run_id)
            continue
        run_dir = run_path(results, plat, point.run_id)
        epoch = resume_epoch(run_dir)
        if is_finished(run_dir):
            finished.append(point.run_id)
        elif epoch is not None:
            total = (epochs or {}).get(point.run_id)
            resuming.append(f"{point.run_id} from epoch {epoch}" + (f" of {total}" if total else ""))
        else:
            fresh.append(point.run_id)
    parts = [f"{len(finished)} of {len(sweep.points)} point(s) finished" + (f" ({', '.join(finished)})"
                                                                             if finished else "")]
    if resuming:
        parts.append(f"{len(resuming)} will resume: {', '.join(resuming)}")
    if fresh:
        parts.append(f"{len(fresh)} not started (or stopped before their first epoch): {', '.join(fresh)}")
    if unknown:
        parts.append(f"{len(unknown)} on the cluster's nodes: {', '.join(unknown)}")
    return "; ".join(parts)


@dataclass
class RunAllOutcome:
    """What :func:`run_all` did.

    Attributes:
        skipped: run ids of points that were finished already.
        results: one :class:`utae.sweep.executor.PointResult` a point that an executor ran (empty with ``no_wait``).
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
       everything (:func:`utae.sweep.point.point_state`), and so does a platform folder holding runs of another machine
       (:func:`utae.sweep.point.check_platform_folder`). Finished points are skipped; finished runs without a report are rendered
       here. On a cluster whose nodes may differ from this machine (it is not the partition's only node), the
       nodes' platform is unknown here: with ``platform`` the config check and the skipping use that folder,
       without it every point is submitted; either way each job checks and skips in its own node's folder.
    3. The other points run through :func:`utae.sweep.point.run_point`: ``"local"``, a pool of ``jobs`` worker processes
       (:class:`utae.sweep.local.LocalExecutor`); ``"slurm"``, one Slurm job array
       (:class:`utae.sweep.slurm.SlurmExecutor`, options in ``slurm``, a :class:`utae.sweep.slurm.SlurmOptions`).
       A failing point is reported while the others go on.
    4. compare.html and the index are rendered (``report``), unless ``no_wait`` (Slurm: submit and return).

    A sweep with a ``seeds:`` key runs its seeds in rounds until they are precise enough
    (:func:`utae.sweep.rounds.run_rounds`, which calls this function for each round).

    Args:
        results: the results folder (default :func:`default_results` of the sweep file).
        platform: the platform folder of every point (default: detected, per device).
        gpus: GPU indices to spread the points over (local executor).
        threads: torch threads of every point (default: the CPU cores shared out, see
            :class:`utae.sweep.local.LocalExecutor`; on Slurm the job's CPUs).

    Raises:
        SweepError, utae.machine.record.OtherMachineError: before anything runs (see 1 and 2), or a cluster that
            cannot take the jobs.
    """
    platform = None if platform is None else safe_path_name(platform, "platform")  # one folder of results/runs
    results = Path(default_results(sweep.path) if results is None else results)
    if sweep.seed_rule is not None:  # seeds chosen by precision: rounds of this function (utae.sweep.rounds)
        from utae.sweep.rounds import run_rounds

        return run_rounds(sweep, results, run_round=run_all, study_report=_study_report, outcome=RunAllOutcome(),
                          executor=executor, platform=platform, no_wait=no_wait, report=report,
                          timeout=timeout, jobs=jobs, gpus=gpus, threads=threads, synthetic_root=synthetic_root,
                          slurm=slurm)
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
    plans = _plan_points(sweep, results, platform, here, configs)
    _check_platform_folders(results, plans, here, platform)
    try:
        return _run_plans(sweep, results, executor, jobs, gpus, threads, timeout, no_wait, slurm, report, cluster,
                          platform, plans, configs)
    except KeyboardInterrupt:
        summary = interruption_summary(sweep, results, {p.run_id: plat for p, plat, _ in plans},
                                       {rid: c.epochs for rid, c in configs.items()})
        raise SweepInterrupted(summary) from None  # the command line shows it, with the command that continues


def _plan_points(sweep: Sweep, results: Path, platform: str | None, here: bool,
                 configs: dict[str, RunConfig]) -> list[tuple[SweepPoint, str | None, str]]:
    """``(point, platform folder, state)`` of every point: the folder is ``platform``, else the one detected per
    device when the points run ``here``, else None (unknown: the state is then ``"run"``); the state is
    :func:`utae.sweep.point.point_state`'s."""
    platforms: dict[str, str] = {}
    plans: list[tuple[SweepPoint, str | None, str]] = []
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
    return plans


def _check_platform_folders(results: Path, plans: list[tuple[SweepPoint, str | None, str]], here: bool,
                            platform: str | None) -> None:
    """When the points run ``here``, check each platform folder of ``plans`` for runs of another machine
    (:func:`utae.sweep.point.check_platform_folder`); on a cluster of unknown nodes, say how finished points are
    skipped."""
    if here:
        for plat, device in {plat: str(p.params.get("device", "auto")) for p, plat, _ in plans}.items():
            assert plat is not None
            check_platform_folder(results, plat, device)
    elif platform is None:
        log.info("[sweep] the cluster's nodes may not be this machine: every point is submitted, and each job skips its "
            "point if it is finished in its node's platform folder (give PLATFORM=<the nodes' platform> to skip "
            "finished points without a job)")


def _run_plans(sweep: Sweep, results: Path, executor: str, jobs: int | None, gpus: Sequence[str],
               threads: int | None, timeout: int | None, no_wait: bool, slurm: SlurmOptions,
               report: bool, cluster: SlurmExecutor | None, platform: str | None,
               plans: list[tuple[SweepPoint, str | None, str]], configs: dict[str, RunConfig]) -> RunAllOutcome:
    """Steps 3 and 4 of :func:`run_all` on its checked ``plans``."""
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
            # Jobs, hence each point's share of the cores, from the whole sweep, not from the points left: a
            # point gets the same threads in a sweep run again; a resumed run keeps those it started with.
            n = jobs or (make_jobs() if make_jobs() > 1 else default_jobs(sweep, gpus))
            tasks = [PointTask(sweep=sweep, run_id=p.run_id, results=str(results.resolve()), platform=plat,
                               timeout=timeout,
                               threads=None if plat is None else recorded_threads(run_path(results, plat, p.run_id)))
                     for p, plat in todo]  # the platform detected here
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
        for failure in outcome.failed:  # one line when the point ended; the whole error here
            log.info(f"[sweep] FAILED {failure.run_id}: {failure.error}")
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
    page = results / "reports" / "compare.html"
    execute_notebook(COMPARE_NOTEBOOK, executed, {"results_dir": repo_relative(results)}, timeout=timeout,
                     keeps=[page])
    out = render_notebook_html(executed, page, index_href="index.html")
    log.info(f"[sweep] compare: done in {time.perf_counter() - start:.1f} s -> {out}")
    return out


#: What compare.html and the index were rendered from (:func:`rendered_from`), beside them in ``reports/``.
RENDERED_RECORD = ".rendered.json"
#: The files of a run that the study report reads; a change in any of them makes the report stale.
_REPORTED_FILES = (METRICS, CONFIG, PLATFORM, HISTORY)


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def rendered_from(results: str | os.PathLike[str]) -> dict[str, Any]:
    """What the study report of ``results`` shows, by content (file times play no part: an imported run keeps
    its older times, a deleted one leaves none):

    * ``runs``: ``"<platform>/<run_id>"`` of every finished run -> the SHA-256 of its ``metrics.json``, and of its
      ``config.json``, ``platform.json`` and ``history.csv`` (each: ``{"metrics.json": "<hex>", ...}``, a file
      missing as null);
    * ``run_reports``: the run reports the index links (``"<platform>/<run_id>.html"``);
    * ``code``: the SHA-256 of ``notebooks/compare.ipynb``, and the package version.
    """
    results = Path(results)
    runs = {}
    for metrics in sorted((results / "runs").glob(f"*/*/{METRICS}")):
        run_dir = metrics.parent
        runs[f"{run_dir.parent.name}/{run_dir.name}"] = {name: _sha256(run_dir / name) for name in _REPORTED_FILES}
    reports = results / "reports"
    return {"format": 1, "runs": runs,
            "run_reports": sorted(p.relative_to(reports).as_posix() for p in reports.glob("*/*.html")),
            "code": {"compare.ipynb": _sha256(COMPARE_NOTEBOOK), "utae": __version__}}


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _study_report(results: Path, timeout: int | None = None, force: bool = False) -> Path | None:
    """compare.html and the index of ``results``, each only when missing or rendered from something else than
    what there is now (:func:`rendered_from`, recorded in ``reports/.rendered.json`` once both are written; with
    ``force``, always). Returns compare.html (None without runs)."""
    reports = results / "reports"
    compare, index, record_path = reports / "compare.html", reports / "index.html", reports / RENDERED_RECORD
    now = rendered_from(results)
    then = _read_record(record_path) or {}
    compare_current = compare.is_file() and {k: then.get(k) for k in ("format", "runs", "code")} == \
        {k: now[k] for k in ("format", "runs", "code")}
    rendered = False
    if now["runs"] and (force or not compare_current):
        what = "rendering" if not compare.is_file() or force else _what_changed(then, now)
        log.info(f"[sweep] compare: {what}")
        run_compare(results, timeout=timeout or DEFAULT_TIMEOUT)
        rendered = True
    if force or rendered or not index.is_file() or then != now:
        out = write_index(results)
        log.info(f"[sweep] index -> {out}")
        try:
            atomic_write_json(record_path, rendered_from(results))
        except OSError as exc:
            raise SweepError(write_error(exc, record_path, record_path)) from None
    else:
        log.info(f"[sweep] {compare} and {index} are up to date (rendered from the same "
                 f"{len(now['runs'])} run(s))")
    return compare if compare.is_file() else None


def _what_changed(then: dict[str, Any], now: dict[str, Any]) -> str:
    """Why compare.html is rendered again, in words."""
    if not then:
        return "rendering (no record of what compare.html was rendered from)"
    old, new = then.get("runs") or {}, now["runs"]
    added, gone = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    changed = sorted(k for k in set(new) & set(old) if new[k] != old[k])
    words = [f"{len(v)} run(s) {w} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
             for v, w in ((added, "new"), (gone, "gone"), (changed, "changed")) if v]
    if then.get("code") != now["code"]:
        words.append("the compare notebook or the package changed")
    return "rendering again: " + ("; ".join(words) or "its record differs")


def render_reports(results: str | os.PathLike[str] = "results", force: bool = False) -> list[Path]:
    """Render the report of every executed run notebook ``<results>/runs/<platform>/<run_id>/run.ipynb``
    whose report is missing or older (all of them with ``force``). A finished run without its notebook (imported
    from another machine, or cloned: notebooks stay out of git) whose report is missing gets the page rendered
    from its files (:func:`utae.report.run_page.render_run_page`). Nothing is executed."""
    results = Path(results)
    done = []
    for executed in sorted((results / "runs").glob("*/*/run.ipynb")):
        run_dir = executed.parent
        report = report_path(results, run_dir.parent.name, run_dir.name)
        if force or not report.is_file() or report.stat().st_mtime < executed.stat().st_mtime:
            done.append(render_notebook_html(executed, report, index_href="../index.html"))
    for run_dir in sorted((results / "runs").glob("*/*/")):
        report = report_path(results, run_dir.parent.name, run_dir.name)
        if is_finished(run_dir) and not (run_dir / "run.ipynb").is_file() and not report.is_file():
            done.append(render_run_page(run_dir, report))
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
    folders, of :func:`study_folders` of ``results``. compare.html and the index are rendered again only when
    what they show changed (:func:`rendered_from`), all with ``force``. Returns the folders done.

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
        _study_report(folder, timeout=timeout, force=force)
    return folders
