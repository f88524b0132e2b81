"""Bring your own model: a sweep names a builder by import path (``model: "external_model:build"``, the module
tests/models/external_model.py), and one point of it runs through the point runner (utae.sweep.point.run_point:
the train_eval notebook in a papermill kernel, which finds the module on its PYTHONPATH)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from helpers import write_sweep
from utae.config.sweepfile import load_sweep
from utae.rundir.paths import report_path, run_path

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def test_a_sweep_point_trains_a_model_named_by_import_path(synthetic_pastis, tmp_path, monkeypatch):
    import utae.sweep.point as pt

    data = synthetic_pastis(n_patches=10, size=32, t_range=(4, 6), seed=0)
    fixed = {"epochs": 1, "batch_size": 2, "device": "cpu", "deterministic": True, "progress": False,
             "n_examples": 1, "model": "external_model:build", "model_options": {"width": 4}}
    sweep = load_sweep(write_sweep(tmp_path, {"dataset_root": str(data), "fixed": fixed, "grid": {"seed": [0]}}))
    # the kernel inherits this process's environment: the package and the user's module on its path
    path = [str(HERE), os.environ.get("PYTHONPATH") or str(REPO_ROOT)]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))
    results = tmp_path / "results"
    assert pt.run_point(sweep, "seed0", results=results, platform="plat", threads=1) == "executed"
    metrics = json.loads((run_path(results, "plat", "seed0") / "metrics.json").read_text())
    # FrameMean(width=4): a 3x3 convolution 10 -> 4 and a 1x1 convolution 4 -> 20, with biases
    assert metrics["model"] == {"name": "external_model:build", "options": {"width": 4},
                                "parameters": (9 * 10 + 1) * 4 + (4 + 1) * 20}
    assert metrics["epochs_completed"] == 1 and 0.0 <= metrics["test"]["miou"] <= 1.0
    page = report_path(results, "plat", "seed0").read_text()
    assert "model external_model:build (width=4): 464 trainable parameters" in page  # the notebook's model line
