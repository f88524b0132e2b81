"""Training engine: :class:`RunConfig`, :func:`fit`, :func:`evaluate` and :func:`run`, with checkpoints and resume.

A run (:func:`run`) trains U-TAE on one fold rotation of a PASTIS-format dataset, keeps the epoch with the
best validation mIoU (a tie goes to the later epoch), tests that model on the clean test set and at every
test-time noise level, and writes its run directory:

* ``config.json``: the :class:`RunConfig`; ``platform.json``: software and hardware (:mod:`utae.platform`);
* ``history.csv``: one row per epoch (:data:`HISTORY_COLUMNS`), rewritten after every epoch;
* ``checkpoint.pt``: after every epoch: model, optimizer, grad scaler, epoch, best score and weights,
  history and every RNG state, so that a killed run resumes from its last complete epoch;
* ``confusion.npy``: the clean test confusion matrix, ``(20, 20)`` int64, rows = true class;
* ``predictions.npz``: a few test patches for maps: ``rgb`` ``(N, H, W, 3)`` in [0, 1], ``target`` and
  ``pred`` ``(N, H, W)``, ``patch_id`` ``(N,)``;
* ``metrics.json``: written last, it marks a finished run; starting a finished run again returns it at once.

Every file is written atomically (:mod:`utae.results`). The protocol is the official one: Adam, cross-entropy
with the void class (19) weighted 0, metrics from an int64 confusion matrix with void ignored
(:mod:`utae.metrics`). The Gaussian-noise augmentation of the study (:mod:`utae.noise`) is applied on the fly
and seeded; the data files are never modified.

Command line (also the way to train on several GPUs of one machine with DistributedDataParallel)::

    python -m utae.train --config params/default.yaml --set noise_std=1.0 --set seed=0 --set out_dir=results/x
    torchrun --nproc_per_node=4 -m utae.train --config params/paper.yaml --set noise_std=1.0 --set seed=0

Global torch settings. :func:`run` switches deterministic algorithms on or off (and ``cudnn.benchmark``,
``CUBLAS_WORKSPACE_CONFIG``) for its duration and restores the previous values when it returns. It seeds the
global python, numpy and torch RNGs (the model's dropout draws from torch's) and leaves them as training left
them. It does not change the number of torch threads.

Determinism. On the CPU, ``deterministic=True`` runs are bit-for-bit reproducible, also across a resume. On
CUDA, U-TAE's reflect padding and bilinear upsampling have no deterministic backward kernels: there
``deterministic=True`` switches on every deterministic algorithm that exists (``warn_only=True``), logs that
those two stay non-deterministic, and ``platform.json`` records it. In a multi-process run each process draws
its own dropout masks and the checkpoint holds the RNG states of rank 0 only: a resumed multi-process run is not
bit-identical to an uninterrupted one.
uninterrupted one.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import math
import os
import random
import re
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from utae.classes import N_CLASSES, VOID_LABEL
from utae.data import FOLD_ROTATIONS, PastisDataset, pad_collate
from utae.distributed import (
    DistContext,
    ShardSampler,
    all_reduce_min,
    all_reduce_sum,
    barrier,
    broadcast_buffers,
    dist_context,
    gather_objects,
    init_process_group,
)
from utae.metrics import confusion_matrix, scores
from utae.model import UTAE
from utae.noise import NOISE_SPACES, NoiseSpec, NoisyDataset, add_noise, normalized_std, seeded_generator
from utae.platform import peak_memory_mb, platform_id, platform_info, reset_peak_memory
from utae.platform import resolve_device as _platform_device
from utae.precision import AMP_MODES
from utae.precision import autocast as _precision_autocast
from utae.precision import float32_math, tf32_enabled
from utae.precision import resolve_amp as _resolve_amp
from utae.results import (
    atomic_save_npy,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_csv,
    atomic_write_json,
    read_json,
)

__all__ = [
    "RunConfig",
    "HISTORY_COLUMNS",
    "HARMLESS_FIELDS",
    "NonFiniteLossError",
    "TrainState",
    "Engine",
    "make_datasets",
    "make_loader",
    "build_model",
    "build_engine",
    "resolve_device",
    "resolve_amp",
    "run_dir",
    "compute_loss",
    "add_test_noise",
    "train_one_epoch",
    "evaluate",
    "fit",
    "is_better",
    "predict_examples",
    "run",
    "load_config_file",
]

log = logging.getLogger(__name__)

#: Fields that may differ between a stored run's config.json and a new config for the same run directory.
HARMLESS_FIELDS: frozenset[str] = frozenset({"progress", "num_workers", "out_dir"})
#: Columns of history.csv, one row per epoch.
HISTORY_COLUMNS: tuple[str, ...] = (
    "epoch", "train_loss", "train_oa", "train_miou", "val_loss", "val_oa", "val_miou",
    "sec_epoch", "train_samples_per_s", "eval_samples_per_s", "peak_mem_mb",
)
CHECKPOINT_FORMAT = 1
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_TEST_NOISE_STREAM = 7  # keeps test-time noise independent of the training noise streams of utae.noise


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch and the batch."""


# ==================================================================================================
# Configuration
# ==================================================================================================


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


