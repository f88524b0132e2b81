"""What the machine is: CPU model and instruction-set features, cores, memory, host kind (Colab, a cloud
instance type), the Slurm job and the NVIDIA driver, read from the machine itself.

Everything read from the machine (/proc files, DMI folder, environment) comes through :class:`MachineSources`,
so tests can describe a fake Colab, AWS or ARM machine. Nothing here records the host name, an IP address or a
user name. :mod:`utae.machine.record` turns these readings into a run's ``platform.json``, its platform name and
fingerprint.
"""

from __future__ import annotations

import importlib.util
import os
import platform as _pyplatform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = [
    "MachineSources",
    "X86_KERNEL_FLAGS",
    "ARM_KERNEL_FEATURES",
    "cpu_model",
    "cpu_features",
    "parse_cpu_features",
    "parse_sysctl_features",
    "isa_tier",
    "torch_cpu_capability",
    "physical_cores",
    "memory_gb",
    "host_kind",
    "slurm_info",
    "gpu_driver_version",
]


# --------------------------------------------------------------------------------------------------
# Where the machine is described: injectable sources
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MachineSources:
    """The files and environment this module reads to describe the machine (tests pass fakes).

    Attributes:
        cpuinfo: the Linux ``/proc/cpuinfo`` text file (model name, flags / Features, physical and core ids).
        meminfo: the Linux ``/proc/meminfo`` text file (``MemTotal``).
        dmi_dir: the DMI/SMBIOS folder of the machine itself (``/sys/class/dmi/id``); only the vendor,
            product and asset-tag files are read, never serial numbers or UUIDs.
        environ: the environment variables; None means ``os.environ``.
        colab_module: whether the ``google.colab`` module is present; None means look it up
            (``sys.modules``, then ``importlib.util.find_spec``).
        system: ``sys.platform`` of the machine; ``"darwin"`` makes the CPU readers ask ``sysctl`` where
            ``cpuinfo`` is missing.
    """

    cpuinfo: Path = Path("/proc/cpuinfo")
    meminfo: Path = Path("/proc/meminfo")
    dmi_dir: Path = Path("/sys/class/dmi/id")
    environ: Mapping[str, str] | None = None
    colab_module: bool | None = None
    system: str = sys.platform

    def env(self) -> Mapping[str, str]:
        """The environment to read (``environ``, else ``os.environ``)."""
        return os.environ if self.environ is None else self.environ


_DEFAULT_SOURCES = MachineSources()


