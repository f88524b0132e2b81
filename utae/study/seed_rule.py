"""Seeds chosen by precision: how many seeds a sweep with a ``seeds:`` key (:mod:`utae.config.seedrule`) needs,
derived from its finished runs on disk (torch-free).

The rule (:func:`seed_decision`): every point first runs seeds ``0 .. min - 1``. Once every point of the present
seeds is finished, each named comparison's paired differences (the case's metric minus the ``against`` case's, same
seed and same other grid values, in points) give the half-width of their 95% t interval,
``t(0.975, n - 1) * sd / sqrt(n)`` (:func:`utae.study.inference.ci_half_width`). When every half-width is at most
``target_halfwidth`` the sweep stops ("target reached"); else ``step`` more seeds run, up to ``max`` ("max reached").

The rule reads the spread of the paired differences only, never their mean or a p-value: the stopping time is a
function of the sample standard deviations, and for normal differences the sample variance is independent of the
sample mean, so the mean at the stopping time is still an unbiased estimate of the effect and its t interval keeps
its coverage (the idea of Stein's two-stage procedure, Stein 1945, Ann. Math. Statist. 16:243-258; sequential
fixed-width intervals: Chow & Robbins 1965, Ann. Math. Statist. 36:457-462). A rule that stopped on a p-value would
bias the effect upward and inflate the false positives.

Everything is read from the run folders, so the rule resumes: run again, it finds the seeds finished, recomputes
the same half-widths and goes on where it stopped. The record is ``<results>/seeds.json`` (:func:`write_seed_record`),
shown by :func:`seed_table`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from utae.config.seedrule import Comparison, SeedRule
from utae.rundir.paths import METRICS, is_finished, run_path
from utae.study.inference import ci_half_width
from utae.util.atomic import atomic_write_json, read_json

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

    from utae.config.sweepfile import Sweep

__all__ = ["SEED_RECORD", "SeedDecision", "run_metric", "paired_half_width", "seed_decision", "write_seed_record",
           "seed_table", "seed_words"]

#: The stopping record, in the results folder.
SEED_RECORD = "seeds.json"
TARGET_REACHED, MAX_REACHED, RUNNING = "target reached", "max reached", "running"


@dataclasses.dataclass(frozen=True)
class SeedDecision:
    """Where the rule stands: ``seeds`` (the points of seeds ``0 .. seeds - 1`` must be finished), ``stopped``
    (:data:`TARGET_REACHED`, :data:`MAX_REACHED`, or None while seeds remain to run) and the ``record``
    (``seeds.json``'s content)."""

    seeds: int
    stopped: str | None
    record: dict[str, Any]


def run_metric(run_dir: str | os.PathLike[str], metric: str) -> float:
    """The ``metric`` of a finished run (:data:`utae.config.seedrule.METRICS`), as a fraction (NaN when null).

    ``mpc``: the mean over the corruption kinds of the mean test mIoU over the kind's severities (the definition
    of :mod:`utae.study.corruption_scores`).

    Raises:
        ValueError: naming the ``metrics.json`` that lacks the metric (``mpc``: no ``test_corruptions``).
    """
    file = Path(run_dir) / METRICS
    metrics = read_json(file)
    if metric == "mpc":
        entries = metrics.get("test_corruptions") or []
        by_kind: dict[str, list[float]] = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("kind"), str):
                raise ValueError(f"{file}: every test_corruptions entry needs a string 'kind', got {entry!r}")
            value = entry.get("miou")
            by_kind.setdefault(entry["kind"], []).append(math.nan if value is None else float(value))
        if not by_kind:
            raise ValueError(f"{file}: no test_corruptions, so no mpc; test the runs on corruptions "
                             "(test_corruptions: all) or compare on test_miou")
        return float(np.mean([np.mean(v) for v in by_kind.values()]))
    section, _, name = metric.partition("_")
    value = (metrics.get(section) or {}).get(name)
    if value is None and name not in (metrics.get(section) or {}):
        raise ValueError(f"{file}: no {section}.{name} (the metric {metric})")
    return math.nan if value is None else float(value)


