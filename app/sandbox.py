"""The SQL page's own DuckDB connection: read-only, confined to the run folder, configuration locked.

Defence in depth, each layer tested in tests/app/test_sandbox.py:

1. Only ``SELECT`` (incl. ``WITH``, ``FROM``-first, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``) and
   ``EXPLAIN`` statements run; DuckDB's own parser classifies every statement before anything
   executes, so ``COPY ... TO``, ``ATTACH``, ``INSTALL``/``LOAD``, ``CREATE``, ``INSERT``, ``SET``,
   ``PRAGMA``, ``EXPORT`` and ``CALL`` are refused with a message.
2. The connection has ``enable_external_access = false`` with ``allowed_directories`` = the run
   folder (and a private, empty spill folder): table functions such as ``read_csv('/etc/passwd')``,
   ``read_text`` or ``glob`` outside the run fail with DuckDB's permission error, extensions cannot
   be installed or loaded, Python objects are not scanned.
3. ``lock_configuration = true``: no statement can switch any of that back.
4. A watchdog interrupts a statement that runs longer than ``timeout_s``.

The run's tables are views over its Parquet files, created before the lock.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from precompute.store.connect import connect

ALLOWED_STATEMENTS = ("SELECT", "EXPLAIN")
DEFAULT_ROW_LIMIT = 10_000


_KIND_NAMES = {"LOAD": "INSTALL/LOAD", "MULTI": "PIVOT/multi-statement", "VARIABLE_SET": "SET", "COPY_DATABASE": "COPY"}


class SandboxError(Exception):
    """A statement the SQL page refuses, or DuckDB's error for it (message shown to the user)."""


@dataclass
class SqlResult:
    frame: pd.DataFrame
    truncated: bool  # more rows than the limit: only the first ``limit`` are in ``frame``
    elapsed_s: float


def open_sandbox(run: Path | str, *, threads: int = 2, memory_limit: str = "4GB"):
    """A locked, in-memory DuckDB connection where the run's tables are views (see module doc)."""
    run = Path(run).resolve()
    spill = Path(tempfile.mkdtemp(prefix="atlas-sql-"))
    atexit.register(shutil.rmtree, spill, True)
    con = connect(run, threads=threads)
    dirs = ", ".join("'" + str(d).replace("'", "''") + "/'" for d in (run, spill))
    for setting in (
        f"SET temp_directory = '{spill}'",
        f"SET memory_limit = '{memory_limit}'",
        "SET parquet_metadata_cache = true",
        f"SET allowed_directories = [{dirs}]",
        "SET autoinstall_known_extensions = false",
        "SET autoload_known_extensions = false",
        "SET enable_external_access = false",
        "SET lock_configuration = true",
    ):
        con.execute(setting)
    return con


def check_statements(con, sql: str) -> int:
    """Raise SandboxError unless every statement of ``sql`` is a read-only query; return how many there are."""
    import duckdb

    if not sql or not sql.strip():
        raise SandboxError("enter a SELECT query")
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as err:
        raise SandboxError(_clean(err)) from err
    if not statements:
        raise SandboxError("enter a SELECT query")
    for st in statements:
        kind = st.type.name
        if kind not in ALLOWED_STATEMENTS:
            kind = _KIND_NAMES.get(kind, kind)
            raise SandboxError(
                f"{kind} statements are not allowed here: the SQL page is read-only "
                f"(SELECT, WITH ... SELECT, FROM ..., DESCRIBE, SUMMARIZE and EXPLAIN only)"
            )
    return len(statements)


def run_sql(con, sql: str, *, limit: int = DEFAULT_ROW_LIMIT, timeout_s: float = 30.0) -> SqlResult:
    """Run user SQL on a sandbox connection; errors come back as SandboxError with DuckDB's message."""
    import time

    import duckdb

    cur = con.cursor()  # one per call: Streamlit sessions run in threads, a DuckDB connection is per thread
    try:
        check_statements(cur, sql)
    except SandboxError:
        cur.close()
        raise
    timer = threading.Timer(timeout_s, cur.interrupt)
    start = time.perf_counter()
    timer.start()
    try:
        rel = cur.execute(sql)
        rows = rel.fetchmany(limit + 1)
        names = [d[0] for d in (rel.description or [])]
    except duckdb.InterruptException as err:
        raise SandboxError(f"the query ran longer than {timeout_s:.0f} s and was stopped") from err
    except duckdb.Error as err:
        raise SandboxError(_clean(err)) from err
    finally:
        timer.cancel()
        cur.close()
    truncated = len(rows) > limit
    frame = pd.DataFrame(rows[:limit], columns=_unique(names))
    return SqlResult(frame, truncated, time.perf_counter() - start)


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            out.append(f"{n}_{seen[n]}")
        else:
            seen[n] = 0
            out.append(n)
    return out


def _clean(err: Exception) -> str:
    return str(err).strip()
