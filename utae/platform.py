"""What hardware and software a run used, peak memory, and a wall-clock timer.

Nothing here records the host name: a run's ``platform.json`` describes the machine's kind, not its identity.
"""

from __future__ import annotations

import os
import platform as _pyplatform
import re
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import torch

__all__ = [
    "resolve_device",
    "cpu_model",
    "device_name",
    "platform_info",
    "platform_id",
    "peak_memory_mb",
    "reset_peak_memory",
    "Timer",
]


# --------------------------------------------------------------------------------------------------
# Devices
# --------------------------------------------------------------------------------------------------


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn a device string into an available ``torch.device``.

    Args:
        name: ``"auto"`` (CUDA if available, else MPS, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``,
            ``"mps"``, or a ``torch.device``.

    Raises:
        ValueError (naming ``device``): an unknown string, or a CUDA/MPS device this machine lacks.
    """
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise ValueError(f"device must be a string such as 'auto', 'cpu', 'cuda', 'cuda:0', 'mps'; got {name!r}")
    text = name.strip().lower()
    if text == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if text == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", text)
    if match:
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} requested but CUDA is not available on this machine")
        index = int(match.group(1) or 0)
        count = torch.cuda.device_count()
        if index >= count:
            raise ValueError(f"device={name!r} requested but only {count} CUDA device(s) exist")
        return torch.device("cuda", index) if match.group(1) is not None else torch.device("cuda")
    if text == "mps":
        if not _mps_available():
            raise ValueError(f"device={name!r} requested but MPS is not available on this machine")
        return torch.device("mps")
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got {name!r}")


def _as_device(device: str | torch.device) -> torch.device:
    return device if isinstance(device, torch.device) else torch.device(device)


# --------------------------------------------------------------------------------------------------
# Hardware description
# --------------------------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU model name: /proc/cpuinfo 'model name', else macOS sysctl, else ``platform.processor()``."""
    cpuinfo = Path("/proc/cpuinfo")
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            out = subprocess.run(
                ["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True, timeout=5, check=False
            ).stdout.strip()
            if out:
                return out
        except (OSError, subprocess.SubprocessError):
            pass
    return _pyplatform.processor() or _pyplatform.machine() or "unknown cpu"


def device_name(device: str | torch.device) -> str:
    """The GPU name for a CUDA device, else the CPU model (MPS runs on the Apple chip named by it)."""
    dev = _as_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_model()


def _gpu_memory_gb(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    return round(torch.cuda.get_device_properties(dev).total_memory / 1024**3, 2)


def platform_info(device: str | torch.device, deterministic: bool, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Describe the software and hardware of a run (JSON-serialisable, without the host name).

    Keys: ``device`` (e.g. "cuda:0"), ``device_kind`` ("cpu" | "cuda" | "mps"), ``device_name``,
    ``platform_id`` (see :func:`platform_id`), ``cuda_version`` and ``cudnn_version`` (None off CUDA),
    ``torch_version``, ``python_version``, ``numpy_version``, ``cpu_model``, ``cpu_count``
    (``os.cpu_count()``), ``torch_threads`` (``torch.get_num_threads()``), ``gpu_memory_gb`` (None off
    CUDA), ``deterministic``, ``os``; then ``extra`` (e.g. amp / channels_last / compile) merged in, its
    keys winning.
    """
    dev = _as_device(device)
    on_cuda = dev.type == "cuda"
    info: dict[str, Any] = {
        "device": str(dev),
        "device_kind": dev.type,
        "device_name": device_name(dev),
        "platform_id": platform_id(dev),
        "cuda_version": torch.version.cuda if on_cuda else None,
        "cudnn_version": torch.backends.cudnn.version() if on_cuda else None,
        "torch_version": torch.__version__,
        "python_version": _pyplatform.python_version(),
        "numpy_version": np.__version__,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu_memory_gb": _gpu_memory_gb(dev),
        "deterministic": bool(deterministic),
        "os": _pyplatform.platform(),
    }
    if extra:
        info.update(extra)
    return info


_NAME_NOISE = (
    r"\((?:r|tm|c)\)",  # (R) (TM) (C)
    r"@\s*[\d.]+\s*[gm]hz",  # @ 2.90GHz
    r"\bcpu\b",
    r"\bprocessor\b",
    r"\bwith radeon graphics\b",
)


def slugify(text: str, max_len: int = 64) -> str:
    """Lowercase ``text`` to ``[a-z0-9-]`` (runs of other characters become one '-'), at most ``max_len`` chars."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].rstrip("-")


def platform_id(device: str | torch.device) -> str:
    """A short filesystem-safe name of the platform, ``<kind>-<model>``, used as ``results/runs/<platform>``.

    Examples: ``"cpu-intel-xeon-platinum-8375c"`` for "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
    ``"cuda-nvidia-h100-80gb-hbm3"`` for "NVIDIA H100 80GB HBM3". Only ``[a-z0-9-]``.
    """
    dev = _as_device(device)
    name = device_name(dev).lower()
    for pattern in _NAME_NOISE:
        name = re.sub(pattern, " ", name)
    model = slugify(name, max_len=56) or "unknown"
    return slugify(f"{dev.type}-{model}")


# --------------------------------------------------------------------------------------------------
# Memory and time
# --------------------------------------------------------------------------------------------------


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def peak_memory_mb(device: str | torch.device) -> float:
    """Peak memory in MiB since the last :func:`reset_peak_memory`.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only, not the caching allocator's reserve).
    Elsewhere (CPU, MPS): the peak resident set size of this process (Linux ``VmHWM``, which
    :func:`reset_peak_memory` can reset; else ``resource.getrusage``, a process-lifetime peak).
    DataLoader worker processes are not included.
    """
    dev = _as_device(device)
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    hwm_kb = _proc_status_kb("VmHWM")
    if hwm_kb is not None:
        return hwm_kb / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / 2**20 if sys.platform == "darwin" else maxrss / 1024  # bytes on macOS, KiB on Linux


def reset_peak_memory(device: str | torch.device) -> None:
    """Start a new peak-memory window: CUDA peak stats, or the Linux peak RSS (``/proc/self/clear_refs``).

    Where the OS does not allow resetting the peak RSS this is a no-op (the peak stays process-wide).
    """
    dev = _as_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


class Timer:
    """Wall-clock timer (``time.perf_counter``), as a context manager.

    On a CUDA device it synchronises on enter and exit, so queued kernels are counted in the interval.

    >>> with Timer() as t:
    ...     pass
    >>> t.seconds >= 0
    True
    """

    def __init__(self, device: str | torch.device | None = None) -> None:
        self.device = None if device is None else _as_device(device)
        self._start: float | None = None
        self._stop: float | None = None

    def _sync(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self) -> "Timer":
        self._sync()
        self._stop = None
        self._start = time.perf_counter()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._sync()
        self._stop = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Seconds between enter and exit (so far, while still running; 0.0 before entering)."""
        if self._start is None:
            return 0.0
        end = self._stop if self._stop is not None else time.perf_counter()
        return end - self._start
