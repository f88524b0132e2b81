"""Numerical precision and torch's global settings: the amp modes a device supports, the autocast context,
the float32 math, and deterministic algorithms (:func:`torch_settings`).

Modes (``RunConfig.amp``):

* ``"off"``: float32 everywhere, in IEEE float32 arithmetic: TensorFloat-32 is switched off for cuDNN
  convolutions and cuBLAS matmuls (PyTorch's default lets convolutions use it on Ampere and newer GPUs), so
  that a float32 run means the same arithmetic on every device of the hardware comparison.
* ``"tf32"``: float32 tensors, TensorFloat-32 tensor cores for convolutions and matmuls (10-bit mantissa);
  CUDA GPUs of compute capability 8.0 and newer.
* ``"bf16"``: autocast to bfloat16; CUDA GPUs of compute capability 8.0 and newer (Ampere, Hopper), and CPUs.
* ``"fp16"``: autocast to float16 with a gradient scaler; CUDA only (the mode for T4-class GPUs).
* ``"auto"``: bf16 on CUDA GPUs that support it, else fp16 on CUDA; off on the CPU, where bf16 autocast
  is rarely faster than float32.

The L-TAE (softmax included) and the loss stay in float32 under autocast (see :mod:`utae.models.ltae` and
:mod:`utae.training.engine`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

from utae.config.run_config import AMP_MODES  # the torch-free list that RunConfig checks against

__all__ = ["AMP_MODES", "resolve_amp", "amp_name", "autocast", "float32_math", "tf32_enabled", "torch_settings"]

log = logging.getLogger(__name__)


def _cuda_ampere(device: torch.device) -> bool:
    """Compute capability 8.0 or newer: bfloat16 and TensorFloat-32 tensor cores."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


def resolve_amp(amp: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """The autocast dtype (None for float32, ``"off"`` and ``"tf32"``) and whether a gradient scaler is needed.

    Raises:
        ValueError (naming ``amp``): an unknown mode, or a mode the device lacks (fp16 or tf32 on the CPU,
            bf16 or tf32 on a GPU older than Ampere).
    """
    if amp not in AMP_MODES:
        raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
    kind = device.type
    if amp == "off":
        return None, False
    if amp == "auto":
        if kind == "cuda":
            choice = "bf16" if _cuda_ampere(device) else "fp16"
        else:
            choice = "off"
        log.info("amp='auto' on %s: using %s", device, choice)
        return resolve_amp(choice, device)
    if amp == "fp16":
        if kind != "cuda":
            raise ValueError(f"amp='fp16' needs a CUDA GPU, got device {device}; use amp='bf16' or 'off' on {kind}")
        return torch.float16, True
    if amp == "tf32":
        if kind != "cuda":
            raise ValueError(f"amp='tf32' needs an Ampere or newer CUDA GPU, got device {device}; use amp='off'")
        if not _cuda_ampere(device):
            name = torch.cuda.get_device_name(device)
            raise ValueError(f"amp='tf32' needs an Ampere or newer GPU; {name} has no TensorFloat-32: use amp='off'")
        return None, False
    # bf16
    if kind == "cuda" and not _cuda_ampere(device):
        name = torch.cuda.get_device_name(device)
        raise ValueError(f"amp='bf16' needs an Ampere or newer GPU; {name} lacks bfloat16: use amp='fp16'")
    if kind not in ("cuda", "cpu"):
        raise ValueError(f"amp='bf16' is supported on CUDA and CPU devices, not on {kind}")
    return torch.bfloat16, False


def tf32_enabled(amp: str) -> bool:
    """Whether ``amp`` lets float32 convolutions and matmuls use TensorFloat-32 (only ``"tf32"`` does)."""
    return amp == "tf32"


@contextlib.contextmanager
def float32_math(tf32: bool) -> Iterator[None]:
    """Switch TensorFloat-32 on or off for cuDNN convolutions and cuBLAS matmuls for the duration of the block
    (the previous settings come back after). Float32 operations on the CPU are IEEE either way."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` to ``dtype``, or a no-op context when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def amp_name(dtype: torch.dtype | None, tf32: bool = False) -> str:
    """The mode name of an autocast dtype as recorded in ``platform.json``: ``off``, ``tf32``, ``bf16``, ``fp16``."""
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

