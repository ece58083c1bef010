"""The app's DuckDB connection to one run (no Streamlit here: the bench opens it the same way).

``open_run`` starts from ``precompute.store.connect.connect`` (every table and view by name) and
adds what makes the pages fast on large runs:

* ``head_attention_agg`` becomes an in-memory table (instead of a view over Parquet) when its file
  is small enough (``ATLAS_AGG_IN_MEMORY_MB``, default 2048): every head-level page aggregates it,
  and DuckDB scans memory about ten times faster than it decodes Parquet. A real run's aggregate is
  a few MB; the 10^8-row bench's is 0.6 GB on disk (~0.9 GB in memory, ~2 s to load, once).
* ``atlas_layout`` (one row) and the view ``head_attention_rows`` (head_attention with its
  ``file_row_number``): when head_attention holds every pair on every head, sorted by (layer, head,
  pair_id) as the store guarantees, the row of (layer, head, pair) is
  ``(layer * heads + head) * pairs + pair`` and a single pair's summaries are read from the few row
  groups that hold them. Queries that use it check what they read and fall back otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

from precompute.store.connect import connect

AGG_IN_MEMORY_MB = float(os.environ.get("ATLAS_AGG_IN_MEMORY_MB", "2048"))


def _q(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def open_run(run: Path | str, *, threads: int | None = None, agg_in_memory_mb: float | None = None):
    run = Path(run).resolve()
    con = connect(run, threads=threads)
    con.execute("SET parquet_metadata_cache = true")
    limit = AGG_IN_MEMORY_MB if agg_in_memory_mb is None else agg_in_memory_mb
    agg = run / "head_attention_agg.parquet"
    if agg.exists() and agg.stat().st_size <= limit * 1e6:
        con.execute("DROP VIEW IF EXISTS head_attention_agg")
        con.execute(f"CREATE TABLE head_attention_agg AS SELECT * FROM read_parquet({_q(agg)})")
    ha = run / "head_attention.parquet"
    if ha.exists() and (run / "pairs.parquet").exists():
        con.execute(f"CREATE OR REPLACE VIEW head_attention_rows AS SELECT *, file_row_number AS row_number "
                    f"FROM read_parquet({_q(ha)}, file_row_number = true)")
        rows = con.execute(f"SELECT num_rows FROM parquet_file_metadata({_q(ha)})").fetchone()[0] or 0
        pairs, max_id = con.execute("SELECT count(*), max(pair_id) FROM pairs").fetchone()
        layers, heads = con.execute("SELECT max(layer) + 1, max(head) + 1 FROM head_attention_agg").fetchone()
        dense = bool(pairs and layers and heads and rows == layers * heads * pairs and max_id == pairs - 1)
        con.execute("CREATE OR REPLACE TABLE atlas_layout AS SELECT ? AS layers, ? AS heads, ? AS pairs, ? AS dense",
                    [int(layers or 0), int(heads or 0), int(pairs or 0), dense])
    return con
