"""The job against the way the paper's public code works, on the same DL20 pairs.

    python bench/authors_style.py [--pairs 64] [--device cpu]

Authors' way: one pair at a time, truncated to 128 tokens, ``output_attentions=True`` (eager attention, every layer's
[head, seq, seq] weights returned to the host), the 25 segment masses reduced in numpy. The job's way: length-sorted
batches of 32 at up to 512 tokens, the 25 masses and the matching signals reduced inside the attention call.
Prints pairs/s of both and the ratio (job / authors), with the device.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import all_pairs, best_of, device_label, parser, spread, synchronizer  # noqa: E402


def authors_masses(lm, pairs, max_length: int = 128) -> list:
    """Per pair [layer, head, 5, 5] masses, one pair per forward, numpy reductions."""
    import numpy as np
    import torch

    from precompute.families.segments import segment_ids

    out = []
    previous = lm.model.config._attn_implementation
    lm.model.set_attn_implementation("eager")
    try:
        for p in pairs:
            enc = lm.tokenizer(p.query, p.doc, truncation="only_second", max_length=max_length, return_tensors="pt",
                               return_special_tokens_mask=True).to(lm.device)
            special = enc.pop("special_tokens_mask")[0].cpu().numpy()
            with torch.no_grad():
                attentions = lm.model(**enc, output_attentions=True).attentions
            segment = np.array(segment_ids(enc.sequence_ids(0), special.tolist(), [1] * len(special)))
            masses = np.zeros((len(attentions), attentions[0].shape[1], 5, 5))
            for layer, a in enumerate(attentions):
                a = a[0].float().cpu().numpy()  # [head, seq, seq]
                for s in range(5):
                    for t in range(5):
                        rows, cols = segment == s, segment == t
                        if rows.any() and cols.any():
                            masses[layer, :, s, t] = a[:, rows][:, :, cols].sum(-1).mean(-1)
            out.append(masses)
    finally:
        lm.model.set_attn_implementation(previous)
    return out


def main() -> int:
    p = parser(__doc__)
    p.set_defaults(pairs=64)
    args = p.parse_args()

    from precompute.families.loading import load
    from precompute.analyses.summaries import summarise_chunk

    sample = spread(all_pairs(args), args.pairs)
    lm = load(args.model, args.device, args.dtype)
    sync = synchronizer(lm.device)
    authors_masses(lm, sample[:2])  # warm-up
    sync()
    t0 = time.perf_counter()
    authors_masses(lm, sample)
    sync()
    t_authors = time.perf_counter() - t0
    t_job = best_of(lambda: summarise_chunk(lm, sample, batch_size=args.batch_size, max_length=512), args.repeats,
                    lm.device)
    print(f"model {Path(args.model).name}, {len(sample)} DL20 pairs, {device_label(lm.device)}, {lm.dtype}")
    print(f"authors' way (1 pair/forward, 128 tokens, output_attentions, numpy): {len(sample) / t_authors:8.1f} pairs/s")
    print(f"the job (batch {args.batch_size}, 512 tokens, reduced in the kernel)          : "
          f"{len(sample) / t_job:8.1f} pairs/s")
    print(f"ratio job / authors: {t_authors / t_job:.1f}x faster, at 4x the context")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
