"""The arithmetic settings of a run: what, besides its config and the machine's fingerprint, changes its numbers.

A run records them in its checkpoint (``checkpoint.pt`` key ``"arithmetic"``, :func:`arithmetic_settings`) and
resumes only under the same ones (:func:`arithmetic_differences`), so that every epoch of a run computes alike
and ``platform.json`` (rewritten on each resume) describes all of them. The settings
(:data:`ARITHMETIC_SETTINGS`):

* ``torch_threads``: ``torch.get_num_threads()``; CPU reductions split their sums by thread, so another count
  rounds differently;
* ``amp`` (the resolved mode, e.g. "bf16" for ``amp="auto"`` on an Ampere GPU) and ``float32_math``
  ("tf32" or "ieee"), see :mod:`utae.training.precision`;
* ``device_kind`` and ``device_name``: the device the run computes on (the CPU model on the CPU);
* ``deterministic``, ``channels_last``, ``compile``: the run's config;
* ``world_size``: the number of processes (torchrun), which splits the batches between them.

A checkpoint written before the record existed has none: it resumes as before, unchecked.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from utae.config.run_config import RunConfig
from utae.machine.record import device_name
from utae.training.precision import amp_name, tf32_enabled

__all__ = ["ARITHMETIC_SETTINGS", "arithmetic_settings", "arithmetic_differences"]

#: The recorded settings, in the order a refusal names them.
ARITHMETIC_SETTINGS: tuple[str, ...] = (
    "torch_threads", "amp", "float32_math", "device_kind", "device_name", "deterministic", "channels_last",
    "compile", "world_size",
)

#: How each setting reads in a message.
_LABELS = {
    "torch_threads": "torch threads", "amp": "amp", "float32_math": "float32 math", "device_kind": "device",
    "device_name": "device model", "deterministic": "deterministic", "channels_last": "channels_last",
    "compile": "compile", "world_size": "processes (world_size)",
}


def arithmetic_settings(config: RunConfig, device: torch.device, amp_dtype: torch.dtype | None,
                        world_size: int) -> dict[str, Any]:
    """This process's arithmetic settings for ``config`` on ``device`` (``amp_dtype``: the autocast dtype that
    :func:`utae.training.precision.resolve_amp` gave), as plain JSON values."""
    tf32 = tf32_enabled(config.amp)
    return {
        "torch_threads": torch.get_num_threads(),
        "amp": amp_name(amp_dtype, tf32),
        "float32_math": "tf32" if tf32 else "ieee",
        "device_kind": device.type,
        "device_name": device_name(device),
        "deterministic": bool(config.deterministic),
        "channels_last": bool(config.channels_last),
        "compile": bool(config.compile),
        "world_size": int(world_size),
    }


def _how(key: str, value: Any) -> str:
    """How to resume with ``key`` set to the recorded ``value``."""
    if key == "torch_threads":
        return f"resume with THREADS={value} (or --threads {value} / torch.set_num_threads({value}))"
    if key == "world_size":
        return (f"resume with torchrun --nproc_per_node={value} (or --tasks-per-point {value})" if value != 1
                else "resume in one process (without torchrun)")
    if key in ("deterministic", "channels_last", "compile"):
        return f"resume with {key}={value}"
    if key in ("device_kind", "device_name"):
        return f"resume on {value}"
    return f"resume where it resolves to {value} (the device and amp it was trained with)"


def arithmetic_differences(recorded: Mapping[str, Any] | None, current: Mapping[str, Any]) -> list[str]:
    """The settings in which ``current`` differs from ``recorded``, one
    ``"<setting> <recorded>, this process has <current>: resume with ..."`` each; empty when they agree, and
    when ``recorded`` is None (a checkpoint written before the record existed resumes unchecked)."""
    if recorded is None:
        return []
    return [f"{_LABELS[key]} {recorded[key]}, this process has {current[key]}: {_how(key, recorded[key])}"
            for key in ARITHMETIC_SETTINGS if key in recorded and recorded[key] != current.get(key)]
