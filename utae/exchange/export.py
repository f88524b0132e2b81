"""The exchange archive: one ``.tar.gz`` of a machine's finished runs, written by :func:`export_runs` and read back
safely by :func:`stage_archive` / :func:`stage_folder` (for :mod:`utae.exchange.import_runs`).

Member names are ``results/runs/<platform>/<run_id>/<file>`` and ``results/reports/<platform>/<run_id>.html``,
whatever the results folder is called, so an archive unpacks into any study. Only the run files travel
(:data:`utae.rundir.paths.RUN_FILES`): checkpoints, executed notebooks, locks, temporary files and ``tensorboard/``
are left out (:func:`is_excluded`). ``results/MANIFEST.json`` records the SHA-256 of every
other member, the package version and git commit, the export time (UTC), the sweep (name and file text, when
given) and each platform's machine (``platform.json`` fingerprint).

Reading. Nothing is written before every member is checked from its header: safe (no absolute path, no ``..``,
no link, no device), bounded (:data:`MAX_MEMBERS` members, :data:`MAX_MEMBER_BYTES` each, :data:`MAX_IMPORT_BYTES`
in all, each run file within :data:`utae.rundir.paths.FILE_LIMITS`: an :class:`ExchangeError` names the member and
the limit) and allow-listed: only the run files (:data:`utae.rundir.paths.RUN_FILES`) and the manifest are extracted
(with ``tarfile``'s ``"data"`` filter) into a staging folder; a run holding any other file, or a file the manifest
does not list, is refused before extraction; files that stay on their machine and study-level files are ignored;
run reports are never copied (the importer renders them from the runs' files). Folders are checked the same way
from their file sizes. Archives written before manifests existed (``runs/...`` at the top, no ``MANIFEST.json``)
are accepted; only the hash check is then impossible.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import zlib
from collections.abc import Iterable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path, PurePosixPath
from typing import Any

from utae.util.arrays import human_bytes
from utae.util.atomic import atomic_write_bytes, read_json
from utae.config.sweepfile import REPO_ROOT, SweepError, load_sweep
from utae.rundir.paths import RUN_FILES, RunFolderError, check_file_size, is_finished, is_local_file, is_run_file, report_path

__all__ = [
    "ExchangeError",
    "ARCHIVE_ROOT",
    "MANIFEST_NAME",
    "is_excluded",
    "subdirs",
    "export_runs",
    "Staged",
    "stage_archive",
    "stage_folder",
    "parse_manifest",
    "TAR_SUFFIXES",
    "MAX_IMPORT_BYTES",
    "MAX_MEMBER_BYTES",
    "MAX_MANIFEST_BYTES",
    "MAX_MEMBERS",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: The top folder of an exported archive: members are ``results/runs/...``, ``results/reports/...``.
ARCHIVE_ROOT = "results"
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = 1
#: The most an import reads from a source: the sizes of all its files together (a study of 100 runs of the
#: default size takes about 200 MB).
MAX_IMPORT_BYTES = 2_000_000_000
#: The largest member of an archive (files that stay on their machine included, which are read through but not
#: extracted: a legacy archive's checkpoints).
MAX_MEMBER_BYTES = 256_000_000
#: The largest manifest (a line per file and the sweep's text: about 150 bytes a file).
MAX_MANIFEST_BYTES = 32_000_000
#: The most members an archive (or files a folder) may hold.
MAX_MEMBERS = 200_000
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class ExchangeError(ValueError):
    """An archive, folder or option that cannot be used at all; the message names the file, member or field."""


def is_excluded(name: str) -> bool:
    """Whether a file of a run directory is left out of an export: any but the run files
    (:data:`utae.rundir.paths.RUN_FILES`): ``checkpoint.pt``, ``run.ipynb``, ``.lock``, ``tensorboard/``..."""
    return not is_run_file(name)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def subdirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def _package_version() -> str | None:
    try:
        return version("utae")
    except PackageNotFoundError:
        return None


def _git_commit(repo: Path = REPO_ROOT) -> str | None:
    """``git rev-parse HEAD`` of the repository, or None when it is not a git checkout (or git is missing)."""
    if not (repo / ".git").exists():
        return None
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and re.fullmatch(r"[0-9a-f]{40,64}", commit) else None


def _sweep_meta(sweep: PathLike | None) -> dict[str, Any] | None:
    """The sweep of an export, read by the one sweep reader (:func:`utae.config.sweepfile.load_sweep`): its name, file
    name and text."""
    if sweep is None:
        return None
    path = Path(sweep)
    try:
        name = load_sweep(path, check_run_config=False).name
    except SweepError as exc:
        raise ExchangeError(str(exc)) from None
    return {"name": name, "file": path.name, "text": path.read_text(encoding="utf-8")}


def _identity(record: Mapping[str, Any]) -> tuple[str | None, str]:
    """``(fingerprint or None, one-line description)`` of a ``platform.json`` dict."""
    from utae.machine.record import describe_record, record_fingerprint  # imports torch: only when exporting

    try:
        fingerprint = record_fingerprint(record)
    except ValueError:
        fingerprint = None
    return fingerprint, describe_record(record)


def export_runs(
    results: PathLike,
    output: PathLike,
    *,
    platforms: Sequence[str] | None = None,
    sweep: PathLike | None = None,
) -> Path:
    """Write the finished runs of ``results`` (all platforms, or ``platforms``) and their reports to a ``.tar.gz``.

    Members: ``results/MANIFEST.json`` first, then ``results/runs/<platform>/<run_id>/<file>`` for every file
    of a finished run (one with ``metrics.json``) except those of :func:`is_excluded`, then
    ``results/reports/<platform>/<run_id>.html`` where present. Owners are anonymous (uid 0, no user name).
    The manifest holds ``format``, ``created_utc``, ``package`` (``name``, ``version``, ``git_commit``),
    ``sweep`` (``name``, ``file``, ``text``; None without ``sweep``), ``platforms``
    (``{platform: {"runs": [...], "machines": [{"fingerprint", "machine", "runs"}]}}``) and ``files``
    (``{member: sha256}``). The archive is written atomically (:func:`utae.util.atomic.atomic_write_bytes`).

    Args:
        output: the archive; ``.tar.gz`` is appended when it ends in neither ``.tar.gz`` nor ``.tgz``.
        sweep: the sweep file of the study, recorded in the manifest.

    Returns:
        The archive's path.

    Raises:
        ExchangeError: no ``runs`` folder, an unknown platform (the known ones are listed), a link in a run
            directory, or nothing finished to export.
    """
    root = Path(results)
    runs_root = root / "runs"
    chosen = _chosen_platforms(runs_root, platforms)
    out = Path(output)
    if not out.name.endswith((".tar.gz", ".tgz")):
        out = out.with_name(out.name + ".tar.gz")
    meta_sweep = _sweep_meta(sweep)

    members: list[tuple[str, bytes, float]] = []  # (member name, bytes, mtime)
    meta_platforms: dict[str, Any] = {}
    for plat in chosen:
        meta = _export_platform(root, plat, members)
        if meta is not None:
            meta_platforms[plat] = meta
    if not meta_platforms:
        raise ExchangeError(f"{runs_root}: no finished run (with metrics.json) to export in "
                            f"{', '.join(chosen) or 'no platform'}")

    manifest = {
        "format": MANIFEST_FORMAT,
        "root": ARCHIVE_ROOT,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "package": {"name": "utae", "version": _package_version(), "git_commit": _git_commit()},
        "sweep": meta_sweep,
        "platforms": meta_platforms,
        "files": {name: _sha256_bytes(data) for name, data, _ in members},
    }
    atomic_write_bytes(out, _tar_gz(manifest, members))
    n_runs = sum(len(p["runs"]) for p in meta_platforms.values())
    log.info(f"[export] {n_runs} run(s) of {', '.join(meta_platforms)} ({len(members)} files) -> {out}")
    return out


def _chosen_platforms(runs_root: Path, platforms: Sequence[str] | None) -> list[str]:
    """The platforms to export (all folders of ``runs_root``, or ``platforms`` without repeats), each checked."""
    if not runs_root.is_dir():
        raise ExchangeError(f"{runs_root}: no such folder, nothing to export")
    available = [p.name for p in subdirs(runs_root)]
    chosen = available if platforms is None else list(dict.fromkeys(platforms))
    unknown = [p for p in chosen if p not in available]
    if unknown:
        raise ExchangeError(f"{runs_root}: no platform folder {', '.join(map(repr, unknown))}; "
                            f"platforms: {', '.join(available) or 'none'}")
    return chosen


def _export_platform(root: Path, plat: str, members: list[tuple[str, bytes, float]]) -> dict[str, Any] | None:
    """Append the members of the finished runs of platform ``plat`` to ``members``; return its manifest entry
    (``{"runs", "machines"}``), or None when it has no finished run."""
    run_ids: list[str] = []
    machines: dict[str, dict[str, Any]] = {}
    for run_dir in subdirs(root / "runs" / plat):
        if not is_finished(run_dir):
            log.info(f"[export] {plat}/{run_dir.name}: unfinished (no metrics.json), left out")
            continue
        members.extend(_run_members(root, plat, run_dir))
        run_ids.append(run_dir.name)
        record_file = run_dir / "platform.json"
        record = read_json(record_file) if record_file.is_file() else {}
        fingerprint, machine = _identity(record if isinstance(record, Mapping) else {})
        entry = machines.setdefault(f"{fingerprint}|{machine}",
                                    {"fingerprint": fingerprint, "machine": machine, "runs": []})
        entry["runs"].append(run_dir.name)
    return {"runs": run_ids, "machines": list(machines.values())} if run_ids else None


def _run_members(root: Path, plat: str, run_dir: Path) -> list[tuple[str, bytes, float]]:
    """The ``(member name, bytes, mtime)`` of a finished run: its run files, then its report where present."""
    members = []
    for file in sorted(run_dir.iterdir()):
        if is_excluded(file.name):
            continue
        if file.is_symlink():
            raise ExchangeError(f"{file}: a link in a run directory; results hold plain files only")
        if not file.is_file():
            log.info(f"[export] {file}: not a plain file, left out")
            continue
        members.append((f"{ARCHIVE_ROOT}/runs/{plat}/{run_dir.name}/{file.name}", file.read_bytes(),
                        file.stat().st_mtime))
    report = report_path(root, plat, run_dir.name)
    if report.is_file() and not report.is_symlink():
        members.append((f"{ARCHIVE_ROOT}/reports/{plat}/{report.name}", report.read_bytes(),
                        report.stat().st_mtime))
    return members


def _tar_gz(manifest: Mapping[str, Any], members: Sequence[tuple[str, bytes, float]]) -> bytes:
    """The archive's bytes: the manifest first, then ``members``; owners anonymous, mode 0644."""
    manifest_bytes = (json.dumps(manifest, indent=2) + "\n").encode("utf-8")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        now = _dt.datetime.now(_dt.timezone.utc).timestamp()
        for name, data, mtime in [(f"{ARCHIVE_ROOT}/{MANIFEST_NAME}", manifest_bytes, now), *members]:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------------
