"""The study of a results folder, loaded in one call: what ``notebooks/compare.ipynb`` shows.

:func:`load_study` reads every finished run under ``<results_dir>/runs`` once (through :mod:`utae.study.runs`),
notes the run folders it had to leave out and the platform folders named otherwise than their runs, computes
the summary (:func:`utae.study.tables.study_summary`), the platform effect
(:func:`utae.study.platform_effect.platform_effect`) and, where runs were tested on corruptions, their scores
(:mod:`utae.study.corruption_scores`), and writes them as ``summary.csv``, ``platform_effect.csv`` and
``robustness.csv`` (:func:`write_study_tables`); a study of several architectures adds their comparison
(:mod:`utae.study.architectures`) as ``architectures.csv``. The result is a :class:`Study`; :func:`loading_text` says what was
read.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from utae.study import runs as results
from utae.util.atomic import atomic_write_csv
from utae.rundir.paths import SkippedRunWarning
from utae.study import architectures as arch
from utae.study.corruption_scores import augmentation_table, corruption_scores
from utae.study.platform_effect import platform_effect
from utae.study.tables import load_bench, study_summary

__all__ = ["Study", "load_study", "write_study_tables", "loading_text", "SUMMARY_CSV", "EFFECT_CSV", "ROBUSTNESS_CSV",
           "ARCHITECTURES_CSV"]

#: The study's tables, written in the results folder.
SUMMARY_CSV = "summary.csv"
EFFECT_CSV = "platform_effect.csv"
ROBUSTNESS_CSV = "robustness.csv"
ARCHITECTURES_CSV = "architectures.csv"


@dataclass(frozen=True)
class Study:
    """Every finished run of a results folder, and the tables computed from them.

    Attributes:
        results_dir: the folder holding ``runs/<platform>/<run_id>/`` and ``bench/*.csv``.
        runs: :func:`utae.study.runs.load_runs` (one row a finished run).
        test_noise: :func:`utae.study.runs.load_test_noise` (one row a run and test-noise level).
        per_class: :func:`utae.study.runs.load_per_class_iou` (one row a run and class).
        histories: :func:`utae.study.runs.load_histories`, or None where a ``history.csv`` cannot be read.
        histories_error: why ``histories`` is None ("" otherwise).
        left_out: the run folders left out because their files cannot be read, one message each, sorted.
        platform_mismatches: :func:`utae.study.runs.platform_mismatches` (platform folders whose runs record
            another platform).
        effect_metrics: the metrics of ``effect``; the first is the one the report answers with.
        effect: :func:`utae.study.platform_effect.platform_effect` of ``runs`` (``platform_effect.csv``).
        summary: :func:`utae.study.tables.study_summary` of ``runs`` (``summary.csv``).
        bench: :func:`utae.study.tables.load_bench` of ``results_dir / "bench"`` (empty without benchmark tables).
        corruptions: :func:`utae.study.runs.load_test_corruptions` (one row a run and tested corruption; empty
            when no run was tested on corruptions, as in runs written before they existed).
        corruption_scores: :func:`utae.study.corruption_scores.corruption_scores` (one row a run and kind; its
            ``attrs["notes"]`` name the runs without a clean-trained partner), empty without corruptions.
        robustness: :func:`utae.study.corruption_scores.augmentation_table` (``robustness.csv``), empty without
            corruptions.
        architecture_scores: :func:`utae.study.architectures.architecture_scores` (one row a run and kind) where
            the runs hold several models tested on corruptions; empty otherwise.
        architectures: :func:`utae.study.architectures.architecture_table` (``architectures.csv``) of those
            scores; empty otherwise.
    """

    results_dir: Path
    runs: pd.DataFrame
    test_noise: pd.DataFrame
    per_class: pd.DataFrame
    histories: pd.DataFrame | None
    histories_error: str
    left_out: tuple[str, ...]
    platform_mismatches: pd.DataFrame
    effect_metrics: tuple[str, ...]
    effect: pd.DataFrame
    summary: pd.DataFrame
    bench: dict[str, pd.DataFrame]
    corruptions: pd.DataFrame
    corruption_scores: pd.DataFrame
    robustness: pd.DataFrame
    architecture_scores: pd.DataFrame
    architectures: pd.DataFrame

    @property
    def has_corruptions(self) -> bool:
        """Whether some run was tested on corruptions."""
        return not self.corruptions.empty


def load_study(results_dir: str | os.PathLike[str], *, effect_metrics: Sequence[str] = ("test_miou", "test_oa"),
               detect: float = 1.0, write_tables: bool = True) -> Study:
    """Read the study of ``results_dir`` and (with ``write_tables``, as the report does) write its tables.

    Args:
        results_dir: holds ``runs/<platform>/<run_id>/``; ``bench/*.csv`` where benchmarks were run.
        effect_metrics: the metrics of the platform effect (the first one is the report's answer).
        detect: the platform effect, in points, that the seeds-needed estimate is for.
        write_tables: write ``summary.csv``, ``platform_effect.csv`` (and ``robustness.csv``) into ``results_dir``
            (:func:`write_study_tables`).

    Raises:
        ValueError: no finished run under ``results_dir / "runs"``, or no effect metric; a run folder whose
            files cannot be read is left out and named in :attr:`Study.left_out`, not raised.
    """
    root = Path(results_dir)
    metrics = tuple(effect_metrics)
    if not metrics:
        raise ValueError("load_study: effect_metrics is empty; expected one metric or more, e.g. ('test_miou',)")
    with warnings.catch_warnings(record=True) as skipped:  # broken run folders are named, not raised
        warnings.simplefilter("always", SkippedRunWarning)
        runs = results.load_runs(root / "runs")
        test_noise = results.load_test_noise(root / "runs")
        per_class = results.load_per_class_iou(root / "runs")
        corruptions = results.load_test_corruptions(root / "runs")
    if runs.empty:
        raise ValueError(f"no finished run under {root / 'runs'}: run `make reproduce` first")
    left_out = sorted({str(w.message) for w in skipped if issubclass(w.category, SkippedRunWarning)})
    try:
        histories, histories_error = results.load_histories(root / "runs"), ""
    except ValueError as exc:  # an unreadable history.csv: the report says so and goes on
        histories, histories_error = None, str(exc)
    scores = corruption_scores(runs, corruptions) if not corruptions.empty else pd.DataFrame()
    several = not corruptions.empty and arch.has_architectures(runs)
    arch_scores = arch.architecture_scores(runs, corruptions, scores=scores) if several else pd.DataFrame()
    study = Study(results_dir=root, runs=runs, test_noise=test_noise, per_class=per_class, histories=histories,
                  histories_error=histories_error, left_out=tuple(left_out),
                  platform_mismatches=results.platform_mismatches(runs), effect_metrics=metrics,
                  effect=platform_effect(runs, metrics=metrics, detect=detect), summary=study_summary(runs),
                  bench=load_bench(root / "bench"), corruptions=corruptions, corruption_scores=scores,
                  robustness=augmentation_table(scores) if not scores.empty else pd.DataFrame(),
                  architecture_scores=arch_scores,
                  architectures=arch.architecture_table(arch_scores) if several else pd.DataFrame())
    if write_tables:
        write_study_tables(study)
    return study


def write_study_tables(study: Study) -> list[Path]:
    """Write ``summary.csv``, ``platform_effect.csv`` and, when some run was tested on corruptions,
    ``robustness.csv`` (and ``architectures.csv`` for several models) into ``study.results_dir`` (atomically);
    their paths."""
    written = [atomic_write_csv(study.results_dir / SUMMARY_CSV, study.summary),
               atomic_write_csv(study.results_dir / EFFECT_CSV, study.effect)]
    if not study.robustness.empty:
        written.append(atomic_write_csv(study.results_dir / ROBUSTNESS_CSV, study.robustness))
    if not study.architectures.empty:
        written.append(atomic_write_csv(study.results_dir / ARCHITECTURES_CSV, study.architectures))
    return written


def loading_text(study: Study) -> str:
    """What :func:`load_study` read, as Markdown: the run folders left out, platform folders named otherwise than
    their runs' ``platform.json``, and the number of runs and platforms."""
    parts = []
    if study.left_out:
        parts.append("**Left out** (files that cannot be read):\n" + "\n".join(f"* {m}" for m in study.left_out))
    mismatch = study.platform_mismatches
    if not mismatch.empty:
        parts.append("**Platform folders named otherwise than their runs' `platform.json`** (renamed on import, "
                     "or copied by hand): " + "; ".join(f"`{r.platform}` holds {r.n_runs} run(s) recorded as "
                     f"`{r.recorded}`" for r in mismatch.itertuples()) + ".")
    runs = study.runs
    trained_on_corruptions = "cfg_train_corruption" in runs.columns and runs["cfg_train_corruption"].notna().any()
    parts.append(f"**{len(runs)} finished runs** on {runs['platform'].nunique()} platform(s). Runs per platform and "
                 f"training {'augmentation' if trained_on_corruptions else 'noise level'}:")
    return "\n\n".join(parts)
