"""The command line: ``python -m utae COMMAND ...`` (``make reproduce`` and the other make targets call it).

Commands::

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
    export [--results R] [-o FILE] [--platform P] [--sweep SWEEP]
                                    pack this machine's runs and reports into a .tar.gz (:mod:`utae.exchange.export`)
    import SOURCE [--results R] [--as NAME] [--dry-run]
                                    import runs, checked, never overwriting (:mod:`utae.exchange.import_runs`)
    verify SWEEP [--results R] [--points N|ids] [--scratch DIR] [--platform P] [--threads T]
                                    rerun points here and compare with the committed runs (:mod:`utae.exchange.verify`)
    predict INPUT... --model M --out DIR [--stress KIND:SEVERITY --draws N] [...]
                                    a crop map from your own Sentinel-2 GeoTIFFs (:mod:`utae.predict`)

Exit statuses: 0 success; 1 a point failed (the others ran), ``import`` refused a run, or ``verify`` found a
same-machine difference (or compared nothing); 2 an error the user can fix (one line on stderr, ``error: ...``,
naming the file or parameter; no traceback); 130 Ctrl-C (``run-all`` then says which points finished, which
will resume and from which epoch, which did not start, and the command that continues). Messages go through :mod:`logging`, configured here once (:func:`utae.util.console.configure_logging`).
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utae.exchange.export import export_runs
from utae.config.sweepfile import DEFAULT_TIMEOUT, load_sweep
from utae.util.console import configure_logging
from utae.sweep.slurm import SlurmOptions
from utae.exchange.import_runs import import_runs
from utae.sweep.point import run_point
from utae.report.pages import ReportWriteError, write_index
from utae.sweep.orchestrate import SweepInterrupted, default_results, report_studies, run_all, run_compare
from utae.exchange.verify import verify, verify_failures
from utae.predict import command as predict_command

__all__ = ["main"]

PROG = "python -m utae"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
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
    _exchange_commands(sub)
    predict_command.add_arguments(sub.add_parser("predict", help=predict_command.HELP))
    return parser



def _exchange_commands(subparsers: argparse._SubParsersAction) -> None:
    """The ``export``, ``import`` and ``verify`` sub-commands."""
    p = subparsers.add_parser("export", help="pack this machine's runs and reports into a .tar.gz with a manifest")
    p.add_argument("--results", default="results", help="the results folder R (default: results)")
    p.add_argument("-o", "--output", default=None,
                   help="the archive (default: <R name>-<platform>.tar.gz, or <R name>.tar.gz for several platforms)")
    p.add_argument("--platform", action="append", default=None, metavar="P",
                   help="export this platform folder only (repeatable, or comma-separated; default: all)")
    p.add_argument("--sweep", default=None, help="the sweep file of the study, recorded in the manifest")
    p = subparsers.add_parser("import", help="import runs from an archive or folder (validated, never overwriting)")
    p.add_argument("source", help="a .tar.gz/.tgz/.tar archive, a results folder, or a folder holding results/")
    p.add_argument("--results", default="results", help="the results folder R (default: results)")
    p.add_argument("--as", dest="as_platform", default=None, metavar="NAME",
                   help="import under this platform folder name (the source must hold one platform)")
    p.add_argument("--dry-run", action="store_true", help="check and report only; change nothing")
    p = subparsers.add_parser("verify", help="rerun points on this machine and compare with the committed runs")
    p.add_argument("sweep")
    p.add_argument("--results", default="results", help="the results folder holding the committed runs")
    p.add_argument("--points", default=None,
                   help="the first N points (a number), or run ids (separated by commas or spaces); default: all")
    p.add_argument("--scratch", default=None, help="results folder of the reruns (default: a temporary one)")
    p.add_argument("--platform", default=None, help="platform folder name of the reruns (default: detected)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the reruns (default: as committed)")


def _platform_list(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [p.strip() for v in values for p in v.split(",") if p.strip()]



#: The exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it).
INTERRUPTED = 130


def _interrupt_once(signum: int, frame: Any) -> None:
    """The SIGINT handler of a command: the first Ctrl-C raises KeyboardInterrupt (the command stops its points
    and says what will resume); every later one is ignored (``SIG_IGN``, which the interpreter keeps until the
    process ends), so that a second Ctrl-C neither cuts that short (workers and kernels left running, a traceback)
    nor, arriving while the interpreter exits, kills the process by the signal (status -2, not 130)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def _catch_first_interrupt() -> Any:
    """Install :func:`_interrupt_once` (in the main thread only: elsewhere signals cannot be handled); returns the
    handler it replaced, or None when it installed none."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGINT, _interrupt_once)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring). Returns the exit status.

    Ctrl-C: the first stops the command (status 130); later ones are ignored until the process ends
    (:func:`_interrupt_once`). Without a Ctrl-C the SIGINT handler in place before is restored on return."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    configure_logging()
    previous = _catch_first_interrupt()
    try:
        return _run(args)
    except (ValueError, OSError) as exc:  # SweepError, ExchangeError, RunDirError, OtherMachineError included
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Ctrl-C: what was done, and how to go on (no traceback)
        again = f"{PROG} {shlex.join(argv)}"
        if isinstance(exc, SweepInterrupted):
            print(f"interrupted: {exc.summary}.\nTo continue (finished points are skipped, interrupted ones "
                  f"resume from their checkpoint): {again}  (or the same make reproduce)", file=sys.stderr)
        else:
            print(f"interrupted; nothing written is lost. To continue: {again}", file=sys.stderr)
        return INTERRUPTED
    finally:
        if previous is not None and signal.getsignal(signal.SIGINT) is _interrupt_once:  # no Ctrl-C came
            signal.signal(signal.SIGINT, previous)


def _one_line(exc: BaseException) -> str:
    """An error's message; an OSError without one of its own as its reason and file."""
    if isinstance(exc, OSError) and type(exc) is not ReportWriteError and exc.strerror:
        return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror}"
    return str(exc)


