"""Tests of utae.machine.probe and utae.machine.record on CPU (fake /proc, DMI and environment through MachineSources)."""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

import utae.machine.probe as machine
import utae.machine.record as plat
from utae.machine.probe import (
    MachineSources,
    cpu_features,
    cpu_model,
    host_kind,
    isa_tier,
    memory_gb,
    parse_cpu_features,
    parse_sysctl_features,
    physical_cores,
)
from utae.machine.record import (
    IDENTITY_COLUMNS,
    current_fingerprint,
    describe_record,
    format_platform_id,
    machine_identity,
    peak_memory_mb,
    platform_id,
    platform_info,
    record_fingerprint,
    reset_peak_memory,
    resolve_device,
    same_machine_kind,
)

SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
HEX12 = re.compile(r"^[0-9a-f]{12}$")

# --------------------------------------------------------------------------------------------------
# Fake machines
# --------------------------------------------------------------------------------------------------

_XEON_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss "
               "ht syscall nx pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid pni pclmulqdq "
               "ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm "
               "abm 3dnowprefetch fsgsbase bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap "
               "avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves wbnoinvd "
               "ida arat avx512vbmi pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg "
               "avx512_vpopcntdq rdpid md_clear flush_l1d arch_capabilities")
_EPYC_FLAGS = ("fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht "
               "syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl pni pclmulqdq ssse3 fma cx16 "
               "sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand hypervisor lahf_lm cmp_legacy abm sse4a "
               "misalignsse 3dnowprefetch fsgsbase bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap clflushopt clwb "
               "sha_ni xsaveopt xsavec xgetbv1 xsaves clzero vaes vpclmulqdq rdpid fsrm")
_GRAVITON3_FEATURES = ("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma "
                       "lrcpc dcpop sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs paca pacg "
                       "dcpodp svei8mm svebf16 i8mm bf16 dgh rng")


def _x86_cpuinfo(model: str, flags: str, cores: int = 2, threads_per_core: int = 2) -> str:
    """/proc/cpuinfo of one socket with ``cores`` cores of ``threads_per_core`` logical processors each."""
    blocks = []
    for proc in range(cores * threads_per_core):
        blocks.append(f"processor\t: {proc}\nvendor_id\t: GenuineIntel\nmodel name\t: {model}\n"
                      f"physical id\t: 0\nsiblings\t: {cores * threads_per_core}\ncore id\t\t: {proc % cores}\n"
                      f"cpu cores\t: {cores}\nflags\t\t: {flags}\nbogomips\t: 5800.00\n")
    return "\n".join(blocks)


def _arm_cpuinfo(features: str, part: str, n: int = 2) -> str:
    return "\n".join(f"processor\t: {i}\nBogoMIPS\t: 2100.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                     f"CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: {part}\nCPU revision\t: 1\n"
                     for i in range(n))


XEON_8375C = _x86_cpuinfo("Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", _XEON_FLAGS)
EPYC_7B13 = _x86_cpuinfo("AMD EPYC 7B13 64-Core Processor", _EPYC_FLAGS, cores=4, threads_per_core=1)
GRAVITON3 = _arm_cpuinfo(_GRAVITON3_FEATURES, "0xd40")
GRAVITON2 = _arm_cpuinfo("fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
                         "dcpop asimddp ssbs", "0xd0c")

AWS_G4DN = {"sys_vendor": "Amazon EC2", "product_name": "g4dn.xlarge", "bios_vendor": "Amazon EC2",
            "board_vendor": "Amazon EC2", "board_asset_tag": "i-0123456789abcdef0", "chassis_asset_tag": "Amazon EC2"}
AWS_XEN = {"sys_vendor": "Xen", "product_name": "HVM domU", "product_version": "4.11.amazon", "bios_vendor": "Xen"}
GCP = {"sys_vendor": "Google", "product_name": "Google Compute Engine", "bios_vendor": "Google",
       "board_vendor": "Google", "chassis_asset_tag": ""}
AZURE = {"sys_vendor": "Microsoft Corporation", "product_name": "Virtual Machine", "product_version": "7.0",
         "chassis_asset_tag": "7783-7084-3265-9085-8269-3286-77"}
