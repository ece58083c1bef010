"""The SQL page's engine: decide whether a visitor's text may run, run it on the session's locked
connection (``app.connections``), and bring back a bounded result or one line of error.

What may run is decided by construction, not by a list of bad words:

1. **Allow-list.** DuckDB's parser must read the text as exactly one statement of type ``SELECT``
   (``WITH``, ``FROM``-first, ``VALUES``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE`` are SELECTs), and
   ``json_serialize_sql`` must accept it: it serialises plain SELECT trees only, so it refuses what
   the Python API cannot tell apart (``EXPLAIN`` and ``EXPLAIN ANALYZE`` have one statement type, and
   the statement they wrap is not exposed), ``PIVOT`` statements (which run several statements), and
   every other kind. A statement type the API cannot even name (``UPDATE EXTENSIONS``: ``ValueError``)
   is refused the same way.
2. **EXPLAIN is a toggle, not text.** ``EXPLAIN`` / ``EXPLAIN ANALYZE`` are prefixed by the app to
   DuckDB's own rendering of the checked SELECT (``json_deserialize_sql``), which is checked again.
3. **Bounded results.** At most ``limit`` rows are kept and the Arrow batches are counted as they
   arrive (``BATCH_ROWS`` rows each): the fetch stops before the kept data passes ``MAX_RESULT_BYTES``,
   with a message. Nothing is cached but the session's last result, which lives in its (capped) slot.
4. **A time limit.** A watchdog interrupts the session's own connection after ``timeout_s``.
5. **One line per error.** Every exception (DuckDB, Arrow, pandas, Python) becomes :class:`SqlError`
   with a single line; a column pandas cannot hold is shown as text, or named in the error.

The connection's own locks (``app.connections``) are the second line: even a statement that got
past the allow-list could not read other files, load extensions or change settings.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import duckdb
import pandas as pd
import pyarrow as pa

from app.connections import SQL_SESSIONS, SqlBusy, SqlSessions, session_id
from app.errors import one_line
from app.runs import RunInfo

DEFAULT_ROW_LIMIT = 10_000
MAX_ROW_LIMIT = 100_000
MAX_RESULT_BYTES = 16 * 2**20  # Arrow bytes kept per result (a pandas copy of it is a small multiple)
BATCH_ROWS = 256  # rows per fetched Arrow batch: the granularity of the byte cap
TIMEOUT_S = 30.0
EXPLAIN_MODES = ("", "EXPLAIN", "EXPLAIN ANALYZE")
ALLOWED = "SELECT, WITH ... SELECT, FROM ..., VALUES, DESCRIBE, SHOW and SUMMARIZE"


class SqlError(Exception):
    """A statement the SQL page refuses, or the one-line error it ended with (shown to the user)."""


@dataclass
class SqlResult:
    frame: pd.DataFrame
    truncated: str  # "" when complete; else why rows are missing (row limit, byte cap), in words
    elapsed_s: float


def check(con, text: str) -> str:
    """The text if it is exactly one SELECT that ``json_serialize_sql`` accepts; SqlError otherwise."""
    if not text or not text.strip():
        raise SqlError(f"enter a query ({ALLOWED})")
    try:
        statements = con.extract_statements(text)
        kinds = [s.type for s in statements]
    except duckdb.Error as err:
        raise SqlError(one_line(err)) from err
    except ValueError as err:  # a statement type the Python API cannot name, e.g. UPDATE EXTENSIONS
        raise SqlError(f"this statement is not allowed here: the SQL page is read-only ({ALLOWED} only)") from err
    if not kinds:
        raise SqlError(f"enter a query ({ALLOWED})")
    if len(kinds) > 1:
        raise SqlError("one statement at a time: remove the ';' between statements")
    if kinds[0] != duckdb.StatementType.SELECT:
        hint = {"EXPLAIN": " (for a plan, write the SELECT and choose a plan under *Show*)",
                "MULTI": " (PIVOT: write SELECT ... FROM t PIVOT (...))"}.get(kinds[0].name, "")
        raise SqlError(f"{kinds[0].name} statements are not allowed here: the SQL page is read-only "
                       f"({ALLOWED} only){hint}")
    if _serialized(con, text).get("error"):
        raise SqlError(f"this statement is not allowed here: the SQL page is read-only ({ALLOWED} only)")
    return text


def _serialized(con, text: str) -> dict:
    try:
        out = json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchall()[0][0])
    except (duckdb.Error, ValueError, TypeError) as err:
        raise SqlError(one_line(err)) from err
    if not isinstance(out, dict) or (not out.get("error") and len(out.get("statements") or []) != 1):
        return {"error": True}
    return out


def statement(con, text: str, explain: str = "") -> str:
    """What runs for ``text``: the checked text itself, or ``EXPLAIN [ANALYZE]`` + DuckDB's rendering of it."""
    text = check(con, text)
    if explain not in EXPLAIN_MODES:
        raise SqlError(f"unknown plan mode {explain!r}")
    if not explain:
        return text
    try:
        rendered = con.execute("SELECT json_deserialize_sql(json_serialize_sql(?))", [text]).fetchall()[0][0]
    except duckdb.Error as err:
        raise SqlError(one_line(err)) from err
    return f"{explain} {check(con, rendered)}"


