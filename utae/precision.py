"""Mixed-precision modes: which autocast dtype a device supports, and the autocast context.

Modes (``RunConfig.amp``):

* ``"off"``: float32 everywhere.
* ``"bf16"``: autocast to bfloat16; CUDA GPUs of compute capability 8.0 and newer (Ampere, Hopper), and CPUs.
* ``"fp16"``: autocast to float16 with a gradient scaler; CUDA only (the mode for T4-class GPUs).
* ``"auto"``: bf16 on CUDA GPUs that support it, else fp16 on CUDA; off on the CPU, where bf16 autocast
  is rarely faster than float32.

The L-TAE softmax and the loss stay in float32 under autocast (see :mod:`utae.model` and :mod:`utae.train`).
"""

from __future__ import annotations

import contextlib
import logging

import torch

__all__ = ["AMP_MODES", "resolve_amp", "autocast"]

AMP_MODES = ("off", "bf16", "fp16", "auto")
log = logging.getLogger(__name__)


def _cuda_bf16(device: torch.device) -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype (None for float32) and whether a gradient scaler is needed.

    Raises:
        ValueError (naming ``amp``): an unknown mode, or a mode the device lacks (fp16 on the CPU,
            bf16 on a GPU older than Ampere).
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    kind = device.type
    if amp == "off":
        return None, False
    if amp == "auto":
        if kind == "cuda":
            choice = "bf16" if _cuda_bf16(device) else "fp16"
        else:
            choice = "off"
        log.info("amp='auto' on %s: using %s", device, choice)
        return resolve_amp(choice, device)
    if amp == "fp16":
        if kind != "cuda":
            raise ValueError(f"amp='fp16' needs a CUDA GPU, got device {device}; use amp='bf16' or 'off' on {kind}")
        return torch.float16, True
    # bf16
    if kind == "cuda" and not _cuda_bf16(device):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"amp='bf16' needs an Ampere or newer GPU; {name} lacks bfloat16: use amp='fp16'")
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"amp='bf16' is supported on CUDA and CPU devices, not on {kind}")
    return torch.bfloat16, False


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` to ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
