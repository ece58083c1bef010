"""The reader's DuckDB connections to one run, and what may run on one that takes a user's SQL text.

**The reading connection** (:func:`open_connection`): every table and view of the run by name
(:func:`precompute.store.connect.connect`), plus what makes the reader fast on large runs:

* ``head_attention_agg`` becomes an in-memory table when its file is small enough
  (``ATLAS_AGG_IN_MEMORY_MB``, default 2048): every head-level result aggregates it, and DuckDB scans
  memory about ten times faster than it decodes Parquet (a real run's is a few MB; the 10^8-row
  bench's ~0.9 GB in memory, ~2 s to load, once);
* Parquet footers are cached (``parquet_metadata_cache``): a query on one head or one pair reads the
  footer of its layer's file once per connection, then only the row groups its statistics select
  (``head_attention`` is one file per layer, sorted by head and pair_id: docs/store.md, Scale).

One connection serves a process: each query runs on a fresh ``cursor()`` of it (the app's sessions are threads).

**SQL text** (:meth:`matching_atlas.Run.sql` in a notebook; the app's SQL page runs the same checks in a worker
process per session, ``app.sql_worker``): :func:`check_select` lets exactly one SELECT through, and :func:`lock`
closes the connection it runs on: no file outside the run folder, no extension, no setting changed afterwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from matching_atlas.errors import error_text
from precompute.store.connect import connect
from precompute.store.sql import literal

AGG_IN_MEMORY_MB = float(os.environ.get("ATLAS_AGG_IN_MEMORY_MB", "2048"))
ALLOWED = "SELECT, WITH ... SELECT, FROM ..., VALUES, DESCRIBE, SHOW and SUMMARIZE"


class SqlRefused(ValueError):
    """SQL text that may not run on a run (one line, shown to the user); ``kind``: the statement type refused."""

    def __init__(self, message: str, kind: str = ""):
        super().__init__(message)
        self.kind = kind


def open_connection(run: Path | str, *, threads: int | None = None, agg_in_memory_mb: float | None = None):
    """The reading connection to one run (see the module doc)."""
    run = Path(run).resolve()
    con = connect(run, threads=threads)
    con.execute("SET parquet_metadata_cache = true")
    limit = AGG_IN_MEMORY_MB if agg_in_memory_mb is None else agg_in_memory_mb
    agg = run / "head_attention_agg.parquet"
    if agg.exists() and agg.stat().st_size <= limit * 1e6:
        # read through the view: an older store's view adds the columns it lacks (NULL, precompute.store.connect)
        con.execute("CREATE TABLE head_attention_agg_loaded AS SELECT * FROM head_attention_agg")
        con.execute("DROP VIEW IF EXISTS head_attention_agg")
        con.execute("ALTER TABLE head_attention_agg_loaded RENAME TO head_attention_agg")
    return con


def lock(con, folders: tuple[Path | str, ...]) -> None:
    """Close ``con`` for SQL text: files only inside ``folders`` (each with its separator, so a sibling ``<run>-all``
    stays out of reach), no other file, Python object or network (``enable_external_access = false``), no extension
    installed or loaded, and ``lock_configuration`` so that no statement can undo any of it. Settings the caller
    needs (memory, spill folder) are set before."""
    dirs = ", ".join(literal(str(Path(d)).rstrip("/") + "/") for d in folders)
    for setting in (
        f"SET allowed_directories = [{dirs}]",
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ):
        con.execute(setting)


def check_select(con, text: str) -> str:
    """``text`` if it is exactly one SELECT (``WITH``, ``FROM``-first, ``VALUES``, ``DESCRIBE``, ``SHOW``,
    ``SUMMARIZE`` are SELECTs to DuckDB) that ``json_serialize_sql`` accepts; SqlRefused (one line) otherwise.

    ``json_serialize_sql`` serialises plain SELECT trees only, so it refuses what DuckDB's Python API cannot tell
    apart by statement type (``EXPLAIN`` wraps any statement; ``PIVOT`` statements run several)."""
    import duckdb

    if not text or not text.strip():
        raise SqlRefused(f"enter a query ({ALLOWED})")
    try:
        kinds = [s.type for s in con.extract_statements(text)]
    except duckdb.Error as err:
        raise SqlRefused(error_text(err)) from err
    except ValueError as err:  # a statement type the Python API cannot name, e.g. UPDATE EXTENSIONS
        raise SqlRefused(f"this statement is not allowed here: the run is read-only ({ALLOWED} only)") from err
    if not kinds:
        raise SqlRefused(f"enter a query ({ALLOWED})")
    if len(kinds) > 1:
        raise SqlRefused("one statement at a time: remove the ';' between statements")
    if kinds[0] != duckdb.StatementType.SELECT:
        hint = " (PIVOT: write SELECT ... FROM t PIVOT (...))" if kinds[0].name == "MULTI" else ""
        raise SqlRefused(f"{kinds[0].name} statements are not allowed here: the run is read-only "
                         f"({ALLOWED} only){hint}", kinds[0].name)
    try:
        out = json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchall()[0][0])
    except (duckdb.Error, ValueError, TypeError) as err:
        raise SqlRefused(error_text(err)) from err
    if not isinstance(out, dict) or out.get("error") or len(out.get("statements") or []) != 1:
        raise SqlRefused(f"this statement is not allowed here: the run is read-only ({ALLOWED} only)")
    return text
