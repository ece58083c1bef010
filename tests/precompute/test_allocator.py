"""precompute.allocator: freed memory goes back to the OS between stages."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import numpy as np
import pytest

from precompute import allocator

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_release_returns_freed_heap_memory_to_the_os():
    """Many small arrays (below glibc's mmap threshold, so on the heap) freed while one survives above them: without a
    trim the heap keeps their pages; release() gives most of them back."""
    assert allocator._malloc_trim() is not None
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)  # pinned: 64 KB blocks stay on the heap whatever ran before in this process
    allocator.release()
    base = _rss_bytes()
    chunks = [np.ones(8_000) for _ in range(2_000)]  # 64 KB each (under the 128 KB mmap threshold): 128 MB
    keep = np.ones(8_000)  # noqa: F841 - on the heap after them: its top stays in use, free() cannot trim it
    del chunks
    assert _rss_bytes() - base > 100 * 2**20  # kept by the allocator
    allocator.release()
    assert _rss_bytes() - base < 30 * 2**20


def test_release_runs_without_glibc(monkeypatch):
    """Where the C library has no malloc_trim the step is skipped, the rest still runs."""
    monkeypatch.setattr(allocator, "_malloc_trim", lambda: None)
    allocator.release()
