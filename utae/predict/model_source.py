"""The model of a prediction and the normalisation it was trained with, from a run folder or official weights.

Two sources (:func:`load_model_source`):

* **a run folder** of this tool (``config.json`` and ``checkpoint.pt``; or the ``checkpoint.pt`` itself): the
  weights of its best epoch (those it was tested with), the model and options of its ``config.json`` (any model of
  :mod:`utae.models.registry`). An evaluation-only run (``epochs`` 0) has no checkpoint: its ``init_weights`` file
  is loaded instead.
* **official U-TAE weights**: a ``Fold_k/model.pth.tar`` (or a ``.pth``/``.pt``/``.npz`` state dict), with the
  architecture of the ``conf.json`` beside it or above its ``Fold_k`` folder (the official defaults without one).

The normalisation. A run is trained on its fold rotation's training folds normalised with their statistics
(the mean over those folds of ``NORM_S2_patch.json``'s mean and std vectors, :func:`utae.pastis.dataset.fold_norm_stats`),
whatever its ``norm_stats``; the official code does the same. In order: ``norm`` (a ``NORM_S2_patch.json``, its
folder, or a JSON ``{"mean": [10], "std": [10]}``) when given; else the statistics the run recorded
(``metrics.json``'s ``normalisation``, :mod:`utae.training.run`); else, for a run older than that record, the
``NORM_S2_patch.json`` of the run's ``dataset_root`` when that folder is on this machine. Official weights need
``norm`` (PASTIS's ``NORM_S2_patch.json``): their training folds are those of fold rotation ``k`` (``Fold_k`` in
the path, or ``fold``). ``record["norm_source"]`` says which: ``"norm"``, ``"run"`` or ``"dataset"``. The model
is built in one place, :func:`build`; checkpoints are read with ``torch.load(weights_only=True)``
(:mod:`utae.training.weights`).

The window (the model's patch size). The run's training patch size is ``metrics.json``'s ``patch_size``, else
its dataset's first image header when the dataset is here. A model whose input size is fixed at construction
(:func:`utae.models.registry.needs_input_size`: the recurrent models, TSViT) is built for that size and takes no
other ``window``. The others take ``window`` when given, else that size, else PASTIS's 128: a multiple of
``2^(levels - 1)`` for U-TAE, of 4 for U-Net3D.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utae.models.registry import ModelError, needs_input_size, uses_dates
from utae.util.arrays import ArrayFileError, npy_header
from utae.util.atomic import to_jsonable
from utae.training.checkpoint import CheckpointError
from utae.config.run_config import RunConfig
from utae.pastis.metadata import FOLD_ROTATIONS, N_BANDS, PastisFormatError, fold_norm_stats
from utae.pastis.layout import NORM_FILE, image_path
from utae.pastis.metadata import read_metadata, read_norm
from utae.predict.errors import PredictError
from utae.rundir.paths import METRICS
from utae.training.weights import (CONFIG_ARCHITECTURE_FIELDS, WeightsError, architecture_differences, check_state_dict,
                          file_sha256, find_conf_json, read_conf_json, read_state_dict)

__all__ = ["PASTIS_PATCH", "ModelSource", "build", "read_norm_file", "load_model_source"]

#: PASTIS's patch size, the window of official weights and of runs whose dataset is not on this machine.
PASTIS_PATCH = 128
_FOLD_DIR = re.compile(r"Fold_(\d)")


@dataclass
class ModelSource:
    """A model ready to predict (eval mode, on the CPU) and its input statistics.

    ``mean`` and ``std``: ``(10,)`` float32, the training normalisation; ``window``: the patch size (the side of
    the ``(B, T, 10, window, window)`` inputs); ``multiple``: what a window's side must be a multiple of (the
    window itself for a model built for one size); ``record``: what was loaded (JSON-able: kind, files, sha256,
    the model's name and options, where the normalisation came from)."""

    model: nn.Module
    mean: np.ndarray
    std: np.ndarray
    window: int
    multiple: int
    record: dict[str, Any] = field(default_factory=dict)


def build(config: RunConfig, input_size: int | None = None) -> nn.Module:
    """The model of ``config`` (the one place a model is built, through :func:`utae.training.engine.build_model`:
    ``config.model`` with its options), with ``input_size`` (the window's side, px) for the models that take it at
    construction. An option or size the model refuses is a one-line :class:`PredictError`."""
    from utae.training.engine import build_model

    try:
        return build_model(config, input_size)
    except (ModelError, ValueError) as exc:
        raise PredictError(f"model {config.model!r}: {str(exc).splitlines()[0]}") from None


def _multiple(config: RunConfig) -> tuple[int, str]:
    """The side a window of ``config``'s model must be a multiple of, and why (models with a size fixed at
    construction are checked against it instead; a model of another package: 1, it checks its input itself)."""
    if config.model == "utae":
        return 2 ** (len(config.encoder_widths) - 1), f"the model has {len(config.encoder_widths)} levels"
    if config.model == "unet3d":
        return 4, "U-Net3D pools twice by 2"
    return 1, "any size"


def _window(config: RunConfig, window: int | None, trained: int | None) -> tuple[int, int]:
    """``(window, multiple)``: the window predict uses for ``config``'s model, given the ``window`` asked for and
    the run's training patch size ``trained`` (None when unknown)."""
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise PredictError(f"window must be a positive integer, got {window!r}")
    if needs_input_size(config.model):
        if window is not None and trained is not None and window != trained:
            raise PredictError(f"window (--window) must be {trained} px for model {config.model!r}: its input size "
                               f"is fixed at construction to the run's training patch size, got {window}")
        size = window or trained or PASTIS_PATCH
        return size, size
    size = window or trained or PASTIS_PATCH
    multiple, why = _multiple(config)
    if size < multiple or size % multiple:
        raise PredictError(f"window must be a multiple of {multiple} px ({why}), got {size!r}")
    return size, multiple


def read_norm_file(path: str | Path, fold: int | None) -> tuple[np.ndarray, np.ndarray, str]:
    """``(mean (10,), std (10,), description)`` float32 from a ``NORM_S2_patch.json`` (or its folder: the training
    folds of fold rotation ``fold``) or from a JSON ``{"mean": [10 numbers], "std": [10 numbers]}``."""
    path = Path(path)
    if path.is_dir():
        path = path / NORM_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PredictError(f"norm: no such file {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PredictError(f"{path}: not a JSON file ({type(exc).__name__}); expected {NORM_FILE} or "
                           '{"mean": [...], "std": [...]}') from None
    if isinstance(doc, dict) and "mean" in doc and "std" in doc:
        mean, std = _mean_std(doc, str(path))
        return mean, std, f"{path} (mean and std)"
    if fold is None:
        raise PredictError(f"{path}: a per-fold {NORM_FILE} needs the fold rotation of the weights (Fold_k in the "
                           "weights' path, or --fold)")
    if path.name != NORM_FILE:
        raise PredictError(f"{path}: expected a file named {NORM_FILE} (per-fold statistics) or a JSON with 'mean' "
                           "and 'std'")
    try:
        stats = read_norm(path.parent)
    except PastisFormatError as exc:
        raise PredictError(str(exc).splitlines()[0]) from None
    folds = FOLD_ROTATIONS[fold - 1][0]
    mean, std = fold_norm_stats(stats, folds)
    return mean, std, f"{path} (training folds {list(folds)} of fold rotation {fold})"


def _mean_std(doc: dict[str, Any], where: str) -> tuple[np.ndarray, np.ndarray]:
    """``doc["mean"]`` and ``doc["std"]`` as ``(10,)`` float32, checked: 10 finite numbers each, std > 0."""
    mean, std = (np.asarray(doc[k], dtype=np.float64) if _numbers(doc.get(k)) else None for k in ("mean", "std"))
    if mean is None or std is None or mean.shape != (N_BANDS,) or std.shape != (N_BANDS,) \
            or not np.isfinite(mean).all() or not (np.isfinite(std).all() and (std > 0).all()):
        raise PredictError(f"{where}: 'mean' and 'std' must be {N_BANDS} finite numbers each (std > 0)")
    return mean.astype(np.float32), std.astype(np.float32)


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def _dataset_patch(root: Path) -> int | None:
    """The patch size of the dataset at ``root`` (its first image's header), or None when it cannot be read."""
    try:
        first = read_metadata(root)[0]
        return int(npy_header(image_path(root, first.patch_id)).shape[-1])
    except (OSError, ValueError, ArrayFileError, IndexError):
        return None


def _ints(value: Any) -> Any:
    """conf.json's widths as ints: a JSON list, or the command-line text ``"[64,64,64,128]"``."""
    if isinstance(value, str) and re.fullmatch(r"\s*\[?[\d,\s]+\]?\s*", value):
        return [int(v) for v in value.strip().strip("[]").split(",") if v.strip()]
    return value


def _config(values: dict[str, Any], where: Path) -> RunConfig:
    """A RunConfig of the recorded architecture, built on this machine (its paths need not exist here)."""
    keep = {k: v for k, v in values.items() if k not in ("dataset_root", "init_weights", "out_dir")}
    keep.update(dataset_root=str(where), epochs=max(1, int(keep.get("epochs", 1) or 1)), device="cpu")
    try:
        return RunConfig.from_dict(keep)
    except ValueError as exc:
        raise PredictError(f"{where}: its config does not describe a model this tool builds ({exc})") from None


def _load(model: nn.Module, path: Path) -> None:
    try:
        state = read_state_dict(path)
        check_state_dict(model, state, source=str(path))
    except (WeightsError, CheckpointError) as exc:
        raise PredictError(str(exc).splitlines()[0]) from None
    model.load_state_dict(state, strict=True)


def _json_object(path: Path, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PredictError(f"{path}: cannot read the run's {what} ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise PredictError(f"{path}: expected a JSON object ({what})")
    return doc


def _run_norm(metrics: dict[str, Any], where: Path, norm: str | Path | None, fold: int,
              root: Path | None) -> tuple[np.ndarray, np.ndarray, str, str]:
    """``(mean (10,), std (10,), description, source)`` of a run: ``norm`` ("norm"), else the run's recorded
    ``normalisation`` ("run"), else its dataset's ``NORM_S2_patch.json`` ("dataset")."""
    if norm is not None:
        return (*read_norm_file(norm, fold), "norm")
    recorded = metrics.get("normalisation")
    if recorded is not None:
        if not isinstance(recorded, dict):
            raise PredictError(f"{where}: 'normalisation' must be an object with 'mean', 'std' and 'folds'")
        mean, std = _mean_std(recorded, f"{where}: normalisation")
        return mean, std, f"{where} (recorded: training folds {recorded.get('folds')})", "run"
    if root is None or not (root / NORM_FILE).is_file():
        raise PredictError(f"{where.parent}: the normalisation it trained with is not recorded and its dataset_root "
                           f"{root} has no {NORM_FILE} here; give that dataset's {NORM_FILE} (--norm)")
    return (*read_norm_file(root / NORM_FILE, fold), "dataset")


def _model_record(config: RunConfig, model: nn.Module) -> dict[str, Any]:
    """The model's name, the options it was built with (:func:`utae.training.engine.model_options`) and whether
    it reads dates (:func:`utae.models.registry.uses_dates`; one that does not ignores ``batch_positions``)."""
    from utae.training.engine import model_options

    return {"name": config.model, "options": to_jsonable(model_options(config)), "uses_dates": uses_dates(model)}


def _from_run(run_dir: Path, norm: str | Path | None, fold: int | None, window: int | None) -> ModelSource:
    recorded = _json_object(run_dir / "config.json", "config (a RunConfig)")
    config = _config(recorded, run_dir)
    metrics_path = run_dir / METRICS
    metrics = _json_object(metrics_path, "metrics") if metrics_path.is_file() else {}
    weights = run_dir / "checkpoint.pt"
    if not weights.is_file():
        init = recorded.get("init_weights")
        if int(recorded.get("epochs", 1) or 0) == 0 and init:
            weights = Path(str(init).replace("{fold}", str(config.fold)))
        else:
            raise PredictError(f"{run_dir}: no checkpoint.pt (a run's checkpoint stays on the machine that trained "
                               "it); predict where it was trained, or copy the checkpoint into the folder")
    root = Path(str(recorded["dataset_root"])) if recorded.get("dataset_root") else None
    mean, std, described, source = _run_norm(metrics, metrics_path, norm, fold or config.fold, root)
    trained = metrics.get("patch_size")
    if trained is not None and (isinstance(trained, bool) or not isinstance(trained, int) or trained < 1):
        raise PredictError(f"{metrics_path}: patch_size must be a positive integer, got {trained!r}")
    if trained is None and root is not None:
        trained = _dataset_patch(root)
    size, multiple = _window(config, window, trained)
    model = build(config, size)
    try:
        _load(model, weights)
    except PredictError as exc:
        if trained is None and window is None and needs_input_size(config.model):
            raise PredictError(f"{exc} (built for {size} px: the run's patch size is neither recorded nor readable "
                               "from its dataset here; give it with --window)") from None
        raise
    record = {"kind": "run", "run_dir": str(run_dir), "weights": str(weights), "sha256": file_sha256(weights),
              **_model_record(config, model), "norm": described, "norm_source": source}
    return ModelSource(model=model, mean=mean, std=std, window=size, multiple=multiple, record=record)


def _from_weights(path: Path, norm: str | Path, fold: int | None, window: int | None) -> ModelSource:
    conf_path = find_conf_json(path)
    values: dict[str, Any] = {}
    if conf_path is not None:
        try:
            conf = read_conf_json(conf_path)
        except WeightsError as exc:
            raise PredictError(str(exc)) from None
        values = {k: _ints(conf[k]) for k in CONFIG_ARCHITECTURE_FIELDS if k in conf}
    config = _config(values, path.parent)
    if conf_path is not None:
        diffs = architecture_differences(config, conf, conf_path)
        if diffs:
            raise PredictError(f"{path}: a model this tool does not build: {'; '.join(diffs)}")
    found = [int(m.group(1)) for part in path.parts if (m := _FOLD_DIR.fullmatch(part))]
    if fold is None and found:
        fold = found[-1]
    size, multiple = _window(config, window, None)
    model = build(config, size)
    _load(model, path)
    mean, std, described = read_norm_file(norm, fold)
    record = {"kind": "weights", "weights": str(path), "sha256": file_sha256(path),
              "conf_json": None if conf_path is None else str(conf_path), **_model_record(config, model),
              "norm": described, "norm_source": "norm"}
    return ModelSource(model=model, mean=mean, std=std, window=size, multiple=multiple, record=record)


def load_model_source(model: str | Path, *, norm: str | Path | None = None, fold: int | None = None,
                      window: int | None = None) -> ModelSource:
    """The model and normalisation of ``model`` (a run folder, a run's ``checkpoint.pt`` or official weights; see
    the module docstring). ``fold`` (1..5) overrides the fold rotation whose training folds a ``NORM_S2_patch.json``
    gives the statistics of. The model is in eval mode, on the CPU; ``record`` says what was loaded: the files,
    the model's name, options and whether it reads dates, the normalisation (``norm_source``) and the window.

    Raises :class:`PredictError` naming the file: missing, unreadable, weights of another architecture, no
    normalisation to be found, a window the model cannot take."""
    path = Path(model)
    if fold is not None and not (isinstance(fold, int) and 1 <= fold <= 5):
        raise PredictError(f"fold must be 1..5, got {fold!r}")
    if path.name == "checkpoint.pt" and (path.parent / "config.json").is_file():
        path = path.parent
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PredictError(f"{path}: not a run folder (no config.json); give a run folder or a weights file")
        source = _from_run(path, norm, fold, window)
    elif path.is_file():
        if norm is None:
            raise PredictError(f"{path}: official weights need the normalisation they were trained with: give "
                               f"PASTIS's {NORM_FILE} (--norm)")
        source = _from_weights(path, norm, fold, window)
    else:
        raise PredictError(f"model: no such file or folder {path}")
    source.model.eval()
    source.record.update(mean=source.mean.tolist(), std=source.std.tolist(), window=source.window)
    return source


def to_device(source: ModelSource, device: str) -> torch.device:
    """Move the model to ``device`` (``"auto"``: CUDA when available, else the CPU) and return the device."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    try:
        dev = torch.device(name)
        source.model.to(dev)
    except (RuntimeError, AssertionError) as exc:
        raise PredictError(f"device {device!r}: {str(exc).splitlines()[0]}") from None
    return dev
