"""Matching-head statistics: which heads summarise relevant passages differently from negatives, query by query.

For every layer, head and summary metric (``metrics.METRICS``) we compare relevant pairs with easy negatives (random
passages: lexical matching alone separates them), relevant pairs with hard negatives (judged non-relevant candidates:
matching alone does not) and hard with easy negatives (``names.CONTRASTS``), written as ``head_contrasts``.

The query is the unit of replication: pairs of one query share its text, its judgments and the model's reading of
it, so a pooled test over pairs counts one query's many pairs as independent evidence and mixes between-query
differences into every contrast. Per query that has both groups we take the difference of the two groups' means
(from ``head_attention_agg``: no scan of head_attention for it), then over those queries: the mean difference
(``effect``), its standardised size d_z (mean / sd of the differences), a two-sided paired t-test
(``statistics.paired_over_queries``: paired t rather than Wilcoxon signed-rank because the signed-rank test's
smallest two-sided p over 10 queries is 0.002, which no head could pass after Holm over hundreds of heads) with
Holm across all layers x heads x metrics of the contrast within a family of metrics (the attention metrics; the
value-weighted shares are a family of their own: ``metrics.holm_family``), and a percentile bootstrap interval over queries
(``statistics.bootstrap_over_queries``, seeded, ``n_resamples`` stored).

The pooled pair-level numbers (group means, Cohen's d with the pooled sd, a Mann-Whitney U test) stay as descriptive
columns, labelled as such: the Mann-Whitney test uses the normal approximation (tie and continuity corrections) so
that one head's p-value does not depend on ties in other heads.

scipy is imported inside the functions so that importing this module stays light. The ranking of candidate
matching heads is SQL over the table (the view ``matching_heads``, :mod:`precompute.store.connect`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from precompute.metrics import METRICS, holm_family
from precompute.names import CONTRASTS
from precompute.statistics import BOOTSTRAP_RESAMPLES, bootstrap_over_queries, holm, paired_over_queries
from precompute.store.connect import CANDIDATE_METRICS, candidates_sql
from precompute.store.schema import HEAD_CONTRASTS

_KINDS = tuple(sorted({g for ab in CONTRASTS.values() for g in ab}))
_CONTRASTED = f"neg_type IN ({', '.join(repr(k) for k in _KINDS)})"  # SQL filter of the pairs any contrast uses
# float64 values of one [heads, pairs] matrix (512 KB): heads are read in blocks of this size. The Mann-Whitney test
# ranks a block through several copies of it, and DuckDB hands the block's rows over as arrays, so the stage's peak
# follows the block: at 2 MB (1 << 18) a run of 1,500 pairs on 32 heads read all heads at once (48,000 values) and
# one of 15,000 pairs 17 heads at a time (255,000), +62 MB more at its peak (bench/memory.py); at 512 KB both read
# about 50,000 values a block. A head larger than this is still read whole.
BLOCK_VALUES = 1 << 16


def contrasts_table(con, *, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> pa.Table:
    """The ``head_contrasts`` table from a connection with the ``pairs``, ``head_attention`` and
    ``head_attention_agg`` views; bootstrap intervals from ``n_resamples`` resamples of queries drawn with ``seed``.

    The pooled columns read one metric of a block of heads at a time (a [heads, pairs] float64 matrix of at most
    ``BLOCK_VALUES``), so memory stays flat however many pairs and heads the run has; the query-level columns read
    one metric's per-query group means [heads, queries, kinds] at a time. A contrast whose groups are not both
    present in the run gives no rows.
    """
    groups = _group_pair_ids(con)  # neg_type -> sorted pair ids
    contrasts = {name: ab for name, ab in CONTRASTS.items() if all(len(groups[g]) for g in ab)}
    if not contrasts:
        return HEAD_CONTRASTS.schema.empty_table()
    pair_ids = np.unique(np.concatenate(list(groups.values())))  # [n_pairs]: the matrix columns
    heads = _heads(con)  # [n_heads, 2]: (layer, head)
    qids = _qids(con)
    columns = {name: (np.searchsorted(pair_ids, groups[a]), np.searchsorted(pair_ids, groups[b])) for name, (a, b) in contrasts.items()}
    parts: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in contrasts}
    per_block = max(1, BLOCK_VALUES // len(pair_ids))
    for metric in METRICS:
        means = _query_means(con, metric, heads, qids)  # [heads, queries, kinds]
        for start in range(0, len(heads), per_block):
            block = heads[start : start + per_block]
            values = _metric_matrix(con, metric, pair_ids, block)  # [heads of the block, n_pairs]
            for name, (cols_a, cols_b) in columns.items():
                a, b = (_KINDS.index(g) for g in contrasts[name])
                query_level = compare_queries(means[start : start + per_block, :, a], means[start : start + per_block, :, b],
                                              n_resamples=n_resamples, seed=seed)
                stats = compare(values[:, cols_a], values[:, cols_b])
                parts[name].append({"layer": block[:, 0], "head": block[:, 1], "metric": np.full(len(block), metric),
                                    **stats, **query_level})
    return pa.concat_tables([_contrast_table(name, rows) for name, rows in parts.items()])


def compare_queries(a: np.ndarray, b: np.ndarray, *, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
                    ) -> dict[str, np.ndarray]:
    """Group a vs group b query by query for many heads: a, b [heads, queries] per-query group means (NaN where the
    query has no pair of the group) -> one array [heads] per query-level statistic.

    Only queries with both groups count. ``effect`` is the mean over them of the per-query difference, with a
    percentile bootstrap interval over those queries; ``effect_dz``, ``t`` and ``p`` come from the paired t-test
    (NaN: stored NULL, below 2 queries or when every query has the same difference).
    """
    both = ~np.isnan(a).all(axis=0) & ~np.isnan(b).all(axis=0)  # [queries]: queries with both groups
    diff = (a - b)[:, both]  # [heads, n_queries]; NaN only where the metric itself is undefined
    n = diff.shape[1]
    test = paired_over_queries(diff)
    if n:
        _, low, high = bootstrap_over_queries(lambda w: (w @ diff.T) / w.sum(axis=1, keepdims=True), n,
                                              n_resamples=n_resamples, seed=seed)
    else:
        low = high = np.full(len(diff), np.nan)
    return {"n_queries": np.full(len(diff), n, dtype=np.int32), "effect": test["mean"], "effect_low": low,
            "effect_high": high, "effect_dz": test["d_z"], "t": test["t"], "p": test["p"],
            "n_resamples": np.full(len(diff), n_resamples, dtype=np.int32)}


def compare(a: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """Pooled pair-level description of group a vs group b for many heads at once: a [heads, n_a], b [heads, n_b]
    -> one array [heads] per statistic (every pair counted as if independent: descriptive only).

    cohen_d is NaN (stored NULL) when both groups are constant, where the pooled sd is 0.
    """
    from scipy.stats import mannwhitneyu

    n_a, n_b = a.shape[1], b.shape[1]
    mean_a, mean_b = a.mean(axis=1), b.mean(axis=1)  # [heads]
    squares = ((a - mean_a[:, None]) ** 2).sum(axis=1) + ((b - mean_b[:, None]) ** 2).sum(axis=1)  # [heads]
    pooled_sd = np.sqrt(squares / max(n_a + n_b - 2, 1))  # [heads]; two singletons: squares = 0, constant below
    constant = (np.ptp(a, axis=1) == 0) & (np.ptp(b, axis=1) == 0)  # [heads]
    with np.errstate(divide="ignore", invalid="ignore"):
        cohen_d = np.where(constant, np.nan, (mean_a - mean_b) / pooled_sd)
    u, p = mannwhitneyu(a, b, axis=1, alternative="two-sided", method="asymptotic")
    return {
        "n_a": np.full(len(a), n_a, dtype=np.int32),
        "n_b": np.full(len(a), n_b, dtype=np.int32),
        "mean_a": mean_a,
        "mean_b": mean_b,
        "diff": mean_a - mean_b,
        "cohen_d": cohen_d,
        "u": np.asarray(u, dtype=np.float64),
        "pooled_p": np.asarray(p, dtype=np.float64),
    }


def candidate_heads(con, contrast: str = "relevant_vs_easy", metric: str | None = None, top: int = 20):
    """Heads ranked as candidate matching heads, as a pandas DataFrame (needs the ``head_contrasts`` view).

    Rule: a (head, metric) row counts when its query-level test rests on at least MIN_QUERIES queries, its
    Holm-corrected p < ALPHA and its effect > 0, i.e. the head gives *more* of the metric to relevant passages
    query after query. Each head is represented by its row with the largest effect_dz among the metrics considered
    (``metric``, or all of CANDIDATE_METRICS when None: Q->D and D->Q masses and the four matching signals); heads
    rank by that effect_dz, largest first. ``n_significant`` counts the head's qualifying metrics.
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"unknown contrast {contrast!r}: expected one of {', '.join(CONTRASTS)}")
    if metric is not None and metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}: expected a head_attention metric such as q_d or q2d_max")
    sql = candidates_sql(CANDIDATE_METRICS if metric is None else (metric,))
    return con.execute(f"SELECT * FROM ({sql}) WHERE contrast = ? ORDER BY rank LIMIT ?", [contrast, top]).df()


