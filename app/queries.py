"""The SQL behind every page, as named functions returning a DataFrame (one pair's rows: ``app.pair_queries``;
ablations: ``app.ablation_queries``; activation patching: ``app.patching_queries``).

Each function takes a DuckDB connection (``app.connections.open_run``: the run's tables and views
by name) and, where it applies, the :class:`~app.slice.Slice`. Pages never hold SQL: they call these
functions through ``app.data.query`` (which caches the result per run). The bench (``bench/app.py``)
times these same functions on a 10^8-row store. Text reaches SQL only through ``app.sqltext``.

Speed rules: the head-level views read ``head_attention_agg`` (sums per layer x head x query x
negative type x grade: ``mean = sum(m_sum) / sum(n)``) and never scan ``head_attention``; a
single head's distributions read ``head_attention`` filtered by literal ``layer = L AND head = H``
so that Parquet row-group statistics prune everything else (the table is sorted by layer, head,
pair_id).
"""

from __future__ import annotations

import pandas as pd

from app import sqltext as sq
from app.slice import Slice
from precompute.names import CONTRASTS, DIRECTIONS, SEGMENTS, split_direction

# -- Run shape and slice options (sidebar) ----------------------------------------------------------
def model_shape(con) -> pd.DataFrame:
    """One row: layers, heads (counted from head_attention_agg)."""
    return sq.frame(con, "SELECT CAST(max(layer) + 1 AS INTEGER) AS layers, CAST(max(head) + 1 AS INTEGER) AS heads "
                    "FROM head_attention_agg")


def slice_options(con) -> pd.DataFrame:
    """The (neg_type, grade) combinations present in the run, with their pair counts."""
    sql = "SELECT neg_type, grade, count(*) AS n FROM pairs GROUP BY ALL ORDER BY neg_type, grade"
    return sq.ints(sq.frame(con, sql), "grade", "n")


def query_list(con) -> pd.DataFrame:
    """Every query of the run: qid, text, number of pairs."""
    sql = "SELECT qid, any_value(query) AS query, count(*) AS pairs FROM pairs GROUP BY qid ORDER BY qid"
    return sq.ints(sq.frame(con, sql), "pairs")


# -- Overview ---------------------------------------------------------------------------------------
def pair_counts(con, sl: Slice) -> pd.DataFrame:
    """Pairs per negative type and grade in the slice: pairs, queries, mean score."""
    sql = f"""
        SELECT neg_type, grade, count(*) AS pairs, count(DISTINCT qid) AS queries, avg(score) AS mean_score,
               sum(CASE WHEN truncated THEN 1 ELSE 0 END) AS truncated
        FROM pairs WHERE {sq.where(sl, layer_head=False)}
        GROUP BY neg_type, grade ORDER BY neg_type, grade
    """
    return sq.ints(sq.frame(con, sql), "grade", "pairs", "queries", "truncated")


def ndcg_per_query(con, sl: Slice, k: int = 10) -> pd.DataFrame:
    """nDCG@k per query of the model's ranking of the slice's pairs (linear gains = grades, as trec_eval).

    Easy negatives and grade-0 pairs have gain 0; the ideal ranking is over the same pairs. Ties in
    score are broken by docid, descending (trec_eval's order). Top-k lists per query come from
    ``max_by(..., k)``, so no query's pairs are fully sorted.
    """
    k = int(k)
    sql = f"""
        WITH t AS (
            SELECT qid, max_by(greatest(grade, 0), (score, docid), {k}) AS top, max(greatest(grade, 0), {k}) AS best
            FROM pairs WHERE {sq.where(sl, layer_head=False)} GROUP BY qid
        ), d AS (
            SELECT qid, list_sum(list_transform(top, lambda g, i: g / log2(i + 1))) AS dcg,
                   list_sum(list_transform(best, lambda g, i: g / log2(i + 1))) AS idcg
            FROM t
        )
        SELECT qid, coalesce(dcg / nullif(idcg, 0), 0) AS ndcg, CAST(dcg AS DOUBLE) AS dcg, CAST(idcg AS DOUBLE) AS idcg
        FROM d ORDER BY qid
    """
    return sq.frame(con, sql)


