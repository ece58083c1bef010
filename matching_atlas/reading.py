"""What every group of the reader's results reads through: the run's connection, a fresh cursor per query.

:class:`Reader` is the base of :class:`matching_atlas.Run`; each module of results (:mod:`~matching_atlas.pairs`,
:mod:`~matching_atlas.heads`, :mod:`~matching_atlas.ablations`, :mod:`~matching_atlas.patching`,
:mod:`~matching_atlas.depth`, :mod:`~matching_atlas.analyses`) is a mixin of methods that read through it. The
connection is opened on the first query (:func:`matching_atlas.connection.open_connection`) and shared by the
threads of a process: every query runs on its own cursor of it.
"""

from __future__ import annotations

import threading

import pandas as pd

from matching_atlas.opening import RunInfo
from matching_atlas.slice import Slice

ALL = Slice()  # the whole run


class Reader:
    """A verified run's tables as DataFrames (see the module doc)."""

    def __init__(self, info: RunInfo, *, threads: int | None = None, agg_in_memory_mb: float | None = None):
        self.info = info
        self._options = {"threads": threads, "agg_in_memory_mb": agg_in_memory_mb}
        self._con = None
        self._lock = threading.Lock()

    @property
    def connection(self):
        """The run's DuckDB connection (every table and view by name), opened on first use."""
        with self._lock:
            if self._con is None:
                from matching_atlas.connection import open_connection

                self._con = open_connection(self.info.path, **self._options)
            return self._con

    def has(self, table: str) -> bool:
        """Whether the run holds ``table`` (a table of ``precompute.store.schema``)."""
        return self.info.has(table)

    def _frame(self, sql: str, params: list | None = None) -> pd.DataFrame:
        """``sql`` with bound ``params`` on a fresh cursor, as a DataFrame."""
        cur = self.connection.cursor()
        try:
            return cur.execute(sql, params or []).df()
        finally:
            cur.close()

    def _defined(self, name: str) -> bool:
        """Whether the connection defines a table or view ``name`` (derived views exist only when their tables do)."""
        found = self._frame("SELECT count(*) AS n FROM duckdb_views() WHERE view_name = ? AND NOT internal "
                            "UNION ALL SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name, name])
        return bool(found["n"].sum())
