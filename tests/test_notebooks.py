"""End-to-end: `make reproduce` on a tiny sweep executes both notebooks with papermill, in a temporary folder.

One session-scoped study (a tiny synthetic dataset, two sweep points of one epoch each) is
built once and shared with tests/test_report_browser.py (see :func:`build_study`). The tests check the
executed notebooks, the run files, the HTML reports, the index, and that a second `make reproduce` skips
finished points and resumes an interrupted one.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from helpers import COMPARE_FIGURES, POINTS, RUN_FIGURES, build_study, make

pytestmark = pytest.mark.slow  # executes both notebooks through make
REPO_ROOT = Path(__file__).resolve().parents[1]
PNG = re.compile(r'<img[^>]+src="data:image/png;base64,')


@pytest.fixture(scope="session")
def study(tmp_path_factory: pytest.TempPathFactory, synthetic_pastis) -> Path:
    return build_study(tmp_path_factory, synthetic_pastis)


def run_dirs(study: Path) -> list[Path]:
    dirs = sorted((study / "results" / "runs").glob("*/*/metrics.json"))
    return [d.parent for d in dirs]


def error_outputs(nb: nbformat.NotebookNode) -> list[str]:
    """Errors, and warnings printed to stderr (a reader of the HTML report would see them)."""
    problems = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        for o in c.outputs:
            if o.output_type == "error":
                problems.append(f"{o.get('ename')}: {o.get('evalue')}")
            elif o.output_type == "stream" and o.get("name") == "stderr" and "Warning" in o.get("text", ""):
                problems.append(o["text"][:300])
    return problems


def test_every_point_ran_once_into_its_platform_folder(study):
    dirs = run_dirs(study)
    assert sorted(d.name for d in dirs) == sorted(POINTS)
    platforms = {d.parent.name for d in dirs}
    assert len(platforms) == 1 and re.fullmatch(r"cpu-[a-z0-9-]+", platforms.pop())
    log = (study / "built.txt").read_text()
    for rid in POINTS:
        assert log.count(f"/{rid}: running") == 1
    assert not list((study / "results").rglob("*.partial.ipynb"))


def test_run_notebooks_executed_without_errors(study):
    for d in run_dirs(study):
        nb = nbformat.read(d / "run.ipynb", as_version=4)
        assert error_outputs(nb) == []
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1
        noise = 0.5 if d.name.startswith("noise0.5") else 0.0
        assert f"noise_std = {noise}" in injected[0].source
        assert f'run_id = "{d.name}"' in injected[0].source
        config = json.loads((d / "config.json").read_text())
        assert config["noise_std"] == noise and config["run_id"] == d.name and config["epochs"] == 1


def test_metrics_are_in_range(study):
    for d in run_dirs(study):
        m = json.loads((d / "metrics.json").read_text())
        assert m["run_id"] == d.name and m["epochs_completed"] == 1 and m["best_epoch"] == 1
        for split in ("train", "val", "test"):
            for key in ("oa", "miou"):
                assert 0.0 <= m[split][key] <= 1.0, (d, split, key)
        assert len(m["test"]["iou"]) == 20
        assert [e["std"] for e in m["test_noise"]] == [0.0, 1.0]
        assert m["test_noise"][0]["miou"] == pytest.approx(m["test"]["miou"])
        assert all(0.0 <= e["oa"] <= 1.0 for e in m["test_noise"])
        assert m["timing"]["sec_per_epoch"] > 0 and m["timing"]["train_samples_per_s"] > 0
        history = pd.read_csv(d / "history.csv")
        assert len(history) == 1


def test_run_reports_hold_the_figures_and_the_parameters(study):
    for d in run_dirs(study):
        page = (study / "results" / "reports" / d.parent.name / f"{d.name}.html").read_text()
        assert len(PNG.findall(page)) == RUN_FIGURES
        assert "<table" in page
        for name in ("dataset_root", "noise_std", "encoder_widths", "test_noise_stds"):
            assert f"<th>{name}</th>" in page  # the parameters table
        assert "report.run_config(globals())" not in page  # rendered without code
        assert "Per-class IoU" in page and "Platform and timing" in page
        assert len(page) < 400_000  # small enough to commit


def test_compare_notebook_and_summary(study):
    results = study / "results"
    nb = nbformat.read(results / "runs" / "compare.ipynb", as_version=4)
    assert error_outputs(nb) == []
    summary = pd.read_csv(results / "summary.csv")
    assert len(summary) == 2 and list(summary["cfg_noise_std"]) == [0.0, 0.5]
    assert (summary["n_runs"] == 1).all()
    runs = {d.name: json.loads((d / "metrics.json").read_text()) for d in run_dirs(study)}
    assert summary["test_miou_mean"].tolist() == pytest.approx([runs[p]["test"]["miou"] for p in POINTS])
    page = (results / "reports" / "compare.html").read_text()
    assert len(PNG.findall(page)) == COMPARE_FIGURES
    assert "Table I from our runs" in page and "only the spread between seeds" in page
    assert "No benchmark tables" in page  # no results/bench in the temporary study


def test_compare_notebook_robustness_section_on_runs_tested_on_corruptions(tmp_path, synthetic_pastis):
    """The committed runs, some given corruption results and training corruptions by hand
    (tests/test_robustness.py), and a tiny synthetic dataset for the gallery: compare.ipynb shows the section, writes
    robustness.csv, and the runs of today's format render beside them."""
    from test_robustness import make_corruption_results
    from utae.sweep.orchestrate import run_compare

    data = synthetic_pastis(n_patches=10, size=32, t_range=(6, 8), seed=0)
    results = make_corruption_results(tmp_path, dataset=data)
    page_path = run_compare(results)
    nb = nbformat.read(results / "runs" / "compare.ipynb", as_version=4)
    assert error_outputs(nb) == []
    page = page_path.read_text()
    assert "Robustness to corruptions" in page and "Which corruption hurts most?" in page
    assert "Does Gaussian-noise training (gaussian σ=0.5) protect against realistic corruptions?" in page
    assert "haze-seed9" in page  # the run without a clean-trained partner is named
    assert "date_shift moves" not in page and "Test patch" in page  # gallery of the kinds tested
    assert "None of the runs was tested on corruptions" not in page
    # the study's figures, plus the severity curves and the gallery of the corruption section
    assert len(PNG.findall(page)) == COMPARE_FIGURES + 2
    table = pd.read_csv(results / "robustness.csv")
    assert set(table["kind"]) == {"gaussian", "clouds", "missing_dates", "all kinds"}