def score_histogram(con, sl: Slice, bins: int = 40) -> pd.DataFrame:
    """Histogram of the model's scores per negative type in the slice."""
    src = f"SELECT neg_type, score FROM pairs WHERE {sq.where(sl, layer_head=False)}"
    return sq.binned(con, src, "score", "neg_type", bins)


def score_summary(con, sl: Slice) -> pd.DataFrame:
    """Score quantiles per negative type in the slice."""
    sql = f"""
        SELECT neg_type, count(*) AS pairs, avg(score) AS mean, quantile_cont(score, 0.25) AS q1,
               median(score) AS median, quantile_cont(score, 0.75) AS q3, min(score) AS min, max(score) AS max
        FROM pairs WHERE {sq.where(sl, layer_head=False)} GROUP BY neg_type ORDER BY neg_type
    """
    return sq.ints(sq.frame(con, sql), "pairs")


# -- Head atlas -------------------------------------------------------------------------------------
def head_means(con, sl: Slice, metric: str) -> pd.DataFrame:
    """Mean and standard deviation of ``metric`` per layer x head over the slice (from head_attention_agg)."""
    m = sq.metric(metric)
    sql = f"""
        SELECT layer, head, sum(n) AS n, sum({m}_sum) / sum(n) AS mean,
               sqrt(greatest(sum({m}_sumsq) / sum(n) - pow(sum({m}_sum) / sum(n), 2), 0)) AS sd
        FROM head_attention_agg WHERE {sq.where(sl)}
        GROUP BY layer, head HAVING sum(n) > 0 ORDER BY layer, head
    """
    return sq.ints(sq.frame(con, sql), "layer", "head", "n")


def head_difference(con, sl: Slice, metric: str, contrast: str) -> pd.DataFrame:
    """Per head: mean of ``metric`` on relevant pairs minus the negatives of the contrast, and Cohen's d.

    The slice's layers, heads and queries apply; its negative-type filter does not (the contrast
    names both groups) and its grade filter applies to the relevant side only.
    """
    m = sq.metric(metric)
    if contrast not in CONTRASTS:
        raise sq.QueryError(f"unknown contrast {contrast!r}")
    a, b = CONTRASTS[contrast]
    la, lb = sq.lit(a), sq.lit(b)
    grade_a = f" AND {sq.is_in('grade', [int(g) for g in sl.grades])}" if sl.grades else ""
    sql = f"""
        WITH g AS (
            SELECT layer, head, neg_type, sum(n) AS n, sum({m}_sum) AS s, sum({m}_sumsq) AS ss
            FROM head_attention_agg
            WHERE {sq.where(sl, neg_types=False, grades=False)}
              AND ((neg_type = {la}{grade_a}) OR neg_type = {lb})
            GROUP BY layer, head, neg_type
        ), w AS (
            SELECT layer, head,
                   sum(n) FILTER (WHERE neg_type = {la}) AS n_a, sum(s) FILTER (WHERE neg_type = {la}) AS s_a,
                   sum(ss) FILTER (WHERE neg_type = {la}) AS ss_a,
                   sum(n) FILTER (WHERE neg_type = {lb}) AS n_b, sum(s) FILTER (WHERE neg_type = {lb}) AS s_b,
                   sum(ss) FILTER (WHERE neg_type = {lb}) AS ss_b
            FROM g GROUP BY layer, head
        ), v AS (
            SELECT layer, head, n_a, n_b, s_a / n_a AS mean_a, s_b / n_b AS mean_b,
                   greatest(ss_a - s_a * s_a / n_a, 0) AS m2_a, greatest(ss_b - s_b * s_b / n_b, 0) AS m2_b
            FROM w WHERE n_a > 0 AND n_b > 0
        )
        SELECT layer, head, n_a, n_b, mean_a, mean_b, mean_a - mean_b AS diff,
               sqrt((m2_a + m2_b) / nullif(n_a + n_b - 2, 0)) AS sd_pooled,
               (mean_a - mean_b) / nullif(sqrt((m2_a + m2_b) / nullif(n_a + n_b - 2, 0)), 0) AS cohen_d
        FROM v ORDER BY layer, head
    """
    return sq.ints(sq.frame(con, sql), "layer", "head", "n_a", "n_b")


