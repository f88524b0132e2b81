"""What several test files share: the tiny model, sweep files and a frame of runs.

The fixtures (synthetic datasets, an empty data folder) are in ``conftest.py``; this module holds plain values
and functions, imported as ``from helpers import ...`` (pytest puts ``tests/`` on the path).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn


def tiny_model(levels: int = 4, d_model: int = 16, lists: bool = False) -> dict[str, Any]:
    """The tests' tiny U-TAE: ``levels`` levels of width 8 (16 at the deepest), an ``out_conv`` of 8 channels
    then the 20 classes, 4 attention heads and a ``d_model`` of ``d_model``; it trains in seconds on a CPU.

    ``lists`` gives the widths as lists, as a sweep file (YAML) or a notebook's parameters spell them.
    """
    widths = (8,) * (levels - 1) + (16,)
    model = dict(encoder_widths=widths, decoder_widths=widths, out_conv=(8, 20), n_head=4, d_model=d_model)
    return {k: list(v) if lists and isinstance(v, tuple) else v for k, v in model.items()}


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