def _read_text(path: Path) -> str:
    """The text of ``path``, or "" when it is missing or unreadable (a description never fails)."""
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _sysctl(*args: str) -> str:
    """The stdout of ``sysctl args`` (macOS), or "" when it cannot run."""
    try:
        return subprocess.run(["sysctl", *args], capture_output=True, text=True, timeout=5, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpuinfo_fields(text: str) -> list[dict[str, str]]:
    """``/proc/cpuinfo`` text as one ``{key: value}`` dict a processor block (blocks split by blank lines)."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current.setdefault(key.strip().lower(), value.strip())
    if current:
        blocks.append(current)
    return blocks


# --------------------------------------------------------------------------------------------------
# CPU: model, instruction-set features, cores, memory
# --------------------------------------------------------------------------------------------------

#: ARM ``CPU implementer`` codes of /proc/cpuinfo (Linux on ARM has no "model name" line).
_ARM_IMPLEMENTERS = {"0x41": "ARM", "0x61": "Apple", "0x4e": "NVIDIA", "0x51": "Qualcomm", "0xc0": "Ampere"}
#: ``CPU part`` codes of implementer 0x41 (ARM Ltd) for the cores of cloud ARM machines
#: (Graviton2 = Neoverse-N1, Graviton3 = Neoverse-V1, Graviton4 and NVIDIA Grace = Neoverse-V2).
_ARM_PARTS = {"0xd08": "Cortex-A72", "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd40": "Neoverse-V1",
              "0xd49": "Neoverse-N2", "0xd4f": "Neoverse-V2"}


def _arm_model(blocks: list[dict[str, str]]) -> str:
    """The CPU name of an ARM /proc/cpuinfo from its implementer and part codes (e.g. "ARM Neoverse-V1"), or
    the empty string where it has no implementer line."""
    for block in blocks:
        implementer = block.get("cpu implementer", "").lower()
        part = block.get("cpu part", "").lower()
        if implementer:
            vendor = _ARM_IMPLEMENTERS.get(implementer, f"implementer {implementer}")
            if implementer == "0x41" and part in _ARM_PARTS:
                return f"{vendor} {_ARM_PARTS[part]}"
            return f"{vendor} part {part}" if part else vendor
    return ""


def cpu_model(sources: MachineSources | None = None) -> str:
    """The CPU model name: /proc/cpuinfo 'model name' (on ARM Linux the implementer and part, e.g.
    "ARM Neoverse-V1"), else macOS ``sysctl machdep.cpu.brand_string``, else ``platform.processor()``."""
    src = sources or _DEFAULT_SOURCES
    blocks = _cpuinfo_fields(_read_text(src.cpuinfo))
    for block in blocks:
        if block.get("model name"):
            return block["model name"]
    arm = _arm_model(blocks)
    if arm:
        return arm
    if src.system == "darwin":
        out = _sysctl("-n", "machdep.cpu.brand_string").strip()
        if out:
            return out
    return _pyplatform.processor() or _pyplatform.machine() or "unknown cpu"


#: x86 /proc/cpuinfo flags that select different kernels (vector width, FMA, int8 / bf16 / fp16 units, AMX).
X86_KERNEL_FLAGS = frozenset({
    "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx_vnni",
    "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512vbmi",
    "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8",
})
#: ARM /proc/cpuinfo ``Features`` that select different kernels, with the name this module reports
#: (``asimd`` is Advanced SIMD, reported as ``neon``).
ARM_KERNEL_FEATURES = {
    "asimd": "neon", "asimdhp": "asimdhp", "asimddp": "asimddp", "bf16": "bf16", "i8mm": "i8mm",
    "sve": "sve", "sve2": "sve2", "svebf16": "svebf16", "svei8mm": "svei8mm", "sme": "sme", "sme2": "sme2",
}
#: macOS ``sysctl hw.optional`` names (last dotted part, lowercased, ``feat_`` dropped) -> reported feature.
_SYSCTL_FEATURES = {
    "neon": "neon", "advsimd": "neon", "neon_fp16": "asimdhp", "fp16": "asimdhp", "dotprod": "asimddp",
    "bf16": "bf16", "i8mm": "i8mm", "sme": "sme", "sme2": "sme2",
    "sse4_1": "sse4_1", "sse4_2": "sse4_2", "avx1_0": "avx", "avx2_0": "avx2", "fma": "fma", "f16c": "f16c",
    "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512vl": "avx512vl", "avx512dq": "avx512dq",
    "avx512cd": "avx512cd", "avx512vnni": "avx512_vnni",
}


def parse_cpu_features(cpuinfo_text: str) -> list[str]:
    """The kernel-relevant instruction-set features in /proc/cpuinfo text, sorted.

    x86 ``flags`` lines keep the names in :data:`X86_KERNEL_FLAGS`; ARM ``Features`` lines are renamed by
    :data:`ARM_KERNEL_FEATURES` (``asimd`` -> ``neon``). The union over all processors; [] for empty text.
    """
    found: set[str] = set()
    for block in _cpuinfo_fields(cpuinfo_text):
        found.update(f for f in block.get("flags", "").split() if f in X86_KERNEL_FLAGS)
        found.update(ARM_KERNEL_FEATURES[f] for f in block.get("features", "").split() if f in ARM_KERNEL_FEATURES)
    return sorted(found)


def parse_sysctl_features(sysctl_text: str) -> list[str]:
    """The kernel-relevant features in macOS ``sysctl hw.optional`` output (lines ``hw.optional.X: 1``), sorted.

    Apple silicon: ``neon``, ``arm.FEAT_BF16`` -> ``bf16``, ``arm.FEAT_I8MM`` -> ``i8mm``, ``arm.FEAT_SME`` ->
    ``sme``, ``arm.FEAT_DotProd`` -> ``asimddp``; Intel Macs: ``avx2_0`` -> ``avx2`` etc. Features set to 0 are
    left out.
    """
    found: set[str] = set()
    for line in sysctl_text.splitlines():
        key, sep, value = line.partition(":")
        if not sep or value.strip() != "1":
            continue
        name = key.strip().rsplit(".", 1)[-1].lower().removeprefix("feat_")
        if name in _SYSCTL_FEATURES:
            found.add(_SYSCTL_FEATURES[name])
    return sorted(found)


def cpu_features(sources: MachineSources | None = None) -> list[str]:
    """This machine's kernel-relevant CPU features, sorted: /proc/cpuinfo (:func:`parse_cpu_features`), or on
    macOS ``sysctl hw.optional`` (:func:`parse_sysctl_features`); [] when neither says anything."""
    src = sources or _DEFAULT_SOURCES
    features = parse_cpu_features(_read_text(src.cpuinfo))
    if not features and src.system == "darwin":
        features = parse_sysctl_features(_sysctl("hw.optional"))
    return features


def isa_tier(features: Iterable[str]) -> str:
    """The best vector instruction-set tier of a feature list, as used in :func:`platform_id`.

    x86: ``amx`` > ``avx512bf16`` (avx512f with avx512_bf16) > ``avx512`` > ``avx2`` > ``avx`` > ``sse``;
    ARM: ``sve`` (sve or sve2) > ``neon``; "" when none is present.
    """
    have = set(features)
    if have & {"amx_tile", "amx_bf16", "amx_int8"}:
        return "amx"
    if "avx512f" in have:
        return "avx512bf16" if "avx512_bf16" in have else "avx512"
    for feature, tier in (("avx2", "avx2"), ("avx", "avx"), ("sse4_2", "sse"), ("sse4_1", "sse"),
                          ("sve2", "sve"), ("sve", "sve"), ("neon", "neon")):
        if feature in have:
            return tier
    return ""


def torch_cpu_capability() -> str | None:
    """``torch.backends.cpu.get_cpu_capability()`` ("DEFAULT", "AVX2", "AVX512", "SVE256", ...): the kernel set
    torch's CPU dispatch actually uses here (it also follows ``ATEN_CPU_CAPABILITY``); None on a torch without it."""
    getter = getattr(getattr(torch.backends, "cpu", None), "get_cpu_capability", None)
    if getter is None:
        return None
    try:
        return str(getter())
    except RuntimeError:
        return None


def physical_cores(sources: MachineSources | None = None) -> int | None:
    """Distinct (physical id, core id) pairs of /proc/cpuinfo; ``os.cpu_count()`` where those ids are absent
    (ARM, macOS)."""
    src = sources or _DEFAULT_SOURCES
    pairs = {(b["physical id"], b["core id"]) for b in _cpuinfo_fields(_read_text(src.cpuinfo))
             if "physical id" in b and "core id" in b}
    return len(pairs) if pairs else os.cpu_count()


def memory_gb(sources: MachineSources | None = None) -> float | None:
    """Total memory in GiB: /proc/meminfo ``MemTotal``, or macOS ``sysctl hw.memsize``; None when unknown."""
    src = sources or _DEFAULT_SOURCES
    for line in _read_text(src.meminfo).splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "MemTotal:" and parts[1].isdigit():
            return round(int(parts[1]) / 1024**2, 2)  # kB -> GiB
    if src.system == "darwin":
        out = _sysctl("-n", "hw.memsize").strip()
        if out.isdigit():
            return round(int(out) / 1024**3, 2)
    return None


# --------------------------------------------------------------------------------------------------
# Host kind (Colab, cloud instance type) and Slurm
# --------------------------------------------------------------------------------------------------

#: chassis_asset_tag of every Azure virtual machine (a local Hyper-V VM has the same vendor and product).
_AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"
_AWS_INSTANCE_TYPE = re.compile(r"[a-z][a-z0-9-]*\.[a-z0-9-]+")


def _colab_module_present() -> bool:
    if "google.colab" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("google.colab") is not None
    except (ImportError, ValueError):
        return False


def host_kind(sources: MachineSources | None = None) -> str:
    """What kind of host this is, from the environment and the machine's own DMI files (never a network
    metadata service).

    Returns ``"colab"`` (env ``COLAB_RELEASE_TAG`` or ``COLAB_GPU``, or the ``google.colab`` module);
    ``"aws:<instance type>"`` (DMI sys_vendor "Amazon EC2", product_name e.g. "g4dn.xlarge"; ``"aws"`` where
    the product is not an instance type, e.g. older Xen instances with bios_vendor "Amazon"); ``"gcp"``
    (product_name "Google Compute Engine"; the machine type is not in DMI); ``"azure"`` (Microsoft
    "Virtual Machine" with Azure's chassis asset tag); else ``"unknown"``.
    """
    src = sources or _DEFAULT_SOURCES
    env = src.env()
    colab = src.colab_module if src.colab_module is not None else _colab_module_present()
    if env.get("COLAB_RELEASE_TAG") or env.get("COLAB_GPU") or colab:
        return "colab"

    def dmi(name: str) -> str:
        return _read_text(Path(src.dmi_dir) / name).strip()

    sys_vendor, product = dmi("sys_vendor"), dmi("product_name")
    amazon = dmi("bios_vendor").startswith("Amazon") or "amazon" in dmi("product_version").lower()
    if sys_vendor == "Amazon EC2" or amazon:
        return f"aws:{product}" if _AWS_INSTANCE_TYPE.fullmatch(product) else "aws"
    if product == "Google Compute Engine" or sys_vendor == "Google":
        return "gcp"
    if (sys_vendor == "Microsoft Corporation" and product == "Virtual Machine"
            and dmi("chassis_asset_tag") == _AZURE_ASSET_TAG):
        return "azure"
    return "unknown"


def slurm_info(node_kind: str, sources: MachineSources | None = None) -> dict[str, str | None] | None:
    """The Slurm job of this process (``SLURM_JOB_ID`` set), else None.

    Keys: ``job_id``, ``array_job_id``, ``array_task_id``, ``partition`` (None where unset) and ``node_kind``:
    ``"<partition>:<node_kind>"`` (``node_kind`` alone without a partition), where ``node_kind`` is the readable
    platform name. Node and host names (``SLURMD_NODENAME``, ``SLURM_JOB_NODELIST``) are never recorded.
    """
    env = (sources or _DEFAULT_SOURCES).env()
    if not env.get("SLURM_JOB_ID"):
        return None
    partition = env.get("SLURM_JOB_PARTITION") or None
    return {
        "job_id": env["SLURM_JOB_ID"],
        "array_job_id": env.get("SLURM_ARRAY_JOB_ID") or None,
        "array_task_id": env.get("SLURM_ARRAY_TASK_ID") or None,
        "partition": partition,
        "node_kind": f"{partition}:{node_kind}" if partition else node_kind,
    }


# --------------------------------------------------------------------------------------------------
# GPU driver
# --------------------------------------------------------------------------------------------------


def gpu_driver_version() -> str | None:
    """The NVIDIA driver version (``nvidia-smi --query-gpu=driver_version``), or None where nvidia-smi is
    missing or fails; never raises. One driver serves every GPU of a machine, so the first line is taken."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = [line.strip() for line in out.stdout.splitlines() if line.strip()]
    return lines[0] if out.returncode == 0 and lines else None
