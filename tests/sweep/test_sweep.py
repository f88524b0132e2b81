"""Tests of utae.sweep.orchestrate: loading and validating sweep files, run ids, preparing a sweep, skipping.

Nothing here starts a kernel: notebook execution is tested in test_notebooks.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from pathlib import Path

import nbformat
import pytest

from utae import cli
from utae.sweep import point as pt
from utae.sweep import orchestrate as sw
from utae.config import run_config as cfg_mod
from utae.config import sweepfile
from utae.config.run_config import RunConfig
from utae.rundir.paths import report_path, run_path

from helpers import write_sweep

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_grid_times_fixed(tmp_path, data_root):
    path = write_sweep(tmp_path, {
        "name": "t", "dataset_root": str(data_root),
        "fixed": {"epochs": 2, "test_noise_stds": [0.0, 1.0]},
        "grid": {"noise_std": [0.0, 0.25, 1.0], "seed": [0, 1]},
    })
    s = sweepfile.load_sweep(path)
    assert [p.run_id for p in s.points] == [
        "noise0-seed0", "noise0-seed1", "noise0.25-seed0", "noise0.25-seed1", "noise1-seed0", "noise1-seed1"]
    p = s.point("noise0.25-seed1")
    assert p.params == {"dataset_root": str(data_root), "epochs": 2, "test_noise_stds": [0.0, 1.0],
                        "noise_std": 0.25, "seed": 1}
    assert p.grid_values == {"noise_std": 0.25, "seed": 1}
    assert s.name == "t" and s.timeout == sweepfile.DEFAULT_TIMEOUT
    with pytest.raises(sweepfile.SweepError, match="noise0.25-seed2"):
        s.point("noise0.25-seed2")


def test_no_grid_is_one_point(tmp_path, data_root):
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "epochs": 1}))
    assert [p.run_id for p in s.points] == ["run"]


@pytest.mark.parametrize("section", ["grid", "fixed", "top"])
def test_unknown_parameter_is_a_clear_error(tmp_path, data_root, section):
    doc = {"dataset_root": str(data_root), "grid": {"seed": [0]}, "fixed": {"epochs": 1}}
    if section == "grid":
        doc["grid"]["noise_sdt"] = [0.0, 1.0]
    elif section == "fixed":
        doc["fixed"]["noise_sdt"] = 1.0
    else:
        doc["noise_sdt"] = 1.0
    path = write_sweep(tmp_path, doc)
    with pytest.raises(sweepfile.SweepError) as info:
        sweepfile.load_sweep(path)
    text = str(info.value)
    assert "noise_sdt" in text and str(path) in text and "train_eval.ipynb" in text
    assert "noise_std" in text  # the suggestion


KERNELSPEC = {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}


def test_parameter_unknown_to_the_notebook_fails_even_without_runconfig_check(tmp_path, data_root):
    """Validation is against the notebook's parameters cell itself (papermill would only warn)."""
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("dataset_root = ''\nepochs = 1", metadata={"tags": ["parameters"]})],
        metadata=KERNELSPEC)
    nb_path = tmp_path / "nb.ipynb"
    nbformat.write(nb, nb_path)
    path = write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"seed": [0, 1]}})
    with pytest.raises(sweepfile.SweepError, match="unknown parameter 'seed' in grid"):
        sweepfile.load_sweep(path, notebook=nb_path, check_run_config=False)


def test_notebook_without_parameters_cell(tmp_path, data_root):
    nb_path = tmp_path / "nb.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")], metadata=KERNELSPEC), nb_path)
    path = write_sweep(tmp_path, {"dataset_root": str(data_root)})
    with pytest.raises(sweepfile.SweepError, match="parameters"):
        sweepfile.load_sweep(path, notebook=nb_path)


