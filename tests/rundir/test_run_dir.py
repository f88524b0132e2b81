"""What a run directory guarantees: nothing it reads runs code, two processes never mix one run, a checkpoint or
config of another run is refused, a full disk loses nothing, and checkpoints of the previous format resume."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import utae.study.runs as results_mod
from utae.training.checkpoint import CheckpointError, read_checkpoint
from utae.config.run_config import RunConfig
from utae.config.sweepfile import load_config_file, parse_set, read_yaml
from utae.util.atomic import read_json
from utae.training.run import RunDirError, lock_run_dir, run

from helpers import tiny_model

REPO_ROOT = Path(__file__).resolve().parents[2]
# The configuration and data of tests/data/checkpoint_v1/checkpoint.pt: a format-1 checkpoint (numpy RNG state
# as an array, written by the version before checkpoints became plain data) after epoch 1 of 3.
V1_DATA = dict(n_patches=15, size=16, t_range=(3, 5), seed=11)
V1_CONFIG = dict(**tiny_model(levels=3),
                 d_k=4, batch_size=2, device="cpu", progress=False, deterministic=True, epochs=3,
                 noise_std=0.5, noise_fraction=0.5, noise_resample=True, test_noise_stds=(0.0, 1.0))


@pytest.fixture(scope="module")
def root(synthetic_pastis) -> str:
    return str(synthetic_pastis(**V1_DATA))


def config(root: str, out: Path, **kw) -> RunConfig:
    return RunConfig(dataset_root=root, out_dir=str(out), **{**V1_CONFIG, **kw})


class _Payload:
    """A pickle that runs code when it is loaded: it would create the file named by ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_payload_as_checkpoint_is_refused_and_never_runs(root: str, tmp_path: Path) -> None:
    cfg = config(root, tmp_path / "run")
    assert run(cfg, max_epochs_this_call=1) is None  # an unfinished run: the next call would resume it
    marker = tmp_path / "payload-ran"
    ckpt = tmp_path / "run" / "checkpoint.pt"
    torch.save({"format": 2, "payload": _Payload(marker)}, ckpt)  # what a planted file could hold
    with pytest.raises(CheckpointError, match=f"{ckpt}.*refused.*system"):
        run(cfg)
    assert not marker.exists(), "loading the checkpoint ran its code"
    with open(ckpt, "wb") as fh:  # a bare pickle, not a torch archive
        pickle.dump(_Payload(marker), fh)
    with pytest.raises(CheckpointError, match=str(ckpt)):
        run(cfg)
    assert not marker.exists()
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_a_truncated_checkpoint_names_the_file(root: str, tmp_path: Path) -> None:
    cfg = config(root, tmp_path / "run")
    run(cfg, max_epochs_this_call=1)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=f"{ckpt}: cannot read the checkpoint"):
        run(cfg)