HYPER_V = {**AZURE, "chassis_asset_tag": "0000-0000-0000-0000-0000-0000-00"}  # a local Hyper-V VM: not Azure
HETZNER = {"sys_vendor": "Hetzner", "product_name": "vServer", "product_version": "20171111"}


def fake_machine(tmp_path: Path, cpuinfo: str = EPYC_7B13, dmi: dict[str, str] | None = None,
                 environ: dict[str, str] | None = None, meminfo_kb: int | None = 16 * 1024**2,
                 colab_module: bool = False, name: str = "m") -> MachineSources:
    """Sources of a fake Linux machine under ``tmp_path / name`` (no DMI folder when ``dmi`` is None)."""
    root = tmp_path / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "cpuinfo").write_text(cpuinfo)
    (root / "meminfo").write_text("" if meminfo_kb is None else f"MemTotal:       {meminfo_kb} kB\nMemFree: 1 kB\n")
    dmi_dir = root / "dmi"
    if dmi is not None:
        dmi_dir.mkdir(exist_ok=True)
        for key, value in dmi.items():
            (dmi_dir / key).write_text(value + "\n")
    return MachineSources(cpuinfo=root / "cpuinfo", meminfo=root / "meminfo", dmi_dir=dmi_dir,
                          environ=dict(environ or {}), colab_module=colab_module, system="linux")


# --------------------------------------------------------------------------------------------------
# CPU features, ISA tier, model, cores, memory
# --------------------------------------------------------------------------------------------------


def test_cpu_features_x86_avx512() -> None:
    assert parse_cpu_features(XEON_8375C) == ["avx", "avx2", "avx512_vnni", "avx512bw", "avx512cd", "avx512dq",
                                              "avx512f", "avx512vbmi", "avx512vl", "f16c", "fma", "sse4_1", "sse4_2"]
    assert isa_tier(parse_cpu_features(XEON_8375C)) == "avx512"


def test_cpu_features_x86_avx2_only() -> None:
    features = parse_cpu_features(EPYC_7B13)
    assert features == ["avx", "avx2", "f16c", "fma", "sse4_1", "sse4_2"]
    assert not any(f.startswith("avx512") for f in features)  # sse4a, mmxext, sha_ni... are not kernel-relevant
    assert isa_tier(features) == "avx2"


def test_cpu_features_arm_graviton3_with_sve() -> None:
    features = parse_cpu_features(GRAVITON3)
    assert features == ["asimddp", "asimdhp", "bf16", "i8mm", "neon", "sve", "svebf16", "svei8mm"]
    assert "asimd" not in features  # reported as neon
    assert isa_tier(features) == "sve"
    assert isa_tier(parse_cpu_features(GRAVITON2)) == "neon"


def test_cpu_features_empty_or_missing_file(tmp_path: Path) -> None:
    assert parse_cpu_features("") == []
    src = fake_machine(tmp_path, cpuinfo="")
    assert cpu_features(src) == [] and isa_tier([]) == ""
    missing = MachineSources(cpuinfo=tmp_path / "absent", meminfo=tmp_path / "absent", dmi_dir=tmp_path / "absent",
                             environ={}, colab_module=False, system="linux")
    assert cpu_features(missing) == [] and memory_gb(missing) is None and host_kind(missing) == "unknown"
    assert physical_cores(missing) == os.cpu_count()
    # No ISA tier, so no suffix: the id is kind and model only.
    assert platform_id("cpu", missing) == format_platform_id("cpu", cpu_model(missing))


@pytest.mark.parametrize(
    ("features", "tier"),
    [
        (["sse4_2", "avx", "avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"], "amx"),
        (["avx2", "avx512f", "avx512bw", "avx512_bf16"], "avx512bf16"),
        (["avx2", "avx512f"], "avx512"),
        (["avx", "avx2", "fma"], "avx2"),
        (["sse4_2", "avx"], "avx"),
        (["sse4_1"], "sse"),
        (["neon", "sve2"], "sve"),
        (["neon", "bf16"], "neon"),
        (["f16c"], ""),
    ],
)
def test_isa_tier_order(features: list[str], tier: str) -> None:
    assert isa_tier(features) == tier