def test_environment_variables(tmp_path, data_root):
    path = write_sweep(tmp_path, {"dataset_root": "${MY_DATA}", "fixed": {"epochs": 1}})
    s = sweepfile.load_sweep(path, env={"MY_DATA": str(data_root)})
    assert s.points[0].params["dataset_root"] == str(data_root)
    with pytest.raises(sweepfile.SweepError) as info:
        sweepfile.load_sweep(path, env={})
    assert "MY_DATA" in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("doc, match", [
    ({"fixed": {"out_dir": "x"}}, "set by the sweep"),
    ({"grid": {"run_id": ["a", "b"]}}, "set by the sweep"),
    ({"grid": {"seed": []}}, "non-empty list"),
    ({"grid": {"seed": 3}}, "non-empty list"),
    ({"grid": {"seed": [0]}, "fixed": {"seed": 1}}, "both fixed and in the grid"),
    ({"epochs": 1, "fixed": {"epochs": 2}}, "both at the top level and in fixed"),
    ({"grid": {"noise_std": [0.5, "0.5"]}}, "both get run_id"),
    ({"timeout": -5}, "timeout"),
    ({"fixed": [1, 2]}, "'fixed' must be a mapping"),
])
def test_bad_sweeps(tmp_path, data_root, doc, match):
    path = write_sweep(tmp_path, {"dataset_root": str(data_root), **doc})
    with pytest.raises(sweepfile.SweepError, match=match):
        sweepfile.load_sweep(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(sweepfile.SweepError, match="not found"):
        sweepfile.load_sweep(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [unclosed\n")
    with pytest.raises(sweepfile.SweepError, match="bad.yaml"):
        sweepfile.load_sweep(bad)
    bad.write_text("- a list\n")
    with pytest.raises(sweepfile.SweepError, match="mapping"):
        sweepfile.load_sweep(bad)


def test_run_ids_are_filesystem_safe():
    assert cfg_mod.run_id_for({}) == "run"
    assert cfg_mod.run_id_for({"fold": 2, "noise_std": 1e-3, "seed": 0}) == "fold2-noise0.001-seed0"
    assert cfg_mod.run_id_for({"noise_space": "raw", "noise_resample": True}) == "spaceraw-resample1"
    assert cfg_mod.run_id_for({"encoder_widths": [16, 32]}) == "enc16_32"
    rid = cfg_mod.run_id_for({"dataset_root": "/a b/c:d"})
    assert "/" not in rid and " " not in rid and ":" not in rid


def test_notebook_parameters_mirror_runconfig():
    """The parameters cell of train_eval.ipynb has one variable per RunConfig field, with its default
    (dataset_root excepted: the notebook points at the synthetic dataset), plus repo_url for Colab."""
    params = sweepfile.notebook_parameters(sweepfile.TRAIN_NOTEBOOK)
    fields = cfg_mod.run_config_fields()
    assert set(params) == set(fields) | {"repo_url"}
    for name, default in fields.items():
        if name == "dataset_root":
            continue
        expected = tuple(default) if isinstance(default, (list, tuple)) else default
        got = tuple(params[name]) if isinstance(params[name], (list, tuple)) else params[name]
        assert got == expected, f"parameter {name}: notebook default {got!r} != RunConfig default {expected!r}"
    assert [f.name for f in dataclasses.fields(RunConfig)] == [n for n in params if n != "repo_url"]


@pytest.mark.parametrize("sweep_file", sorted((REPO_ROOT / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweeps_are_valid(sweep_file, tmp_path):
    import re

    text = sweep_file.read_text()
    # Every ${VAR} the file uses (PASTIS_ROOT, UTAE_WEIGHTS, ...) points into the temporary folder.
    env = {name: str(tmp_path / name) for name in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text)}
    s = sweepfile.load_sweep(sweep_file, env=env)
    assert s.points
    for point in s.points:
        params = dict(point.params)
        root = Path(params["dataset_root"])
        params["dataset_root"] = str(tmp_path)  # RunConfig checks that the folder exists
        if params.get("init_weights"):  # ... and that the weights file exists: an empty stand-in
            weights = Path(str(params["init_weights"]).replace("{fold}", str(params.get("fold", 1))))
            weights.parent.mkdir(parents=True, exist_ok=True)
            weights.touch()
        RunConfig.from_dict(params)
        assert "/" not in point.run_id
        if "PASTIS_ROOT" not in sweep_file.read_text():
            assert not root.is_absolute()  # the synthetic sweep works from any clone


def test_default_sweep_is_the_study_grid():
    s = sweepfile.load_sweep(REPO_ROOT / "params" / "default.yaml")
    assert len(s.grid["noise_std"]) >= 5 and len(s.grid["seed"]) >= 3
    root = Path(s.fixed["dataset_root"])
    assert not root.is_absolute() and root.parts[0] == "data"  # generated inside the clone (ignored by git)
    assert s.synthetic is not None  # make reproduce generates it
    assert s.fixed["lr_schedule"] != "constant" and s.fixed["epochs"] >= 3  # the schedule settles the last epochs


def test_default_results(monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    assert sw.default_results(REPO_ROOT / "params" / "default.yaml") == Path("results")
    assert sw.default_results("params/default.yaml") == Path("results")
    assert sw.default_results("params/paper.yaml") == Path("results/paper")
    assert sw.default_results("/elsewhere/default.yaml") == Path("results/default")  # not the shipped default


def test_prepare_sweep_generates_the_synthetic_root_once(tmp_path, monkeypatch):
    synth = tmp_path / "synth"
    calls = []

    def fake_make(root, **kwargs):
        calls.append(Path(root))
        Path(root).mkdir(parents=True)
        return Path(root)

    monkeypatch.setattr(sw, "make_synthetic_pastis", fake_make)
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(synth), "grid": {"seed": [0, 1, 2]}}))
    sw.prepare_sweep(s, synthetic_root=synth)
    assert calls == [synth]  # three points, one dataset
    sw.prepare_sweep(s, synthetic_root=synth)
    assert calls == [synth]  # there now
    other = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(tmp_path / "real"), "grid": {"seed": [0]}},
                                           name="other.yaml"))
    with pytest.raises(sweepfile.SweepError, match="PASTIS_ROOT"):
        sw.prepare_sweep(other, synthetic_root=synth)


