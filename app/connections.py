"""Every DuckDB connection the app opens, in one place. There are two kinds.

**The run connection** (``open_run``, shared): one per run and server process, kept by
``st.cache_resource``; each page query runs on a fresh ``cursor()`` of it (sessions run in threads).
Only the app's own SQL (``app.queries``) runs on it. It starts from ``precompute.store.connect.connect``
(every table and view by name) and adds what makes the pages fast on large runs:

* ``head_attention_agg`` becomes an in-memory table when its file is small enough
  (``ATLAS_AGG_IN_MEMORY_MB``, default 2048): every head-level page aggregates it, and DuckDB scans
  memory about ten times faster than it decodes Parquet (a real run's is a few MB; the 10^8-row
  bench's ~0.9 GB in memory, ~2 s to load, once);
* ``atlas_layout`` (one row) and the view ``head_attention_rows`` (head_attention with its
  ``file_row_number``): when head_attention holds every pair on every head, sorted by (layer, head,
  pair_id) as the store guarantees, the row of (layer, head, pair) is ``(layer * heads + head) * pairs
  + pair`` and one pair's summaries are read from the few row groups that hold them
  (``app.pair_queries`` checks what it reads and falls back otherwise).

**The SQL sessions** (``SqlSessions``, one per browser session): the SQL page runs a visitor's text
in a worker process per session (``app.sql_worker``), never in the server: there it is bounded by the
operating system in memory (``ATLAS_SQL_MEMORY`` per worker) and in time (the worker is killed a
moment after the time limit if DuckDB did not stop), on its own locked connection (``open_sql``:
cursors of one connection share one catalog, so a statement that got through on one session could
otherwise change what every other session sees). :class:`SqlSessions` holds at most
``MAX_SQL_SESSIONS`` of them: a new session takes the slot of the least recently used idle one (its
worker is stopped; that session gets a fresh one on its next query), and is refused with a message
while every slot is running a query. ``run_sql`` is what the SQL page calls; what may run and how a
result is bounded is decided by ``app.sql_console`` inside the worker.

**Memory budget.** The server keeps per SQL session its last result (at most
``SqlLimits.server_bytes``: the received Arrow stream and the frame, 49 MiB), so SQL adds at most
``MAX_SQL_SESSIONS x 49 MiB`` (392 MiB for 8) to the server; outside it, each worker's data mappings
are capped at ``ATLAS_SQL_MEMORY`` (8 x 1 GB) and the spawner they are forked from takes ~150 MB.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import streamlit as st

from app.errors import one_line
from app.runs import RunInfo
from app.sql_console import DEFAULT_ROW_LIMIT, SqlError, SqlLimits, SqlResult
from app.sql_worker import SqlWorker
from precompute.store.connect import connect
from precompute.store.sql import literal

AGG_IN_MEMORY_MB = float(os.environ.get("ATLAS_AGG_IN_MEMORY_MB", "2048"))
THREADS = max(1, min(4, os.cpu_count() or 1))

MAX_SQL_SESSIONS = int(os.environ.get("ATLAS_SQL_SESSIONS", "8"))


# -- the run connection of the pages ----------------------------------------------------------------
def open_run(run: Path | str, *, threads: int | None = None, agg_in_memory_mb: float | None = None):
    """The pages' connection to one run (see the module doc); no Streamlit here, the bench opens it the same way."""
    run = Path(run).resolve()
    con = connect(run, threads=threads)
    con.execute("SET parquet_metadata_cache = true")
    limit = AGG_IN_MEMORY_MB if agg_in_memory_mb is None else agg_in_memory_mb
    agg = run / "head_attention_agg.parquet"
    if agg.exists() and agg.stat().st_size <= limit * 1e6:
        con.execute("DROP VIEW IF EXISTS head_attention_agg")
        con.execute(f"CREATE TABLE head_attention_agg AS SELECT * FROM read_parquet({literal(agg)})")
    ha = run / "head_attention.parquet"
    if ha.exists() and (run / "pairs.parquet").exists():
        con.execute(f"CREATE OR REPLACE VIEW head_attention_rows AS SELECT *, file_row_number AS row_number "
                    f"FROM read_parquet({literal(ha)}, file_row_number = true)")
        rows = con.execute(f"SELECT num_rows FROM parquet_file_metadata({literal(ha)})").fetchone()[0] or 0
        pairs, max_id = con.execute("SELECT count(*), max(pair_id) FROM pairs").fetchone()
        layers, heads = con.execute("SELECT max(layer) + 1, max(head) + 1 FROM head_attention_agg").fetchone()
        dense = bool(pairs and layers and heads and rows == layers * heads * pairs and max_id == pairs - 1)
        con.execute("CREATE OR REPLACE TABLE atlas_layout AS SELECT ? AS layers, ? AS heads, ? AS pairs, ? AS dense",
                    [int(layers or 0), int(heads or 0), int(pairs or 0), dense])
    return con


@st.cache_resource(max_entries=6, show_spinner="Opening the run ...")
def _run_connection(path: str, token: str):
    return open_run(path, threads=THREADS)


@contextmanager
def run_cursor(path: str, token: str) -> Iterator[Any]:
    """A fresh cursor of the shared connection to the run at ``path`` (version ``token``), closed afterwards."""
    cur = _run_connection(path, token).cursor()
    try:
        yield cur
    finally:
        cur.close()


