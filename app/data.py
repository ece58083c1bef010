"""Page query results: cached per run and arguments, and a failure shown as one line on the page.

``query(run, fn, *args)`` runs ``fn`` (a function of ``app.queries``, ``app.pair_queries``,
``app.ablation_queries`` or ``app.patching_queries``) on a
cursor of the run's shared connection (``app.connections``) and caches the result with
``st.cache_data``, keyed by the run's path, its version token (it changes when a file of the run is
rewritten, so a rebuilt run is picked up without a restart), the function and its arguments. A query
that fails (a Parquet page that cannot be decoded, a file removed under the app) stops the page
with one line naming the run instead of a traceback; failures are not cached. The SQL page's
visitor queries never come here (``app.sql_console``: they are not cached).
"""

from __future__ import annotations

from types import ModuleType
from typing import Callable

import pandas as pd
import streamlit as st

from app import ablation_queries, pair_queries, patching_queries, queries
from app.connections import run_cursor
from app.errors import one_line
from app.runs import RunInfo
from app.text import code, escape

QUERY_MODULES: dict[str, ModuleType] = {m.__name__: m for m in (queries, pair_queries, ablation_queries,
                                                                 patching_queries)}


@st.cache_data(max_entries=2048, show_spinner=False)
def _query(path: str, token: str, module: str, name: str, args: tuple, kwargs: tuple) -> pd.DataFrame:
    with run_cursor(path, token) as cur:
        return getattr(QUERY_MODULES[module], name)(cur, *args, **dict(kwargs))


def query(run: RunInfo, fn: Callable[..., pd.DataFrame], *args, **kwargs) -> pd.DataFrame:
    """Call ``fn`` on the run's connection; the result is cached. On failure: one line on the page, and it stops."""
    module = QUERY_MODULES.get(getattr(fn, "__module__", ""))
    if module is None or getattr(module, fn.__name__, None) is not fn:
        raise ValueError(f"{fn!r} is not a query of {', '.join(QUERY_MODULES)}")
    try:
        return _query(str(run.path), run.token, fn.__module__, fn.__name__, args, tuple(sorted(kwargs.items())))
    except Exception as err:  # noqa: BLE001 - DuckDB, Arrow or OS errors: the page says so in one line
        st.error(f"The run {code(run.name)} could not be read for this view: {escape(one_line(err))}",
                 icon=":material/error:")
        st.stop()