def test_synthetic_key_generates_its_dataset_and_refuses_other_options(tmp_path, caplog):
    """A sweep's ``synthetic:`` options are the generator's: the dataset_root is written with them (recorded in
    SYNTHETIC.json), kept when they match, and refused, naming the differing option, when they do not."""
    import numpy as np

    from utae.pastis.layout import image_path
    from utae.pastis.synthetic import OPTIONS_FILE, read_generator_options

    root = tmp_path / "synth"
    doc = {"dataset_root": str(root), "synthetic": {"n_patches": 5, "size": 8, "t_range": [3, 4]},
           "grid": {"seed": [0, 1]}}
    s = sweepfile.load_sweep(write_sweep(tmp_path, doc))
    assert s.synthetic["t_range"] == [3, 4] and s.synthetic["noise"] == 1.0  # the defaults filled in
    caplog.set_level(logging.INFO, logger="utae")
    sw.prepare_sweep(s, synthetic_root=None)
    assert read_generator_options(root) == s.synthetic
    images = sorted((root / "DATA_S2").glob("*.npy"))
    assert len(images) == 5
    assert {np.load(p, mmap_mode="r").shape[0] for p in images} <= {3, 4}
    stamp = (root / OPTIONS_FILE).stat().st_mtime_ns
    sw.prepare_sweep(s, synthetic_root=None)  # same options: kept, not rewritten
    written = [r for r in caplog.records if "synthetic dataset written" in r.getMessage()]
    assert (root / OPTIONS_FILE).stat().st_mtime_ns == stamp and len(written) == 1

    changed = sweepfile.load_sweep(write_sweep(tmp_path, {**doc, "synthetic": {**doc["synthetic"], "t_range": [5, 6]}},
                                             name="changed.yaml"))
    with pytest.raises(sweepfile.SweepError, match=r"changed.yaml.*t_range.*\[3, 4\].*\[5, 6\].*delete the folder"):
        sw.prepare_sweep(changed, synthetic_root=None)
    assert image_path(root, int(images[0].stem.split("_")[1])).is_file()  # nothing deleted

    (root / OPTIONS_FILE).unlink()  # a dataset from before the record, or one copied by hand
    with pytest.raises(sweepfile.SweepError, match="no record of its options"):
        sw.prepare_sweep(s, synthetic_root=None)


@pytest.mark.parametrize("synthetic, match", [
    ({"t_rnage": [3, 4]}, r"synthetic: unknown synthetic-data option\(s\) \['t_rnage'\]; known: .*t_range"),
    ({"t_range": 12}, "t_range must be two integers"),
    ([10, 14], "'synthetic' must be a mapping"),
])
def test_bad_synthetic_key(tmp_path, synthetic, match):
    path = write_sweep(tmp_path, {"dataset_root": str(tmp_path / "d"), "synthetic": synthetic, "grid": {"seed": [0]}})
    with pytest.raises(sweepfile.SweepError, match=match):
        sweepfile.load_sweep(path)


