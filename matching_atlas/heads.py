"""Head-level results: each head's metric means and contrasts, the matching heads, one head's distribution, the
segment-to-segment directions, the decoder's cross-attention, and the QK spectra with their alignment.

Speed rules: the head-level results read ``head_attention_agg`` (sums per layer x head x query x negative type x
grade: ``mean = sum(m_sum) / sum(n)``), or ``head_attention_totals`` (the same summed over queries: a few thousand
rows) when the slice names no queries, and never scan ``head_attention``; a single head's distributions read
``head_attention`` filtered by literal ``layer = L AND head = H`` so that Parquet row-group statistics prune everything
else (the table is sorted by layer, head, pair_id).
"""

from __future__ import annotations

import pandas as pd

from matching_atlas import sqltext as sq
from matching_atlas.reading import ALL, Reader
from matching_atlas.slice import Slice
from precompute.names import CONTRASTS, DIRECTIONS, SEGMENTS, split_direction


def _sums(sl: Slice) -> str:
    """The table a slice's sums come from: ``head_attention_totals`` unless the slice names queries (its rows have no
    query), then ``head_attention_agg``. Both give the same sums; the totals hold ~2,000 times fewer rows on a run of
    2,000 queries (the unsliced Directions matrix: 0.47 s at 3 x 10^8 rows from the aggregate)."""
    return "head_attention_agg" if sl.qids else "head_attention_totals"


