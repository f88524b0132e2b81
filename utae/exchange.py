"""Many machines, one study: moving runs between machines, and checking that this machine reproduces them.

Three operations, each on one results folder ``R`` (``R/runs/<platform>/<run_id>/``, ``R/reports/<platform>/``):

* :func:`export_runs` packs this machine's finished runs (all platforms of ``R``, or the chosen ones) and their
  HTML reports into one ``.tar.gz``. Member names are ``results/runs/<platform>/<run_id>/<file>`` and
  ``results/reports/<platform>/<run_id>.html``, whatever ``R`` is called, so an archive unpacks into any study.
  Checkpoints, executed notebooks, lock and temporary files are left out. ``results/MANIFEST.json`` records
  the SHA-256 of every other member, the package version and git commit, the export time (UTC), the sweep
  (name and file text, when given) and each platform's machine (``platform.json`` fingerprint).
* :func:`import_runs` brings an archive (``.tar.gz``, ``.tgz``, ``.tar``) or a folder (a results folder, or a
  folder holding ``results/``) into ``R``. Archives are checked member by member before anything is
  extracted (no absolute path, no ``..``, no link, no device: an :class:`ExchangeError` names the member),
  then extracted with ``tarfile``'s ``"data"`` filter into a temporary folder beside ``R`` (never in ``R``).
  Every run is validated (complete files, JSON, config fields, metric ranges, the confusion matrix, the
  manifest hashes), compared with what ``R`` holds (same platform folder, other machine: refused; same run,
  same content: skipped; same run, other content: refused, never overwritten), then moved into place with
  one ``os.replace`` of its directory. Archives written before manifests existed (``runs/...`` at the top,
  no ``MANIFEST.json``) are accepted; only the hash check is then impossible.
* :func:`verify` reruns points of a sweep on this machine into a scratch results folder and compares every
  metric with the committed runs of the same points: equal fingerprints must give identical numbers; for
  other machines it reports the paired differences (this machine minus committed).

Exit statuses of the command line (:func:`run_command`): 0 success; 1 ``import`` refused at least one run, or
``verify`` found a same-machine difference (or had nothing to compare); 2 an error (bad archive, unsafe member,
unknown platform or point...), printed on stderr.

Wiring into ``python -m utae.sweep``: ``add_commands(sub)`` after the other sub-commands, and in ``main``::

    if getattr(args, "exchange_command", None):
        return run_command(args)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from utae.checks import is_int, is_number
from utae.config import REPO_ROOT, HARMLESS_FIELDS, SweepError, run_config_fields
from utae.results import atomic_write_bytes, read_json, report_path, run_path

__all__ = [
    "ExchangeError",
    "ImportReport",
    "ARCHIVE_ROOT",
    "MANIFEST_NAME",
    "REQUIRED_FILES",
    "IDENTITY_FILES",
    "VERIFY_COLUMNS",
    "is_excluded",
    "export_runs",
    "import_runs",
    "records_conflict",
    "metric_values",
    "verify",
    "verify_failures",
    "add_commands",
    "run_command",
]

PathLike = str | os.PathLike[str]
Log = Callable[[str], Any]

#: The top folder of an exported archive: members are ``results/runs/...``, ``results/reports/...``.
ARCHIVE_ROOT = "results"
MANIFEST_NAME = "MANIFEST.json"
MANIFEST_FORMAT = 1
#: Files every finished run has (``predictions.npz`` is optional).
REQUIRED_FILES: tuple[str, ...] = ("config.json", "platform.json", "metrics.json", "history.csv", "confusion.npy")
OPTIONAL_FILES: tuple[str, ...] = ("predictions.npz",)
#: Two runs with equal hashes of these files are the same run (``platform.json`` holds thread counts, OS
#: strings... that differ between two sessions of one machine).
IDENTITY_FILES: tuple[str, ...] = ("config.json", "metrics.json", "confusion.npy", "history.csv")
#: Fields compared when a ``platform.json`` predates fingerprints (see :func:`records_conflict`).
LEGACY_IDENTITY_FIELDS: tuple[str, ...] = ("device_name", "cpu_model", "torch_version")
#: Columns of the frame :func:`verify` returns.
VERIFY_COLUMNS: tuple[str, ...] = ("platform", "run_id", "metric", "committed", "here", "diff", "same_machine",
                                   "identical")
_EXCLUDED_NAMES = frozenset({"checkpoint.pt", "run.ipynb"})
_EXCLUDED_SUFFIXES = (".tmp", ".partial.ipynb")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar")


class ExchangeError(ValueError):
    """An archive, folder or option that cannot be used at all; the message names the file, member or field."""


class _Refused(Exception):
    """One run that is not imported; the message says why (and names the file)."""


def is_excluded(name: str) -> bool:
    """Whether a file of a run directory stays on its machine: ``checkpoint.pt``, ``run.ipynb``, ``.lock`` and
    other hidden files, ``*.tmp``, ``*.partial.ipynb``."""
    return name in _EXCLUDED_NAMES or name.startswith(".") or name.endswith(_EXCLUDED_SUFFIXES)


def _sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _subdirs(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))


# --------------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------------


def _package_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

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
    """The sweep of an export, read by the one sweep reader (:func:`utae.config.load_sweep`): its name, file
    name and text."""
    if sweep is None:
        return None
    from utae.config import load_sweep

    path = Path(sweep)
    try:
        name = load_sweep(path, check_run_config=False).name
    except SweepError as exc:
        raise ExchangeError(str(exc)) from None
    return {"name": name, "file": path.name, "text": path.read_text(encoding="utf-8")}


def _identity(record: Mapping[str, Any]) -> tuple[str | None, str]:
    """``(fingerprint or None, one-line description)`` of a ``platform.json`` dict."""
    from utae.platform import describe_record, record_fingerprint

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
    log: Log | None = print,
) -> Path:
    """Write the finished runs of ``results`` (all platforms, or ``platforms``) and their reports to a ``.tar.gz``.

    Members: ``results/MANIFEST.json`` first, then ``results/runs/<platform>/<run_id>/<file>`` for every file
    of a finished run (one with ``metrics.json``) except those of :func:`is_excluded`, then
    ``results/reports/<platform>/<run_id>.html`` where present. Owners are anonymous (uid 0, no user name).
    The manifest holds ``format``, ``created_utc``, ``package`` (``name``, ``version``, ``git_commit``),
    ``sweep`` (``name``, ``file``, ``text``; None without ``sweep``), ``platforms``
    (``{platform: {"runs": [...], "machines": [{"fingerprint", "machine", "runs"}]}}``) and ``files``
    (``{member: sha256}``). The archive is written atomically (:func:`utae.results.atomic_write_bytes`).

    Args:
        output: the archive; ``.tar.gz`` is appended when it ends in neither ``.tar.gz`` nor ``.tgz``.
        sweep: the sweep file of the study, recorded in the manifest.

    Returns:
        The archive's path.

    Raises:
        ExchangeError: no ``runs`` folder, an unknown platform (the known ones are listed), a link in a run
            directory, or nothing finished to export.
    """
    say = log or (lambda _msg: None)
    root = Path(results)
    runs_root = root / "runs"
    if not runs_root.is_dir():
        raise ExchangeError(f"{runs_root}: no such folder, nothing to export")
    available = [p.name for p in _subdirs(runs_root)]
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
        for run_dir in _subdirs(runs_root / plat):
            if not (run_dir / "metrics.json").is_file():
                say(f"[export] {plat}/{run_dir.name}: unfinished (no metrics.json), left out")
                continue
            for file in sorted(run_dir.iterdir()):
                if is_excluded(file.name):
                    continue
                if file.is_symlink():
                    raise ExchangeError(f"{file}: a link in a run directory; results hold plain files only")
                if not file.is_file():
                    say(f"[export] {file}: not a plain file, left out")
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
    say(f"[export] {n_runs} run(s) of {', '.join(meta_platforms)} ({len(members)} files) -> {out}")
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
        return not is_excluded(rel[-1])
    return len(rel) == 3 and rel[0] == "reports" and rel[2].endswith(".html")


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def _stage_archive(archive: Path, stage: Path) -> Path:
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


def _stage_folder(folder: Path, stage: Path) -> Path:
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


def _read_manifest(root: Path, shown: str) -> dict[str, Any] | None:
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


# --------------------------------------------------------------------------------------------------
# Import: validation of one run
# --------------------------------------------------------------------------------------------------


def _read_json_shown(file: Path, shown: str) -> Any:
    try:
        return read_json(file)
    except ValueError as exc:
        raise _Refused(str(exc).replace(str(file), shown)) from None


def _check_score(value: Any, where: str) -> None:
    """A fraction in [0, 1], or None/NaN (undefined)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return
    if not is_number(value) or not 0.0 <= float(value) <= 1.0:
        raise _Refused(f"{where}: expected a fraction in [0, 1] (or null), got {value!r}")


