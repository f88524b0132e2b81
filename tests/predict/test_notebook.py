"""notebooks/predict.ipynb executed by papermill on a small synthetic raster, then rendered like the other reports."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from utae.sweep.point import execute_notebook
from utae.report.pages import render_notebook_html

pytestmark = pytest.mark.slow  # starts a kernel and executes a notebook
NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "predict.ipynb"
PNG = re.compile(r'<img[^>]+src="data:image/png;base64,')


def test_the_notebook_is_committed_without_outputs_and_has_its_parameters_cell():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    for name in ("inputs", "model", "out_dir", "stress", "draws", "seed"):
        assert re.search(rf"^{name} = ", tagged[0].source, re.MULTILINE)


def test_the_notebook_maps_a_synthetic_raster(scene, run_folder, tmp_path, gt):
    folder = gt.write_series(tmp_path / "in", scene["raw"][:, :, :48, :56], scene["dates"])[0].parent
    out = tmp_path / "predict.ipynb"
    execute_notebook(NOTEBOOK, out, {"inputs": str(folder), "model": str(run_folder), "out_dir": str(tmp_path / "out"),
                                     "stress": "clouds:3", "draws": 2, "max_side": 64}, timeout=600)
    nb = nbformat.read(out, as_version=4)
    problems = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
                if o.output_type == "error" or (o.output_type == "stream" and o.get("name") == "stderr")]
    assert problems == []
    assert (tmp_path / "out" / "map.tif").is_file() and (tmp_path / "out" / "stress.tif").is_file()
    page = render_notebook_html(out, tmp_path / "predict.html").read_text()
    assert len(PNG.findall(page)) == 3  # the map, the confidence and the stress map
    assert "flip_share" in page and "Stress: clouds:3, 2 draws" not in page  # a table; titles are in the figures