def execute(con, text: str, *, explain: str = "", limit: int = DEFAULT_ROW_LIMIT, timeout_s: float = TIMEOUT_S,
            max_bytes: int = MAX_RESULT_BYTES) -> SqlResult:
    """Check and run ``text`` on a locked connection; the result is bounded in rows and bytes (see the module doc)."""
    sql = statement(con, text, explain)
    limit = max(1, min(int(limit), MAX_ROW_LIMIT))
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        con.interrupt()

    timer = threading.Timer(timeout_s, stop)
    start = time.perf_counter()
    timer.start()
    try:
        table, truncated = _fetch(con, sql, limit, max_bytes)
    except duckdb.InterruptException as err:
        if timed_out.is_set():
            raise SqlError(f"the query ran longer than {timeout_s:.0f} s and was stopped") from err
        raise SqlError("the query was interrupted (a newer query of this session replaced it)") from err
    except SqlError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever DuckDB or Arrow raise, the page shows one line
        raise SqlError(one_line(err)) from err
    finally:
        timer.cancel()
    try:
        frame = to_frame(table)
    except SqlError:
        raise
    except Exception as err:  # noqa: BLE001
        raise SqlError(one_line(err)) from err
    return SqlResult(frame, truncated, time.perf_counter() - start)


def _fetch(con, sql: str, limit: int, max_bytes: int) -> tuple[pa.Table, str]:
    """At most ``limit`` rows and ``max_bytes`` Arrow bytes of ``sql``'s result, and why it stopped early."""
    reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
    try:
        batches, rows, size, truncated = [], 0, 0, ""
        for batch in reader:
            if rows + batch.num_rows > limit:
                batch = batch.slice(0, limit - rows)
                truncated = f"cut at the row limit ({limit:,} rows)"
            if size + batch.nbytes > max_bytes:
                batch = batch.slice(0, _rows_that_fit(batch, max_bytes - size))
                truncated = (f"cut at {rows + batch.num_rows:,} rows: the result is over {max_bytes / 2**20:.0f} MB; "
                             "add a LIMIT or select fewer or smaller columns")
            batches.append(batch)
            rows, size = rows + batch.num_rows, size + batch.nbytes
            if truncated:
                break
        return pa.Table.from_batches(batches, schema=reader.schema), truncated
    finally:
        reader.close()


def _rows_that_fit(batch: pa.RecordBatch, budget: int) -> int:
    """The most leading rows of ``batch`` whose Arrow bytes stay within ``budget`` (bisection on slices)."""
    lo, hi = 0, batch.num_rows
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if batch.slice(0, mid).nbytes <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def unique_names(names: list[str]) -> list[str]:
    """Column names made unique with ``_1``, ``_2``... suffixes that collide with no other name."""
    taken: set[str] = set()
    original = set(names)
    out = []
    for name in names:
        candidate, k = name, 0
        while candidate in taken or (k and candidate in original):
            k += 1
            candidate = f"{name}_{k}"
        taken.add(candidate)
        out.append(candidate)
    return out


def to_frame(table: pa.Table) -> pd.DataFrame:
    """A DataFrame of the result; a column pandas cannot hold (a union, a date out of range) is shown as text."""
    names = unique_names([str(n) for n in table.column_names])
    columns = {}
    for name, column in zip(names, table.columns):
        try:
            columns[name] = column.to_pandas()
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            try:
                columns[name] = column.cast(pa.string()).to_pandas()
            except (pa.ArrowException, ValueError, TypeError, OverflowError) as err:
                raise SqlError(f"column {name!r} ({column.type}) cannot be shown: cast it in the query, "
                               f"e.g. {name}::VARCHAR ({one_line(err)})") from err
    return pd.DataFrame(columns, index=pd.RangeIndex(table.num_rows))


def run_sql(run: RunInfo, text: str, *, explain: str = "", limit: int = DEFAULT_ROW_LIMIT,
            sessions: SqlSessions = SQL_SESSIONS, session: str | None = None) -> SqlResult:
    """What the SQL page calls: ``text`` on this browser session's connection to ``run``, its last result reused.

    Raises SqlError (refused, failed, or no connection free) with one line for the page.
    """
    key = (text, explain, int(limit))
    try:
        with sessions.session(session or session_id(), run) as slot:
            if slot.last is not None and slot.last[0] == key:
                return slot.last[1]
            slot.last = None
            result = execute(slot.con, text, explain=explain, limit=limit)
            slot.last = (key, result)
            return result
    except SqlBusy as err:
        raise SqlError(str(err)) from err
    except SqlError:
        raise
    except Exception as err:  # noqa: BLE001 - opening the session's connection failed: one line
        raise SqlError(one_line(err)) from err
