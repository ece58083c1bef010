"""First page when there is nothing to show: no store yet, no run in it, or a run the app refuses."""

from __future__ import annotations

import streamlit as st

from app import ui
from app.store import FULL_COMMAND, PRECOMPUTE_COMMAND, STORE_ENV, command_for

ctx = ui.context()
st.title("Matching Atlas")
st.caption("How cross-encoder re-rankers match queries and passages, head by head "
           "(after *Understanding Matching Mechanisms in Cross-Encoders*, arXiv 2507.14604).")
store = ctx.store.resolve() if ctx.store.exists() else ctx.store

if ctx.run is not None and not ctx.run.ok:
    st.error(f"The run **{ctx.run.name}** cannot be opened: {ctx.run.problem}.")
    if ctx.run.manifest and ctx.run.manifest.get("status") not in (None, "complete"):
        st.markdown("Once the job has finished, reload this page. If it was stopped, resume it (finished work is kept):")
        st.code(command_for(ctx.run), language="bash", wrap_lines=True)
    usable = ctx.ok_runs
    if usable:
        st.info("Runs this app can open: " + ", ".join(f"`{r.name}`" for r in usable) + " (choose one in the sidebar).")
    else:
        st.markdown("Build a run with this checkout's precompute job (from the repository root):")
        st.code(PRECOMPUTE_COMMAND, language="bash", wrap_lines=True)
else:
    if not ctx.store.exists():
        st.warning(f"There is no store yet: the folder `{store}` does not exist.")
    else:
        st.warning(f"The store `{store}` holds no run yet.")
    st.markdown(
        "**Build a first store** with the precompute job, from the repository root (the first 3 queries of "
        "TREC DL 2020 with the reference MiniLM cross-encoder: a few minutes on a CPU):"
    )
    st.code(PRECOMPUTE_COMMAND, language="bash", wrap_lines=True)
    st.markdown("All 54 queries (6,084 pairs: about 10-15 minutes on 2 CPU cores, much less on a GPU):")
    st.code(FULL_COMMAND, language="bash", wrap_lines=True)
    st.markdown(
        "Then reload this page. The app looks for `data/store` by default; point it elsewhere with "
        f"`streamlit run app/main.py -- --store PATH`, the environment variable `{STORE_ENV}`, or the "
        "*Store folder* box in the sidebar."
    )
