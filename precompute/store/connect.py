"""Open a run folder as DuckDB tables and views, by name.

``connect(run)`` gives an in-memory DuckDB connection where every finished table of the run is
a view named after it (``pairs``, ``head_attention``, ...) plus the derived views registered in
``VIEWS``. A partitioned table (``head_attention``: one file per layer) is one view over its folder, read with
``hive_partitioning`` so that a query on some layers opens only their files; a store of the older one-file layout
gets the same view over its file (:mod:`precompute.store.layout`). A derived view is defined only where the run does
not store a table of its name (``subspace_effects``: stored by the job since it is materialised, computed in
older stores). ``write_catalog(run)`` saves the same views into ``<run>/atlas.duckdb`` (absolute
paths) so the DuckDB CLI reaches them from any working directory::

    duckdb -readonly data/store/dl20__minilm-l6-msmarco-ce/atlas.duckdb -c "SELECT count(*) FROM pairs"
"""

from __future__ import annotations

import os
from pathlib import Path

from precompute.metrics import MATCHING_METRICS, METRICS
from precompute.names import DIRECTIONS
from precompute.statistics import ALPHA
from precompute.store import layout
from precompute.store.schema import TABLES

CATALOG = "atlas.duckdb"

# Metrics that measure query-document interaction: a matching head shows its effect on one of these.
CANDIDATE_METRICS: tuple[str, ...] = ("q_d", "d_q", *MATCHING_METRICS)

_CANDIDATES_SQL = """
SELECT contrast, layer, head, metric, cohen_d, diff, mean_a, mean_b, p_holm, n_significant,
       row_number() OVER (PARTITION BY contrast ORDER BY cohen_d DESC, layer, head) AS rank
FROM (
    SELECT *,
           count(*) OVER (PARTITION BY contrast, layer, head) AS n_significant,
           row_number() OVER (PARTITION BY contrast, layer, head ORDER BY cohen_d DESC, metric) AS best
    FROM head_contrasts
    WHERE metric IN ({metrics}) AND p_holm < {alpha} AND cohen_d > 0
)
WHERE best = 1
"""


def candidates_sql(metrics: tuple[str, ...]) -> str:
    return _CANDIDATES_SQL.format(metrics=", ".join(f"'{m}'" for m in metrics), alpha=ALPHA)


# The ``matching_heads`` view: per contrast, one row per candidate matching head (see candidate_heads).
MATCHING_HEADS_SQL = candidates_sql(CANDIDATE_METRICS)  # the view: one row per candidate matching head and contrast

# Derived views: name -> (tables they need, SQL). Other modules add theirs with register_view.
VIEWS: dict[str, tuple[tuple[str, ...], str]] = {
    "head_attention_long": (
        ("head_attention",),
        "SELECT pair_id, layer, head, split_part(direction, '_', 1) AS src, split_part(direction, '_', 2) AS dst, mass "
        f"FROM (UNPIVOT head_attention ON {', '.join(DIRECTIONS)} INTO NAME direction VALUE mass)",
    ),
    "head_alignment": (
        ("svd",),
        "SELECT layer, head, sum(sigma * alignment) / sum(sigma) AS alignment_score, max(sigma) AS sigma_max, "
        "count(*) AS n_sigma FROM svd GROUP BY layer, head",
    ),
    "matching_heads": (("head_contrasts",), MATCHING_HEADS_SQL),
    "patching_agg": (
        ("patching_effects", "pairs"),
        "SELECT e.experiment, e.layer, e.head, e.component, e.segment, p.neg_type, p.grade, count(e.effect) AS n, "
        "avg(e.effect) AS mean_effect, stddev_samp(e.effect) AS sd_effect, count(*) - count(e.effect) AS n_null "
        "FROM patching_effects e JOIN pairs p USING (pair_id) GROUP BY ALL",
    ),
    "subspace_effects": (
        ("subspace_head_metrics", "head_attention"),
        f"SELECT s.condition_id, s.layer, s.head, s.metric, count(*) AS n, avg(s.value) AS mean, "
        f"avg(h.value) AS baseline, avg(s.value - h.value) AS delta, stddev_samp(s.value - h.value) AS sd_delta "
        f"FROM (UNPIVOT subspace_head_metrics ON {', '.join(METRICS)} INTO NAME metric VALUE value) s "
        f"JOIN (UNPIVOT (SELECT * FROM head_attention WHERE (layer, head) IN "
        f"(SELECT DISTINCT layer, head FROM subspace_head_metrics)) ON {', '.join(METRICS)} INTO NAME metric VALUE value) h "
        f"USING (pair_id, layer, head, metric) GROUP BY ALL",
    ),
}


def register_view(name: str, needs: tuple[str, ...], sql: str) -> None:
    VIEWS[name] = (needs, sql)


def _statements(run: Path) -> list[str]:
    run = Path(run).resolve()
    found = {name: layout.location(run, name) for name in TABLES}
    present = {name: where for name, where in found.items() if where is not None}
    out = [f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {layout.scan_sql(where, name)}"
           for name, where in present.items()]
    out += [f"CREATE OR REPLACE VIEW {name} AS {sql}" for name, (needs, sql) in VIEWS.items()
            if set(needs) <= set(present) and name not in present]
    return out


def is_stored(con, name: str) -> bool:
    """Whether ``name`` on a connection of :func:`connect` reads a table the run stores (not a derived view computing
    it, as ``subspace_effects`` in stores written before it was materialised)."""
    view = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = ? AND NOT internal", [name]).fetchone()
    if view is not None:
        return "read_parquet(" in view[0]  # a table's view (_statements); a derived view reads other views
    return bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name]).fetchone()[0])


def connect(run: Path | str, *, threads: int | None = None):
    """An in-memory DuckDB connection with the run's tables and views defined by name."""
    import duckdb

    con = duckdb.connect(config={"threads": threads} if threads else {})
    for stmt in _statements(Path(run)):
        con.execute(stmt)
    return con


def write_catalog(run: Path | str) -> Path:
    """Write ``atlas.duckdb`` holding the run's views, atomically (it holds no data, only views)."""
    import duckdb

    run = Path(run).resolve()
    target = run / CATALOG
    tmp = run / f".{CATALOG}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    # The oldest storage format that holds views: DuckDB CLIs older than this Python package open it too.
    con = duckdb.connect(str(tmp), config={"storage_compatibility_version": "v1.0.0"})
    try:
        for stmt in _statements(run):
            con.execute(stmt)
    finally:
        con.close()
    os.replace(tmp, target)
    return target


def _sql_str(s: str) -> str:
    return s.replace("'", "''")
