"""The run folder's one same-run rule (utae.rundir.same_run.config_differences, result_differences), on configs whose
recorded paths do not exist on this machine: nothing of the rule looks at the file system."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from utae.config.run_config import HARMLESS_FIELDS, run_config_fields
from utae.rundir.same_run import config_differences, normal_config, result_differences

GONE = "/nonexistent/machine-a"  # a path of another machine


def stored(**changes) -> dict:
    """A config.json dict as another machine wrote it (tuples as lists, its own paths)."""
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in run_config_fields().items()}
    config.update(dataset_root=f"{GONE}/pastis", out_dir=f"{GONE}/results/runs/cpu/seed0", run_id="seed0",
                  device="cpu", epochs=3)
    config.update(changes)
    return config


def test_paths_workers_and_progress_are_not_part_of_a_run() -> None:
    here = stored(dataset_root="/elsewhere/data", out_dir="/elsewhere/run", num_workers=4, progress=True,
                  encoder_widths=(64, 64, 64, 128))  # a tuple, as a RunConfig holds it
    assert config_differences(stored(), here) == []
    assert {"dataset_root", "out_dir", "num_workers", "progress"} <= HARMLESS_FIELDS


def test_fields_added_since_an_old_file_compare_equal_at_their_default() -> None:
    old = {k: v for k, v in stored().items() if k not in ("lr_schedule", "lr_warmup", "norm_stats")}
    assert config_differences(old, stored()) == []
    assert config_differences(old, stored(lr_schedule="cosine")) == ["lr_schedule: stored 'constant' != new 'cosine'"]


def test_another_config_is_another_run_naming_each_field() -> None:
    assert config_differences(stored(), stored(lr=0.01, seed=2)) == ["lr: stored 0.001 != new 0.01",
                                                                     "seed: stored 0 != new 2"]
    assert config_differences(stored(), {**stored(), "unknown_field": 1}) == [
        "unknown_field: stored '<absent>' != new 1"]


def test_of_init_weights_only_whether_it_is_set_counts() -> None:
    assert config_differences(stored(init_weights=f"{GONE}/Fold_{{fold}}/model.pth.tar"),
                              stored(init_weights="/here/Fold_{fold}/model.pth.tar")) == []
    assert config_differences(stored(), stored(init_weights="/here/w.pth.tar")) == [
        "init_weights: stored None != new 'set'"]
    assert normal_config(stored())["init_weights"] is None


def write_run(folder: Path, config: dict, sec_epoch: float, oa: float = 0.5) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    metrics = {"run_id": "seed0", "best_epoch": 2, "epochs_completed": 2, "test": {"oa": oa, "miou": 0.25},
               "timing": {"sec_per_epoch": sec_epoch}}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    (folder / "history.csv").write_text(f"epoch,val_miou,sec_epoch\n1,0.1,{sec_epoch}\n2,0.2,{sec_epoch + 1}\n")
    np.save(folder / "confusion.npy", np.eye(20, dtype=np.int64))
    return folder


def test_results_equal_apart_from_timings_and_paths_are_the_same_run(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a", stored(), sec_epoch=1.5)
    b = write_run(tmp_path / "b", stored(dataset_root="/here/pastis", out_dir=str(tmp_path / "b")), sec_epoch=7.25)
    assert result_differences(a, b) == []
    c = write_run(tmp_path / "c", stored(), sec_epoch=1.5, oa=0.75)
    assert result_differences(a, c) == ["metrics.json"]
    (c / "confusion.npy").unlink()
    assert result_differences(a, c) == ["metrics.json", "confusion.npy"]  # a missing file differs
    assert result_differences(a, write_run(tmp_path / "d", stored(lr=0.01), sec_epoch=1.5)) == ["config.json"]


def test_a_run_recording_its_model_and_normalisation_is_the_same_run_as_one_without(tmp_path: Path) -> None:
    """An older run lacks ``model``, ``seeds``, ``normalisation`` and ``patch_size``: they describe what the config
    and the dataset name, so a rerun that records them has the same results."""
    old = write_run(tmp_path / "old", stored(), sec_epoch=1.5)
    new = write_run(tmp_path / "new", stored(), sec_epoch=2.5)
    metrics = json.loads((new / "metrics.json").read_text())
    metrics.update(model={"name": "utae", "options": {}, "parameters": 10}, seeds={"seed": 0}, patch_size=32,
                   normalisation={"mean": [1.0] * 10, "std": [2.0] * 10, "folds": [1, 2, 3]})
    (new / "metrics.json").write_text(json.dumps(metrics))
    assert result_differences(old, new) == []


# --------------------------------------------------------------------------------------------------
# The files a run folder holds, their limits, and results that agree with themselves
# --------------------------------------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def committed_runs() -> list[Path]:
    """Every finished run committed in the repository's results folders."""
    return sorted(p.parent for p in (REPO / "results").glob("**/runs/*/*/metrics.json"))


