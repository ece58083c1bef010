"""The Pair explorer's queries: one pair's rows, read by position when the store's layout allows it.

``app.connections.open_run`` records in ``atlas_layout`` whether head_attention holds every pair on
every head in (layer, head, pair_id) order; then the row of (layer, head, pair) is computed and
read through ``head_attention_rows`` (a few row groups instead of a scan). What is read is checked,
and the plain filter is used otherwise, so a store without that layout gives the same answers.
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


def _layout(con) -> tuple[int, int, int] | None:
    """(layers, heads, pairs) when head_attention is dense and positions can be computed (app.connections)."""
    has = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'atlas_layout'").fetchone()[0]
    if not has:
        return None
    layers, heads, pairs, dense = con.execute("SELECT layers, heads, pairs, dense FROM atlas_layout").fetchone()
    return (int(layers), int(heads), int(pairs)) if dense else None


def _pair_rows(con, pair_id: int, cells: list[tuple[int, int]], columns: str) -> pd.DataFrame | None:
    """head_attention rows of one pair on the given (layer, head) cells read by row position, or None
    when the store's layout does not allow it (or what was read is not what was asked)."""
    layout = _layout(con)
    if layout is None or not cells:
        return None
    layers, heads, pairs = layout
    if not (0 <= pair_id < pairs) or any(not (0 <= l < layers and 0 <= h < heads) for l, h in cells):
        return None
    rows = sorted((l * heads + h) * pairs + pair_id for l, h in cells)
    df = sq.frame(con, f"""
        SELECT layer, head, pair_id, {columns} FROM head_attention_rows
        WHERE row_number IN ({', '.join(map(str, rows))}) ORDER BY layer, head
    """)
    if len(df) != len(cells) or (df["pair_id"] != pair_id).any() or \
            sorted(zip(df["layer"].astype(int), df["head"].astype(int))) != sorted(cells):
        return None
    return df


def pair_head_metrics(con, pair_id: int, layer: int, head: int) -> pd.DataFrame:
    """The stored summaries (25 masses and matching signals) of one pair on one head."""
    cols = ", ".join(METRICS)
    fast = _pair_rows(con, int(pair_id), [(int(layer), int(head))], cols)
    if fast is not None:
        return fast[list(METRICS)]
    sql = f"""
        SELECT {cols} FROM head_attention
        WHERE layer = {int(layer)} AND head = {int(head)} AND pair_id = {int(pair_id)}
    """
    return sq.frame(con, sql)


def pair_metric_grid(con, sl: Slice, pair_id: int, metric: str) -> pd.DataFrame:
    """One metric of one pair on every layer x head of the slice."""
    m = sq.metric(metric)
    layout = _layout(con)
    if layout is not None:
        layers, heads, _ = layout
        lo, hi = sl.layers if sl.layers is not None else (0, layers - 1)
        cells = [(l, h) for l in range(lo, hi + 1) for h in (sl.heads or range(heads))]
        fast = _pair_rows(con, int(pair_id), cells, f"{m} AS value")
        if fast is not None:
            return sq.ints(fast[["layer", "head", "value"]], "layer", "head")
    sql = f"""
        SELECT layer, head, {m} AS value FROM head_attention
        WHERE pair_id = {int(pair_id)} AND {sq.where(sl, pair_filters=False)} ORDER BY layer, head
    """
    return sq.ints(sq.frame(con, sql), "layer", "head")

