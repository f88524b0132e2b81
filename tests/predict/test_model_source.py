"""Where the model and its normalisation come from: a run folder, official weights, and what is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from utae.pastis.metadata import FOLD_ROTATIONS, fold_norm_stats, read_norm
from utae.predict import PredictError
from utae.predict.model_source import PASTIS_PATCH, load_model_source, read_norm_file


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_run_folder_gives_its_best_weights_its_training_folds_statistics_and_its_patch_size(run_folder, run_model):
    source = load_model_source(run_folder)
    assert _same_weights(source.model, run_model["model"]) and not source.model.training
    mean, std = fold_norm_stats(read_norm(run_model["dataset_root"]), FOLD_ROTATIONS[0][0])
    np.testing.assert_array_equal(source.mean, mean)
    np.testing.assert_array_equal(source.std, std)
    assert source.window == 32 and source.multiple == 8
    assert source.record["kind"] == "run" and len(source.record["sha256"]) == 64
    assert load_model_source(run_folder / "checkpoint.pt").window == 32  # the checkpoint itself: the same run


def test_a_run_whose_dataset_is_elsewhere_needs_the_norm(run_folder, run_model, tmp_path):
    moved = Path(shutil.copytree(run_folder, tmp_path / "run"))
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "dataset_root": "/nowhere/PASTIS"}))
    with pytest.raises(PredictError, match=r"/nowhere/PASTIS has no NORM_S2_patch.json here; give .*--norm"):
        load_model_source(moved)
    norm = Path(run_model["dataset_root"]) / "NORM_S2_patch.json"
    source = load_model_source(moved, norm=norm)
    assert source.window == PASTIS_PATCH  # the dataset is not here to say its patch size
    np.testing.assert_array_equal(source.mean, run_model["mean"])
    plain = tmp_path / "stats.json"
    plain.write_text(json.dumps({"mean": [1.0] * 10, "std": [2.0] * 10}))
    assert load_model_source(moved, norm=plain, window=64).mean.tolist() == [1.0] * 10


def test_a_run_without_its_checkpoint(run_folder, tmp_path):
    moved = Path(shutil.copytree(run_folder, tmp_path / "run"))
    (moved / "checkpoint.pt").unlink()
    with pytest.raises(PredictError, match="no checkpoint.pt"):
        load_model_source(moved)


def test_official_weights_of_another_architecture_are_refused(run_model, tmp_path):
    fold = tmp_path / "UTAE" / "Fold_2"
    fold.mkdir(parents=True)
    torch.save({"state_dict": run_model["model"].state_dict()}, fold / "model.pth.tar")
    norm = Path(run_model["dataset_root"]) / "NORM_S2_patch.json"
    with pytest.raises(PredictError, match="missing key|unexpected key|has shape"):  # the official widths are built
        load_model_source(fold / "model.pth.tar", norm=norm)
    (tmp_path / "UTAE" / "conf.json").write_text(json.dumps({"agg_mode": "att_mean"}))
    with pytest.raises(PredictError, match="agg_mode"):
        load_model_source(fold / "model.pth.tar", norm=norm)


def test_norm_files(run_model, tmp_path):
    root = Path(run_model["dataset_root"])
    mean, std, described = read_norm_file(root, fold=2)  # the folder, fold rotation 2's training folds
    np.testing.assert_array_equal(mean, fold_norm_stats(read_norm(root), FOLD_ROTATIONS[1][0])[0])
    assert "training folds [2, 3, 4]" in described
    with pytest.raises(PredictError, match="needs the fold rotation"):
        read_norm_file(root / "NORM_S2_patch.json", fold=None)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"mean": [1.0] * 9, "std": [1.0] * 10}))
    with pytest.raises(PredictError, match="10 finite numbers"):
        read_norm_file(bad, fold=None)
    bad.write_text("{not json")
    with pytest.raises(PredictError, match="not a JSON file"):
        read_norm_file(bad, fold=None)


def test_a_window_the_model_cannot_take(run_folder, tmp_path):
    with pytest.raises(PredictError, match="window must be a multiple of 8 px"):
        load_model_source(run_folder, window=30)
    with pytest.raises(PredictError, match="model: no such file or folder"):
        load_model_source(tmp_path / "missing")


def _without_dataset(folder: Path, tmp_path: Path, drop: tuple[str, ...] = ()) -> Path:
    """A copy of run ``folder`` whose dataset_root is not on this machine, without the metrics.json keys ``drop``."""
    moved = Path(shutil.copytree(folder, tmp_path / "run"))
    config = json.loads((moved / "config.json").read_text())
    (moved / "config.json").write_text(json.dumps({**config, "dataset_root": "/nowhere/PASTIS"}))
    metrics = json.loads((moved / "metrics.json").read_text())
    (moved / "metrics.json").write_text(json.dumps({k: v for k, v in metrics.items() if k not in drop}))
    return moved


@pytest.mark.slow  # trains a run
def test_a_run_records_its_normalisation_and_patch_size_and_predict_uses_them(trained_run, tmp_path):
    run = trained_run("unet3d")
    metrics = json.loads((run["folder"] / "metrics.json").read_text())
    assert metrics["normalisation"] == {"mean": np.asarray(run["mean"], np.float32).tolist(),
                                        "std": np.asarray(run["std"], np.float32).tolist(),
                                        "folds": list(FOLD_ROTATIONS[0][0])}
    assert metrics["patch_size"] == 32
    moved = _without_dataset(run["folder"], tmp_path)
    source = load_model_source(moved)  # neither the dataset nor --norm
    assert _same_weights(source.model, run["model"]) and source.window == 32 and source.multiple == 4
    np.testing.assert_array_equal(source.mean, run["mean"])
    np.testing.assert_array_equal(source.std, run["std"])
    assert source.record["norm_source"] == "run" and "training folds [1, 2, 3]" in source.record["norm"]
    assert source.record["name"] == "unet3d" and source.record["uses_dates"] is False
    plain = tmp_path / "stats.json"
    plain.write_text(json.dumps({"mean": [1.0] * 10, "std": [2.0] * 10}))
    overridden = load_model_source(moved, norm=plain)  # --norm overrides the record
    assert overridden.mean.tolist() == [1.0] * 10 and overridden.record["norm_source"] == "norm"
    with pytest.raises(PredictError, match="window must be a multiple of 4 px"):
        load_model_source(moved, window=30)


@pytest.mark.slow  # trains a run
def test_a_run_without_the_records_falls_back_to_norm_and_its_dataset(trained_run, tmp_path):
    run = trained_run("convlstm")
    old = _without_dataset(run["folder"], tmp_path, drop=("normalisation", "patch_size"))
    with pytest.raises(PredictError, match=r"not recorded .* give .*--norm"):
        load_model_source(old)
    norm = Path(run["dataset_root"]) / "NORM_S2_patch.json"
    source = load_model_source(old, norm=norm, window=32)
    np.testing.assert_array_equal(source.mean, run["mean"])
    assert source.record["norm_source"] == "norm" and _same_weights(source.model, run["model"])
    config = json.loads((old / "config.json").read_text())  # its dataset here again: the statistics and size
    (old / "config.json").write_text(json.dumps({**config, "dataset_root": run["dataset_root"]}))
    source = load_model_source(old)
    assert source.record["norm_source"] == "dataset" and source.window == 32
    np.testing.assert_array_equal(source.std, run["std"])
    # a TSViT's position embedding is of its patch size: without the record or the dataset, --window gives it
    tsvit = _without_dataset(trained_run("tsvit")["folder"], tmp_path / "tsvit", drop=("normalisation", "patch_size"))
    with pytest.raises(PredictError, match=r"has shape .* \(built for 128 px: .* give it with --window\)$"):
        load_model_source(tsvit, norm=norm)
    assert load_model_source(tsvit, norm=norm, window=32).window == 32


@pytest.mark.slow  # trains runs
@pytest.mark.parametrize("name", ["convlstm", "tsvit"])
def test_a_model_built_for_its_patch_size_refuses_another_window(trained_run, name):
    folder = trained_run(name)["folder"]
    assert load_model_source(folder, window=32).window == 32
    with pytest.raises(PredictError, match=rf"^window \(--window\) must be 32 px for model '{name}': .* got 64$"):
        load_model_source(folder, window=64)
