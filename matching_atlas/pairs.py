"""The run's pairs: their counts, scores and nDCG per query, and one pair's rows (the Overview and the Pair explorer).

One pair's summaries are read with literal ``pair_id`` (and ``layer``, ``head``) filters: ``head_attention`` is
sorted by (layer, head, pair_id) with no row group holding two heads, so the row groups' pair_id statistics select the
one row group per head that holds the pair, and the layer filter selects the layers' files (one file per layer).
On the 3 x 10^8-row bench this reads 384 row groups of 4,608 for all heads; computing the rows' positions instead
(``file_row_number``) was slower in one file (0.45 s against 0.38 s for 384 heads) and needs a dense table.
"""

from __future__ import annotations

import pandas as pd

from matching_atlas import sqltext as sq
from matching_atlas.reading import ALL, Reader
from matching_atlas.slice import Slice
from precompute.metrics import METRICS


class PairTables(Reader):
    """Methods of :class:`matching_atlas.Run` on the pairs table and one pair's rows."""

    # -- the run's pairs ------------------------------------------------------------------------------
    def slice_options(self) -> pd.DataFrame:
        """The (neg_type, grade) combinations present in the run, with their pair counts."""
        sql = "SELECT neg_type, grade, count(*) AS n FROM pairs GROUP BY ALL ORDER BY neg_type, grade"
        return sq.ints(self._frame(sql), "grade", "n")

    def queries(self) -> pd.DataFrame:
        """Every query of the run: qid, text, number of pairs."""
        sql = "SELECT qid, any_value(query) AS query, count(*) AS pairs FROM pairs GROUP BY qid ORDER BY qid"
        return sq.ints(self._frame(sql), "pairs")

    def pair_counts(self, where: Slice | None = None) -> pd.DataFrame:
        """Pairs per negative type and grade (of the slice): pairs, queries, mean score, truncated pairs."""
        sql = f"""
            SELECT neg_type, grade, count(*) AS pairs, count(DISTINCT qid) AS queries, avg(score) AS mean_score,
                   sum(CASE WHEN truncated THEN 1 ELSE 0 END) AS truncated
            FROM pairs WHERE {sq.where(where or ALL, layer_head=False)}
            GROUP BY neg_type, grade ORDER BY neg_type, grade
        """
        return sq.ints(self._frame(sql), "grade", "pairs", "queries", "truncated")

    def ndcg(self, k: int = 10, where: Slice | None = None) -> pd.DataFrame:
        """nDCG@k per query of the model's ranking of the (slice's) pairs (linear gains = grades, as trec_eval).

        Easy negatives and grade-0 pairs have gain 0; the ideal ranking is over the same pairs. Ties in score are
        broken by docid, descending (trec_eval's order). Top-k lists per query come from ``max_by(..., k)``, so no
        query's pairs are fully sorted.
        """
        k = int(k)
        sql = f"""
            WITH t AS (
                SELECT qid, max_by(greatest(grade, 0), (score, docid), {k}) AS top, max(greatest(grade, 0), {k}) AS best
                FROM pairs WHERE {sq.where(where or ALL, layer_head=False)} GROUP BY qid
            ), d AS (
                SELECT qid, list_sum(list_transform(top, lambda g, i: g / log2(i + 1))) AS dcg,
                       list_sum(list_transform(best, lambda g, i: g / log2(i + 1))) AS idcg
                FROM t
            )
            SELECT qid, coalesce(dcg / nullif(idcg, 0), 0) AS ndcg, CAST(dcg AS DOUBLE) AS dcg,
                   CAST(idcg AS DOUBLE) AS idcg
            FROM d ORDER BY qid
        """
        return self._frame(sql)

    def score_histogram(self, bins: int = 40, where: Slice | None = None) -> pd.DataFrame:
        """Histogram of the model's scores per negative type (of the slice)."""
        src = f"SELECT neg_type, score FROM pairs WHERE {sq.where(where or ALL, layer_head=False)}"
        return sq.binned(self._frame, src, "score", "neg_type", bins)

    def score_summary(self, where: Slice | None = None) -> pd.DataFrame:
        """Score quantiles per negative type (of the slice)."""
        sql = f"""
            SELECT neg_type, count(*) AS pairs, avg(score) AS mean, quantile_cont(score, 0.25) AS q1,
                   median(score) AS median, quantile_cont(score, 0.75) AS q3, min(score) AS min, max(score) AS max
            FROM pairs WHERE {sq.where(where or ALL, layer_head=False)} GROUP BY neg_type ORDER BY neg_type
        """
        return sq.ints(self._frame(sql), "pairs")

    # -- one query, one pair ----------------------------------------------------------------------------
    def pairs(self, qid: str, where: Slice | None = None) -> pd.DataFrame:
        """The pairs of one query (of the slice's negative types and grades), best score first."""
        sql = f"""
            SELECT pair_id, docid, neg_type, grade, score, d_tokens, truncated, left(doc, 120) AS doc
            FROM pairs WHERE qid = ? AND {sq.where((where or ALL).with_(qids=()), layer_head=False)}
            ORDER BY score DESC, docid
        """
        return sq.ints(self._frame(sql, [qid]), "pair_id", "grade", "d_tokens")

    def pair(self, pair_id: int) -> pd.DataFrame:
        """Everything the pairs table holds about one pair (one row)."""
        return sq.ints(self._frame("SELECT * FROM pairs WHERE pair_id = ?", [int(pair_id)]), "pair_id", "grade")

    def pair_head_metrics(self, pair_id: int, layer: int, head: int) -> pd.DataFrame:
        """The stored summaries (25 masses and matching signals) of one pair on one head (one row)."""
        cols = ", ".join(METRICS)
        sql = f"""
            SELECT {cols} FROM head_attention
            WHERE layer = {int(layer)} AND head = {int(head)} AND pair_id = {int(pair_id)}
        """
        return self._frame(sql)

    def pair_layer_metrics(self, pair_id: int, layer: int, where: Slice | None = None) -> pd.DataFrame:
        """The stored summaries of one pair on every head of one layer (of the slice's heads): one row per head,
        ``head`` then the 25 masses and matching signals (the Pair explorer's small multiples)."""
        sl = (where or ALL).with_(layers=(int(layer), int(layer)))
        sql = f"""
            SELECT head, {", ".join(METRICS)} FROM head_attention
            WHERE pair_id = {int(pair_id)} AND {sq.where(sl, pair_filters=False)} ORDER BY head
        """
        return sq.ints(self._frame(sql), "head")

    def pair_metric_grid(self, pair_id: int, metric: str, where: Slice | None = None) -> pd.DataFrame:
        """One metric of one pair on every layer x head (of the slice's layers and heads)."""
        m = sq.metric(metric)
        sl = where or ALL
        sql = f"""
            SELECT layer, head, {m} AS value FROM head_attention
            WHERE pair_id = {int(pair_id)} AND {sq.where(sl, pair_filters=False)} ORDER BY layer, head
        """
        return sq.ints(self._frame(sql), "layer", "head")
