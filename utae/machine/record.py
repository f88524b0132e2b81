"""The device of a run and the record of the machine that ran it: :func:`resolve_device`, ``platform.json``
(:func:`platform_info`), platform names and fingerprints, the same-machine checks, and peak memory.

Nothing here records the host name, an IP address or a user name: a run's ``platform.json`` describes the
machine's kind, not its identity. Two views of that kind:

* :func:`platform_id`: a readable slug (``cpu-amd-epyc-avx2``, ``cuda-tesla-t4-colab``) naming
  ``results/runs/<platform>``; common machines that compute differently get different slugs, but two can coincide.
* the ``fingerprint`` of :func:`platform_info` (:func:`machine_identity`): 12 hex characters hashing exactly what
  changes the numbers a run computes; compare stored records with :func:`same_machine_kind`.

What the machine is (CPU, memory, host kind, Slurm, GPU driver) is read by :mod:`utae.machine.probe`; its
:class:`~utae.machine.probe.MachineSources` (the /proc files, DMI folder and environment read) is passed through here, so
tests can describe a fake Colab, AWS or ARM machine.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform as _pyplatform
import re
import resource
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from utae.machine.allocator import release_freed_memory
from utae.machine.probe import (
    MachineSources,
    cpu_features,
    cpu_model,
    gpu_driver_version,
    host_kind,
    isa_tier,
    memory_gb,
    physical_cores,
    slurm_info,
    torch_cpu_capability,
)

__all__ = [
    "OtherMachineError",
    "check_same_machine",
    "resolve_device",
    "MachineIdentity",
    "device_name",
    "slugify",
    "format_platform_id",
    "fingerprint_of",
    "machine_identity",
    "platform_info",
    "platform_id",
    "current_fingerprint",
    "IDENTITY_COLUMNS",
    "record_fingerprint",
    "describe_record",
    "same_machine_kind",
    "peak_memory_mb",
    "reset_peak_memory",
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
    return device if isinstance(device, torch.device) else resolve_device(device)  # "auto" included


# --------------------------------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------------------------------


def device_name(device: str | torch.device, sources: MachineSources | None = None) -> str:
    """The GPU name for a CUDA device, else the CPU model (MPS runs on the Apple chip named by it)."""
    dev = _as_device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return cpu_model(sources)


def _gpu_memory_gb(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    return round(torch.cuda.get_device_properties(dev).total_memory / 1024**3, 2)


def _gpu_compute_capability(dev: torch.device) -> str | None:
    if dev.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(dev)
    return f"{major}.{minor}"


# --------------------------------------------------------------------------------------------------
# Identity: fingerprint and readable platform id
# --------------------------------------------------------------------------------------------------

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


def format_platform_id(kind: str, name: str, isa: str = "", host: str = "unknown") -> str:
    """The readable platform id from its parts: ``<kind>-<model>[-<isa>][-<host>]``, only ``[a-z0-9-]``, at most
    64 characters (the model is cut first so the ISA tier and host kind survive).

    ``model`` is ``name`` without marketing noise ((R), (TM), "CPU", "Processor", "@ 2.90GHz"); ``isa`` is the
    :func:`isa_tier` ("" for none); ``host`` is the :func:`host_kind` ("unknown" adds nothing).

    >>> format_platform_id("cpu", "AMD EPYC 7B13 64-Core Processor", "avx2")
    'cpu-amd-epyc-7b13-64-core-avx2'
    >>> format_platform_id("cuda", "Tesla T4", host="aws:g4dn.xlarge")
    'cuda-tesla-t4-aws-g4dn-xlarge'
    """
    lowered = name.lower()
    for pattern in _NAME_NOISE:
        lowered = re.sub(pattern, " ", lowered)
    suffix = "-".join(s for s in (slugify(isa), "" if host == "unknown" else slugify(host)) if s)
    room = 64 - len(slugify(kind)) - 1 - (len(suffix) + 1 if suffix else 0)
    model = slugify(lowered, max_len=max(min(room, 56), 8)) or "unknown"
    return slugify("-".join(p for p in (kind, model, suffix) if p))


def fingerprint_of(fields: Mapping[str, Any]) -> str:
    """12 hex characters of the SHA-256 of ``fields`` as canonical JSON (sorted keys, no spaces)."""
    canonical = json.dumps(dict(fields), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:12]


@dataclass(frozen=True)
class MachineIdentity:
    """Who computes a run: the readable :attr:`platform_id`, the :attr:`fingerprint` and the fields it hashes.

    Attributes:
        platform_id: readable slug (see :func:`platform_id`).
        fingerprint: :func:`fingerprint_of` ``fingerprint_fields``.
        fingerprint_fields: what makes two machines compute differently (see :func:`machine_identity`).
        isa: the :func:`isa_tier` of ``fingerprint_fields["cpu_features"]``.
    """

    platform_id: str
    fingerprint: str
    fingerprint_fields: dict[str, Any]
    isa: str


def machine_identity(device: str | torch.device, sources: MachineSources | None = None) -> MachineIdentity:
    """This machine's identity for ``device``, without the slower parts of :func:`platform_info`
    (no nvidia-smi, no memory or core counts).

    The fingerprint hashes exactly what can change the numbers a run computes: ``device_kind``,
    ``device_name`` (CPU model, or GPU name), ``cpu_arch``, ``cpu_features`` and ``torch_cpu_capability``
    (which kernels torch's CPU dispatch picks; kept for GPU runs too, since parts of a run stay on the CPU),
    ``gpu_compute_capability``, ``torch_version``, ``cuda_version`` and ``cudnn_version`` (None off CUDA),
    and ``host_kind``. It leaves out what changes speed but not results, or changes between runs of one
    machine: thread counts, core counts, memory, the GPU driver, the Python and numpy versions, the host name.
    """
    src = sources or MachineSources()
    dev = _as_device(device)
    on_cuda = dev.type == "cuda"
    features = cpu_features(src)
    host = host_kind(src)
    name = device_name(dev, src)
    fields: dict[str, Any] = {
        "device_kind": dev.type,
        "device_name": name,
        "cpu_arch": _pyplatform.machine(),
        "cpu_features": features,
        "torch_cpu_capability": torch_cpu_capability(),
        "gpu_compute_capability": _gpu_compute_capability(dev),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda if on_cuda else None,
        "cudnn_version": torch.backends.cudnn.version() if on_cuda else None,
        "host_kind": host,
    }
    isa = isa_tier(features)
    readable = format_platform_id(dev.type, name, isa if dev.type == "cpu" else "", host)
    return MachineIdentity(platform_id=readable, fingerprint=fingerprint_of(fields), fingerprint_fields=fields, isa=isa)


def platform_id(device: str | torch.device, sources: MachineSources | None = None) -> str:
    """A short filesystem-safe name of the platform, used as ``results/runs/<platform>``.

    ``<kind>-<model>`` (see :func:`format_platform_id`), then for CPU devices the best vector ISA tier
    (:func:`isa_tier`), then the host kind where known (:func:`host_kind`). Examples:
    ``"cpu-intel-xeon-platinum-8375c-avx512"`` for "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz",
    ``"cpu-apple-m2-neon"``, ``"cuda-tesla-t4-colab"``, ``"cuda-tesla-t4-aws-g4dn-xlarge"``,
    ``"cuda-nvidia-h100-80gb-hbm3"``.

    Readable names can still coincide for machines that compute differently (e.g. the same CPU model under
    two torch versions): compare :func:`current_fingerprint` / :func:`record_fingerprint` for that.
    """
    return machine_identity(device, sources).platform_id


def current_fingerprint(device: str | torch.device, sources: MachineSources | None = None) -> str:
    """This machine's fingerprint for ``device`` (the ``fingerprint`` that :func:`platform_info` records)."""
    return machine_identity(device, sources).fingerprint


def platform_info(device: str | torch.device, deterministic: bool, extra: dict[str, Any] | None = None,
                  *, sources: MachineSources | None = None) -> dict[str, Any]:
    """Describe the software and hardware of a run (JSON-serialisable, without host name, IP or user name).

    Keys: ``device`` (e.g. "cuda:0"), ``device_kind`` ("cpu" | "cuda" | "mps"), ``device_name``,
    ``platform_id`` (see :func:`platform_id`), ``cuda_version`` and ``cudnn_version`` (None off CUDA),
    ``torch_version``, ``python_version``, ``numpy_version``, ``cpu_model``, ``cpu_count``
    (``os.cpu_count()``), ``torch_threads`` (``torch.get_num_threads()``), ``gpu_memory_gb`` (None off
    CUDA), ``deterministic``, ``os``;
    the CPU: ``cpu_arch`` (``platform.machine()``), ``cpu_features`` (:func:`cpu_features`), ``cpu_isa``
    (:func:`isa_tier`), ``torch_cpu_capability``, ``physical_cores``, ``memory_gb`` (GiB);
    the GPU (None off CUDA): ``gpu_name``, ``gpu_count``, ``gpu_compute_capability`` ("7.5"), ``gpu_driver``
    (None where nvidia-smi is missing);
    the host: ``host_kind`` (:func:`host_kind`), ``slurm`` (:func:`slurm_info`, None outside Slurm);
    the identity: ``fingerprint`` and ``fingerprint_fields`` (see :func:`machine_identity`);
    then ``extra`` (e.g. amp / channels_last / compile) merged in, its keys winning.

    Args:
        sources: where to read the machine from (tests pass fakes); None reads this machine.
    """
    src = sources or MachineSources()
    dev = _as_device(device)
    on_cuda = dev.type == "cuda"
    ident = machine_identity(dev, src)
    fields = ident.fingerprint_fields
    info: dict[str, Any] = {
        "device": str(dev),
        "device_kind": dev.type,
        "device_name": fields["device_name"],
        "platform_id": ident.platform_id,
        "cuda_version": fields["cuda_version"],
        "cudnn_version": fields["cudnn_version"],
        "torch_version": torch.__version__,
        "python_version": _pyplatform.python_version(),
        "numpy_version": np.__version__,
        "cpu_model": cpu_model(src),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu_memory_gb": _gpu_memory_gb(dev),
        "deterministic": bool(deterministic),
        "os": _pyplatform.platform(),
        "cpu_arch": fields["cpu_arch"],
        "cpu_features": list(fields["cpu_features"]),
        "cpu_isa": ident.isa,
        "torch_cpu_capability": fields["torch_cpu_capability"],
        "physical_cores": physical_cores(src),
        "memory_gb": memory_gb(src),
        "gpu_name": fields["device_name"] if on_cuda else None,
        "gpu_count": torch.cuda.device_count() if on_cuda else None,
        "gpu_compute_capability": fields["gpu_compute_capability"],
        "gpu_driver": gpu_driver_version() if on_cuda else None,
        "host_kind": fields["host_kind"],
        "slurm": slurm_info(ident.platform_id, src),
        "fingerprint": ident.fingerprint,
        "fingerprint_fields": {**fields, "cpu_features": list(fields["cpu_features"])},
    }
    if extra:
        info.update(extra)
    return info


# --------------------------------------------------------------------------------------------------
# Stored records (platform.json)
# --------------------------------------------------------------------------------------------------

#: ``platform.json`` keys that a report's platform table shows to tell machines apart.
IDENTITY_COLUMNS: tuple[str, ...] = ("device_name", "cpu_arch", "torch_cpu_capability", "cpu_isa", "gpu_name",
                                     "gpu_compute_capability", "host_kind", "fingerprint")
_FINGERPRINT = re.compile(r"[0-9a-f]{12}")


def _check_record(record: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(record, Mapping):
        raise ValueError(f"{what}: expected a platform.json mapping, got {type(record).__name__}")
    return record


def record_fingerprint(record: Mapping[str, Any]) -> str | None:
    """The ``fingerprint`` of a stored ``platform.json`` dict; None for records written before fingerprints
    existed (key absent or null).

    Raises:
        ValueError: ``record`` is not a mapping, or its ``fingerprint`` is not 12 lowercase hex characters.
    """
    fingerprint = _check_record(record, "record_fingerprint").get("fingerprint")
    if fingerprint is None:
        return None
    if not isinstance(fingerprint, str) or not _FINGERPRINT.fullmatch(fingerprint):
        raise ValueError(f"platform.json field 'fingerprint': expected 12 lowercase hex characters, "
                         f"got {fingerprint!r}")
    return fingerprint


def describe_record(record: Mapping[str, Any]) -> str:
    """One line naming the machine of a ``platform.json`` dict, for error messages, e.g.
    "AMD EPYC 7B13 (x86_64, AVX2, torch 2.13.0, fingerprint 1a2b3c4d5e6f)" or, for a GPU on Colab,
    "Tesla T4 (x86_64, sm 7.5, CUDA 12.4, torch 2.13.0, colab, fingerprint ...)". Old or partial records give
    what they have and "fingerprint unknown"; a malformed fingerprint shows as "fingerprint invalid".

    Raises:
        ValueError: ``record`` is not a mapping.
    """
    rec = _check_record(record, "describe_record")
    name = rec.get("device_name") or rec.get("cpu_model") or rec.get("platform_id") or "unknown device"
    parts = [rec.get("cpu_arch")]
    if rec.get("device_kind") == "cuda" or rec.get("gpu_compute_capability"):
        cc = rec.get("gpu_compute_capability")
        parts += [f"sm {cc}" if cc else None, f"CUDA {rec['cuda_version']}" if rec.get("cuda_version") else None]
    else:
        parts.append(rec.get("torch_cpu_capability"))
    parts.append(f"torch {rec['torch_version']}" if rec.get("torch_version") else None)
    host = rec.get("host_kind")
    parts.append(host if host and host != "unknown" else None)
    try:
        fingerprint = record_fingerprint(rec)
        parts.append(f"fingerprint {fingerprint or 'unknown'}")
    except ValueError:
        parts.append("fingerprint invalid")
    return f"{name} ({', '.join(str(p) for p in parts if p)})"


class OtherMachineError(ValueError):
    """Runs of another machine (another fingerprint) where this machine would skip or resume them."""


def check_same_machine(record: Mapping[str, Any], device: str | torch.device, where: str | os.PathLike[str]) -> None:
    """Refuse to skip or resume the run of ``where`` (its ``platform.json`` is ``record``) unless it was made by
    a machine that computes like this one (equal fingerprints).

    Raises:
        OtherMachineError: naming both machines and how to proceed. A record written before fingerprints
            existed counts as another machine: nothing proves it comes from this one.
    """
    here = machine_identity(device)
    theirs = record_fingerprint(record)
    if theirs == here.fingerprint:
        return
    mine = f"{here.fingerprint_fields.get('device_name')} ({here.platform_id}, fingerprint {here.fingerprint})"
    why = "it predates platform fingerprints" if theirs is None else "its fingerprint differs"
    raise OtherMachineError(
        f"{where} was made on {describe_record(record)}, not on this machine, {mine}: {why}, so it is neither "
        "skipped nor resumed here. To run this sweep on this machine too, give its runs their own platform folder "
        "(make reproduce PLATFORM=<name>, or python -m utae ... --platform <name>); to check that this "
        "machine reproduces those runs, use make verify.")


def same_machine_kind(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool | None:
    """Whether two ``platform.json`` dicts come from machines that compute alike (equal fingerprints);
    None when either record has no fingerprint (written before fingerprints existed).

    Raises:
        ValueError: either is not a mapping, or has a malformed fingerprint (:func:`record_fingerprint`).
    """
    fa, fb = record_fingerprint(a), record_fingerprint(b)
    if fa is None or fb is None:
        return None
    return fa == fb


# --------------------------------------------------------------------------------------------------
# Memory
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
    """Start a new peak-memory window: CUDA peak stats, or the Linux peak RSS (``/proc/self/clear_refs``), after
    the heap's free memory is handed back (:func:`utae.machine.allocator.release_freed_memory`: memory kept for
    the training steps would otherwise count in the next window).

    Where the OS does not allow resetting the peak RSS this is a no-op (the peak stays process-wide).
    """
    dev = _as_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return
    release_freed_memory()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass
