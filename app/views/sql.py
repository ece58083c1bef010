"""SQL: ad-hoc, read-only DuckDB SQL over the run's tables, with the schema beside the editor."""

from __future__ import annotations

import streamlit as st

from app import data, queries, state, ui
from app.sandbox import DEFAULT_ROW_LIMIT, SandboxError
from precompute.store.schema import TABLES

ctx, run = ui.require_run()

st.title("SQL")
st.caption(f"Read-only DuckDB over the tables of `{run.name}` (views over its Parquet files). Only SELECT / "
           "WITH / FROM / DESCRIBE / SUMMARIZE / EXPLAIN run; files outside the run folder, COPY, ATTACH, "
           "INSTALL and any write are refused.")

EXAMPLE = ("SELECT neg_type, grade, count(*) AS pairs, round(avg(score), 3) AS mean_score\n"
           "FROM pairs\nGROUP BY ALL\nORDER BY neg_type, grade")

left, right = st.columns([3, 1])
with right:
    st.markdown("**Tables and columns**")
    schema = data.query(run, queries.schema_listing)
    for table, cols in schema.groupby("table", sort=True):
        doc = TABLES[table].doc if table in TABLES else "view"
        with st.expander(f"{table} ({len(cols)})"):
            st.caption(doc)
            st.dataframe(cols[["column", "type"]], hide_index=True, key=f"sql_schema_{table}")
with left:
    state.bind("sql_q", EXAMPLE, clean=lambda v: str(v))
    st.text_area("Query (Ctrl+Enter runs it)", key="sql_q", height=180)
    state.publish("sql_q", default=EXAMPLE)
    state.bind("sql_limit", DEFAULT_ROW_LIMIT, parse=int, clean=lambda v: min(100_000, max(1, int(v))))
    st.number_input("Row limit", min_value=1, max_value=100_000, step=1000, key="sql_limit")
    state.publish("sql_limit", default=DEFAULT_ROW_LIMIT)
    text = st.session_state["sql_q"]
    try:
        result = data.sql(run, text, int(st.session_state["sql_limit"]))
    except SandboxError as err:
        st.error(str(err), icon=":material/block:")
    else:
        rows = len(result.frame)
        st.caption(f"{rows:,} row(s){' (truncated at the row limit)' if result.truncated else ''} "
                   f"in {result.elapsed_s * 1000:.0f} ms")
        st.dataframe(result.frame, hide_index=True, key="sql_result")
        ui.table_download(result.frame, f"{run.name}-query", key="sql_csv", label="Download CSV")