@dataclass
class RunConfig:
    """Everything that defines a run; validated on creation (a ``ValueError`` names the bad field).

    Attributes:
        dataset_root: PASTIS-format dataset folder (required; ``$VAR`` / ``${VAR}`` are expanded).
        fold: fold rotation 1 to 5 (``utae.data.FOLD_ROTATIONS[fold - 1]`` = train, val, test folds).
        epochs, batch_size, lr, seed: training length, batch size, Adam learning rate, seed of everything
            (weights, shuffling, subsets, noise).
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        encoder_widths, decoder_widths, out_conv, n_head, d_model, d_k: the U-TAE widths (``out_conv[-1]``
            is the number of classes, 20).
        noise_std, noise_fraction, noise_space, noise_resample: the training noise: N(0, noise_std) on a
            seeded ``noise_fraction`` of the training samples, in the ``"normalized"`` input or in ``"raw"``
            reflectance x 10,000 units, the same every epoch or fresh each epoch.
        test_noise_stds: noise levels (in ``noise_space`` units) at which the best model is tested.
        train_limit, val_limit, test_limit: size of a seeded random subset of each split (None: all).
        deterministic: deterministic algorithms (``warn_only=False``); False turns ``cudnn.benchmark`` on.
        amp: ``"off"`` (IEEE float32, no TensorFloat-32), ``"tf32"`` (Ampere+ GPUs), ``"bf16"``, ``"fp16"``
            (CUDA only, with a grad scaler) or ``"auto"``; see :mod:`utae.precision`.
        channels_last, compile: channels-last memory format; ``torch.compile``.
        num_workers: DataLoader worker processes.
        out_dir: the run directory (None: ``results/runs/<platform>/<run_id>``).
        progress: tqdm progress bars.
        run_id: label of the run (None: derived from fold, noise_std and seed).
        n_examples: number of test patches saved in predictions.npz.
    """

    dataset_root: str | None = None
    fold: int = 1
    epochs: int = 15
    batch_size: int = 2
    lr: float = 1e-3
    seed: int = 0
    device: str = "auto"
    encoder_widths: tuple[int, ...] = (64, 64, 64, 128)
    decoder_widths: tuple[int, ...] = (32, 32, 64, 128)
    out_conv: tuple[int, ...] = (32, 20)
    n_head: int = 16
    d_model: int = 256
    d_k: int = 4
    noise_std: float = 0.0
    noise_fraction: float = 0.25
    noise_space: str = "normalized"
    noise_resample: bool = False
    test_noise_stds: tuple[float, ...] = (0.0,)
    train_limit: int | None = None
    val_limit: int | None = None
    test_limit: int | None = None
    deterministic: bool = True
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    num_workers: int = 0
    out_dir: str | None = None
    progress: bool = True
    run_id: str | None = None
    n_examples: int = 4

    # -- validation --------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self._check_dataset_root()
        self._check_ints()
        self._check_floats()
        self._check_widths()
        self._check_choices()
        self._check_flags()
        for name in ("out_dir", "run_id"):
            value = getattr(self, name)
            if value is not None:
                if isinstance(value, os.PathLike):
                    value = os.fspath(value)
                if not isinstance(value, str) or not value.strip():
                    raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
                setattr(self, name, value)
        if self.run_id is not None and ("/" in self.run_id or "\\" in self.run_id):
            raise ValueError(f"run_id must not contain a path separator, got {self.run_id!r}")

    def _check_dataset_root(self) -> None:
        root = self.dataset_root
        if root is None or (isinstance(root, str) and not root.strip()):
            raise ValueError("dataset_root is missing: give the folder of a PASTIS-format dataset")
        if not isinstance(root, (str, os.PathLike)):
            raise ValueError(f"dataset_root must be a path, got {type(root).__name__} {root!r}")
        expanded = os.path.expanduser(os.path.expandvars(os.fspath(root)))
        unset = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", expanded)
        if unset:
            raise ValueError(f"dataset_root {os.fspath(root)!r} uses environment variable(s) {unset} that are not set")
        if not Path(expanded).is_dir():
            raise ValueError(f"dataset_root {expanded!r} is missing: no such directory")
        self.dataset_root = expanded

    def _check_ints(self) -> None:
        bounds = {"fold": (1, 5), "epochs": (1, None), "batch_size": (1, None), "seed": (0, None),
                  "n_head": (1, None), "d_model": (1, None), "d_k": (1, None), "num_workers": (0, None),
                  "n_examples": (0, None)}
        for name, (lo, hi) in bounds.items():
            value = getattr(self, name)
            if not _is_int(value):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if value < lo or (hi is not None and value > hi):
                span = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
                raise ValueError(f"{name} must be {span}, got {value}")
            setattr(self, name, int(value))
        for name in ("train_limit", "val_limit", "test_limit"):
            value = getattr(self, name)
            if value is not None:
                if not _is_int(value) or value < 1:
                    raise ValueError(f"{name} must be None (the whole split) or an int >= 1, got {value!r}")
                setattr(self, name, int(value))

    def _check_floats(self) -> None:
        for name in ("lr", "noise_std", "noise_fraction"):
            value = getattr(self, name)
            if not _is_number(value) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            setattr(self, name, float(value))
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0 (a standard deviation), got {self.noise_std}")
        if not 0.0 <= self.noise_fraction <= 1.0:
            raise ValueError(f"noise_fraction must lie in [0, 1], got {self.noise_fraction}")
        stds = self.test_noise_stds
        if _is_number(stds):
            stds = (stds,)
        if isinstance(stds, (str, bytes)) or not isinstance(stds, Sequence) or len(stds) == 0:
            raise ValueError(f"test_noise_stds must be a non-empty list of numbers >= 0, got {self.test_noise_stds!r}")
        for s in stds:
            if not _is_number(s) or not math.isfinite(s) or s < 0:
                raise ValueError(f"test_noise_stds must hold finite numbers >= 0, got {s!r} in {self.test_noise_stds!r}")
        self.test_noise_stds = tuple(float(s) for s in stds)
        if len(set(self.test_noise_stds)) != len(self.test_noise_stds):
            raise ValueError(f"test_noise_stds has duplicates: {self.test_noise_stds}")

    def _check_widths(self) -> None:
        for name in ("encoder_widths", "decoder_widths", "out_conv"):
            value = getattr(self, name)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
                raise ValueError(f"{name} must be a non-empty list of ints, got {value!r}")
            if not all(_is_int(v) and v >= 1 for v in value):
                raise ValueError(f"{name} must hold ints >= 1, got {value!r}")
            setattr(self, name, tuple(int(v) for v in value))
        if len(self.encoder_widths) < 2:
            raise ValueError(f"encoder_widths needs at least 2 stages, got {self.encoder_widths}")
        if len(self.decoder_widths) != len(self.encoder_widths):
            raise ValueError(f"decoder_widths {self.decoder_widths} must have as many stages as encoder_widths "
                             f"{self.encoder_widths}")
        if self.decoder_widths[-1] != self.encoder_widths[-1]:
            raise ValueError(f"decoder_widths[-1] ({self.decoder_widths[-1]}) must equal encoder_widths[-1] "
                             f"({self.encoder_widths[-1]})")
        if len(self.out_conv) != 2 or self.out_conv[-1] != N_CLASSES:
            raise ValueError(f"out_conv must be (hidden width, {N_CLASSES}), got {self.out_conv}")
        if any(w % self.n_head for w in self.encoder_widths):
            raise ValueError(f"n_head ({self.n_head}) must divide every encoder width {self.encoder_widths}")

    def _check_choices(self) -> None:
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {self.device!r} (unknown device)")
        if self.noise_space not in NOISE_SPACES:
            raise ValueError(f"noise_space must be one of {NOISE_SPACES}, got {self.noise_space!r}")
        if self.amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {self.amp!r}")
        if self.device == "cpu" and self.amp != "auto":  # GPU-only modes fail here already ("auto" never fails;
            _resolve_amp(self.amp, torch.device("cpu"))  # a GPU's own modes are known at run time)

    def _check_flags(self) -> None:
        for name in ("noise_resample", "deterministic", "channels_last", "compile", "progress"):
            value = getattr(self, name)
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"{name} must be true or false, got {value!r}")
            setattr(self, name, bool(value))

    # -- conversion --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "RunConfig":
        """Build from a mapping of field values; an unknown key raises a ValueError that names it."""
        if not isinstance(d, Mapping):
            raise ValueError(f"a run config must be a mapping of field values, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown RunConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(d))

    def replace(self, **changes: Any) -> "RunConfig":
        """A validated copy with some fields changed."""
        return RunConfig.from_dict({**self.to_dict(), **changes})

    def default_run_id(self) -> str:
        """``run_id`` if set, else ``fold<k>_noise<std>_seed<s>``."""
        return self.run_id or f"fold{self.fold}_noise{self.noise_std:g}_seed{self.seed}"


def _config_differences(stored: Mapping[str, Any], config: RunConfig) -> list[str]:
    """The non-harmless fields whose values differ between a stored config.json and ``config``."""
    try:
        stored_cfg = RunConfig.from_dict(stored).to_dict()
    except (TypeError, ValueError):
        stored_cfg = dict(stored)
    new = config.to_dict()
    keys = sorted((set(stored_cfg) | set(new)) - HARMLESS_FIELDS)
    return [f"{k}: stored {stored_cfg.get(k, '<absent>')!r} != new {new.get(k, '<absent>')!r}"
            for k in keys if stored_cfg.get(k, "<absent>") != new.get(k, "<absent>")]


def load_config_file(path: str | Path, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Read a RunConfig from a YAML file: either a flat mapping of fields, or a sweep file
    (``dataset_root``, ``fixed`` and ``grid``), in which case every grid key must be given in ``overrides``."""
    import yaml

    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: cannot read the config file: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise ValueError(f"{path}: expected a mapping of RunConfig fields, got {type(doc).__name__}")
    overrides = dict(overrides or {})
    if "fixed" in doc or "grid" in doc:
        values = {**(doc.get("fixed") or {})}
        if "dataset_root" in doc:
            values["dataset_root"] = doc["dataset_root"]
        grid = doc.get("grid") or {}
        missing = [k for k in grid if k not in overrides]
        if missing:
            raise ValueError(f"{path} is a sweep: choose its grid point with --set {missing[0]}=... "
                             f"for every grid key {list(grid)} (missing {missing})")
    else:
        values = dict(doc)
        values.pop("name", None)
    values.update(overrides)
    return RunConfig.from_dict(values)


# ==================================================================================================
# Device, precision, global settings
# ==================================================================================================


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    """The torch device of ``RunConfig.device`` (see :func:`utae.platform.resolve_device`), with an explicit
    CUDA index; in a multi-process CUDA run, ``cuda:LOCAL_RANK``."""
    ctx = ctx or DistContext()
    device = _platform_device(name)
    if device.type != "cuda":
        return device
    index = ctx.local_rank if ctx.enabled else (device.index if device.index is not None else torch.cuda.current_device())
    if index >= torch.cuda.device_count():
        raise ValueError(f"device={name!r}: there is no CUDA device {index} ({torch.cuda.device_count()} visible)")
    return torch.device("cuda", index)


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``RunConfig.amp`` on ``device`` (None: full float32); see :mod:`utae.precision`.

    ``"auto"`` picks bf16 on CUDA GPUs that support it, else fp16; on CPU, off (logged). ``"fp16"`` needs CUDA.
    """
    return _resolve_amp(amp, device)[0]


def _amp_name(dtype: torch.dtype | None, tf32: bool = False) -> str:
    if dtype is None and tf32:
        return "tf32"
    return {None: "off", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


@contextlib.contextmanager
def torch_settings(deterministic: bool, device: torch.device | None = None) -> Iterator[None]:
    """Deterministic algorithms (``cudnn.benchmark`` off, ``CUBLAS_WORKSPACE_CONFIG`` set) or fast ones
    (``cudnn.benchmark`` on) for the duration of the block; the previous settings come back after.

    On the CPU every operation of U-TAE has a deterministic kernel, so any other is an error
    (``warn_only=False``). On CUDA, reflect padding and bilinear upsampling have none: ``warn_only=True``
    keeps the run going with every deterministic kernel that exists, and says so."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        if deterministic:
            warn_only = device is not None and device.type == "cuda"
            if warn_only:
                log.warning("deterministic=True on %s: reflect padding and bilinear upsampling have no "
                            "deterministic CUDA backward; every other kernel is deterministic", device)
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
            torch.use_deterministic_algorithms(True, warn_only=warn_only)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        else:
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.benchmark = True
            torch.backends.cudnn.deterministic = False
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


def seed_everything(seed: int) -> None:
    """Seed the global python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _sync_time(device: torch.device) -> float:
    """``time.perf_counter()`` after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ==================================================================================================
# Data
# ==================================================================================================


@dataclass
class Splits:
    """The three datasets of a run and the normalisation they share (the training folds' statistics)."""

    train: Dataset
    val: Dataset
    test: Dataset
    mean: np.ndarray
    std: np.ndarray


def _limit(dataset: Dataset, limit: int | None, seed: int, name: str, stream: int) -> Dataset:
    """A seeded random subset of ``limit`` items (in dataset order), or the dataset itself."""
    n = len(dataset)
    if limit is None or limit == n:
        return dataset
    if limit > n:
        raise ValueError(f"{name}={limit} but the split has only {n} patches")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0DE, stream]))
    return Subset(dataset, sorted(rng.choice(n, size=limit, replace=False).tolist()))


def make_datasets(config: RunConfig) -> Splits:
    """Train, val and test datasets of ``config.fold``'s rotation, limited to seeded subsets, with the training
    noise wrapped around the training set. All three are normalised with the training folds' statistics."""
    train_folds, val_folds, test_folds = FOLD_ROTATIONS[config.fold - 1]
    train = PastisDataset(config.dataset_root, folds=train_folds)
    stats = (train.mean, train.std)
    val = PastisDataset(config.dataset_root, folds=val_folds, norm_stats=stats)
    test = PastisDataset(config.dataset_root, folds=test_folds, norm_stats=stats)
    train_sub = _limit(train, config.train_limit, config.seed, "train_limit", 0)
    if config.noise_std > 0 and config.noise_fraction > 0:
        spec = NoiseSpec(std=config.noise_std, fraction=config.noise_fraction, space=config.noise_space,
                         resample=config.noise_resample, seed=config.seed)
        train_sub = NoisyDataset(train_sub, spec, channel_std=train.std)
    return Splits(train=train_sub,
                  val=_limit(val, config.val_limit, config.seed, "val_limit", 1),
                  test=_limit(test, config.test_limit, config.seed, "test_limit", 2),
                  mean=np.asarray(train.mean), std=np.asarray(train.std))


def _seed_worker(worker_id: int) -> None:
    """Seed python and numpy in a DataLoader worker from its torch seed (set per worker by the loader)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, seed: int, device: torch.device,
                num_workers: int = 0, ctx: DistContext | None = None, persistent: bool = True) -> DataLoader:
    """A DataLoader over this process's share of ``dataset`` (see :class:`utae.distributed.ShardSampler`).

    Training shuffles each epoch from ``(seed, epoch)``; evaluation keeps every sample (no ``drop_last``).
    Batches are :func:`utae.data.pad_collate` dicts. ``pin_memory`` on CUDA; workers are persistent when
    there are any and ``persistent`` is True.
    """
    ctx = ctx or DistContext()
    sampler = ShardSampler(len(dataset), shuffle=train, seed=seed, rank=ctx.rank, world_size=ctx.world_size)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, collate_fn=pad_collate, drop_last=False,
        num_workers=num_workers, pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0 and persistent, worker_init_fn=_seed_worker,
        generator=torch.Generator().manual_seed(seed),
    )


def _set_loader_epoch(loader: DataLoader, epoch: int, seed: int) -> None:
    """Make the epoch's order, worker seeds and (resampled) training noise depend only on ``(seed, epoch)``."""
    if isinstance(loader.sampler, ShardSampler):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    if loader.generator is not None:
        loader.generator.manual_seed(seed * 100_003 + epoch)


# ==================================================================================================
# Model and the training pieces
# ==================================================================================================


def build_model(config: RunConfig) -> UTAE:
    """A U-TAE with the widths of ``config`` (10 input bands, 20 classes)."""
    return UTAE(input_dim=10, encoder_widths=config.encoder_widths, decoder_widths=config.decoder_widths,
                out_conv=(config.out_conv[0], N_CLASSES), n_head=config.n_head, d_model=config.d_model,
                d_k=config.d_k)


@dataclass
class Engine:
    """What trains and evaluates: ``raw`` holds the parameters (and is checkpointed), ``model`` is what the
    training steps call (``raw`` itself, or wrapped in DistributedDataParallel and/or compiled), ``eval_model``
    what evaluation calls (never DDP-wrapped: processes may see different numbers of eval batches)."""

    raw: nn.Module
    model: nn.Module
    eval_model: nn.Module
    optimizer: torch.optim.Optimizer
    device: torch.device
    amp_dtype: torch.dtype | None = None
    scaler: Any = None
    ctx: DistContext = field(default_factory=DistContext)


def build_engine(config: RunConfig, device: torch.device, amp_dtype: torch.dtype | None,
                 ctx: DistContext | None = None) -> Engine:
    """Build the model on ``device`` (channels-last, DDP and compile as configured), Adam and the grad scaler."""
    ctx = ctx or DistContext()
    raw = build_model(config).to(device)
    if config.channels_last:
        raw = raw.to(memory_format=torch.channels_last)
    model: nn.Module = raw
    if ctx.enabled:
        model = nn.parallel.DistributedDataParallel(raw, device_ids=[device.index] if device.type == "cuda" else None)
    eval_model: nn.Module = raw
    if config.compile:
        try:
            model = torch.compile(model)
            eval_model = model if not ctx.enabled else torch.compile(raw)
        except Exception as exc:  # noqa: BLE001 - any failure of torch.compile is reported the same way
            raise RuntimeError(f"compile=True: torch.compile failed ({type(exc).__name__}: {exc}); "
                               "set compile=False") from exc
    optimizer = torch.optim.Adam(raw.parameters(), lr=config.lr)
    scaler = torch.amp.GradScaler(device.type) if amp_dtype == torch.float16 else None
    return Engine(raw=raw, model=model, eval_model=eval_model, optimizer=optimizer, device=device,
                  amp_dtype=amp_dtype, scaler=scaler, ctx=ctx)


def compute_loss(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy summed over the non-void pixels, in float32, and the number of those pixels.

    ``logits`` ``(B, 20, H, W)``, ``target`` ``(B, H, W)`` int64 -> ``(loss_sum, n_valid)`` 0-d tensors.
    ``loss_sum / n_valid`` is the official loss (``CrossEntropyLoss`` with weight 0 on void, mean reduction).
    Written with ``log_softmax`` and ``gather`` so that it also has a deterministic CUDA backward.
    """
    logp = torch.log_softmax(logits.float(), dim=1)
    nll = -logp.gather(1, target.unsqueeze(1)).squeeze(1)
    valid = target != VOID_LABEL
    return torch.where(valid, nll, torch.zeros_like(nll)).sum(), valid.sum()


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device,
               image: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """Move a pad_collate batch once: ``(x (B,T,C,H,W), dates (B,T), pad_mask (B,T), target (B,H,W))``.

    The pad mask stays on the host: U-TAE selects the real frames from it there, and moves its own copy to the
    device without a synchronisation."""
    nb = device.type == "cuda"
    x = (batch["image"] if image is None else image).to(device, non_blocking=nb)
    return (x, batch["dates"].to(device, non_blocking=nb), batch["pad_mask"],
            batch["mask"].to(device, non_blocking=nb))


def _miou(cm: torch.Tensor) -> float:
    return scores(cm.cpu())["miou"]


def _progress_bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, leave=True, dynamic_ncols=True)


_NO_BAD_BATCH = 2**62


@dataclass
class EpochResult:
    """Sums of one training epoch or one evaluation, already summed over processes."""

    cm: np.ndarray            # (20, 20) int64
    loss: float               # mean cross-entropy over the non-void pixels
    n_samples: int
    seconds: float


def train_one_epoch(engine: Engine, loader: DataLoader, *, epoch: int, progress: bool = False,
                    check_every: int | None = None) -> EpochResult:
    """One pass over the training loader. The confusion matrix and loss sums stay on the device; they (and
    the non-finite-loss flag) are read every ``check_every`` batches (CPU: every batch, before the optimizer
    step; CUDA: every 25) and at the end.

    Raises:
        NonFiniteLossError: the loss of a batch was NaN or infinite (epoch and batch 1-based in the message).
    """
    device, ctx = engine.device, engine.ctx
    engine.model.train()
    check_every = check_every or (1 if device.type == "cpu" else 25)
    cm = torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_pix = torch.zeros((), dtype=torch.int64, device=device)
    first_bad = torch.full((), _NO_BAD_BATCH, dtype=torch.int64, device=device)
    n_samples, n_batches = 0, len(loader)
    bar = _progress_bar(n_batches, f"epoch {epoch}", progress and ctx.is_main)
    start = _sync_time(device)
    try:
        for step, batch in enumerate(loader, start=1):
            x, dates, pad_mask, target = _to_device(batch, device)
            with _precision_autocast(device, engine.amp_dtype):
                logits = engine.model(x, batch_positions=dates, pad_mask=pad_mask)
            ce_sum, n_valid = compute_loss(logits, target)
            loss = ce_sum / n_valid.clamp(min=1)
            bad_now = ~torch.isfinite(loss.detach()) & (first_bad == _NO_BAD_BATCH)
            first_bad = torch.where(bad_now, torch.full_like(first_bad, step), first_bad)
            if step % check_every == 0 or step == n_batches:
                _raise_if_nonfinite(first_bad, epoch, ctx)
            engine.optimizer.zero_grad(set_to_none=True)
            if engine.scaler is not None:
                engine.scaler.scale(loss).backward()
                engine.scaler.step(engine.optimizer)
                engine.scaler.update()
            else:
                loss.backward()
                engine.optimizer.step()
            with torch.no_grad():
                cm += confusion_matrix(logits.detach().argmax(1), target, N_CLASSES)
                loss_sum += ce_sum.detach().double()
                n_pix += n_valid
            n_samples += x.shape[0]
            bar.update(1)
            if bar.disable is False and (step % check_every == 0 or step == n_batches):
                bar.set_postfix(loss=f"{float(loss_sum) / max(int(n_pix), 1):.4f}", miou=f"{_miou(cm):.3f}")
    finally:
        bar.close()
    return _reduce(cm, loss_sum, n_pix, n_samples, _sync_time(device) - start, ctx)


def _raise_if_nonfinite(first_bad: torch.Tensor, epoch: int, ctx: DistContext) -> None:
    flag = all_reduce_min(first_bad.clone(), ctx)
    if int(flag) != _NO_BAD_BATCH:
        where = f" of process {ctx.rank}" if ctx.enabled else ""
        raise NonFiniteLossError(f"non-finite training loss at epoch {epoch}, batch {int(flag)}{where}; the run "
                                 "stops here (the checkpoint of the last complete epoch is kept)")


def _reduce(cm: torch.Tensor, loss_sum: torch.Tensor, n_pix: torch.Tensor, n_samples: int, seconds: float,
            ctx: DistContext) -> EpochResult:
    """Sum the per-process counts (one read of the device per call)."""
    count = torch.tensor(n_samples, dtype=torch.int64, device=cm.device)
    packed = [all_reduce_sum(t, ctx) for t in (cm, loss_sum, n_pix, count)]
    cm_h, loss_h, pix_h, count_h = (t.cpu() for t in packed)
    mean_loss = float(loss_h) / int(pix_h) if int(pix_h) > 0 else math.nan
    return EpochResult(cm=cm_h.numpy().astype(np.int64), loss=mean_loss, n_samples=int(count_h), seconds=seconds)


def _test_generator(seed: int, patch_id: int, std: float) -> torch.Generator:
    return seeded_generator(int(seed), _TEST_NOISE_STREAM, int(patch_id), int(round(std * 1_000_000)))


def add_test_noise(image: torch.Tensor, pad_mask: torch.Tensor, patch_ids: torch.Tensor, std: float, *,
                   seed: int, space: str = "normalized", channel_std: Any = None) -> torch.Tensor:
    """Test-time noise on a padded CPU batch ``image`` ``(B, T, C, H, W)`` (``pad_mask`` ``(B, T)``,
    ``patch_ids`` ``(B,)``): a new batch with N(0, std) on every real frame; padded frames are untouched.

    The noise of a patch depends only on ``(seed, patch_id, std)``: the same for the same run seed whatever
    the batch size, the number of processes or the device. ``space="raw"`` takes ``std`` in reflectance x
    10,000 units (needs ``channel_std``, the ``(C,)`` normalisation std).
    """
    if std == 0:
        return image
    std_n = normalized_std(std, space, channel_std)
    ids = patch_ids.tolist()
    return torch.stack([add_noise(image[i], std_n, pad_mask[i], generator=_test_generator(seed, pid, std))
                        for i, pid in enumerate(ids)])


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *, noise_std: float = 0.0,
             seed: int = 0, noise_space: str = "normalized", channel_std: Any = None,
             amp: str | torch.dtype | None = None, ctx: DistContext | None = None,
             progress: bool = False, desc: str = "eval") -> tuple[np.ndarray, float]:
    """Evaluate ``model`` on every sample of ``loader`` (optionally with seeded test-time noise, see
    :func:`add_test_noise`), summed over processes in a multi-process run.

    ``amp`` is a ``RunConfig.amp`` mode (which also sets the float32 math, see :func:`utae.precision.float32_math`)
    or an autocast dtype (None: float32, under the current TensorFloat-32 settings).

    Returns:
        ``(cm, mean_loss)``: the ``(20, 20)`` int64 confusion matrix (rows = true) and the mean cross-entropy
        over the non-void pixels.
    """
    amp_dtype = resolve_amp(amp, device) if isinstance(amp, str) else amp
    math_mode = float32_math(tf32_enabled(amp)) if isinstance(amp, str) else contextlib.nullcontext()
    with math_mode:
        result = _evaluate(model, loader, device, noise_std=noise_std, seed=seed, noise_space=noise_space,
                           channel_std=channel_std, amp_dtype=amp_dtype, ctx=ctx or DistContext(),
                           progress=progress, desc=desc)
    return result.cm, result.loss


@torch.no_grad()
def _evaluate(model: nn.Module, loader: DataLoader, device: torch.device, *, noise_std: float, seed: int,
              noise_space: str, channel_std: Any, amp_dtype: torch.dtype | None, ctx: DistContext,
              progress: bool, desc: str) -> EpochResult:
    was_training = model.training
    model.eval()
    cm = torch.zeros(N_CLASSES, N_CLASSES, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_pix = torch.zeros((), dtype=torch.int64, device=device)
    n_samples = 0
    bar = _progress_bar(len(loader), desc, progress and ctx.is_main)
    start = _sync_time(device)
    try:
        for batch in loader:
            image = add_test_noise(batch["image"], batch["pad_mask"], batch["patch_id"], noise_std, seed=seed,
                                   space=noise_space, channel_std=channel_std)
            x, dates, pad_mask, target = _to_device(batch, device, image=image)
            with _precision_autocast(device, amp_dtype):
                logits = model(x, batch_positions=dates, pad_mask=pad_mask)
            ce_sum, n_valid = compute_loss(logits, target)
            cm += confusion_matrix(logits.argmax(1), target, N_CLASSES)
            loss_sum += ce_sum.double()
            n_pix += n_valid
            n_samples += x.shape[0]
            bar.update(1)
    finally:
        bar.close()
        model.train(was_training)
    return _reduce(cm, loss_sum, n_pix, n_samples, _sync_time(device) - start, ctx)


# ==================================================================================================
# fit: epochs, best-epoch selection, state for resume
# ==================================================================================================


@dataclass
class TrainState:
    """Where training stands after ``epoch`` complete epochs (everything a resume needs besides the model,
    the optimizer and the RNGs)."""

    epoch: int = 0
    best_epoch: int = 0
    best_score: float = -math.inf
    best_model: dict[str, torch.Tensor] | None = None
    best_val: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)


def _cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _score(miou: float) -> float:
    return miou if math.isfinite(miou) else -math.inf


def is_better(val_miou: float, best_score: float) -> bool:
    """Whether an epoch with validation mIoU ``val_miou`` replaces the best one so far: a higher or equal
    score (a tie goes to the later epoch); an undefined (NaN) mIoU counts as the lowest score."""
    return _score(val_miou) >= best_score


def fit(engine: Engine, train_loader: DataLoader, val_loader: DataLoader, *, epochs: int, seed: int = 0,
        state: TrainState | None = None, progress: bool = False,
        on_epoch_end: Callable[[TrainState], None] | None = None,
        max_epochs_this_call: int | None = None) -> TrainState:
    """Train from ``state.epoch + 1`` to ``epochs``, validating after each epoch.

    The best epoch is the one with the highest validation mIoU (NaN counts as the lowest; a tie goes to the
    later epoch); its weights are kept in ``state.best_model``. ``on_epoch_end(state)`` runs after each
    epoch (the run writes its checkpoint and history there). ``max_epochs_this_call`` stops after that many
    epochs of this call (a planned interruption). Returns the state.
    """
    state = state or TrainState()
    device, ctx = engine.device, engine.ctx
    done_here = 0
    while state.epoch < epochs and (max_epochs_this_call is None or done_here < max_epochs_this_call):
        epoch = state.epoch + 1
        _set_loader_epoch(train_loader, epoch, seed)
        reset_peak_memory(device)
        tr = train_one_epoch(engine, train_loader, epoch=epoch, progress=progress)
        broadcast_buffers(engine.raw, ctx)
        va = _evaluate(engine.eval_model, val_loader, device, noise_std=0.0, seed=seed, noise_space="normalized",
                       channel_std=None, amp_dtype=engine.amp_dtype, ctx=ctx, progress=False, desc="val")
        tr_s, va_s = scores(tr.cm), scores(va.cm)
        if is_better(va_s["miou"], state.best_score):
            state.best_epoch, state.best_score = epoch, _score(va_s["miou"])
            state.best_model = _cpu_state_dict(engine.raw)
            state.best_val = {**va_s, "loss": va.loss}
        state.history.append({
            "epoch": epoch, "train_loss": tr.loss, "train_oa": tr_s["oa"], "train_miou": tr_s["miou"],
            "val_loss": va.loss, "val_oa": va_s["oa"], "val_miou": va_s["miou"],
            "sec_epoch": tr.seconds + va.seconds,
            "train_samples_per_s": tr.n_samples / tr.seconds if tr.seconds > 0 else math.nan,
            "eval_samples_per_s": va.n_samples / va.seconds if va.seconds > 0 else math.nan,
            "peak_mem_mb": float(peak_memory_mb(device)),
        })
        state.epoch = epoch
        done_here += 1
        if progress and ctx.is_main:
            row = state.history[-1]
            log.info("epoch %d/%d: train loss %.4f mIoU %.3f | val loss %.4f mIoU %.3f | %.1f s", epoch, epochs,
                     row["train_loss"], row["train_miou"], row["val_loss"], row["val_miou"], row["sec_epoch"])
        if on_epoch_end is not None:
            on_epoch_end(state)
    return state


# ==================================================================================================
# Checkpoints
# ==================================================================================================


def _checkpoint(engine: Engine, state: TrainState, config: RunConfig,
                rng_states: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The checkpoint dict. ``rng_states``: every process's RNG states in rank order (see
    :func:`utae.distributed.gather_objects`); by default this process's alone."""
    rng_states = list(rng_states) if rng_states is not None else [_rng_state()]
    return {
        "format": CHECKPOINT_FORMAT, "config": config.to_dict(), "epoch": state.epoch,
        "model": engine.raw.state_dict(), "optimizer": engine.optimizer.state_dict(),
        "scaler": engine.scaler.state_dict() if engine.scaler is not None else None,
        "best_epoch": state.best_epoch, "best_score": state.best_score, "best_model": state.best_model,
        "best_val": state.best_val, "history": state.history, "rng": rng_states[0], "rng_per_rank": rng_states,
    }


def _load_checkpoint(path: Path, engine: Engine) -> TrainState:
    """Restore model, optimizer, scaler and RNGs from ``path``; returns the training state."""
    try:
        # Our own file: it holds python RNG states and dicts besides tensors, hence weights_only=False.
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001
        raise RuntimeError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc}); delete it to "
                           "start the run from scratch") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise RuntimeError(f"{path}: not a checkpoint of this engine (format {CHECKPOINT_FORMAT} expected)")
    engine.raw.load_state_dict(ckpt["model"])
    engine.optimizer.load_state_dict(ckpt["optimizer"])
    if engine.scaler is not None and ckpt.get("scaler") is not None:
        engine.scaler.load_state_dict(ckpt["scaler"])
    # Each process takes back its own RNG states (dropout masks differ between processes); a checkpoint
    # written by another number of processes gives every process rank 0's.
    per_rank = ckpt.get("rng_per_rank") or [ckpt["rng"]]
    same_world = len(per_rank) == engine.ctx.world_size
    _set_rng_state(per_rank[engine.ctx.rank] if same_world else per_rank[0])
    return TrainState(epoch=ckpt["epoch"], best_epoch=ckpt["best_epoch"], best_score=ckpt["best_score"],
                      best_model=ckpt["best_model"], best_val=ckpt["best_val"], history=list(ckpt["history"]))


