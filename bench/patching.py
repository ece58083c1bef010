"""Batched activation patching against a loop of full forwards: the head sweep of the tfc1 experiment.

    python bench/patching.py [--pairs 64] [--large-pairs 2] [--batch-size 32] [--device cpu]

For the same DL20 pairs (tfc1 inputs: a query term or a filler inserted at the passage's start) every head of every
layer is patched with the clean run's output, two ways:

* batched (the job's way, ``precompute.analyses.batching.patch_batches``): pairs in batches of similar length, all heads of
  a layer as rows of one forward, and the layers below the patched one resumed from the corrupted run's captured
  outputs instead of being recomputed;
* loop: one full forward from the input per (pair, head), batch size 1.

Prints pairs/s of both and the speed-up, for the reference model (6 layers x 12 heads) and a random BERT-large-shaped
model (24 x 16; random weights, the reference tokenizer), checks that both ways give the same scores (1e-4), and
prints the share of the batched tokens that are not padding (the loop pads nothing; the job sorts a chunk of 256
pairs by length, so its batches pad less than a bench of a few dozen pairs does).
Target: at least 2x on the 6-layer model, more on 24 layers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import all_pairs, device_label, parser, spread  # noqa: E402


def measure(lm, items, *, batch_size: int, max_length: int, device: str) -> tuple[float, float, float, float]:
    """(batched seconds, loop seconds, largest score difference, share of the batched rows' tokens that are not
    padding) of the head sweep over ``items``."""
    from precompute.analyses import batching
    from precompute.analyses import patching as P
    from bench.common import synchronizer

    sync = synchronizer(device)
    with P.Patcher(lm) as patcher:
        first = [lm.encode([items[0].query], [doc], max_length).to(lm.device) for doc in (items[0].clean_doc,
                                                                                          items[0].corrupted_doc)]
        P.patch_batch(patcher, "tfc1", *first, rows_per_forward=batch_size, only="head")  # warm-up
        sync()
        t0 = time.perf_counter()
        batched, real, padded = {}, 0, 0
        for chunk, clean, corrupted, rows in batching.patch_batches(lm, items, batch_size=batch_size, max_length=max_length):
            real, padded = real + int(corrupted.inputs["attention_mask"].sum()), padded + corrupted.segments.numel()
            _, _, scores = P.patch_batch(patcher, "tfc1", clean, corrupted, rows_per_forward=rows, only="head")
            for key, values in scores.items():
                batched.update({(item.patch_id, key): float(v) for item, v in zip(chunk, values)})
        sync()
        t_batched = time.perf_counter() - t0
        t0 = time.perf_counter()
        diff = 0.0
        for item in items:
            c = lm.encode([item.query], [item.clean_doc], max_length).to(lm.device)
            k = lm.encode([item.query], [item.corrupted_doc], max_length).to(lm.device)
            _, _, single = P.patch_batch(patcher, "tfc1", c, k, rows_per_forward=1, resume=False, only="head")
            diff = max(diff, max(abs(float(single[key][0]) - batched[(item.patch_id, key)]) for key in single))
        sync()
        t_loop = time.perf_counter() - t0
    return t_batched, t_loop, diff, real / padded


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--large-pairs", type=int, default=2, help="pairs for the 24-layer model (its loop is slow; 0: skip it)")
    p.set_defaults(pairs=64, max_length=256)
    args = p.parse_args()

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from precompute.analyses import patching as P
    from precompute.families.loading import LoadedModel, load

    pairs = spread(all_pairs(args), 200)
    ref = load(args.model, args.device, args.dtype)
    print(f"tfc1 head sweep, {device_label(ref.device)}, {ref.dtype}, max length {args.max_length}")
    print(f"{'model':<28} {'pairs':>5} {'batched/s':>10} {'loop/s':>9} {'speed-up':>9} {'max |diff|':>10} "
          f"{'not padding':>11}")
    large = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                       vocab_size=ref.config.vocab_size, num_labels=1, architectures=["BertForSequenceClassification"])
    torch.manual_seed(0)
    bert_large = LoadedModel(BertForSequenceClassification(large).to(ref.device).eval(), ref.tokenizer,
                             "bert-large-random", ref.device, ref.dtype)
    bert_large.model.set_attn_implementation("eager")
    for name, lm, n in (("minilm-l6 (6 x 12)", ref, args.pairs), ("bert-large random (24 x 16)", bert_large,
                                                                     args.large_pairs)):
        items, _ = P.tfc1_pairs(lm, pairs, args.max_length)
        items = items[:n]
        if not items:
            continue
        t_batched, t_loop, diff, dense = measure(lm, items, batch_size=args.batch_size, max_length=args.max_length,
                                          device=lm.device)
        print(f"{name:<28} {len(items):>5} {len(items) / t_batched:>10.3f} {len(items) / t_loop:>9.3f} "
              f"{t_loop / t_batched:>8.1f}x {diff:>10.1e} {dense:>10.0%}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
