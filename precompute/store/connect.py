"""Open a run folder as DuckDB tables and views, by name.

``connect(run)`` gives an in-memory DuckDB connection where every finished table of the run is
a view named after it (``pairs``, ``head_attention``, ...) plus the derived views declared in
``VIEWS``. A partitioned table (``head_attention``: one file per layer) is one view over its folder, read with
``hive_partitioning`` so that a query on some layers opens only their files; a store of the older one-file layout
gets the same view over its file (:mod:`precompute.store.layout`). A derived view is defined only where the run does
not store a table of its name (``subspace_effects``: stored by the job since it is materialised, computed in
older stores). ``write_catalog(run)`` saves the same views into ``<run>/atlas.duckdb`` (absolute
paths) so the DuckDB CLI reaches them from any working directory::

    duckdb -readonly data/store/dl20__minilm-l6-msmarco-ce/atlas.duckdb -c "SELECT count(*) FROM pairs"

Stores of schema version 5 and older hold pooled pair-level head_contrasts (a Mann-Whitney p in ``p``): their
``head_contrasts`` view has this version's columns, the query-level ones NULL and that p as ``pooled_p``, so no
star is ever drawn from a pooled test.

Stores of schema version 6 and older lack the value-weighted shares (``vw_<src>_<dst>``, schema 7): their
``head_attention``, ``head_attention_agg`` and ``subspace_head_metrics`` views have those columns NULL. Stores of
schema version 7 and older lack ``patching_summary.n_null`` and ``.sd`` (schema 8): their view has them NULL, and the
reader computes those moments from ``patching_effects`` instead. Stores of schema version 8 and older lack
``head_attention_totals`` (schema 9): their view of that name sums ``head_attention_agg`` over queries (the same
query the job stores it with, :func:`totals_sql`).

Stores of schema versions 1 and 2 lack the condition parts of schema 3 (``kind``, ``analysis``, ``component``,
``segment``, ``k``, ...) as columns: here, and only here, their ``ablation_conditions``, ``ablation_summary`` and
``ablation_metrics`` views get those columns, each condition's parts parsed from its stored id by its registered kind
(:mod:`precompute.conditions`; legacy ids such as ``mlp:d@3/mean`` included), so every reader sees one schema. The
stored ids are kept as they are.

Stores of schema version 3 lack ``alignments`` (aligned QK subspaces, schema 4): their ``ablation_conditions`` and
``ablation_summary`` views get it as NULL.

Stores of schema versions 1 to 3 hold exact patching rows without ``method`` whose ``resid`` was a layer's
output: here, and only here, their ``patching_effects`` view reads them as exact rows of the same activation under
this version's names (``resid`` of the next layer, ``resid_post`` of the last), and their ``patching_pairs`` view
gains the columns of version 4 (the query from ``pairs``, NULL for how each input was built).
"""

from __future__ import annotations

import os
from pathlib import Path

from precompute.metrics import MATCHING_METRICS, METRICS, VALUE_WEIGHTED_METRICS
from precompute.names import DIRECTIONS
from precompute.statistics import ALPHA, MIN_QUERIES
from precompute.store import layout
from precompute.store.schema import TABLES, duck_type
from precompute.store.sql import literal

CATALOG = "atlas.duckdb"

# Metrics that measure query-document interaction: a matching head shows its effect on one of these.
CANDIDATE_METRICS: tuple[str, ...] = ("q_d", "d_q", *MATCHING_METRICS)

_CANDIDATES_SQL = """
SELECT contrast, layer, head, metric, n_queries, effect, effect_low, effect_high, effect_dz, p_holm, n_significant,
       row_number() OVER (PARTITION BY contrast ORDER BY effect_dz DESC, layer, head) AS rank
FROM (
    SELECT *,
           count(*) OVER (PARTITION BY contrast, layer, head) AS n_significant,
           row_number() OVER (PARTITION BY contrast, layer, head ORDER BY effect_dz DESC, metric) AS best
    FROM head_contrasts
    WHERE metric IN ({metrics}) AND n_queries >= {min_queries} AND p_holm < {alpha} AND effect > 0
)
WHERE best = 1
"""


def candidates_sql(metrics: tuple[str, ...]) -> str:
    return _CANDIDATES_SQL.format(metrics=", ".join(f"'{m}'" for m in metrics), alpha=ALPHA, min_queries=MIN_QUERIES)


# The ``matching_heads`` view: per contrast, one row per candidate matching head (see candidate_heads).
MATCHING_HEADS_SQL = candidates_sql(CANDIDATE_METRICS)  # the view: one row per candidate matching head and contrast


def totals_sql(source: str) -> str:
    """``head_attention_totals`` from the head_attention_agg rows of ``source`` (a table or view name): the job stores
    it from this query (precompute.stages.summary_stage) and stores of schema 8 and older get it as a view."""
    totals = TABLES["head_attention_totals"]
    keys = list(totals.sort_key)
    sums = ", ".join(f'CAST(sum("{c.name}") AS {duck_type(c.type)}) AS "{c.name}"' for c in totals.columns
                     if c.name not in keys)
    return f"SELECT {', '.join(keys)}, {sums} FROM {source} GROUP BY {', '.join(keys)}"


