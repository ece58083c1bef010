"""The SQL page's engine, run inside a SQL session's worker process (``app.sql_worker``): decide whether a
visitor's text may run, run it on the worker's locked connection, and bring back a bounded result or one
line of error.

What may run is decided by construction, not by a list of bad words:

1. **Allow-list.** DuckDB's parser must read the text as exactly one statement of type ``SELECT``
   (``WITH``, ``FROM``-first, ``VALUES``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE`` are SELECTs), and
   ``json_serialize_sql`` must accept it: it serialises plain SELECT trees only, so it refuses what
   the Python API cannot tell apart (``EXPLAIN`` and ``EXPLAIN ANALYZE`` have one statement type, and
   the statement they wrap is not exposed), ``PIVOT`` statements (which run several statements), and
   every other kind. A statement type the API cannot even name (``UPDATE EXTENSIONS``: ``ValueError``)
   is refused the same way. Text longer than ``max_chars`` never reaches a parser (the server refuses it).
2. **EXPLAIN is a toggle, not text.** ``EXPLAIN`` / ``EXPLAIN ANALYZE`` are prefixed by the app to
   DuckDB's own rendering of the checked SELECT (``json_deserialize_sql``), which is checked again.
3. **Bounded results, by what they cost once converted.** Arrow batches of ``BATCH_ROWS`` rows are
   counted as they arrive and the fetch stops before the kept rows pass the row limit, ``max_bytes`` of
   Arrow data or ``max_cells`` values, where every element of a nested value counts (``cells``: a
   ``list<null>`` of 20,000 NULLs is 4 Arrow bytes and 20,000 Python objects once converted). The kept
   rows are then converted as the page shows them and the frame measured (``frame_bytes``: pandas' deep
   count plus the arrays, dicts and lists inside object cells, which pandas leaves out); rows are cut
   until it fits ``max_frame_bytes`` (``app.sql_results``). Only this display table leaves the worker.
4. **A time limit.** A timer interrupts the connection after ``timeout_s``; what DuckDB does not
   interrupt (a single-value function, the optimizer) is ended by the server killing the worker.
5. **One line per error.** Every exception (DuckDB, Arrow, pandas, Python) becomes :class:`SqlError`
   with a single line; a column pandas cannot hold is shown as text, or named in the error; running out
   of the worker's memory is :class:`SqlOutOfMemory`.

The connection's own locks (``app.sql_worker.open_sql``) are the second line: even a statement that got
past the allow-list could not read other files, load extensions or change settings.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass

import duckdb
import pandas as pd
import pyarrow as pa

from matching_atlas.connection import ALLOWED, SqlRefused, check_select
from matching_atlas.errors import error_text
from app.sql_results import ResultError, cells, displayable, frame_bytes, to_frame

DEFAULT_ROW_LIMIT = 10_000
MAX_ROW_LIMIT = 100_000
BATCH_ROWS = 256  # rows per fetched Arrow batch: the granularity of the byte and value caps
EXPLAIN_MODES = ("", "EXPLAIN", "EXPLAIN ANALYZE")
# What the worker needs besides DuckDB's memory_limit: the interpreter and the imported libraries (~210 MB
# of data mappings once the connection is open, measured), the result being bounded and converted, and slack.
WORKER_HEADROOM = 512 * 2**20
MIN_DUCKDB_MEMORY = 128 * 2**20
REPLY_SLACK = 2**20  # an Arrow IPC stream's schema and framing on top of the data's bytes
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str, name: str) -> int:
    """Bytes of a size written as DuckDB writes them ("1GB" = 10^9, "1GiB" = 2^30); ValueError naming ``name``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", text, flags=re.IGNORECASE)
    if not m or (m.group(2) or "").upper() not in _UNITS:
        raise ValueError(f"{name}: expected a size such as 1GB or 1536MB, got {text!r}")
    return int(float(m.group(1)) * _UNITS[(m.group(2) or "").upper()])


