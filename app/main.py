"""Matching Atlas explorer: ``streamlit run app/main.py`` (optionally ``-- --store PATH``).

The entry point draws the global sidebar (the store root the server was started with, the run,
the slice), keeps the URL to the current page's parameters and hands over to the page chosen with
``st.navigation``. Pages read the sidebar's decisions from ``app.ui.context()``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `streamlit run app/main.py` puts app/ on the path, not the repository
    sys.path.insert(0, str(REPO))

import streamlit as st  # noqa: E402

from app import data, state, ui  # noqa: E402
from app.runs import STORE_ENV, run_labels, store_from_args  # noqa: E402
from matching_atlas.opening import find_runs  # noqa: E402
from app.text import code, escape  # noqa: E402
from app.slice import PARAM_KEYS  # noqa: E402
from app.slice import widgets as slice_widgets  # noqa: E402

PAGES_DIR = Path(__file__).resolve().parent / "views"

# (file, title, icon, url path, URL-parameter prefix of the page's own widgets)
PAGES: list[tuple[str, str, str, str, str]] = [
    ("overview.py", "Overview", ":material/dashboard:", "overview", "ov_"),
    ("findings.py", "Findings", ":material/lightbulb:", "findings", "fnd_"),
    ("head_atlas.py", "Head atlas", ":material/grid_on:", "head-atlas", "atlas_"),
    ("directions.py", "Directions", ":material/swap_horiz:", "directions", "dir_"),
    ("ablations.py", "Ablations", ":material/content_cut:", "ablations", "abl_"),
    ("patching.py", "Patching", ":material/science:", "patching", "pat_"),
    ("spectra.py", "Spectra", ":material/ssid_chart:", "spectra", "spec_"),
    ("pair_explorer.py", "Pair explorer", ":material/compare_arrows:", "pair-explorer", "pair_"),
    ("sql.py", "SQL", ":material/terminal:", "sql", "sql_"),
    ("compare.py", "Compare runs", ":material/difference:", "compare", "cmp_"),
]
WELCOME = ("welcome.py", "Start here", ":material/flag:", "start", "")
UNSLICED = {"SQL"}  # pages whose results the slice does not filter: they show no slice widgets


def sidebar() -> ui.Context:
    """Store root (fixed by the server), run (chosen among its runs, by folder name) and slice."""
    sb = st.sidebar
    root = store_from_args(sys.argv[1:])
    runs = find_runs(root)
    ctx = ui.Context(store=root, runs=runs)
    sb.caption(f"Store {code(root)} (set by `--store` or `${STORE_ENV}` when the app starts)")
    if not runs:
        state.set_param("run", None)
        return ctx

    by_name = {r.name: r for r in runs}
    names = list(by_name)
    labels = run_labels(runs)
    first_ok = next((r.name for r in runs if r.verified), next((r.name for r in runs if r.ok), names[0]))
    asked = st.query_params.get("run") if "run" not in st.session_state else None
    state.bind("run", first_ok, clean=state.choice(names, first_ok))
    if asked and asked != st.session_state["run"]:
        sb.warning(f"The link asks for a run this store does not list ({code(asked[:80])}); showing "
                   f"{code(st.session_state['run'])} instead.")
    sb.selectbox("Run (dataset x model)", names, key="run", format_func=labels.get)
    state.publish("run")
    run = ui.verified(by_name[st.session_state["run"]])  # a large run's first opening: checked, with progress
    ctx.runs = [run if r.name == run.name else r for r in runs]
    ctx.run = run
    if not run.ok:
        sb.error(f"This run cannot be opened: {escape(run.problem)}")
        return ctx

    layers, heads = run.model.layers, run.model.heads
    if not isinstance(layers, int) or not isinstance(heads, int):
        shape = data.query(run, "shape")
        layers, heads = int(shape["layers"].iloc[0]), int(shape["heads"].iloc[0])
    ctx.layers, ctx.heads = layers, heads
    return ctx


def slice_sidebar(ctx: ui.Context, page: str) -> None:
    """The slice's widgets, on every page that applies the slice (the SQL page runs the visitor's text as written,
    so it shows no slice: docs/app.md)."""
    run, sb = ctx.run, st.sidebar
    if page in UNSLICED:
        sb.caption(f"{escape(run.model_name)} on {escape(run.dataset_name)}: {ctx.layers} layers x {ctx.heads} heads. "
                   f"The slice does not apply on the {page} page: a query reads the tables as they are (the other "
                   "pages keep the slice).")
        return
    options = data.query(run, "slice_options")
    qdf = data.query(run, "queries")
    ctx.slice = slice_widgets(layers=ctx.layers, heads=ctx.heads, neg_types=options["neg_type"].unique(),
                              grades=options["grade"].unique(), queries=dict(zip(qdf["qid"], qdf["query"])))
    sb.caption(f"{escape(run.model_name)} on {escape(run.dataset_name)}: {ctx.layers} layers x {ctx.heads} heads. "
               f"Slice: {escape(ctx.slice.describe())}.")


def main() -> None:
    st.set_page_config(page_title="Matching Atlas", page_icon=":material/hub:", layout="wide")
    ctx = sidebar()
    st.session_state[ui.CONTEXT_KEY] = ctx
    if ctx.run is not None and ctx.run.ok:
        specs = PAGES
    else:
        specs = [WELCOME]
    pages = [
        st.Page(str(PAGES_DIR / f), title=t, icon=i, url_path=u, default=(n == 0))
        for n, (f, t, i, u, _) in enumerate(specs)
    ]
    prefixes = {t: p for (_, t, _, _, p) in specs}
    pg = st.navigation(pages)
    if ctx.run is not None and ctx.run.ok:
        slice_sidebar(ctx, pg.title)
    state.prune_params(state.GLOBAL_PARAMS | set(PARAM_KEYS), prefixes.get(pg.title) or None)
    pg.run()


main()
