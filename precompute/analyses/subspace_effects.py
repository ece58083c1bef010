"""The ``subspace_effects`` table: what each QK-subspace condition did to its own head's summary metrics.

Per condition (one head) and metric, over the pairs where the metric is defined both with and without the
intervention: their number, the mean with it (``subspace_head_metrics``), the mean without it (the head's
``head_attention`` rows), and the mean and sample standard deviation of the per-pair difference. These are the rows
of the view ``subspace_effects`` that stores written before this table compute on every query
(``precompute.store.connect.VIEWS``: 9 s for 40 conditions x 786,432 pairs); the job stores them once, in the commit
that installs ``subspace_head_metrics``, so no page aggregates that table.

Computed with numpy in a fixed order (one condition at a time, its rows and its head's read in pair order), so
identical runs give identical bits, as every table the job writes; memory holds one condition's rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from precompute.metrics import METRICS
from precompute.store import layout
from precompute.store.schema import SUBSPACE_EFFECTS
from precompute.store.sql import literal


def effects_table(metrics: Path, heads: Path) -> pa.Table:
    """The subspace_effects rows of the subspace_head_metrics file ``metrics`` against head_attention at ``heads``
    (its partition folder or file), sorted by condition and metric."""
    import duckdb

    con = duckdb.connect(config={"threads": 1})
    try:
        rows = [row for cid, layer, head in _conditions(con, metrics)
                for row in _condition_rows(con, metrics, heads, cid, layer, head)]
    finally:
        con.close()
    schema = SUBSPACE_EFFECTS.schema
    table = pa.Table.from_pylist(rows, schema=schema) if rows else schema.empty_table()
    return table.sort_by([("condition_id", "ascending"), ("metric", "ascending")])


def _conditions(con, metrics: Path) -> list[tuple[str, int, int]]:
    return con.execute(f"SELECT condition_id, any_value(layer), any_value(head) FROM read_parquet({literal(metrics)}) "
                       "GROUP BY condition_id ORDER BY condition_id").fetchall()


def _condition_rows(con, metrics: Path, heads: Path, cid: str, layer: int, head: int) -> Iterator[dict]:
    """One row per metric defined on some pair both with and without the condition."""
    cols = ", ".join(METRICS)
    ids, with_ = _matrix(con, f"SELECT pair_id, {cols} FROM read_parquet({literal(metrics)}) "
                              f"WHERE condition_id = $1 ORDER BY pair_id", [cid])
    base_ids, without = _matrix(con, f"SELECT pair_id, {cols} FROM {layout.scan_sql(heads, 'head_attention')} "
                                     f"WHERE layer = {int(layer)} AND head = {int(head)} ORDER BY pair_id", [])
    at = np.minimum(np.searchsorted(base_ids, ids), max(len(base_ids) - 1, 0))
    joined = (at < len(base_ids)) & (base_ids[at] == ids) if len(base_ids) else np.zeros(len(ids), bool)
    with_, without = with_[joined], without[at[joined]]
    for j, metric in enumerate(METRICS):
        s, h = with_[:, j], without[:, j]
        both = ~np.isnan(s) & ~np.isnan(h)
        n = int(both.sum())
        if n == 0:
            continue
        s, h = s[both], h[both]
        diff = s - h
        yield {"condition_id": cid, "layer": layer, "head": head, "metric": metric, "n": n, "mean": float(s.mean()),
               "baseline": float(h.mean()), "delta": float(diff.mean()),
               "sd_delta": float(diff.std(ddof=1)) if n > 1 else None}


def _matrix(con, sql: str, params: list) -> tuple[np.ndarray, np.ndarray]:
    """(pair ids, the metrics as float64 [pairs, metrics] with NaN for NULL) of a query's rows."""
    table = con.sql(sql, params=params).to_arrow_table()
    ids = table.column("pair_id").to_numpy()
    values = np.empty((table.num_rows, len(METRICS)))
    for j, metric in enumerate(METRICS):
        values[:, j] = table.column(metric).cast(pa.float64()).fill_null(np.nan).to_numpy()
    return ids, values
