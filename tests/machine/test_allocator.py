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

# A child process runs forward and backward passes of the tests' tiny U-TAE (B=2, T=12, 64x64: activations of
# about 3 MiB) and reports the page faults of its last three steps, when every tensor has been allocated before.
# By default glibc returns freed blocks to the kernel and the steps fault again (3,000 to 4,000 faults a step
# measured); kept, the heap reuses them.
_CHILD = """
import json, resource, sys, torch
from helpers import tiny_model
from utae.machine.allocator import keep_freed_memory
from utae.models.utae import UTAE
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.set_num_threads(1)
torch.manual_seed(0)
model = UTAE(**tiny_model())
x, pos = torch.randn(2, 12, 10, 64, 64), torch.arange(12).repeat(2, 1)
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model(x, pos).square().mean().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({"kept": kept, "faults": sorted(faults[-3:])}))
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
    median_default, median_kept = default["faults"][1], kept["faults"][1]
    assert median_default > 500  # the workload shows the problem: a step's blocks are fresh pages
    # Kept, a step reuses its pages: a handful of faults (a new small object now and then), at most 1/20. The
    # median of three steps: the heap may still grow once in a while as it settles.
    assert median_kept <= max(50, median_default // 20)


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
