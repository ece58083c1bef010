"""Page results: the reader's methods (:class:`matching_atlas.Run`), cached per run and arguments, and a failure
shown as one line on the page.

``query(run, "head_means", metric, where=sl)`` calls that method of the run's reader (one
:class:`matching_atlas.Run` per run and file state, kept with ``st.cache_resource``: its connection serves every
session, a fresh cursor per query) and caches the result with ``st.cache_data``, keyed by the run's path, its
version token (it changes when a file of the run is rewritten, so a rebuilt run is picked up without a restart), the
method and its arguments. A query that fails (a Parquet page that cannot be decoded, a file removed under the app)
stops the page with one line naming the run instead of a traceback; failures are not cached. The SQL page's visitor
queries never come here (``app.connections``: they are not cached).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st

from matching_atlas import Run
from matching_atlas.errors import error_text
from matching_atlas.opening import RunInfo
from app.text import code, escape


@st.cache_resource(max_entries=64, show_spinner=False)
def reader(path: str, token: str, _info: RunInfo) -> Run:
    """The run's reader for this state of its files (a rewritten run gets a new one)."""
    return Run(_info)


@st.cache_data(max_entries=2048, show_spinner=False)
def _query(path: str, token: str, name: str, args: tuple, kwargs: tuple, _info: RunInfo) -> pd.DataFrame:
    return getattr(reader(path, token, _info), name)(*args, **dict(kwargs))


def query(run: RunInfo, name: str, *args, **kwargs) -> pd.DataFrame:
    """The reader's method ``name`` on the run; the result is cached. On failure: one line on the page, and it stops."""
    if not callable(getattr(Run, name, None)) or name.startswith("_"):
        raise ValueError(f"{name!r} is not a method of matching_atlas.Run")
    try:
        return _query(str(run.path), run.token, name, args, tuple(sorted(kwargs.items())), run)
    except Exception as err:  # noqa: BLE001 - DuckDB, Arrow or OS errors: the page says so in one line
        st.error(f"The run {code(run.name)} could not be read for this view: {escape(error_text(err))}",
                 icon=":material/error:")
        st.stop()
