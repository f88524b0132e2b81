"""Checkpoints: the training state of a run, saved after every epoch and loaded without running any code.

A checkpoint (``checkpoint.pt``) holds the model, the optimizer, the grad scaler, the epoch reached, the best
epoch (score, weights, validation scores), the history and every process's RNG states, so that a killed run
resumes from its last complete epoch, bit for bit on the CPU. It also holds the run's config: a checkpoint of
another run (another ``lr``, say) is refused rather than resumed, and the arithmetic settings it was trained
under (``"arithmetic"``, :func:`utae.training.arithmetic.arithmetic_settings`: threads, amp, device...), under which
alone it resumes.

Safety. A ``.pt`` file is a pickle, and a pickle can run code when it is loaded. Checkpoints are read with
``torch.load(weights_only=True)``, which rebuilds only tensors and plain containers; the current format (2)
stores nothing else (RNG states are lists of ints, numbers are python floats). Format 1, written by earlier
versions, also held numpy arrays (the numpy RNG state): it is read with numpy's array constructor allowed and
nothing more. A file that needs any other global is refused with an error that names the file.

Seeds. :func:`seed_everything` seeds python, numpy and torch; :func:`rng_state` and :func:`set_rng_state` save
and restore all three (and CUDA's) as plain data.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "TrainState",
    "seed_everything",
    "rng_state",
    "set_rng_state",
    "checkpoint_dict",
    "read_checkpoint",
    "restore",
]

CHECKPOINT_FORMAT = 2
_MULTIARRAY = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray  # numpy 2 / numpy 1
#: numpy globals that format-1 checkpoints need (the numpy RNG state array): array reconstruction only.
_NUMPY_ARRAY_GLOBALS = (_MULTIARRAY._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32)))


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, unsafe, of another format or of another run."""


@dataclass
class TrainState:
    """Where training stands after ``epoch`` complete epochs (everything a resume needs besides the model,
    the optimizer, the learning-rate schedule and the RNGs)."""

    epoch: int = 0
    best_epoch: int = 0
    best_score: float = -math.inf
    best_model: dict[str, torch.Tensor] | None = None
    best_val: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# RNG states as plain data
# --------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed the global python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The python, numpy, torch (and CUDA) RNG states, as ints, lists and uint8 tensors only."""
    version, internal, gauss = random.getstate()
    kind, key, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {"kind": str(kind), "key": [int(k) for k in key], "pos": int(pos), "has_gauss": int(has_gauss),
                  "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned (also the tuple and array form of format-1 checkpoints)."""
    py = state["python"]
    random.setstate((int(py[0]), tuple(int(v) for v in py[1]), py[2]))
    npy = state["numpy"]
    if isinstance(npy, Mapping):
        np.random.set_state((npy["kind"], np.asarray(npy["key"], dtype=np.uint32), npy["pos"], npy["has_gauss"],
                             npy["cached_gaussian"]))
    else:  # format 1: numpy's own tuple
        np.random.set_state(tuple(npy))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------
# Writing and reading
# --------------------------------------------------------------------------------------------------


def _plain(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays turned into python numbers and lists (tensors kept)."""
    if isinstance(obj, torch.Tensor):
        return obj
    if isinstance(obj, Mapping):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def checkpoint_dict(model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                    config: Mapping[str, Any], *, scaler: Any = None, scheduler: Any = None,
                    rng_states: Sequence[Mapping[str, Any]] | None = None,
                    arithmetic: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The checkpoint of a run after ``state.epoch`` epochs, as tensors and plain containers only.

    ``rng_states``: every process's RNG states in rank order (see :func:`utae.training.distributed.gather_objects`);
    by default this process's alone. ``config`` is the run's ``RunConfig.to_dict()``. ``arithmetic``: the
    run's :func:`utae.training.arithmetic.arithmetic_settings` (None: not recorded).
    """
    rng_states = list(rng_states) if rng_states is not None else [rng_state()]
    return _plain({
        "format": CHECKPOINT_FORMAT, "config": dict(config), "epoch": state.epoch,
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "best_epoch": state.best_epoch, "best_score": state.best_score, "best_model": state.best_model,
        "best_val": state.best_val, "history": state.history, "rng_per_rank": rng_states,
        "arithmetic": dict(arithmetic) if arithmetic is not None else None,
    })


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint file without running code (see the module docstring).

    Raises:
        CheckpointError: naming ``path``: unreadable or truncated, a pickle that needs anything besides
            tensors, plain containers (and, for format 1, numpy arrays), or not a checkpoint of this tool.
    """
    path = Path(path)
    try:
        unsafe = set(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception as exc:  # noqa: BLE001 - any failure to open the archive means the same to the user
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc}); it is truncated "
                              "or not a checkpoint. Delete it to start the run from scratch.") from exc
    allowed = {f"{g.__module__}.{g.__qualname__}" for g in _NUMPY_ARRAY_GLOBALS}
    refused = sorted(unsafe - allowed)
    if refused:
        raise CheckpointError(f"{path}: refused: the file asks to run or build {refused}, which a checkpoint of "
                              "this tool never holds (it may hold code). Delete it, or replace it with the run's own "
                              "checkpoint.")
    try:
        with torch.serialization.safe_globals(list(_NUMPY_ARRAY_GLOBALS)):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc}). Delete it to "
                              "start the run from scratch.") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") not in (1, CHECKPOINT_FORMAT):
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path}: not a run checkpoint of this tool (format 1 or {CHECKPOINT_FORMAT} "
                              f"expected, found {found!r})")
    missing = [k for k in ("config", "epoch", "model", "optimizer", "best_epoch", "best_score", "best_model",
                           "best_val", "history") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks {missing}; delete it to start the run from scratch")
    return ckpt


def restore(ckpt: Mapping[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer, *, scaler: Any = None,
            scheduler: Any = None, rank: int = 0, world_size: int = 1) -> TrainState:
    """Load a :func:`read_checkpoint` dict into the model, optimizer, scaler, scheduler and RNGs.

    Each process takes back its own RNG states (dropout masks differ between processes); a checkpoint
    written by another number of processes gives every process rank 0's. Returns the training state.
    """
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
    set_rng_state(per_rank[rank] if len(per_rank) == world_size else per_rank[0])
    return TrainState(epoch=int(ckpt["epoch"]), best_epoch=int(ckpt["best_epoch"]),
                      best_score=float(ckpt["best_score"]), best_model=ckpt["best_model"],
                      best_val=ckpt["best_val"], history=list(ckpt["history"]))
