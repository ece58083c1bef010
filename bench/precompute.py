"""Cost of the summary pass relative to plain scoring, on the reference model and real DL20 pairs.

    python bench/precompute.py [--pairs 256] [--batch-size 32] [--device cpu] [--repeats 3]

Both passes see the same pairs, batches (length-sorted), device and thread count; plain scoring uses
the stock SDPA attention and computes nothing else. Prints pairs/s of each (best of --repeats) and
their ratio (target on CPU: summary pass at most 1.5x plain scoring).
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import all_pairs, best_of, device_label, parser, spread  # noqa: E402


def main() -> int:
    args = parser(__doc__).parse_args()

    from precompute.model import load
    from precompute.summaries import plain_scores, summarise_chunk

    sample = spread(all_pairs(args), args.pairs)
    lm = load(args.model, args.device, args.dtype)
    best = lambda fn: best_of(fn, args.repeats, lm.device)  # noqa: E731
    kw = dict(batch_size=args.batch_size, max_length=args.max_length)
    t_plain = best(lambda: plain_scores(lm, sample, **kw))
    t_eager = best(lambda: plain_scores(lm, sample, implementation="eager", **kw))
    t_summary = best(lambda: summarise_chunk(lm, sample, **kw))
    device = device_label(lm.device)
    print(f"model {Path(args.model).name}, {len(sample)} DL20 pairs, batch {args.batch_size}, {device}, {lm.dtype}, best of {args.repeats}")
    print(f"plain scoring (sdpa)   : {len(sample) / t_plain:8.1f} pairs/s  ({t_plain:.2f} s)")
    print(f"plain scoring (eager)  : {len(sample) / t_eager:8.1f} pairs/s  ({t_eager:.2f} s)")
    print(f"summary pass           : {len(sample) / t_summary:8.1f} pairs/s  ({t_summary:.2f} s)")
    print(f"ratio summary / sdpa   : {t_summary / t_plain:.2f}x  (target <= 1.5x)")
    print(f"ratio summary / eager  : {t_summary / t_eager:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