def head_contrasts(con, metric: str, contrast: str) -> pd.DataFrame:
    """The precomputed matching-head statistics (whole run) of one metric and contrast."""
    sql = """
        SELECT layer, head, n_a, n_b, mean_a, mean_b, diff, cohen_d, u, p, p_holm
        FROM head_contrasts WHERE metric = ? AND contrast = ? ORDER BY layer, head
    """
    return sq.ints(sq.frame(con, sql, [sq.metric(metric), contrast]), "layer", "head", "n_a", "n_b")


def head_values(con, sl: Slice, layer: int, head: int, metric: str) -> pd.DataFrame:
    """Summary statistics of ``metric`` for one head, per negative type and grade (reads head_attention)."""
    m = sq.metric(metric)
    sql = f"""
        SELECT p.neg_type, p.grade, count(*) AS n, avg(h.{m}) AS mean, min(h.{m}) AS min,
               quantile_cont(h.{m}, 0.25) AS q1, median(h.{m}) AS median, quantile_cont(h.{m}, 0.75) AS q3,
               max(h.{m}) AS max
        FROM head_attention h JOIN pairs p USING (pair_id)
        WHERE h.layer = {int(layer)} AND h.head = {int(head)} AND {sq.where(sl, alias='p', layer_head=False)}
        GROUP BY p.neg_type, p.grade ORDER BY p.neg_type, p.grade
    """
    return sq.ints(sq.frame(con, sql), "grade", "n")


def head_histogram(con, sl: Slice, layer: int, head: int, metric: str, bins: int = 30) -> pd.DataFrame:
    """Histogram of ``metric`` for one head per negative type."""
    m = sq.metric(metric)
    src = f"""
        SELECT p.neg_type, h.{m} AS value FROM head_attention h JOIN pairs p USING (pair_id)
        WHERE h.layer = {int(layer)} AND h.head = {int(head)} AND {sq.where(sl, alias='p', layer_head=False)}
    """
    return sq.binned(con, src, "value", "neg_type", bins)


def head_top_pairs(con, sl: Slice, layer: int, head: int, metric: str, limit: int = 20,
                   descending: bool = True) -> pd.DataFrame:
    """The pairs with the largest (or smallest) ``metric`` on one head (top-k first, then their texts)."""
    m = sq.metric(metric)
    pair_filter = sq.where(sl, layer_head=False)
    semi = "" if pair_filter == "TRUE" else f" AND pair_id IN (SELECT pair_id FROM pairs WHERE {pair_filter})"
    order = "DESC" if descending else "ASC"
    sql = f"""
        WITH top AS (
            SELECT pair_id, {m} AS value FROM head_attention
            WHERE layer = {int(layer)} AND head = {int(head)}{semi}
            ORDER BY value {order}, pair_id LIMIT {int(limit)}
        )
        SELECT top.pair_id, p.qid, p.query, p.docid, p.neg_type, p.grade, p.score, top.value, left(p.doc, 240) AS doc
        FROM top JOIN pairs p USING (pair_id) ORDER BY top.value {order}, top.pair_id
    """
    return sq.ints(sq.frame(con, sql), "pair_id", "grade")


# -- Directions -------------------------------------------------------------------------------------
def direction_matrix(con, sl: Slice) -> pd.DataFrame:
    """Mean attention mass of the 25 directions over the slice, long: src, dst, direction, mean, n."""
    cols = ", ".join(f"sum({d}_sum) / sum(n) AS {d}" for d in DIRECTIONS)
    row = sq.frame(con, f"SELECT sum(n) AS n, {cols} FROM head_attention_agg WHERE {sq.where(sl)}")
    n = int(row["n"].iloc[0]) if len(row) and pd.notna(row["n"].iloc[0]) else 0
    out = []
    for d in DIRECTIONS:
        src, dst = split_direction(d)
        out.append({"src": src, "dst": dst, "direction": d, "mean": row[d].iloc[0] if n else None, "n": n})
    return pd.DataFrame(out)


