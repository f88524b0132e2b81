"""Loading initial weights into :class:`utae.models.utae.UTAE`: the official U-TAE weights, or a run's own checkpoint.

Three formats are accepted:

* a ``.npz`` file holding a state dict (one array per official key), as in ``shared/reference/utae_official``;
* an official checkpoint, a ``torch.save``-d dict whose ``"state_dict"`` entry holds the weights, as in the
  released per-fold weights ``Fold_k/model.pth.tar``. It is read with ``weights_only=True``: no pickled code runs.
  Keys may carry the ``module.`` prefix that ``DataParallel`` adds;
* a run checkpoint of this tool (``checkpoint.pt``, read by :func:`utae.training.checkpoint.read_checkpoint`): its
  ``best_model``, the weights of the best epoch (those the run tested), not those of its last epoch.

The architecture. The official training script writes its command-line arguments to ``conf.json`` in its
results folder, beside the ``Fold_k/`` folders. :func:`load_init_weights` looks for it beside the weights file,
then in the parent of a ``Fold_k`` folder, and checks it against the run's :class:`utae.config.run_config.RunConfig`: the
config must state the architecture of the weights (``encoder_widths``, ``decoder_widths``, ``out_conv``,
``n_head``, ``d_model``, ``d_k``; ``num_classes`` against ``out_conv[-1]``), and the options that the config
does not hold (``agg_mode``, ``encoder_norm``, ``pad_value``, ``padding_mode``, ``str_conv_k/s/p``) must be
those :func:`utae.training.engine.build_model` builds (the :class:`utae.models.utae.UTAE` defaults). A difference is an error
that names both values; conf.json's training options (lr, epochs, ...) are ignored. A run checkpoint's own
config is checked the same way. Then every key and shape of the state dict is checked.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from utae.training.checkpoint import CheckpointError, read_checkpoint
from utae.models.utae import UTAE

__all__ = [
    "WeightsError",
    "CONF_FILE",
    "CONFIG_ARCHITECTURE_FIELDS",
    "InitWeights",
    "read_state_dict",
    "check_state_dict",
    "load_official_weights",
    "file_sha256",
    "find_conf_json",
    "read_conf_json",
    "architecture_differences",
    "load_init_weights",
]

#: The file in which the official training script records its arguments (the model's configuration).
CONF_FILE = "conf.json"
#: The architecture fields of :class:`utae.config.run_config.RunConfig`, also keys of conf.json.
CONFIG_ARCHITECTURE_FIELDS: tuple[str, ...] = ("encoder_widths", "decoder_widths", "out_conv", "n_head", "d_model",
                                               "d_k")
#: conf.json keys of architecture options that RunConfig does not hold: the UTAE constructor's defaults are built.
_BUILT_DEFAULT_KEYS: tuple[str, ...] = ("agg_mode", "encoder_norm", "pad_value", "padding_mode", "str_conv_k",
                                        "str_conv_s", "str_conv_p")
_FOLD_DIR = re.compile(r"Fold_\d+")


class WeightsError(ValueError):
    """A weights file that cannot be read, or whose keys or shapes do not fit the model."""


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _is_run_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and all(k in obj for k in ("format", "config", "best_model"))


def _read_torch(path: Path) -> tuple[Any, dict[str, Any] | None]:
    """``(object, run checkpoint or None)`` of a torch file, loaded with ``weights_only=True``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or unsafe files
        try:  # a format-1 run checkpoint also holds numpy arrays, which read_checkpoint allows (and nothing else)
            ckpt = read_checkpoint(path)
        except CheckpointError:
            raise WeightsError(
                f"cannot read {path} as a torch checkpoint (loaded with weights_only=True): {err}"
            ) from err
        return ckpt, ckpt
    if _is_run_checkpoint(obj):
        try:
            ckpt = read_checkpoint(path)  # the same rules as a resume: format and keys
        except CheckpointError as err:
            raise WeightsError(str(err)) from err
        return ckpt, ckpt
    return obj, None


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """The state dict of ``path`` and, for a run checkpoint, that checkpoint."""
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    ckpt = None
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: torch.from_numpy(np.array(data[k])) for k in data.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise WeightsError(f"cannot read {path} as a .npz state dict: {err}") from err
    else:
        obj, ckpt = _read_torch(path)
        if ckpt is not None:
            obj = ckpt["best_model"]
            if obj is None:
                raise WeightsError(f"{path} is a run checkpoint without a best epoch (no weights to start from)")
        elif isinstance(obj, Mapping) and "state_dict" in obj:
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise WeightsError(
                f"{path} holds no state dict: expected a dict of tensors, or a dict whose 'state_dict' entry is one"
            )
        state = dict(obj)
    if not state:
        raise WeightsError(f"{path} holds an empty state dict")
    return _strip_prefix(state), ckpt


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.npz`` file, an official checkpoint (``.pth.tar``, ``.pth``, ``.pt``) or a run
    checkpoint of this tool (its ``best_model``, the best epoch's weights).

    Returns a dict of CPU tensors with any ``module.`` prefix removed. Raises :class:`WeightsError` naming
    the file when it is missing, corrupt, or holds no state dict.
    """
    return _read(Path(path))[0]


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "state dict") -> None:
    """Raise :class:`WeightsError` naming the key when ``state`` has a missing or unexpected key, or a wrong shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise WeightsError(f"{source}: missing key {missing[0]!r} ({len(missing)} missing in all: {missing[:5]})")
    if unexpected:
        raise WeightsError(
            f"{source}: unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected in all: {unexpected[:5]})"
        )
    for key, ref in expected.items():
        if tuple(state[key].shape) != tuple(ref.shape):
            raise WeightsError(
                f"{source}: key {key!r} has shape {tuple(state[key].shape)}, expected {tuple(ref.shape)}"
            )


def load_official_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load official U-TAE weights from ``path`` into ``model`` strictly, and return the model.

    Args:
        model: a :class:`utae.models.utae.UTAE` built with the configuration the weights were trained with.
        path: a ``.npz`` state dict or an official checkpoint (a dict with a ``"state_dict"`` entry).

    Raises:
        WeightsError: the file is missing or corrupt, or a key is missing, unexpected or of the wrong shape.
    """
    state = read_state_dict(path)
    check_state_dict(model, state, source=str(path))
    model.load_state_dict(state, strict=True)
    return model


# --------------------------------------------------------------------------------------------------
# Initial weights of a run: the file of its fold, the architecture check, the load
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitWeights:
    """What :func:`load_init_weights` loaded: the file, its sha256, its kind (``"official"`` for a state dict or
    an official checkpoint, ``"run_checkpoint"`` for a checkpoint.pt of this tool) and the file whose
    architecture was checked against the config (conf.json, the checkpoint itself, or None when there was none)."""

    path: Path
    sha256: str
    source: str
    checked_against: Path | None

    def record(self) -> dict[str, Any]:
        """A JSON-able dict: ``path``, ``sha256``, ``source``, ``checked_against``."""
        return {"path": str(self.path), "sha256": self.sha256, "source": self.source,
                "checked_against": None if self.checked_against is None else str(self.checked_against)}


def file_sha256(path: str | Path) -> str:
    """The hex sha256 of the file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def find_conf_json(weights: str | Path) -> Path | None:
    """The conf.json of a weights file: beside it, else in the parent of its ``Fold_k`` folder; None if neither."""
    weights = Path(weights)
    beside = weights.parent / CONF_FILE
    if beside.is_file():
        return beside
    if _FOLD_DIR.fullmatch(weights.parent.name) and (weights.parent.parent / CONF_FILE).is_file():
        return weights.parent.parent / CONF_FILE
    return None


def read_conf_json(path: str | Path) -> dict[str, Any]:
    """The JSON object of an official conf.json (plain JSON; nothing runs). Raises :class:`WeightsError` naming
    the file when it is unreadable or not an object."""
    path = Path(path)
    try:
        conf = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"cannot read {path} as JSON: {err}") from err
    if not isinstance(conf, dict):
        raise WeightsError(f"{path}: expected a JSON object of the training arguments, got {type(conf).__name__}")
    return conf


