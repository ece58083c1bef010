"""The report's query-level Table 1 (precompute.analyses.ranking_effects): per condition the mean score change, the
pairwise accuracy overall, against hard and against easy negatives, and nDCG with ties in expectation, each with a
bootstrap interval over queries; then the direct comparisons of two conditions (``Q->D vs D->Q`` and ``--contrasts``)."""

from __future__ import annotations

import re

from precompute.statistics import BOOTSTRAP_RESAMPLES, CI_LEVEL, fmt_p
from precompute.statistics import stars as mark

SHOWN_KINDS = ("direction", "group")  # the Table 1 conditions; sweeps, heads and components keep their grids


def _ci(value: tuple[float, float, float], signed: bool = True) -> str:
    e, lo, hi = value
    if e != e:  # NaN: undefined for every query
        return f"{'n/a':>24}"
    sign = "+" if signed else ""
    return f"{e:{sign}8.4f} [{lo:{sign}.3f},{hi:{sign}.3f}]".rjust(24)


def _triple(row, name: str) -> tuple[float, float, float]:
    return row[name], row[f"{name}_low"], row[f"{name}_high"]


def render(run, rows: list[dict], measure: str, scope: str, contrasts: list[tuple[str, str]], seed: int,
           label) -> list[str]:
    """Lines of the query-level Table 1 for ``rows`` (ablation_summary rows of the scope and measure): the cells of
    ``run``'s (a :class:`matching_atlas.Run`) ranking_effects and condition_contrasts."""
    cutoff = re.fullmatch(r"(?i)ndcg@(\d+)", measure)
    effects = run.ranking_effects(measure, scope, seed=seed).set_index("condition_id")
    summary = {cid: r for cid, r in effects.iterrows()}
    n = int(effects.loc["none", "n_queries"])
    shown = sorted((r for r in rows if r["kind"] in SHOWN_KINDS), key=lambda r: (r["kind"], r["mode"], r["condition_id"]))
    base = summary["none"]
    # A run built from a run file lacks the judged passages below its depth: the reader leaves its nDCG~ undefined.
    complete = base["ndcg_ties"] == base["ndcg_ties"]  # NaN: the reader leaves it undefined
    ndcg = (lambda s: f"{s['ndcg_ties']:6.4f}") if complete else (lambda s: f"{'n/a':>6}")
    out = ["", f"Table 1, query level ({n} queries; mean over queries [{CI_LEVEL:.0%} percentile bootstrap interval over "
           f"queries, {BOOTSTRAP_RESAMPLES} resamples, seed {seed}])",
           "  d score: mean change of the score; PA: pairwise accuracy (relevant above non-relevant, ties 1/2) and its "
           "change, overall, vs hard and vs easy negatives; nDCG~: nDCG@"
           f"{cutoff.group(1) if cutoff else 10} with ties broken at random, in expectation (exact); ir_measures, like "
           "trec_eval, breaks ties by docid",
           f"  baseline: PA {base['pairwise']:.4f}, PA hard {base['pairwise_hard']:.4f}, PA easy "
           f"{base['pairwise_easy']:.4f}, nDCG~ {ndcg(base).strip()}"
           + ("" if complete else " (pairs from a run file: the ideal ranking would lack judged passages below its "
              "depth, so nDCG~ is not shown)")]
    width = max([len("condition"), *(len(label(r)) for r in shown)])
    head = (f"{'condition':<{width}}  {'mode':<4}  {'d score':>24}  {'PA':>6}  {'d PA':>24}  {'d PA hard':>24}  "
            f"{'d PA easy':>24}  {'nDCG~':>6}")
    out += [head, "-" * len(head)]
    for r in shown:
        s = summary.get(r["condition_id"])
        if s is None:
            continue
        out.append(f"{label(r):<{width}}  {r['mode']:<4}  {_ci(_triple(s, 'score_change'))}  {s['pairwise']:6.4f}  "
                   f"{_ci(_triple(s, 'delta_pairwise'))}  {_ci(_triple(s, 'delta_pairwise_hard'))}  "
                   f"{_ci(_triple(s, 'delta_pairwise_easy'))}  "
                   f"{ndcg(s)}")
    frame = run.condition_contrasts(contrasts, measure, scope, seed=seed)
    compared = frame.astype(object).where(frame.notna(), None).to_dict("records")
    out += ["", f"Direct comparisons (a - b per query; paired two-sided t-test of {measure} over queries, Holm across "
            f"these {sum(not c['missing'] for c in compared)} rows; intervals: bootstrap over queries)"]
    head = (f"{'comparison':<22}  {'n_q':>4}  {'d ' + measure:>10}  {'sig':<3}  {'p':>7}  {'p_holm':>7}  {'d score':>24}  "
            f"{'d PA':>24}  {'d PA hard':>24}  {'d PA easy':>24}")
    out += [head, "-" * len(head)]
    for c in compared:
        if c['missing']:
            out.append(f"{c['title']:<22}  (no condition {c['missing']!r} in this run)")
            continue
        out.append(f"{c['title']:<22}  {c['n_queries']:>4}  {c['measure_diff']:>+10.4f}  "
                   f"{mark(c['p_holm'], n_queries=c['n_queries']):<3}  {fmt_p(c['p']):>7}  {fmt_p(c['p_holm']):>7}  "
                   f"{_ci(_triple(c, 'score_change'))}  {_ci(_triple(c, 'pairwise'))}  "
                   f"{_ci(_triple(c, 'pairwise_hard'))}  {_ci(_triple(c, 'pairwise_easy'))}")
    return out