# Import: staging (safe extraction, or a copy of a folder)
# --------------------------------------------------------------------------------------------------


def _check_member(archive: Path, member: tarfile.TarInfo) -> None:
    """Refuse a member that could write outside the extraction folder, or is not a plain file or folder."""
    name = member.name
    where = f"{archive}: member {name!r}"
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise ExchangeError(f"{where} has an absolute path; refused (nothing was extracted)")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise ExchangeError(f"{where} has a '..' component that leaves the results folder; refused "
                            "(nothing was extracted)")
    if member.issym() or member.islnk():
        kind = "symbolic link" if member.issym() else "hard link"
        target = member.linkname
        outside = target.startswith("/") or ".." in PurePosixPath(target).parts
        raise ExchangeError(f"{where} is a {kind} to {target!r}{' (outside the results folder)' if outside else ''}; "
                            "a results archive holds plain files and folders only (nothing was extracted)")
    if not (member.isfile() or member.isdir()):
        raise ExchangeError(f"{where} is a device, pipe or other special file; refused (nothing was extracted)")


def _find_root(paths: Iterable[tuple[str, ...]], source: PathLike) -> tuple[str, ...]:
    """The folder (as path parts) holding ``runs/<platform>/<run_id>/<file>``: ``()`` or ``("results",)``..."""
    candidates = {parts[:i] for parts in paths for i, part in enumerate(parts)
                  if part == "runs" and len(parts) >= i + 4}
    if not candidates:
        raise ExchangeError(f"{source}: holds no runs/<platform>/<run_id>/ files (expected results/runs/... "
                            "or runs/...)")
    shortest = min(len(c) for c in candidates)
    roots = sorted(c for c in candidates if len(c) == shortest)
    if len(roots) > 1:
        shown = ", ".join("/".join(r) or "." for r in roots)
        raise ExchangeError(f"{source}: holds several results folders ({shown}); import them one at a time")
    return roots[0]