# ==================================================================================================
# Predictions for maps
# ==================================================================================================


def rgb_composite(image: torch.Tensor, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The B4, B3, B2 (red, green, blue) composite of the middle frame of a normalised ``(T, 10, H, W)`` image,
    de-normalised and contrast-stretched (2nd to 98th percentile) -> ``(H, W, 3)`` float32 in [0, 1]."""
    rgb_bands = [2, 1, 0]  # PASTIS band order: B2, B3, B4, B5, B6, B7, B8, B8A, B11, B12
    frame = image[image.shape[0] // 2].detach().cpu().numpy()[rgb_bands].astype(np.float64)
    raw = frame * np.asarray(std, dtype=np.float64)[rgb_bands, None, None] + \
        np.asarray(mean, dtype=np.float64)[rgb_bands, None, None]
    lo, hi = np.percentile(raw, [2, 98])
    out = np.clip((raw - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return out.transpose(1, 2, 0).astype(np.float32)


@torch.no_grad()
def predict_examples(model: nn.Module, dataset: Dataset, device: torch.device, *, n: int, mean: np.ndarray,
                     std: np.ndarray, amp_dtype: torch.dtype | None = None) -> dict[str, np.ndarray]:
    """Predictions on the first ``n`` items of ``dataset``: ``rgb`` ``(N, H, W, 3)``, ``target`` and ``pred``
    ``(N, H, W)`` int64, ``patch_id`` ``(N,)`` int64."""
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    if not items:
        return {"rgb": np.zeros((0, 0, 0, 3), np.float32), "target": np.zeros((0, 0, 0), np.int64),
                "pred": np.zeros((0, 0, 0), np.int64), "patch_id": np.zeros((0,), np.int64)}
    was_training = model.training
    model.eval()
    batch = pad_collate(items)
    x, dates, pad_mask, target = _to_device(batch, device)
    with _precision_autocast(device, amp_dtype):
        pred = model(x, batch_positions=dates, pad_mask=pad_mask).argmax(1)
    model.train(was_training)
    return {"rgb": np.stack([rgb_composite(it["image"], mean, std) for it in items]),
            "target": target.cpu().numpy().astype(np.int64), "pred": pred.cpu().numpy().astype(np.int64),
            "patch_id": batch["patch_id"].numpy().astype(np.int64)}


# ==================================================================================================
# run
# ==================================================================================================


def run_dir(config: RunConfig, device: torch.device | None = None) -> Path:
    """The run directory of ``config``: ``config.out_dir``, or ``results/runs/<platform>/<run_id>`` when it is
    None (``<platform>`` of ``device``, by default the device that ``config.device`` resolves to)."""
    if config.out_dir is not None:
        return Path(config.out_dir)
    device = resolve_device(config.device) if device is None else device
    return Path("results") / "runs" / platform_id(device) / config.default_run_id()


def _check_run_dir(out: Path, config: RunConfig) -> None:
    """A run directory that holds another run's config.json is an error (runs are never mixed)."""
    path = out / "config.json"
    if not path.exists():
        return
    diffs = _config_differences(read_json(path), config)
    if diffs:
        raise ValueError(f"{path} belongs to a different run; differing fields: {'; '.join(diffs)}. "
                         "Use another out_dir (or delete that run directory) to start this config.")


@contextlib.contextmanager
def _explained_errors(config: RunConfig, device: torch.device) -> Iterator[None]:
    """Turn the cryptic failures of deterministic mode and torch.compile into errors that name the setting."""
    try:
        yield
    except NonFiniteLossError:
        raise
    except Exception as exc:
        text = str(exc)
        module = type(exc).__module__
        if config.compile and (module.startswith("torch._dynamo") or module.startswith("torch._inductor")):
            raise RuntimeError(f"compile=True: torch.compile failed on {device} ({type(exc).__name__}: "
                               f"{text.splitlines()[0] if text else ''}); set compile=False") from exc
        if config.deterministic and "does not have a deterministic implementation" in text:
            raise RuntimeError(f"deterministic=True: an operation of this run has no deterministic implementation "
                               f"on {device} ({text.splitlines()[0]}); set deterministic=False on this device") from exc
        raise


def _timing(history: Sequence[Mapping[str, Any]], test_seconds: float, peak_test: float) -> dict[str, float]:
    """metrics.json "timing": means over the epochs (validation for the eval speed), the peak memory of the
    whole run, and the total of the epochs and of the test evaluations (also over resumed sessions)."""
    hist = pd.DataFrame(history)
    return {
        "sec_per_epoch": float(hist["sec_epoch"].mean()),
        "train_samples_per_s": float(hist["train_samples_per_s"].mean()),
        "eval_samples_per_s": float(hist["eval_samples_per_s"].mean()),
        "peak_mem_mb": float(max(hist["peak_mem_mb"].max(), peak_test)),
        "total_s": float(hist["sec_epoch"].sum() + test_seconds),
    }


def _test_all(engine: Engine, loader: DataLoader, config: RunConfig, channel_std: np.ndarray
              ) -> tuple[EpochResult, list[dict[str, Any]], float]:
    """Clean test, then every test-time noise level; returns (clean result, test_noise entries, seconds)."""
    results: dict[float, EpochResult] = {}
    for std in sorted({0.0, *config.test_noise_stds}):
        results[std] = _evaluate(engine.eval_model, loader, engine.device, noise_std=std, seed=config.seed,
                                 noise_space=config.noise_space, channel_std=channel_std,
                                 amp_dtype=engine.amp_dtype, ctx=engine.ctx, progress=config.progress,
                                 desc=f"test (noise {std:g})")
    curve = []
    for std in config.test_noise_stds:
        s = scores(results[std].cm)
        curve.append({"std": std, "oa": s["oa"], "miou": s["miou"], "iou": s["iou"]})
    return results[0.0], curve, sum(r.seconds for r in results.values())


def run(config: RunConfig | Mapping[str, Any], *, max_epochs_this_call: int | None = None) -> dict[str, Any] | None:
    """Train, select, test and write the run directory of ``config`` (see the module docstring).

    A finished run (its metrics.json exists) returns its stored metrics at once; an interrupted one resumes
    from checkpoint.pt. ``max_epochs_this_call`` stops after that many epochs of this call and returns None
    (the run is then unfinished; call again to resume). In a torchrun multi-process run, every process calls
    this; only rank 0 writes files.

    Returns:
        The metrics.json dict, or None when stopped early by ``max_epochs_this_call``.
    """
    if isinstance(config, Mapping):
        config = RunConfig.from_dict(config)
    if not isinstance(config, RunConfig):
        raise TypeError(f"config must be a RunConfig or a mapping of its fields, got {type(config).__name__}")
    ctx = dist_context()
    device = resolve_device(config.device, ctx)
    amp_dtype = resolve_amp(config.amp, device)
    out = run_dir(config, device)
    _check_run_dir(out, config)
    if (out / "metrics.json").exists():
        return read_json(out / "metrics.json")
    created_group = init_process_group(ctx, device)
    try:
        with torch_settings(config.deterministic, device), float32_math(tf32_enabled(config.amp)), \
                _explained_errors(config, device):
            return _run(config, ctx, device, amp_dtype, out, max_epochs_this_call)
    finally:
        if created_group:
            torch.distributed.destroy_process_group()


def _run(config: RunConfig, ctx: DistContext, device: torch.device, amp_dtype: torch.dtype | None, out: Path,
         max_epochs_this_call: int | None) -> dict[str, Any] | None:
    barrier(ctx)  # every process has checked the run directory before rank 0 writes to it
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "config.json", config.to_dict())
        tf32 = tf32_enabled(config.amp)
        extra = {"amp": _amp_name(amp_dtype, tf32), "amp_requested": config.amp,
                 "float32_math": "tf32" if tf32 else "ieee", "channels_last": config.channels_last,
                 "compile": config.compile, "world_size": ctx.world_size, "num_workers": config.num_workers,
                 # On CUDA a few kernels have no deterministic version (see torch_settings).
                 "deterministic_warn_only": config.deterministic and device.type == "cuda"}
        atomic_write_json(out / "platform.json", platform_info(device, config.deterministic, extra=extra))
    seed_everything(config.seed)
    splits = make_datasets(config)
    loader_kw = dict(batch_size=config.batch_size, seed=config.seed, device=device,
                     num_workers=config.num_workers, ctx=ctx)
    # Fresh training noise each epoch must reach the workers, so they are rebuilt each epoch then.
    persistent_train = not (config.noise_resample and config.noise_std > 0)
    train_loader = make_loader(splits.train, train=True, persistent=persistent_train, **loader_kw)
    val_loader = make_loader(splits.val, train=False, **loader_kw)
    test_loader = make_loader(splits.test, train=False, **loader_kw)
    engine = build_engine(config, device, amp_dtype, ctx)
    if ctx.enabled:
        torch.manual_seed(config.seed + 1000 * ctx.rank)  # different dropout masks in each process
    ckpt_path = out / "checkpoint.pt"
    state = _load_checkpoint(ckpt_path, engine) if ckpt_path.exists() else TrainState()
    if state.epoch and ctx.is_main:
        log.info("%s: resuming after epoch %d of %d", out, state.epoch, config.epochs)

    def save(st: TrainState) -> None:
        rng_states = gather_objects(_rng_state(), ctx)  # every process takes part
        if ctx.is_main:
            atomic_torch_save(ckpt_path, _checkpoint(engine, st, config, rng_states))
            atomic_write_csv(out / "history.csv", pd.DataFrame(st.history, columns=list(HISTORY_COLUMNS)))
        barrier(ctx)

    if ctx.is_main and state.history:
        atomic_write_csv(out / "history.csv", pd.DataFrame(state.history, columns=list(HISTORY_COLUMNS)))
    state = fit(engine, train_loader, val_loader, epochs=config.epochs, seed=config.seed, state=state,
                progress=config.progress, on_epoch_end=save, max_epochs_this_call=max_epochs_this_call)
    if state.epoch < config.epochs:
        return None
    return _finish(config, engine, state, splits, test_loader, out)


