"""The Pair explorer's queries: one pair's rows.

One pair's summaries are read with literal ``pair_id`` (and ``layer``, ``head``) filters: ``head_attention`` is
sorted by (layer, head, pair_id) with no row group holding two heads, so the row groups' pair_id statistics select the
one row group per head that holds the pair, and the layer filter selects the layers' files (one file per layer).
On the 3 x 10^8-row bench this reads 384 row groups of 4,608 for all heads; computing the rows' positions instead
(``file_row_number``) was slower in one file (0.45 s against 0.38 s for 384 heads) and needs a dense table.
"""

from __future__ import annotations

import pandas as pd

from app import sqltext as sq
from app.slice import Slice
from precompute.metrics import METRICS


def query_pairs(con, sl: Slice, qid: str) -> pd.DataFrame:
    """The pairs of one query in the slice, best score first."""
    sql = f"""
        SELECT pair_id, docid, neg_type, grade, score, d_tokens, truncated, left(doc, 120) AS doc
        FROM pairs WHERE qid = ? AND {sq.where(sl.with_(qids=()), layer_head=False)}
        ORDER BY score DESC, docid
    """
    return sq.ints(sq.frame(con, sql, [qid]), "pair_id", "grade", "d_tokens")


def pair_row(con, pair_id: int) -> pd.DataFrame:
    """Everything the pairs table holds about one pair."""
    return sq.ints(sq.frame(con, "SELECT * FROM pairs WHERE pair_id = ?", [int(pair_id)]), "pair_id", "grade")


def pair_head_metrics(con, pair_id: int, layer: int, head: int) -> pd.DataFrame:
    """The stored summaries (25 masses and matching signals) of one pair on one head."""
    cols = ", ".join(METRICS)
    sql = f"""
        SELECT {cols} FROM head_attention
        WHERE layer = {int(layer)} AND head = {int(head)} AND pair_id = {int(pair_id)}
    """
    return sq.frame(con, sql)


def pair_metric_grid(con, sl: Slice, pair_id: int, metric: str) -> pd.DataFrame:
    """One metric of one pair on every layer x head of the slice."""
    m = sq.metric(metric)
    sql = f"""
        SELECT layer, head, {m} AS value FROM head_attention
        WHERE pair_id = {int(pair_id)} AND {sq.where(sl, pair_filters=False)} ORDER BY layer, head
    """
    return sq.ints(sq.frame(con, sql), "layer", "head")

