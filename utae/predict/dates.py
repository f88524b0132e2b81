"""Which GeoTIFFs make the series, and their acquisition dates (torch- and rasterio-free).

Two input forms (:func:`resolve_inputs`):

* **one 10-band file per date**: a folder of ``*.tif``/``*.tiff`` files, a list of files, or a CSV file with the
  columns ``file`` and ``date`` (paths relative to the CSV's folder). Without a CSV or a dates file, each date
  is read from the file's name in the Sentinel-2 product convention, ``..._20190415T105031_...``
  (:func:`date_from_name`);
* **one stack**: a single GeoTIFF of ``10 x T`` bands (date-major: the 10 bands of the first date, then those of
  the second...), with a dates file (:func:`read_dates_file`): one date a line, or a CSV with a ``date`` column.
  A dates file given with several files gives their dates, one a file, in the order given.

Dates are ``YYYYMMDD`` or ``YYYY-MM-DD``. The files are put in date order. Every problem is a one-line
:class:`~utae.predict.errors.PredictError` that names the file.
"""

from __future__ import annotations

import csv
import datetime as _dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from utae.pastis.metadata import parse_date
from utae.predict.errors import PredictError

__all__ = ["S2_DATE", "GEOTIFF_SUFFIXES", "InputSeries", "date_from_name", "read_dates_file", "read_file_table",
           "resolve_inputs", "season_reference"]

#: A Sentinel-2 product's sensing time in a file name: ``20190415T105031`` (the date is the 8 digits).
S2_DATE = re.compile(r"(?<![0-9])(\d{8})T\d{6}(?![0-9])")
#: The file name endings read as GeoTIFFs in a folder.
GEOTIFF_SUFFIXES: tuple[str, ...] = (".tif", ".tiff")


@dataclass(frozen=True)
class InputSeries:
    """The files of a series and their dates, in date order.

    ``stack`` False: ``files[t]`` holds date ``dates[t]`` (10 bands). ``stack`` True: ``files`` is one file whose
    bands ``10 t + 1 .. 10 t + 10`` hold date ``dates[t]``.
    """

    files: tuple[Path, ...]
    dates: tuple[_dt.date, ...]
    stack: bool


def date_from_name(path: Path) -> _dt.date:
    """The date in ``path``'s name in the Sentinel-2 product convention (``..._20190415T105031_...``).

    Raises :class:`PredictError` naming the file when the name holds no such date, or more than one different
    (a Sentinel-2 product name also holds the processing time: the first one, the sensing time, is taken when the
    name starts with the mission, ``S2A_``/``S2B_``/``S2C_``)."""
    found = S2_DATE.findall(path.name)
    if not found:
        raise PredictError(f"{path}: no date in the file name (expected the Sentinel-2 convention "
                           "'..._20190415T105031_...'); give the dates in a CSV (columns file,date) or a dates file")
    if len(set(found)) > 1 and not re.match(r"S2[A-D]_", path.name):
        raise PredictError(f"{path}: the file name holds several dates {sorted(set(found))}; give the dates in a CSV "
                           "(columns file,date)")
    return parse_date(found[0], f"{path}: the date in the file name")


def _parse(value: str, where: str) -> _dt.date:
    try:
        return parse_date(value, where)
    except ValueError as exc:
        raise PredictError(str(exc)) from None


def _read_rows(path: Path) -> list[list[str]]:
    """The non-empty, non-comment rows of a CSV or text file, as stripped cells."""
    if not path.is_file():
        raise PredictError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PredictError(f"{path}: cannot read it as UTF-8 text ({type(exc).__name__})") from None
    rows = []
    for row in csv.reader(text.splitlines()):
        cells = [c.strip() for c in row]
        if any(cells) and not cells[0].startswith("#"):
            rows.append(cells)
    return rows


def read_dates_file(path: str | Path) -> list[_dt.date]:
    """The dates of a dates file: one date a line (``YYYYMMDD`` or ``YYYY-MM-DD``), or a CSV whose header names a
    ``date`` column. Raises :class:`PredictError` naming the file and the line of a date it cannot parse."""
    path = Path(path)
    rows = _read_rows(path)
    if not rows:
        raise PredictError(f"{path}: holds no date; expected one date a line (YYYYMMDD or YYYY-MM-DD)")
    column, start = 0, 0
    header = [c.lower() for c in rows[0]]
    if "date" in header:
        column, start = header.index("date"), 1
    out = []
    for i, row in enumerate(rows[start:], start=start + 1):
        if column >= len(row):
            raise PredictError(f"{path}: row {i} has no date column")
        out.append(_parse(row[column], f"{path}: row {i}"))
    if not out:
        raise PredictError(f"{path}: holds no date; expected one date a line (YYYYMMDD or YYYY-MM-DD)")
    return out