def _kind(rel: tuple[str, ...]) -> str:
    """What a file (its path relative to the results root) is to an import: ``"manifest"``; ``"run"``, a run
    file (:data:`utae.rundir.paths.RUN_FILES`), staged; ``"report"``, a run's HTML report, never copied (reports
    are rendered here from the run's files); ``"local"``, a file that stays on its machine
    (:func:`utae.rundir.paths.is_local_file`: checkpoint, notebook, lock, ``tensorboard/``...), ignored;
    ``"unknown"``, any other file in a run folder: its run is refused; ``"other"``, study-level files, ignored."""
    if rel == (MANIFEST_NAME,):
        return "manifest"
    if len(rel) >= 4 and rel[0] == "runs":
        if any(is_local_file(part) for part in rel[3:]):
            return "local"
        return "run" if len(rel) == 4 and is_run_file(rel[3]) else "unknown"
    if len(rel) == 3 and rel[0] == "reports" and rel[2].endswith(".html"):
        return "report"
    return "other"


@dataclasses.dataclass
class Staged:
    """A source staged for import (:func:`stage_archive`, :func:`stage_folder`).

    Attributes:
        root: the staged results folder (``runs/<platform>/<run_id>/<file>``, ``MANIFEST.json``).
        manifest: the source's manifest (:func:`parse_manifest`), or None.
        refused: ``{(platform, run_id): reason}`` of the runs refused before anything of theirs was written (a
            file that is not a run file, or not listed in the manifest); they are not staged.
        notes: what was left out (files that stay on their machine, run reports, study-level files).
    """

    root: Path
    manifest: dict[str, Any] | None
    refused: dict[tuple[str, str], str]
    notes: list[str]


