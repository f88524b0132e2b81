"""Loading the official U-TAE weights into :class:`utae.model.UTAE`.

Two formats are accepted:

* a ``.npz`` file holding a state dict (one array per official key), as in ``shared/reference/utae_official``;
* an official checkpoint, a ``torch.save``-d dict whose ``"state_dict"`` entry holds the weights, as in the
  released per-fold weights ``Fold_k/model.pth.tar``. It is read with ``weights_only=True``: no pickled code runs.

Keys may carry the ``module.`` prefix that ``DataParallel`` adds.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["WeightsError", "read_state_dict", "check_state_dict", "load_official_weights"]


class WeightsError(ValueError):
    """A weights file that cannot be read, or whose keys or shapes do not fit the model."""


def _strip_prefix(state: Mapping[str, torch.Tensor], prefix: str = "module.") -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.npz`` file or an official checkpoint (``.pth.tar``, ``.pth``, ``.pt``).

    Returns a dict of CPU tensors with any ``module.`` prefix removed. Raises :class:`WeightsError` naming
    the file when it is missing, corrupt, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as data:
                state = {k: torch.from_numpy(np.array(data[k])) for k in data.files}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as err:
            raise WeightsError(f"cannot read {path} as a .npz state dict: {err}") from err
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torch raises many types for corrupt or unsafe files
            raise WeightsError(
                f"cannot read {path} as a torch checkpoint (loaded with weights_only=True): {err}"
            ) from err
        if isinstance(obj, Mapping) and "state_dict" in obj:
            obj = obj["state_dict"]
        if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
            raise WeightsError(
                f"{path} holds no state dict: expected a dict of tensors, or a dict whose 'state_dict' entry is one"
            )
        state = dict(obj)
    if not state:
        raise WeightsError(f"{path} holds an empty state dict")
    return _strip_prefix(state)


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
        model: a :class:`utae.model.UTAE` built with the configuration the weights were trained with.
        path: a ``.npz`` state dict or an official checkpoint (a dict with a ``"state_dict"`` entry).

    Raises:
        WeightsError: the file is missing or corrupt, or a key is missing, unexpected or of the wrong shape.
    """
    state = read_state_dict(path)
    check_state_dict(model, state, source=str(path))
    model.load_state_dict(state, strict=True)
    return model
