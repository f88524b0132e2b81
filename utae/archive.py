"""The exchange archive: one ``.tar.gz`` of a machine's finished runs, written by :func:`export_runs` and read back
safely by :func:`stage_archive` / :func:`stage_folder` (for :mod:`utae.merge`).

Member names are ``results/runs/<platform>/<run_id>/<file>`` and ``results/reports/<platform>/<run_id>.html``,
whatever the results folder is called, so an archive unpacks into any study. Checkpoints, executed notebooks, lock
and temporary files are left out (:func:`is_excluded`). ``results/MANIFEST.json`` records the SHA-256 of every
other member, the package version and git commit, the export time (UTC), the sweep (name and file text, when
given) and each platform's machine (``platform.json`` fingerprint).

Reading. Archives are checked member by member before anything is extracted (no absolute path, no ``..``, no
link, no device: an :class:`ExchangeError` names the member), then extracted with ``tarfile``'s ``"data"`` filter
into a staging folder. Archives written before manifests existed (``runs/...`` at the top, no ``MANIFEST.json``)
are accepted; only the hash check is then impossible.
"""

from __future__ import annotations

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

from utae.atomic import atomic_write_bytes, read_json
from utae.sweepfile import REPO_ROOT, SweepError, load_sweep
from utae.runfolder import is_finished, report_path