class HeadTables(Reader):
    """Methods of :class:`matching_atlas.Run` on head_attention(_agg), head_contrasts, decoder_cross_attention, svd."""

    def shape(self) -> pd.DataFrame:
        """One row: layers, heads (counted from head_attention_totals; the manifest's model section says the same)."""
        return self._frame("SELECT CAST(max(layer) + 1 AS INTEGER) AS layers, CAST(max(head) + 1 AS INTEGER) AS heads "
                           "FROM head_attention_totals")

    # -- every head ---------------------------------------------------------------------------------------
    def head_means(self, metric: str, where: Slice | None = None) -> pd.DataFrame:
        """Mean and standard deviation of ``metric`` per layer x head over the (slice's) pairs: layer, head, n, mean,
        sd (from head_attention_agg, or its totals over queries: :func:`_sums`)."""
        m = sq.metric(metric)
        sql = f"""
            SELECT layer, head, sum(n) AS n, sum({m}_sum) / sum(n) AS mean,
                   sqrt(greatest(sum({m}_sumsq) / sum(n) - pow(sum({m}_sum) / sum(n), 2), 0)) AS sd
            FROM {_sums(where or ALL)} WHERE {sq.where(where or ALL)}
            GROUP BY layer, head HAVING sum(n) > 0 ORDER BY layer, head
        """
        return sq.ints(self._frame(sql), "layer", "head", "n")

    def head_difference(self, metric: str, contrast: str, where: Slice | None = None) -> pd.DataFrame:
        """Per head: mean of ``metric`` on relevant pairs minus the negatives of the contrast, and Cohen's d, over the
        slice (computed from head_attention_agg or its totals, :func:`_sums`; :meth:`head_contrasts` holds the job's
        whole-run statistics).

        The slice's layers, heads and queries apply; its negative-type filter does not (the contrast names both
        groups) and its grade filter applies to the relevant side only.
        """
        m = sq.metric(metric)
        sl = where or ALL
        if contrast not in CONTRASTS:
            raise sq.QueryError(f"unknown contrast {contrast!r}")
        a, b = CONTRASTS[contrast]
        la, lb = sq.lit(a), sq.lit(b)
        grade_a = f" AND {sq.is_in('grade', [int(g) for g in sl.grades])}" if sl.grades else ""
        sql = f"""
            WITH g AS (
                SELECT layer, head, neg_type, sum(n) AS n, sum({m}_sum) AS s, sum({m}_sumsq) AS ss
                FROM {_sums(sl)}
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
        return sq.ints(self._frame(sql), "layer", "head", "n_a", "n_b")

    def head_contrasts(self, metric: str | None = None, contrast: str | None = None) -> pd.DataFrame:
        """The job's matching-head statistics over the whole run (table head_contrasts): per metric, contrast, layer
        and head, the test over queries (n_queries with both groups, the mean per-query difference ``effect`` with its
        bootstrap interval, d_z, the paired t, p and Holm's p; NULL in stores before schema version 6) and, as
        description only, the pooled pair-level numbers (group sizes and means, diff, Cohen's d, Mann-Whitney U and
        its pooled_p). ``metric`` and ``contrast`` narrow it to one of each."""
        cond, params = ["TRUE"], []
        if metric is not None:
            cond.append("metric = ?")
            params.append(sq.metric(metric))
        if contrast is not None:
            cond.append("contrast = ?")
            params.append(contrast)
        sql = f"""
            SELECT metric, contrast, layer, head, n_queries, effect, effect_low, effect_high, effect_dz, t, p, p_holm,
                   n_resamples, n_a, n_b, mean_a, mean_b, diff, cohen_d, u, pooled_p
            FROM head_contrasts WHERE {' AND '.join(cond)} ORDER BY contrast, metric, layer, head
        """
        df = self._frame(sql, params)
        for col in ("n_queries", "n_resamples"):
            df[col] = pd.array(df[col], dtype="Int64")
        return sq.ints(df, "layer", "head", "n_a", "n_b")

    def matching_heads(self, contrast: str | None = None) -> pd.DataFrame:
        """The candidate matching heads (view matching_heads): per contrast, each head with a Holm-significant positive
        effect on a query-document metric over at least 10 queries, ranked by its largest d_z (which metric, and on how
        many)."""
        where, params = ("WHERE contrast = ?", [contrast]) if contrast is not None else ("", [])
        df = self._frame(f"SELECT * FROM matching_heads {where} ORDER BY contrast, rank", params)
        return sq.ints(df, "layer", "head", "n_significant", "rank")

    # -- one head -----------------------------------------------------------------------------------------
    def head_values(self, layer: int, head: int, metric: str, where: Slice | None = None) -> pd.DataFrame:
        """Summary statistics of ``metric`` for one head, per negative type and grade (reads head_attention)."""
        m = sq.metric(metric)
        sql = f"""
            SELECT p.neg_type, p.grade, count(*) AS n, avg(h.{m}) AS mean, min(h.{m}) AS min,
                   quantile_cont(h.{m}, 0.25) AS q1, median(h.{m}) AS median, quantile_cont(h.{m}, 0.75) AS q3,
                   max(h.{m}) AS max
            FROM head_attention h JOIN pairs p USING (pair_id)
            WHERE h.layer = {int(layer)} AND h.head = {int(head)}
                  AND {sq.where(where or ALL, alias='p', layer_head=False)}
            GROUP BY p.neg_type, p.grade ORDER BY p.neg_type, p.grade
        """
        return sq.ints(self._frame(sql), "grade", "n")

    def head_histogram(self, layer: int, head: int, metric: str, bins: int = 30,
                       where: Slice | None = None) -> pd.DataFrame:
        """Histogram of ``metric`` for one head per negative type."""
        m = sq.metric(metric)
        src = f"""
            SELECT p.neg_type, h.{m} AS value FROM head_attention h JOIN pairs p USING (pair_id)
            WHERE h.layer = {int(layer)} AND h.head = {int(head)}
                  AND {sq.where(where or ALL, alias='p', layer_head=False)}
        """
        return sq.binned(self._frame, src, "value", "neg_type", bins)

    def head_top_pairs(self, layer: int, head: int, metric: str, limit: int = 20, descending: bool = True,
                       where: Slice | None = None) -> pd.DataFrame:
        """The pairs with the largest (or smallest) ``metric`` on one head (top-k first, then their texts)."""
        m = sq.metric(metric)
        pair_filter = sq.where(where or ALL, layer_head=False)
        semi = "" if pair_filter == "TRUE" else f" AND pair_id IN (SELECT pair_id FROM pairs WHERE {pair_filter})"
        order = "DESC" if descending else "ASC"
        sql = f"""
            WITH top AS (
                SELECT pair_id, {m} AS value FROM head_attention
                WHERE layer = {int(layer)} AND head = {int(head)}{semi}
                ORDER BY value {order}, pair_id LIMIT {int(limit)}
            )
            SELECT top.pair_id, p.qid, p.query, p.docid, p.neg_type, p.grade, p.score, top.value,
                   left(p.doc, 240) AS doc
            FROM top JOIN pairs p USING (pair_id) ORDER BY top.value {order}, top.pair_id
        """
        return sq.ints(self._frame(sql), "pair_id", "grade")

    # -- directions -----------------------------------------------------------------------------------------
    def direction_matrix(self, where: Slice | None = None) -> pd.DataFrame:
        """Mean attention mass of the 25 directions over the slice, long: src, dst, direction, mean, n."""
        cols = ", ".join(f"sum({d}_sum) / sum(n) AS {d}" for d in DIRECTIONS)
        row = self._frame(f"SELECT sum(n) AS n, {cols} FROM {_sums(where or ALL)} WHERE {sq.where(where or ALL)}")
        n = int(row["n"].iloc[0]) if len(row) and pd.notna(row["n"].iloc[0]) else 0
        out = []
        for d in DIRECTIONS:
            src, dst = split_direction(d)
            out.append({"src": src, "dst": dst, "direction": d, "mean": row[d].iloc[0] if n else None, "n": n})
        return pd.DataFrame(out)

    def direction_by_layer(self, directions: tuple[str, ...] = DIRECTIONS, where: Slice | None = None) -> pd.DataFrame:
        """Mean mass of each direction per layer and negative type (heads of the slice averaged), long."""
        dirs = [d for d in directions if d in DIRECTIONS]
        if not dirs:
            raise sq.QueryError("no direction selected")
        cols = ", ".join(f"sum({d}_sum) / sum(n) AS {d}" for d in dirs)
        wide = self._frame(f"""
            SELECT layer, neg_type, sum(n) AS n, {cols} FROM {_sums(where or ALL)} WHERE {sq.where(where or ALL)}
            GROUP BY layer, neg_type ORDER BY layer, neg_type
        """)
        long = wide.melt(id_vars=["layer", "neg_type", "n"], value_vars=dirs, var_name="direction", value_name="mean")
        return sq.ints(long, "layer", "n")

    def cross_attention(self, where: Slice | None = None) -> pd.DataFrame:
        """Decoder cross-attention of the scoring position (decoder_cross_attention, MonoT5): mean weight on each
        encoder segment per decoder layer x head x negative type, long (layer, head, neg_type, segment, mean, n). The
        slice's queries, negative types and grades apply; its layers and heads are the encoder's and do not."""
        cols = ", ".join(f"avg(x.{s}) AS {s}" for s in SEGMENTS)
        wide = self._frame(f"""
            SELECT x.layer, x.head, p.neg_type, count(*) AS n, {cols}
            FROM decoder_cross_attention x JOIN pairs p USING (pair_id)
            WHERE {sq.where(where or ALL, alias='p', layer_head=False)}
            GROUP BY ALL ORDER BY x.layer, x.head, p.neg_type
        """)
        long = wide.melt(id_vars=["layer", "head", "neg_type", "n"], value_vars=list(SEGMENTS), var_name="segment",
                         value_name="mean")
        return sq.ints(long, "layer", "head", "n")

    # -- QK spectra -----------------------------------------------------------------------------------------
    def spectra(self, where: Slice | None = None) -> pd.DataFrame:
        """Singular values and alignments of the (slice's) heads: layer, head, k, sigma, sigma_rel, alignment."""
        sql = f"""
            SELECT layer, head, k, sigma, sigma / max(sigma) OVER (PARTITION BY layer, head) AS sigma_rel, alignment
            FROM svd WHERE {sq.where(where or ALL, pair_filters=False)} ORDER BY layer, head, k
        """
        return sq.ints(self._frame(sql), "layer", "head", "k")

    def head_alignment(self, where: Slice | None = None) -> pd.DataFrame:
        """Head-level alignment score (sigma-weighted mean alignment, view head_alignment) of the (slice's) heads."""
        sql = f"""
            SELECT layer, head, alignment_score, sigma_max, n_sigma FROM head_alignment
            WHERE {sq.where(where or ALL, pair_filters=False)} ORDER BY layer, head
        """
        return sq.ints(self._frame(sql), "layer", "head", "n_sigma")

    def alignment_vs_contrast(self, metric: str, contrast: str, where: Slice | None = None) -> pd.DataFrame:
        """Alignment score beside the job's matching statistics (head_contrasts) of each head: the pooled descriptive
        diff and cohen_d, and the query-level effect, effect_dz, p_holm and n_queries (NULL in a store of schema 4 and
        older, whose tests were pooled)."""
        sql = f"""
            SELECT a.layer, a.head, a.alignment_score, c.diff, c.cohen_d, c.effect, c.effect_dz, c.p_holm, c.n_queries
            FROM head_alignment a JOIN head_contrasts c ON c.layer = a.layer AND c.head = a.head
            WHERE c.metric = ? AND c.contrast = ? AND {sq.where(where or ALL, alias='a', pair_filters=False)}
            ORDER BY a.layer, a.head
        """
        return sq.ints(self._frame(sql, [sq.metric(metric), contrast]), "layer", "head")

    def alignment_vs_slice_difference(self, metric: str, contrast: str, where: Slice | None = None) -> pd.DataFrame:
        """Alignment score beside the slice's difference and Cohen's d (:meth:`head_difference`); p_holm is NaN (no
        test on a slice)."""
        align = self.head_alignment(where)
        diff = self.head_difference(metric, contrast, where)[["layer", "head", "diff", "cohen_d"]]
        out = align.merge(diff, on=["layer", "head"], how="inner")
        out["p_holm"] = float("nan")
        return out[["layer", "head", "alignment_score", "diff", "cohen_d", "p_holm"]]