def test_cpu_model_physical_cores_and_memory(tmp_path: Path) -> None:
    xeon = fake_machine(tmp_path, XEON_8375C, meminfo_kb=16 * 1024**2, name="xeon")
    assert cpu_model(xeon) == "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"
    assert physical_cores(xeon) == 2  # 4 logical processors, two per (physical id, core id)
    assert memory_gb(xeon) == 16.0
    epyc = fake_machine(tmp_path, EPYC_7B13, name="epyc")
    assert physical_cores(epyc) == 4
    graviton = fake_machine(tmp_path, GRAVITON3, name="graviton")
    assert cpu_model(graviton) == "ARM Neoverse-V1"  # ARM /proc/cpuinfo has no model name line
    assert physical_cores(graviton) == os.cpu_count()  # no physical/core ids on ARM


def test_macos_reads_sysctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {
        ("hw.optional",): "hw.optional.arm.FEAT_BF16: 1\nhw.optional.arm.FEAT_I8MM: 1\nhw.optional.arm.FEAT_SME: 0\n"
                          "hw.optional.arm.FEAT_DotProd: 1\nhw.optional.neon: 1\nhw.optional.floatingpoint: 1\n",
        ("-n", "machdep.cpu.brand_string"): "Apple M2\n",
        ("-n", "hw.memsize"): f"{24 * 1024**3}\n",
    }
    monkeypatch.setattr(machine, "_sysctl", lambda *args: answers[args])
    mac = MachineSources(cpuinfo=tmp_path / "absent", meminfo=tmp_path / "absent", dmi_dir=tmp_path / "absent",
                         environ={}, colab_module=False, system="darwin")
    assert cpu_features(mac) == ["asimddp", "bf16", "i8mm", "neon"]  # FEAT_SME is 0
    assert cpu_model(mac) == "Apple M2" and memory_gb(mac) == 24.0
    assert platform_id("cpu", mac) == "cpu-apple-m2-neon"


def test_parse_sysctl_features_intel_mac() -> None:
    text = ("hw.optional.sse4_2: 1\nhw.optional.avx1_0: 1\nhw.optional.avx2_0: 1\nhw.optional.avx512f: 0\n"
            "hw.optional.fma: 1")
    assert parse_sysctl_features(text) == ["avx", "avx2", "fma", "sse4_2"]
    assert parse_sysctl_features("") == []


# --------------------------------------------------------------------------------------------------
# Host kind and Slurm
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dmi", "expected"),
    [(AWS_G4DN, "aws:g4dn.xlarge"), (AWS_XEN, "aws"), (GCP, "gcp"), (AZURE, "azure"), (HYPER_V, "unknown"),
     (HETZNER, "unknown"), ({}, "unknown"), (None, "unknown")],
)
def test_host_kind_from_dmi(tmp_path: Path, dmi: dict[str, str] | None, expected: str) -> None:
    assert host_kind(fake_machine(tmp_path, dmi=dmi)) == expected


@pytest.mark.parametrize(
    ("environ", "module"),
    [({"COLAB_RELEASE_TAG": "release-colab_20240920-060127_RC00"}, False), ({"COLAB_GPU": "1"}, False), ({}, True)],
)
def test_host_kind_colab(tmp_path: Path, environ: dict[str, str], module: bool) -> None:
    # Colab runs on Google Compute Engine: Colab wins over the DMI answer.
    assert host_kind(fake_machine(tmp_path, dmi=GCP, environ=environ, colab_module=module)) == "colab"


def test_platform_ids_of_fake_machines(tmp_path: Path) -> None:
    aws = fake_machine(tmp_path, XEON_8375C, dmi={**AWS_G4DN, "product_name": "m6i.xlarge"}, name="aws")
    assert platform_id("cpu", aws) == "cpu-intel-xeon-platinum-8375c-avx512-aws-m6i-xlarge"
    assert platform_id("cpu", fake_machine(tmp_path, EPYC_7B13, name="epyc")) == "cpu-amd-epyc-7b13-64-core-avx2"
    assert platform_id("cpu", fake_machine(tmp_path, GRAVITON3, name="g3")) == "cpu-arm-neoverse-v1-sve"
    assert platform_id("cpu", fake_machine(tmp_path, GRAVITON2, name="g2")) == "cpu-arm-neoverse-n1-neon"
    colab = fake_machine(tmp_path, XEON_8375C, environ={"COLAB_GPU": "1"}, name="colab")
    assert platform_id("cpu", colab) == "cpu-intel-xeon-platinum-8375c-avx512-colab"