def direction_by_layer(con, sl: Slice, directions: tuple[str, ...] = DIRECTIONS) -> pd.DataFrame:
    """Mean mass of each direction per layer and negative type (heads of the slice averaged), long."""
    dirs = [d for d in directions if d in DIRECTIONS]
    if not dirs:
        raise sq.QueryError("no direction selected")
    cols = ", ".join(f"sum({d}_sum) / sum(n) AS {d}" for d in dirs)
    wide = sq.frame(con, f"""
        SELECT layer, neg_type, sum(n) AS n, {cols} FROM head_attention_agg WHERE {sq.where(sl)}
        GROUP BY layer, neg_type ORDER BY layer, neg_type
    """)
    long = wide.melt(id_vars=["layer", "neg_type", "n"], value_vars=dirs, var_name="direction", value_name="mean")
    return sq.ints(long, "layer", "n")


def cross_attention(con, sl: Slice) -> pd.DataFrame:
    """Decoder cross-attention of the scoring position (decoder_cross_attention, MonoT5): mean weight on each encoder
    segment per decoder layer x head x negative type, long (layer, head, neg_type, segment, mean, n). The slice's
    queries, negative types and grades apply; its layers and heads are the encoder's and do not."""
    cols = ", ".join(f"avg(x.{s}) AS {s}" for s in SEGMENTS)
    wide = sq.frame(con, f"""
        SELECT x.layer, x.head, p.neg_type, count(*) AS n, {cols}
        FROM decoder_cross_attention x JOIN pairs p USING (pair_id)
        WHERE {sq.where(sl, alias='p', layer_head=False)}
        GROUP BY ALL ORDER BY x.layer, x.head, p.neg_type
    """)
    long = wide.melt(id_vars=["layer", "head", "neg_type", "n"], value_vars=list(SEGMENTS), var_name="segment",
                     value_name="mean")
    return sq.ints(long, "layer", "head", "n")


# -- Spectra ----------------------------------------------------------------------------------------
def svd_spectra(con, sl: Slice) -> pd.DataFrame:
    """Singular values and alignments of the slice's heads: layer, head, k, sigma, sigma_rel, alignment."""
    sql = f"""
        SELECT layer, head, k, sigma, sigma / max(sigma) OVER (PARTITION BY layer, head) AS sigma_rel, alignment
        FROM svd WHERE {sq.where(sl, pair_filters=False)} ORDER BY layer, head, k
    """
    return sq.ints(sq.frame(con, sql), "layer", "head", "k")


def alignment_scores(con, sl: Slice) -> pd.DataFrame:
    """Head-level alignment score (sigma-weighted mean alignment, view head_alignment) of the slice's heads."""
    sql = f"""
        SELECT layer, head, alignment_score, sigma_max, n_sigma FROM head_alignment
        WHERE {sq.where(sl, pair_filters=False)} ORDER BY layer, head
    """
    return sq.ints(sq.frame(con, sql), "layer", "head", "n_sigma")


def alignment_vs_contrast(con, sl: Slice, metric: str, contrast: str) -> pd.DataFrame:
    """Alignment score beside the precomputed matching statistics (head_contrasts) of each head."""
    sql = f"""
        SELECT a.layer, a.head, a.alignment_score, c.diff, c.cohen_d, c.p_holm
        FROM head_alignment a JOIN head_contrasts c ON c.layer = a.layer AND c.head = a.head
        WHERE c.metric = ? AND c.contrast = ? AND {sq.where(sl, alias='a', pair_filters=False)}
        ORDER BY a.layer, a.head
    """
    return sq.ints(sq.frame(con, sql, [sq.metric(metric), contrast]), "layer", "head")


def alignment_vs_slice_difference(con, sl: Slice, metric: str, contrast: str) -> pd.DataFrame:
    """Alignment score beside the slice's difference and Cohen's d computed from head_attention_agg."""
    align = alignment_scores(con, sl)
    diff = head_difference(con, sl, metric, contrast)[["layer", "head", "diff", "cohen_d"]]
    out = align.merge(diff, on=["layer", "head"], how="inner")
    out["p_holm"] = float("nan")
    return out[["layer", "head", "alignment_score", "diff", "cohen_d", "p_holm"]]

# -- SQL page ---------------------------------------------------------------------------------------
def schema_listing(con) -> pd.DataFrame:
    """Tables/views and their columns, as the SQL page lists them beside the editor."""
    return sq.frame(con, """
        SELECT table_name AS "table", column_name AS "column", data_type AS type
        FROM duckdb_columns() WHERE NOT internal AND schema_name = 'main'
        ORDER BY table_name, column_index
    """)
