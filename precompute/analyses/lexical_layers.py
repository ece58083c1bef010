"""Lexical vs semantic matching by layer (the paper's first finding: lexical matching early, semantic matching later),
from ``head_attention_agg``: per layer, the Query->Document mass on exact-match document tokens (``q_d_exact``) and on
the other document tokens (``q_d_other``) and the max signals, averaged over the layer's heads, for relevant pairs,
hard and easy negatives, with the relevant-minus-hard and relevant-minus-easy differences as means over queries of
per-query differences, each with a seeded bootstrap interval over queries. Read by :meth:`matching_atlas.Run.lexical_by_layer`."""

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


def interval(per_query: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Mean over the queries where ``per_query`` [layers, queries] is defined, with its bootstrap interval."""
    keep = ~np.isnan(per_query).any(axis=0)
    x = per_query[:, keep]
    if not x.shape[1]:
        nan = np.full(len(x), np.nan)
        return nan, nan, nan, 0
    est, low, high = bootstrap_over_queries(lambda w: (w @ x.T) / w.sum(axis=1, keepdims=True), x.shape[1], seed=seed)
    return est, low, high, x.shape[1]


def by_layer(con, seed: int = 0) -> list[dict]:
    """One record per metric of :data:`METRICS` x layer: the mean over queries of the query's mean for relevant pairs,
    hard and easy negatives (each with ``_low`` / ``_high``, its bootstrap interval over the ``n_queries_<kind>``
    queries that have such pairs), and the per-query differences relevant - hard and relevant - easy averaged over the
    queries that have both kinds (``n_queries_relevant_minus_hard``, ``..._easy``), with their bootstrap intervals."""
    out = []
    for metric in METRICS:
        layers, _, means = layer_means(con, metric)
        rel_hard = interval(means[:, :, 0] - means[:, :, 1], seed)
        rel_easy = interval(means[:, :, 0] - means[:, :, 2], seed)
        with np.errstate(invalid="ignore"):
            by_kind = [np.nanmean(means[:, :, k], axis=1) for k in range(len(KINDS))]
        spread = [interval(means[:, :, k], seed) for k in range(len(KINDS))]
        for i, layer in enumerate(layers):
            row = {"metric": metric, "layer": layer, **{k: float(by_kind[j][i]) for j, k in enumerate(KINDS)}}
            for j, k in enumerate(KINDS):
                row.update({f"{k}_low": float(spread[j][1][i]), f"{k}_high": float(spread[j][2][i]),
                            f"n_queries_{k}": int(spread[j][3])})
            for name, d in (("hard", rel_hard), ("easy", rel_easy)):
                row.update({f"relevant_minus_{name}": float(d[0][i]), f"relevant_minus_{name}_low": float(d[1][i]),
                            f"relevant_minus_{name}_high": float(d[2][i]),
                            f"n_queries_relevant_minus_{name}": int(d[3])})
            out.append(row)
    return out
