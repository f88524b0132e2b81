"""Reading ``.npy`` and ``.npz`` files with bounded memory (torch-free).

A file read by the tool may come from another machine. Before any array data is read, its header is checked:

* ``.npy``: the magic string and header (numpy's own header parser, no pickle), the declared ``dtype`` (Python
  objects are always refused, other kinds must be in ``kinds``), the declared ``shape`` against an expected one,
  the declared size against ``max_bytes``, and the file size against the declared size (a truncated file is
  refused before it is read);
* ``.npz``: every member's name against an allow-list (``members``), the zip directory's declared uncompressed
  size of each member, then each member's ``.npy`` header as above; only then is any member decompressed, into
  an array of the declared size, read in bounded chunks, so that a zip bomb (a small archive that claims a huge
  array, or whose stream inflates beyond its declared size) costs no more memory than ``max_bytes``.

Expected shapes are tuples whose entries are ints (that exact length), ``None`` (any length) or a string (any
length, the same everywhere the same string appears in one call: ``("N", 32, 32)`` for predictions and
``("N", 32, 32)`` for targets must have the same ``N``). ``shape=None`` accepts any shape.

Every refusal raises :class:`ArrayFileError`, a ``ValueError`` whose one-line message names the file (and
member) and what was expected, e.g.::

    predictions.npz: member 'pred' declares 6.6 GB (shape (50000, 128, 128) int64); expected shape
    (N, 32, 32) and at most 64 MB
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
from numpy.lib import format as npy_format

__all__ = [
    "ArrayFileError",
    "ArrayHeader",
    "Shape",
    "DEFAULT_KINDS",
    "human_bytes",
    "format_shape",
    "read_npy_header",
    "npy_header",
    "check_header",
    "load_npy",
    "load_npz",
]

#: An expected shape: ints are exact, ``None`` is any length, a string is any length shared by its name.
Shape = Sequence[Union[int, str, None]]

#: The dtype kinds accepted by default: bool, signed and unsigned integers, floats.
DEFAULT_KINDS = "biuf"

_MAX_HEADER = 10_000  # numpy's own limit on a .npy header's size (format.read_array_header_*)
_CHUNK = 1 << 22  # 4 MiB: the most that one read of a member's data takes at a time


class ArrayFileError(ValueError):
    """A ``.npy``/``.npz`` file is refused: ``where`` names the file (and member), ``reason`` says why; the
    message is ``f"{where} {reason}"``, e.g. ``"p.npz: member 'pred' declares 3.0 GB (...); expected ..."``."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where} {reason}")
        self.where = where
        self.reason = reason


@dataclass(frozen=True)
class ArrayHeader:
    """What a ``.npy`` header declares: ``shape``, ``dtype``, ``fortran_order``, and ``offset``, the byte at
    which the array data starts."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        """The size of the declared array data in bytes."""
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize

    def describe(self) -> str:
        """``'6.6 GB (shape (50000, 128, 128) int64)'``."""
        return f"{human_bytes(self.nbytes)} (shape {format_shape(self.shape)} {self.dtype})"


def human_bytes(n: int) -> str:
    """A byte count in decimal units: ``'512 B'``, ``'64 MB'``, ``'3.2 GB'``."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            if unit == "B" or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_shape(shape: Shape) -> str:
    """``(N, 32, 32)``, ``(3,)``, ``(*, 4)`` for a ``None`` entry."""
    parts = ["*" if s is None else str(s) for s in shape]
    return "(" + ", ".join(parts) + ("," if len(parts) == 1 else "") + ")"


# --------------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------------