def test_slurm_recorded_without_node_name(tmp_path: Path) -> None:
    node = "gpu-node-secret-0427"
    environ = {"SLURM_JOB_ID": "812345", "SLURM_ARRAY_JOB_ID": "812300", "SLURM_ARRAY_TASK_ID": "45",
               "SLURM_JOB_PARTITION": "gpu_a100", "SLURMD_NODENAME": node, "SLURM_JOB_NODELIST": node,
               "SLURM_TOPOLOGY_ADDR": node, "HOSTNAME": node}
    src = fake_machine(tmp_path, EPYC_7B13, environ=environ)
    info = platform_info("cpu", deterministic=True, sources=src)
    assert info["slurm"] == {"job_id": "812345", "array_job_id": "812300", "array_task_id": "45",
                             "partition": "gpu_a100", "node_kind": "gpu_a100:cpu-amd-epyc-7b13-64-core-avx2"}
    assert node not in json.dumps(info)
    no_partition = platform_info("cpu", True, sources=fake_machine(tmp_path, environ={"SLURM_JOB_ID": "7"}, name="b"))
    assert no_partition["slurm"]["partition"] is None
    assert no_partition["slurm"]["node_kind"] == no_partition["platform_id"]
    assert platform_info("cpu", True, sources=fake_machine(tmp_path, name="c"))["slurm"] is None


# --------------------------------------------------------------------------------------------------
# Fingerprint
# --------------------------------------------------------------------------------------------------

FINGERPRINT_FIELDS = {"device_kind", "device_name", "cpu_arch", "cpu_features", "torch_cpu_capability",
                      "gpu_compute_capability", "torch_version", "cuda_version", "cudnn_version", "host_kind"}


def test_fingerprint_is_stable_and_hashes_the_recorded_fields(tmp_path: Path) -> None:
    src = fake_machine(tmp_path, XEON_8375C, dmi=AWS_G4DN)
    first, second = platform_info("cpu", True, sources=src), platform_info("cpu", False, sources=src)
    assert HEX12.match(first["fingerprint"]) and first["fingerprint"] == second["fingerprint"]
    assert first["fingerprint"] == current_fingerprint("cpu", src) == machine_identity("cpu", src).fingerprint
    assert set(first["fingerprint_fields"]) == FINGERPRINT_FIELDS
    assert first["fingerprint"] == plat.fingerprint_of(json.loads(json.dumps(first["fingerprint_fields"])))
    assert first["fingerprint_fields"]["cpu_features"] == first["cpu_features"]
    assert first["fingerprint_fields"]["host_kind"] == first["host_kind"] == "aws:g4dn.xlarge"


def test_fingerprint_changes_with_a_feature_and_the_host(tmp_path: Path) -> None:
    base = current_fingerprint("cpu", fake_machine(tmp_path, XEON_8375C, name="a"))
    no_vnni = fake_machine(tmp_path, XEON_8375C.replace(" avx512_vnni", ""), name="b")
    assert "avx512_vnni" not in cpu_features(no_vnni)
    assert current_fingerprint("cpu", no_vnni) != base
    assert current_fingerprint("cpu", fake_machine(tmp_path, XEON_8375C, dmi=GCP, name="c")) != base
    other_model = fake_machine(tmp_path, XEON_8375C.replace("8375C", "8380"), name="d")
    assert current_fingerprint("cpu", other_model) != base


def test_fingerprint_ignores_threads_memory_and_cores(tmp_path: Path) -> None:
    small = fake_machine(tmp_path, _x86_cpuinfo("AMD EPYC 7B13", _EPYC_FLAGS, cores=2), meminfo_kb=2**20, name="s")
    big = fake_machine(tmp_path, _x86_cpuinfo("AMD EPYC 7B13", _EPYC_FLAGS, cores=8), meminfo_kb=2**26, name="b")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = platform_info("cpu", True, sources=small)
        torch.set_num_threads(2)
        two = platform_info("cpu", True, sources=big)
    finally:
        torch.set_num_threads(threads)
    assert (one["torch_threads"], two["torch_threads"]) == (1, 2)
    assert (one["physical_cores"], two["physical_cores"]) == (2, 8)
    assert one["memory_gb"] < two["memory_gb"]
    assert one["fingerprint"] == two["fingerprint"]


