"""utae.machine.allocator: freed memory kept for reuse (no page faults when a step reallocates its tensors)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from utae.machine.allocator import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A child process mallocs, touches and frees a 24 MiB block (the size of the largest activations of the bench step)
# three times and reports the page faults of each. By default glibc serves the first from mmap and unmaps it on
# free, then raises its mmap threshold and serves the second from fresh heap pages: both fault all 6,144 4-KiB
# pages. Kept, the first comes from the heap and stays there: the second reuses its pages. (glibc's documented
# dynamic threshold, so the contrast is the same on every glibc machine; the effect on a U-TAE step, 61,000
# faults a step, is measured in docs/benchmarks.md.) Plain malloc: PyTorch's aligned allocations fragment the
# heap in ways that hide this on a single block.
_CHILD = """
import ctypes, json, resource, sys
from utae.machine.allocator import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL("libc.so.6") if kept is not False else None
faults = []
if libc is not None:
    libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
    for _ in range(3):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = libc.malloc(24 << 20)
        ctypes.memset(block, 1, 24 << 20)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        libc.free(block)
print(json.dumps({"kept": kept, "faults": faults}))
"""


def _child(mode: str) -> dict:
    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tests.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_keep_freed_memory_removes_the_page_faults_of_a_reallocation():
    default, kept = _child("default"), _child("keep")
    if not GLIBC:  # no knobs to turn: the function says so
        assert kept["kept"] is False
        return
    assert kept["kept"] is True
    pages = (24 << 20) // 4096
    assert default["faults"][1] > pages // 2  # fresh pages again (the kernel may map some in larger pieces)
    assert kept["faults"][1] < pages // 20    # the same pages again


def test_keep_freed_memory_rejects_a_non_positive_size():
    with pytest.raises(ValueError, match="keep_bytes must be positive, got 0"):
        keep_freed_memory(0)


_RELEASE_CHILD = """
import json, torch
from utae.machine.allocator import keep_freed_memory, release_freed_memory
def rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
keep_freed_memory()
blocks = [torch.ones(6 << 20) for _ in range(4)]  # 4 x 24 MiB, touched
del blocks
kept = rss_mb()
released = release_freed_memory()
print(json.dumps({"released": released, "kept_mb": kept, "after_mb": rss_mb()}))
"""


def test_release_freed_memory_hands_kept_memory_back():
    """What keep_freed_memory keeps counts in the resident set until released (reset_peak_memory releases it, so a
    peak-memory window starts from the live memory)."""
    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests.parent), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", _RELEASE_CHILD], capture_output=True, text=True, check=True, env=env)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if not GLIBC:
        assert result["released"] is False
        return
    assert result["released"] is True
    assert result["kept_mb"] - result["after_mb"] > 64  # most of the 96 MiB freed and kept goes back
