"""Resume: a run stopped after any epoch (or killed in the middle of one) ends with the metrics of an
uninterrupted deterministic run on CPU; it resumes only under the arithmetic settings it started with; its
TensorBoard curves hold each epoch once."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import utae.training.engine as engine_mod
from utae.training.arithmetic import arithmetic_differences
from utae.training.checkpoint import read_checkpoint
from utae.config.run_config import RunConfig
from utae.exchange.import_runs import import_runs
from utae.util.atomic import read_json
from utae.training.run import RunDirError, run
from utae.training.tensorboard_log import read_scalars, tensorboard_dir

from helpers import tiny_model

TINY = dict(**tiny_model(levels=3),
            d_k=4, batch_size=2, device="cpu", progress=False, deterministic=True, epochs=3,
            # fresh training noise each epoch and test-time noise: the seeded noise streams must resume too
            noise_std=0.5, noise_fraction=0.5, noise_resample=True, test_noise_stds=(0.0, 1.0))
TIMING = ["sec_epoch", "train_samples_per_s", "eval_samples_per_s", "peak_mem_mb"]


@pytest.fixture(scope="module")
def root(synthetic_pastis) -> str:
    return str(synthetic_pastis(n_patches=15, size=16, t_range=(3, 5), seed=11))


@pytest.fixture(scope="module")
def reference(root: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("ref") / "run"
    return run(RunConfig(dataset_root=root, out_dir=str(out), **TINY)), out


def _scramble_global_rngs() -> None:
    """What a new process (or other code in between) would do to the global RNGs before resuming."""
    random.seed(12345)
    np.random.seed(12345)
    torch.manual_seed(12345)


def _assert_same_run(out: Path, ref_out: Path, metrics: dict, ref_metrics: dict) -> None:
    assert np.array_equal(np.load(out / "confusion.npy"), np.load(ref_out / "confusion.npy"))
    strip = lambda m: {k: v for k, v in m.items() if k != "timing"}  # noqa: E731
    assert strip(metrics) == strip(ref_metrics)
    hist, ref_hist = pd.read_csv(out / "history.csv"), pd.read_csv(ref_out / "history.csv")
    pd.testing.assert_frame_equal(hist.drop(columns=TIMING), ref_hist.drop(columns=TIMING))
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    ref_ckpt = torch.load(ref_out / "checkpoint.pt", map_location="cpu", weights_only=True)
    for key, value in ref_ckpt["model"].items():
        assert torch.equal(ckpt["model"][key], value), key


def test_stop_after_epoch_1_then_resume(root: str, reference, tmp_path: Path) -> None:
    ref_metrics, ref_out = reference
    cfg = RunConfig(dataset_root=root, out_dir=str(tmp_path / "run"), **TINY)
    assert run(cfg, max_epochs_this_call=1) is None
    assert not (tmp_path / "run" / "metrics.json").exists()
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert len(pd.read_csv(tmp_path / "run" / "history.csv")) == 1
    _scramble_global_rngs()
    metrics = run(cfg)
    assert metrics is not None and metrics["epochs_completed"] == 3
    _assert_same_run(tmp_path / "run", ref_out, metrics, ref_metrics)


def test_killed_in_the_middle_of_epoch_2_then_resume(root: str, reference, tmp_path: Path, monkeypatch) -> None:
    ref_metrics, ref_out = reference
    cfg = RunConfig(dataset_root=root, out_dir=str(tmp_path / "run"), **TINY)
    real_step = engine_mod.train_one_epoch

    def killed_in_epoch_2(engine, loader, *, epoch, **kw):
        if epoch == 2:
            next(iter(loader))  # some work of epoch 2 happens, then the process dies
            raise KeyboardInterrupt
        return real_step(engine, loader, epoch=epoch, **kw)

    monkeypatch.setattr(engine_mod, "train_one_epoch", killed_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg)
    monkeypatch.setattr(engine_mod, "train_one_epoch", real_step)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    _scramble_global_rngs()
    metrics = run(cfg)
    _assert_same_run(tmp_path / "run", ref_out, metrics, ref_metrics)
    assert read_json(tmp_path / "run" / "metrics.json") == metrics


def test_a_leftover_history_row_is_dropped_on_resume(root: str, reference, tmp_path: Path) -> None:
    """A kill between writing the checkpoint and history.csv (or after a bad epoch) must not leave rows of
    epochs that the checkpoint does not hold."""
    ref_metrics, ref_out = reference
    cfg = RunConfig(dataset_root=root, out_dir=str(tmp_path / "run"), **TINY)
    run(cfg, max_epochs_this_call=1)
    hist = pd.read_csv(tmp_path / "run" / "history.csv")
    pd.concat([hist, hist.assign(epoch=2)]).to_csv(tmp_path / "run" / "history.csv", index=False)
    metrics = run(cfg)
    _assert_same_run(tmp_path / "run", ref_out, metrics, ref_metrics)


def _assert_curves_are_the_history(out: Path, epochs: list[int]) -> None:
    """The TensorBoard curves of a run folder show each epoch once, with the values of history.csv."""
    hist = pd.read_csv(out / "history.csv")
    assert hist["epoch"].tolist() == epochs
    curves = read_scalars(tensorboard_dir(out))
    for tag, column in (("loss/train", "train_loss"), ("miou/val", "val_miou")):
        assert [step for step, _ in curves[tag]] == epochs, tag
        # event files hold float32: the values equal the history's rounded to float32
        np.testing.assert_array_equal(np.array([v for _, v in curves[tag]], np.float32),
                                      hist[column].to_numpy(np.float32))


def test_an_uninterrupted_run_writes_its_curves(reference) -> None:
    _assert_curves_are_the_history(reference[1], [1, 2, 3])


def test_a_resume_under_other_threads_is_refused_and_under_the_same_ones_is_bit_identical(
        root: str, reference, tmp_path: Path) -> None:
    """A sweep that resumes a point with another torch thread count (the cores freed by finished points) would
    change its numbers: the checkpoint records the settings, and a resume under others is refused, naming them,
    before anything of the run folder is rewritten."""
    ref_metrics, ref_out = reference
    out = tmp_path / "run"
    cfg = RunConfig(dataset_root=root, out_dir=str(out), **TINY)
    threads = torch.get_num_threads()
    assert run(cfg, max_epochs_this_call=1) is None
    assert read_checkpoint(out / "checkpoint.pt")["arithmetic"]["torch_threads"] == threads
    before = {name: (out / name).read_bytes() for name in ("platform.json", "checkpoint.pt", "history.csv")}
    torch.set_num_threads(threads + 1)
    try:
        with pytest.raises(RunDirError) as refused:
            run(cfg)
    finally:
        torch.set_num_threads(threads)
    message = str(refused.value)
    assert message == (f"{out / 'checkpoint.pt'} was trained with torch threads {threads}, this process has "
                       f"{threads + 1}: resume with THREADS={threads} (or --threads {threads} / "
                       f"torch.set_num_threads({threads}))")
    assert {name: (out / name).read_bytes() for name in before} == before
    assert not (out / "metrics.json").exists()
    _scramble_global_rngs()
    metrics = run(cfg)
    _assert_same_run(out, ref_out, metrics, ref_metrics)
    assert read_json(out / "platform.json")["torch_threads"] == threads
    _assert_curves_are_the_history(out, [1, 2, 3])  # the resumed run wrote epoch 1 again, once


def test_every_differing_setting_is_named_with_the_value_to_set() -> None:
    recorded = {"torch_threads": 1, "amp": "off", "float32_math": "ieee", "device_kind": "cpu",
                "device_name": "CPU A", "deterministic": True, "channels_last": False, "compile": False,
                "world_size": 2}
    now = {**recorded, "device_name": "CPU B", "deterministic": False, "world_size": 1}
    assert arithmetic_differences(recorded, now) == [
        "device model CPU A, this process has CPU B: resume on CPU A",
        "deterministic True, this process has False: resume with deterministic=True",
        "processes (world_size) 2, this process has 1: resume with torchrun --nproc_per_node=2 "
        "(or --tasks-per-point 2)",
    ]
    assert arithmetic_differences(recorded, recorded) == []
    assert arithmetic_differences(None, now) == []  # a checkpoint from before the record: resumed unchecked


def test_an_evaluation_only_run_writes_its_one_curve_point(root: str, reference, tmp_path: Path) -> None:
    out = tmp_path / "eval"
    cfg = RunConfig(dataset_root=root, out_dir=str(out),
                    **{**TINY, "epochs": 0, "init_weights": str(reference[1] / "checkpoint.pt")})
    assert run(cfg) is not None
    assert [step for step, _ in read_scalars(tensorboard_dir(out))["miou/val"]] == [0]


def test_the_curves_stay_on_their_machine_and_do_not_block_an_import(reference, tmp_path: Path) -> None:
    """tensorboard/ is no result file: a results folder holding it imports, without it."""
    src = tmp_path / "theirs" / "runs" / "plat-a" / "fold1-noise0.5-seed0"
    shutil.copytree(reference[1], src)
    assert (src / "tensorboard").is_dir()
    report = import_runs(tmp_path / "theirs", tmp_path / "mine")
    assert report.exit_status == 0, report
    imported = tmp_path / "mine" / "runs" / "plat-a" / "fold1-noise0.5-seed0"
    assert (imported / "metrics.json").is_file() and not (imported / "tensorboard").exists()