def _int_list(value: Any) -> Any:
    """A list of ints from a JSON list or the command-line form ``"[64,64,64,128]"``; other values unchanged."""
    if isinstance(value, str) and re.fullmatch(r"\s*\[?\s*-?\d+(\s*,\s*-?\d+)*\s*\]?\s*", value):
        return [int(v) for v in value.strip().strip("[]").split(",")]
    if isinstance(value, (list, tuple)):
        return [int(v) if isinstance(v, str) and v.strip().lstrip("-").isdigit() else v for v in value]
    return value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _built_defaults() -> dict[str, Any]:
    """The UTAE constructor's defaults for the options that :func:`utae.training.engine.build_model` does not pass."""
    params = inspect.signature(UTAE.__init__).parameters
    return {k: params[k].default for k in _BUILT_DEFAULT_KEYS}


def architecture_differences(config: Any, conf: Mapping[str, Any], source: str | Path) -> list[str]:
    """The architecture entries on which ``conf`` (a conf.json, or a run checkpoint's config) and ``config`` (a
    :class:`utae.config.run_config.RunConfig`) disagree, one message each naming both values; [] when they agree.

    Only the keys present in ``conf`` are compared; its training options are ignored.
    """
    diffs = []
    for key in CONFIG_ARCHITECTURE_FIELDS:
        if key in conf:
            mine, theirs = getattr(config, key), _int_list(conf[key])
            if not _same(mine, theirs):
                diffs.append(f"{key}: the config says {mine} but {source} says {conf[key]!r}")
    if "num_classes" in conf and not _same(config.out_conv[-1], conf["num_classes"]):
        diffs.append(f"num_classes: the config says {config.out_conv[-1]} (out_conv[-1]) but {source} says "
                     f"{conf['num_classes']!r}")
    model = getattr(config, "model", "utae")
    if "model" in conf and conf["model"] != model:
        diffs.append(f"model: the config says {model!r} but {source} says {conf['model']!r}")
    if "model_options" in conf and not _same(dict(getattr(config, "model_options", {})), conf["model_options"]):
        diffs.append(f"model_options: the config says {getattr(config, 'model_options', {})} but {source} says "
                     f"{conf['model_options']!r}")
    for key, built in _built_defaults().items():
        if key in conf and not _same(built, conf[key]):
            diffs.append(f"{key}: this tool builds {built!r} (utae.training.engine.build_model) but {source} says "
                         f"{conf[key]!r}")
    return diffs


