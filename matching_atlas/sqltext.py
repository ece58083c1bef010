"""SQL text building blocks of the reader's queries (:class:`matching_atlas.Run`'s methods).

Everything a user can choose (in the app's widgets and URLs, or in a notebook) reaches SQL through here: literals
are quoted by :func:`lit`, metric names are checked against ``precompute.metrics.METRICS`` by :func:`metric`, and the
slice becomes a ``WHERE`` condition in :func:`where`, so no widget value or URL parameter is pasted into SQL as is.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from matching_atlas.slice import Slice
from precompute.metrics import METRICS
from precompute.store.sql import literal


class QueryError(ValueError):
    """A query asked with an argument the store cannot have (unknown metric, ...)."""


def lit(value) -> str:
    """A Python value as a SQL literal (strings quoted, quotes doubled)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(float(value))
    return literal(value)


def is_in(col: str, values) -> str:
    """``col IN (...)`` over quoted literals."""
    return f"{col} IN ({', '.join(lit(v) for v in values)})"


def metric(name: str) -> str:
    """``name`` when it is a summary metric (a column name that may be pasted into SQL); QueryError otherwise."""
    if name not in METRICS:
        raise QueryError(f"unknown metric {name!r}")
    return name


def where(
    sl: Slice,
    *,
    alias: str = "",
    layer_head: bool = True,
    pair_filters: bool = True,
    neg_types: bool = True,
    grades: bool = True,
) -> str:
    """The slice as a SQL condition on columns layer, head, qid, neg_type, grade (of ``alias``)."""
    p = f"{alias}." if alias else ""
    cond: list[str] = []
    if layer_head:
        if sl.layers is not None:
            cond.append(f"{p}layer BETWEEN {int(sl.layers[0])} AND {int(sl.layers[1])}")
        if sl.heads:
            cond.append(is_in(f"{p}head", [int(h) for h in sl.heads]))
    if pair_filters:
        if sl.qids:
            cond.append(is_in(f"{p}qid", sl.qids))
        if neg_types and sl.neg_types:
            cond.append(is_in(f"{p}neg_type", sl.neg_types))
        if grades and sl.grades:
            cond.append(is_in(f"{p}grade", [int(g) for g in sl.grades]))
    return " AND ".join(cond) if cond else "TRUE"


def ints(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    """Cast ``cols`` to int64 (DuckDB returns some counts and ids as other widths or floats)."""
    for c in cols:
        if c in df.columns and len(df):
            df[c] = df[c].astype("int64")
    return df


def binned(read: Callable[[str], pd.DataFrame], source_sql: str, value: str, group: str, bins: int) -> pd.DataFrame:
    """Histogram of ``value`` per ``group`` over ``source_sql`` with shared bin edges (``read`` runs a query).

    Columns: group, bin, bin_start, bin_end, n, share (fraction of the group's rows in the bin).
    """
    bins = max(1, int(bins))
    sql = f"""
        WITH src AS ({source_sql}),
        rng AS (SELECT min({value}) AS lo, max({value}) AS hi FROM src),
        b AS (
            SELECT {group} AS grp,
                   least(CAST(floor(({value} - lo) / greatest((hi - lo) / {bins}, 1e-12)) AS INTEGER), {bins - 1}) AS bin
            FROM src, rng WHERE {value} IS NOT NULL
        )
        SELECT grp AS {group}, bin, any_value(lo) + bin * greatest((any_value(hi) - any_value(lo)) / {bins}, 1e-12) AS bin_start,
               any_value(lo) + (bin + 1) * greatest((any_value(hi) - any_value(lo)) / {bins}, 1e-12) AS bin_end,
               count(*) AS n
        FROM b, rng GROUP BY grp, bin ORDER BY grp, bin
    """
    df = read(sql)
    if len(df):
        df["share"] = df["n"] / df.groupby(group)["n"].transform("sum")
        df = ints(df, "bin", "n")
    else:
        df["share"] = []
    return df
