"""SQL: a visitor's read-only DuckDB query over the run's tables, with the schema beside the editor.

What may run, in which process and with which bounds is decided in ``app.sql_console``,
``app.sql_worker`` and ``app.connections`` (threat model: docs/app.md); this page only draws the editor and the
result.
"""

from __future__ import annotations

import streamlit as st

from app import data, state, ui
from app.connections import run_sql
from app.sql_examples import examples
from matching_atlas.errors import error_text
from app.sql_console import ALLOWED, DEFAULT_ROW_LIMIT, EXPLAIN_MODES, MAX_ROW_LIMIT, SqlError
from app.text import code, escape
from precompute.store.schema import TABLES

ctx, run = ui.require_run()

st.title("SQL")
st.caption(f"Read-only DuckDB over the tables of {code(run.name)} (views over its Parquet files). One statement: "
           f"{ALLOWED}. Files outside the run folder, COPY, ATTACH, INSTALL and any write are refused.")

EXAMPLE = ("SELECT neg_type, grade, count(*) AS pairs, round(avg(score), 3) AS mean_score\n"
           "FROM pairs\nGROUP BY ALL\nORDER BY neg_type, grade")
PLANS = dict(zip(EXPLAIN_MODES, ("Result", "Plan (EXPLAIN)", "Plan with timings (EXPLAIN ANALYZE)")))

left, right = st.columns([3, 1])
with right:
    st.markdown("**Tables and columns**")
    schema = data.query(run, "columns")
    for table, cols in schema.groupby("table", sort=True):
        doc = TABLES[table].doc if table in TABLES else "view"
        with st.expander(f"{table} ({len(cols)})"):
            st.caption(doc)
            st.dataframe(cols[["column", "type"]], hide_index=True, key=f"sql_schema_{table}")
EXAMPLES = examples()


def use_example() -> None:
    """Put the chosen example into the editor (a callback: it runs before the editor is drawn again)."""
    picked = st.session_state.get("sql_example")
    if picked is not None:
        st.session_state["sql_q"] = EXAMPLES[picked].sql
        st.session_state["sql_example"] = None


with left:
    if EXAMPLES:
        st.selectbox("Example queries (from docs/store.md)", list(range(len(EXAMPLES))), index=None,
                     key="sql_example", on_change=use_example, placeholder="Load an example into the editor",
                     format_func=lambda i: f"{i + 1}. {EXAMPLES[i].title[:100]}"
                                           + ("..." if len(EXAMPLES[i].title) > 100 else ""))
    state.bind("sql_q", EXAMPLE, clean=lambda v: str(v))
    st.text_area("Query (Ctrl+Enter runs it)", key="sql_q", height=180)
    state.publish("sql_q", default=EXAMPLE)
    c1, c2 = st.columns([1, 3])
    state.bind("sql_limit", DEFAULT_ROW_LIMIT, parse=int, clean=lambda v: min(MAX_ROW_LIMIT, max(1, int(v))))
    c1.number_input("Row limit", min_value=1, max_value=MAX_ROW_LIMIT, step=1000, key="sql_limit")
    state.publish("sql_limit", default=DEFAULT_ROW_LIMIT)
    state.bind("sql_plan", "", clean=state.choice(list(PLANS), ""))
    c2.radio("Show", list(PLANS), key="sql_plan", format_func=PLANS.get, horizontal=True)
    state.publish("sql_plan", default="")
    plan = st.session_state["sql_plan"]
    try:
        result = run_sql(run, st.session_state["sql_q"], explain=plan, limit=int(st.session_state["sql_limit"]))
    except SqlError as err:
        st.error(escape(err), icon=":material/block:")
        st.stop()
    rows = len(result.frame)
    st.caption(f"{rows:,} row(s) in {result.elapsed_s * 1000:.0f} ms")
    if result.truncated:
        st.warning(f"The result was {result.truncated}.", icon=":material/content_cut:")
    if plan:
        for value in result.frame.get("explain_value", []):
            st.code(str(value), language=None)
    else:
        try:
            st.dataframe(result.frame, hide_index=True, key="sql_result")
        except Exception as err:  # noqa: BLE001 - a value the table widget cannot carry: one line, not a traceback
            st.error(f"The result cannot be shown as a table: {escape(error_text(err))}", icon=":material/block:")
            st.stop()
        ui.table_download(result.frame, f"{run.name}-query", key="sql_csv", label="Download CSV")