# --------------------------------------------------------------------------------------------------
# platform_info and platform_id on this machine
# --------------------------------------------------------------------------------------------------


def test_platform_info_keys_and_types_on_cpu() -> None:
    info = platform_info(torch.device("cpu"), deterministic=True, extra={"amp": "off", "channels_last": False})
    expected_types = {
        "device": str,
        "device_kind": str,
        "device_name": str,
        "platform_id": str,
        "torch_version": str,
        "python_version": str,
        "numpy_version": str,
        "cpu_model": str,
        "cpu_count": int,
        "torch_threads": int,
        "deterministic": bool,
        "os": str,
        "cpu_arch": str,
        "cpu_features": list,
        "cpu_isa": str,
        "physical_cores": int,
        "host_kind": str,
        "fingerprint": str,
        "fingerprint_fields": dict,
    }
    for key, typ in expected_types.items():
        assert isinstance(info[key], typ), key
    assert info["device_kind"] == "cpu"
    assert info["cuda_version"] is None and info["cudnn_version"] is None and info["gpu_memory_gb"] is None
    for key in ("gpu_name", "gpu_count", "gpu_compute_capability", "gpu_driver"):
        assert info[key] is None, key
    assert info["device_name"] == info["cpu_model"] != ""
    assert info["torch_version"] == torch.__version__ and info["numpy_version"] == np.__version__
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["cpu_features"] == sorted(info["cpu_features"])
    assert info["cpu_isa"] == isa_tier(info["cpu_features"])
    assert info["memory_gb"] is None or info["memory_gb"] > 0
    assert HEX12.match(info["fingerprint"])
    assert info["deterministic"] is True
    assert info["amp"] == "off" and info["channels_last"] is False
    assert info["platform_id"] == platform_id("cpu")
    assert info["fingerprint"] == current_fingerprint("cpu")
    assert set(IDENTITY_COLUMNS) <= set(info)
    json.dumps(info)  # JSON-serialisable as is


def test_platform_info_has_no_hostname_or_user_name() -> None:
    info = platform_info("cpu", deterministic=False)
    assert info["deterministic"] is False
    text = json.dumps(info)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name to leak
        user = ""
    for secret in (socket.gethostname(), socket.getfqdn(), user):
        if len(secret) > 3:  # a 1-3 letter name could match inside any word
            assert secret not in text, secret


def test_platform_id_is_a_filesystem_safe_slug() -> None:
    slug = platform_id(torch.device("cpu"))
    assert slug.startswith("cpu-")
    assert SLUG.match(slug) and len(slug) <= 64


