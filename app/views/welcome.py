"""First page when there is nothing to show: no store yet, no run in it, or a run the app refuses."""

from __future__ import annotations

import os

import streamlit as st

from app import ui
from app.commands import (ABLATION_SCORINGS_PER_S, DEFAULT_CONDITIONS, FIRST_TRY_TIME, FULL_COMMAND, FULL_PAIRS,
                          FULL_QUERIES, PRECOMPUTE_COMMAND, SUMMARY_PAIRS_PER_S, command_for, full_run_minutes)
from app.runs import STORE_ENV
from app.text import code, escape

ctx = ui.context()
st.title("Matching Atlas")
st.caption("How cross-encoder re-rankers match queries and passages, head by head "
           "(after *Understanding Matching Mechanisms in Cross-Encoders*, arXiv 2507.14604).")
store = ctx.store.resolve() if ctx.store.exists() else ctx.store

if ctx.run is not None and not ctx.run.ok:
    st.error(f"The run {code(ctx.run.name)} cannot be opened: {escape(ctx.run.problem)}.")
    if ctx.run.manifest is not None and ctx.run.manifest.status not in (None, "complete"):
        st.markdown("Once the job has finished, reload this page. If it was stopped, resume it "
                    "(finished work is kept):")
        st.code(command_for(ctx.run), language="bash", wrap_lines=True)
    usable = ctx.ok_runs
    if usable:
        st.info("Runs this app can open: " + ", ".join(code(r.name) for r in usable) + " (choose one in the sidebar).")
    else:
        st.markdown("Build a run with this checkout's precompute job (from the repository root):")
        st.code(PRECOMPUTE_COMMAND, language="bash", wrap_lines=True)
else:
    if not ctx.store.exists():
        st.warning(f"There is no store yet: the folder {code(store)} does not exist.")
    elif not os.access(ctx.store, os.R_OK | os.X_OK):
        st.warning(f"The store {code(store)} cannot be read by the app's server (permissions).")
    else:
        st.warning(f"The store {code(store)} holds no run yet.")
    st.markdown(
        "**Build a first store** with the precompute job, from the repository root (the first 3 queries of "
        f"TREC DL 2020 with the reference MiniLM cross-encoder: {FIRST_TRY_TIME} on 2 CPU cores):"
    )
    st.code(PRECOMPUTE_COMMAND, language="bash", wrap_lines=True)
    summary_min, ablation_min = full_run_minutes()
    st.markdown(
        f"All {FULL_QUERIES} queries ({FULL_PAIRS:,} pairs): about {summary_min + ablation_min:.0f} minutes on 2 CPU "
        f"cores, much less on a GPU: the summary pass ({summary_min:.0f} min at {SUMMARY_PAIRS_PER_S:.0f} pairs/s) "
        f"and the default ablations ({DEFAULT_CONDITIONS} conditions x {FULL_PAIRS:,} pairs, {ablation_min:.0f} min "
        f"at {ABLATION_SCORINGS_PER_S:.0f} scorings/s); `--ablations none` skips the second."
    )
    st.code(FULL_COMMAND, language="bash", wrap_lines=True)
    st.markdown(
        "Then reload this page. The app looks for `data/store` by default; the server is pointed elsewhere when it "
        f"starts: `streamlit run app/main.py -- --store PATH` (a store or one run folder) or the environment variable "
        f"`{STORE_ENV}`."
    )