def show_size(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


@dataclass(frozen=True)
class SqlLimits:
    """The bounds of one SQL session: the server's from the environment (``ATLAS_SQL_TIMEOUT`` seconds,
    ``ATLAS_SQL_MEMORY``), smaller ones in tests.

    ``memory`` caps the worker process's data mappings (``RLIMIT_DATA``: DuckDB, Python, Arrow and pandas
    together); DuckDB's ``memory_limit`` is that less ``WORKER_HEADROOM``, so large queries spill before
    the cap. The server keeps at most ``server_bytes`` per session for its results (``app.connections``).
    """

    timeout_s: float = float(os.environ.get("ATLAS_SQL_TIMEOUT", "30"))
    memory: int = parse_size(os.environ.get("ATLAS_SQL_MEMORY", "1GiB"), "ATLAS_SQL_MEMORY")
    threads: int = max(1, min(2, (os.cpu_count() or 1) // 2))
    max_chars: int = 100_000
    max_bytes: int = 16 * 2**20  # Arrow bytes kept per result
    max_cells: int = 2_000_000  # values kept per result, nested elements included
    max_frame_bytes: int = 32 * 2**20  # the converted frame's size in memory

    @property
    def duckdb_memory(self) -> int:
        return max(MIN_DUCKDB_MEMORY, self.memory - WORKER_HEADROOM)

    @property
    def reply_bytes(self) -> int:
        """The largest result message a worker may send (the server refuses a longer one unread)."""
        return self.max_bytes + REPLY_SLACK

    @property
    def server_bytes(self) -> int:
        """What one session's result can cost the server: the received message and the frame made from it."""
        return self.reply_bytes + self.max_frame_bytes


class SqlError(Exception):
    """A statement the SQL page refuses, or the one-line error it ended with (shown to the user)."""


class SqlOutOfMemory(SqlError):
    """The statement needed more memory than its worker may use (the worker is restarted after it)."""


@dataclass
class SqlResult:
    frame: pd.DataFrame
    truncated: str  # "" when complete; else why rows are missing (row limit, byte, value or size cap), in words
    elapsed_s: float


@dataclass
class Bounded:
    """A result as the page will show it (unique names, columns pandas cannot hold as text), within the caps."""

    table: pa.Table
    truncated: str


def check(con, text: str) -> str:
    """The text if it is exactly one SELECT the reader lets run (:func:`matching_atlas.connection.check_select`);
    SqlError otherwise, with the page's plan toggle named for an EXPLAIN."""
    try:
        return check_select(con, text)
    except SqlRefused as err:
        hint = " (for a plan, write the SELECT and choose a plan under *Show*)" if err.kind == "EXPLAIN" else ""
        raise SqlError(f"{err}{hint}") from err


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
        raise SqlError(error_text(err)) from err
    return f"{explain} {check(con, rendered)}"


_OUT_OF_MEMORY = (duckdb.OutOfMemoryException, MemoryError, pa.ArrowMemoryError)


def _out_of_memory(err: BaseException | None) -> bool:
    """Whether ``err`` or an error it was raised from is an allocation that failed: one of the memory errors, or
    DuckDB's "Out of Memory Error" wherever it surfaces (a check of the statement may wrap it in a plain duckdb.Error
    or a SqlError without its cause)."""
    while err is not None:
        if isinstance(err, _OUT_OF_MEMORY) or str(err).startswith("Out of Memory Error"):
            return True
        err = err.__cause__
    return False


def execute(con, text: str, *, explain: str = "", limit: int = DEFAULT_ROW_LIMIT,
            limits: SqlLimits = SqlLimits()) -> Bounded:
    """Check and run ``text`` on a locked connection: its result as the page shows it, bounded (see the module doc)."""
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        con.interrupt()

    timer = threading.Timer(limits.timeout_s, stop)
    timer.start()
    try:
        sql = statement(con, text, explain)
        table, truncated = _fetch(con, sql, max(1, min(int(limit), MAX_ROW_LIMIT)), limits)
        return _as_shown(table, truncated, limits)
    except Exception as err:  # noqa: BLE001 - whatever DuckDB, Arrow or pandas raise, the page shows one line
        if timed_out.is_set():  # (an interrupt can surface as DuckDB's, Arrow's OSError or a SqlError of check)
            raise SqlError(f"the query ran longer than {limits.timeout_s:g} s and was stopped") from err
        if _out_of_memory(err):
            raise SqlOutOfMemory(f"the query needs more memory than a SQL session may use "
                                 f"({show_size(limits.memory)}): {error_text(err)}") from err
        if isinstance(err, SqlError):
            raise
        raise SqlError(str(err) if isinstance(err, ResultError) else error_text(err)) from err
    finally:
        timer.cancel()


def _fetch(con, sql: str, limit: int, limits: SqlLimits) -> tuple[pa.Table, str]:
    """At most ``limit`` rows, ``max_bytes`` Arrow bytes and ``max_cells`` values of ``sql``'s result, and why it
    stopped early."""
    reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
    try:
        batches, rows, size, count, truncated = [], 0, 0, 0, ""
        for batch in reader:
            if rows + batch.num_rows > limit:
                batch = batch.slice(0, limit - rows)
                truncated = f"cut at the row limit ({limit:,} rows)"
            if size + batch.nbytes > limits.max_bytes:
                batch = batch.slice(0, _rows_that_fit(batch, _nbytes, limits.max_bytes - size))
                truncated = _cut(rows + batch.num_rows, f"the result is over {limits.max_bytes / 2**20:.0f} MB")
            if count + cells(batch) > limits.max_cells:
                batch = batch.slice(0, _rows_that_fit(batch, cells, limits.max_cells - count))
                truncated = _cut(rows + batch.num_rows, f"the result is over {limits.max_cells:,} values "
                                                        "(each element of a list, map or struct counts)")
            batches.append(batch)
            rows, size, count = rows + batch.num_rows, size + batch.nbytes, count + cells(batch)
            if truncated:
                break
        return pa.Table.from_batches(batches, schema=reader.schema), truncated
    finally:
        reader.close()


def _cut(rows: int, why: str) -> str:
    return f"cut at {rows:,} rows: {why}; add a LIMIT or select fewer or smaller columns"


def _nbytes(batch: pa.RecordBatch) -> int:
    return batch.nbytes


def _rows_that_fit(batch: pa.RecordBatch, measure, budget: int) -> int:
    """The most leading rows of ``batch`` whose ``measure`` stays within ``budget`` (bisection on slices)."""
    lo, hi = 0, batch.num_rows
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if measure(batch.slice(0, mid)) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _as_shown(table: pa.Table, truncated: str, limits: SqlLimits) -> Bounded:
    """``table`` made displayable, its leading rows cut until it fits ``max_bytes`` (text can be larger than
    what it replaced) and its frame fits ``max_frame_bytes``."""
    shown, frame = displayable(table)
    for _ in range(8):
        size = frame_bytes(frame)
        if size <= limits.max_frame_bytes and shown.nbytes <= limits.max_bytes:
            return Bounded(shown, truncated)
        keep = int(shown.num_rows * 0.9 * min(limits.max_frame_bytes / max(size, 1),
                                              limits.max_bytes / max(shown.nbytes, 1)))
        why = (f"the result is over {limits.max_bytes / 2**20:.0f} MB as text" if shown.nbytes > limits.max_bytes
               else f"the result takes over {limits.max_frame_bytes / 2**20:.0f} MB as a table")
        shown = shown.slice(0, keep)
        frame = to_frame(shown)
        truncated = _cut(keep, why)
    raise SqlError(f"the result takes over {limits.max_frame_bytes / 2**20:.0f} MB as a table even when cut: "
                   "select fewer or smaller columns")
