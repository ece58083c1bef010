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


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_arrow_buffers_freed_under_the_system_pool_go_back_to_the_os():
    """After use_system_pool() Arrow allocates with malloc, so release()'s malloc_trim returns what freed arrays held.
    (That mimalloc kept the job's pages is a whole-job measurement, bench/memory.py: a single-threaded loop like this
    one gets its pages back from mimalloc too.)"""
    import pyarrow as pa
    import pyarrow.compute as pc

    previous = pa.default_memory_pool()
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)  # 64 KB buffers on the heap, as in the test above
    try:
        allocator.use_system_pool()
        assert pa.default_memory_pool().backend_name == "system"
        column = pa.array(np.arange(8_000, dtype=np.float64))
        pc.add(column, 0)  # loads the compute kernels' code (file-backed pages) before the baseline
        allocator.release()
        base = _rss_bytes()
        arrays = [pc.add(column, i) for i in range(2_000)]  # allocated by Arrow, 64 KB each: 128 MB
        assert pa.total_allocated_bytes() >= 2_000 * 64_000
        keep = pc.add(column, -1)  # noqa: F841 - above them on the heap
        del arrays
        assert _rss_bytes() - base > 100 * 2**20
        allocator.release()
        assert _rss_bytes() - base < 30 * 2**20
    finally:
        pa.set_memory_pool(previous)


@pytest.mark.parametrize("entry", ["precompute.cli", "matching_atlas.cli"])
@pytest.mark.parametrize("chosen", [None, "mimalloc"])
def test_the_entry_points_choose_the_system_pool_before_pyarrow_loads(entry, chosen):
    """``python -m precompute`` and ``atlas precompute`` load nothing of pyarrow before the job picks its pool, so
    Arrow's C++ core allocates with malloc too; a pool the user names in ARROW_DEFAULT_MEMORY_POOL is kept."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    argv = ["--help"] if entry == "precompute.cli" else ["precompute", "--help"]
    code = (f"import contextlib, io, sys\nfrom {entry} import main\n"
            f"try:\n    with contextlib.redirect_stdout(io.StringIO()): main({argv!r})\nexcept SystemExit:\n    pass\n"
            "import pyarrow\nprint(pyarrow.default_memory_pool().backend_name)")
    env = {k: v for k, v in os.environ.items() if k != allocator.POOL_VARIABLE}
    if chosen:
        env[allocator.POOL_VARIABLE] = chosen
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == (chosen or "system")