# -- the SQL page's sessions ------------------------------------------------------------------------
class SqlBusy(Exception):
    """No SQL session can be given to this browser session now (message shown to the user)."""


@dataclass
class _Slot:
    run_key: str
    run_path: Path
    spill: Path
    limits: SqlLimits
    busy: threading.Lock = field(default_factory=threading.Lock)
    worker: SqlWorker | None = None
    last: Any = None  # the session's last (key, SqlResult): a rerun of the page shows it again

    def run(self, text: str, explain: str, limit: int) -> SqlResult:
        """``text`` on this session's worker, started afresh when there is none or the last one was stopped."""
        if self.worker is None or not self.worker.alive:
            if self.worker is not None:
                self.worker.close()
                self.worker = None
            shutil.rmtree(self.spill, ignore_errors=True)  # what a stopped worker spilled goes with it
            self.spill.mkdir()
            self.worker = SqlWorker(self.run_path, self.spill, self.limits)
        return self.worker.run(text, explain, limit)

    def interrupt(self) -> None:
        if self.worker is not None:
            self.worker.stop("replaced")

    def close(self) -> None:
        try:
            if self.worker is not None:
                self.worker.close()
        finally:
            shutil.rmtree(self.spill, ignore_errors=True)


class SqlSessions:
    """At most ``limit`` SQL sessions (a worker each), one per browser session (see the module doc)."""

    def __init__(self, limit: int = MAX_SQL_SESSIONS, *, limits: SqlLimits = SqlLimits()):
        self.limit = max(1, int(limit))
        self.limits = limits
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # least recently used first
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def server_bytes(self) -> int:
        """The most memory the results of these sessions can hold in the server."""
        return self.limit * self.limits.server_bytes

    @contextmanager
    def session(self, session_id: str, run: RunInfo) -> Iterator[_Slot]:
        """The session's slot (its worker on ``run`` and its last result), held for one query.

        A query still running for the same session (the page was rerun meanwhile) is stopped first.
        """
        slot = self._acquire(session_id, run)
        try:
            yield slot
        finally:
            slot.busy.release()

    def _acquire(self, session_id: str, run: RunInfo) -> _Slot:
        for _ in range(3):
            with self._lock:
                slot = self._slots.get(session_id)
                if slot is None:
                    return self._open(session_id, run)
                if slot.busy.acquire(blocking=False):
                    if slot.run_key == run.key:
                        self._slots.move_to_end(session_id)
                        return slot
                    del self._slots[session_id]  # the session switched runs: a worker on the new one
                    slot.close()
                    slot.busy.release()
                    return self._open(session_id, run)
            slot.interrupt()  # this session's previous query: stop it, then take the slot
            if slot.busy.acquire(timeout=10):
                slot.busy.release()
        raise SqlBusy("the previous query of this session is still stopping: try again in a moment")

    def _open(self, session_id: str, run: RunInfo) -> _Slot:
        """A new slot for the session, already held (called with the registry lock); its worker starts with its
        first query."""
        if len(self._slots) >= self.limit:
            self._evict()
        slot = _Slot(run.key, Path(run.path), Path(tempfile.mkdtemp(prefix="atlas-sql-")), self.limits)
        slot.busy.acquire()
        self._slots[session_id] = slot
        return slot

    def _evict(self) -> None:
        """Close the least recently used idle slot; refuse when every slot is running a query."""
        for sid, slot in list(self._slots.items()):
            if slot.busy.acquire(blocking=False):
                del self._slots[sid]
                slot.close()
                slot.busy.release()
                return
        raise SqlBusy(f"all {self.limit} SQL sessions of this server are running a query: try again in a moment")

    def close_all(self) -> None:
        with self._lock:
            while self._slots:
                self._slots.popitem(last=False)[1].close()


SQL_SESSIONS = SqlSessions()
atexit.register(SQL_SESSIONS.close_all)


def session_id() -> str:
    """The browser session running this script (Streamlit's id; one per tab)."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else "no-session"


def run_sql(run: RunInfo, text: str, *, explain: str = "", limit: int = DEFAULT_ROW_LIMIT,
            sessions: SqlSessions = SQL_SESSIONS, session: str | None = None) -> SqlResult:
    """What the SQL page calls: ``text`` on this browser session's worker on ``run``, its last result reused.

    Raises SqlError (refused, failed, stopped, or no session free) with one line for the page. Text over
    ``max_chars`` is refused here, before anything parses it.
    """
    text = str(text)
    if len(text) > sessions.limits.max_chars:
        raise SqlError(f"the query is {len(text):,} characters long; the SQL page takes at most "
                       f"{sessions.limits.max_chars:,}: shorten it")
    key = (text, explain, int(limit))
    try:
        with sessions.session(session or session_id(), run) as slot:
            if slot.last is not None and slot.last[0] == key:
                return slot.last[1]
            slot.last = None
            result = slot.run(text, explain, limit)
            slot.last = (key, result)
            return result
    except SqlBusy as err:
        raise SqlError(str(err)) from err
    except SqlError:
        raise
    except Exception as err:  # noqa: BLE001 - starting the session's worker failed: one line
        raise SqlError(one_line(err)) from err
