"""Attribution patching vs batched exact patching vs a loop of full forwards: the head sweep of the tfc1 experiment.

    python bench/patching.py [--pairs 32] [--large-pairs 2] [--loop-pairs 8] [--batch-size 32] [--device cpu]

For the same DL20 pairs (tfc1 inputs: a query term or a filler inserted at the passage's start) the effect of every
head of every layer is computed three ways:

* attribution (the job's ``--patching-method attribution``, :mod:`precompute.analyses.attribution`): one clean
  forward, one corrupted forward and one backward pass per batch of pairs gives every head's first-order estimate;
* exact, batched (the job's exact patching, :func:`precompute.analyses.patching.patch_batch`): pairs in batches of
  similar length, all heads of a layer as rows of one forward, the layers below the patched one resumed;
* loop: one full forward from the input per (pair, head), batch size 1 (the plain way).

Prints pairs/s of each and the speed-ups over the loop, for the reference model (6 layers x 12 heads) and a random
BERT-large-shaped model (24 x 16; random weights, the reference tokenizer), with the load average beside them (the
machine is shared: read the ratios, measured in one run). Checks that batched and loop exact scores agree (1e-4) and
prints how attribution ranks the heads against exact patching (Spearman over heads of the mean recovered score, and
the overlap of the top 10). Targets: attribution >= 20x the loop on 24 layers, exact batched >= 3x on 6 layers.
``--profile`` prints where the batched exact pass spends its time (cProfile, top functions by own time).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import all_pairs, device_label, parser, spread, synchronizer  # noqa: E402


def _load() -> str:
    return "load average " + ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _batches(lm, items, batch_size: int, max_length: int):
    from precompute.analyses import batching

    return list(batching.patch_batches(lm, items, batch_size=batch_size, max_length=max_length))


def measure(lm, items, loop_items, *, batch_size: int, max_length: int, device: str, scale: str = "logit"):
    """Seconds per pair of (attribution, exact batched, loop), max |batched - loop| score difference, and per-head
    mean recovered scores (attribution, exact) over ``items``."""
    import numpy as np

    from precompute.analyses import attribution as A
    from precompute.analyses import patching as P

    sync = synchronizer(device)
    layers, heads = lm.shape
    sites = P.head_sites("tfc1", layers, heads)
    batches = _batches(lm, items, batch_size, max_length)
    first = _batches(lm, items[:1], batch_size, max_length)[0]
    with P.Patcher(lm, eager=True) as patcher:  # attribution
        A.attribute_batch(patcher, "tfc1", first[1], first[2], sites, scale=scale)  # warm-up
        sync()
        t0 = time.perf_counter()
        attributed = [A.attribute_batch(patcher, "tfc1", clean, corrupted, sites, scale=scale)
                      for _, clean, corrupted, _ in batches]
        sync()
        t_attribution = (time.perf_counter() - t0) / len(items)
    with P.Patcher(lm) as patcher:
        P.patch_batch(patcher, "tfc1", first[1], first[2], sites, rows_per_forward=first[3], scale=scale)
        sync()
        t0 = time.perf_counter()
        exact = [P.patch_batch(patcher, "tfc1", clean, corrupted, sites, rows_per_forward=rows, scale=scale)
                 for _, clean, corrupted, rows in batches]
        sync()
        t_batched = (time.perf_counter() - t0) / len(items)
        by_pair = {}
        for (chunk, *_), (_, _, patched) in zip(batches, exact):
            for j, item in enumerate(chunk):
                by_pair[item.patch_id] = {s: float(v[j]) for s, v in patched.items()}
        t0 = time.perf_counter()
        diff = 0.0
        for item in loop_items:
            c = lm.encode([item.query], [item.clean_doc], max_length).to(lm.device)
            k = lm.encode([item.query], [item.corrupted_doc], max_length).to(lm.device)
            _, _, single = P.patch_batch(patcher, "tfc1", c, k, sites, rows_per_forward=1, resume=False, scale=scale)
            diff = max(diff, max(abs(float(single[s][0]) - by_pair[item.patch_id][s]) for s in sites))
        sync()
        t_loop = (time.perf_counter() - t0) / len(loop_items)

    def per_head(results):
        return np.array([np.mean(np.concatenate([(r[2][s] - r[1]).detach().float().cpu().numpy() for r in results]))
                         for s in sites])

    return t_attribution, t_batched, t_loop, diff, per_head(attributed), per_head(exact)


def agreement(attributed, exact, top: int = 10) -> tuple[float, int]:
    """(Spearman rank correlation, overlap of the top ``top``) of two per-head scores."""
    from scipy.stats import spearmanr

    best = lambda v: set(v.argsort()[::-1][:top].tolist())  # noqa: E731
    return float(spearmanr(attributed, exact).statistic), len(best(attributed) & best(exact))


def profile(lm, items, *, batch_size: int, max_length: int) -> None:
    import cProfile
    import pstats

    from precompute.analyses import patching as P

    layers, heads = lm.shape
    sites = P.head_sites("tfc1", layers, heads)
    batches = _batches(lm, items, batch_size, max_length)
    with P.Patcher(lm) as patcher:
        run = lambda: [P.patch_batch(patcher, "tfc1", c, k, sites, rows_per_forward=r) for _, c, k, r in batches]  # noqa: E731
        run()
        profiler = cProfile.Profile()
        profiler.runcall(run)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(15)


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--large-pairs", type=int, default=2, help="pairs for the 24-layer model (0: skip it)")
    p.add_argument("--loop-pairs", type=int, default=8, help="pairs of the 6-layer model's loop (it is slow)")
    p.add_argument("--profile", action="store_true", help="profile the batched exact pass on the 6-layer model")
    p.set_defaults(pairs=32, max_length=256)
    args = p.parse_args()

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from precompute.analyses import patching_inputs as I
    from precompute.families.loading import LoadedModel, load

    pairs = spread(all_pairs(args), 400)
    ref = load(args.model, args.device, args.dtype)
    print(f"tfc1 head sweep, {device_label(ref.device)}, {ref.dtype}, max length {args.max_length}; {_load()}")
    print(f"{'model':<28} {'pairs':>5} {'attribution/s':>13} {'exact/s':>8} {'loop/s':>7} {'attr/loop':>9} "
          f"{'exact/loop':>10} {'max |diff|':>10} {'spearman':>8} {'top-10':>6}")
    large = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                       vocab_size=ref.config.vocab_size, num_labels=1, architectures=["BertForSequenceClassification"])
    torch.manual_seed(0)
    bert_large = LoadedModel(BertForSequenceClassification(large).to(ref.device).eval(), ref.tokenizer,
                             "bert-large-random", ref.device, ref.dtype)
    bert_large.model.set_attn_implementation("eager")
    items, _ = I.experiment_inputs("tfc1", ref, pairs, args.max_length, per_query=2, seed=0)
    for name, lm, n, n_loop in (("minilm-l6 (6 x 12)", ref, args.pairs, args.loop_pairs),
                                ("bert-large random (24 x 16)", bert_large, args.large_pairs, args.large_pairs)):
        if n < 1:
            continue
        chosen = items[:n]
        t_a, t_b, t_l, diff, attributed, exact = measure(lm, chosen, chosen[:n_loop], batch_size=args.batch_size,
                                                         max_length=args.max_length, device=lm.device)
        rho, overlap = agreement(attributed, exact)
        print(f"{name:<28} {len(chosen):>5} {1 / t_a:>13.3f} {1 / t_b:>8.3f} {1 / t_l:>7.3f} {t_l / t_a:>8.1f}x "
              f"{t_l / t_b:>9.1f}x {diff:>10.1e} {rho:>8.3f} {overlap:>6}   ({_load()})", flush=True)
    if args.profile:
        profile(ref, items[: args.pairs], batch_size=args.batch_size, max_length=args.max_length)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