def _contrast_table(name: str, rows: list[dict[str, np.ndarray]]) -> pa.Table:
    """One contrast's rows (one dict per metric and block of heads) as a head_contrasts table, with p_holm across
    the rows of each Holm family (:func:`precompute.metrics.holm_family`: the attention metrics, the value-weighted
    shares)."""
    columns = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
    columns["contrast"] = np.full(len(columns["p"]), name)
    family = np.array([holm_family(m) for m in columns["metric"]])
    columns["p_holm"] = np.full(len(columns["p"]), np.nan)
    for members in np.unique(family):  # NaN (untested) p stays NULL and is not counted
        columns["p_holm"][family == members] = holm(columns["p"][family == members])
    arrays = {
        c.name: pa.array(columns[c.name], type=c.type, from_pandas=c.nullable)  # from_pandas: NaN -> NULL
        for c in HEAD_CONTRASTS.columns
    }
    return pa.table(arrays, schema=HEAD_CONTRASTS.schema)


def _group_pair_ids(con) -> dict[str, np.ndarray]:
    """neg_type -> sorted pair ids of the pairs of that kind, for every kind a contrast uses (maybe empty)."""
    rows = con.execute(f"SELECT neg_type, pair_id FROM pairs WHERE {_CONTRASTED} ORDER BY pair_id").fetchnumpy()
    neg_type, pair_id = np.asarray(rows["neg_type"]), np.asarray(rows["pair_id"])
    return {kind: pair_id[neg_type == kind] for kind in _KINDS}