@pytest.mark.parametrize(
    ("kind", "name", "isa", "host", "expected"),
    [
        ("cpu", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "", "unknown", "cpu-intel-xeon-platinum-8375c"),
        ("cuda", "NVIDIA H100 80GB HBM3", "", "unknown", "cuda-nvidia-h100-80gb-hbm3"),
        ("cpu", "AMD EPYC 7B13 64-Core Processor", "", "unknown", "cpu-amd-epyc-7b13-64-core"),
        ("cpu", "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "", "unknown", "cpu-intel-core-i7-8700"),
        ("cpu", "  ", "", "unknown", "cpu-unknown"),
        ("cpu", "Weird/Name: with *stars* & ../dots", "", "unknown", "cpu-weird-name-with-stars-dots"),
        ("cpu", "AMD EPYC", "avx512", "unknown", "cpu-amd-epyc-avx512"),
        ("cpu", "AMD EPYC", "avx2", "unknown", "cpu-amd-epyc-avx2"),
        ("cpu", "Intel(R) Xeon(R) Platinum 8480+", "amx", "unknown", "cpu-intel-xeon-platinum-8480-amx"),
        ("cpu", "Apple M2", "neon", "unknown", "cpu-apple-m2-neon"),
        ("cuda", "Tesla T4", "", "colab", "cuda-tesla-t4-colab"),
        ("cuda", "Tesla T4", "", "aws:g4dn.xlarge", "cuda-tesla-t4-aws-g4dn-xlarge"),
        ("cuda", "NVIDIA A100-SXM4-40GB", "", "gcp", "cuda-nvidia-a100-sxm4-40gb-gcp"),
    ],
)
def test_format_platform_id(kind: str, name: str, isa: str, host: str, expected: str) -> None:
    slug = format_platform_id(kind, name, isa, host)
    assert slug == expected
    assert SLUG.match(slug)


def test_format_platform_id_keeps_the_suffix_of_a_long_name() -> None:
    slug = format_platform_id("cpu", "Very Long Vendor Name " * 6, "avx512bf16", "aws:p4d.24xlarge")
    assert len(slug) <= 64 and SLUG.match(slug)
    assert slug.startswith("cpu-very-long-vendor-name") and slug.endswith("-avx512bf16-aws-p4d-24xlarge")


# --------------------------------------------------------------------------------------------------
# Stored records
# --------------------------------------------------------------------------------------------------

#: A platform.json written before fingerprints existed (as in results/runs/cpu-amd-epyc).
OLD_RECORD = {"device": "cpu", "device_kind": "cpu", "device_name": "AMD EPYC", "platform_id": "cpu-amd-epyc",
              "cuda_version": None, "torch_version": "2.13.0+cpu", "cpu_model": "AMD EPYC", "torch_threads": 1}


def test_record_helpers_on_new_and_old_records(tmp_path: Path) -> None:
    epyc = platform_info("cpu", True, sources=fake_machine(tmp_path, EPYC_7B13, name="a"))
    epyc_again = platform_info("cpu", False, sources=fake_machine(tmp_path, EPYC_7B13, name="b"))
    xeon = platform_info("cpu", True, sources=fake_machine(tmp_path, XEON_8375C, name="c"))
    assert record_fingerprint(epyc) == epyc["fingerprint"]
    assert record_fingerprint(OLD_RECORD) is None and record_fingerprint({}) is None
    assert record_fingerprint({**OLD_RECORD, "fingerprint": None}) is None
    assert same_machine_kind(epyc, epyc_again) is True
    assert same_machine_kind(epyc, xeon) is False
    assert same_machine_kind(epyc, OLD_RECORD) is None and same_machine_kind(OLD_RECORD, OLD_RECORD) is None
    capability = epyc["torch_cpu_capability"]
    assert describe_record(epyc) == (f"AMD EPYC 7B13 64-Core Processor ({epyc['cpu_arch']}, {capability}, "
                                     f"torch {torch.__version__}, fingerprint {epyc['fingerprint']})")
    assert describe_record(OLD_RECORD) == "AMD EPYC (torch 2.13.0+cpu, fingerprint unknown)"
    assert describe_record({}) == "unknown device (fingerprint unknown)"


def test_describe_record_of_a_gpu_record() -> None:
    record = {"device_kind": "cuda", "device_name": "Tesla T4", "cpu_arch": "x86_64", "gpu_compute_capability": "7.5",
              "cuda_version": "12.4", "torch_version": "2.13.0+cu124", "torch_cpu_capability": "AVX2",
              "host_kind": "colab", "fingerprint": "0123456789ab"}
    assert describe_record(record) == ("Tesla T4 (x86_64, sm 7.5, CUDA 12.4, torch 2.13.0+cu124, colab, "
                                       "fingerprint 0123456789ab)")


def test_record_helpers_reject_non_mappings_and_bad_fingerprints() -> None:
    for bad in ([], "platform.json", None, 3):
        with pytest.raises(ValueError, match="mapping"):
            record_fingerprint(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="mapping"):
            describe_record(bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="mapping"):
            same_machine_kind(OLD_RECORD, bad)  # type: ignore[arg-type]
    for bad_fp in ("xyz", 123, "0123456789AB", "0123456789abc"):
        with pytest.raises(ValueError, match="'fingerprint'"):
            record_fingerprint({"fingerprint": bad_fp})
        assert describe_record({"device_name": "X", "fingerprint": bad_fp}) == "X (fingerprint invalid)"


# --------------------------------------------------------------------------------------------------
# GPU driver (a fake nvidia-smi on PATH)
# --------------------------------------------------------------------------------------------------


def _fake_nvidia_smi(folder: Path, body: str) -> None:
    folder.mkdir()
    exe = folder / "nvidia-smi"
    exe.write_text("#!/bin/sh\n" + body + "\n")
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)