def _plan(entries: Sequence[tuple[tuple[str, ...], int]], source: PathLike, max_bytes: int
          ) -> tuple[tuple[str, ...], list[tuple[str, ...]], dict[tuple[str, str], list[str]], dict[str, int]]:
    """Check the files of a source by name and size before anything is written: ``entries`` are
    ``(path parts, size in bytes)``. Returns ``(root, files to stage (relative to the root), unknown files by
    run, counts of the files left out by kind)``.

    Raises:
        ExchangeError: naming the file and the limit: a run file over its :data:`utae.rundir.paths.FILE_LIMITS`,
            a manifest or report over its limit, the files over ``max_bytes`` in all.
    """
    root = _find_root([parts for parts, _ in entries], source)
    total = 0
    staged: list[tuple[str, ...]] = []
    unknown: dict[tuple[str, str], list[str]] = {}
    left_out: dict[str, int] = {}
    for parts, size in entries:
        name = "/".join(parts)
        total += size
        if total > max_bytes:
            raise ExchangeError(f"{source}: its files hold more than {human_bytes(max_bytes)} in all (at {name!r}), "
                                "the limit of an import; refused (nothing was extracted)")
        if parts[:len(root)] != root:
            left_out["other"] = left_out.get("other", 0) + 1
            continue
        rel = parts[len(root):]
        kind = _kind(rel)
        if kind == "run":
            try:
                check_file_size(rel[3], size, f"{source}: {name!r}")
            except RunFolderError as exc:
                raise ExchangeError(f"{exc} (nothing was extracted)") from None
            staged.append(rel)
        elif kind == "manifest":
            if size > MAX_MANIFEST_BYTES:
                raise ExchangeError(f"{source}: {name!r}: {human_bytes(size)}, over the limit of "
                                    f"{human_bytes(MAX_MANIFEST_BYTES)} for {MANIFEST_NAME} (nothing was extracted)")
            staged.append(rel)
        elif kind == "unknown":
            unknown.setdefault((rel[1], rel[2]), []).append("/".join(rel))
        else:
            left_out[kind] = left_out.get(kind, 0) + 1
    return root, staged, unknown, left_out


