"""glibc allocator tuning for CPU inference: an explicit, process-wide call.

The activations of a 512² image are tens of MB. glibc returns freed blocks of that size to the
OS and page-faults them back in on the next image, which cost the fused backend 18% of the slim
network's time and eager PyTorch up to 30% (docs/benchmarks.md). ``tune_malloc`` raises glibc's
mmap and trim thresholds to 1 GiB so that they are reused; it keeps up to that much freed
memory in the heap, for the whole process. Libraries do not call it: the command-line tools and
the server do, once at start-up (``FAST_STYLE_MALLOC_TUNING=0`` opts out).
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

MALLOC_THRESHOLD = 1 << 30  # bytes (glibc's M_MMAP_THRESHOLD and M_TRIM_THRESHOLD)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # <malloc.h>


def tune_malloc() -> bool:
    """Raise glibc's mmap/trim thresholds (see the module docstring). Returns whether it was
    applied: False off Linux/glibc or with ``FAST_STYLE_MALLOC_TUNING=0``."""
    if os.environ.get("FAST_STYLE_MALLOC_TUNING", "1") == "0":
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    ok = libc.mallopt(_M_MMAP_THRESHOLD, MALLOC_THRESHOLD)
    return bool(ok and libc.mallopt(_M_TRIM_THRESHOLD, MALLOC_THRESHOLD))