def _finish(config: RunConfig, engine: Engine, state: TrainState, splits: Splits, test_loader: DataLoader,
            out: Path) -> dict[str, Any]:
    """Test the best model and write confusion.npy, predictions.npz and (last) metrics.json."""
    engine.raw.load_state_dict(state.best_model)
    reset_peak_memory(engine.device)
    test, curve, test_seconds = _test_all(engine, test_loader, config, splits.std)
    best = state.history[state.best_epoch - 1]
    metrics = {
        "run_id": config.default_run_id(),
        "best_epoch": state.best_epoch,
        "epochs_completed": state.epoch,
        "n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test),
        "train": {"oa": best["train_oa"], "miou": best["train_miou"], "loss": best["train_loss"]},
        "val": state.best_val,
        "test": {**scores(test.cm), "loss": test.loss},
        "test_noise": curve,
        "timing": _timing(state.history, test_seconds, float(peak_memory_mb(engine.device))),
    }
    if engine.ctx.is_main:
        atomic_save_npy(out / "confusion.npy", test.cm.astype(np.int64))
        examples = predict_examples(engine.eval_model, splits.test, engine.device, n=config.n_examples,
                                    mean=splits.mean, std=splits.std, amp_dtype=engine.amp_dtype)
        _atomic_savez(out / "predictions.npz", examples)
        atomic_write_json(out / "metrics.json", metrics)
    barrier(engine.ctx)
    return read_json(out / "metrics.json")


