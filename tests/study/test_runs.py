"""Tests of utae.study.runs: atomic writers and the run loaders on a hand-made results tree."""

from __future__ import annotations

import os
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from utae.pastis.classes import CLASS_NAMES
from utae.study.runs import PER_CLASS_COLUMNS, RUN_COLUMNS, TEST_NOISE_COLUMNS, load_histories, load_per_class_iou, load_runs, load_test_noise, platform_mismatches
from utae.util.atomic import atomic_save_npy, atomic_torch_save, atomic_write_csv, atomic_write_json, atomic_write_text, read_json
from utae.rundir.paths import SkippedRunWarning


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------- writers


def test_json_round_trip_with_nan_and_numpy_types(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.json"
    atomic_write_json(
        path,
        {
            "nan": float("nan"),
            "inf": np.float32("inf"),
            "i": np.int64(3),
            "f": np.float32(0.5),
            "b": np.bool_(True),
            "arr": np.array([[1, 2], [3, 4]]),
            "iou": [0.5, np.nan],
            "tup": (1, 2),
            "tensor": torch.tensor([1.5, float("nan")]),
            "path": tmp_path,
            np.int64(7): "numpy key",
        },
    )
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    data = read_json(path)
    assert data == {
        "nan": None,
        "inf": None,
        "i": 3,
        "f": 0.5,
        "b": True,
        "arr": [[1, 2], [3, 4]],
        "iou": [0.5, None],
        "tup": [1, 2],
        "tensor": [1.5, None],
        "path": str(tmp_path),
        "7": "numpy key",
    }
    assert _leftovers(path.parent) == []


def test_failed_json_write_keeps_the_previous_file_and_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    atomic_write_json(path, {"oa": 0.9})
    with pytest.raises(TypeError, match=r"metrics\.json.*object"):
        atomic_write_json(path, {"oa": 0.1, "bad": object()})
    assert read_json(path) == {"oa": 0.9}
    assert _leftovers(tmp_path) == []


class _Unpicklable:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        raise RuntimeError("cannot pickle this")


def test_write_failing_midway_through_the_temp_file_keeps_the_previous_file(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.pt"
    atomic_torch_save(path, {"epoch": 1, "w": torch.ones(3)})
    with pytest.raises(RuntimeError, match="cannot pickle"):
        # a large tensor is serialised first, then the unpicklable object fails the save
        atomic_torch_save(path, {"epoch": 2, "w": torch.zeros(100_000), "z": _Unpicklable()})
    loaded = torch.load(path, weights_only=True)
    assert loaded["epoch"] == 1 and torch.equal(loaded["w"], torch.ones(3))
    assert _leftovers(tmp_path) == []


def test_text_npy_csv_writers(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a" / "b.txt", "héllo\n")
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    cm = np.arange(400, dtype=np.int64).reshape(20, 20)
    atomic_save_npy(tmp_path / "confusion.npy", cm)
    loaded = np.load(tmp_path / "confusion.npy")
    assert loaded.dtype == np.int64 and np.array_equal(loaded, cm)
    frame = pd.DataFrame({"epoch": [1, 2], "val_miou": [0.1, float("nan")]})
    atomic_write_csv(tmp_path / "history.csv", frame)
    back = pd.read_csv(tmp_path / "history.csv")
    assert list(back.columns) == ["epoch", "val_miou"] and math.isnan(back["val_miou"][1])
    with pytest.raises(TypeError, match="DataFrame"):
        atomic_write_csv(tmp_path / "x.csv", [1, 2])  # type: ignore[arg-type]
    assert _leftovers(tmp_path) == []


def test_read_json_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json(tmp_path / "missing.json")
    bad = tmp_path / "corrupt.json"
    bad.write_text('{"oa": 0.5,')
    with pytest.raises(ValueError, match="corrupt.json.*corrupt JSON"):
        read_json(bad)


# ---------------------------------------------------------------- loaders

HISTORY = pd.DataFrame(
    {
        "epoch": [1, 2],
        "train_loss": [2.0, 1.5],
        "train_oa": [0.3, 0.4],
        "train_miou": [0.1, 0.2],
        "val_loss": [2.1, 1.7],
        "val_oa": [0.3, 0.35],
        "val_miou": [0.1, 0.15],
        "sec_epoch": [1.0, 1.0],
        "train_samples_per_s": [10.0, 11.0],
        "eval_samples_per_s": [20.0, 21.0],
        "peak_mem_mb": [100.0, 100.0],
    }
)


def _make_run(root: Path, platform: str, run_id: str, noise_std: float, seed: int, oa: float,
              finished: bool = True) -> Path:
    run_dir = root / platform / run_id
    config = {"fold": 1, "seed": seed, "noise_std": noise_std, "encoder_widths": [16, 16, 16, 32],
              "test_noise_stds": [0.0, 0.5], "device": "cpu"}
    atomic_write_json(run_dir / "config.json", config)
    atomic_write_json(run_dir / "platform.json", {"device_kind": platform.split("-")[0], "torch_threads": 2})
    atomic_write_csv(run_dir / "history.csv", HISTORY)
    if not finished:
        return run_dir
    iou = [oa / 2] * 18 + [float("nan"), float("nan")]  # class 18 absent, 19 void
    test = {"oa": oa, "miou": oa / 2, "iou": iou, "macro_f1": 0.4, "loss": 1.2}
    metrics = {
        "run_id": run_id,
        "best_epoch": 2,
        "epochs_completed": 2,
        "n_train": 30,
        "n_val": 10,
        "n_test": 10,
        "train": {"oa": 0.4, "miou": 0.2, "loss": 1.5},
        "val": {"oa": 0.35, "miou": 0.15, "loss": 1.7, "iou": iou},
        "test": test,
        "test_noise": [
            {"std": 0.0, "oa": oa, "miou": oa / 2, "iou": iou},
            {"std": 0.5, "oa": oa - 0.1, "miou": float("nan"), "iou": iou},
        ],
        "timing": {"sec_per_epoch": 1.0, "train_samples_per_s": 10.5, "eval_samples_per_s": 20.5,
                   "peak_mem_mb": 100.0, "total_s": 2.5},
    }
    atomic_write_json(run_dir / "metrics.json", metrics)
    return run_dir


@pytest.fixture()
def runs_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    _make_run(root, "cpu-amd-epyc", "std0.0_seed0", 0.0, 0, 0.8)
    _make_run(root, "cpu-amd-epyc", "std0.5_seed0", 0.5, 0, 0.7)
    _make_run(root, "cuda-nvidia-h100", "std0.0_seed0", 0.0, 0, 0.81)
    _make_run(root, "cuda-nvidia-h100", "std0.5_seed1", 0.5, 1, 0.72)
    _make_run(root, "cuda-nvidia-h100", "unfinished", 0.5, 2, 0.0, finished=False)
    (root / "cpu-amd-epyc" / "notes.txt").write_text("not a run")
    return root


def test_load_runs(runs_root: Path) -> None:
    runs = load_runs(runs_root)
    assert len(runs) == 4
    assert list(runs.columns[: len(RUN_COLUMNS)]) == list(RUN_COLUMNS)
    assert "unfinished" not in set(runs["run_id"])
    assert list(zip(runs["platform"], runs["run_id"])) == [
        ("cpu-amd-epyc", "std0.0_seed0"),
        ("cpu-amd-epyc", "std0.5_seed0"),
        ("cuda-nvidia-h100", "std0.0_seed0"),
        ("cuda-nvidia-h100", "std0.5_seed1"),
    ]
    row = runs.iloc[1]
    assert row["test_oa"] == pytest.approx(0.7) and row["test_miou"] == pytest.approx(0.35)
    assert row["val_miou"] == pytest.approx(0.15) and row["train_oa"] == pytest.approx(0.4)
    assert row["best_epoch"] == 2 and row["sec_per_epoch"] == 1.0 and row["peak_mem_mb"] == 100.0
    assert row["train_samples_per_s"] == 10.5 and row["eval_samples_per_s"] == 20.5
    assert row["cfg_noise_std"] == 0.5 and row["cfg_seed"] == 0
    assert row["cfg_encoder_widths"] == (16, 16, 16, 32)
    assert row["plat_device_kind"] == "cpu" and row["plat_torch_threads"] == 2
    assert Path(row["run_dir"]) == runs_root / "cpu-amd-epyc" / "std0.5_seed0"
    # configs are groupable (tuples are hashable)
    assert runs.groupby(["cfg_noise_std", "cfg_encoder_widths"]).size().tolist() == [2, 2]


def test_load_test_noise(runs_root: Path) -> None:
    noise = load_test_noise(runs_root)
    assert list(noise.columns) == list(TEST_NOISE_COLUMNS)
    assert len(noise) == 8  # 4 finished runs x 2 levels, clean level not duplicated
    row = noise[(noise["platform"] == "cuda-nvidia-h100") & (noise["run_id"] == "std0.5_seed1")
                & (noise["test_noise_std"] == 0.5)].iloc[0]
    assert row["oa"] == pytest.approx(0.62) and math.isnan(row["miou"])
    assert row["cfg_noise_std"] == 0.5 and row["cfg_seed"] == 1


def test_load_test_noise_adds_the_clean_level_when_missing(tmp_path: Path) -> None:
    run_dir = _make_run(tmp_path, "cpu-x", "r", 0.0, 0, 0.9)
    metrics = read_json(run_dir / "metrics.json")
    metrics["test_noise"] = metrics["test_noise"][1:]
    atomic_write_json(run_dir / "metrics.json", metrics)
    noise = load_test_noise(tmp_path)
    assert noise["test_noise_std"].tolist() == [0.0, 0.5]
    assert noise["oa"].tolist() == pytest.approx([0.9, 0.8])


def test_load_per_class_iou(runs_root: Path) -> None:
    per_class = load_per_class_iou(runs_root)
    assert list(per_class.columns) == list(PER_CLASS_COLUMNS)
    assert len(per_class) == 4 * 20
    first = per_class[(per_class["platform"] == "cpu-amd-epyc") & (per_class["run_id"] == "std0.0_seed0")]
    assert first["class_id"].tolist() == list(range(20))
    assert first["class_name"].tolist() == CLASS_NAMES
    assert first["iou"].iloc[0] == pytest.approx(0.4)
    assert first["iou"].iloc[18:].isna().all()


def test_load_histories(runs_root: Path) -> None:
    hist = load_histories(runs_root)
    assert list(hist.columns) == ["platform", "run_id"] + list(HISTORY.columns)
    assert len(hist) == 4 * len(HISTORY)
    assert "unfinished" not in set(hist["run_id"])
    with_unfinished = load_histories(runs_root, include_unfinished=True)
    assert len(with_unfinished) == 5 * len(HISTORY)


def test_loaders_on_an_empty_or_missing_root(tmp_path: Path) -> None:
    for root in (tmp_path / "missing", tmp_path):
        assert load_runs(root).empty and list(load_runs(root).columns) == list(RUN_COLUMNS)
        assert load_test_noise(root).empty and list(load_test_noise(root).columns) == list(TEST_NOISE_COLUMNS)
        assert load_per_class_iou(root).empty and list(load_per_class_iou(root).columns) == list(PER_CLASS_COLUMNS)
        assert load_histories(root).empty and list(load_histories(root).columns) == ["platform", "run_id"]


def test_a_corrupt_metrics_json_is_left_out_with_a_warning_naming_it(runs_root: Path) -> None:
    bad = runs_root / "cpu-amd-epyc" / "std0.5_seed0" / "metrics.json"
    bad.write_text('{"test": {"oa": 0.7')
    for loader in (load_runs, load_test_noise, load_per_class_iou):
        with pytest.warns(SkippedRunWarning, match=r"std0\.5_seed0.metrics\.json"):
            frame = loader(runs_root)
        assert "std0.5_seed0" not in set(frame.loc[frame["platform"] == "cpu-amd-epyc", "run_id"])
        assert len(set(zip(frame["platform"], frame["run_id"]))) == 3  # the others are all there


@pytest.mark.parametrize("content", ["not json", '{"device_kind": "cpu"', "[1, 2]", "{}"])
def test_a_broken_platform_or_config_json_is_left_out_with_a_warning(runs_root: Path, content: str) -> None:
    for name in ("platform.json", "config.json"):
        path = runs_root / "cuda-nvidia-h100" / "std0.0_seed0" / name
        saved = path.read_text()
        path.write_text(content)
        with pytest.warns(SkippedRunWarning, match=rf"std0\.0_seed0.{name.replace('.', '[.]')}"):
            runs = load_runs(runs_root)
        assert len(runs) == 3
        path.write_text(saved)


def test_a_platform_folder_named_otherwise_than_its_runs_is_reported(runs_root: Path) -> None:
    run = runs_root / "cpu-amd-epyc" / "std0.0_seed0"
    atomic_write_json(run / "platform.json", {"device_kind": "cpu", "platform_id": "cpu-amd-epyc"})
    copied = runs_root / "gpu-copy" / "std0.0_seed0"
    copied.parent.mkdir()
    shutil.copytree(run, copied)
    table = platform_mismatches(load_runs(runs_root))
    assert table.to_dict("records") == [{"platform": "gpu-copy", "recorded": "cpu-amd-epyc", "n_runs": 1}]


def test_written_json_is_plain_json(runs_root: Path) -> None:
    text = (runs_root / "cpu-amd-epyc" / "std0.0_seed0" / "metrics.json").read_text()
    json.loads(text)  # strict JSON, no NaN tokens
    assert "NaN" not in text


def test_atomic_writes_make_ordinary_file_modes(tmp_path):
    import stat

    from utae.util.atomic import atomic_write_json

    path = atomic_write_json(tmp_path / "m.json", {"a": 1})
    mode = stat.S_IMODE(path.stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
