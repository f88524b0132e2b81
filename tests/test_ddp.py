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

from utae.metrics import scores
from utae.results import read_json
from utae.synthetic import make_synthetic_pastis
from utae.train import RunConfig, build_model, evaluate, make_datasets, make_loader

REPO = Path(__file__).resolve().parents[1]


def _torchrun(config_path: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "utae.train", "--config", str(config_path)]
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)


def test_two_process_gloo_run_equals_single_process_evaluation(tmp_path: Path) -> None:
    # Equal series lengths (no time padding) and batches of 1: a patch's prediction cannot depend on the
    # batch it lands in, so the 2-process and the 1-process evaluations see exactly the same logits.
    root = make_synthetic_pastis(tmp_path / "pastis", n_patches=15, size=16, t_range=(4, 4), seed=5)
    out = tmp_path / "run"
    cfg = RunConfig(dataset_root=str(root), out_dir=str(out), epochs=2, batch_size=1, device="cpu",
                    encoder_widths=(8, 8, 16), decoder_widths=(8, 8, 16), out_conv=(8, 20), n_head=4, d_model=16,
                    d_k=4, noise_std=1.0, noise_fraction=0.5, test_noise_stds=(0.0, 1.5), train_limit=5,
                    progress=False, n_examples=2)
    import yaml

    config_path = tmp_path / "ddp.yaml"
    config_path.write_text(yaml.safe_dump(cfg.to_dict()))
    proc = _torchrun(config_path, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

    metrics = read_json(out / "metrics.json")
    assert read_json(out / "platform.json")["world_size"] == 2
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (5, 3, 3)
    assert len(pd.read_csv(out / "history.csv")) == 2
    cm_ddp = np.load(out / "confusion.npy")
    assert cm_ddp.sum() == 3 * 16 * 16  # the 2 shards (1 and 2 patches) hold every test patch once

    # Single process, same best weights, same samples.
    ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
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