def test_prepare_sweep_checks_every_point_first(tmp_path, data_root):
    bad = write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"fold": [1, 7]}}, name="bad.yaml")
    with pytest.raises(sweepfile.SweepError, match="fold7.*fold"):
        sw.prepare_sweep(sweepfile.load_sweep(bad), synthetic_root=None)


def test_study_folders(tmp_path, monkeypatch):
    """make report without RESULTS: results itself and every results/*/ that holds finished runs."""
    for rel in ("results/runs/p/r/metrics.json", "results/study-a/runs/p/r/metrics.json",
                "results/bench/p.csv", "results/unfinished/runs/p/r/config.json"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("{}")
    assert sw.study_folders(tmp_path / "results") == [tmp_path / "results", tmp_path / "results" / "study-a"]
    monkeypatch.chdir(tmp_path / "results" / "bench")
    with pytest.raises(sweepfile.SweepError, match="no results folder with finished runs"):
        sw.report_studies([])
    with pytest.raises(sweepfile.SweepError, match="no finished run"):
        sw.report_studies([tmp_path / "results" / "unfinished"])


def test_default_jobs(tmp_path, data_root, monkeypatch):
    path = write_sweep(tmp_path, {"dataset_root": str(data_root), "fixed": {"device": "cpu"},
                                  "grid": {"seed": [0, 1, 2, 3, 4]}})
    s = sweepfile.load_sweep(path)
    monkeypatch.setattr(sw.os, "cpu_count", lambda: 4)
    assert sw.default_jobs(s) == 4  # one a core
    monkeypatch.setattr(sw.os, "cpu_count", lambda: 16)
    assert sw.default_jobs(s) == 5  # never more than the points
    assert sw.default_jobs(s, points=2) == 2  # never more than the points left to run


@pytest.mark.parametrize("flags, jobs", [("", 1), ("w", 1), (" -j2 --jobserver-auth=3,4", 2),
                                         ("ks -j3 --jobserver-auth=3,4 -- FOO=1", 3), ("w -j", None),
                                         (" -- X=-j4", 1)])
def test_make_jobs(monkeypatch, flags, jobs):
    monkeypatch.setenv("MAKEFLAGS", flags)
    monkeypatch.setattr(sw.os, "cpu_count", lambda: 8)
    assert pt.make_jobs() == (8 if jobs is None else jobs)


def test_thread_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(sw.os, "cpu_count", lambda: 4)
    monkeypatch.setenv("MAKEFLAGS", " -j2")
    assert pt._thread_env(None) == {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    assert pt._thread_env(3)["OMP_NUM_THREADS"] == "3"
    monkeypatch.setenv("MAKEFLAGS", "")
    assert pt._thread_env(None) == {}
    monkeypatch.setenv("MAKEFLAGS", " -j2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert pt._thread_env(None) == {}  # the user's setting wins


def _never(*args, **kwargs):
    raise AssertionError("a finished point must not execute its notebook")


def test_finished_point_is_skipped_without_a_kernel(tmp_path, data_root, monkeypatch):
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"seed": [0]}}))
    run_dir, report = (run_path(tmp_path / "res", "plat", "seed0"), report_path(tmp_path / "res", "plat", "seed0"))
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text("{}")
    report.parent.mkdir(parents=True)
    report.write_text("<html></html>")
    monkeypatch.setattr(sw, "execute_notebook", _never)
    assert pt.run_point(s, "seed0", results=tmp_path / "res", platform="plat") == "skipped"
    assert report.read_text() == "<html></html>"


def test_finished_point_without_report_is_only_rendered(tmp_path, data_root, monkeypatch):
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"seed": [0]}}))
    run_dir, report = (run_path(tmp_path / "res", "plat", "seed0"), report_path(tmp_path / "res", "plat", "seed0"))
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text("{}")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# A run"),
                                         nbformat.v4.new_code_cell("secret_code()", outputs=[
                                             nbformat.v4.new_output("stream", text="visible output")])])
    nbformat.write(nb, run_dir / "run.ipynb")
    monkeypatch.setattr(sw, "execute_notebook", _never)
    assert pt.run_point(s, "seed0", results=tmp_path / "res", platform="plat") == "rendered"
    page = report.read_text()
    assert "visible output" in page and "secret_code" not in page and "<title>A run</title>" in page
    assert 'href="../index.html"' in page