def load_init_weights(model: nn.Module, config: Any) -> InitWeights:
    """Load the initial weights of ``config`` (a :class:`utae.config.run_config.RunConfig` with ``init_weights``, for its
    fold) into ``model`` strictly, after checking the architecture (see the module docstring).

    Args:
        model: the run's model, built from ``config`` (:func:`utae.training.engine.build_model`); not DDP-wrapped.
        config: the run's config; ``config.init_weights_path()`` is the file.

    Returns:
        The :class:`InitWeights` record (resolved path, sha256, kind, the file checked against).

    Raises:
        ValueError: ``config.init_weights`` is None.
        WeightsError: naming the fold and the file: missing, a directory, unreadable, not a state dict, an
            architecture that differs from the config (both values named), or a missing, unexpected or
            wrongly shaped key (the key named).
    """
    path = config.init_weights_path()
    if path is None:
        raise ValueError("load_init_weights: the config has no init_weights")
    path = path.resolve()
    where = f"init_weights (fold {config.fold})"
    if path.is_dir():
        base = path.parent if _FOLD_DIR.fullmatch(path.name) else path
        raise WeightsError(f"{where} points at a directory, {path}; give the file, e.g. "
                           f"{base / 'Fold_{fold}' / 'model.pth.tar'}")
    if not path.is_file():
        raise WeightsError(f"{where}: no such file {path}")
    digest = file_sha256(path)
    try:
        state, ckpt = _read(path)
    except WeightsError as err:
        raise WeightsError(f"{where}: {err}") from err
    if ckpt is not None:
        source, checked = "run_checkpoint", path
        diffs = architecture_differences(config, ckpt["config"], f"{path} (its config)")
    else:
        source, checked = "official", find_conf_json(path)
        diffs = architecture_differences(config, read_conf_json(checked), checked) if checked is not None else []
    if diffs:
        raise WeightsError(f"{where}: the weights {path} are of another architecture than the config: "
                           + "; ".join(diffs) + ". Set these fields of the config to the weights' values.")
    check_state_dict(model, state, source=f"{where}: {path}")
    model.load_state_dict(state, strict=True)
    return InitWeights(path=path, sha256=digest, source=source, checked_against=checked)