def _refusals(staged: Sequence[tuple[str, ...]], unknown: Mapping[tuple[str, str], list[str]],
              manifest: Mapping[str, Any] | None) -> dict[tuple[str, str], str]:
    """The runs refused before extraction: a file that is not a run file, a run file not listed in the
    manifest (added after the export)."""
    refused = {run: (f"{files[0]}: not a run-folder file (a run folder holds {', '.join(RUN_FILES)}); refused "
                     "before extraction") for run, files in unknown.items()}
    if manifest is not None:
        top = str(manifest.get("root") or ARCHIVE_ROOT)
        for rel in staged:
            key = f"{top}/{'/'.join(rel)}"
            if rel[0] == "runs" and key not in manifest["files"]:
                refused.setdefault((rel[1], rel[2]), f"{key}: not listed in {MANIFEST_NAME} (added after the "
                                                     "export); refused before extraction")
    return refused


def _notes(left_out: Mapping[str, int], source: PathLike) -> list[str]:
    words = {"report": "run report(s) not copied (each imported run's report is rendered here from its files)",
             "local": "file(s) that stay on their machine (checkpoints, notebooks, locks, tensorboard/) ignored",
             "other": "study-level file(s) outside runs/ ignored (the study's reports and tables are remade here)"}
    return [f"{source}: {n} {words[kind]}" for kind, n in sorted(left_out.items()) if n]


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def _archive_headers(tar: tarfile.TarFile, archive: Path, max_bytes: int) -> list[tarfile.TarInfo]:
    """Every member of ``tar``, read header by header (an oversized member is never read): each safe
    (:func:`_check_member`), at most :data:`MAX_MEMBERS`, each file at most :data:`MAX_MEMBER_BYTES` and all at
    most ``max_bytes``."""
    members: list[tarfile.TarInfo] = []
    declared = 0
    try:
        while (member := tar.next()) is not None:  # header by header: an oversized member is never read
            _check_member(archive, member)
            if len(members) >= MAX_MEMBERS:
                raise ExchangeError(f"{archive}: more than {MAX_MEMBERS} members; refused (nothing was "
                                    "extracted)")
            if member.isfile():
                declared += member.size
                if member.size > MAX_MEMBER_BYTES:
                    raise ExchangeError(f"{archive}: member {member.name!r} declares {human_bytes(member.size)}"
                                        f", over the limit of {human_bytes(MAX_MEMBER_BYTES)} a member; refused "
                                        "(nothing was extracted)")
                if declared > max_bytes:
                    raise ExchangeError(f"{archive}: its members hold more than {human_bytes(max_bytes)} in all "
                                        f"(at {member.name!r}), the limit of an import; refused (nothing was "
                                        "extracted)")
            members.append(member)
    except _TAR_ERRORS as exc:
        raise ExchangeError(f"{archive}: corrupt tar archive ({exc})") from exc
    return members


def _archive_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo | None, archive: Path) -> dict[str, Any] | None:
    """The archive's manifest (:func:`parse_manifest`) from its ``member``; None without one."""
    if member is None:
        return None
    try:
        handle = tar.extractfile(member)
        data = handle.read(MAX_MANIFEST_BYTES + 1) if handle is not None else b""
    except _TAR_ERRORS as exc:
        raise ExchangeError(f"{archive}: cannot read {MANIFEST_NAME} ({exc})") from exc
    return parse_manifest(data, f"{archive}: {MANIFEST_NAME}")