def test_bad_value_fails_before_any_kernel(tmp_path, data_root, monkeypatch):
    s = sweepfile.load_sweep(write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"fold": [9]}}))
    monkeypatch.setattr(sw, "execute_notebook", _never)
    with pytest.raises(sweepfile.SweepError, match="fold"):
        pt.run_point(s, "fold9", results=tmp_path / "res", platform="plat")


def test_cli_reports_errors(tmp_path, data_root, capsys):
    path = write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"sede": [0]}})
    assert cli.main(["list", str(path)]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter 'sede'" in err and str(path) in err
    good = write_sweep(tmp_path, {"dataset_root": str(data_root), "grid": {"seed": [0, 1]}}, name="good.yaml")
    assert cli.main(["list", str(good)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[0] for line in out] == ["seed0", "seed1"]
    assert cli.main(["run-all", str(path), "--results", str(tmp_path / "r")]) == 2
    assert "unknown parameter 'sede'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # nothing written before the sweep is valid



def _make(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", *args, "VENV_DEP="], cwd=REPO_ROOT, env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("target", ["import", "gpu-import"])
def test_import_names_a_platform_only_when_as_is_given(target):
    # AS is also make's built-in variable for the assembler ("as"): it must not become a platform name.
    plain = _make("-n", target, "FROM=folder")
    assert plain.returncode == 0 and "'folder'" in plain.stdout and "--as" not in plain.stdout, plain.stdout
    named = _make("-n", target, "FROM=folder", "AS=cuda-x")
    assert "--as 'cuda-x'" in named.stdout, named.stdout
    missing = _make(target)
    assert missing.returncode == 2 and f"make {target} needs FROM=" in missing.stderr


def test_clean_results_asks_first(tmp_path):
    results = tmp_path / "results"
    for rel in ("runs/p/r/metrics.json", "reports/index.html", "summary.csv", "bench/p.csv"):
        (results / rel).parent.mkdir(parents=True, exist_ok=True)
        (results / rel).write_text("x")
    proc = _make("clean-results", f"RESULTS={results}", stdin="n\n")
    assert proc.returncode != 0 and "Nothing deleted" in proc.stdout
    assert (results / "runs/p/r/metrics.json").is_file()
    proc = _make("clean-results", f"RESULTS={results}", stdin="")  # no terminal, no answer: nothing deleted
    assert proc.returncode != 0 and (results / "summary.csv").is_file()
    proc = _make("clean-results", f"RESULTS={results}", stdin="y\n")
    assert proc.returncode == 0 and not (results / "runs").exists()
    (results / "runs").mkdir()
    proc = _make("clean-results", f"RESULTS={results}", "YES=1")
    assert proc.returncode == 0
    assert not (results / "runs").exists() and not (results / "reports").exists()
    assert not (results / "summary.csv").exists()
    assert (results / "bench/p.csv").is_file()  # benchmark tables are not runs


def test_a_finished_run_without_its_notebook_gets_its_page_from_its_files(tmp_path):
    """A committed or imported run has no run.ipynb (notebooks stay out of git): when its report is missing,
    render_reports writes the page made from the run's files, and leaves an existing one as it is."""
    import json
    import shutil

    committed = sorted((Path(__file__).resolve().parents[2] / "results" / "runs").glob("*/noise0-seed0"))[0]
    run_dir = tmp_path / "runs" / committed.parent.name / committed.name
    shutil.copytree(committed, run_dir, ignore=shutil.ignore_patterns("*.ipynb", "*.pt", "tensorboard", ".lock"))
    assert not (run_dir / "run.ipynb").exists()
    done = sw.render_reports(tmp_path)
    page = report_path(tmp_path, committed.parent.name, committed.name)
    assert done == [page]
    miou = json.loads((run_dir / "metrics.json").read_text())["test"]["miou"]
    text = page.read_text()
    assert f"{miou:.4f}" in text and "<script" not in text
    assert "model utae (" in text  # the model line: a run older than the model record names the config's model
    assert sw.render_reports(tmp_path) == []  # there now: not rendered again
