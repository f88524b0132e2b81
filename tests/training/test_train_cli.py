"""``python -m utae.train``: an error the user can fix (the config, the data, the run folder) is one line,
``error: ...``, with exit status 2: no traceback, no papermill lines."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import utae.train as train_mod
from utae.config.run_config import RunConfig

from helpers import tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]


def _config_file(tmp_path: Path, dataset_root: str | Path, **fields) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"dataset_root": str(dataset_root), "out_dir": str(tmp_path / "out"),
                                    "device": "cpu", "epochs": 1, "progress": False,
                                    **tiny_model(levels=3, lists=True), **fields}))
    return path


def _error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.slow  # a new python process: seconds of imports
def test_a_missing_dataset_root_is_one_line_in_a_subprocess(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-pastis"
    path = _config_file(tmp_path, missing)
    proc = subprocess.run([sys.executable, "-m", "utae.train", "--config", str(path)], cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc
    line = _error_line(proc.stderr)
    assert "dataset_root" in line and str(missing) in line
    assert "Traceback" not in proc.stderr and "Input Notebook" not in proc.stdout + proc.stderr


def test_a_malformed_set_value_is_one_line(tmp_path: Path, data_root: Path, capsys, caplog) -> None:
    caplog.set_level(logging.INFO)  # what a process that shows INFO logs would show: no papermill lines either
    path = _config_file(tmp_path, data_root)
    assert train_mod.main(["--config", str(path), "--set", "encoder_widths=[8,8"]) == 2
    captured = capsys.readouterr()
    line = _error_line(captured.err)
    assert line.startswith("error: --set encoder_widths=[8,8: ") and "expected ',' or ']'" in line
    assert "Input Notebook" not in caplog.text + captured.out


def test_a_key_given_twice_is_one_line(tmp_path: Path, data_root: Path, capsys) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text(f"dataset_root: {data_root}\nout_dir: {tmp_path / 'out'}\nepochs: 1\nlr: 0.01\nepochs: 2\n")
    assert train_mod.main(["--config", str(path)]) == 2
    line = _error_line(capsys.readouterr().err)
    assert line == (f"error: {path}: line 5, column 1: the key 'epochs' is given twice, on lines 3 and 5 "
                    "(YAML would keep only the last); keep one")


def test_a_config_field_out_of_range_is_one_line(tmp_path: Path, data_root: Path, capsys) -> None:
    path = _config_file(tmp_path, data_root, lr=-1.0)
    assert train_mod.main(["--config", str(path)]) == 2
    assert "lr" in _error_line(capsys.readouterr().err)


@pytest.mark.parametrize("damage, expected", [
    (lambda root: (root / "metadata.geojson").write_text("{ not json"), "metadata.geojson: not valid JSON"),
    (lambda root: (root / "metadata.geojson").unlink(), "expected the file"),
])
def test_a_data_error_is_one_line(tmp_path: Path, synthetic_pastis, capsys, damage, expected) -> None:
    root = synthetic_pastis(copy_to=tmp_path / "pastis", n_patches=15, size=16, t_range=(3, 5), seed=11)
    damage(root)
    path = _config_file(tmp_path, root)
    RunConfig.from_dict(yaml.safe_load(path.read_text()))  # a valid config: the data is what is wrong
    assert train_mod.main(["--config", str(path)]) == 2
    line = _error_line(capsys.readouterr().err)
    assert expected in line and str(root / "metadata.geojson") in line