def test_gpu_driver_version_never_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert machine.gpu_driver_version() is None  # no nvidia-smi
    _fake_nvidia_smi(tmp_path / "ok", 'printf "535.104.05\\n535.104.05\\n"')
    monkeypatch.setenv("PATH", str(tmp_path / "ok"))
    assert machine.gpu_driver_version() == "535.104.05"
    _fake_nvidia_smi(tmp_path / "broken", 'echo "NVIDIA-SMI has failed"; exit 9')
    monkeypatch.setenv("PATH", str(tmp_path / "broken"))
    assert machine.gpu_driver_version() is None


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}
    for bad in ["gpu", "cuda:x", "tpu", "", "cpu:0:1"]:
        with pytest.raises(ValueError, match="device"):
            resolve_device(bad)


def test_resolve_device_unavailable_cuda(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ["cuda", "cuda:0", "CUDA:1"]:
        with pytest.raises(ValueError, match="device=.*CUDA is not available"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="only 1 CUDA device"):
        resolve_device("cuda:3")
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def _can_reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def test_peak_memory_on_cpu_is_positive_and_sees_a_big_allocation() -> None:
    reset_peak_memory("cpu")
    before = peak_memory_mb("cpu")
    assert before > 0
    big = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
    after = peak_memory_mb("cpu")
    del big
    if _can_reset_peak_rss():  # the window starts at the current RSS, so the allocation must show
        assert after - before > 32
    else:
        assert after >= before


def test_platform_info_of_a_fake_cuda_device(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA fields, with torch's CUDA queries replaced (this test runs without a GPU)."""
    from types import SimpleNamespace

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda dev=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda dev=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev=None: SimpleNamespace(total_memory=15 * 2**30))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90100)
    _fake_nvidia_smi(tmp_path / "bin", 'printf "550.54.15\\n"')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    device = torch.device("cuda", 0)
    colab = platform_info(device, True, sources=fake_machine(tmp_path, XEON_8375C, dmi=GCP,
                                                             environ={"COLAB_GPU": "1"}, name="colab"))
    assert colab["platform_id"] == "cuda-tesla-t4-colab"  # no CPU ISA tier for a GPU device
    assert (colab["gpu_name"], colab["gpu_count"], colab["gpu_memory_gb"]) == ("Tesla T4", 1, 15.0)
    assert (colab["gpu_compute_capability"], colab["gpu_driver"]) == ("7.5", "550.54.15")
    assert (colab["cuda_version"], colab["cudnn_version"]) == ("12.4", 90100)
    fields = colab["fingerprint_fields"]
    assert (fields["gpu_compute_capability"], fields["cuda_version"], fields["cudnn_version"]) == ("7.5", "12.4", 90100)
    aws = platform_info(device, True, sources=fake_machine(tmp_path, XEON_8375C, dmi=AWS_G4DN, name="aws"))
    assert aws["platform_id"] == "cuda-tesla-t4-aws-g4dn-xlarge"
    assert aws["fingerprint"] != colab["fingerprint"]
    assert describe_record(aws) == (f"Tesla T4 ({aws['cpu_arch']}, sm 7.5, CUDA 12.4, torch {torch.__version__}, "
                                    f"aws:g4dn.xlarge, fingerprint {aws['fingerprint']})")
    monkeypatch.setattr(torch.backends.cudnn, "version", lambda: 90200)  # another cuDNN: another fingerprint
    same_machine = fake_machine(tmp_path, XEON_8375C, dmi=AWS_G4DN, name="aws")
    assert current_fingerprint(device, same_machine) != aws["fingerprint"]


def test_auto_names_the_device_it_resolves_to() -> None:
    """Callers pass a sweep's ``device: auto`` straight through (a sweep's second run checks the fingerprints
    of its platform folder with it)."""
    assert plat.current_fingerprint("auto") == plat.current_fingerprint(resolve_device("auto"))
    assert plat.platform_id("auto") == plat.platform_id(resolve_device("auto"))
