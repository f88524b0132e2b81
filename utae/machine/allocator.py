"""The host memory allocator: keeping freed blocks for the next training step.

A training step on the CPU allocates and frees the same large tensors every time (activations, their
gradients, padded copies). glibc's ``malloc`` serves blocks above its mmap threshold with fresh ``mmap`` pages and
gives freed memory back to the kernel above its trim threshold, so the next step touches new pages again: the
U-TAE step of ``make bench`` (official widths, B=2, T=12, 64x64) took about 61,000 page faults and 90 ms of
system time a step, 13% of it, measured on the AVX-512 machine. :func:`keep_freed_memory` raises both
thresholds, so freed blocks stay in the process and are reused: the faults go to zero and the peak resident
memory rises a few percent (fragmentation). glibc caps the mmap threshold (32 MiB on 64-bit glibc 2.36), so
larger blocks, such as the activations at PASTIS scale, still come from fresh pages. It changes where tensors
live, never what is computed, so it is no part of a run's arithmetic settings.

Kept memory counts in the resident set, so a peak-memory window would start from the last step's high-water mark:
:func:`release_freed_memory` (glibc's ``malloc_trim``) hands it back, and
:func:`utae.machine.record.reset_peak_memory` calls it before opening a window.

Only glibc has these knobs (``mallopt``, ``malloc_trim``); elsewhere (macOS, musl) the functions do nothing and
say so.
"""

from __future__ import annotations

import ctypes
import platform

__all__ = ["keep_freed_memory", "release_freed_memory", "KEEP_BYTES"]

#: The thresholds asked for: blocks up to this size from the heap (or glibc's cap), and this much free heap kept.
KEEP_BYTES = 1 << 30
_M_TRIM_THRESHOLD = -1  # glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_OLD_GLIBC_MMAP_MAX = 32 << 20


def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc on Linux, else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


def keep_freed_memory(keep_bytes: int = KEEP_BYTES) -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel (see the module).

    Process-wide and idempotent. Returns whether the thresholds were set: False where the C library is not
    glibc or refused a value.
    """
    if keep_bytes <= 0:
        raise ValueError(f"keep_freed_memory: keep_bytes must be positive, got {keep_bytes}")
    libc = _glibc()
    if libc is None:
        return False
    value = min(keep_bytes, 2**31 - 1)  # mallopt takes an int
    trim = libc.mallopt(_M_TRIM_THRESHOLD, ctypes.c_int(value))
    # Older glibc refuses an mmap threshold above 32 MiB (its HEAP_MAX_SIZE / 2 on 64-bit): take that there.
    mmap = libc.mallopt(_M_MMAP_THRESHOLD, ctypes.c_int(value)) or libc.mallopt(
        _M_MMAP_THRESHOLD, ctypes.c_int(min(value, _OLD_GLIBC_MMAP_MAX)))
    return bool(trim) and bool(mmap)


def release_freed_memory() -> bool:
    """Return the heap's free memory to the kernel now (glibc's ``malloc_trim(0)``); whether it could be asked."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(ctypes.c_size_t(0))
    return True