__all__ = [
    "ExchangeError",
    "ARCHIVE_ROOT",
    "MANIFEST_NAME",
    "is_excluded",
    "subdirs",
    "export_runs",
    "stage_archive",
    "stage_folder",
    "read_manifest",
    "TAR_SUFFIXES",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: The top folder of an exported archive: members are ``results/runs/...``, ``results/reports/...``.
ARCHIVE_ROOT = "results"
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = 1
_EXCLUDED_NAMES = frozenset({"checkpoint.pt", "run.ipynb", "tensorboard"})  # tensorboard/: live curves
_EXCLUDED_SUFFIXES = (".tmp", ".partial.ipynb")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class ExchangeError(ValueError):
    """An archive, folder or option that cannot be used at all; the message names the file, member or field."""


def is_excluded(name: str) -> bool:
    """Whether a file of a run directory stays on its machine: ``checkpoint.pt``, ``run.ipynb``, the
    ``tensorboard`` folder, ``.lock`` and other hidden files, ``*.tmp``, ``*.partial.ipynb``."""
    return name in _EXCLUDED_NAMES or name.startswith(".") or name.endswith(_EXCLUDED_SUFFIXES)


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
    """The sweep of an export, read by the one sweep reader (:func:`utae.sweepfile.load_sweep`): its name, file
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
    from utae.platform import describe_record, record_fingerprint  # imports torch: only when exporting

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
    (``{member: sha256}``). The archive is written atomically (:func:`utae.atomic.atomic_write_bytes`).

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
    if not runs_root.is_dir():
        raise ExchangeError(f"{runs_root}: no such folder, nothing to export")
    available = [p.name for p in subdirs(runs_root)]
    chosen = available if platforms is None else list(dict.fromkeys(platforms))
    unknown = [p for p in chosen if p not in available]
    if unknown:
        raise ExchangeError(f"{runs_root}: no platform folder {', '.join(map(repr, unknown))}; "
                            f"platforms: {', '.join(available) or 'none'}")
    out = Path(output)
    if not out.name.endswith((".tar.gz", ".tgz")):
        out = out.with_name(out.name + ".tar.gz")
    meta_sweep = _sweep_meta(sweep)

    members: list[tuple[str, bytes, float]] = []  # (member name, bytes, mtime)
    meta_platforms: dict[str, Any] = {}
    for plat in chosen:
        run_ids: list[str] = []
        machines: dict[str, dict[str, Any]] = {}
        for run_dir in subdirs(runs_root / plat):
            if not is_finished(run_dir):
                log.info(f"[export] {plat}/{run_dir.name}: unfinished (no metrics.json), left out")
                continue
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
            run_ids.append(run_dir.name)
            record_file = run_dir / "platform.json"
            record = read_json(record_file) if record_file.is_file() else {}
            fingerprint, machine = _identity(record if isinstance(record, Mapping) else {})
            entry = machines.setdefault(f"{fingerprint}|{machine}",
                                        {"fingerprint": fingerprint, "machine": machine, "runs": []})
            entry["runs"].append(run_dir.name)
        if run_ids:
            meta_platforms[plat] = {"runs": run_ids, "machines": list(machines.values())}
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
    atomic_write_bytes(out, buffer.getvalue())
    n_runs = sum(len(p["runs"]) for p in meta_platforms.values())
    log.info(f"[export] {n_runs} run(s) of {', '.join(meta_platforms)} ({len(members)} files) -> {out}")
    return out


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


def _wanted(rel: tuple[str, ...]) -> bool:
    """Whether a path (relative to the results root) is imported: the manifest, run files, run reports."""
    if rel == (MANIFEST_NAME,):
        return True
    if len(rel) >= 4 and rel[0] == "runs":
        return not any(is_excluded(part) for part in rel[3:])
    return len(rel) == 3 and rel[0] == "reports" and rel[2].endswith(".html")


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def stage_archive(archive: Path, stage: Path) -> Path:
    """Check every member of ``archive``, extract the wanted ones under ``stage``; returns the results root."""
    try:
        tar = tarfile.open(archive, "r:*")
    except _TAR_ERRORS as exc:
        raise ExchangeError(f"{archive}: not a readable tar archive ({exc})") from exc
    with tar:
        try:
            members = tar.getmembers()
        except _TAR_ERRORS as exc:
            raise ExchangeError(f"{archive}: corrupt tar archive ({exc})") from exc
        for member in members:
            _check_member(archive, member)
        parts = [PurePosixPath(m.name).parts for m in members if m.isfile()]
        root = _find_root(parts, archive)
        selected = [m for m, p in zip([m for m in members if m.isfile()], parts)
                    if p[:len(root)] == root and _wanted(p[len(root):])]
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.11.4+ / 3.10.12+
        try:
            tar.extractall(stage, members=selected, **extra)
        except (tarfile.FilterError if hasattr(tarfile, "FilterError") else tarfile.TarError) as exc:
            raise ExchangeError(f"{archive}: refused by the safe-extraction filter ({exc})") from exc
        except _TAR_ERRORS as exc:
            raise ExchangeError(f"{archive}: cannot extract ({exc})") from exc
    return stage.joinpath(*root)


def stage_folder(folder: Path, stage: Path) -> Path:
    """Copy the wanted files of a results folder (or of a folder holding ``results/``) under ``stage``."""
    if (folder / "runs").is_dir():
        root = folder
    elif (folder / ARCHIVE_ROOT / "runs").is_dir():
        root = folder / ARCHIVE_ROOT
    else:
        raise ExchangeError(f"{folder}: holds neither runs/ nor results/runs/ (not a results folder)")
    files: list[Path] = []
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
            for name in filenames:
                path = Path(dirpath, name)
                if not path.is_file():
                    raise ExchangeError(f"{path}: a device, pipe or other special file; refused (nothing was imported)")
                if _wanted(path.relative_to(root).parts):
                    files.append(path)
    if (root / MANIFEST_NAME).is_file():
        files.append(root / MANIFEST_NAME)
    staged_root = stage / ARCHIVE_ROOT
    for path in files:
        dest = staged_root / path.relative_to(root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    return staged_root


def read_manifest(root: Path, shown: str) -> dict[str, Any] | None:
    """The staged ``MANIFEST.json`` (None when there is none), its ``files`` checked."""
    file = root / MANIFEST_NAME
    if not file.is_file():
        return None
    try:
        manifest = read_json(file)
    except ValueError as exc:
        raise ExchangeError(str(exc).replace(str(file), f"{shown}: {MANIFEST_NAME}")) from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) and _SHA256_RE.fullmatch(v)
                                              for k, v in files.items()):
        raise ExchangeError(f"{shown}: {MANIFEST_NAME} field 'files': expected {{member: sha256 hex}}")
    return manifest