def test_a_format_1_checkpoint_of_the_previous_version_resumes(root: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(REPO_ROOT / "tests" / "data" / "checkpoint_v1" / "checkpoint.pt", out / "checkpoint.pt")
    old = read_checkpoint(out / "checkpoint.pt")
    assert old["format"] == 1 and old["epoch"] == 1
    metrics = run(config(root, out))
    assert metrics is not None and metrics["epochs_completed"] == 3
    hist = pd.read_csv(out / "history.csv")
    assert hist["epoch"].tolist() == [1, 2, 3]
    # Epoch 1 comes from the checkpoint, not from training again.
    assert hist.loc[0, "train_loss"] == old["history"][0]["train_loss"]
    new = read_checkpoint(out / "checkpoint.pt")
    assert new["format"] == 2 and new["epoch"] == 3
    # The old checkpoint had no record of its arithmetic settings (it resumed unchecked); the new one has.
    assert "arithmetic" not in old and new["arithmetic"]["torch_threads"] == torch.get_num_threads()
    # The current format is plain data: it loads with torch's own weights-only unpickler and nothing allowed.
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 3


def test_another_runs_checkpoint_is_refused(root: str, tmp_path: Path) -> None:
    other = config(root, tmp_path / "other", lr=0.01)
    run(other, max_epochs_this_call=1)
    mine = config(root, tmp_path / "mine", lr=0.001)
    (tmp_path / "mine").mkdir()
    shutil.copy(tmp_path / "other" / "checkpoint.pt", tmp_path / "mine" / "checkpoint.pt")
    with pytest.raises(RunDirError, match=r"checkpoint of a different run.*lr: stored 0.01 != new 0.001"):
        run(mine)
    assert not (tmp_path / "mine" / "metrics.json").exists()


def test_a_run_that_failed_before_its_first_epoch_takes_a_corrected_config(root: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="train_limit=500 but the split has only"):
        run(config(root, out, train_limit=500))
    assert (out / "config.json").is_file()  # left behind by the failed start
    assert run(config(root, out, train_limit=4, epochs=1)) is not None
    assert read_json(out / "config.json")["train_limit"] == 4
    with pytest.raises(RunDirError, match="belongs to a different run"):  # a finished run keeps its config
        run(config(root, out, train_limit=5, epochs=1))


def test_a_locked_run_dir_is_refused_at_once_naming_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with lock_run_dir(out):
        start = time.monotonic()
        with pytest.raises(RunDirError, match=rf"{out} is in use by another process \(pid {os.getpid()}"):
            with lock_run_dir(out):
                pass
        # "at once": a blocking lock would wait for the holder. 30 s is far above any scheduling delay.
        assert time.monotonic() - start < 30
    with lock_run_dir(out):  # released: free again
        pass


@pytest.mark.slow
def test_two_processes_on_one_run_dir_never_mix_their_files(root: str, tmp_path: Path) -> None:
    """Two command-line runs started together on one out_dir, with different lr: one runs, the other fails at
    once (or, if it starts after the first has finished, refuses the other config); the folder holds one run."""
    out = tmp_path / "run"
    files = []
    for lr in (0.001, 0.002):
        path = tmp_path / f"lr{lr}.yaml"
        path.write_text(json.dumps({**config(root, out, lr=lr, epochs=2).to_dict()}))
        files.append(path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "utae.train", "--config", str(f)], cwd=REPO_ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for f in files]
    outputs = [p.communicate(timeout=600) for p in procs]
    codes = [p.returncode for p in procs]
    assert sorted(codes) == [0, 2], (codes, outputs)
    loser = outputs[codes.index(2)][1]
    assert "is in use by another process" in loser or "belongs to a different run" in loser, loser
    winner_lr = (0.001, 0.002)[codes.index(0)]
    assert read_json(out / "config.json")["lr"] == winner_lr
    assert read_checkpoint(out / "checkpoint.pt")["config"]["lr"] == winner_lr
    assert read_json(out / "metrics.json")["epochs_completed"] == 2


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(root: str, tmp_path: Path,
                                                                       monkeypatch) -> None:
    out = tmp_path / "run"
    cfg = config(root, out)
    run(cfg, max_epochs_this_call=1)
    before = (out / "checkpoint.pt").read_bytes()
    real_fdopen = os.fdopen

    class _FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()
            return False

        def write(self, data):
            if len(data) > 50_000:  # the checkpoint (about 400 kB); the small JSON and CSV files still fit
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.fh.write(data)

        def __getattr__(self, name):
            return getattr(self.fh, name)

    monkeypatch.setattr(results_mod.os, "fdopen", lambda fd, mode: _FullDisk(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match=rf"{out / 'checkpoint.pt'}: disk full.*previous version is kept"):
        run(cfg, max_epochs_this_call=1)
    monkeypatch.setattr(results_mod.os, "fdopen", real_fdopen)
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert run(cfg) is not None  # space is back: the run resumes and finishes


def test_numbers_are_read_as_people_type_them(root: str, tmp_path: Path) -> None:
    assert parse_set(["lr=1e-3", "noise_std=2", "seed=1", "amp=off"]) == {"lr": 0.001, "noise_std": 2, "seed": 1,
                                                                           "amp": "off"}
    assert read_yaml("lr: 1E-4\nx: 5e3\nname: 1e-3x") == {"lr": 0.0001, "x": 5000.0, "name": "1e-3x"}
    path = tmp_path / "sweep.yaml"
    path.write_text(f"dataset_root: {root}\nfixed:\n  lr: 5e-4\n  epochs: 1\ngrid:\n  seed: [0, 1]\n")
    cfg = load_config_file(path, parse_set(["seed=1", "lr=1e-3"]))
    assert cfg.lr == 0.001 and cfg.seed == 1
    assert load_config_file(path, {"seed": 0}).lr == 0.0005


def test_a_run_folder_moved_with_its_data_resumes(tmp_path: Path, synthetic_pastis) -> None:
    """A run interrupted on one machine, moved with its data to other paths (the recorded ones no longer exist),
    resumes there: the paths are no part of the same-run rule."""
    first = tmp_path / "machine-a"
    data = synthetic_pastis(copy_to=first / "pastis", **V1_DATA)
    assert run(config(str(data), first / "run"), max_epochs_this_call=1) is None
    stored = read_json(first / "run" / "config.json")
    second = tmp_path / "machine-b"
    shutil.move(first, second)
    assert not Path(stored["dataset_root"]).exists() and not Path(stored["out_dir"]).exists()
    metrics = run(config(str(second / "pastis"), second / "run", num_workers=1))
    assert metrics is not None and metrics["epochs_completed"] == 3
    hist = pd.read_csv(second / "run" / "history.csv")
    assert hist["epoch"].tolist() == [1, 2, 3]
    with pytest.raises(RunDirError, match=r"belongs to a different run; differing fields: lr: stored 0.001 != new"):
        run(config(str(second / "pastis"), second / "run", lr=0.01))  # another config is still refused