def read_npy_header(fh: BinaryIO, where: str, expected: str = "a numeric .npy array") -> ArrayHeader:
    """The header of the ``.npy`` stream ``fh`` (positioned at its start), read without its data.

    Raises :class:`ArrayFileError` naming ``where`` and ``expected`` (what the stream should hold) when the
    stream is empty, is a ``.npz`` (zip) archive, is not a ``.npy`` stream (a pickle, text, ...), has an
    unreadable header or declares Python objects.
    """
    start = fh.read(6)
    if not start:
        raise ArrayFileError(where, f"is empty (0 bytes); expected {expected}")
    if start.startswith(b"PK"):
        raise ArrayFileError(where, f"is a .npz (zip) archive; expected {expected}")
    if start != npy_format.MAGIC_PREFIX:
        raise ArrayFileError(where, f"is not a .npy array (it starts with {start!r}, not {npy_format.MAGIC_PREFIX!r}); "
                                    f"expected {expected}")
    version = fh.read(2)
    if len(version) < 2:
        raise ArrayFileError(where, f"has a truncated .npy header; expected {expected}")
    major, minor = version[0], version[1]
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0,
               (3, 0): getattr(npy_format, "_read_array_header", None)}
    try:
        if (major, minor) in ((1, 0), (2, 0)):
            shape, fortran, dtype = readers[(major, minor)](fh, max_header_size=_MAX_HEADER)
        elif (major, minor) == (3, 0) and readers[(3, 0)] is not None:
            shape, fortran, dtype = readers[(3, 0)](fh, version=(3, 0), max_header_size=_MAX_HEADER)
        else:
            raise ValueError(f"unsupported .npy format version {major}.{minor}")
    except (ValueError, EOFError, OSError, SyntaxError) as exc:
        text = " ".join(str(exc).split())[:200]
        raise ArrayFileError(where, f"has an unreadable .npy header ({type(exc).__name__}: {text}); "
                                    f"expected {expected}") from None
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise ArrayFileError(where, f"declares dtype {dtype} (Python objects, which only a pickle can hold): "
                                    f"refused; expected {expected}")
    if any(int(s) < 0 for s in shape):
        raise ArrayFileError(where, f"declares the negative shape {format_shape(shape)}")
    try:
        offset = fh.tell()
    except (OSError, AttributeError, io.UnsupportedOperation):
        offset = -1
    return ArrayHeader(tuple(int(s) for s in shape), dtype, bool(fortran), int(offset))


def npy_header(path: str | os.PathLike[str], *, check_size: bool = True,
               expected: str = "a numeric .npy array") -> ArrayHeader:
    """The header of the ``.npy`` file ``path``, read without its data (a few hundred bytes).

    With ``check_size``, a file that holds fewer bytes than its header declares (truncated) is refused (numpy's
    own reader ignores bytes after the array, and so does this check). Raises :class:`ArrayFileError` naming the
    file and ``expected`` (what it should hold); ``FileNotFoundError`` when it is missing.
    """
    where = str(path)
    with open(path, "rb") as fh:
        header = read_npy_header(fh, where, expected)
        if check_size:
            size = os.fstat(fh.fileno()).st_size
            _check_data_size(header, size - header.offset, where, exact=False)
    return header


def _check_data_size(header: ArrayHeader, held: int, where: str, exact: bool = True) -> None:
    """Refuse a file that holds fewer data bytes than ``header`` declares, and with ``exact`` also more."""
    if held < header.nbytes:
        raise ArrayFileError(where, f"is truncated: its header declares {header.describe()} of data, "
                                    f"the file holds {human_bytes(max(held, 0))}")
    if exact and held > header.nbytes:
        raise ArrayFileError(where, f"holds {held - header.nbytes} bytes of trailing data after the array "
                                    f"{header.describe()}; expected the array alone")


def _shape_problem(shape: tuple[int, ...], expected: Shape | None, bound: dict[str, int]) -> bool:
    """True when ``shape`` does not match ``expected``; binds the named wildcards of ``expected`` in ``bound``."""
    if expected is None:
        return False
    if len(shape) != len(expected):
        return True
    new: dict[str, int] = {}
    for have, want in zip(shape, expected):
        if want is None:
            continue
        if isinstance(want, str):
            value = bound.get(want, new.get(want))
            if value is None:
                new[want] = have
            elif value != have:
                return True
        elif have != int(want):
            return True
    bound.update(new)
    return False