def stage_archive(archive: Path, stage: Path, max_bytes: int = MAX_IMPORT_BYTES) -> Staged:
    """Check every member of ``archive`` from its header, then extract the run files of the runs that pass under
    ``stage``.

    Before anything is extracted: every member is safe (:func:`_check_member`), at most :data:`MAX_MEMBERS`,
    each file at most :data:`MAX_MEMBER_BYTES` and all of them at most ``max_bytes`` (the sizes their headers
    declare, so that a small archive that would expand to gigabytes is refused unread), each run file within its
    :data:`utae.rundir.paths.FILE_LIMITS`; a run holding another file, or a run file the manifest does not list, is
    refused. Only run files (:data:`utae.rundir.paths.RUN_FILES`) and the manifest are extracted.

    Raises:
        ExchangeError: naming the archive, the member and the limit; nothing was extracted then.
    """
    try:
        tar = tarfile.open(archive, "r:*")
    except _TAR_ERRORS as exc:
        raise ExchangeError(f"{archive}: not a readable tar archive ({exc})") from exc
    with tar:
        members = _archive_headers(tar, archive, max_bytes)
        files = [m for m in members if m.isfile()]
        parts = [PurePosixPath(m.name).parts for m in files]
        root, staged, unknown, left_out = _plan([(p, m.size) for p, m in zip(parts, files)], archive, max_bytes)
        by_rel = {p[len(root):]: m for p, m in zip(parts, files) if p[:len(root)] == root}
        manifest = _archive_manifest(tar, by_rel.get((MANIFEST_NAME,)), archive)
        refused = _refusals(staged, unknown, manifest)
        selected = [by_rel[rel] for rel in staged if rel[0] != "runs" or (rel[1], rel[2]) not in refused]
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.11.4+ / 3.10.12+
        try:
            tar.extractall(stage, members=selected, **extra)
        except (tarfile.FilterError if hasattr(tarfile, "FilterError") else tarfile.TarError) as exc:
            raise ExchangeError(f"{archive}: refused by the safe-extraction filter ({exc})") from exc
        except _TAR_ERRORS as exc:
            raise ExchangeError(f"{archive}: cannot extract ({exc})") from exc
    return Staged(stage.joinpath(*root), manifest, refused, _notes(left_out, archive))


def stage_folder(folder: Path, stage: Path, max_bytes: int = MAX_IMPORT_BYTES) -> Staged:
    """Copy the run files of a results folder (or of a folder holding ``results/``) under ``stage``, checked by
    name and size (as :func:`stage_archive`) before anything is copied. Links and special files are refused."""
    if (folder / "runs").is_dir():
        root = folder
    elif (folder / ARCHIVE_ROOT / "runs").is_dir():
        root = folder / ARCHIVE_ROOT
    else:
        raise ExchangeError(f"{folder}: holds neither runs/ nor results/runs/ (not a results folder)")
    entries: list[tuple[tuple[str, ...], int]] = []
    for top in ("runs", "reports"):
        base = root / top
        if not base.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(base, followlinks=False):
            for name in dirnames + filenames:
                path = Path(dirpath, name)
                if path.is_symlink():
                    raise ExchangeError(f"{path}: a link in the source folder; results hold plain files only "
                                        "(nothing was imported)")
            dirnames[:] = [d for d in dirnames if not is_local_file(d)]  # tensorboard/, hidden: never read
            for name in filenames:
                path = Path(dirpath, name)
                if not path.is_file():
                    raise ExchangeError(f"{path}: a device, pipe or other special file; refused (nothing was imported)")
                entries.append((path.relative_to(root).parts, path.stat().st_size))
            if len(entries) > MAX_MEMBERS:
                raise ExchangeError(f"{folder}: more than {MAX_MEMBERS} files; refused (nothing was imported)")
    manifest_file = root / MANIFEST_NAME
    if manifest_file.is_file():
        entries.insert(0, ((MANIFEST_NAME,), manifest_file.stat().st_size))
    _, staged, unknown, left_out = _plan(entries, folder, max_bytes)
    manifest = None
    if manifest_file.is_file():
        manifest = parse_manifest(manifest_file.read_bytes()[:MAX_MANIFEST_BYTES + 1], f"{folder}: {MANIFEST_NAME}")
    refused = _refusals(staged, unknown, manifest)
    staged_root = stage / ARCHIVE_ROOT
    for rel in staged:
        if rel[0] == "runs" and (rel[1], rel[2]) in refused:
            continue
        dest = staged_root.joinpath(*rel)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root.joinpath(*rel), dest)
    return Staged(staged_root, manifest, refused, _notes(left_out, folder))


def parse_manifest(data: bytes, shown: str) -> dict[str, Any]:
    """A ``MANIFEST.json`` from its bytes, its ``files`` checked (``{member: sha256 hex}``).

    Raises:
        ExchangeError: naming ``shown``: corrupt JSON, not an object, a bad ``files`` field.
    """
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ExchangeError(f"{shown}: corrupt JSON ({exc})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) and _SHA256_RE.fullmatch(v)
                                              for k, v in files.items()):
        raise ExchangeError(f"{shown} field 'files': expected {{member: sha256 hex}}")
    return manifest
