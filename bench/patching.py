"""Attribution patching vs batched exact patching vs a loop of full forwards: the head sweep of the tfc1 experiment.

    python bench/patching.py [--pairs 32] [--loop-pairs 8] [--large-pairs 2] [--large-loop-pairs 1] [--rounds 3]
                             [--large-heads-per-layer 0] [--batch-size 32] [--device cpu] [--profile]

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
The three are timed interleaved (:func:`measure`), by wall and by CPU time. ``--profile`` then prints where
attribution and batched exact patching spend their time on each model (cProfile, top functions by own time).
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


class Clock:
    """Wall and CPU (this process's) seconds of the timed blocks, summed: on a shared machine the wall time moves with
    the load while the CPU time moves much less, so both are printed."""

    def __init__(self, sync):
        self.sync, self.wall, self.cpu = sync, 0.0, 0.0

    def time(self, fn):
        self.sync()
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        self.sync()
        self.wall += time.perf_counter() - w
        self.cpu += time.process_time() - c
        return out


def measure(lm, items, loop_items, *, batch_size: int, max_length: int, device: str, rounds: int = 3,
            heads_per_layer: int = 0, scale: str = "logit"):
    """Clocks of (attribution, exact batched, loop) per pair, max |batched - loop| score difference, and per-head mean
    recovered scores (attribution, exact) over ``items``.

    The three are interleaved so that the machine's load weighs on each alike: the heads are cut into ``rounds``
    blocks of layers, and each round times attribution of every head (it has no per-head cost: the rounds repeat
    it and its time is their mean), then exact batched and the loop on that round's heads. Batched exact patching
    runs the clean and corrupted forwards once per round (rounds - 1 more than it needs: its rate is a lower bound).
    One-time costs (model construction, tokenisation, the first pass's allocations) are outside the clocks.

    ``heads_per_layer`` > 0: exact patching (batched and loop) patches that many heads of every layer (evenly spaced)
    and its time is scaled to every head (x heads / heads_per_layer). Every forward of the loop is the same full
    forward of one row, so the loop's scaled time is its time; batched exact patching's is an estimate (its forwards
    hold fewer rows). Agreement and max |diff| are then over the sampled heads. Attribution always does every head."""
    import numpy as np

    from precompute.analyses import attribution as A
    from precompute.analyses import patching as P

    sync = synchronizer(device)
    layers, heads = lm.shape
    sites = P.head_sites("tfc1", layers, heads)
    step = heads // heads_per_layer if 0 < heads_per_layer < heads else 1
    sampled = [(layer, v) for layer, v in sites if v.head % step == 0 and v.head // step < heads // step]
    blocks = [sampled[r * len(sampled) // rounds : (r + 1) * len(sampled) // rounds] for r in range(rounds)]
    batches = _batches(lm, items, batch_size, max_length)
    singles = [(item, lm.encode([item.query], [item.clean_doc], max_length).to(lm.device),
                lm.encode([item.query], [item.corrupted_doc], max_length).to(lm.device)) for item in loop_items]
    first = batches[0]
    attribution_clock, exact_clock, loop_clock = Clock(sync), Clock(sync), Clock(sync)
    attributed, exact, single = [], {}, {}
    for r, block in enumerate(blocks):
        with P.Patcher(lm, eager=True) as patcher:
            if r == 0:  # warm-up: the first pass allocates
                A.attribute_batch(patcher, "tfc1", first[1], first[2], sites, scale=scale)
            attributed = attribution_clock.time(lambda: [
                A.attribute_batch(patcher, "tfc1", clean, corrupted, sites, scale=scale)
                for _, clean, corrupted, _ in batches])
        with P.Patcher(lm) as patcher:
            if r == 0:
                P.patch_batch(patcher, "tfc1", first[1], first[2], block[:1], rows_per_forward=first[3], scale=scale)
                P.patch_batch(patcher, "tfc1", singles[0][1], singles[0][2], block[:1], rows_per_forward=1,
                              resume=False, scale=scale)
            for b, (_, clean, corrupted, rows) in enumerate(batches):
                _, k, patched = exact_clock.time(lambda: P.patch_batch(
                    patcher, "tfc1", clean, corrupted, block, rows_per_forward=rows, scale=scale))
                exact.setdefault(b, [k, {}])[1].update(patched)
            for item, clean, corrupted in singles:
                _, _, patched = loop_clock.time(lambda: P.patch_batch(
                    patcher, "tfc1", clean, corrupted, block, rows_per_forward=1, resume=False, scale=scale))
                single.setdefault(item.patch_id, {}).update({s: float(v[0]) for s, v in patched.items()})
    by_pair = {item.patch_id: {s: float(v[j]) for s, v in exact[b][1].items()}
               for b, (chunk, *_) in enumerate(batches) for j, item in enumerate(chunk)}
    diff = max(abs(scores[s] - by_pair[pid][s]) for pid, scores in single.items() for s in sampled)

    def per_head(results):  # [(corrupted scores, {site: patched scores})] per batch
        return np.array([np.mean(np.concatenate([(patched[s] - k).detach().float().cpu().numpy()
                                                 for k, patched in results])) for s in sampled])

    scaled = len(sites) / len(sampled)
    per_pair = lambda clock, n, factor=1.0: (clock.wall / n * factor, clock.cpu / n * factor)  # noqa: E731
    return (per_pair(attribution_clock, len(items), 1 / rounds), per_pair(exact_clock, len(items), scaled),
            per_pair(loop_clock, len(loop_items), scaled), diff, per_head([(r[1], r[2]) for r in attributed]),
            per_head([exact[b] for b in range(len(batches))]))


def agreement(attributed, exact, top: int = 10) -> tuple[float, int]:
    """(Spearman rank correlation, overlap of the top ``top``) of two per-head scores."""
    from scipy.stats import spearmanr

    best = lambda v: set(v.argsort()[::-1][:top].tolist())  # noqa: E731
    return float(spearmanr(attributed, exact).statistic), len(best(attributed) & best(exact))


def profile(lm, items, *, batch_size: int, max_length: int, top: int = 12) -> None:
    """Where attribution and batched exact patching spend their time: cProfile's top functions by own time, after a
    warm-up pass (model construction and tokenisation are outside)."""
    import cProfile
    import pstats

    from precompute.analyses import attribution as A
    from precompute.analyses import patching as P

    layers, heads = lm.shape
    sites = P.head_sites("tfc1", layers, heads)
    batches = _batches(lm, items, batch_size, max_length)
    passes = {"attribution": lambda patcher: [A.attribute_batch(patcher, "tfc1", c, k, sites) for _, c, k, _ in batches],
              "exact batched": lambda patcher: [P.patch_batch(patcher, "tfc1", c, k, sites, rows_per_forward=r)
                                                for _, c, k, r in batches]}
    for method, run in passes.items():
        with P.Patcher(lm, eager=method == "attribution") as patcher:
            run(patcher)
            profiler = cProfile.Profile()
            profiler.runcall(run, patcher)
        print(f"--- {method}, {lm.name}, {len(items)} pairs ({_load()})")
        pstats.Stats(profiler).sort_stats("tottime").print_stats(top)


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--large-pairs", type=int, default=2, help="pairs for the 24-layer model (0: skip it)")
    p.add_argument("--loop-pairs", type=int, default=8, help="pairs of the 6-layer model's loop (it is slow)")
    p.add_argument("--large-loop-pairs", type=int, default=1, help="pairs of the 24-layer model's loop (384 forwards "
                   "each)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (blocks of layers) of the timing")
    p.add_argument("--large-heads-per-layer", type=int, default=0, help="heads per layer the 24-layer model's exact "
                   "patching (batched and loop) times, scaled to all 16 (0: all; see measure)")
    p.add_argument("--profile", action="store_true", help="then profile attribution and batched exact patching of "
                   "each model measured")
    p.set_defaults(pairs=32, max_length=256)
    args = p.parse_args()

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from precompute.analyses import patching_inputs as I
    from precompute.families.loading import LoadedModel, load

    pairs = spread(all_pairs(args), 400)
    ref = load(args.model, args.device, args.dtype)
    print(f"tfc1 head sweep, {device_label(ref.device)}, {ref.dtype}, max length {args.max_length}, {args.rounds} "
          f"interleaved rounds; {_load()}")
    print("pairs/s by wall time (CPU time of this process in brackets: the machine is shared, the CPU time moves less "
          "with its load)")
    print(f"{'model':<28} {'pairs':>9} {'attribution/s':>18} {'exact/s':>16} {'loop/s':>16} {'attr/loop':>15} "
          f"{'exact/loop':>15} {'max |diff|':>10} {'spearman':>8} {'top-10':>6}")
    large = BertConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                       vocab_size=ref.config.vocab_size, num_labels=1, architectures=["BertForSequenceClassification"])
    torch.manual_seed(0)
    bert_large = LoadedModel(BertForSequenceClassification(large).to(ref.device).eval(), ref.tokenizer,
                             "bert-large-random", ref.device, ref.dtype)
    bert_large.model.set_attn_implementation("eager")
    items, _ = I.experiment_inputs("tfc1", ref, pairs, args.max_length, per_query=2, seed=0)
    measured = []
    for name, lm, n, n_loop, sample in (
            ("minilm-l6 (6 x 12)", ref, args.pairs, args.loop_pairs, 0),
            ("bert-large random (24 x 16)", bert_large, args.large_pairs, args.large_loop_pairs,
             args.large_heads_per_layer)):
        if n < 1:
            continue
        chosen = items[:n]
        t_a, t_b, t_l, diff, attributed, exact = measure(lm, chosen, chosen[: max(1, n_loop)], rounds=args.rounds,
                                                         heads_per_layer=sample, batch_size=args.batch_size,
                                                         max_length=args.max_length, device=lm.device)
        rho, overlap = agreement(attributed, exact)
        rate = lambda t: f"{1 / t[0]:.3g} ({1 / t[1]:.3g})"  # noqa: E731
        sampled = f"; exact patching timed on {sample} heads per layer, scaled" if sample else ""
        ratio = lambda t: f"{t_l[0] / t[0]:.1f}x ({t_l[1] / t[1]:.1f}x)"  # noqa: E731
        print(f"{name:<28} {len(chosen):>4}/{max(1, n_loop):<4} {rate(t_a):>18} {rate(t_b):>16} {rate(t_l):>16} "
              f"{ratio(t_a):>15} {ratio(t_b):>15} {diff:>10.1e} {rho:>8.3f} {overlap:>6}   ({_load()}){sampled}", flush=True)
        measured.append((lm, chosen))
    if args.profile:
        for lm, chosen in measured:
            profile(lm, chosen, batch_size=args.batch_size, max_length=args.max_length)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