def _check_section(section: Any, where: str) -> None:
    if not isinstance(section, dict):
        raise _Refused(f"{where}: expected a JSON object, got {type(section).__name__}")
    for key, value in section.items():
        if key == "loss":
            if value is not None and not (is_number(value) and (math.isnan(value) or 0.0 <= value < math.inf)):
                raise _Refused(f"{where}.loss: expected a number >= 0 (or null), got {value!r}")
        elif key == "iou":
            if not isinstance(value, list):
                raise _Refused(f"{where}.iou: expected a list, got {type(value).__name__}")
            for i, v in enumerate(value):
                _check_score(v, f"{where}.iou[{i}]")
        elif key in ("oa", "miou") or key.startswith(("macro_", "micro_")):
            _check_score(value, f"{where}.{key}")
    for key in ("oa", "miou"):
        if key not in section:
            raise _Refused(f"{where}: lacks {key!r}")


def _check_metrics(metrics: Any, config: Mapping[str, Any], run_id: str, shown: str) -> None:
    if not isinstance(metrics, dict):
        raise _Refused(f"{shown}: expected a JSON object, got {type(metrics).__name__}")
    if metrics.get("run_id") not in (None, run_id):
        raise _Refused(f"{shown}: run_id {metrics['run_id']!r}, but the folder is {run_id!r}")
    best, done = metrics.get("best_epoch"), metrics.get("epochs_completed")
    for key, value in (("best_epoch", best), ("epochs_completed", done)):
        if not is_int(value) or value < 1:
            raise _Refused(f"{shown}: {key} must be an int >= 1, got {value!r}")
    if best > done:
        raise _Refused(f"{shown}: best_epoch {best} > epochs_completed {done}")
    epochs = config.get("epochs")
    if is_int(epochs) and done > epochs:
        raise _Refused(f"{shown}: epochs_completed {done} > the config's epochs {epochs}")
    for key in ("train", "val", "test"):
        if key not in metrics:
            raise _Refused(f"{shown}: lacks {key!r}")
        _check_section(metrics[key], f"{shown}: {key}")
    curve = metrics.get("test_noise", [])
    if not isinstance(curve, list):
        raise _Refused(f"{shown}: test_noise: expected a list, got {type(curve).__name__}")
    for i, entry in enumerate(curve):
        where = f"{shown}: test_noise[{i}]"
        if not isinstance(entry, dict):
            raise _Refused(f"{where}: expected a JSON object, got {type(entry).__name__}")
        std = entry.get("std")
        if not is_number(std) or not math.isfinite(std) or std < 0:
            raise _Refused(f"{where}.std: expected a number >= 0, got {std!r}")
        _check_section(entry, where)