# Derived views: name -> (tables they need, SQL).
VIEWS: dict[str, tuple[tuple[str, ...], str]] = {
    "head_attention_totals": (("head_attention_agg",), totals_sql("head_attention_agg")),
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
        "SELECT e.experiment, e.method, e.layer, e.head, e.component, e.segment, p.neg_type, p.grade, count(e.effect) AS n, "
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


def _statements(run: Path) -> list[str]:
    run = Path(run).resolve()
    found = {name: layout.location(run, name) for name in TABLES}
    present = {name: where for name, where in found.items() if where is not None}
    tables = {name: f"SELECT * FROM {layout.scan_sql(where, name)}" for name, where in present.items()}
    tables.update(_condition_part_views(run, list(present)))
    tables.update(_patching_views(run, list(present)))
    tables.update(_contrasts_view(run, list(present)))
    tables.update(_added_column_views(present))
    out = [f"CREATE OR REPLACE VIEW {name} AS {sql}" for name, sql in tables.items()]
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


_CONDITIONS, _PART_MARK = "ablation_conditions", "component"  # a schema-3 ablation_conditions has this column


def _condition_part_views(run: Path, present: list[str]) -> dict[str, str]:
    """For a store of schema 1 or 2 (its ablation_conditions lacks the part columns): ablation_conditions with every
    part parsed from the stored ids, and ablation_summary and ablation_metrics with their condition columns taken from
    it, each with the columns of schema 3 in their order. {} for a store of schema 3 or without ablations."""
    import duckdb

    if _CONDITIONS not in present:
        return {}
    path = literal(run / f"{_CONDITIONS}.parquet")
    con = duckdb.connect()
    try:
        if con.execute(f"SELECT count(*) FROM parquet_schema({path}) WHERE name = '{_PART_MARK}'").fetchone()[0]:
            return _alignments_views(con, run, present)
        cursor = con.execute(f"SELECT * FROM read_parquet({path}) ORDER BY condition_id")
        names = [d[0] for d in cursor.description]
        stored = [dict(zip(names, values)) for values in cursor.fetchall()]
    finally:
        con.close()
    views = {_CONDITIONS: _values_sql(TABLES[_CONDITIONS], [_legacy_parts(row) for row in stored])}
    parts = set(TABLES[_CONDITIONS].column_names) - {"condition_id"}
    for name in ("ablation_summary", "ablation_metrics"):
        if name in present:
            table = TABLES[name]
            columns = ", ".join(f"{'c' if col in parts else 's'}.{col}" for col in table.column_names)
            views[name] = (f"SELECT {columns} FROM read_parquet({literal(run / f'{name}.parquet')}) s "
                           f"JOIN {_CONDITIONS} c USING (condition_id) ORDER BY "
                           + ", ".join(f"s.{k}" for k in table.sort_key))
    return views


def _alignments_views(con, run: Path, present: list[str]) -> dict[str, str]:
    """For a store of schema 3 (condition parts as columns, before ``alignments``): ablation_conditions and
    ablation_summary with a NULL ``alignments`` column in its schema-4 place. {} for a current store."""
    views = {}
    for name in ("ablation_conditions", "ablation_summary"):
        if name not in present:
            continue
        path = literal(run / f"{name}.parquet")
        if con.execute(f"SELECT count(*) FROM parquet_schema({path}) WHERE name = 'alignments'").fetchone()[0]:
            continue
        columns = ", ".join("CAST(NULL AS FLOAT[]) AS alignments" if c == "alignments" else c
                            for c in TABLES[name].column_names)
        views[name] = f"SELECT {columns} FROM read_parquet({path})"
    return views


def _legacy_parts(row: dict) -> dict:
    """The schema-3 ablation_conditions row of a stored schema-1/2 row: its parts parsed from the id by the kind it
    was stored with, the stored id, kind and directions kept. A row no kind reads keeps what was stored."""
    from precompute.conditions import AblationSpecError, Condition, analysis_of

    try:
        parts = Condition.from_row(row).row()
    except (AblationSpecError, KeyError):
        parts = {**dict.fromkeys(TABLES[_CONDITIONS].column_names), **row}
        try:
            parts["analysis"] = analysis_of(row["kind"])
        except KeyError:
            parts["analysis"] = None
    return {**parts, "condition_id": row["condition_id"], "kind": row["kind"], "directions": row["directions"]}


def _values_sql(table, rows: list[dict]) -> str:
    """A SELECT of ``rows`` as literal values, typed and named as ``table``'s columns (a view that holds its data)."""
    import duckdb
    import pyarrow as pa

    names = table.column_names
    types = duckdb.from_arrow(pa.Table.from_pylist([], schema=table.schema)).types
    values = ", ".join("(" + ", ".join(_literal(r[c]) for c in names) + ")" for r in rows) or \
        "(" + ", ".join("NULL" for _ in names) + ")"
    columns = ", ".join(f"CAST(v{i} AS {t}) AS {c}" for i, (c, t) in enumerate(zip(names, types)))
    return (f"SELECT {columns} FROM (VALUES {values}) t({', '.join(f'v{i}' for i in range(len(names)))})"
            + ("" if rows else " WHERE false"))


def _literal(value) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        return literal(value)
    return repr(value)


def _columns(path: Path) -> set[str]:
    import pyarrow.parquet as pq

    return set(pq.read_schema(path).names)


# Columns added to existing tables after their first version, which an older store reads as NULL: name -> columns.
# Schema 7: the value-weighted shares; schema 8: patching_summary's pair-level moments (n_null, sd).
_ADDED_COLUMNS = {
    "head_attention": VALUE_WEIGHTED_METRICS,
    "subspace_head_metrics": VALUE_WEIGHTED_METRICS,
    "head_attention_agg": tuple(f"{m}_{part}" for part in ("sum", "sumsq") for m in VALUE_WEIGHTED_METRICS),
    "patching_summary": ("n_null", "sd"),
}


def _added_column_views(present: dict[str, Path]) -> dict[str, str]:
    """The tables of an older store that lack columns added since (``_ADDED_COLUMNS``), with them NULL (module
    docstring); {} for a current store."""
    views = {}
    for name, columns in _ADDED_COLUMNS.items():
        if name not in present:
            continue
        stored = _columns(layout.files_in(present[name], name)[0])
        missing = [c for c in columns if c not in stored]
        if missing:
            types = {c.name: c.type for c in TABLES[name].columns}
            nulls = ", ".join(f"CAST(NULL AS {duck_type(types[c])}) AS {c}" for c in missing)
            views[name] = f"SELECT *, {nulls} FROM {layout.scan_sql(present[name], name)}"
    return views


def _contrasts_view(run: Path, present: list[str]) -> dict[str, str]:
    """head_contrasts of a store of schema version 5 or older in this version's form (module docstring); {} for a
    current store or one without the table."""
    if "head_contrasts" not in present or "n_queries" in _columns(run / "head_contrasts.parquet"):
        return {}
    path = literal(run / "head_contrasts.parquet")
    nulls = ", ".join(f"CAST(NULL AS {t}) AS {c}" for c, t in (
        ("n_queries", "INTEGER"), ("effect", "DOUBLE"), ("effect_low", "DOUBLE"), ("effect_high", "DOUBLE"),
        ("effect_dz", "DOUBLE"), ("t", "DOUBLE"), ("p", "DOUBLE"), ("p_holm", "DOUBLE"), ("n_resamples", "INTEGER")))
    return {"head_contrasts": f"SELECT layer, head, metric, contrast, {nulls}, n_a, n_b, mean_a, mean_b, diff, cohen_d, u, "
                              f"p AS pooled_p FROM read_parquet({path})"}


def _patching_views(run: Path, present: list[str]) -> dict[str, str]:
    """patching_effects and patching_pairs of a store of schema version 3 or older in this version's form (module
    docstring); {} for a current store or one without patching."""
    if "patching_effects" not in present or "method" in _columns(run / "patching_effects.parquet"):
        return {}
    effects = literal(run / "patching_effects.parquet")
    import pyarrow.parquet as pq

    last = max(pq.read_table(run / "patching_effects.parquet", columns=["layer"]).column(0).to_pylist())
    views = {"patching_effects": (
        "SELECT experiment, 'exact' AS method, patch_id, pair_id, "
        f"CAST(CASE WHEN component = 'resid' AND layer < {last} THEN layer + 1 ELSE layer END AS TINYINT) AS layer, "
        f"head, CASE WHEN component = 'resid' AND layer = {last} THEN 'resid_post' ELSE component END AS component, "
        f"segment, clean, corrupted, patched, effect, CAST(NULL AS FLOAT) AS graddrop FROM read_parquet({effects})")}
    if "patching_pairs" in present and "pairs" in present:
        pairs = literal(run / "patching_pairs.parquet")
        views["patching_pairs"] = (
            "SELECT pp.experiment, pp.patch_id, pp.pair_id, pp.clean_pair_id, p.qid, pp.term, pp.filler, "
            "CAST(NULL AS VARCHAR) AS clean_insert, CAST(NULL AS VARCHAR) AS corrupted_insert, "
            "CAST(NULL AS VARCHAR) AS rule, CAST(NULL AS FLOAT) AS similarity "
            f"FROM read_parquet({pairs}) pp JOIN read_parquet({literal(run / 'pairs.parquet')}) p "
            "USING (pair_id) ORDER BY pp.experiment, pp.patch_id")
    return views
