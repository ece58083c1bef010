"""Cached access to a run: one DuckDB connection per run (``st.cache_resource``) and every query
result cached per run and arguments (``st.cache_data``).

The cache key of a run is its resolved path plus a token that changes when the manifest is
rewritten, so rebuilding a run in place is picked up without restarting the app. DuckDB
connections are not meant to be shared between threads (Streamlit runs each session in its own
thread), so every query runs on a fresh ``cursor()`` of the cached connection.
"""

from __future__ import annotations

import os
from typing import Callable

import pandas as pd
import streamlit as st

from app import queries
from app.sandbox import SqlResult, open_sandbox, run_sql
from app.store import RunInfo
from app.connection import open_run

THREADS = max(1, min(4, os.cpu_count() or 1))


@st.cache_resource(max_entries=6, show_spinner="Opening the run ...")
def _connection(path: str, token: str):
    return open_run(path, threads=THREADS)


@st.cache_resource(max_entries=8, show_spinner=False)
def _sandbox(path: str, token: str):
    return open_sandbox(path, threads=THREADS)


@st.cache_data(max_entries=2048, show_spinner=False)
def _query(path: str, token: str, name: str, args: tuple, kwargs: tuple) -> pd.DataFrame:
    cur = _connection(path, token).cursor()
    try:
        return getattr(queries, name)(cur, *args, **dict(kwargs))
    finally:
        cur.close()


def query(run: RunInfo, fn: Callable[..., pd.DataFrame], *args, **kwargs) -> pd.DataFrame:
    """Call ``fn`` (a function of ``app.queries``) on the run's connection; the result is cached."""
    if getattr(queries, fn.__name__, None) is not fn:
        raise ValueError(f"{fn!r} is not a query of app.queries")
    return _query(str(run.path), run.token, fn.__name__, args, tuple(sorted(kwargs.items())))


def sandbox(run: RunInfo):
    """The SQL page's locked connection for the run (see app.sandbox)."""
    return _sandbox(str(run.path), run.token)


@st.cache_data(max_entries=32, show_spinner=False)
def _sql(path: str, token: str, sql: str, limit: int) -> SqlResult:
    return run_sql(_sandbox(path, token), sql, limit=limit)


def sql(run: RunInfo, text: str, limit: int) -> SqlResult:
    """Run the SQL page's query on the run's locked connection (SandboxError on refusal; errors are not cached)."""
    return _sql(str(run.path), run.token, text, int(limit))