def read_file_table(path: str | Path) -> list[tuple[Path, _dt.date]]:
    """The ``(file, date)`` rows of a CSV with the columns ``file`` and ``date`` (in any order, with a header);
    relative paths are relative to the CSV's folder."""
    path = Path(path)
    rows = _read_rows(path)
    header = [c.lower() for c in rows[0]] if rows else []
    if "file" not in header or "date" not in header:
        raise PredictError(f"{path}: expected a CSV with a header naming the columns 'file' and 'date', "
                           f"got {rows[0] if rows else 'an empty file'}")
    fi, di = header.index("file"), header.index("date")
    out = []
    for i, row in enumerate(rows[1:], start=2):
        if max(fi, di) >= len(row) or not row[fi]:
            raise PredictError(f"{path}: row {i} lacks its file or its date")
        file = Path(row[fi])
        out.append((file if file.is_absolute() else path.parent / file, _parse(row[di], f"{path}: row {i}")))
    if not out:
        raise PredictError(f"{path}: lists no file; expected one row 'file,date' per date")
    return out


def _folder_files(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in GEOTIFF_SUFFIXES)
    if not files:
        raise PredictError(f"{folder}: holds no GeoTIFF ({', '.join(GEOTIFF_SUFFIXES)} files)")
    return files


def resolve_inputs(inputs: str | Path | Sequence[str | Path], dates: str | Path | None = None) -> InputSeries:
    """The series of ``inputs`` (see the module docstring): a folder, a CSV of ``file,date`` rows, one stack with
    ``dates`` (a dates file), or a list of files (dates from ``dates``, one a file in order, or from the names).

    Raises :class:`PredictError` naming the file: a missing file, a file listed twice, a date that cannot be
    parsed, a dates file whose number of dates differs from the number of files.
    """
    items = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(p) for p in inputs]
    if not items:
        raise PredictError("inputs: no GeoTIFF given")
    if len(items) == 1 and items[0].suffix.lower() == ".csv":
        if dates is not None:
            raise PredictError(f"{items[0]}: a CSV of files already gives their dates; leave out the dates file")
        table = read_file_table(items[0])
        files, when = [f for f, _ in table], [d for _, d in table]
    else:
        if len(items) == 1 and items[0].is_dir():
            items = _folder_files(items[0])
        files = items
        when = None
        if dates is not None:
            when = read_dates_file(dates)
            if len(files) == 1:
                _check_files(files)
                return InputSeries(files=tuple(files), dates=tuple(when), stack=True)
            if len(when) != len(files):
                raise PredictError(f"{dates}: lists {len(when)} dates for {len(files)} files; give one date a file, "
                                   "in the files' order (or a CSV with the columns file,date)")
    _check_files(files)
    if when is None:
        when = [date_from_name(f) for f in files]
    order = sorted(range(len(files)), key=lambda i: (when[i], str(files[i])))
    return InputSeries(files=tuple(files[i] for i in order), dates=tuple(when[i] for i in order), stack=False)


def _check_files(files: Sequence[Path]) -> None:
    seen: dict[Path, Path] = {}
    for f in files:
        if not f.is_file():
            raise PredictError(f"{f}: no such file" + (" (it is a folder)" if f.is_dir() else ""))
        key = f.resolve()
        if key in seen:
            raise PredictError(f"{f}: listed twice (also as {seen[key]}); every date needs its own file")
        seen[key] = f


def season_reference(first: _dt.date) -> _dt.date:
    """The reference date of a series whose first acquisition is ``first``: 1 September before (or on) it, the
    same day of the season as PASTIS's 2018-09-01, so that day offsets place the acquisitions where the training
    season had them (2018-09-01 itself for a series of the PASTIS season)."""
    year = first.year if (first.month, first.day) >= (9, 1) else first.year - 1
    return _dt.date(year, 9, 1)