def _check_config(config: Any, run_id: str, shown: str, existing_dir: Path) -> None:
    """Every field a RunConfig field, and the values valid (``dataset_root``, a path of another machine, is only
    checked to be a non-empty string)."""
    from utae.config import RunConfig

    if not isinstance(config, dict):
        raise _Refused(f"{shown}: expected a JSON object, got {type(config).__name__}")
    known = run_config_fields()
    unknown = sorted(set(config) - set(known))
    if unknown:
        raise _Refused(f"{shown}: unknown RunConfig field(s) {unknown} (written by another version of utae?); "
                       f"known fields: {', '.join(sorted(known))}")
    root = config.get("dataset_root")
    if not isinstance(root, str) or not root.strip():
        raise _Refused(f"{shown}: dataset_root must be a non-empty path, got {root!r}")
    try:
        RunConfig.from_dict({**config, "dataset_root": str(existing_dir)})
    except (TypeError, ValueError) as exc:
        raise _Refused(f"{shown}: {exc}") from None
    if config.get("run_id") not in (None, run_id):
        raise _Refused(f"{shown}: run_id {config['run_id']!r}, but the folder is {run_id!r}")


def _validate_run(run_dir: Path, run_id: str, shown: str) -> dict[str, Any]:
    """Check one staged run directory; returns its ``platform.json`` dict. Raises _Refused naming the file."""
    from utae.classes import N_CLASSES
    from utae.platform import record_fingerprint

    for entry in sorted(run_dir.iterdir()):
        if entry.is_symlink() or not entry.is_file():
            raise _Refused(f"{shown}/{entry.name}: a folder or special file where a run holds plain files only")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise _Refused(f"{shown}: missing {', '.join(missing)} (an unfinished or incomplete run)")
    config = _read_json_shown(run_dir / "config.json", f"{shown}/config.json")
    _check_config(config, run_id, f"{shown}/config.json", run_dir)
    metrics = _read_json_shown(run_dir / "metrics.json", f"{shown}/metrics.json")
    _check_metrics(metrics, config, run_id, f"{shown}/metrics.json")
    record = _read_json_shown(run_dir / "platform.json", f"{shown}/platform.json")
    if not isinstance(record, dict):
        raise _Refused(f"{shown}/platform.json: expected a JSON object, got {type(record).__name__}")
    try:
        record_fingerprint(record)
    except ValueError as exc:
        raise _Refused(f"{shown}/platform.json: {exc}") from None
    try:
        history = pd.read_csv(run_dir / "history.csv")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise _Refused(f"{shown}/history.csv: unreadable CSV ({exc})") from None
    if "epoch" not in history.columns or len(history) == 0:
        raise _Refused(f"{shown}/history.csv: expected an 'epoch' column and one row per epoch")
    try:
        cm = np.load(run_dir / "confusion.npy", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise _Refused(f"{shown}/confusion.npy: not a plain .npy array ({exc})") from None
    if not isinstance(cm, np.ndarray) or cm.shape != (N_CLASSES, N_CLASSES) or cm.dtype.kind not in "iu":
        raise _Refused(f"{shown}/confusion.npy: expected a ({N_CLASSES}, {N_CLASSES}) integer matrix, got "
                       f"{getattr(cm, 'shape', '?')} {getattr(cm, 'dtype', type(cm).__name__)}")
    if (cm < 0).any():
        raise _Refused(f"{shown}/confusion.npy: negative counts")
    predictions = run_dir / "predictions.npz"
    if predictions.is_file():
        try:
            with np.load(predictions, allow_pickle=False) as npz:
                for key in npz.files:
                    npz[key]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise _Refused(f"{shown}/predictions.npz: not a plain .npz archive ({exc})") from None
    return record


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
        if _sha256_file(file) != listed[key]:
            raise _Refused(f"{key}: its SHA-256 differs from {MANIFEST_NAME} (changed after the export)")
    for key in listed:
        if key not in seen and any(key.startswith(f"{top}/{p}") for p in expected_prefixes) \
                and not is_excluded(key.rsplit("/", 1)[-1]):
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
    from utae.platform import same_machine_kind

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
    for run_dir in _subdirs(platform_dir):
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
    taken = {p.name for p in _subdirs(results / "runs")} if (results / "runs").is_dir() else set()
    fingerprint = record.get("fingerprint")
    candidates = [str(record.get("platform_id") or ""), f"{platform}-{fingerprint[:6]}" if isinstance(fingerprint, str)
                  else "", *(f"{platform}-{i}" for i in range(2, 100))]
    for name in candidates:
        if name and name != platform and name not in taken and _NAME_RE.fullmatch(name):
            return name
    return f"{platform}-other"


def _content_differences(staged: Path, dest: Path) -> list[str]:
    """The :data:`IDENTITY_FILES` whose bytes differ between two run directories (a missing one differs)."""
    differ = []
    for name in IDENTITY_FILES:
        a, b = staged / name, dest / name
        if not (a.is_file() and b.is_file()) or _sha256_file(a) != _sha256_file(b):
            differ.append(name)
    return differ


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


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
    _fsync_dir(dest.parent)
    if placed:
        _fsync_dir(dest_report.parent)
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
    log: Log | None = print,
) -> ImportReport:
    """Import the runs of an archive or folder into the results folder ``results`` (see the module docstring).

    For each run ``<platform>/<run_id>`` of the source, in order: the manifest hashes (when there is a
    manifest), the files (:data:`REQUIRED_FILES`, parseable JSON, a valid RunConfig apart from
    ``dataset_root``, metrics in range with ``best_epoch <= epochs_completed``, a ``(20, 20)`` non-negative
    integer ``confusion.npy`` read without pickle), the machine (``results/runs/<platform>`` holding runs of
    another machine, :func:`records_conflict`: refused, with a ``--as`` name to use instead), the
    destination (an identical run, equal :data:`IDENTITY_FILES`: skipped; another run of that id: refused).
    Accepted runs are moved in one rename each, with their report when present (an existing report is kept).

    Args:
        src: a ``.tar.gz``/``.tgz``/``.tar`` archive, a results folder, or a folder holding ``results/``.
        as_platform: the platform folder name to import under (the source must hold one platform).
        dry_run: check and report only; nothing in ``results`` changes.
        log: where the lines about every run go (None: nowhere).

    Returns:
        An :class:`ImportReport`; its ``exit_status`` is 0 when nothing was refused, else 1.

    Raises:
        ExchangeError: a missing or unreadable source, an unsafe archive member (absolute path, ``..``, link,
            device), a corrupt manifest, a bad ``as_platform``; nothing in ``results`` has changed then.
        OSError: an unexpected failure while moving a run: that run is not left half-moved, the runs before
            it are in place, whole.
    """
    say = log or (lambda _msg: None)
    source = Path(src)
    dest_root = Path(results)
    if not source.exists():
        raise ExchangeError(f"{source}: no such archive or folder")
    if as_platform is not None and not _NAME_RE.fullmatch(as_platform):
        raise ExchangeError(f"--as {as_platform!r}: a platform folder name is letters, digits, '.', '_', '+', '-' "
                            "(starting with a letter or digit)")
    if dest_root.exists() and not dest_root.is_dir():
        raise ExchangeError(f"{dest_root}: not a folder")
    report = ImportReport(source=str(source), results=str(dest_root), dry_run=dry_run)
    dest_root.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=dest_root.parent, prefix=f".{dest_root.name}.import-"))
    try:
        if source.is_dir():
            root = _stage_folder(source, stage)
        elif source.name.endswith(_TAR_SUFFIXES) or tarfile.is_tarfile(source):
            root = _stage_archive(source, stage)
        else:
            raise ExchangeError(f"{source}: neither a folder nor a .tar.gz/.tgz/.tar archive")
        manifest = _read_manifest(root, str(source))
        if manifest is None:
            report.notes.append(f"{source} has no {MANIFEST_NAME}: file hashes cannot be checked")
        runs = _staged_runs(root)
        platforms = sorted({p for p, _, _ in runs})
        if as_platform is not None and len(platforms) > 1:
            raise ExchangeError(f"--as {as_platform}: {source} holds several platforms ({', '.join(platforms)}); "
                                "--as renames one")
        seen_runs = {(p, r) for p, r, _ in runs}
        if manifest is not None:
            top = str(manifest.get("root") or ARCHIVE_ROOT)
            listed = {tuple(k.split("/")[2:4]) for k in manifest["files"] if k.startswith(f"{top}/runs/")}
            absent = sorted("/".join(k) for k in listed - seen_runs if len(k) == 2)
            if absent:
                report.notes.append(f"{MANIFEST_NAME} lists run(s) absent from {source}: {', '.join(absent)}")
                for label in absent:
                    plat, run_id = label.split("/")
                    report.refused.append((f"{as_platform or plat}/{run_id}",
                                           f"runs/{label}: listed in {MANIFEST_NAME} but missing from {source}"))
        known: dict[str, dict[str, tuple[dict[str, Any], str]]] = {}
        for plat, run_id, staged in runs:
            _import_one(report, root, manifest, plat, run_id, staged, dest_root, as_platform or plat, dry_run, say,
                        known)
        if report.notes:
            for note in report.notes:
                say(f"[import] note: {note}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    what = "would import" if dry_run else "imported"
    say(f"[import] {source} -> {dest_root}: {len(report.imported)} {what}, {len(report.skipped)} skipped, "
        f"{len(report.refused)} refused")
    return report


def _import_one(report: ImportReport, root: Path, manifest: Mapping[str, Any] | None, plat: str, run_id: str,
                staged: Path, dest_root: Path, dest_plat: str, dry_run: bool, say: Log,
                known: dict[str, dict[str, tuple[dict[str, Any], str]]]) -> None:
    """Check, compare and move one staged run; records the outcome in ``report``. ``known`` caches the
    machine records of each destination platform folder, the runs accepted so far included."""
    from utae.platform import describe_record

    label = f"{dest_plat}/{run_id}"
    shown = f"runs/{plat}/{run_id}"
    staged_report = root / "reports" / plat / f"{run_id}.html"
    staged_report = staged_report if staged_report.is_file() else None
    try:
        if not _NAME_RE.fullmatch(plat) or not _NAME_RE.fullmatch(run_id):
            raise _Refused(f"{shown}: unusual folder name (letters, digits, '.', '_', '+', '-' only)")
        files = sorted(p for p in staged.rglob("*") if p.is_file())
        _check_hashes(manifest, root, files + ([staged_report] if staged_report else []),
                      [f"runs/{plat}/{run_id}/", f"reports/{plat}/{run_id}.html"])
        record = _validate_run(staged, run_id, shown)
        if dest_plat not in known:
            known[dest_plat] = _existing_records(dest_root / "runs" / dest_plat)
        for existing, other_run in known[dest_plat].values():
            if records_conflict(record, existing):
                raise _Refused(
                    f"{dest_root / 'runs' / dest_plat} holds runs of {describe_record(existing)} (e.g. {other_run}), "
                    f"but {shown} was made on {describe_record(record)}: another machine. Import it under its own "
                    f"platform name: --as {_suggest_name(dest_root, dest_plat, record)}")
        dest = run_path(dest_root, dest_plat, run_id)
        dest_report = report_path(dest_root, dest_plat, run_id)
        if dest.exists() or dest.is_symlink():
            differ = _content_differences(staged, dest)
            if differ:
                raise _Refused(f"{dest} already holds another run of that id ({', '.join(differ)} differ); it is never "
                               "overwritten. Remove it first, or import under another platform name with --as NAME")
            report.skipped.append(label)
            added = ""
            if staged_report is not None and not dest_report.exists() and not dry_run:
                _make_dirs(dest_report.parent)
                _place_file(staged_report, dest_report)
                report.reports.append(str(dest_report.relative_to(dest_root)))
                added = "; its missing report added"
            say(f"[import] skipped {label}: identical to the run already in {dest_root}{added}")
            return
        if not dry_run:
            if _move_run(staged, dest, staged_report, dest_report):
                report.reports.append(str(dest_report.relative_to(dest_root)))
            elif staged_report is not None:
                report.notes.append(f"{dest_report}: kept the report already there")
        report.imported.append(label)
        known[dest_plat].setdefault(_identity_key(record), (record, run_id))
        renamed = f" (from {plat})" if dest_plat != plat else ""
        say(f"[import] {'would import' if dry_run else 'imported'} {label}{renamed}")
    except _Refused as exc:
        report.refused.append((label, str(exc)))
        say(f"[import] REFUSED {label}: {exc}")


# --------------------------------------------------------------------------------------------------
# Verify
# --------------------------------------------------------------------------------------------------


def _num(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def metric_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numbers of a ``metrics.json`` dict that a rerun must reproduce, flat and in a fixed order:
    ``test.<key>``, ``val.<key>``, ``train.<key>`` for every scalar (oa, miou, loss, macro/micro P/R/F1),
    ``test_noise[<std>].oa`` / ``.miou`` for every test noise level, and ``best_epoch``. Null is NaN.
    (``timing`` is left out: it measures speed, not results.)"""
    out: dict[str, float] = {}
    for section in ("test", "val", "train"):
        values = metrics.get(section) or {}
        if isinstance(values, Mapping):
            for key, value in values.items():
                if value is None or is_number(value):
                    out[f"{section}.{key}"] = _num(value)
    for entry in metrics.get("test_noise") or []:
        if isinstance(entry, Mapping) and is_number(entry.get("std")):
            for key in ("oa", "miou"):
                out[f"test_noise[{float(entry['std']):g}].{key}"] = _num(entry.get(key))
    out["best_epoch"] = _num(metrics.get("best_epoch"))
    return out


def _normal_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """A config.json dict with RunConfig's defaults for absent fields (older runs), lists for tuples, and
    without the fields that may differ between two runs of one point (``dataset_root``: a path of that
    machine; the :data:`utae.config.HARMLESS_FIELDS`)."""
    full = {**run_config_fields(), **config}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in full.items()
            if k not in HARMLESS_FIELDS and k != "dataset_root"}


def _select_points(sweep: Any, points: int | Sequence[str] | None) -> list[Any]:
    if points is None:
        return list(sweep.points)
    if is_int(points):
        if points < 1:
            raise SweepError(f"points must be >= 1, got {points}")
        return list(sweep.points[:points])
    if isinstance(points, str):
        points = [p for p in points.split(",") if p.strip()]
    return [sweep.point(str(p).strip()) for p in points]


def _committed_threads(records: Sequence[Mapping[str, Any]]) -> int | None:
    threads = {r.get("torch_threads") for r in records}
    if len(threads) == 1:
        (value,) = threads
        return int(value) if is_int(value) and value >= 1 else None
    return None


def verify(
    sweep_path: PathLike,
    results: PathLike,
    *,
    points: int | Sequence[str] | None = None,
    scratch: PathLike | None = None,
    platform: str | None = None,
    threads: int | None = None,
    log: Log | None = print,
) -> pd.DataFrame:
    """Rerun points of a sweep on this machine and compare their metrics with the committed runs.

    Each chosen point runs with :func:`utae.sweep.run_point` into ``<scratch>/runs/<platform>/<run_id>``
    (a finished one there is reused), then every metric of :func:`metric_values` is paired with the committed
    run of that point in every platform folder of ``<results>/runs`` that has it. A committed run whose
    ``platform.json`` fingerprint equals the rerun's (this machine) must give identical numbers; any
    difference is a failure (:func:`verify_failures`). For another machine (or a run without fingerprint) the
    paired differences are reported, with the largest ``|diff|``. A committed run made with another config
    (apart from ``dataset_root`` and the harmless fields) is not compared (a line says so). Points without
    any committed run are not rerun.

    Args:
        points: None (all), the first N points, or run ids (a list, or one comma-separated string).
        scratch: the results folder of the reruns (default: a temporary folder, removed afterwards).
        platform: the platform folder name of the reruns in ``scratch`` (default: this machine's).
        threads: torch threads of the reruns (default: the ``torch_threads`` of the committed runs of this
            machine when they agree, else :func:`utae.sweep.run_point`'s default).

    Returns:
        One row per (committed platform, point, metric): :data:`VERIFY_COLUMNS`, i.e. platform, run_id,
        metric, committed, here, diff (here - committed), same_machine, identical (equal, or both NaN).

    Raises:
        SweepError: an unreadable sweep, an unknown point, a point that fails to run.
        ExchangeError: ``scratch`` is ``results``.
    """
    from utae.config import load_sweep
    from utae.platform import current_fingerprint, record_fingerprint, resolve_device
    from utae.sweep import detect_platform, run_point

    say = log or (lambda _msg: None)
    if scratch is not None and Path(scratch).resolve() == Path(results).resolve():
        raise ExchangeError(f"--scratch {scratch} is the results folder of the committed runs: the reruns need "
                            "a folder of their own (or none: a temporary one)")
    sweep = load_sweep(sweep_path)
    chosen = _select_points(sweep, points)
    committed_root = Path(results) / "runs"
    committed_platforms = [p.name for p in _subdirs(committed_root)] if committed_root.is_dir() else []
    own_scratch = scratch is None
    scratch_dir = Path(tempfile.mkdtemp(prefix="utae-verify-")) if own_scratch else Path(scratch)
    rows: list[dict[str, Any]] = []
    try:
        for point in chosen:
            rid = point.run_id
            pairs = [(p, run_path(results, p, rid)) for p in committed_platforms
                     if (run_path(results, p, rid) / "metrics.json").is_file()]
            if not pairs:
                say(f"[verify] {rid}: no committed run in {committed_root}; not rerun")
                continue
            device = str(point.params.get("device", "auto"))
            try:
                fingerprint_here = current_fingerprint(resolve_device(device))
            except ValueError as exc:
                raise SweepError(f"{sweep.path}: point {rid}: device {device!r}: {exc}") from None
            records = {p: (read_json(d / "platform.json") if (d / "platform.json").is_file() else {}) for p, d in pairs}
            same_records = [r for r in records.values()
                            if isinstance(r, Mapping) and r.get("fingerprint") == fingerprint_here]
            run_threads = threads if threads is not None else _committed_threads(same_records)
            here_platform = platform or detect_platform(device)
            run_point(sweep, rid, results=scratch_dir, platform=here_platform, threads=run_threads, log=say)
            here_dir = run_path(scratch_dir, here_platform, rid)
            here_metrics = metric_values(read_json(here_dir / "metrics.json"))
            here_record = read_json(here_dir / "platform.json")
            fingerprint_ran = record_fingerprint(here_record) or fingerprint_here
            here_config = _normal_config(read_json(here_dir / "config.json"))
            for plat, committed_dir in pairs:
                committed_config = _normal_config(read_json(committed_dir / "config.json"))
                changed = sorted(k for k in set(here_config) | set(committed_config)
                                 if here_config.get(k) != committed_config.get(k))
                if changed:
                    say(f"[verify] {plat}/{rid}: committed with another config ({', '.join(changed)} differ); "
                        "not compared")
                    continue
                record = records[plat]
                same = isinstance(record, Mapping) and record_fingerprint(record) == fingerprint_ran
                committed = metric_values(read_json(committed_dir / "metrics.json"))
                for metric in list(committed) + [m for m in here_metrics if m not in committed]:
                    a, b = committed.get(metric, math.nan), here_metrics.get(metric, math.nan)
                    identical = (math.isnan(a) and math.isnan(b)) or a == b
                    rows.append({"platform": plat, "run_id": rid, "metric": metric, "committed": a, "here": b,
                                 "diff": b - a, "same_machine": bool(same), "identical": bool(identical)})
    finally:
        if own_scratch:
            shutil.rmtree(scratch_dir, ignore_errors=True)
    frame = pd.DataFrame(rows, columns=list(VERIFY_COLUMNS))
    _log_verify(frame, say)
    return frame


def verify_failures(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of a :func:`verify` frame where this machine (same fingerprint) did not reproduce a number."""
    return frame[frame["same_machine"].astype(bool) & ~frame["identical"].astype(bool)]


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _log_verify(frame: pd.DataFrame, say: Log) -> None:
    if frame.empty:
        say("[verify] nothing compared: no committed run of the chosen points")
        return
    for plat, part in frame.groupby("platform", sort=True):
        n_points = part["run_id"].nunique()
        if part["same_machine"].all():
            bad = part[~part["identical"]]
            if bad.empty:
                say(f"[verify] {plat}: same machine, {len(part)} metric(s) of {n_points} point(s) identical")
            else:
                say(f"[verify] {plat}: same machine, {len(bad)} metric(s) DIFFER (must be identical):")
                say(bad[["run_id", "metric", "committed", "here", "diff"]].to_string(index=False, float_format=_fmt))
            continue
        summary = part.assign(abs_diff=part["diff"].abs()).groupby("metric", sort=False).agg(
            mean_diff=("diff", "mean"), max_abs_diff=("abs_diff", "max"), points=("run_id", "nunique"))
        worst = summary["max_abs_diff"].max()
        say(f"[verify] {plat}: another machine; paired differences (this machine - committed) over "
            f"{n_points} point(s), max |diff| {worst:.3g}:")
        say(summary.to_string(float_format=_fmt))


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def add_commands(subparsers: Any) -> None:
    """Add the ``export``, ``import`` and ``verify`` sub-commands to an argparse sub-parsers object."""
    p = subparsers.add_parser("export", help="pack this machine's runs and reports into a .tar.gz with a manifest")
    p.add_argument("--results", default="results", help="the results folder R (default: results)")
    p.add_argument("-o", "--output", default=None,
                   help="the archive (default: <R name>-<platform>.tar.gz, or <R name>.tar.gz for several platforms)")
    p.add_argument("--platform", action="append", default=None, metavar="P",
                   help="export this platform folder only (repeatable, or comma-separated; default: all)")
    p.add_argument("--sweep", default=None, help="the sweep file of the study, recorded in the manifest")
    p.set_defaults(exchange_command="export")
    p = subparsers.add_parser("import", help="import runs from an archive or folder (validated, never overwriting)")
    p.add_argument("source", help="a .tar.gz/.tgz/.tar archive, a results folder, or a folder holding results/")
    p.add_argument("--results", default="results", help="the results folder R (default: results)")
    p.add_argument("--as", dest="as_platform", default=None, metavar="NAME",
                   help="import under this platform folder name (the source must hold one platform)")
    p.add_argument("--dry-run", action="store_true", help="check and report only; change nothing")
    p.set_defaults(exchange_command="import")
    p = subparsers.add_parser("verify", help="rerun points on this machine and compare with the committed runs")
    p.add_argument("sweep")
    p.add_argument("--results", default="results", help="the results folder holding the committed runs")
    p.add_argument("--points", default=None,
                   help="the first N points (a number), or run ids (comma-separated); default: all")
    p.add_argument("--scratch", default=None, help="results folder of the reruns (default: a temporary one)")
    p.add_argument("--platform", default=None, help="platform folder name of the reruns (default: detected)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the reruns (default: as committed)")
    p.set_defaults(exchange_command="verify")


def _platform_list(values: Sequence[str] | None) -> list[str] | None:
    if not values:
        return None
    return [p.strip() for v in values for p in v.split(",") if p.strip()]


def run_command(args: argparse.Namespace) -> int:
    """Run the sub-command that :func:`add_commands` parsed; prints what it does. Returns the exit status:
    0 success; 1 import refused a run, or verify found a same-machine difference or compared nothing;
    2 an error (message on stderr)."""
    command = getattr(args, "exchange_command", None)
    try:
        if command == "export":
            platforms = _platform_list(args.platform)
            output = args.output
            if output is None:
                name = Path(args.results).resolve().name
                output = f"{name}-{platforms[0]}.tar.gz" if platforms and len(platforms) == 1 else f"{name}.tar.gz"
            export_runs(args.results, output, platforms=platforms, sweep=args.sweep)
            return 0
        if command == "import":
            report = import_runs(args.source, args.results, as_platform=args.as_platform, dry_run=args.dry_run)
            return report.exit_status
        if command == "verify":
            points: int | list[str] | None = None
            if args.points is not None:
                text = str(args.points).strip()
                points = int(text) if text.isdigit() else [p.strip() for p in text.split(",") if p.strip()]
            frame = verify(args.sweep, args.results, points=points, scratch=args.scratch, platform=args.platform,
                           threads=args.threads)
            if frame.empty:
                return 1
            return 1 if len(verify_failures(frame)) else 0
        raise ExchangeError(f"unknown command {command!r} (expected export, import or verify)")
    except (ValueError, OSError) as exc:  # ExchangeError, SweepError, a missing or unreadable file
        print(f"error: {exc}", file=sys.stderr)
        return 2
