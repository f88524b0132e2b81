"""Atomic file writers and the JSON reader: a reader never sees half a file, a failed writer loses nothing.

Every writer puts the data in a temporary file in the destination's directory, flushes and fsyncs it, then
``os.replace``-s it onto the destination (atomic on POSIX and Windows): a reader sees the old file or the new one,
never half of one, and a writer that fails (or is killed) midway leaves the previous file intact. Temporary files
are named ``.<name>.<random>.tmp`` and are removed on failure (:func:`remove_stale_temp` removes those of a killed
process).

JSON. :func:`atomic_write_json` writes NaN and +-inf as ``null`` (JSON has no NaN), numpy scalars and arrays and
torch tensors as plain numbers and lists, tuples as lists, paths as strings. :func:`read_json` names the file in
every error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Callable

import numpy as np
import pandas as pd

__all__ = [
    "fsync_dir",
    "remove_stale_temp",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_json",
    "atomic_save_npy",
    "atomic_torch_save",
    "atomic_savez",
    "atomic_write_csv",
    "to_jsonable",
    "read_json",
    "sha256_file",
]

PathLike = str | os.PathLike


def fsync_dir(directory: Path) -> None:
    """Persist a rename on POSIX (best effort: not every OS/filesystem allows opening a directory)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _file_mode() -> int:
    """The mode of a newly created file under the process umask (0644 with the usual umask 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


def _atomic_write(path: PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a binary temp file next to it, then os.replace."""
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600 files; results are ordinary files
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = "the previous version is kept" if dest.exists() else "nothing was written"
            raise OSError(exc.errno, f"{dest}: disk full ({exc.strerror}); {kept}. Free some space and run "
                          "again: the run resumes from its last checkpoint") from exc
        raise
    fsync_dir(dest.parent)
    return dest


def remove_stale_temp(directory: PathLike) -> list[Path]:
    """Delete the temporary files that a killed atomic write left in ``directory`` (``.<name>.<random>.tmp``;
    the file they were to replace is untouched). Call it only while no other process writes there (a run
    holds its directory's lock). Returns the deleted paths."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()
            removed.append(tmp)
    return removed


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Atomically write ``data`` to ``path`` (parents created). Returns the path."""
    return _atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Atomically write ``text`` to ``path`` (parents created). Returns the path."""
    if not isinstance(text, str):
        raise TypeError(f"{path}: text must be a str, got {type(text).__name__}")
    return atomic_write_bytes(path, text.encode(encoding))


def to_jsonable(obj: Any, _where: str = "$") -> Any:
    """A copy of ``obj`` made of JSON types only.

    NaN/inf -> None; numpy scalars -> Python numbers; numpy arrays and torch tensors -> nested lists;
    tuples/sets -> lists; Path -> str; dataclasses -> dicts. Anything else raises TypeError with its location.
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, (int, np.integer)) and not isinstance(obj, np.bool_):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, (float, np.floating)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), _where)
    if type(obj).__module__.startswith("torch") and hasattr(obj, "tolist"):
        return to_jsonable(obj.detach().cpu().tolist(), _where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj), _where)
    if isinstance(obj, dict):
        out: dict[Any, Any] = {}
        for key, value in obj.items():
            if isinstance(key, (np.integer, np.floating, np.bool_)):
                key = key.item()
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise TypeError(f"cannot write a {type(key).__name__} key as JSON at {_where}")
            out[key] = to_jsonable(value, f"{_where}.{key}")
        return out
    if isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj) if isinstance(obj, (set, frozenset)) else obj
        return [to_jsonable(v, f"{_where}[{i}]") for i, v in enumerate(items)]
    raise TypeError(f"cannot write a {type(obj).__name__} as JSON at {_where}")


def atomic_write_json(path: PathLike, obj: Any, indent: int = 2) -> Path:
    """Atomically write ``obj`` as JSON (see :func:`to_jsonable`); a non-serialisable object raises
    TypeError naming the file, and the previous file (if any) stays as it was."""
    try:
        text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{path}: {exc}") from exc
    return atomic_write_text(path, text)


def atomic_save_npy(path: PathLike, arr: Any) -> Path:
    """Atomically save an array as ``.npy`` (no pickling; object arrays are refused)."""
    array = np.asarray(arr)
    return _atomic_write(path, lambda fh: np.save(fh, array, allow_pickle=False))


def atomic_torch_save(path: PathLike, obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj`` (e.g. a checkpoint dict) to ``path``. The bytes are made in memory
    first, so that a failing write (a full disk) is an OSError that names the file."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_savez(path: PathLike, arrays: Mapping[str, Any]) -> Path:
    """Atomically ``np.savez_compressed`` the named arrays to ``path`` (no pickling)."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
    return atomic_write_bytes(path, buffer.getvalue())


def atomic_write_csv(path: PathLike, frame: pd.DataFrame) -> Path:
    """Atomically write a DataFrame as CSV, without the index."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{path}: expected a pandas DataFrame, got {type(frame).__name__}")
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return atomic_write_text(path, buffer.getvalue())


def read_json(path: PathLike) -> Any:
    """Read a JSON file; a missing file raises FileNotFoundError and a corrupt one ValueError, both naming it."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{file}: no such JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{file}: cannot read JSON file ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file}: corrupt JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from exc


def sha256_file(path: PathLike) -> str:
    """The SHA-256 of a file's bytes, as hex (read in 1 MiB blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
