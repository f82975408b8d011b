"""Hand freed heap memory back to the operating system (glibc ``malloc_trim``).

CPython frees small objects into its own arenas and larger ones (list and dict tables, big
strings) with ``free``; glibc keeps freed pages mapped until the top of its heap is free, so
after a burst (every point of a 100k-point gateway going Bad at once, its gap storm, a store
backlog) the gateway's RSS stays near the peak. ``malloc_trim(0)`` returns every whole free
page to the kernel (``madvise``). Measured on the 100k-point gateway of
``bench/inventory_scale.py --case gateway``: 315 → 296 MiB (issue #8, docs/benchmarks.md).

Source: glibc manual, "Memory Allocation Tunables" and malloc_trim(3). A no-op where the C
library is not glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import platform
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Callable[[int], int] = fn
    return trim


def release_free_heap() -> bool:
    """Return the C heap's free pages to the OS; blocks for milliseconds (run off the loop).

    Returns:
        True when memory was released, False when there was none or the C library has no
        ``malloc_trim``.
    """
    trim = _malloc_trim()
    return bool(trim is not None and trim(0))
