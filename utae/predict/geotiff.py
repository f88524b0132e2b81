"""Every GeoTIFF that :mod:`utae.predict` reads or writes, through rasterio (the only module that imports it).

GDAL's block cache is capped at :data:`GDAL_CACHE_BYTES` (:func:`gdal_env`), so that the memory of a prediction
does not grow with the rows read. Reading (:class:`RasterSeries`). Each file is opened once and checked before any prediction: a GeoTIFF
(driver ``GTiff``), georeferenced (a CRS and a transform), 10 bands per date (a stack: ``10 x T``) in PASTIS's
order, :data:`utae.pastis.dataset.BANDS` = B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12 (a band whose description names
another Sentinel-2 band, e.g. ``"B04"`` where B2 is expected, is refused; a description that names no band is not
checked), integer or float values in PASTIS's units (reflectance x 10,000), the same grid (CRS, transform, size)
for every date, and a last data block that lies within the file (a truncated file). Rows are then read as
needed, :meth:`RasterSeries.read_rows`; a block that cannot be read is an error naming the file and the rows.

Nodata. A pixel of a date is nodata when every band of it is masked (the file's nodata value, internal mask or
alpha band, as GDAL's masks say) or any band is not finite (NaN, inf).

Writing (:class:`OutputWriter`): tiled, DEFLATE-compressed GeoTIFFs (BigTIFF when needed) in the input's CRS,
transform and size, written row by row into temporary files that replace the final names only when the whole
map is written. ``map.tif``: uint8 classes, nodata 255, the PASTIS colour table and class names embedded (band
tags ``CLASS_<i>``), and beside it ``map.tif.aux.xml``, GDAL's sidecar holding the category names that QGIS
shows as labels. ``confidence.tif``, ``probabilities.tif`` (one band a class) and ``stress.tif``: float32,
nodata NaN.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import RasterioError
from rasterio.windows import Window

from utae.pastis.classes import CLASS_COLORS, CLASS_NAMES, N_CLASSES
from utae.pastis.metadata import BANDS, N_BANDS
from utae.predict.errors import PredictError

__all__ = ["MAP_NODATA", "GDAL_CACHE_BYTES", "gdal_env", "band_name", "RasterSeries", "OutputWriter",
           "read_decimated", "class_table"]

#: The class map's nodata value.
MAP_NODATA = 255
#: GDAL's block cache during a prediction (its default, 5% of the machine's memory, made the peak grow with the
#: rows read until it was full: 255 MiB more for 4 strips than for 1 at 4,096 px wide, and +9 MiB with this cap).
GDAL_CACHE_BYTES = 256 * 2**20
_BAND = re.compile(r"(?<![0-9A-Za-z])B0*(\d{1,2})(A?)(?![0-9A-Za-z])", re.IGNORECASE)
_BLOCK = 256


def gdal_env() -> Any:
    """The GDAL settings of a prediction, as a context manager: a block cache of :data:`GDAL_CACHE_BYTES`."""
    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES)


def band_name(description: str | None) -> str | None:
    """The Sentinel-2 band a band description names (``"B02"``, ``"B2 blue"``, ``"b8a"`` -> ``"B2"``, ``"B8A"``),
    or None when it names none."""
    if not description:
        return None
    found = _BAND.search(description)
    return None if found is None else f"B{int(found.group(1))}{found.group(2).upper()}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _grid(src: Any) -> str:
    t = src.transform
    return (f"CRS {src.crs.to_string() if src.crs else None}, origin ({t.c:g}, {t.f:g}), pixel ({t.a:g}, {t.e:g}), "
            f"{src.width} x {src.height} px")


def _same_grid(a: Any, b: Any) -> bool:
    if (a.width, a.height) != (b.width, b.height) or a.crs != b.crs:
        return False
    tolerance = 1e-6 * max(abs(a.transform.a), abs(a.transform.e), 1e-12)  # a millionth of a pixel
    return all(abs(x - y) <= tolerance for x, y in zip(a.transform[:6], b.transform[:6]))


class RasterSeries:
    """The open, checked GeoTIFFs of a series (see the module docstring).

    ``files`` and ``n_dates``: one 10-band file per date (``stack`` False), or one file of ``10 x n_dates`` bands.
    Attributes: ``height``, ``width``, ``crs``, ``transform``, ``n_dates``. Use as a context manager (or
    :meth:`close`)."""

    def __init__(self, files: Sequence[Path], n_dates: int, stack: bool) -> None:
        self.files = [Path(f) for f in files]
        self.n_dates, self.stack = int(n_dates), bool(stack)
        self._srcs: list[Any] = []
        try:
            for f in self.files:
                self._srcs.append(self._open(f))
            first = self._srcs[0]
            for f, src in zip(self.files[1:], self._srcs[1:]):
                if not _same_grid(first, src):
                    raise PredictError(f"{f}: its grid ({_grid(src)}) differs from {self.files[0]}'s ({_grid(first)});"
                                       " every date must share one grid (reproject it first)")
        except BaseException:
            self.close()
            raise
        self.height, self.width = first.height, first.width
        self.crs, self.transform = first.crs, first.transform

    def _open(self, path: Path) -> Any:
        try:
            src = rasterio.open(path)
        except RasterioError as exc:
            raise PredictError(f"{path}: not a readable GeoTIFF ({_one_line(exc)})") from None
        try:
            self._check(path, src)
        except BaseException:
            src.close()
            raise
        return src

    def _check(self, path: Path, src: Any) -> None:
        if src.driver != "GTiff":
            raise PredictError(f"{path}: a {src.driver} file, not a GeoTIFF")
        expected = N_BANDS * (self.n_dates if self.stack else 1)
        if src.count != expected:
            what = f"{self.n_dates} dates x {N_BANDS} bands" if self.stack else f"{N_BANDS} bands (one date)"
            raise PredictError(f"{path}: {src.count} bands, expected {expected} = {what} in PASTIS's order "
                               f"{', '.join(BANDS)}")
        if src.crs is None or src.transform == rasterio.Affine.identity():
            raise PredictError(f"{path}: not georeferenced (no CRS or no transform); the map needs both")
        for i, desc in enumerate(src.descriptions):
            named, want = band_name(desc), BANDS[i % N_BANDS]
            if named is not None and named != want:
                raise PredictError(f"{path}: band {i + 1} is described as {desc!r} ({named}) but PASTIS's order "
                                   f"puts {want} there ({', '.join(BANDS)})")
        kinds = {np.dtype(d).kind for d in src.dtypes}
        if not kinds <= {"i", "u", "f"}:
            raise PredictError(f"{path}: band types {sorted(set(src.dtypes))}; expected integer or float reflectance")
        self._check_blocks(path, src)

    @staticmethod
    def _check_blocks(path: Path, src: Any) -> None:
        """A truncated file: a band's last block ends beyond the end of the file."""
        size = path.stat().st_size
        for band in (1, src.count):
            bh, bw = src.block_shapes[band - 1]
            ny, nx = -(-src.height // bh), -(-src.width // bw)
            try:
                offset = src.get_tag_item(f"BLOCK_OFFSET_{nx - 1}_{ny - 1}", "TIFF", bidx=band)
                count = src.get_tag_item(f"BLOCK_SIZE_{nx - 1}_{ny - 1}", "TIFF", bidx=band)
            except RasterioError:
                continue
            if offset is not None and count is not None and int(offset) + int(count) > size:
                raise PredictError(f"{path}: truncated ({size} bytes, but band {band}'s last block ends at byte "
                                   f"{int(offset) + int(count)}); copy or download it again")

    # -- reading ----------------------------------------------------------------------------------
    def read_rows(self, row0: int, n_rows: int, out: tuple[np.ndarray, np.ndarray] | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``row0 .. row0 + n_rows - 1`` of every date: ``(raw (T, 10, n_rows, W), valid (T, n_rows, W) bool)``;
        ``raw`` in the files' type (the widest when they differ), ``valid`` False on nodata. ``out``: the arrays of
        a previous call, filled again when their shapes fit (a full tile's strip of 40 dates is 1.1 GB: two of them
        need not live at once)."""
        window = Window(0, row0, self.width, n_rows)
        dtype = np.result_type(*[np.dtype(d) for s in self._srcs for d in s.dtypes])
        shape = (self.n_dates, N_BANDS, n_rows, self.width)
        if out is not None and out[0].shape == shape and out[0].dtype == dtype:
            raw, valid = out
        else:
            out = None  # let the old arrays go before the new ones are made
            raw = np.empty(shape, dtype=dtype)
            valid = np.empty((self.n_dates, n_rows, self.width), dtype=bool)
        for t in range(self.n_dates):
            src, path = (self._srcs[0], self.files[0]) if self.stack else (self._srcs[t], self.files[t])
            bands = list(range(N_BANDS * t + 1, N_BANDS * t + N_BANDS + 1)) if self.stack else list(range(1, 11))
            try:
                if all(np.dtype(src.dtypes[b - 1]) == dtype for b in bands):
                    src.read(bands, window=window, out=raw[t])
                else:
                    raw[t] = src.read(bands, window=window)
                valid[t] = self._valid(src, bands, window, raw[t])
            except RasterioError as exc:
                raise PredictError(f"{path}: cannot read rows {row0}..{row0 + n_rows - 1} ({_one_line(exc)}); the "
                                   "file is truncated or damaged") from None
        return raw, valid

    @staticmethod
    def _valid(src: Any, bands: list[int], window: Window, data: np.ndarray) -> np.ndarray:
        flags = [src.mask_flag_enums[b - 1] for b in bands]
        if all(MaskFlags.all_valid in f for f in flags):
            valid = np.ones(data.shape[1:], dtype=bool)
        elif all(f == [MaskFlags.nodata] for f in flags):
            nodata = [src.nodatavals[b - 1] for b in bands]
            masked = np.stack([np.isnan(d) if np.isnan(v) else d == v for d, v in zip(data, nodata)])
            valid = ~masked.all(axis=0)
        else:
            valid = (src.read_masks(bands, window=window) > 0).any(axis=0)
        if data.dtype.kind == "f":
            valid &= np.isfinite(data).all(axis=0)
        return valid

    def read_rgb(self, dates: Sequence[int], shape: tuple[int, int]) -> np.ndarray:
        """The B4, B3, B2 reflectance of ``dates`` averaged down to ``shape``: ``(len(dates), 3, h, w)`` float32,
        NaN where nodata."""
        out = np.empty((len(dates), 3, *shape), dtype=np.float32)
        for i, t in enumerate(dates):
            src, path = (self._srcs[0], self.files[0]) if self.stack else (self._srcs[t], self.files[t])
            base = N_BANDS * t if self.stack else 0
            bands = [base + BANDS.index(b) + 1 for b in ("B4", "B3", "B2")]
            try:
                data = src.read(bands, out_shape=(3, *shape), resampling=Resampling.average,
                                masked=True, out_dtype="float32")
            except RasterioError as exc:
                raise PredictError(f"{path}: cannot read the RGB bands ({_one_line(exc)})") from None
            out[i] = np.ma.filled(data.astype(np.float32), np.nan)
        return out

    def close(self) -> None:
        for src in self._srcs:
            with contextlib.suppress(Exception):
                src.close()
        self._srcs = []

    def __enter__(self) -> "RasterSeries":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------------------------------


def class_table() -> dict[int, tuple[int, int, int, int]]:
    """The class map's colour table: class ``i`` -> its RGBA colour (:data:`utae.pastis.classes.CLASS_COLORS`), nodata
    transparent."""
    table = {i: (int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16), 255) for i, c in enumerate(CLASS_COLORS)}
    table[MAP_NODATA] = (0, 0, 0, 0)
    return table


def _pam_xml(names: Sequence[str]) -> bytes:
    """GDAL's ``.aux.xml`` sidecar of the class map: the category names of band 1 (index = class value)."""
    root = ET.Element("PAMDataset")
    band = ET.SubElement(root, "PAMRasterBand", band="1")
    ET.SubElement(band, "Description").text = "PASTIS class"
    cats = ET.SubElement(band, "CategoryNames")
    for name in names:
        ET.SubElement(cats, "Category").text = name
    meta = ET.SubElement(band, "Metadata")
    ET.SubElement(meta, "MDI", key="CLASS_NAMES_SOURCE").text = "utae.pastis.classes.CLASS_NAMES (PASTIS)"
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n"  # GDAL's parser refuses ET's declaration


class OutputWriter:
    """The output GeoTIFFs of one prediction, written row by row (see the module docstring).

    ``names`` maps an output (``"map"``, ``"confidence"``, ``"probabilities"``, ``"stress"``) to its file name
    under ``out_dir``; ``tags`` are written as dataset tags of every file. :meth:`write` takes rows in order;
    :meth:`commit` closes the files and moves them to their names; :meth:`abort` removes them."""

    BANDS_OF = {"map": 1, "confidence": 1, "probabilities": N_CLASSES, "stress": 1}

    def __init__(self, out_dir: Path, names: dict[str, str], like: RasterSeries, tags: dict[str, str]) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.final = {k: self.out_dir / v for k, v in names.items()}
        token = f"{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp = {k: self.out_dir / f".{v}.{token}.tmp" for k, v in names.items()}
        self._dst: dict[str, Any] = {}
        try:
            for key in names:
                self._dst[key] = self._open(key, like, tags)
        except BaseException:
            self.abort()
            raise

    def _open(self, key: str, like: RasterSeries, tags: dict[str, str]) -> Any:
        tiled = like.width >= _BLOCK and like.height >= _BLOCK
        profile = dict(driver="GTiff", width=like.width, height=like.height, count=self.BANDS_OF[key],
                       crs=like.crs, transform=like.transform, compress="deflate", BIGTIFF="IF_SAFER",
                       tiled=tiled, **({"blockxsize": _BLOCK, "blockysize": _BLOCK} if tiled else {}))
        if key == "map":
            profile.update(dtype="uint8", nodata=MAP_NODATA)
        else:
            profile.update(dtype="float32", nodata=float("nan"), predictor=3)
        try:
            dst = rasterio.open(self.tmp[key], "w", **profile)
        except RasterioError as exc:
            raise PredictError(f"{self.final[key]}: cannot write it ({_one_line(exc)})") from None
        dst.update_tags(**tags)
        if key == "map":
            dst.write_colormap(1, class_table())
            dst.set_band_description(1, "PASTIS class")
            dst.update_tags(1, **{f"CLASS_{i}": name for i, name in enumerate(CLASS_NAMES)})
        elif key == "probabilities":
            for i, name in enumerate(CLASS_NAMES):
                dst.set_band_description(i + 1, name)
        else:
            dst.set_band_description(1, {"confidence": "top class probability",
                                         "stress": "share of draws keeping the clean class"}[key])
        return dst

    def write(self, row0: int, arrays: dict[str, np.ndarray]) -> None:
        """Write rows from ``row0``: ``arrays[key]`` is ``(h, W)`` (``(K, h, W)`` for probabilities)."""
        for key, arr in arrays.items():
            arr = arr if arr.ndim == 3 else arr[None]
            window = Window(0, row0, arr.shape[2], arr.shape[1])
            try:
                self._dst[key].write(arr, window=window)
            except RasterioError as exc:
                raise PredictError(f"{self.final[key]}: cannot write rows from {row0} ({_one_line(exc)})") from None

    def commit(self) -> dict[str, Path]:
        """Close every file and move it to its final name (the map's category sidecar written beside it)."""
        from utae.util.atomic import atomic_write_bytes, fsync_dir

        for key, dst in self._dst.items():
            try:
                dst.close()
            except RasterioError as exc:
                self.abort()
                raise PredictError(f"{self.final[key]}: cannot finish writing it ({_one_line(exc)})") from None
        for key, tmp in self.tmp.items():
            os.replace(tmp, self.final[key])
            with contextlib.suppress(OSError):
                Path(f"{tmp}.aux.xml").unlink()
        if "map" in self.final:
            atomic_write_bytes(Path(f"{self.final['map']}.aux.xml"), _pam_xml(CLASS_NAMES))
        fsync_dir(self.out_dir)
        self._dst = {}
        return dict(self.final)

    def abort(self) -> None:
        """Close and remove the temporary files."""
        for dst in self._dst.values():
            with contextlib.suppress(Exception):
                dst.close()
        self._dst = {}
        for tmp in self.tmp.values():
            for p in (tmp, Path(f"{tmp}.aux.xml")):
                with contextlib.suppress(OSError):
                    p.unlink()


def read_decimated(path: str | Path, max_side: int, band: int = 1) -> np.ndarray:
    """Band ``band`` of an output GeoTIFF read down to at most ``max_side`` pixels a side (nearest value for the
    uint8 class map, average for float rasters): ``(h, w)``; nodata as 255 (map) or NaN."""
    try:
        with rasterio.open(path) as src:
            scale = max(1.0, max(src.height, src.width) / max_side)
            shape = (max(1, round(src.height / scale)), max(1, round(src.width / scale)))
            is_map = np.dtype(src.dtypes[band - 1]) == np.uint8
            data = src.read(band, out_shape=shape, resampling=Resampling.nearest if is_map else Resampling.average)
    except RasterioError as exc:
        raise PredictError(f"{path}: cannot read it ({_one_line(exc)})") from None
    return data