def paired_half_width(differences: np.ndarray) -> float:
    """The 95% t-interval half-width of the mean of ``differences`` ``(n,)`` (points), from their spread alone:
    :func:`utae.study.inference.ci_half_width` of their sd (ddof 1). NaN with fewer than 2 finite values."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return math.nan
    return ci_half_width(float(np.std(d, ddof=1)), len(d))


def _pairings(sweep: Sweep, comparison: Comparison) -> dict[str, dict[int, tuple[str, str]]]:
    """For each combination of the other grid keys (its label, "" with none): seed -> (case run id, against run id)."""
    out: dict[str, dict[int, dict[Any, str]]] = {}
    for point in sweep.points:
        values = point.grid_values
        if values[comparison.key] not in (comparison.case, comparison.against):
            continue
        where = ", ".join(f"{k}={v}" for k, v in values.items() if k not in (comparison.key, "seed"))
        out.setdefault(where, {}).setdefault(int(values["seed"]), {})[values[comparison.key]] = point.run_id
    return {where: {s: (ids[comparison.case], ids[comparison.against]) for s, ids in seeds.items()}
            for where, seeds in out.items()}


def seed_decision(sweep: Sweep, results: str | os.PathLike[str], platform: str | None) -> SeedDecision:
    """Apply the sweep's seed rule to the finished runs of ``results/runs/<platform>/`` (None: the platform folder
    is not known yet, so nothing counts as finished). Each round's half-widths are recomputed from the runs, so the
    same runs always give the same decision (see the module docstring).

    Raises:
        ValueError: the sweep has no seed rule, or a finished run lacks a compared metric.
    """
    rule = sweep.seed_rule
    if rule is None:
        raise ValueError(f"{sweep.path}: the sweep has no seeds: mapping (utae.config.seedrule)")
    cache: dict[str, float] = {}

    def value(run_id: str, metric: str) -> float:
        if (run_id, metric) not in cache:
            cache[(run_id, metric)] = run_metric(run_path(results, platform, run_id), metric)  # type: ignore[arg-type]
        return cache[(run_id, metric)]

    entries = [(c, where, pairs) for c in rule.comparisons for where, pairs in _pairings(sweep, c).items()]
    rounds: list[tuple[int, list[float]]] = []
    n = rule.min
    while True:
        needed = [p.run_id for p in sweep.points if int(p.grid_values["seed"]) < n]
        if platform is None or not all(is_finished(run_path(results, platform, r)) for r in needed):
            return SeedDecision(n, None, _record(rule, platform, n, None, entries, rounds))
        widths = [paired_half_width(_differences(pairs, n, c.metric, value)) for c, _, pairs in entries]
        rounds.append((n, widths))
        if all(w <= rule.target_halfwidth for w in widths):
            return SeedDecision(n, TARGET_REACHED, _record(rule, platform, n, TARGET_REACHED, entries, rounds))
        if n >= rule.max:
            return SeedDecision(n, MAX_REACHED, _record(rule, platform, n, MAX_REACHED, entries, rounds))
        n = min(n + rule.step, rule.max)


def _differences(pairs: dict[int, tuple[str, str]], n: int, metric: str,
                 value: Callable[[str, str], float]) -> np.ndarray:
    """The paired differences (points) of seeds ``0 .. n - 1``, shape ``(n,)``."""
    return np.array([100.0 * (value(case, metric) - value(against, metric))
                     for seed, (case, against) in sorted(pairs.items()) if seed < n])


def _record(rule: SeedRule, platform: str | None, n: int, stopped: str | None,
            entries: list[tuple[Comparison, str, dict[int, tuple[str, str]]]],
            rounds: list[tuple[int, list[float]]]) -> dict[str, Any]:
    """``seeds.json``: the rule, the seeds the sweep stands at and why, and per comparison its half-width after
    each round."""
    comparisons = []
    for i, (c, where, _) in enumerate(entries):
        history = [{"seeds": k, "half_width": None if math.isnan(w[i]) else round(w[i], 6)} for k, w in rounds]
        reached = next((k for k, w in rounds if w[i] <= rule.target_halfwidth), None)
        comparisons.append({"comparison": c.name, "key": c.key, "case": c.case, "against": c.against,
                            "metric": c.metric, "where": where, "seeds": list(range(rounds[-1][0] if rounds else 0)),
                            "rounds": history, "half_width": history[-1]["half_width"] if history else None,
                            "reached_target_at": reached, "stopped": stopped or RUNNING})
    return {"format": 1, "rule": rule.to_dict(), "platform": platform, "seeds": n, "stopped": stopped or RUNNING,
            "comparisons": comparisons}


def write_seed_record(results: str | os.PathLike[str], decision: SeedDecision) -> Path:
    """Write ``decision.record`` to ``<results>/seeds.json`` atomically; returns the path."""
    return atomic_write_json(Path(results) / SEED_RECORD, decision.record)


def seed_table(results: str | os.PathLike[str]) -> pd.DataFrame | None:
    """``<results>/seeds.json`` as a table (None without the file): one row a comparison with ``comparison``,
    ``where`` (the other grid values), ``seeds`` (how many), ``half_width`` (points, the last round's),
    ``target``, ``reached_target_at``, ``stopped`` and ``rounds`` ("seeds: half-width" of every round)."""
    import pandas as pd

    path = Path(results) / SEED_RECORD
    if not path.is_file():
        return None
    record = read_json(path)
    target = record["rule"]["target_halfwidth"]
    rows = [{"comparison": c["comparison"], "where": c["where"], "seeds": len(c["seeds"]),
             "half_width": math.nan if c["half_width"] is None else c["half_width"], "target": target,
             "reached_target_at": c["reached_target_at"], "stopped": c["stopped"],
             "rounds": "; ".join(f"{r['seeds']}: " + ("n/a" if r["half_width"] is None else f"{r['half_width']:.2f}")
                                 for r in c["rounds"])}
            for c in record["comparisons"]]
    return pd.DataFrame(rows, columns=["comparison", "where", "seeds", "half_width", "target", "reached_target_at",
                                       "stopped", "rounds"])


def seed_words(table: pd.DataFrame) -> str:
    """A caption (Markdown) for :func:`seed_table`'s ``table``: how many seeds and why, and what the rule reads."""
    if table.empty:
        return "**Seeds chosen by precision.** No comparison was evaluated yet."
    stopped = ", ".join(sorted(set(table["stopped"])))
    seeds = int(table["seeds"].max())
    target = float(table["target"].iloc[0])
    return (f"**Seeds chosen by precision** (`seeds.json`): {seeds} seed(s) ({stopped}); the sweep added seeds "
            f"until every named comparison's paired 95% CI half-width was at most {target:g} points. The rule reads "
            "only the spread of the paired differences, never the effect, so stopping does not bias the effects "
            "shown below (docs/sweeps.md).")
