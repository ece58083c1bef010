"""Hand memory the job has freed back to the operating system between stages.

Why: the job's peak resident memory should not depend on how many pairs it ran. Each stage frees what it held
(parts are on disk, merges stream), but the allocators keep freed memory for reuse: glibc's malloc keeps the top
of its heaps and whole arenas of freed torch, numpy and DuckDB buffers, and pyarrow's mimalloc pool keeps its
pages. What a stage left behind then adds to the next stage's own peak. :func:`release` returns it: Python's
garbage first (cycles holding arrays), then pyarrow's pool, then glibc's ``malloc_trim(0)`` (every arena, not only
the main heap's top). Where glibc is not the C library (macOS, musl) the last step is skipped: nothing to call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
import sys
from functools import cache

POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"  # read by Arrow when pyarrow is loaded


@cache
def _malloc_trim():
    """glibc's ``malloc_trim`` or None where the C library has none."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def use_system_pool() -> None:
    """Allocate Arrow's buffers with the C library's malloc instead of pyarrow's default mimalloc (see the module
    docstring), unless ``ARROW_DEFAULT_MEMORY_POOL`` names another pool. Arrow reads that variable once, when pyarrow
    is loaded: the job's entry point (:func:`precompute.cli.main`) calls this before anything loads pyarrow, so every
    buffer follows, the C++ core's own included. Called once pyarrow is loaded (the job run from Python), it can
    only switch the pool that pyarrow's Python functions allocate from."""
    os.environ.setdefault(POOL_VARIABLE, "system")
    if "pyarrow" in sys.modules and os.environ[POOL_VARIABLE] == "system":
        import pyarrow as pa

        pa.set_memory_pool(pa.system_memory_pool())


def release() -> None:
    """Collect Python's garbage and return freed allocator memory to the OS (see the module docstring)."""
    gc.collect()
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except ImportError:  # pragma: no cover - pyarrow is a dependency of the job
        pass
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
