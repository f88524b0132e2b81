"""The GeoTIFFs of utae.predict: every bad input is one line naming the file; the outputs carry the styling.

Each error case writes real GeoTIFFs with rasterio and calls predict(); the error comes before any window is
predicted.
"""

from __future__ import annotations

import datetime as dt
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.transform import Affine

from utae.pastis.classes import CLASS_NAMES
from utae.pastis.metadata import BANDS
from utae.predict import PredictError, predict
from utae.predict.dates import date_from_name, read_dates_file, resolve_inputs
from utae.predict.geotiff import band_name, class_table

SMALL = (slice(None), slice(None), slice(0, 32), slice(0, 32))


@pytest.fixture
def small(scene, tmp_path, gt) -> Path:
    """A 32 x 32 px, 6-date series, one file per date."""
    return gt.write_series(tmp_path / "in", scene["raw"][SMALL], scene["dates"])[0].parent


def _error(inputs, run_folder, out: Path, **kw) -> str:
    with pytest.raises(PredictError) as info:
        predict(inputs, run_folder, out, threads=1, progress=False, quicklook=False, **kw)
    message = str(info.value)
    assert "\n" not in message
    assert not out.exists() or not list(out.iterdir())  # nothing written
    return message


def test_a_file_with_another_band_count(small, scene, run_folder, tmp_path, gt):
    bad = sorted(small.iterdir())[2]
    gt.write_geotiff(bad, scene["raw"][2, :9, :32, :32])
    message = _error(small, run_folder, tmp_path / "out")
    assert str(bad) in message and "9 bands, expected 10" in message and "B8A" in message


def test_a_band_description_that_disagrees(small, scene, run_folder, tmp_path, gt):
    bad = sorted(small.iterdir())[1]
    gt.write_geotiff(bad, scene["raw"][1][SMALL[1:]], descriptions=["B01", *BANDS[1:]])
    message = _error(small, run_folder, tmp_path / "out")
    assert str(bad) in message and "band 1" in message and "'B01'" in message and "B2" in message
    # descriptions that name no band, or name the right one in another spelling, are accepted
    gt.write_geotiff(bad, scene["raw"][1][SMALL[1:]], descriptions=["blue", "B03 green", "b04", *BANDS[3:]])
    assert predict(small, run_folder, tmp_path / "ok", threads=1, progress=False, quicklook=False).outputs


def test_band_names():
    assert [band_name(d) for d in ("B02", "B2 (blue)", "b8a", "B8", "B11_20m", "SR_B12", "blue", None)] == \
        ["B2", "B2", "B8A", "B8", "B11", "B12", None, None]


def test_misaligned_grids_name_both_files(small, scene, run_folder, tmp_path, gt):
    files = sorted(small.iterdir())
    shifted = Affine(10.0, 0.0, 399970.0, 0.0, -10.0, 4900020.0)  # one pixel east
    gt.write_geotiff(files[4], scene["raw"][4][SMALL[1:]], transform=shifted)
    message = _error(small, run_folder, tmp_path / "out")
    assert str(files[4]) in message and str(files[0]) in message and "grid" in message
    gt.write_geotiff(files[4], scene["raw"][4][SMALL[1:]], crs="EPSG:32632")
    assert "EPSG:32632" in _error(small, run_folder, tmp_path / "out")
    gt.write_geotiff(files[4], scene["raw"][4, :, :31, :32])
    assert "32 x 31 px" in _error(small, run_folder, tmp_path / "out")


def test_unparsable_dates(small, scene, run_folder, tmp_path, gt):
    odd = small / "scene_a.tif"
    gt.write_geotiff(odd, scene["raw"][0][SMALL[1:]])
    message = _error(small, run_folder, tmp_path / "out")
    assert str(odd) in message and "no date in the file name" in message
    table = tmp_path / "files.csv"
    table.write_text(f"file,date\n{odd},2019-13-45\n")
    message = _error(table, run_folder, tmp_path / "out")
    assert str(table) in message and "row 2" in message and "2019-13-45" in message
    dates = tmp_path / "dates.txt"
    dates.write_text("20190101\nnot a date\n")
    with pytest.raises(PredictError, match="dates.txt: row 2"):
        read_dates_file(dates)


