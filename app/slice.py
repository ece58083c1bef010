"""The slice's sidebar widgets and their URL parameters (the filter itself: :class:`matching_atlas.slice.Slice`).

:func:`widgets` draws the slice in the sidebar; each widget mirrors one URL parameter (``PARAM_KEYS``) through
``app.state``, so a shared link carries the slice, and a value the run does not have (a link from another run, a
hand-edited one) is dropped.
"""

from __future__ import annotations

import streamlit as st

from app import state
from matching_atlas.slice import Slice
from precompute.names import NEG_TYPES

# URL keys of the slice (short, so a shared URL stays readable).
PARAM_LAYERS = "layers"
PARAM_HEADS = "heads"
PARAM_NEG = "neg"
PARAM_GRADES = "grades"
PARAM_QUERIES = "q"
PARAM_KEYS: tuple[str, ...] = (PARAM_LAYERS, PARAM_HEADS, PARAM_NEG, PARAM_GRADES, PARAM_QUERIES)


# -- the sidebar widgets and their URL round trip -------------------------------------------------
def _parse_range(raw: str) -> tuple[int, int]:
    lo, _, hi = raw.partition("-")
    return (int(lo), int(hi or lo))


def _reset(layers: int) -> None:
    st.session_state["sl_layers"] = (0, max(layers - 1, 0))
    for key in ("sl_heads", "sl_neg", "sl_grades", "sl_qids"):
        st.session_state[key] = []


def neg_order(values) -> list[str]:
    """Negative types in the project's order (relevant, hard, easy, unjudged), then any other, sorted."""
    values = list(values)
    return [n for n in NEG_TYPES if n in values] + sorted(v for v in values if v not in NEG_TYPES)


def widgets(*, layers: int, heads: int, neg_types, grades, queries: dict[str, str]) -> Slice:
    """Draw the slice in the sidebar (options: the run's negative types, grades and ``{qid: text}``) and return it."""
    sb = st.sidebar
    neg_options = neg_order(neg_types)
    grade_options = sorted(int(g) for g in grades)
    qids = list(queries)
    full = (0, max(layers - 1, 0))

    sb.subheader("Slice", help="Every page shows the pairs and heads of this slice. An empty box means all.")
    if layers > 1:
        state.bind("sl_layers", full, param=PARAM_LAYERS, parse=_parse_range,
                   clean=lambda v: (max(0, min(int(v[0]), full[1])), max(0, min(int(v[1]), full[1]))))
        sb.slider("Layers", min_value=0, max_value=full[1], key="sl_layers")
        state.publish("sl_layers", param=PARAM_LAYERS, fmt=lambda v: f"{v[0]}-{v[1]}", default=full)
    lay = tuple(st.session_state.get("sl_layers", full)) if layers > 1 else full

    state.bind("sl_heads", [], param=PARAM_HEADS, parse=lambda s: [int(x) for x in state.split(s)],
               clean=state.subset(list(range(heads))))
    sb.multiselect("Heads", list(range(heads)), key="sl_heads", placeholder="all heads")
    state.publish("sl_heads", param=PARAM_HEADS, fmt=state.join, default=[])

    state.bind("sl_neg", [], param=PARAM_NEG, parse=state.split, clean=state.subset(neg_options))
    sb.multiselect("Negative types", neg_options, key="sl_neg", placeholder="all negative types")
    state.publish("sl_neg", param=PARAM_NEG, fmt=state.join, default=[])

    state.bind("sl_grades", [], param=PARAM_GRADES, parse=lambda s: [int(x) for x in state.split(s)],
               clean=state.subset(grade_options))
    sb.multiselect("Grades", grade_options, key="sl_grades", placeholder="all grades",
                   help="NIST grades 0-3; -1 = easy negative (never judged for the query).")
    state.publish("sl_grades", param=PARAM_GRADES, fmt=state.join, default=[])

    state.bind("sl_qids", [], param=PARAM_QUERIES, parse=state.split, clean=state.subset(qids))
    sb.multiselect("Queries", qids, key="sl_qids", placeholder=f"all {len(qids)} queries",
                   format_func=lambda q: f"{q}: {str(queries.get(q, ''))[:60]}")
    state.publish("sl_qids", param=PARAM_QUERIES, fmt=state.join, default=[])

    sb.button("Reset slice", on_click=_reset, args=(layers,), icon=":material/restart_alt:")
    return Slice(
        layers=None if lay == full else lay,
        heads=tuple(st.session_state["sl_heads"]),
        neg_types=tuple(st.session_state["sl_neg"]),
        grades=tuple(st.session_state["sl_grades"]),
        qids=tuple(st.session_state["sl_qids"]),
    )


# -- which groups a slice leaves --------------------------------------------------------------------
def sliced_away(sl: Slice, options, groups, *, grades_on=None) -> list[str]:
    """The negative types of ``groups`` that the slice leaves without a pair: not among its negative types, or (for
    the groups in ``grades_on``, default all) none of the group's grades in the run (``options``: the run's
    (neg_type, grade) rows, ``Run.slice_options``) among its grades. A contrast drawn for the slice needs both sides."""
    grades_on = set(groups if grades_on is None else grades_on)
    present = {(str(n), int(g)) for n, g in zip(options["neg_type"], options["grade"])}
    gone = []
    for group in groups:
        kept = [g for n, g in present if n == group and (group not in grades_on or not sl.grades or g in sl.grades)]
        if (sl.neg_types and group not in sl.neg_types) or not kept:
            gone.append(group)
    return gone