def _run(args: argparse.Namespace) -> int:
    if args.command == "list":
        sweep = load_sweep(args.sweep)
        for p in sweep.points:
            print(f"{p.run_id}\t{' '.join(f'{k}={v}' for k, v in p.params.items())}")
    elif args.command == "run":
        validate = not args.no_check
        sweep = load_sweep(args.sweep, check_run_config=validate)
        results = args.results if args.results is not None else default_results(sweep.path)
        run_point(sweep, args.run_id, results=results, platform=args.platform, gpu=args.gpu, threads=args.threads,
                  timeout=args.timeout, validate=validate, tasks=args.tasks_per_point)
    elif args.command == "run-all":
        return _run_all(args)
    elif args.command == "compare":
        run_compare(args.results, timeout=args.timeout)
    elif args.command == "report":
        report_studies(args.results, force=args.force, timeout=args.timeout)
    elif args.command == "index":
        print(f"[sweep] index -> {write_index(args.results)}")
    elif args.command == "export":
        platforms = _platform_list(args.platform)
        output = args.output
        if output is None:
            name = Path(args.results).resolve().name
            output = f"{name}-{platforms[0]}.tar.gz" if platforms and len(platforms) == 1 else f"{name}.tar.gz"
        export_runs(args.results, output, platforms=platforms, sweep=args.sweep)
    elif args.command == "import":
        return import_runs(args.source, args.results, as_platform=args.as_platform, dry_run=args.dry_run).exit_status
    elif args.command == "verify":
        points: int | str | None = None
        if args.points is not None:
            text = str(args.points).strip()
            points = int(text) if text.isdigit() else text  # run ids: utae.exchange.verify splits on commas and spaces
        frame = verify(args.sweep, args.results, points=points, scratch=args.scratch, platform=args.platform,
                       threads=args.threads)
        return 1 if frame.empty or len(verify_failures(frame)) else 0
    elif args.command == "predict":
        return predict_command.run_command(args)
    return 0


def _run_all(args: argparse.Namespace) -> int:
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
