"""Directions: the 5 x 5 segment-to-segment attention matrix (one head, or averaged over the slice),
and each direction's mean across layers, one line per negative type."""

from __future__ import annotations

import streamlit as st

from app import charts, data, queries, state, ui
from precompute.names import CONTRAST_LABELS, CONTRASTS, DIRECTIONS, direction_label

ctx, run = ui.require_run()
sl = ctx.slice

st.title("Attention directions")
st.caption(f"{run.dataset_name} x {run.model_name} · slice: {sl.describe()}. "
           "Rows attend, columns are attended: each row of the matrix sums to 1 (the five masses of one segment).")

SCOPES = {"slice": "Averaged over the slice's layers and heads", "head": "One head"}
SHOW = {"mean": "Mean mass", **CONTRAST_LABELS}

c1, c2, c3, c4 = st.columns([3, 2, 1, 1])
state.bind("dir_scope", "slice", clean=state.choice(list(SCOPES), "slice"))
c1.radio("Matrix of", list(SCOPES), key="dir_scope", format_func=SCOPES.get)
state.publish("dir_scope", default="slice")
state.bind("dir_show", "mean", clean=state.choice(list(SHOW), "mean"))
c2.radio("Show", list(SHOW), key="dir_show", format_func=SHOW.get)
state.publish("dir_show", default="mean")
scope, show = st.session_state["dir_scope"], st.session_state["dir_show"]

msl = sl
where = "the slice's layers and heads"
if scope == "head":
    layer_opts = list(range(sl.layers[0], sl.layers[1] + 1)) if sl.layers else list(range(ctx.layers))
    head_opts = list(sl.heads) or list(range(ctx.heads))
    state.bind("dir_layer", layer_opts[-1], parse=int, clean=state.choice(layer_opts, layer_opts[-1]))
    c3.selectbox("Layer", layer_opts, key="dir_layer")
    state.publish("dir_layer")
    state.bind("dir_head", head_opts[0], parse=int, clean=state.choice(head_opts, head_opts[0]))
    c4.selectbox("Head", head_opts, key="dir_head")
    state.publish("dir_head")
    layer, head = int(st.session_state["dir_layer"]), int(st.session_state["dir_head"])
    msl = sl.with_(layers=(layer, layer), heads=(head,))
    where = f"head {layer}.{head}"

if show == "mean":
    matrix = data.query(run, queries.direction_matrix, msl)
    value, diverging = "mean", False
    value_title = "Mean attention mass"
    title = f"Segment-to-segment attention, {where} ({run.model_name}, {run.dataset_name})"
else:
    a, b = CONTRASTS[show]
    ma = data.query(run, queries.direction_matrix, msl.with_(neg_types=(a,)))
    mb = data.query(run, queries.direction_matrix, msl.with_(neg_types=(b,), grades=()))
    matrix = ma[["src", "dst", "direction"]].copy()
    matrix["mean_a"], matrix["mean_b"] = ma["mean"], mb["mean"]
    matrix["diff"] = matrix["mean_a"] - matrix["mean_b"]
    matrix["n"] = ma["n"]
    value, diverging = "diff", True
    value_title = f"Mass difference, {a} - {b}"
    title = f"Segment-to-segment attention, {a} minus {b} negatives, {where} ({run.model_name})"

if matrix[value].isna().all():
    st.warning("The slice holds no pairs for this matrix.")
else:
    ui.chart(charts.direction_matrix(matrix, title=title, value=value, value_title=value_title, diverging=diverging),
             matrix, f"{run.name}-directions-{scope}-{show}", key="dir_matrix")
    with st.expander("Values of the matrix"):
        st.dataframe(matrix, hide_index=True, key="dir_matrix_values")

st.divider()
st.subheader("Each direction across layers")
st.caption("Mean mass per layer over the slice's heads, one line per negative type: the lexical-then-semantic "
           "progression shows as Query->Document rising in the middle layers; the CLS/SEP fallback as mass on "
           "CLS and SEP where nothing matches.")
DEFAULT_DIRS = ["q_d", "d_q", "q_q", "d_d", "q_cls", "d_cls", "q_sep2", "d_sep2"]
state.bind("dir_dirs", DEFAULT_DIRS, parse=state.split, clean=state.subset(list(DIRECTIONS)))
st.multiselect("Directions", list(DIRECTIONS), key="dir_dirs", format_func=lambda d: f"{d} ({direction_label(d)})")
state.publish("dir_dirs", fmt=state.join, default=DEFAULT_DIRS)
dirs = tuple(st.session_state["dir_dirs"])
if not dirs:
    st.info("Choose at least one direction.")
    st.stop()
lines = data.query(run, queries.direction_by_layer, sl, dirs)
if lines.empty:
    st.warning("The slice holds no pairs.")
    st.stop()
ui.chart(charts.direction_lines(lines, title=f"Attention mass by layer and negative type ({run.model_name}, "
                                             f"{run.dataset_name})", columns=4),
         lines, f"{run.name}-directions-by-layer", key="dir_lines")
with st.expander("Values of the lines"):
    st.dataframe(lines, hide_index=True, key="dir_lines_values")
