"""Every registered model trains through a run (``utae.training.run.run``): one epoch on a tiny synthetic PASTIS
(32x32 px, 10 patches of 4 to 6 dates) with tiny widths; the run records its model, the same-run rule covers
``model_options``, and a date-free model goes through the corruption evaluation."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers import TINY_MODELS
from utae.config.run_config import RunConfig
from utae.models.registry import BUILTIN, count_parameters, list_models
from utae.rundir.paths import RunDirError
from utae.training.engine import build_model
from utae.training.run import run

pytestmark = pytest.mark.slow

SIZE = 32
#: Each registered model's tiny widths (tests/helpers.py), and an option changed to make another run of it.
TINY = TINY_MODELS
#: For the same-run check: an option of each model set to another valid value.
OTHER_OPTION: dict[str, dict[str, Any]] = {
    "utae": {"agg_mode": "att_mean"}, "unet3d": {"feats": 2}, "convlstm": {"hidden_dim": 6},
    "convgru": {"hidden_dim": 6}, "fpn_convlstm": {"global_pool": "mean"}, "uconvlstm": {"classify": "hidden"},
    "buconvlstm": {"classify": "hidden"}, "tsvit": {"unpatchify": "geometric"},
}


@pytest.fixture(scope="module")
def tiny_root(synthetic_pastis) -> str:
    """10 patches of 32x32 (2 per fold: 6 train, 2 val, 2 test), 4 to 6 dates each."""
    return str(synthetic_pastis(n_patches=10, size=SIZE, t_range=(4, 6), seed=0))


def _config(root: str, out: Path, name: str, **changes: Any) -> RunConfig:
    fields = {**TINY.get(name, {}), **changes}
    return RunConfig(dataset_root=root, out_dir=str(out), model=name, epochs=1, batch_size=2, device="cpu",
                     deterministic=True, progress=False, n_examples=1, **fields)


def _finite_scores(block: dict) -> None:
    for key in ("oa", "miou", "loss"):
        assert isinstance(block[key], float) and math.isfinite(block[key]), (key, block[key])
    assert 0.0 <= block["oa"] <= 1.0 and 0.0 <= block["miou"] <= 1.0


def test_every_builtin_model_has_tiny_widths():
    assert set(BUILTIN) == set(TINY) == set(OTHER_OPTION)


@pytest.mark.parametrize("name", list_models())
def test_model_trains_through_a_run(name: str, tiny_root: str, tmp_path: Path) -> None:
    out = tmp_path / name
    config = _config(tiny_root, out, name)
    metrics = run(config)
    assert metrics["epochs_completed"] == 1 and metrics["best_epoch"] == 1
    for split in ("train", "val", "test"):
        _finite_scores(metrics[split])
    assert np.load(out / "confusion.npy").sum() == metrics["n_test"] * SIZE * SIZE
    # the record of the model: its name, the options it was built with, and its trainable parameters, counted
    # again here on a model built from the config alone
    record = metrics["model"]
    assert record["name"] == name
    expected = dict(TINY.get(name, {}).get("model_options", {}))
    if name == "utae":
        expected = {k: list(v) if isinstance(v, tuple) else v for k, v in TINY["utae"].items()}
    assert {k: v for k, v in record["options"].items() if k in expected} == expected
    assert record["parameters"] == count_parameters(build_model(config, SIZE)) > 0

    # the same config on the same folder is the same run: returned at once, as it was
    assert run(config) == metrics
    # another model_options on the same folder is another run: refused, naming model_options
    other = {**config.model_options, **OTHER_OPTION.get(name, {"__other__": 1})}
    with pytest.raises(RunDirError, match="model_options"):
        run(config.replace(model_options=other))


def test_date_free_model_under_test_corruptions(tiny_root: str, tmp_path: Path) -> None:
    """U-Net3D reads no dates: a shifted calendar leaves its test scores exactly as they are clean (the same
    images in the same groups through the same eval-mode network), and missing dates at severity 5 leave it
    1 real frame of 4 to 6 (its short-series path: fewer than 4 frames)."""
    config = _config(tiny_root, tmp_path / "unet3d", "unet3d", test_corruptions=("date_shift:5", "missing_dates:5"))
    metrics = run(config)
    tested = {(e["kind"], e["severity"]): e for e in metrics["test_corruptions"]}
    assert set(tested) == {("date_shift", 5), ("missing_dates", 5)}
    for entry in tested.values():
        assert math.isfinite(entry["oa"]) and math.isfinite(entry["miou"])
    clean = metrics["test"]
    shifted = tested[("date_shift", 5)]
    assert (shifted["oa"], shifted["miou"], shifted["iou"]) == (clean["oa"], clean["miou"], clean["iou"])
    assert metrics["timing"]["test_corruptions_s"] > 0
