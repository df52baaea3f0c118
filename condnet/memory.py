"""Keep freed memory in the process instead of returning it to the OS after every tensor.

glibc serves allocations above its mmap threshold (at most 32 MiB) with fresh `mmap`s and
unmaps them on free, so every large activation of every step is page-faulted in again: on a
2-core machine that made a depthwise convolution at batch 64 four times slower than its
arithmetic (measured in `benchmarks/compare_timm.py`, see benchmarks/RESULTS.md).
`retain_freed_memory` turns that off for the whole process with `mallopt`; it changes no
result, only where memory comes from. The condnet command calls it at start unless the
environment sets ``CONDNET_RETAIN_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = 1 << 30  # give memory back only when 1 GiB lies unused at the heap's top


def retain_freed_memory() -> bool:
    """Serve every allocation from the heap and keep freed blocks; True when applied.

    A no-op (False) off Linux/glibc, or when ``CONDNET_RETAIN_MEMORY=0``.
    """
    if os.environ.get("CONDNET_RETAIN_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
