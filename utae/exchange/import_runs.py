"""Bringing runs of other machines into a results folder: :func:`import_runs`, checked, never overwriting.

The source is an exchange archive (``.tar.gz``, ``.tgz``, ``.tar``; :mod:`utae.exchange.export`) or a folder (a results
folder, or a folder holding ``results/``). It is staged in a temporary folder beside the results folder ``R``
(never in ``R``), after every file was checked by name and size (:func:`utae.exchange.export.stage_archive`: only run
files, within their limits). Every run is validated (:func:`utae.rundir.readers.validate_run`: complete files, JSON,
config fields, finite metrics that agree with the confusion matrix and the std-0 test noise, arrays read with
bounded memory and shapes checked; and the manifest hashes), its HTML report rendered here from those files
(:mod:`utae.report.run_page`; a report in the source is never copied), compared with what ``R`` holds (same platform
folder, other machine: refused; the same run with the same results, :func:`utae.rundir.same_run.result_differences`:
skipped; another run of that id: refused, never overwritten), then moved into place with one ``os.replace`` of
its directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from utae.exchange.export import (
    ARCHIVE_ROOT,
    MANIFEST_NAME,
    MAX_IMPORT_BYTES,
    TAR_SUFFIXES,
    ExchangeError,
    Staged,
    stage_archive,
    stage_folder,
    subdirs,
)
from utae.util.atomic import fsync_dir, read_json, sha256_file
from utae.util.checks import PATH_NAME_RE, safe_path_name
from utae.report.run_page import render_run_page
from utae.rundir.paths import RunFolderError, is_run_file, report_path, run_path
from utae.rundir.same_run import result_differences
from utae.rundir.readers import validate_run

__all__ = ["ImportReport", "LEGACY_IDENTITY_FIELDS", "records_conflict", "import_runs"]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Fields compared when a ``platform.json`` predates fingerprints (see :func:`records_conflict`).
LEGACY_IDENTITY_FIELDS: tuple[str, ...] = ("device_name", "cpu_model", "torch_version")


class _Refused(Exception):
    """One run that is not imported; the message says why (and names the file)."""


def _check_hashes(manifest: Mapping[str, Any] | None, root: Path, files: Sequence[Path],
                  expected_prefixes: Sequence[str]) -> None:
    """Every file listed in the manifest with its hash; every manifest entry under the prefixes present."""
    if manifest is None:
        return
    listed: Mapping[str, str] = manifest["files"]
    top = str(manifest.get("root") or ARCHIVE_ROOT)
    seen = set()
    for file in files:
        key = f"{top}/{file.relative_to(root).as_posix()}"
        seen.add(key)
        if key not in listed:
            raise _Refused(f"{key}: not listed in {MANIFEST_NAME} (added after the export)")
        if sha256_file(file) != listed[key]:
            raise _Refused(f"{key}: its SHA-256 differs from {MANIFEST_NAME} (changed after the export)")
    for key in listed:
        if key not in seen and any(key.startswith(f"{top}/{p}") for p in expected_prefixes) \
                and is_run_file(key.rsplit("/", 1)[-1]):
            raise _Refused(f"{key}: listed in {MANIFEST_NAME} but missing")


# --------------------------------------------------------------------------------------------------
# Import: comparison with the destination, and the move
# --------------------------------------------------------------------------------------------------


def records_conflict(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two ``platform.json`` dicts come from machines that compute differently.

    With both fingerprints: they differ. Otherwise (a record written before fingerprints existed) the
    :data:`LEGACY_IDENTITY_FIELDS` (device name, CPU model, torch version) are compared, and a conflict is
    only declared when a field known on both sides differs: an unknown is not evidence of another machine.
    """
    from utae.machine.record import same_machine_kind  # imports torch: only when runs are compared

    same = same_machine_kind(a, b)
    if same is not None:
        return not same
    return any(a.get(k) is not None and b.get(k) is not None and a.get(k) != b.get(k) for k in LEGACY_IDENTITY_FIELDS)


def _identity_key(record: Mapping[str, Any]) -> str:
    fields = {k: record.get(k) for k in ("fingerprint", *LEGACY_IDENTITY_FIELDS)}
    return json.dumps(fields, sort_keys=True, default=str)


