"""Cost of ablations relative to plain scoring, on the reference model and real DL20 pairs.

    python bench/ablation.py [--pairs 256] [--sweep-pairs 64] [--batch-size 32] [--device cpu] [--repeats 3]

Measures, on the same pairs, batches (length-sorted), device and thread count:

* plain scoring: ``precompute.analyses.summaries.plain_scores`` with the stock SDPA attention, nothing else;
* one ablation condition (``q_d@all/zero`` by default, ``--condition``) through the ablation pass
  (``precompute.analyses.ablations.score_conditions``: tokenisation, batching, intervention tensors, the attention function),
  with the sdpa kernel (the default) and, for reference, its mask mode and the eager kernel;
* their ratio (target: one condition <= 1.2x one plain scoring pass);
* the full default sweep (baseline + 25 directions + the named groups) measured in full on ``--sweep-pairs`` pairs,
  and that time scaled linearly to the pair counts of DL20 runs (stated as an extrapolation).

Timings are the best of ``--repeats`` runs after a warm-up (the sweep: one run).
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.common import all_pairs, best_of, device_label, parser, spread, synchronizer  # noqa: E402


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--sweep-pairs", type=int, default=64, help="pairs the full sweep is measured on (0: skip)")
    p.add_argument("--condition", default="q_d@all/zero")
    p.add_argument("--no-extra", action="store_true", help="skip the mask-mode and eager-kernel reference timings")
    args = p.parse_args()

    from precompute.analyses import ablations
    from precompute.conditions import AblationRequest
    from precompute.families.loading import load
    from precompute.analyses.summaries import plain_scores

    pairs = all_pairs(args)
    sample = spread(pairs, args.pairs)
    step = max(1, len(pairs) // args.pairs)
    lm = load(args.model, args.device, args.dtype)
    n_layers, n_heads = lm.shape
    everything = {c.condition_id: c for c in AblationRequest(modes=("zero", "mask")).conditions(n_layers, n_heads)}
    if args.condition not in everything:
        p.error(f"--condition {args.condition!r}: one of {', '.join(everything)}")
    cond = everything[args.condition]
    masked = everything.get(args.condition.replace("/zero", "/mask"))
    sync = synchronizer(lm.device)

    def best(fn, repeats=args.repeats) -> float:
        return best_of(fn, repeats, lm.device)

    kw = dict(batch_size=args.batch_size, max_length=args.max_length)
    runs = {
        "plain scoring (sdpa)": lambda: plain_scores(lm, sample, **kw),
        f"ablation {cond.condition_id} (sdpa kernel)": lambda: ablations.score_conditions(lm, sample, [cond], **kw),
    }
    if not args.no_extra:
        if masked is not None and masked is not cond:
            runs[f"ablation {masked.condition_id} (sdpa kernel)"] = lambda: ablations.score_conditions(lm, sample, [masked], **kw)
        runs[f"ablation {cond.condition_id} (eager kernel)"] = lambda: ablations.score_conditions(lm, sample, [cond], kernel="eager", **kw)
        runs["plain scoring (eager attention)"] = lambda: plain_scores(lm, sample, implementation="eager", **kw)
    times = {name: best(fn) for name, fn in runs.items()}

    device = device_label(lm.device)
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"model {Path(args.model).name}, {len(sample)} DL20 pairs (every {step}th of {len(pairs):,}), batch {args.batch_size}, "
          f"max_length {args.max_length}, {device}, {lm.dtype}, best of {args.repeats} after a warm-up")
    t_plain = times["plain scoring (sdpa)"]
    for name, t in times.items():
        print(f"  {name:<42}: {len(sample) / t:8.1f} pairs/s  ({t:6.2f} s, {t / t_plain:.2f}x plain sdpa)")
    ratio = times[f"ablation {cond.condition_id} (sdpa kernel)"] / t_plain
    print(f"one condition / one plain scoring pass: {ratio:.2f}x  (target <= 1.2x: {'met' if ratio <= 1.2 else 'NOT met'})")

    if args.sweep_pairs:
        sweep = [c for c in AblationRequest().conditions(n_layers, n_heads)]
        few = spread(pairs, args.sweep_pairs)
        plain_few = best(lambda: plain_scores(lm, few, **kw), repeats=1)
        sync()
        t0 = time.perf_counter()
        for c in sweep:  # one condition per forward, as the job does by default
            ablations.score_conditions(lm, few, [c], **kw)
        sync()
        t_sweep = time.perf_counter() - t0
        n = len(sweep)
        print(f"full default sweep, measured in full: {n} conditions (none + 25 directions + {n - 26} groups) x {len(few)} pairs "
              f"= {t_sweep:.1f} s ({n * len(few) / t_sweep:.1f} scorings/s; {t_sweep / plain_few:.1f}x one plain pass over "
              f"those pairs, i.e. {t_sweep / plain_few / n:.2f}x per condition)")
        per_pair = t_sweep / len(few)
        for label, count in (("DL20 --max-queries 20", 2343), ("DL20 all 54 queries", len(pairs))):
            print(f"  extrapolated linearly to {label} ({count:,} pairs): {per_pair * count / 60:.0f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
