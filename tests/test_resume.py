"""Resume: a run stopped after any epoch (or killed in the middle of one) ends with the metrics of an
uninterrupted deterministic run on CPU."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import utae.engine as engine_mod
from utae.config import RunConfig
from utae.atomic import read_json
from utae.run import run

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