def _atomic_savez(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """``np.savez_compressed`` written atomically."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


# ==================================================================================================
# Command line
# ==================================================================================================


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m utae.train --config params/x.yaml --set key=value ...`` (also under ``torchrun``)."""
    parser = argparse.ArgumentParser(prog="python -m utae.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="YAML file: RunConfig fields, or a sweep (pin grid keys with --set)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a field (the value is parsed as YAML); repeatable")
    parser.add_argument("--max-epochs-this-call", type=int, default=None, metavar="N",
                        help="stop after N epochs of this call, with the checkpoint written; run again to resume")
    args = parser.parse_args(argv)
    if args.max_epochs_this_call is not None and args.max_epochs_this_call < 1:
        parser.error(f"--max-epochs-this-call must be at least 1, got {args.max_epochs_this_call}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        config = load_config_file(args.config, _parse_set(args.overrides))
    except ValueError as exc:
        parser.error(str(exc))
    metrics = run(config, max_epochs_this_call=args.max_epochs_this_call)
    if metrics is None and dist_context().is_main:
        print(f"stopped after {args.max_epochs_this_call} epoch(s) of this call; run the same command to resume")
    if metrics is not None and dist_context().is_main:
        print(f"{metrics['run_id']}: best epoch {metrics['best_epoch']}, test OA {metrics['test']['oa']:.4f}, "
              f"test mIoU {metrics['test']['miou']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
