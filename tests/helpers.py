"""What several test files share: the tiny model, sweep files and a frame of runs.

The fixtures (synthetic datasets, an empty data folder) are in ``conftest.py``; this module holds plain values
and functions, imported as ``from helpers import ...`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

import ast
import hashlib
import os
import subprocess
import sys
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from torch import nn

from utae.config.run_config import run_config_fields
from utae.pastis.metrics import scores
from utae.rundir.paths import report_path, run_path
from utae.util.atomic import to_jsonable


def tiny_model(levels: int = 4, d_model: int = 16, lists: bool = False) -> dict[str, Any]:
    """The tests' tiny U-TAE: ``levels`` levels of width 8 (16 at the deepest), an ``out_conv`` of 8 channels
    then the 20 classes, 4 attention heads and a ``d_model`` of ``d_model``; it trains in seconds on a CPU.

    ``lists`` gives the widths as lists, as a sweep file (YAML) or a notebook's parameters spell them.
    """
    widths = (8,) * (levels - 1) + (16,)
    model = dict(encoder_widths=widths, decoder_widths=widths, out_conv=(8, 20), n_head=4, d_model=d_model)
    return {k: list(v) if lists and isinstance(v, tuple) else v for k, v in model.items()}


#: Each registered model's tiny widths (RunConfig fields: U-TAE's own fields, the others' model_options): one epoch
#: on a synthetic PASTIS of 32 px patches trains in seconds on a CPU.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "utae": dict(encoder_widths=(8, 8, 16), decoder_widths=(8, 8, 16), out_conv=(8, 20), n_head=4, d_model=16),
    "unet3d": dict(model_options={"feats": 1}),
    "convlstm": dict(model_options={"hidden_dim": 8}),
    "convgru": dict(model_options={"hidden_dim": 8}),
    "fpn_convlstm": dict(model_options={"inconv": [8, 8], "n_channels": 8, "hidden_size": 8}),
    "uconvlstm": dict(model_options={"encoder_widths": [8, 8, 16], "decoder_widths": [8, 8, 16],
                                     "out_conv": [8, 20], "hidden_dim": 8}),
    "buconvlstm": dict(model_options={"encoder_widths": [8, 8, 16], "decoder_widths": [8, 8, 16],
                                      "out_conv": [8, 20], "hidden_dim": 4}),
    "tsvit": dict(model_options={"patch_size": 4, "dim": 16, "temporal_depth": 1, "spatial_depth": 1, "heads": 2,
                                 "dim_head": 8, "scale_dim": 2}),
}


def tiny_sweep_fixed(**changes: Any) -> dict[str, Any]:
    """A sweep file's ``fixed:`` for a point that trains the tiny model for one epoch on a CPU, deterministically,
    with one test-time noise level; ``changes`` replace or add fields."""
    return {"epochs": 1, "batch_size": 4, **tiny_model(d_model=32, lists=True), "d_k": 4, "test_noise_stds": [0.0, 1.0],
            "n_examples": 2, "device": "cpu", "deterministic": True, **changes}


def write_sweep(folder: Path, doc: dict, name: str = "s.yaml") -> Path:
    """Write the sweep ``doc`` to ``folder/name`` and return its path."""
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def make_runs(platform_shift: dict[str, float], levels=(0.0, 0.5, 1.0), seeds=(0, 1, 2), seed_sd=0.01,
              rng_seed=0) -> pd.DataFrame:
    """A load_runs-like frame: test mIoU falls with the noise level, plus a platform shift and seed noise
    (drawn independently per platform: these runs are not paired)."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for plat, shift in platform_shift.items():
        for level in levels:
            for seed in seeds:
                m = 0.6 - 0.1 * level + shift + rng.normal(0, seed_sd)
                rows.append({"platform": plat, "run_id": f"noise{level:g}-seed{seed}", "cfg_noise_std": level,
                             "cfg_seed": seed, "cfg_dataset_root": "data/synthetic_pastis", "cfg_fold": 1,
                             "test_miou": m, "test_oa": m + 0.2, "val_miou": m + 0.01, "train_oa": 0.8 - 0.05 * level,
                             "sec_per_epoch": 2.0 if plat.startswith("cpu") else 0.2,
                             "train_samples_per_s": 30.0, "eval_samples_per_s": 90.0, "peak_mem_mb": 500.0})
    return pd.DataFrame(rows)


# The official baselines (tests/models): their reference outputs are in the ``baselines_dir`` fixture's folder.

