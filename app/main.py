"""Matching Atlas explorer: ``streamlit run app/main.py`` (optionally ``-- --store PATH``).

The entry point draws the global sidebar (store folder, run, slice), puts the state into the URL
and hands over to the page chosen with ``st.navigation``. Pages read the sidebar's decisions from
``app.ui.context()``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `streamlit run app/main.py` puts app/ on the path, not the repository
    sys.path.insert(0, str(REPO))

import streamlit as st  # noqa: E402

from app import data, queries, state, ui  # noqa: E402
from app.slice import PARAM_KEYS, Slice  # noqa: E402
from app.store import find_runs, store_from_args  # noqa: E402
from precompute.names import NEG_TYPES  # noqa: E402

PAGES_DIR = Path(__file__).resolve().parent / "views"

# (file, title, icon, url path, URL-parameter prefix of the page's own widgets)
PAGES: list[tuple[str, str, str, str, str]] = [
    ("overview.py", "Overview", ":material/dashboard:", "overview", "ov_"),
    ("head_atlas.py", "Head atlas", ":material/grid_on:", "head-atlas", "atlas_"),
    ("directions.py", "Directions", ":material/swap_horiz:", "directions", "dir_"),
    ("ablations.py", "Ablations", ":material/content_cut:", "ablations", "abl_"),
    ("spectra.py", "Spectra", ":material/ssid_chart:", "spectra", "spec_"),
    ("pair_explorer.py", "Pair explorer", ":material/compare_arrows:", "pair-explorer", "pair_"),
    ("sql.py", "SQL", ":material/terminal:", "sql", "sql_"),
    ("compare.py", "Compare runs", ":material/difference:", "compare", "cmp_"),
]
WELCOME = ("welcome.py", "Start here", ":material/flag:", "start", "")


def _neg_order(values) -> list[str]:
    values = list(values)
    return [n for n in NEG_TYPES if n in values] + sorted(v for v in values if v not in NEG_TYPES)


def _parse_range(raw: str) -> tuple[int, int]:
    lo, _, hi = raw.partition("-")
    return (int(lo), int(hi or lo))


def _reset_slice(layers: int) -> None:
    st.session_state["sl_layers"] = (0, max(layers - 1, 0))
    for key in ("sl_heads", "sl_neg", "sl_grades", "sl_qids"):
        st.session_state[key] = []


def slice_widgets(run, layers: int, heads: int) -> Slice:
    """The slice part of the sidebar; every widget mirrors one URL parameter."""
    sb = st.sidebar
    opts = data.query(run, queries.slice_options)
    neg_options = _neg_order(opts["neg_type"].unique())
    grade_options = sorted(int(g) for g in opts["grade"].unique())
    qdf = data.query(run, queries.query_list)
    qids = list(qdf["qid"])
    qtext = dict(zip(qdf["qid"], qdf["query"]))
    full = (0, max(layers - 1, 0))

    sb.subheader("Slice", help="Every page shows the pairs and heads of this slice. An empty box means all.")
    if layers > 1:
        state.bind("sl_layers", full, param="layers", parse=_parse_range,
                   clean=lambda v: (max(0, min(int(v[0]), full[1])), max(0, min(int(v[1]), full[1]))))
        sb.slider("Layers", min_value=0, max_value=full[1], key="sl_layers")
        state.publish("sl_layers", param="layers", fmt=lambda v: f"{v[0]}-{v[1]}", default=full)
    lay = tuple(st.session_state.get("sl_layers", full)) if layers > 1 else full

    state.bind("sl_heads", [], param="heads", parse=lambda s: [int(x) for x in state.split(s)],
               clean=state.subset(list(range(heads))))
    sb.multiselect("Heads", list(range(heads)), key="sl_heads", placeholder="all heads")
    state.publish("sl_heads", param="heads", fmt=state.join, default=[])

    state.bind("sl_neg", [], param="neg", parse=state.split, clean=state.subset(neg_options))
    sb.multiselect("Negative types", neg_options, key="sl_neg", placeholder="all negative types")
    state.publish("sl_neg", param="neg", fmt=state.join, default=[])

    state.bind("sl_grades", [], param="grades", parse=lambda s: [int(x) for x in state.split(s)],
               clean=state.subset(grade_options))
    sb.multiselect("Grades", grade_options, key="sl_grades", placeholder="all grades",
                   help="NIST grades 0-3; -1 = easy negative (never judged for the query).")
    state.publish("sl_grades", param="grades", fmt=state.join, default=[])

    state.bind("sl_qids", [], param="q", parse=state.split, clean=state.subset(qids))
    sb.multiselect("Queries", qids, key="sl_qids", placeholder=f"all {len(qids)} queries",
                   format_func=lambda q: f"{q}: {str(qtext.get(q, ''))[:60]}")
    state.publish("sl_qids", param="q", fmt=state.join, default=[])

    sb.button("Reset slice", on_click=_reset_slice, args=(layers,), icon=":material/restart_alt:")
    return Slice(
        layers=None if lay == full else lay,
        heads=tuple(st.session_state["sl_heads"]),
        neg_types=tuple(st.session_state["sl_neg"]),
        grades=tuple(st.session_state["sl_grades"]),
        qids=tuple(st.session_state["sl_qids"]),
    )


def sidebar() -> ui.Context:
    sb = st.sidebar
    default_store = str(store_from_args(sys.argv[1:]))
    state.bind("store", default_store, clean=lambda v: str(v).strip() or default_store)
    sb.text_input("Store folder", key="store",
                  help="A folder of runs written by `python -m precompute` (default data/store; "
                       "or `streamlit run app/main.py -- --store PATH`, or $ATLAS_STORE).")
    state.publish("store", default=default_store)
    store = Path(st.session_state["store"]).expanduser()
    runs = find_runs(store)
    ctx = ui.Context(store=store, runs=runs)
    if not runs:
        state.set_param("run", None)
        return ctx

    by_name = {r.name: r for r in runs}
    names = list(by_name)
    first_ok = next((r.name for r in runs if r.ok), names[0])
    state.bind("run", first_ok, clean=state.choice(names, first_ok))
    sb.selectbox("Run (dataset x model)", names, key="run", format_func=lambda n: by_name[n].label)
    state.publish("run")
    run = by_name[st.session_state["run"]]
    ctx.run = run
    if not run.ok:
        sb.error(f"This run cannot be opened: {run.problem}")
        return ctx

    model = run.model
    layers, heads = model.get("layers"), model.get("heads")
    if not isinstance(layers, int) or not isinstance(heads, int):
        shape = data.query(run, queries.model_shape)
        layers, heads = int(shape["layers"].iloc[0]), int(shape["heads"].iloc[0])
    ctx.layers, ctx.heads = layers, heads
    ctx.slice = slice_widgets(run, layers, heads)
    sb.caption(f"{run.model_name} on {run.dataset_name}: {layers} layers x {heads} heads. "
               f"Slice: {ctx.slice.describe()}.")
    return ctx


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
    state.prune_params(state.GLOBAL_PARAMS | set(PARAM_KEYS), prefixes.get(pg.title) or None)
    pg.run()


main()
