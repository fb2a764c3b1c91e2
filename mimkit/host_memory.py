"""Keep freed host memory in the process, so CPU training steps stop page-faulting.

glibc's malloc serves every block above its mmap threshold (128 KiB at start, rising with use
to at most 32 MiB) with fresh pages from the kernel, and gives them back on free; it also
trims the top of its heap whenever more than twice that threshold lies free there. A CPU
training step allocates and frees hundreds of activation tensors of a few MiB, so each step
takes its memory anew from the kernel and pays a page fault on every 4 KiB page first touched:
at the micro scale about three in four of a run's minor faults, and a visible share of the
step (measured with `mimkit bench --host-alloc`). Raising the threshold to its ceiling and
never trimming keeps the freed blocks in the heap for the next step. The price is that the
process holds on to its peak memory until it exits.

Command-line entry points call :func:`retain_freed_memory` once at start; a library user may
call it too. It changes nothing where the C library is not glibc, and it leaves alone a
process whose environment already sets glibc's own ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

# mallopt parameters (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_CEILING = 32 << 20  # glibc's largest allowed value on 64-bit: bigger blocks are always mapped
NEVER_TRIM = 2**31 - 1  # the largest value mallopt's int takes: the heap top is (practically) never trimmed
GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def retain_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds so freed blocks are reused; True when they were set."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in GLIBC_ENV):
        return False  # the user tuned malloc themselves
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_CEILING)) and bool(mallopt(M_TRIM_THRESHOLD, NEVER_TRIM))
