"""Cost of the summary pass relative to plain scoring, on the reference model and real DL20 pairs.

    python bench/precompute.py [--pairs 256] [--batch-size 32] [--device cpu] [--repeats 3]

Both passes see the same pairs, batches (length-sorted), device and thread count; plain scoring uses
the stock SDPA attention and computes nothing else. After one warm-up of each, the passes run in turn --repeats
times (plain, eager, summary, plain, ...), so a slow spell of the machine hits all of them alike. Prints pairs/s of
each (median run) and the median of the per-round ratios of wall time and of the process's CPU time (which a loaded
machine disturbs less); target on CPU: summary pass, value-weighted shares included, at most 1.25x plain scoring.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import all_pairs, device_label, parser, spread, timed  # noqa: E402


def main() -> int:
    args = parser(__doc__).parse_args()

    from precompute.families.loading import load
    from precompute.analyses.summaries import plain_scores, summarise_chunk

    sample = spread(all_pairs(args), args.pairs)
    lm = load(args.model, args.device, args.dtype)
    kw = dict(batch_size=args.batch_size, max_length=args.max_length)
    passes = {
        "plain scoring (sdpa)": lambda: plain_scores(lm, sample, **kw),
        "plain scoring (eager)": lambda: plain_scores(lm, sample, implementation="eager", **kw),
        "summary pass": lambda: summarise_chunk(lm, sample, **kw),
    }
    for run in passes.values():  # warm-up: allocator, kernels, tokenizer caches
        run()
    rounds, cpu = [], []
    for _ in range(args.repeats):
        rounds.append({})
        cpu.append({})
        for name, run in passes.items():
            start = time.process_time()  # this process's CPU seconds, all threads: what the pass costs under any load
            rounds[-1][name] = timed(run, lm.device)
            cpu[-1][name] = time.process_time() - start
    median = {name: statistics.median(r[name] for r in rounds) for name in passes}
    device = device_label(lm.device)
    print(f"model {Path(args.model).name}, {len(sample)} DL20 pairs, batch {args.batch_size}, {device}, {lm.dtype}, "
          f"median of {args.repeats} rounds")
    for name, seconds in median.items():
        print(f"{name:<23}: {len(sample) / seconds:8.1f} pairs/s  ({seconds:.2f} s)")
    for label, times in (("wall", rounds), ("CPU", cpu)):
        ratios = sorted(r["summary pass"] / r["plain scoring (sdpa)"] for r in times)
        print(f"{label + ' ratio summary / sdpa':<28}: {statistics.median(ratios):.2f}x median (rounds "
              f"{', '.join(f'{x:.2f}' for x in ratios)}; target <= 1.25x)")
        print(f"{label + ' ratio summary / eager':<28}: "
              f"{statistics.median(r['summary pass'] / r['plain scoring (eager)'] for r in times):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
