"""Helpers for the kill -9 and integrity tests: small finished runs, a job killed at a crash point, table bytes.

The killed job runs in a forked child (the parent has torch and the model code imported, so a child costs no
start-up). Torch runs single-threaded around the fork: an OpenMP thread pool does not survive one.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
from contextlib import contextmanager
from pathlib import Path

from precompute import crash
from precompute.config import JobConfig
from precompute.job import run


@contextmanager
def single_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def tables(root: Path) -> dict[str, bytes]:
    """Every finished table file of a run folder (a partitioned table's files too), by path in the folder, as bytes."""
    from tests.conftest import table_files

    return {str(p.relative_to(root)): p.read_bytes() for p in table_files(root)}


def _child(cfg: JobConfig, point: str) -> None:
    os.environ[crash.ENV] = point
    run(cfg)
    os._exit(0)  # reached only when the point was never passed


def killed_at(cfg: JobConfig, point: str) -> int | None:
    """Run the job in a forked child that dies at ``point``; its exit code (-SIGKILL when it died there)."""
    gc.collect()  # no writer of an earlier job may hold a folder lock the child would inherit
    with single_thread():
        child = multiprocessing.get_context("fork").Process(target=_child, args=(cfg, point))
        child.start()
        child.join(120)
    if child.exitcode is None:
        child.kill()
        child.join()
    return child.exitcode
