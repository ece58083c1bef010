"""The SQL page's sessions: one worker process per browser session, at most ``MAX_SQL_SESSIONS`` of them.

The pages' own queries run on the reader's connection (:mod:`matching_atlas.connection`, cached by ``app.data``);
the SQL page runs a visitor's text in a worker process per session (``app.sql_worker``), never in the server: there
it is bounded by the operating system in memory (``ATLAS_SQL_MEMORY`` per worker) and in time (the worker is killed
a moment after the time limit if DuckDB did not stop), on its own locked connection (``open_sql``: cursors of one
connection share one catalog, so a statement that got through on one session could otherwise change what every other
session sees). :class:`SqlSessions` holds at most ``MAX_SQL_SESSIONS`` of them: a new session takes the slot of the
least recently used idle one (its worker is stopped; that session gets a fresh one on its next query), and is
refused with a message while every slot is running a query. ``run_sql`` is what the SQL page calls; what may run and
how a result is bounded is decided by ``app.sql_console`` inside the worker.

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

from app.sql_console import DEFAULT_ROW_LIMIT, SqlError, SqlLimits, SqlResult
from app.sql_worker import SqlWorker
from matching_atlas.errors import error_text
from matching_atlas.opening import RunInfo

MAX_SQL_SESSIONS = int(os.environ.get("ATLAS_SQL_SESSIONS", "8"))


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
        raise SqlError(error_text(err)) from err
