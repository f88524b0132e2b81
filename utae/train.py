"""The command line of a run: ``python -m utae.train --config FILE [--set key=value ...]``.

One run of a preset or sweep file (``--set`` pins a grid value or overrides a field; values are read as
YAML, so ``--set lr=1e-3`` is a number), also under ``torchrun`` for several GPUs of one machine::

    python -m utae.train --config params/default.yaml --set noise_std=1.0 --set seed=0 --set out_dir=results/x
    torchrun --nproc_per_node=4 -m utae.train --config params/paper.yaml --set noise_std=1.0 --set seed=0

Errors a person can fix (a config or sweep-file error, a dataset that is not PASTIS, a run folder of another run
or machine, a checkpoint that cannot resume) print one line, ``error: ...``, and exit with status 2.

The work is done by :func:`utae.training.run.run` (the run directory), :mod:`utae.training.engine` (the training loop) and
:mod:`utae.config.run_config` (the config) and :mod:`utae.config.sweepfile` (its reader).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from utae.training.checkpoint import CheckpointError
from utae.util.console import configure_logging
from utae.training.distributed import dist_context
from utae.training.engine import NonFiniteLossError
from utae.training.run import run
from utae.config.sweepfile import load_config_file, parse_set

__all__ = ["USER_ERRORS", "main"]

#: The errors of a run that a person fixes by changing the config, the data or the run folder: shown as one line.
#: The package's errors of bad input are ValueErrors whose message names the file or field: SweepError,
#: utae.pastis.dataset.PastisFormatError, utae.rundir.paths.RunDirError, utae.machine.record.OtherMachineError,
#: utae.training.weights.WeightsError, and RunConfig's own checks; a data file that is missing (the message names it), a
#: checkpoint that cannot be read and a diverging loss (which names its epoch and batch) are fixed by the user too.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, FileNotFoundError, CheckpointError, NonFiniteLossError)


def _fail(exc: BaseException) -> int:
    print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the command line, run, print the headline scores. Returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m utae.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML file: RunConfig fields, or a sweep (pin grid keys with --set)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field (the value is parsed as YAML); repeatable")
    parser.add_argument("--max-epochs-this-call", type=int, default=None, metavar="N",
                        help="stop after N epochs of this call, with the checkpoint written; run again to resume")
    args = parser.parse_args(argv)
    if args.max_epochs_this_call is not None and args.max_epochs_this_call < 1:
        parser.error(f"--max-epochs-this-call must be at least 1, got {args.max_epochs_this_call}")
    configure_logging()
    try:
        config = load_config_file(args.config, parse_set(args.overrides))
    except ValueError as exc:  # SweepError, and a RunConfig field out of range (the message names it)
        return _fail(exc)
    try:
        metrics = run(config, max_epochs_this_call=args.max_epochs_this_call)
    except USER_ERRORS as exc:
        return _fail(exc)
    if not dist_context().is_main:
        return 0
    if metrics is None:
        print(f"stopped after {args.max_epochs_this_call} epoch(s) of this call; run the same command to resume")
    else:
        print(f"{metrics['run_id']}: best epoch {metrics['best_epoch']}, test OA {metrics['test']['oa']:.4f}, "
              f"test mIoU {metrics['test']['miou']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
