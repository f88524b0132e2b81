"""A sweep whose seeds are chosen by precision (a ``seeds:`` key, :mod:`utae.config.seedrule`), run in rounds.

:func:`run_rounds` is what :func:`utae.sweep.orchestrate.run_all` does for such a sweep: it asks the rule
(:func:`utae.study.seed_rule.seed_decision`) how many seeds the finished runs call for, hands the points of those
seeds to :func:`utae.sweep.orchestrate.run_all` (finished ones are skipped; one Slurm submission per round), writes
``<results>/seeds.json`` after each round and stops when the rule does. The rule reads only the run folders, so an
interrupted or a ``NO_WAIT`` sweep continues where it stopped when ``make reproduce`` runs again: with ``--no-wait``
each call submits one round and returns, and the next call (once those jobs are done) decides and submits the next.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from collections.abc import Callable
from typing import Any

from utae.config.sweepfile import Sweep, SweepError
from utae.rundir.paths import is_finished, run_path
from utae.study.seed_rule import seed_decision, write_seed_record

__all__ = ["run_rounds", "rule_platform"]

log = logging.getLogger(__name__)


def rule_platform(sweep: Sweep, results: Path, executor: str, platform: str | None) -> str | None:
    """The platform folder whose runs the rule reads: ``platform``; else for the local executor the one detected
    here; else (a cluster's nodes) the one folder holding finished runs of the sweep (None when none does yet).

    Raises:
        SweepError: the points would run on several platforms here, or several folders hold the sweep's runs.
    """
    if platform is not None:
        return platform
    if executor == "local":
        from utae.sweep.point import detect_platform

        found = {detect_platform(d) for d in {str(p.params.get("device", "auto")) for p in sweep.points}}
    else:
        ids = {p.run_id for p in sweep.points}
        found = {d.parent.name for d in (results / "runs").glob("*/*") if d.name in ids and is_finished(d)}
    if len(found) > 1:
        raise SweepError(f"{sweep.path}: the seeds rule compares runs of one platform, but the sweep's runs are in "
                         f"{', '.join(sorted(found))}; choose one with PLATFORM=<folder> (--platform)")
    return next(iter(found), None)


def run_rounds(sweep: Sweep, results: Path, *, run_round: Callable[..., Any], study_report: Callable[..., Any],
               outcome: Any, executor: str = "local", platform: str | None = None, no_wait: bool = False,
               report: bool = True, timeout: int | None = None, **run_all_options: Any):
    """Run ``sweep`` (which has a seed rule) round by round until the rule stops. Each round is ``run_round``
    (:func:`utae.sweep.orchestrate.run_all`, which calls this function: it passes itself, its study report and an
    empty :class:`utae.sweep.orchestrate.RunAllOutcome` as ``outcome``, so that this module does not import it back),
    with ``run_all_options``. Returns ``outcome`` filled with all the rounds (its ``report`` rendered once, at the
    end, by ``study_report``, unless ``no_wait`` returned after a submission).

    A round that has failed points ends the sweep (the rule needs every point of a seed); fix the cause and run
    again."""
    assert sweep.seed_rule is not None
    skipped: dict[str, None] = {}
    last: tuple[int, int] | None = None
    while True:
        plat = rule_platform(sweep, results, executor, platform)
        decision = seed_decision(sweep, results, plat)
        write_seed_record(results, decision)
        if decision.stopped:
            log.info(f"[sweep] seeds: {decision.stopped} at {decision.seeds} seed(s) -> {results / 'seeds.json'}")
            break
        finished = _finished_count(sweep, results, plat)
        if last == (decision.seeds, finished):  # a round that finished nothing new: do not loop
            log.info(f"[sweep] seeds: round of {decision.seeds} seed(s) left points unfinished; run again")
            break
        last = (decision.seeds, finished)
        points = tuple(p for p in sweep.points if int(p.grid_values["seed"]) < decision.seeds)
        log.info(f"[sweep] seeds: round of {decision.seeds} seed(s) ({len(points)} point(s))")
        got = run_round(dataclasses.replace(sweep, points=points, seed_rule=None), results, executor=executor,
                      platform=platform, no_wait=no_wait, report=False, timeout=timeout, **run_all_options)
        skipped.update(dict.fromkeys(got.skipped))
        outcome.results.extend(got.results)
        outcome.job_ids.extend(got.job_ids)
        if no_wait and got.job_ids:
            log.info("[sweep] seeds: round submitted; once its jobs are done, run make reproduce again: it reads "
                     "the finished runs and submits the next round, or stops")
            break
        if got.failed:
            break
    ran = {r.run_id for r in outcome.results}
    outcome.skipped = [r for r in skipped if r not in ran]
    if report and not (no_wait and outcome.job_ids):
        outcome.report = study_report(results, timeout=timeout)
    return outcome


def _finished_count(sweep: Sweep, results: Path, platform: str | None) -> int:
    """How many of the sweep's points are finished in ``platform``'s folder (0 when it is unknown)."""
    if platform is None:
        return 0
    return sum(is_finished(run_path(results, platform, p.run_id)) for p in sweep.points)
