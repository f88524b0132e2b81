"""Parameter sweeps: expand a ``params/*.yaml`` grid into runs, execute them with papermill, render reports.

A sweep file is a YAML mapping::

    name: default                  # optional label
    description: ...               # optional
    dataset_root: ${PASTIS_ROOT}   # any RunConfig field at the top level is a fixed value
    fixed:                         # fixed values of RunConfig fields, the same for every point
      epochs: 8
      test_noise_stds: [0.0, 0.5, 1.0]
    grid:                          # lists of values; the points are their Cartesian product
      noise_std: [0.0, 0.25, 0.5]
      seed: [0, 1, 2]
    timeout: 3600                  # optional: papermill's execution timeout per cell, in seconds

``${VAR}`` in a string is replaced by the environment variable ``VAR`` (an unset one is an error that
names it and the file). Every key of ``fixed`` and ``grid`` must be a parameter of the parameters cell of
``notebooks/train_eval.ipynb`` and a :class:`utae.train.RunConfig` field; ``out_dir`` and ``run_id`` are set
by the sweep. A point's ``run_id`` is made of the grid values in grid order, e.g. ``noise0.5-seed1``.

A point runs into ``<results>/runs/<platform>/<run_id>/`` (``run.ipynb`` is the executed notebook) and its
report is ``<results>/reports/<platform>/<run_id>.html``; ``<platform>`` is
:func:`utae.platform.platform_id` of the point's device. Every point writes only inside its own run
directory and its own report file, so points can run in parallel.

Command line (``python -m utae.sweep ...``)::

    list SWEEP                      the points, one "run_id<TAB>parameters" a line
    run SWEEP RUN_ID [--results R] [--platform P] [--gpu N] [--threads T] [--timeout S] [--no-check]
                                    execute one point (skipped when finished) and render its report
    make-targets SWEEP -o FILE [--results R] [--gpus 0,1] [--synthetic-root DIR] ...
                                    write the makefile that ``make reproduce`` runs
    compare [--results R]           execute notebooks/compare.ipynb and render results/reports/compare.html
    report [--results R] [--force]  re-render every run report, then compare and the index (no training)
    index [--results R]             write results/reports/index.html
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import itertools
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from utae.config import (
    COMPARE_NOTEBOOK,
    DEFAULT_TIMEOUT,
    REPO_ROOT,
    Sweep,
    SweepError,
    load_sweep,
    run_config_fields,
)
from utae.results import report_path, run_path

__all__ = [
    "detect_platform",
    "execute_notebook",
    "run_point",
    "run_compare",
    "render_reports",
    "default_jobs",
    "make_targets",
    "main",
]

KERNEL_NAME = "python3"


# --------------------------------------------------------------------------------------------------
# Running points
# --------------------------------------------------------------------------------------------------


def detect_platform(device: str = "auto") -> str:
    """The platform slug (:func:`utae.platform.platform_id`) of ``device`` on this machine."""
    from utae.platform import platform_id, resolve_device

    try:
        return platform_id(resolve_device(device))
    except ValueError as exc:
        raise SweepError(f"device {device!r}: {exc}") from exc


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
        SweepError: when a cell fails; the partial notebook is kept and named in the message.
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
                             f"the executed notebook is {partial}") from None
    os.replace(partial, output)
    return output


def run_point(
    sweep: Sweep,
    run_id: str,
    results: str | os.PathLike[str] = "results",
    platform: str | None = None,
    gpu: str | int | None = None,
    threads: int | None = None,
    timeout: int | None = None,
    validate: bool = True,
    log: Any = print,
) -> str:
    """Run one point of ``sweep`` and render its report.

    - report and ``metrics.json`` both there: nothing is done (no kernel is started);
    - ``metrics.json`` and the executed ``run.ipynb`` there, report missing: the report is rendered;
    - otherwise the notebook is executed (``utae.train.run`` resumes an interrupted run from its
      checkpoint, and returns a finished one at once), then the report is rendered.

    Args:
        gpu: a GPU index: ``CUDA_VISIBLE_DEVICES`` for the kernel.
        threads: torch/OpenMP threads of the kernel (see :func:`_thread_env`).
        validate: build the point's RunConfig first, so that a bad value fails before a kernel starts
            (imports torch here; ``make reproduce`` validates every point once, in ``make-targets``).

    Returns:
        ``"skipped"``, ``"rendered"`` or ``"executed"``.
    """
    point = sweep.point(run_id)
    if platform is None:
        platform = detect_platform(str(point.params.get("device", "auto")))
    run_dir, report = run_path(results, platform, run_id), report_path(results, platform, run_id)
    executed = run_dir / "run.ipynb"
    if (run_dir / "metrics.json").is_file() and report.is_file():
        log(f"[sweep] {platform}/{run_id}: finished, skipped")
        return "skipped"
    from utae.report import render_notebook_html

    if (run_dir / "metrics.json").is_file() and executed.is_file():
        render_notebook_html(executed, report, index_href="../index.html")
        log(f"[sweep] {platform}/{run_id}: report rendered ({report})")
        return "rendered"
    params = {**point.params, "out_dir": _from_repo(run_dir), "run_id": run_id, "progress": False}
    if validate:
        _check_config(sweep, run_id, params)
    env = _thread_env(threads)
    if gpu is not None and str(gpu) != "":
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    log(f"[sweep] {platform}/{run_id}: running" + (f" ({', '.join(f'{k}={v}' for k, v in env.items())})" if env else ""))
    start = time.perf_counter()
    execute_notebook(sweep.notebook, executed, params, timeout=timeout or sweep.timeout, env=env)
    if not (run_dir / "metrics.json").is_file():
        raise SweepError(f"{executed} ran without error but {run_dir / 'metrics.json'} is missing: "
                         "does the notebook call utae.train.run with out_dir?")
    render_notebook_html(executed, report, index_href="../index.html")
    log(f"[sweep] {platform}/{run_id}: done in {time.perf_counter() - start:.1f} s -> {report}")
    return "executed"


def _check_config(sweep: Sweep, run_id: str, params: Mapping[str, Any]) -> None:
    """Build the RunConfig of a point before starting a kernel, so that a bad value fails early and clearly."""
    from utae.config import RunConfig

    fields = run_config_fields()
    try:
        RunConfig.from_dict({k: v for k, v in params.items() if k in fields})
    except (TypeError, ValueError) as exc:
        raise SweepError(f"{sweep.path}: point {run_id}: {exc}") from None


def run_compare(results: str | os.PathLike[str] = "results", timeout: int = DEFAULT_TIMEOUT,
                log: Any = print) -> Path:
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


def render_reports(results: str | os.PathLike[str] = "results", force: bool = False, log: Any = print) -> list[Path]:
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
    log(f"[sweep] {len(done)} run report(s) rendered")
    return done


# --------------------------------------------------------------------------------------------------
# Makefile generation
# --------------------------------------------------------------------------------------------------


def _mk(path: str | os.PathLike[str]) -> str:
    text = str(path)
    if re.search(r"[\s#$:%]", text):
        raise SweepError(f"path {text!r} cannot be used in a makefile (spaces, '#', '$', ':' or '%'); use another folder")
    return text


def default_jobs(sweep: Sweep, gpus: Sequence[str] = ()) -> int:
    """How many points ``make reproduce`` runs at a time when not told: one per GPU of ``gpus`` (or one)
    when a point runs on an accelerator, else one per CPU core (each kernel then gets one torch thread),
    at most the number of points."""
    from utae.platform import resolve_device

    on_accelerator = False
    for device in {str(p.params.get("device", "auto")) for p in sweep.points}:
        try:
            on_accelerator = on_accelerator or resolve_device(device).type != "cpu"
        except ValueError:
            on_accelerator = True  # a CUDA device this machine lacks: the point will say so when it runs
    jobs = max(1, len(gpus)) if on_accelerator else (os.cpu_count() or 1)
    return max(1, min(jobs, len(sweep.points)))


def make_targets(
    sweep: Sweep,
    results: str | os.PathLike[str] = "results",
    gpus: Sequence[str] = (),
    platform: str | None = None,
    synthetic_root: str | os.PathLike[str] | None = "data/synthetic_pastis",
    timeout: int | None = None,
    threads: int | None = None,
) -> str:
    """The text of the makefile that ``make reproduce`` runs: one target per point (its report), the
    synthetic dataset when a point needs it, then the study report and the index.

    Every point's RunConfig is built here, once, so a bad value stops ``make`` before any training
    (the per-point ``run`` commands then skip that check and do not import torch).
    Point ``i`` runs on GPU ``gpus[i % len(gpus)]`` when ``gpus`` is given.

    Raises:
        SweepError: when a point's ``dataset_root`` is missing and is not the synthetic root, or a
            point's values are not a valid RunConfig.
    """
    results = Path(results)
    platforms: dict[str, str] = {}
    lines = [
        f"# The points of {sweep.path} (written by python -m utae.sweep make-targets; do not edit).",
        "PY ?= python",
        f"SWEEP_ARGS := {_mk(sweep.path)} --results {_mk(results)}"
        + (f" --timeout {timeout}" if timeout else "") + (f" --threads {threads}" if threads else ""),
        "",
    ]
    targets, rules = [], []
    synth = Path(synthetic_root).resolve() if synthetic_root else None
    data_rules: dict[str, str] = {}
    for i, point in enumerate(sweep.points):
        device = str(point.params.get("device", "auto"))
        if platform is not None:
            plat = platform
        else:
            if device not in platforms:
                platforms[device] = detect_platform(device)
            plat = platforms[device]
        report = report_path(results, plat, point.run_id)
        order_only = ""
        root = point.params.get("dataset_root")
        check = dict(point.params)
        if root is not None and not Path(str(root)).is_dir():
            if synth is not None and Path(str(root)).resolve() == synth:
                stamp = f"{_mk(root)}/metadata.geojson"
                data_rules[stamp] = f"{stamp}:\n\t$(PY) -m utae.synthetic {_mk(root)}\n"
                order_only = f" | {stamp}"
                check["dataset_root"] = str(REPO_ROOT)  # generated before the point runs
            else:
                raise SweepError(f"{sweep.path}: point {point.run_id}: dataset_root {root!r} does not exist "
                                 "(for real PASTIS pass PASTIS_ROOT=/path/to/PASTIS)")
        _check_config(sweep, point.run_id, check)
        gpu = f" --gpu {gpus[i % len(gpus)]}" if gpus else ""
        targets.append(_mk(report))
        rules.append(f"{_mk(report)}:{order_only}\n\t$(PY) -m utae.sweep run $(SWEEP_ARGS) {point.run_id} "
                     f"--platform {plat}{gpu} --no-check\n")
    reports = _mk(results / "reports")
    runs = _mk(results / "runs")
    jobs = default_jobs(sweep, gpus)
    lines += [
        f"# Points run in parallel by default: {jobs} at a time (one a GPU on CUDA; one a CPU core, with one",
        "# torch thread each, on CPU). An explicit make -jN or JOBS=N wins.",
        f"DEFAULT_JOBS := {jobs}",
        "ifeq ($(AUTO_JOBS),1)",
        "MAKEFLAGS += -j$(DEFAULT_JOBS)",
        "endif",
        "",
        "POINTS := \\\n  " + " \\\n  ".join(targets),
        "",
        ".PHONY: all points",
        f"all: {reports}/index.html",
        "points: $(POINTS)",
        "",
        *rules,
        *data_rules.values(),
        f"{reports}/compare.html: $(POINTS) $(wildcard {runs}/*/*/metrics.json) {_mk(_from_repo(COMPARE_NOTEBOOK))}",
        f"\t$(PY) -m utae.sweep compare --results {_mk(results)}" + (f" --timeout {timeout}" if timeout else ""),
        "",
        f"{reports}/index.html: {reports}/compare.html $(POINTS) $(wildcard {reports}/*/*.html)",
        f"\t$(PY) -m utae.sweep index --results {_mk(results)}",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m utae.sweep", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("list", help="print the points of a sweep")
    p.add_argument("sweep")
    p = sub.add_parser("run", help="run one point (skipped when finished) and render its report")
    p.add_argument("sweep")
    p.add_argument("run_id")
    p.add_argument("--results", default="results")
    p.add_argument("--platform", default=None, help="results/runs/<platform> (default: detected)")
    p.add_argument("--gpu", default=None, help="GPU index for this point (CUDA_VISIBLE_DEVICES)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: CPUs / make -j)")
    p.add_argument("--timeout", type=int, default=None, help="execution timeout per cell, seconds")
    p.add_argument("--no-check", action="store_true",
                   help="skip the RunConfig check of the point (make-targets did it): no torch import here")
    p = sub.add_parser("make-targets", help="write the makefile of a sweep")
    p.add_argument("sweep")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--results", default="results")
    p.add_argument("--gpus", default="", help="comma-separated GPU indices to spread the points over")
    p.add_argument("--platform", default="")
    p.add_argument("--synthetic-root", default="data/synthetic_pastis")
    p.add_argument("--timeout", type=int, default=None)
    p.add_argument("--threads", type=int, default=None)
    p = sub.add_parser("compare", help="execute compare.ipynb and render compare.html")
    p.add_argument("--results", default="results")
    p.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT)
    p = sub.add_parser("report", help="re-render every report (no training), then compare and the index")
    p.add_argument("--results", default="results")
    p.add_argument("--force", action="store_true", help="re-render run reports even when up to date")
    p.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT)
    p = sub.add_parser("index", help="write results/reports/index.html")
    p.add_argument("--results", default="results")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring). Returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "list":
            sweep = load_sweep(args.sweep)
            for p in sweep.points:
                print(f"{p.run_id}\t{' '.join(f'{k}={v}' for k, v in p.params.items())}")
        elif args.command == "run":
            validate = not args.no_check
            sweep = load_sweep(args.sweep, check_run_config=validate)
            run_point(sweep, args.run_id, results=args.results, platform=args.platform, gpu=args.gpu,
                      threads=args.threads, timeout=args.timeout, validate=validate)
        elif args.command == "make-targets":
            sweep = load_sweep(args.sweep)
            gpus = [g.strip() for g in args.gpus.split(",") if g.strip()]
            text = make_targets(sweep, results=args.results, gpus=gpus, platform=args.platform or None,
                                synthetic_root=args.synthetic_root, timeout=args.timeout, threads=args.threads)
            from utae.results import atomic_write_text

            atomic_write_text(args.output, text)
            print(f"[sweep] {sweep.path}: {len(sweep.points)} point(s) -> {args.output}")
        elif args.command == "compare":
            run_compare(args.results, timeout=args.timeout)
        elif args.command == "report":
            render_reports(args.results, force=args.force)
            run_compare(args.results, timeout=args.timeout)
            from utae.report import write_index

            print(f"[sweep] index -> {write_index(args.results)}")
        elif args.command == "index":
            from utae.report import write_index

            print(f"[sweep] index -> {write_index(args.results)}")
    except SweepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