def check_header(header: ArrayHeader, where: str, *, shape: Shape | None = None, max_bytes: int | None = None,
                 kinds: str = DEFAULT_KINDS, bound: dict[str, int] | None = None,
                 limits: Mapping[str, int] | None = None) -> None:
    """Refuse ``header`` unless its dtype kind is in ``kinds``, its shape matches ``shape``, the named wildcards
    of ``shape`` are at most their ``limits`` (``{"N": 4}``) and its data takes at most ``max_bytes``. ``bound``
    holds the values of named wildcards already seen (updated on success).

    Raises :class:`ArrayFileError` naming ``where``, the declared size, shape and dtype, and what was expected.
    """
    bound = {} if bound is None else bound
    expected = []
    if shape is not None:
        known = tuple(bound.get(s, s) if isinstance(s, str) else s for s in shape)
        expected.append(f"shape {format_shape(known)}")
    if max_bytes is not None:
        expected.append(f"at most {human_bytes(max_bytes)}")
    kind_names = {"b": "bool", "i": "int", "u": "uint", "f": "float", "c": "complex", "U": "str", "S": "bytes"}
    wrong_kind = header.dtype.kind not in kinds
    if wrong_kind:
        expected.append("dtype " + "/".join(kind_names.get(k, k) for k in kinds))
    if wrong_kind or _shape_problem(header.shape, shape, bound) or (
            max_bytes is not None and header.nbytes > max_bytes):
        raise ArrayFileError(where, f"declares {header.describe()}; expected {' and '.join(expected)}")
    for name, limit in (limits or {}).items():
        if bound.get(name, 0) > limit:
            raise ArrayFileError(where, f"declares {header.describe()}; expected shape {format_shape(shape or ())} "
                                        f"with {name} at most {limit}")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def _read_data(fh: BinaryIO, header: ArrayHeader, where: str) -> np.ndarray:
    """The array data that follows ``header`` in ``fh``, read in chunks of at most 4 MiB into an array of the
    declared size (never more: whatever the stream would still yield is not read)."""
    flat = np.empty(int(np.prod(header.shape, dtype=np.int64)), dtype=header.dtype)
    view = memoryview(flat.view(np.uint8).reshape(-1))
    done = 0
    while done < len(view):
        n = fh.readinto(view[done:done + _CHUNK])
        if not n:
            raise ArrayFileError(where, f"is truncated: its header declares {header.describe()} of data, "
                                        f"the stream ended after {human_bytes(done)}")
        done += n
    if header.fortran_order:
        return flat.reshape(header.shape[::-1]).transpose()
    return flat.reshape(header.shape)


def _expected_array(shape: Shape | None) -> str:
    return "a numeric .npy array" + ("" if shape is None else f" of shape {format_shape(shape)}")


def load_npy(path: str | os.PathLike[str], *, shape: Shape | None = None, max_bytes: int,
             kinds: str = DEFAULT_KINDS) -> np.ndarray:
    """The array of the ``.npy`` file ``path``, loaded only after its header passed :func:`check_header`
    (``shape``, ``max_bytes``, ``kinds``) and the file size matches the declared size.

    Raises :class:`ArrayFileError` naming the file; ``FileNotFoundError`` when it is missing.
    """
    where = str(path)
    with open(path, "rb") as fh:
        header = read_npy_header(fh, where, _expected_array(shape))
        check_header(header, where, shape=shape, max_bytes=max_bytes, kinds=kinds)
        _check_data_size(header, os.fstat(fh.fileno()).st_size - header.offset, where)
        return _read_data(fh, header, where)


def load_npz(path: str | os.PathLike[str], members: Mapping[str, Shape | None], *, max_bytes: int,
             max_total_bytes: int | None = None, optional: Collection[str] = (),
             kinds: str = DEFAULT_KINDS, limits: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """The arrays of the ``.npz`` archive ``path``, by member name (without ``.npy``).

    ``members`` maps each allowed member to its expected shape (see the module docstring; named wildcards are
    shared across members; ``limits`` bounds named wildcards, ``{"N": 4}``). Every member of ``members`` not in
    ``optional`` must be present; any other member is refused. Each member's declared size (zip directory and
    ``.npy`` header) must be at most ``max_bytes``, and their sum at most ``max_total_bytes`` (default: no limit
    beyond ``max_bytes`` each). All checks run on every member before any member's data is decompressed.

    Raises :class:`ArrayFileError` naming the archive (and member) and what was expected; ``FileNotFoundError``
    when it is missing.
    """
    where = str(path)
    if not Path(path).exists():
        raise FileNotFoundError(f"{where} is missing; expected a .npz archive")
    allowed = ", ".join(sorted(members)) or "none"
    try:
        with zipfile.ZipFile(path) as zf:
            by_name = _npz_entries(zf.infolist(), members, optional, where, allowed)
            headers = _npz_headers(zf, by_name, members, where, max_bytes=max_bytes, max_total_bytes=max_total_bytes,
                                   kinds=kinds, limits=limits)
            return _npz_arrays(zf, by_name, headers, where)
    except ArrayFileError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, NotImplementedError,
            RuntimeError, ValueError) as exc:
        # BadZipFile: not a zip, a truncated one or a bad CRC; zlib.error: a corrupt deflate stream;
        # NotImplementedError: an unknown compression; RuntimeError: an encrypted member.
        text = " ".join(str(exc).split())[:200]
        raise ArrayFileError(where, f"is not a readable .npz archive ({type(exc).__name__}: {text}); "
                                    f"expected a zip of the members {allowed}") from None


