"""What each ablation condition does to the ranking, query by query: the columns of Table 1 beside nDCG's paired t-test.

Per query and condition, from the stored scores (``ablation_scores``, ``pairs``) of the scope's pairs:

* ``score_change``: mean over the query's pairs of (score under the condition - unablated score);
* ``pairwise``: pairwise accuracy, the share of the query's (relevant, non-relevant) pairs the scores order correctly
  (a tie counts 1/2: the expectation over random tie-breaking); ``pairwise_hard`` and ``pairwise_easy`` the same with
  only hard or only easy negatives as the non-relevant side (how the paper separates semantic from lexical matching;
  NaN for a query without such negatives);
* ``ndcg_ties``: nDCG@k with tied scores counted as the expectation over every order of the tie, exactly: a tie
  occupying ranks s..e gives each of its passages the mean of the discounts of those ranks (so its gain is the tie's
  mean gain times their summed discount). Gains are grades (trec_eval's ``ndcg_cut``), the ideal ranking the query's
  judged grades among the scope's pairs. ``ir_measures`` (pytrec_eval, as trec_eval) breaks ties by docid instead,
  so a condition that makes scores constant (``all``) gets a docid-order nDCG there and its expectation here.

Every statistic is then a mean over queries with a percentile bootstrap interval over queries
(:func:`precompute.statistics.bootstrap_over_queries`, seeded), as a value under the condition and as its change from
the baseline (per query, then averaged). A direct comparison of two conditions (``Q->D vs D->Q`` and those named with
``--contrasts a:b,...``) takes per-query differences of the stored measure with a paired t-test (Holm across the
comparisons shown) and of the statistics above with bootstrap intervals. Computed from stored tables by the report
(and any reader), so old stores get them too; nothing is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from precompute.statistics import BOOTSTRAP_RESAMPLES, bootstrap_over_queries, holm

STATISTICS: tuple[str, ...] = ("score_change", "pairwise", "pairwise_hard", "pairwise_easy", "ndcg_ties")
CONTRAST_TITLES = {("q_d", "d_q"): "Q->D vs D->Q"}  # by the directions each side removes (a group of one counts)


@dataclass
class RankingEffects:
    """Per-query statistics of every condition: ``values[cid]`` [n_queries, len(STATISTICS)] (NaN where undefined)."""

    qids: list[str]
    values: dict[str, np.ndarray]


def tie_expected_ndcg(scores: np.ndarray, grades: np.ndarray, k: int) -> float:
    """nDCG@k of one query with ties broken at random, in expectation (exact; module docstring). 0 when no pair is
    relevant (trec_eval's convention)."""
    gains = np.maximum(np.asarray(grades, dtype=np.float64), 0.0)
    discount = 1.0 / np.log2(np.arange(len(gains)) + 2.0)
    discount[k:] = 0.0
    ideal = float(np.sort(gains)[::-1] @ discount)
    if ideal == 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    s, g = np.asarray(scores)[order], gains[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    ends = np.r_[starts[1:], len(s)]
    dcg = sum(g[a:b].mean() * discount[a:b].sum() for a, b in zip(starts, ends))
    return float(dcg / ideal)


def pairwise_accuracy(scores: np.ndarray, relevant: np.ndarray, negative: np.ndarray) -> float:
    """Share of (relevant, negative) pairs with the relevant one scored higher, ties 1/2; NaN without such pairs."""
    r, n = np.asarray(scores)[relevant], np.sort(np.asarray(scores)[negative])
    if not len(r) or not len(n):
        return math.nan
    below, up_to = np.searchsorted(n, r, "left"), np.searchsorted(n, r, "right")
    return float((below + 0.5 * (up_to - below)).sum() / (len(r) * len(n)))


def per_query(con, scope: str, k: int = 10) -> RankingEffects:
    """Every condition's per-query statistics for ``scope`` from a connection with ``pairs`` and ``ablation_scores``."""
    from precompute.analyses.significance import scope_mask

    p = con.execute("SELECT pair_id, qid, grade, neg_type, coalesce(CAST(run_rank AS DOUBLE), 'NaN'::DOUBLE) AS run_rank "
                    "FROM pairs ORDER BY pair_id").fetchnumpy()
    grade = np.asarray(p["grade"], dtype=np.int64)
    keep = scope_mask(scope, grade, np.asarray(p["run_rank"], dtype=np.float64))
    pair_id = np.asarray(p["pair_id"])[keep]
    qid = np.asarray(p["qid"], dtype=object)[keep]
    neg_type = np.asarray(p["neg_type"], dtype=object)[keep]
    grade = grade[keep]
    qids = sorted(set(qid))
    members = [np.flatnonzero(qid == q) for q in qids]
    relevant = grade >= 1
    kinds = {"pairwise": ~relevant, "pairwise_hard": neg_type == "hard", "pairwise_easy": neg_type == "easy"}
    s = con.execute("SELECT condition_id, pair_id, score FROM ablation_scores ORDER BY condition_id, pair_id").fetchnumpy()
    cids = np.asarray(s["condition_id"], dtype=object)
    bounds = np.flatnonzero(np.r_[True, cids[1:] != cids[:-1], True])
    position = np.full(int(max(pair_id.max(), np.asarray(s["pair_id"]).max())) + 1, -1)
    position[pair_id] = np.arange(len(pair_id))
    scores = {}
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        at = position[np.asarray(s["pair_id"][lo:hi])]
        aligned = np.full(len(pair_id), np.nan)
        aligned[at[at >= 0]] = np.asarray(s["score"][lo:hi], dtype=np.float64)[at >= 0]
        scores[cids[lo]] = aligned
    base = scores.get("none")
    if base is None:
        raise ValueError("ablation_scores has no baseline ('none') scores")
    values = {}
    for cid, sc in scores.items():
        out = np.full((len(qids), len(STATISTICS)), np.nan)
        for i, m in enumerate(members):
            x, rel = sc[m], relevant[m]
            out[i, 0] = float(np.mean(x - base[m]))
            for j, name in enumerate(STATISTICS[1:4], start=1):
                out[i, j] = pairwise_accuracy(x, rel, kinds[name][m])
            out[i, 4] = tie_expected_ndcg(x, grade[m], k)
        values[cid] = out
    return RankingEffects(qids, values)


def _weighted_means(x: np.ndarray):
    """statistic(w) for bootstrap_over_queries: the weighted mean over queries of each column of ``x`` [queries, c],
    leaving out NaN (a query without easy negatives has no pairwise_easy)."""
    defined = ~np.isnan(x)
    filled = np.where(defined, x, 0.0)

    def statistic(w):
        with np.errstate(invalid="ignore", divide="ignore"):
            return (w @ filled) / (w @ defined)

    return statistic


def summarise(effects: RankingEffects, *, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict[str, dict]:
    """condition_id -> {statistic: (mean, low, high) under the condition, 'delta_' + statistic: the same of its
    per-query change from the baseline, 'n_queries'}. One bootstrap over queries for every column at once."""
    base = effects.values["none"]
    cids = sorted(effects.values)
    stacked = np.concatenate([np.concatenate([effects.values[c], effects.values[c] - base], axis=1) for c in cids], axis=1)
    est, low, high = bootstrap_over_queries(_weighted_means(stacked), len(effects.qids), n_resamples=n_resamples, seed=seed)
    width = 2 * len(STATISTICS)
    out = {}
    for i, cid in enumerate(cids):
        cols = slice(i * width, (i + 1) * width)
        names = [*STATISTICS, *(f"delta_{s}" for s in STATISTICS)]
        out[cid] = {n: (e, lo, hi) for n, e, lo, hi in zip(names, est[cols], low[cols], high[cols])}
        out[cid]["n_queries"] = len(effects.qids)
    return out


def resolve(name: str, conditions: Sequence[dict]) -> list[dict]:
    """The conditions a contrast side names: a condition id, or a condition name over all layers (one per mode)."""
    exact = [c for c in conditions if c["condition_id"] == name]
    return exact or [c for c in conditions if c["condition"] == name and c["layers"] == "all"]


def compare_conditions(pairs: Sequence[tuple[str, str]], conditions: Sequence[dict], measure_values: dict[str, dict],
                       effects: RankingEffects, *, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[dict]:
    """One row per (a, b) contrast (per mode when a name covers both): the per-query difference a - b of the stored
    measure (``measure_values[cid][qid]``) with a paired t-test, Holm across the rows, and of the ranking statistics
    with bootstrap intervals. A side that names no condition of the run gives a row with ``missing`` set, unless
    another row already carries that contrast's title (``Q->D vs D->Q`` from user groups removing the same
    directions)."""
    from precompute.analyses.significance import paired_ttest

    rows = []
    for a_name, b_name in pairs:
        a_all, b_all = resolve(a_name, conditions), resolve(b_name, conditions)
        title = f"{a_name} vs {b_name}"
        if not a_all or not b_all:
            rows.append({"title": title, "missing": a_name if not a_all else b_name,
                         "titled": CONTRAST_TITLES.get((a_name, b_name))})  # the title it would carry
            continue
        for a in a_all:
            b = next((c for c in b_all if c["mode"] == a["mode"]), b_all[0])
            title = CONTRAST_TITLES.get((a.get("directions"), b.get("directions")), title)
            va, vb = measure_values[a["condition_id"]], measure_values[b["condition_id"]]
            qids = sorted(set(va) & set(vb))
            x, y = np.array([va[q] for q in qids]), np.array([vb[q] for q in qids])
            t, p = paired_ttest(x, y)
            diff = effects.values[a["condition_id"]] - effects.values[b["condition_id"]]
            est, low, high = bootstrap_over_queries(_weighted_means(diff), len(effects.qids), n_resamples=n_resamples,
                                                    seed=seed)
            rows.append({"title": title if len(a_all) == 1 else f"{title} /{a['mode']}", "a": a["condition_id"],
                         "b": b["condition_id"], "n_queries": len(qids), "measure_diff": float((x - y).mean()) if len(qids) else math.nan,
                         "t": t, "p": p, **{s: (e, lo, hi) for s, e, lo, hi in zip(STATISTICS, est, low, high)}})
    titled = {r["title"] for r in rows if "missing" not in r}
    rows = [r for r in rows if "missing" not in r or r["titled"] not in titled]
    for r in rows:
        r.pop("titled", None)
    tested = [r for r in rows if "missing" not in r]
    for r, adjusted in zip(tested, holm([r["p"] for r in tested])):
        r["p_holm"] = None if math.isnan(adjusted) else float(adjusted)
    return rows
