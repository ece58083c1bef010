"""The report's lexical vs semantic matching by layer (the paper's first finding: lexical matching early, semantic
matching later), from ``head_attention_agg``: per layer, the Query->Document mass on exact-match document tokens
(``q_d_exact``) and on the other document tokens (``q_d_other``) and the max signals, averaged over the layer's heads,
for relevant pairs, hard and easy negatives, with the relevant-minus-hard and relevant-minus-easy differences as means
over queries of per-query differences, each with a seeded bootstrap interval over queries."""

from __future__ import annotations

import numpy as np

from precompute.statistics import bootstrap_over_queries

METRICS = ("q_d_exact", "q_d_other", "q2d_max", "d2q_max")
KINDS = ("relevant", "hard", "easy")


def layer_means(con, metric: str) -> tuple[list[int], list[str], np.ndarray]:
    """(layers, qids, [layers, queries, kinds] mean of ``metric`` over the layer's heads and the query's pairs of the
    kind; NaN where the query has none)."""
    rows = con.execute(
        f'SELECT layer, qid, neg_type, sum("{metric}_sum") / sum(n) AS mean FROM head_attention_agg '
        f"WHERE neg_type IN {KINDS} GROUP BY layer, qid, neg_type").fetchnumpy()
    layers = sorted(set(int(v) for v in rows["layer"]))
    qids = sorted(set(rows["qid"]))
    out = np.full((len(layers), len(qids), len(KINDS)), np.nan)
    for layer, qid, kind, mean in zip(rows["layer"], rows["qid"], rows["neg_type"], rows["mean"]):
        out[layers.index(int(layer)), qids.index(qid), KINDS.index(kind)] = mean
    return layers, qids, out


def _interval(per_query: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Mean over the queries where ``per_query`` [layers, queries] is defined, with its bootstrap interval."""
    keep = ~np.isnan(per_query).any(axis=0)
    x = per_query[:, keep]
    if not x.shape[1]:
        nan = np.full(len(x), np.nan)
        return nan, nan, nan, 0
    est, low, high = bootstrap_over_queries(lambda w: (w @ x.T) / w.sum(axis=1, keepdims=True), x.shape[1], seed=seed)
    return est, low, high, x.shape[1]


def render(con, seed: int = 0) -> list[str]:
    """Lines of the section; [] for a run without head_attention_agg."""
    views = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "head_attention_agg" not in views:
        return []
    out = ["", "Lexical vs semantic matching by layer (head_attention_agg; mean over the layer's heads; per kind the mean "
           "over queries of the query's mean; differences: mean over queries with both kinds of the per-query "
           "difference [95% bootstrap interval over queries])"]
    for metric in METRICS:
        layers, qids, means = layer_means(con, metric)
        rel_hard = _interval(means[:, :, 0] - means[:, :, 1], seed)
        rel_easy = _interval(means[:, :, 0] - means[:, :, 2], seed)
        with np.errstate(invalid="ignore"):
            by_kind = [np.nanmean(means[:, :, k], axis=1) for k in range(len(KINDS))]
        head = (f"  {metric:<10} {'layer':>5}  {'relevant':>8}  {'hard':>8}  {'easy':>8}  "
                f"{'relevant - hard (n_q ' + str(rel_hard[3]) + ')':>30}  {'relevant - easy (n_q ' + str(rel_easy[3]) + ')':>30}")
        out += ["", head, "  " + "-" * (len(head) - 2)]
        for i, layer in enumerate(layers):
            cells = "  ".join(f"{by_kind[k][i]:8.4f}" for k in range(len(KINDS)))
            diffs = "  ".join(f"{f'{d[0][i]:+.4f} [{d[1][i]:+.4f},{d[2][i]:+.4f}]':>30}" for d in (rel_hard, rel_easy))
            out.append(f"  {'':<10} {layer:>5}  {cells}  {diffs}")
    return out