def test_compare_notebook_says_when_no_run_was_tested_on_corruptions(study):
    page = (study / "results" / "reports" / "compare.html").read_text()
    assert "None of the runs was tested on corruptions" in page
    assert not (study / "results" / "robustness.csv").exists()


def test_index_links_every_report(study):
    reports = study / "results" / "reports"
    page = (reports / "index.html").read_text()
    hrefs = re.findall(r'href="([^"]+)"', page)
    assert "compare.html" in hrefs and "../summary.csv" in hrefs
    for d in run_dirs(study):
        assert f"{d.parent.name}/{d.name}.html" in hrefs
    for href in hrefs:
        assert (reports / href).is_file(), href


def test_make_skips_finished_points_and_resumes_an_interrupted_one(study):
    results = study / "results"
    files = sorted(p for p in results.rglob("*") if p.is_file())
    before = {p: p.stat().st_mtime_ns for p in files}
    proc = make(study, "reproduce")
    assert "running" not in proc.stdout
    assert f"{len(POINTS)} point(s), {len(POINTS)} finished, 0 to run" in proc.stdout
    assert "are up to date" in proc.stdout  # compare.html and the index are not rendered again
    assert {p: p.stat().st_mtime_ns for p in files} == before

    # Interrupt one point after its (only) epoch: the checkpoint is there, metrics and report are not.
    plat = run_dirs(study)[0].parent.name
    victim = results / "runs" / plat / POINTS[1]
    (victim / "metrics.json").unlink()
    (victim / "run.ipynb").unlink()
    (results / "reports" / plat / f"{POINTS[1]}.html").unlink()
    checkpoint = (victim / "checkpoint.pt").stat().st_mtime_ns
    other = results / "runs" / plat / POINTS[0]
    untouched = {p: p.stat().st_mtime_ns for p in other.iterdir()}
    proc = make(study, "reproduce")
    assert f"{plat}/{POINTS[1]}: resuming from epoch 1 of 1" in proc.stdout  # not "running"
    assert "running" not in proc.stdout
    assert (victim / "metrics.json").is_file() and (results / "reports" / plat / f"{POINTS[1]}.html").is_file()
    assert (victim / "checkpoint.pt").stat().st_mtime_ns == checkpoint  # resumed: no epoch trained again
    assert {p: p.stat().st_mtime_ns for p in other.iterdir()} == untouched
    assert len(pd.read_csv(victim / "history.csv")) == 1


def test_make_report_renders_without_training(study):
    """`make report` re-renders compare.html and the index of the study's results (and any run report older
    than its notebook) without running a point, when what they show changed (reports/.rendered.json, by content);
    rendered from the same runs, they are left as they are. No kernel or papermill chatter on the console."""
    results = study / "results"
    runs = {p: p.stat().st_mtime_ns for p in (results / "runs").rglob("*") if p.is_file() and p.suffix != ".ipynb"}
    compare, index = results / "reports" / "compare.html", results / "reports" / "index.html"
    before = compare.stat().st_mtime_ns
    proc = make(study, "report")
    assert "running" not in proc.stdout and "are up to date" in proc.stdout and "compare: done" not in proc.stdout
    assert compare.stat().st_mtime_ns == before
    (results / "reports" / ".rendered.json").unlink()  # what compare.html shows is unknown now
    proc = make(study, "report")
    assert "running" not in proc.stdout and "compare: done" in proc.stdout
    assert compare.stat().st_mtime_ns > before and index.stat().st_mtime_ns > before
    text = proc.stdout + proc.stderr
    assert "Input Notebook" not in text and "Executing notebook" not in text and "without encryption" not in text
    assert {p: p.stat().st_mtime_ns for p in runs} == runs  # no run file touched


def test_colab_cell_stops_clearly_without_a_repository_url(tmp_path, monkeypatch):
    """In Colab (google.colab imported), without repo_url or UTAE_REPO_URL, the set-up cell stops with a
    message saying what to set, before cloning anything."""
    from IPython.core.inputtransformer2 import TransformerManager

    for name in ("train_eval", "compare"):
        nb = nbformat.read(REPO_ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", [])  # the first code cell
        setup = TransformerManager().transform_cell(code[1].source)
        monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
        monkeypatch.delenv("UTAE_REPO_URL", raising=False)
        monkeypatch.chdir(tmp_path)
        with pytest.raises(RuntimeError, match="UTAE_REPO_URL"):
            exec(compile(setup, f"{name}.ipynb setup cell", "exec"), {"repo_url": ""})
        assert list(tmp_path.iterdir()) == []


def test_source_notebooks_are_clean():
    for name in ("train_eval", "compare"):
        nb = nbformat.read(REPO_ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        nbformat.validate(nb)
        assert nb.metadata["kernelspec"]["name"] == "python3"
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (name, cell.id)