#: Parity bar against the official baselines' logits (magnitude 2 to 6), the one the reference's README gives:
#: a re-implementation computes the same float32 operations in another order; one thread against two alone
#: moves the official logits by about 1e-6.
BASELINE_ATOL = 1e-4
#: Bar for "a series' logits do not depend on its batch". The batch size (and the frames a per-frame block
#: sees) may change the blocking, hence the float32 summation order, of the convolutions: rounding of about
#: 1e-7 relative, accumulated through a few dozen layers on logits of magnitude below 10, stays near 1e-6.
BATCH_ATOL = 1e-5


def baseline_case(directory: Path, name: str, case: str) -> dict[str, torch.Tensor]:
    """The arrays of ``<name>_<case>.npz`` (``x``, ``batch_positions``, ``pad_mask``, ``logits``) as tensors."""
    with np.load(directory / f"{name}_{case}.npz") as data:
        return {key: torch.from_numpy(data[key]) for key in data.files}


def official_baseline(cls: type[nn.Module], directory: Path, name: str, **options: Any) -> nn.Module:
    """``cls(input_size=32, **options)`` with the official weights ``<name>_state_dict.npz`` (strict), in eval mode."""
    from utae.training.weights import load_official_weights

    return load_official_weights(cls(input_size=32, **options), directory / f"{name}_state_dict.npz").eval()


