"""What the benchmarks share: the reference model and DL20 flags, the pair sample, a best-of-N timer."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parser(doc: str) -> argparse.ArgumentParser:
    """Flags every model benchmark takes (defaults: the reference model on ../shared DL20, CPU)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO.parent / "shared/models/minilm-l6-msmarco-ce"))
    p.add_argument("--dataset", default=str(REPO.parent / "shared/data/trec-dl-2020"))
    p.add_argument("--pairs", type=int, default=256, help="DL20 pairs measured (spread over queries and pair kinds)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache", default=str(REPO / "data/cache"))
    return p


def all_pairs(args) -> list:
    """Every pair of the dataset (judged pairs with text + 20 easy negatives per query)."""
    from precompute.datasets import resolve
    from precompute.pairs import build_pairs

    return build_pairs(resolve(args.dataset, Path(args.cache)), easy_negatives=20).pairs


def spread(pairs: list, n: int) -> list:
    """``n`` pairs taken at a fixed stride, so every query and pair kind is represented."""
    return pairs[:: max(1, len(pairs) // n)][:n]


def synchronizer(device: str) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if device == "cuda" else (lambda: None)


def device_label(device: str) -> str:
    import torch

    return torch.cuda.get_device_name() if device == "cuda" else f"cpu, {torch.get_num_threads()} threads"


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds of one run of ``fn``, CUDA synchronised on both sides."""
    sync = synchronizer(device)
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def best_of(fn: Callable[[], object], repeats: int, device: str) -> float:
    """Seconds of the fastest of ``repeats`` runs after one warm-up (allocator, kernels); CUDA synchronised."""
    fn()
    return min(timed(fn, device) for _ in range(repeats))
