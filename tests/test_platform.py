"""Tests of utae.platform on CPU."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import utae.platform as plat
from utae.platform import Timer, peak_memory_mb, platform_id, platform_info, reset_peak_memory, resolve_device

SLUG = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


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
    }
    for key, typ in expected_types.items():
        assert isinstance(info[key], typ), key
    assert info["device_kind"] == "cpu"
    assert info["cuda_version"] is None and info["cudnn_version"] is None and info["gpu_memory_gb"] is None
    assert info["device_name"] == info["cpu_model"] != ""
    assert info["torch_version"] == torch.__version__ and info["numpy_version"] == np.__version__
    assert info["torch_threads"] == torch.get_num_threads()
    assert info["deterministic"] is True
    assert info["amp"] == "off" and info["channels_last"] is False
    assert info["platform_id"] == platform_id("cpu")
    json.dumps(info)  # JSON-serialisable as is


def test_platform_info_has_no_hostname() -> None:
    import socket

    host = socket.gethostname()
    info = platform_info("cpu", deterministic=False)
    assert info["deterministic"] is False
    if len(host) > 3:
        assert host not in json.dumps(info)


def test_platform_id_is_a_filesystem_safe_slug() -> None:
    slug = platform_id(torch.device("cpu"))
    assert slug.startswith("cpu-")
    assert SLUG.match(slug) and len(slug) <= 64


@pytest.mark.parametrize(
    ("kind", "name", "expected"),
    [
        ("cpu", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", "cpu-intel-xeon-platinum-8375c"),
        ("cuda", "NVIDIA H100 80GB HBM3", "cuda-nvidia-h100-80gb-hbm3"),
        ("cpu", "AMD EPYC 7B13 64-Core Processor", "cpu-amd-epyc-7b13-64-core"),
        ("cpu", "Intel(R) Core(TM) i7-8700 CPU @ 3.20GHz", "cpu-intel-core-i7-8700"),
        ("cpu", "  ", "cpu-unknown"),
        ("cpu", "Weird/Name: with *stars* & ../dots", "cpu-weird-name-with-stars-dots"),
    ],
)
def test_platform_id_strips_marketing_noise(monkeypatch, kind, name, expected) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(plat, "device_name", lambda device: name)
    slug = platform_id(torch.device(kind))
    assert slug == expected
    assert SLUG.match(slug)


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


def test_timer_measures_elapsed_time() -> None:
    t = Timer("cpu")
    assert t.seconds == 0.0
    with t:
        sum(range(10000))
    elapsed = t.seconds
    assert elapsed > 0
    assert t.seconds == elapsed  # frozen after exit