def logits(model: nn.Module, x: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``model``'s logits for ``x (B, T, C, H, W)`` without gradients, with dates 0 .. T-1 (the baselines ignore them)."""
    positions = torch.arange(x.shape[1]).expand(x.shape[0], -1)
    with torch.no_grad():
        return model(x, positions, pad_mask=pad_mask)


def pad_right(series: list[torch.Tensor], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack series ``(T_i, C, H, W)`` into ``(B, max T_i, C, H, W)``, right-padded with ``fill``, and the
    ``(B, max T_i)`` pad mask."""
    t = max(s.shape[0] for s in series)
    x = torch.full((len(series), t, *series[0].shape[1:]), fill, dtype=series[0].dtype)
    mask = torch.ones(len(series), t, dtype=torch.bool)
    for i, s in enumerate(series):
        x[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = False
    return x, mask


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` as a float (the shapes must match)."""
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


# --------------------------------------------------------------------------------------------------
# Run folders written by hand (the files a finished run holds, with made-up numbers), snapshots, archives:
# the exchange tests (export, import, its bounds, verify)
# --------------------------------------------------------------------------------------------------

FP_A = "a1a1a1a1a1a1"
FP_B = "b2b2b2b2b2b2"
PLAT = "cpu-test"
RUN_FILES = ("config.json", "platform.json", "metrics.json", "history.csv", "confusion.npy", "predictions.npz")
LOCAL_FILES = ("checkpoint.pt", "run.ipynb", ".lock", ".metrics.json.x1.tmp", "tensorboard/events.out.tfevents.1")
HISTORY = ("epoch,train_loss,val_loss,train_oa,val_oa,train_miou,val_miou,sec_epoch\n"
           "1,2.0,2.1,0.3,0.25,0.1,0.1,1.5\n2,1.5,1.6,0.5,0.45,0.2,0.15,1.25\n")


def machine(fingerprint: str | None = FP_A, name: str = "Test CPU A") -> dict[str, Any]:
    """A platform.json dict (legacy when ``fingerprint`` is None: no fingerprint key at all)."""
    record = {"device": "cpu", "device_kind": "cpu", "device_name": name, "cpu_model": name, "cpu_arch": "x86_64",
              "torch_version": "2.13.0+cpu", "platform_id": "cpu-test-a", "torch_threads": 1}
    if fingerprint is not None:
        record["fingerprint"] = fingerprint
    return record


def make_run(results: Path, platform: str, run_id: str, *, seed: int = 0, record: dict[str, Any] | None = None,
             report: bool = True, local_files: bool = True) -> Path:
    """Write a finished run directory (and its report) with numbers drawn from ``seed``."""
    rng = np.random.default_rng(seed)
    d = run_path(results, platform, run_id)
    d.mkdir(parents=True)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in run_config_fields().items()}
    config.update(dataset_root="data/synthetic_pastis", epochs=2, seed=seed, run_id=run_id, device="cpu",
                  out_dir=f"results/runs/{platform}/{run_id}", progress=False)
    cm = rng.integers(0, 50, size=(20, 20)).astype(np.int64)
    clean = {k: v for k, v in to_jsonable(scores(cm)).items()}  # what a run writes: the scores of its matrix
    noisy = to_jsonable(scores(cm + np.diag(-np.diag(cm) // 2)))  # fewer pixels right under noise
    test = {**clean, "loss": 1.25}
    metrics = {"run_id": run_id, "best_epoch": 2, "epochs_completed": 2, "n_train": 8, "n_val": 4, "n_test": 4,
               "train": {"oa": 0.7, "miou": 0.4, "loss": 1.0}, "val": {**clean, "miou": float(rng.uniform())},
               "test": test,
               "test_noise": [{"std": 0.0, "oa": clean["oa"], "miou": clean["miou"], "iou": clean["iou"]},
                              {"std": 1.0, "oa": noisy["oa"], "miou": noisy["miou"], "iou": noisy["iou"]}],
               "timing": {"sec_per_epoch": 1.0}}
    (d / "config.json").write_text(json.dumps(config, indent=2))
    (d / "platform.json").write_text(json.dumps(record or machine(), indent=2))
    (d / "metrics.json").write_text(json.dumps(metrics, indent=2))
    (d / "history.csv").write_text(HISTORY)
    np.save(d / "confusion.npy", cm)
    np.savez_compressed(d / "predictions.npz", rgb=rng.uniform(size=(2, 4, 4, 3)).astype(np.float32),
                        target=rng.integers(0, 20, size=(2, 4, 4)), pred=rng.integers(0, 20, size=(2, 4, 4)),
                        patch_id=np.arange(2))
    if local_files:
        for name in LOCAL_FILES:
            (d / name).parent.mkdir(exist_ok=True)
            (d / name).write_bytes(b"stays on this machine")
    if report:
        page = report_path(results, platform, run_id)
        page.parent.mkdir(parents=True, exist_ok=True)
        page.write_text(f"<html>{platform}/{run_id} seed {seed}</html>")
    return d


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with the SHA-256 of its bytes ("dir" for folders): what "unchanged" means."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def no_staging_left(results: Path) -> bool:
    return not list(results.parent.glob(f".{results.name}.import-*"))


def tar_members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def write_tar(archive: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    """A .tar.gz of ``files`` (name -> bytes) plus special members (links, devices...)."""
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info)
    return archive


# --------------------------------------------------------------------------------------------------
# The tiny study, built once per session through make (the notebook and browser tests)
# --------------------------------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
POINTS = ("noise0-seed0", "noise0.5-seed0")
TINY_SWEEP = {
    "name": "tiny",
    "grid": {"noise_std": [0.0, 0.5], "seed": [0]},
    "fixed": tiny_sweep_fixed(),
}
RUN_FIGURES = 5  # training curves, per-class IoU, confusion matrix, patch grid, test-noise curve
COMPARE_FIGURES = 6  # scores vs noise, validation curves, train x test noise, per-class heatmap, timing, seed spread


def make(study: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `make <args>` in the repository on the study's tiny sweep, results and dataset."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    cmd = ["make", "--no-print-directory", *args, f"SWEEP={study / 'tiny.yaml'}", f"RESULTS={study / 'results'}",
           f"SYNTH_ROOT={study / 'data'}", f"PY={sys.executable}", "VENV_DEP="]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


def build_study(tmp_path_factory: pytest.TempPathFactory, synthetic_pastis) -> Path:
    """Build the tiny study once per session (a marker file makes later calls return at once)."""
    study = tmp_path_factory.getbasetemp() / "tiny study ü"  # make's paths are quoted
    marker = study / "built.txt"
    if marker.is_file():
        return study
    study.mkdir(exist_ok=True)
    data = study / "data"
    if not data.is_dir():
        synthetic_pastis(copy_to=data, n_patches=10, size=32, t_range=(4, 6), seed=0)
    (study / "tiny.yaml").write_text(yaml.safe_dump({**TINY_SWEEP, "dataset_root": str(data)}, sort_keys=False))
    proc = make(study, "reproduce")  # points in parallel by default (one a core, one torch thread each)
    marker.write_text(proc.stdout)
    return study


# --------------------------------------------------------------------------------------------------
# The tiers of a test file (conftest.py leaves out whole files by them; tests/test_tiers.py checks them)
# --------------------------------------------------------------------------------------------------


def _mark_names(node: ast.AST) -> set[str]:
    """The ``pytest.mark.<name>`` names that an expression mentions (a mark, a list or tuple of marks)."""
    return {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
            and n.value.attr == "mark" and isinstance(n.value.value, ast.Name) and n.value.value.id == "pytest"}


def file_tiers(path: Path) -> set[str]:
    """The tiers (``slow``, ``long``) that a test file's module-level ``pytestmark`` gives all its tests, read from
    the file's syntax tree (so that no formatting of the assignment, over several lines or as a list, changes
    them); ``long`` implies ``slow``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    tiers: set[str] = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        if any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in targets) and node.value is not None:
            tiers |= _mark_names(node.value) & {"slow", "long"}
    return tiers | {"slow"} if "long" in tiers else tiers