def test_every_committed_run_passes_the_checks_of_an_import() -> None:
    from utae.rundir.readers import read_checked_metrics, validate_run

    runs = committed_runs()
    assert len(runs) >= 15
    for run_dir in runs:
        validate_run(run_dir, run_dir.name, str(run_dir))  # finite, consistent, arrays of the run's shapes
        assert read_checked_metrics(run_dir)["test"]["miou"] > 0


def test_only_run_files_within_their_limits_are_run_files() -> None:
    import pytest

    from utae.rundir.paths import FILE_LIMITS, RUN_FILES, RunFolderError, check_file_size, is_local_file

    assert set(FILE_LIMITS) == set(RUN_FILES)
    check_file_size("confusion.npy", 3328, "x/confusion.npy")
    with pytest.raises(RunFolderError, match=r"^x/confusion.npy: 64.0 kB, over the limit of 64 kB for a run's "):
        check_file_size("confusion.npy", 64_001, "x/confusion.npy")
    with pytest.raises(RunFolderError, match=r"^x/notes.txt: not a run-folder file \(a run folder holds config.json"):
        check_file_size("notes.txt", 1, "x/notes.txt")
    assert all(is_local_file(n) for n in ("checkpoint.pt", "run.ipynb", ".lock", "tensorboard", "a.tmp"))
    assert not any(is_local_file(n) for n in RUN_FILES)


def test_scores_agree_with_the_confusion_matrix_to_float64_rounding_only() -> None:
    import pytest

    from utae.pastis.metrics import scores
    from utae.rundir.paths import SCORE_TOLERANCE, RunFolderError
    from utae.rundir.readers import check_consistency

    cm = np.random.default_rng(0).integers(0, 100, size=(20, 20))
    test = {k: v for k, v in scores(cm).items()}
    metrics = {"test": json.loads(json.dumps(test)), "test_noise": [{"std": 0.0, "oa": test["oa"],
                                                                     "miou": test["miou"]}]}
    check_consistency(metrics, cm, "m.json")  # what a run writes, read back from JSON: exactly equal
    ulp = float(np.spacing(test["miou"]))
    check_consistency({**metrics, "test": {**metrics["test"], "miou": test["miou"] + 4 * ulp}}, cm, "m.json")
    assert SCORE_TOLERANCE < 1e-12  # far below any change of a count: one pixel moves OA by 1 / cm.sum()
    with pytest.raises(RunFolderError, match=r"^m.json: test.miou = .* disagrees with the score computed from "):
        check_consistency({**metrics, "test": {**metrics["test"], "miou": test["miou"] + 1e-12}}, cm, "m.json")
    bad_iou = list(metrics["test"]["iou"])
    bad_iou[3] = None  # an undefined IoU where the matrix defines one
    with pytest.raises(RunFolderError, match=r"test.iou\[3\] = None disagrees"):
        check_consistency({**metrics, "test": {**metrics["test"], "iou": bad_iou}}, cm, "m.json")
