"""A DistributedDataParallel run of 2 CPU processes (gloo), started by torchrun like a multi-GPU run.

Its metrics must equal those of a single-process evaluation of the same (best) model over the same samples:
the processes evaluate disjoint contiguous shards and their confusion matrices are all-reduced.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from utae.pastis.metrics import scores
from utae.util.atomic import read_json
from utae.config.run_config import RunConfig
from utae.training.engine import build_model, evaluate
from utae.training.loaders import make_datasets, make_loader

from helpers import tiny_model

pytestmark = pytest.mark.slow  # two training processes under torchrun
REPO = Path(__file__).resolve().parents[2]


def _torchrun(config_path: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "utae.train", "--config", str(config_path), *args]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def _ddp_config(root: Path, out: Path) -> RunConfig:
    return RunConfig(dataset_root=str(root), out_dir=str(out), epochs=2, batch_size=1, device="cpu",
                     **tiny_model(levels=3),
                     d_k=4, noise_std=1.0, noise_fraction=0.5, test_noise_stds=(0.0, 1.5), train_limit=5,
                     progress=False, n_examples=2)


def _write_config(cfg: RunConfig, path: Path) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory: pytest.TempPathFactory, synthetic_pastis) -> tuple[RunConfig, Path, Path]:
    """A whole 2-process run: (config, run directory, dataset root)."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    # Equal series lengths (no time padding) and batches of 1: a patch's prediction cannot depend on the
    # batch it lands in, so the 2-process and the 1-process evaluations see exactly the same logits.
    root = synthetic_pastis(n_patches=15, size=16, t_range=(4, 4), seed=5)
    cfg = _ddp_config(root, tmp_path / "run")
    proc = _torchrun(_write_config(cfg, tmp_path / "ddp.yaml"), tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return cfg, tmp_path / "run", root


def test_two_process_gloo_run_equals_single_process_evaluation(ddp_run) -> None:
    cfg, out, _ = ddp_run
    metrics = read_json(out / "metrics.json")
    assert read_json(out / "platform.json")["world_size"] == 2
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (5, 3, 3)
    assert len(pd.read_csv(out / "history.csv")) == 2
    cm_ddp = np.load(out / "confusion.npy")
    assert cm_ddp.sum() == 3 * 16 * 16  # the 2 shards (1 and 2 patches) hold every test patch once

    # Single process, same best weights, same samples.
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    model = build_model(cfg)
    model.load_state_dict(ckpt["best_model"])
    splits = make_datasets(cfg)
    cpu = torch.device("cpu")
    test_loader = make_loader(splits.test, batch_size=1, train=False, seed=cfg.seed, device=cpu)
    val_loader = make_loader(splits.val, batch_size=1, train=False, seed=cfg.seed, device=cpu)
    cm_test, loss_test = evaluate(model, test_loader, cpu)
    assert np.array_equal(cm_test, cm_ddp)
    assert loss_test == pytest.approx(metrics["test"]["loss"], rel=1e-6)
    cm_val, _ = evaluate(model, val_loader, cpu)
    assert scores(cm_val)["miou"] == pytest.approx(metrics["val"]["miou"], rel=1e-12)
    cm_noisy, _ = evaluate(model, test_loader, cpu, noise_std=1.5, seed=cfg.seed)
    assert scores(cm_noisy)["oa"] == pytest.approx(metrics["test_noise"][1]["oa"], rel=1e-12)


def test_a_resumed_two_process_run_equals_the_uninterrupted_one(ddp_run, tmp_path: Path) -> None:
    # Each process draws its own dropout masks, so each must take back its own RNG states on resume.
    ref_cfg, ref_out, root = ddp_run
    out = tmp_path / "run"
    config_path = _write_config(_ddp_config(root, out), tmp_path / "ddp.yaml")
    first = _torchrun(config_path, tmp_path, "--max-epochs-this-call", "1")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-5000:]
    assert "stopped after 1 epoch(s)" in first.stdout
    assert not (out / "metrics.json").exists() and len(pd.read_csv(out / "history.csv")) == 1
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert len(ckpt["rng_per_rank"]) == 2
    assert not torch.equal(ckpt["rng_per_rank"][0]["torch"], ckpt["rng_per_rank"][1]["torch"])

    second = _torchrun(config_path, tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-5000:]
    timing = ["sec_epoch", "train_samples_per_s", "eval_samples_per_s", "peak_mem_mb"]
    pd.testing.assert_frame_equal(pd.read_csv(out / "history.csv").drop(columns=timing),
                                  pd.read_csv(ref_out / "history.csv").drop(columns=timing))
    final = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    ref = torch.load(ref_out / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    assert all(torch.equal(final[k], ref[k]) for k in ref), "the resumed weights differ from the uninterrupted run's"
    strip = lambda m: {k: v for k, v in m.items() if k != "timing"}  # noqa: E731
    assert strip(read_json(out / "metrics.json")) == strip(read_json(ref_out / "metrics.json"))