def _npz_entries(infos: Sequence[zipfile.ZipInfo], members: Mapping[str, Shape | None], optional: Collection[str],
                 where: str, allowed: str) -> dict[str, zipfile.ZipInfo]:
    """The archive's entries by member name: each an allowed ``<name>.npy`` listed once, every required member
    present."""
    names = [info.filename for info in infos]
    by_name: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        stem = info.filename[:-4] if info.filename.endswith(".npy") else None
        if stem is None or stem not in members:
            raise ArrayFileError(where, f"holds the member {info.filename!r}, which is not allowed; "
                                        f"expected only the members {allowed} (as <name>.npy)")
        if stem in by_name:
            raise ArrayFileError(where, f"lists the member {info.filename!r} twice")
        by_name[stem] = info
    missing = [m for m in members if m not in by_name and m not in optional]
    if missing:
        raise ArrayFileError(where, f"lacks the member(s) {', '.join(missing)}; it holds "
                                    f"{', '.join(names) or 'nothing'}")
    return by_name


def _npz_headers(zf: zipfile.ZipFile, by_name: Mapping[str, zipfile.ZipInfo], members: Mapping[str, Shape | None],
                 where: str, *, max_bytes: int, max_total_bytes: int | None, kinds: str,
                 limits: Mapping[str, int] | None) -> dict[str, ArrayHeader]:
    """Every member's checked ``.npy`` header, by member name, before any data is decompressed: first the zip
    directory's declared sizes, then each header (shape, dtype, size, agreement with the directory), then the
    total."""
    # 1. the zip directory's declared sizes, before anything is decompressed
    total = 0
    for stem, info in by_name.items():
        if info.file_size > max_bytes + _MAX_HEADER:
            raise ArrayFileError(f"{where}: member {stem!r}",
                                 f"is declared {human_bytes(info.file_size)} uncompressed by the zip "
                                 f"directory; "
                                 f"expected at most {human_bytes(max_bytes)}")
    # 2. each member's .npy header (a few hundred bytes decompressed each)
    headers: dict[str, ArrayHeader] = {}
    bound: dict[str, int] = {}
    for stem, info in by_name.items():
        mwhere = f"{where}: member {stem!r}"
        with zf.open(info) as fh:
            header = read_npy_header(fh, mwhere, _expected_array(members[stem]))
        check_header(header, mwhere, shape=members[stem], max_bytes=max_bytes, kinds=kinds, bound=bound,
                     limits=limits)
        if info.file_size != header.offset + header.nbytes:
            raise ArrayFileError(mwhere, f"is declared {info.file_size} bytes uncompressed by the zip "
                                         f"directory but its .npy header declares {header.offset + header.nbytes} "
                                         f"({header.describe()} after a {header.offset}-byte header)")
        total += header.nbytes
        headers[stem] = header
    if max_total_bytes is not None and total > max_total_bytes:
        raise ArrayFileError(where, f"has members that declare {human_bytes(total)} in all; expected at most "
                                    f"{human_bytes(max_total_bytes)}")
    return headers


def _npz_arrays(zf: zipfile.ZipFile, by_name: Mapping[str, zipfile.ZipInfo], headers: Mapping[str, ArrayHeader],
                where: str) -> dict[str, np.ndarray]:
    """Each member's data, into an array of its checked header's size; a member holding more is refused."""
    out: dict[str, np.ndarray] = {}
    for stem, info in by_name.items():
        mwhere = f"{where}: member {stem!r}"
        with zf.open(info) as fh:
            read_npy_header(fh, mwhere)
            out[stem] = _read_data(fh, headers[stem], mwhere)
            if fh.read(1):
                raise ArrayFileError(mwhere, "holds data after its declared array")
    return out