def _existing_records(platform_dir: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """Distinct machine records of the runs in ``platform_dir``: ``{identity key: (record, run_id)}``."""
    records: dict[str, tuple[dict[str, Any], str]] = {}
    if not platform_dir.is_dir():
        return records
    for run_dir in subdirs(platform_dir):
        file = run_dir / "platform.json"
        if not file.is_file():
            continue
        try:
            record = read_json(file)
        except ValueError as exc:
            raise _Refused(f"cannot compare with the runs already there: {exc}") from None
        if isinstance(record, dict):
            records.setdefault(_identity_key(record), (record, run_dir.name))
    return records


def _suggest_name(results: Path, platform: str, record: Mapping[str, Any]) -> str:
    """A free platform folder name for runs of the machine of ``record``."""
    taken = {p.name for p in subdirs(results / "runs")} if (results / "runs").is_dir() else set()
    fingerprint = record.get("fingerprint")
    candidates = [str(record.get("platform_id") or ""), f"{platform}-{fingerprint[:6]}" if isinstance(fingerprint, str)
                  else "", *(f"{platform}-{i}" for i in range(2, 100))]
    for name in candidates:
        if name and name != platform and name not in taken and PATH_NAME_RE.fullmatch(name):
            return name
    return f"{platform}-other"


def _place_file(src: Path, dest: Path) -> None:
    """Move ``src`` to ``dest`` without overwriting: a hard link fails when ``dest`` exists (then ``src`` goes)."""
    try:
        os.link(src, dest)
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links
        if dest.exists():
            raise FileExistsError(f"{dest}: exists") from None
        os.replace(src, dest)
        return
    os.unlink(src)


def _make_dirs(directory: Path) -> list[Path]:
    """``mkdir -p`` that returns the folders it created (deepest last), so that an undo can remove them."""
    created = []
    for parent in reversed([directory, *directory.parents]):
        if not parent.exists():
            parent.mkdir()
            created.append(parent)
    return created


def _undo_dirs(created: Sequence[Path]) -> None:
    for directory in reversed(created):
        with contextlib.suppress(OSError):
            directory.rmdir()  # only when empty


def _move_run(staged: Path, dest: Path, staged_report: Path | None, dest_report: Path) -> bool:
    """Move one staged run directory to ``dest`` (one rename) and its report, if any and if ``dest_report`` is free.

    Atomic per run: when the report cannot be placed for an unexpected reason, the run goes back to the
    staging folder and the error propagates. Returns whether the report was placed.
    """
    created = _make_dirs(dest.parent)
    if dest.exists() or dest.is_symlink():
        _undo_dirs(created)
        raise _Refused(f"{dest} appeared meanwhile; not overwritten")
    os.replace(staged, dest)
    placed = False
    report_dirs: list[Path] = []
    try:
        if staged_report is not None and not dest_report.exists():
            report_dirs = _make_dirs(dest_report.parent)
            _place_file(staged_report, dest_report)
            placed = True
    except BaseException:
        os.replace(dest, staged)
        _undo_dirs(report_dirs)
        _undo_dirs(created)
        raise
    fsync_dir(dest.parent)
    if placed:
        fsync_dir(dest_report.parent)
    return placed


@dataclasses.dataclass
class ImportReport:
    """What :func:`import_runs` did (or, with ``dry_run``, would do).

    Attributes:
        imported, skipped: ``"<platform>/<run_id>"`` of the runs moved into the results folder, and of the
            runs identical to one already there.
        refused: ``("<platform>/<run_id>", reason)``; the reason names the file or the conflict.
        reports: the report files added (``reports/<platform>/<run_id>.html``).
        notes: what was ignored (e.g. files outside runs/ and reports/, manifest entries without a run).
    """

    source: str
    results: str
    dry_run: bool = False
    imported: list[str] = dataclasses.field(default_factory=list)
    skipped: list[str] = dataclasses.field(default_factory=list)
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    reports: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def exit_status(self) -> int:
        """0 when nothing was refused, 1 otherwise."""
        return 1 if self.refused else 0


def _staged_runs(root: Path) -> list[tuple[str, str, Path]]:
    runs_root = root / "runs"
    if not runs_root.is_dir():
        return []
    return [(p.name, r.name, r) for p in sorted(d for d in runs_root.iterdir() if d.is_dir())
            for r in sorted(d for d in p.iterdir() if d.is_dir())]


def import_runs(
    src: PathLike,
    results: PathLike,
    *,
    as_platform: str | None = None,
    dry_run: bool = False,
    reports: bool = True,
    max_bytes: int = MAX_IMPORT_BYTES,
) -> ImportReport:
    """Import the runs of an archive or folder into the results folder ``results`` (see the module docstring).

    For each run ``<platform>/<run_id>`` of the source, in order: the manifest hashes (when there is a
    manifest), the files (:data:`utae.rundir.paths.REQUIRED_FILES`, parseable JSON, a valid RunConfig apart from
    ``dataset_root``, metrics in range with ``best_epoch <= epochs_completed``, a ``(20, 20)`` non-negative
    integer ``confusion.npy`` read without pickle), the machine (``results/runs/<platform>`` holding runs of
    another machine, :func:`records_conflict`: refused, with a ``--as`` name to use instead), the
    destination (an identical run, equal results, :func:`utae.rundir.same_run.result_differences`: skipped; another run of that id: refused).
    Accepted runs are moved in one rename each, with their report when present (an existing report is kept).

    Args:
        src: a ``.tar.gz``/``.tgz``/``.tar`` archive, a results folder, or a folder holding ``results/``.
        as_platform: the platform folder name to import under (the source must hold one platform).
        dry_run: check and report only; nothing in ``results`` changes.
        reports: render each imported run's HTML report here from its files (where none is there yet).
        max_bytes: the most the source's files may hold in all (checked before anything is written).

    Returns:
        An :class:`ImportReport`; its ``exit_status`` is 0 when nothing was refused, else 1.

    Raises:
        ExchangeError: a missing or unreadable source, an unsafe archive member (absolute path, ``..``, link,
            device), a file over its size limit or more than ``max_bytes`` in all, a corrupt manifest, a bad
            ``as_platform`` (:func:`utae.util.checks.safe_path_name`); nothing in ``results`` has changed then.
        OSError: an unexpected failure while moving a run: that run is not left half-moved, the runs before
            it are in place, whole.
    """
    source = Path(src)
    dest_root = Path(results)
    _check_import_args(source, dest_root, as_platform)
    report = ImportReport(source=str(source), results=str(dest_root), dry_run=dry_run)
    dest_root.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=dest_root.parent, prefix=f".{dest_root.name}.import-"))
    try:
        staged = _stage_source(source, stage, max_bytes)
        root, manifest = staged.root, staged.manifest
        report.notes.extend(staged.notes)
        if manifest is None:
            report.notes.append(f"{source} has no {MANIFEST_NAME}: file hashes cannot be checked")
        runs = _staged_runs(root)
        platforms = sorted({p for p, _, _ in runs} | {p for p, _ in staged.refused})
        if as_platform is not None and len(platforms) > 1:
            raise ExchangeError(f"--as {as_platform}: {source} holds several platforms ({', '.join(platforms)}); "
                                "--as renames one")
        _refuse_unstaged_runs(report, staged, runs, source, as_platform)
        known: dict[str, dict[str, tuple[dict[str, Any], str]]] = {}
        for plat, run_id, staged_dir in runs:
            _import_one(report, root, manifest, plat, run_id, staged_dir, dest_root, as_platform or plat, dry_run,
                        known, reports)
        if report.notes:
            for note in report.notes:
                log.info(f"[import] note: {note}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    what = "would import" if dry_run else "imported"
    log.info(f"[import] {source} -> {dest_root}: {len(report.imported)} {what}, {len(report.skipped)} skipped, "
        f"{len(report.refused)} refused")
    return report


def _check_import_args(source: Path, dest_root: Path, as_platform: str | None) -> None:
    """An ExchangeError for a missing source, a bad ``--as`` name or a results path that is not a folder."""
    if not source.exists():
        raise ExchangeError(f"{source}: no such archive or folder")
    if as_platform is not None:
        try:
            safe_path_name(as_platform, "--as")
        except ValueError as exc:
            raise ExchangeError(str(exc)) from None
    if dest_root.exists() and not dest_root.is_dir():
        raise ExchangeError(f"{dest_root}: not a folder")


def _stage_source(source: Path, stage: Path, max_bytes: int) -> Staged:
    """Stage a folder (:func:`utae.exchange.export.stage_folder`) or an archive
    (:func:`utae.exchange.export.stage_archive`) under ``stage``."""
    if source.is_dir():
        return stage_folder(source, stage, max_bytes)
    if source.name.endswith(TAR_SUFFIXES) or tarfile.is_tarfile(source):
        return stage_archive(source, stage, max_bytes)
    raise ExchangeError(f"{source}: neither a folder nor a .tar.gz/.tgz/.tar archive")


def _refuse_unstaged_runs(report: ImportReport, staged: Staged, runs: Sequence[tuple[str, str, Path]],
                           source: Path, as_platform: str | None) -> None:
    """Record in ``report`` the runs refused before staging (:attr:`Staged.refused`), and those the manifest
    lists but the source lacks."""
    for (plat, run_id), reason in sorted(staged.refused.items()):
        label = f"{as_platform or plat}/{run_id}"
        report.refused.append((label, reason))
        log.info(f"[import] REFUSED {label}: {reason}")
    manifest = staged.manifest
    if manifest is None:
        return
    seen_runs = {(p, r) for p, r, _ in runs} | set(staged.refused)
    top = str(manifest.get("root") or ARCHIVE_ROOT)
    listed = {tuple(k.split("/")[2:4]) for k in manifest["files"] if k.startswith(f"{top}/runs/")}
    absent = sorted("/".join(k) for k in listed - seen_runs if len(k) == 2)
    if absent:
        report.notes.append(f"{MANIFEST_NAME} lists run(s) absent from {source}: {', '.join(absent)}")
        for label in absent:
            plat, run_id = label.split("/")
            report.refused.append((f"{as_platform or plat}/{run_id}",
                                   f"runs/{label}: listed in {MANIFEST_NAME} but missing from {source}"))


def _import_one(report: ImportReport, root: Path, manifest: Mapping[str, Any] | None, plat: str, run_id: str,
                staged: Path, dest_root: Path, dest_plat: str, dry_run: bool,
                known: dict[str, dict[str, tuple[dict[str, Any], str]]], reports: bool = True) -> None:
    """Check, compare and move one staged run; records the outcome in ``report``. ``known`` caches the
    machine records of each destination platform folder, the runs accepted so far included. With ``reports``
    the run's HTML report is rendered from its files (:func:`utae.report.run_page.render_run_page`) where none is."""
    label = f"{dest_plat}/{run_id}"
    shown = f"runs/{plat}/{run_id}"
    try:
        for name in (plat, run_id):
            try:
                safe_path_name(name, f"{shown}: folder name")
            except ValueError as exc:
                raise _Refused(str(exc)) from None
        files = sorted(p for p in staged.rglob("*") if p.is_file())
        _check_hashes(manifest, root, files, [f"runs/{plat}/{run_id}/"])
        try:
            record = validate_run(staged, run_id, shown)
        except RunFolderError as exc:
            raise _Refused(str(exc)) from None
        staged_report = None
        if reports and not dry_run:  # rendered here from the checked files, never copied from the source
            staged_report = render_run_page(staged, root / "reports" / plat / f"{run_id}.html",
                                            title=f"U-TAE run {dest_plat}/{run_id}")
        if dest_plat not in known:
            known[dest_plat] = _existing_records(dest_root / "runs" / dest_plat)
        _check_same_machine(record, known[dest_plat], dest_root, dest_plat, shown)
        dest = run_path(dest_root, dest_plat, run_id)
        dest_report = report_path(dest_root, dest_plat, run_id)
        if dest.exists() or dest.is_symlink():
            _skip_identical(report, label, staged, dest, staged_report, dest_report, dest_root)
            return
        if not dry_run:
            if _move_run(staged, dest, staged_report, dest_report):
                report.reports.append(str(dest_report.relative_to(dest_root)))
            elif staged_report is not None:
                report.notes.append(f"{dest_report}: kept the report already there")
        report.imported.append(label)
        known[dest_plat].setdefault(_identity_key(record), (record, run_id))
        renamed = f" (from {plat})" if dest_plat != plat else ""
        log.info(f"[import] {'would import' if dry_run else 'imported'} {label}{renamed}")
    except _Refused as exc:
        report.refused.append((label, str(exc)))
        log.info(f"[import] REFUSED {label}: {exc}")


def _check_same_machine(record: Mapping[str, Any], existing: Mapping[str, tuple[dict[str, Any], str]],
                        dest_root: Path, dest_plat: str, shown: str) -> None:
    """Refuse a run whose machine (``record``) conflicts with one of the ``existing`` records of the destination
    platform folder (:func:`records_conflict`), suggesting a ``--as`` name."""
    from utae.machine.record import describe_record  # imports torch: only when runs are imported

    for other, other_run in existing.values():
        if records_conflict(record, other):
            raise _Refused(
                f"{dest_root / 'runs' / dest_plat} holds runs of {describe_record(other)} (e.g. {other_run}), "
                f"but {shown} was made on {describe_record(record)}: another machine. Import it under its own "
                f"platform name: --as {_suggest_name(dest_root, dest_plat, record)}")


def _skip_identical(report: ImportReport, label: str, staged: Path, dest: Path, staged_report: Path | None,
                    dest_report: Path, dest_root: Path) -> None:
    """A run whose id is taken at ``dest``: skipped when its results are the same (its report added when the
    destination lacks one), refused otherwise."""
    differ = result_differences(staged, dest)
    if differ:
        raise _Refused(f"{dest} already holds another run of that id ({', '.join(differ)} differ); it is never "
                       "overwritten. Remove it first, or import under another platform name with --as NAME")
    report.skipped.append(label)
    added = ""
    if staged_report is not None and not dest_report.exists():
        _make_dirs(dest_report.parent)
        _place_file(staged_report, dest_report)
        report.reports.append(str(dest_report.relative_to(dest_root)))
        added = "; its missing report added"
    log.info(f"[import] skipped {label}: identical to the run already in {dest_root}{added}")
