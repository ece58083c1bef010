"""Cost of the summary pass relative to plain scoring, on the reference model and real DL20 pairs.

    python bench/precompute.py [--pairs 256] [--batch-size 32] [--device cpu] [--repeats 3]

Both passes see the same pairs, batches (length-sorted), device and thread count; plain scoring uses
the stock SDPA attention and computes nothing else. Prints pairs/s of each (best of --repeats) and
their ratio (target on CPU: summary pass at most 1.5x plain scoring).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=str(REPO.parent / "shared/models/minilm-l6-msmarco-ce"))
    p.add_argument("--dataset", default=str(REPO.parent / "shared/data/trec-dl-2020"))
    p.add_argument("--pairs", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cache", default=str(REPO / "data/cache"))
    args = p.parse_args()

    import torch

    from precompute.datasets import resolve
    from precompute.model import load
    from precompute.pairs import build_pairs
    from precompute.summaries import plain_scores, summarise_chunk

    pairs = build_pairs(resolve(args.dataset, Path(args.cache)), easy_negatives=20).pairs
    step = max(1, len(pairs) // args.pairs)
    sample = pairs[::step][: args.pairs]  # spread over queries and pair kinds
    lm = load(args.model, args.device, args.dtype)
    sync = torch.cuda.synchronize if lm.device == "cuda" else (lambda: None)

    def best(fn) -> float:
        fn()  # warm-up (allocator, kernels)
        times = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        return min(times)

    kw = dict(batch_size=args.batch_size, max_length=args.max_length)
    t_plain = best(lambda: plain_scores(lm, sample, **kw))
    t_eager = best(lambda: plain_scores(lm, sample, implementation="eager", **kw))
    t_summary = best(lambda: summarise_chunk(lm, sample, **kw))
    device = torch.cuda.get_device_name() if lm.device == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"model {Path(args.model).name}, {len(sample)} DL20 pairs, batch {args.batch_size}, {device}, {lm.dtype}, best of {args.repeats}")
    print(f"plain scoring (sdpa)   : {len(sample) / t_plain:8.1f} pairs/s  ({t_plain:.2f} s)")
    print(f"plain scoring (eager)  : {len(sample) / t_eager:8.1f} pairs/s  ({t_eager:.2f} s)")
    print(f"summary pass           : {len(sample) / t_summary:8.1f} pairs/s  ({t_summary:.2f} s)")
    print(f"ratio summary / sdpa   : {t_summary / t_plain:.2f}x  (target <= 1.5x)")
    print(f"ratio summary / eager  : {t_summary / t_eager:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