def test_missing_files(small, run_folder, tmp_path):
    table = tmp_path / "files.csv"
    table.write_text("file,date\nin/gone.tif,20190105\n")
    message = _error(table, run_folder, tmp_path / "out")
    assert str(tmp_path / "in" / "gone.tif") in message and "no such file" in message
    message = _error([tmp_path / "gone.tif"], run_folder, tmp_path / "out")
    assert "gone.tif: no such file" in message
    (tmp_path / "empty").mkdir()
    assert "holds no GeoTIFF" in _error(tmp_path / "empty", run_folder, tmp_path / "out")


def test_a_truncated_geotiff(small, run_folder, tmp_path):
    bad = sorted(small.iterdir())[3]
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) * 2 // 3])
    message = _error(small, run_folder, tmp_path / "out")
    assert str(bad) in message and "truncated" in message


def test_a_stack_needs_as_many_dates_as_band_groups(scene, run_folder, tmp_path, gt):
    stack = gt.write_geotiff(tmp_path / "stack.tif", scene["raw"][SMALL].reshape(-1, 32, 32))
    (tmp_path / "dates.txt").write_text("date\n2018-09-20\n2018-10-05\n")
    message = _error(stack, run_folder, tmp_path / "out", dates=tmp_path / "dates.txt")
    assert str(stack) in message and "60 bands, expected 20 = 2 dates x 10 bands" in message


def test_not_georeferenced(small, scene, run_folder, tmp_path, gt):
    bad = sorted(small.iterdir())[0]
    with pytest.warns(rasterio.errors.NotGeoreferencedWarning):
        gt.write_geotiff(bad, scene["raw"][0][SMALL[1:]], crs=None, transform=Affine.identity())
    message = _error(small, run_folder, tmp_path / "out")
    assert str(bad) in message and "not georeferenced" in message


def test_dates_from_sentinel2_names_and_files_in_date_order(small, scene):
    series = resolve_inputs(small)
    assert list(series.dates) == sorted(scene["dates"]) and not series.stack
    assert all(f"{d:%Y%m%d}T105031" in f.name for f, d in zip(series.files, series.dates))
    name = Path("S2B_MSIL2A_20190415T105031_N0211_R051_T31TCJ_20190415T134717.tif")
    assert date_from_name(name) == dt.date(2019, 4, 15)  # the sensing time, not the processing time
    with pytest.raises(PredictError, match="several dates"):
        date_from_name(Path("x_20190415T105031_20190420T105031.tif"))


def test_the_map_carries_its_colour_table_and_class_names(small, run_folder, tmp_path):
    out = predict(small, run_folder, tmp_path / "out", threads=1, progress=False, quicklook=False)
    with rasterio.open(out.outputs["map"]) as src:
        colours = src.colormap(1)
        assert all(colours[i] == rgba for i, rgba in class_table().items())
        tags = src.tags(1)
        assert [tags[f"CLASS_{i}"] for i in range(len(CLASS_NAMES))] == CLASS_NAMES
        assert tags["CLASS_NAMES_SOURCE"].startswith("utae.pastis.classes")  # GDAL read the .aux.xml sidecar
        assert src.descriptions == ("PASTIS class",)
        assert src.colorinterp == (ColorInterp.palette,)
    sidecar = ET.parse(f"{out.outputs['map']}.aux.xml").getroot()
    assert [c.text for c in sidecar.iter("Category")] == CLASS_NAMES
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["confidence.tif", "map.tif", "map.tif.aux.xml",
                                                                    "prediction.json"]