def _qids(con) -> np.ndarray:
    """The run's query ids, sorted: the order queries are resampled in."""
    return np.array(sorted(r[0] for r in con.execute("SELECT DISTINCT qid FROM pairs").fetchall()), dtype=object)


def _query_means(con, metric: str, heads: np.ndarray, qids: np.ndarray) -> np.ndarray:
    """[heads, queries, kinds] mean of ``metric`` per head, query (``qids`` order) and kind (``_KINDS`` order) from
    head_attention_agg; NaN where the query has no pair of the kind (or the metric is undefined). Queries and kinds
    arrive as their indices (joined with the two orders, registered as small tables): a row per head, query and kind
    as Python strings held ~10 MB more at 1,000 queries."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    con.register("_contrast_queries", pa.table({"qid": pa.array(qids, pa.string()),
                                                "q": pa.array(np.arange(len(qids)), pa.int32())}))
    con.register("_contrast_kinds", pa.table({"neg_type": pa.array(_KINDS, pa.string()),
                                              "k": pa.array(np.arange(len(_KINDS)), pa.int8())}))
    try:
        rows = con.execute(
            f'SELECT layer, head, q, k, sum("{metric}_sum") / sum(n) AS mean FROM head_attention_agg '
            "JOIN _contrast_queries USING (qid) JOIN _contrast_kinds USING (neg_type) GROUP BY layer, head, q, k"
        ).fetchnumpy()
    finally:
        con.unregister("_contrast_queries")
        con.unregister("_contrast_kinds")
    out = np.full((len(heads), len(qids), len(_KINDS)), np.nan)
    row_of = np.full((heads[:, 0].max() + 1, heads[:, 1].max() + 1), -1)
    row_of[heads[:, 0], heads[:, 1]] = np.arange(len(heads))
    layer, head = np.asarray(rows["layer"], dtype=np.int64), np.asarray(rows["head"], dtype=np.int64)
    out[row_of[layer, head], np.asarray(rows["q"]), np.asarray(rows["k"])] = np.asarray(rows["mean"], dtype=np.float64)
    return out


def _heads(con) -> np.ndarray:
    """[n_heads, 2] int array of the (layer, head) present in head_attention, sorted."""
    rows = con.execute("SELECT DISTINCT layer, head FROM head_attention ORDER BY layer, head").fetchnumpy()
    return np.stack([np.asarray(rows["layer"], dtype=np.int64), np.asarray(rows["head"], dtype=np.int64)], axis=1)


def _metric_matrix(con, metric: str, pair_ids: np.ndarray, heads: np.ndarray) -> np.ndarray:
    """One head_attention metric of ``heads`` as a dense [n_heads, n_pairs] float64 matrix (rows: heads, columns:
    pair_ids). ``heads`` is a run of consecutive (layer, head) cells: a range filter that lets DuckDB skip the row
    groups of other layers (and heads) by their statistics."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}")
    (l0, h0), (l1, h1) = heads[0].tolist(), heads[-1].tolist()
    cells = f"layer = {l0} AND head BETWEEN {h0} AND {h1}" if l0 == l1 else \
        f"layer BETWEEN {l0} AND {l1} AND layer * 256 + head BETWEEN {l0 * 256 + h0} AND {l1 * 256 + h1}"
    rows = con.execute(
        f'SELECT layer, head, pair_id, "{metric}" AS value FROM head_attention '
        f"WHERE {cells} AND pair_id IN (SELECT pair_id FROM pairs WHERE {_CONTRASTED})"
    ).fetchnumpy()
    if len(rows["value"]) != len(heads) * len(pair_ids):
        raise ValueError(
            f"head_attention has {len(rows['value'])} rows of the {len(pair_ids)} contrasted pairs, expected one per "
            f"pair x {len(heads)} heads: the store is incomplete"
        )
    row_of = np.full((heads[:, 0].max() + 1, heads[:, 1].max() + 1), -1)
    row_of[heads[:, 0], heads[:, 1]] = np.arange(len(heads))
    values = np.empty((len(heads), len(pair_ids)))  # [n_heads, n_pairs]
    layer, head = np.asarray(rows["layer"], dtype=np.int64), np.asarray(rows["head"], dtype=np.int64)
    values[row_of[layer, head], np.searchsorted(pair_ids, np.asarray(rows["pair_id"]))] = rows["value"]
    return values
