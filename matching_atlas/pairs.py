"""The run's pairs: their counts, scores and nDCG per query, and one pair's rows (the Overview and the Pair explorer).

One pair's summaries are read by position when the store's layout allows it: the reading connection records in
``atlas_layout`` whether head_attention holds every pair on every head in (layer, head, pair_id) order
(:mod:`matching_atlas.connection`); then the row of (layer, head, pair) is computed and read through
``head_attention_rows`` (a few row groups instead of a scan). What is read is checked, and the plain filter is used
otherwise, so a store without that layout gives the same answers.
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
        fast = self._pair_rows(int(pair_id), [(int(layer), int(head))], cols)
        if fast is not None:
            return fast[list(METRICS)]
        sql = f"""
            SELECT {cols} FROM head_attention
            WHERE layer = {int(layer)} AND head = {int(head)} AND pair_id = {int(pair_id)}
        """
        return self._frame(sql)

    def pair_metric_grid(self, pair_id: int, metric: str, where: Slice | None = None) -> pd.DataFrame:
        """One metric of one pair on every layer x head (of the slice's layers and heads)."""
        m = sq.metric(metric)
        sl = where or ALL
        layout = self._layout()
        if layout is not None:
            layers, heads, _ = layout
            lo, hi = sl.layers if sl.layers is not None else (0, layers - 1)
            cells = [(l, h) for l in range(lo, hi + 1) for h in (sl.heads or range(heads))]
            fast = self._pair_rows(int(pair_id), cells, f"{m} AS value")
            if fast is not None:
                return sq.ints(fast[["layer", "head", "value"]], "layer", "head")
        sql = f"""
            SELECT layer, head, {m} AS value FROM head_attention
            WHERE pair_id = {int(pair_id)} AND {sq.where(sl, pair_filters=False)} ORDER BY layer, head
        """
        return sq.ints(self._frame(sql), "layer", "head")

    def _layout(self) -> tuple[int, int, int] | None:
        """(layers, heads, pairs) when head_attention is dense and positions can be computed."""
        if not self._defined("atlas_layout"):
            return None
        row = self._frame("SELECT layers, heads, pairs, dense FROM atlas_layout").iloc[0]
        return (int(row["layers"]), int(row["heads"]), int(row["pairs"])) if row["dense"] else None

    def _pair_rows(self, pair_id: int, cells: list[tuple[int, int]], columns: str) -> pd.DataFrame | None:
        """head_attention rows of one pair on the given (layer, head) cells read by row position, or None when the
        store's layout does not allow it (or what was read is not what was asked)."""
        layout = self._layout()
        if layout is None or not cells:
            return None
        layers, heads, pairs = layout
        if not (0 <= pair_id < pairs) or any(not (0 <= l < layers and 0 <= h < heads) for l, h in cells):
            return None
        rows = sorted((l * heads + h) * pairs + pair_id for l, h in cells)
        df = self._frame(f"""
            SELECT layer, head, pair_id, {columns} FROM head_attention_rows
            WHERE row_number IN ({', '.join(map(str, rows))}) ORDER BY layer, head
        """)
        if len(df) != len(cells) or (df["pair_id"] != pair_id).any() or \
                sorted(zip(df["layer"].astype(int), df["head"].astype(int))) != sorted(cells):
            return None
        return df
