"""Directions: the 5 x 5 segment-to-segment attention matrix (one head, or averaged over the slice),
each direction's mean across layers, one line per negative type, and (MonoT5) the decoder's cross-attention from
its scoring position onto the encoder's segments. Segments are named in the run's family's words; directions a
causal model cannot attend are shown as "not possible (causal)", never as 0."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, data, state, ui
from app.family import labels_of
from app.text import escape
from precompute.names import CONTRAST_LABELS, CONTRASTS, DIRECTIONS, SEGMENTS

ctx, run = ui.require_run()
sl = ctx.slice
lab = labels_of(run)

st.title("Attention directions")
st.caption(f"{escape(run.dataset_name)} x {escape(run.model_name)} · slice: {escape(sl.describe())}. "
           "Rows attend, columns are attended: each row of the matrix sums to 1 (the masses of one segment over the "
           "segments it can attend). Segments: " + ", ".join(f"{s} = {escape(lab.segment(s))}" for s in SEGMENTS) + ".")
if lab.causal:
    st.caption(f"{escape(run.model_name)} is causal: a token attends only to earlier tokens, so the "
               f"{len(lab.impossible)} directions into a later segment are not possible (the store holds NULL there, "
               "shown as such, not 0).")

SCOPES = {"slice": "Averaged over the slice's layers and heads", "head": "One head"}
LEXICAL_METRICS = ("q_d_exact", "q_d_other")  # the chart's two metrics (lexical, semantic)
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
    matrix = data.query(run, "direction_matrix", where=msl)
    value, diverging = "mean", False
    value_title = "Mean attention mass"
    title = f"Segment-to-segment attention, {where} ({run.model_name}, {run.dataset_name})"
else:
    a, b = CONTRASTS[show]
    ma = data.query(run, "direction_matrix", where=msl.with_(neg_types=(a,)))
    mb = data.query(run, "direction_matrix", where=msl.with_(neg_types=(b,), grades=()))
    matrix = ma[["src", "dst", "direction"]].copy()
    matrix["mean_a"], matrix["mean_b"] = ma["mean"], mb["mean"]
    matrix["diff"] = matrix["mean_a"] - matrix["mean_b"]
    matrix["n"] = ma["n"]
    value, diverging = "diff", True
    value_title = f"Mass difference, {a} - {b}"
    title = f"Segment-to-segment attention, {a} minus {b} negatives, {where} ({run.model_name})"

matrix["meaning"] = matrix["direction"].map(lab.direction)
matrix["note"] = ["" if pd.notna(v) else lab.missing(d) for v, d in zip(matrix[value], matrix["direction"])]
if matrix[value].isna().all():
    st.warning("The slice holds no pairs for this matrix.")
else:
    ui.chart(charts.direction_matrix(matrix, title=title, value=value, value_title=value_title, diverging=diverging,
                                     labels=lab),
             matrix, f"{run.name}-directions-{scope}-{show}", key="dir_matrix")
    with st.expander("Values of the matrix"):
        st.dataframe(matrix, hide_index=True, key="dir_matrix_values")

st.divider()
st.subheader("Each direction across layers")
st.caption(f"Mean mass per layer over the slice's heads, one line per negative type: the lexical-then-semantic "
           f"progression shows as {escape(lab.direction('q_d'))} rising in the middle layers; the fallback as mass on "
           f"{escape(lab.segment('cls'))} and {escape(lab.segment('sep2'))} where nothing matches.")
DEFAULT_DIRS = ["q_d", "d_q", "q_q", "d_d", "q_cls", "d_cls", "q_sep2", "d_sep2"]
state.bind("dir_dirs", DEFAULT_DIRS, parse=state.split, clean=state.subset(list(DIRECTIONS)))
st.multiselect("Directions", list(DIRECTIONS), key="dir_dirs",
               format_func=lambda d: f"{d} ({lab.direction(d)})" + ("" if lab.possible(d) else ": not possible (causal)"))
state.publish("dir_dirs", fmt=state.join, default=DEFAULT_DIRS)
dirs = tuple(st.session_state["dir_dirs"])
if not dirs:
    st.info("Choose at least one direction.")
else:
    lines = data.query(run, "direction_by_layer", dirs, where=sl)
    empty = [d for d in dirs if lines[lines["direction"] == d]["mean"].isna().all()]
    for d in empty:
        st.info(escape(lab.why_empty(d)), icon=":material/block:")
    shown = lines[~lines["direction"].isin(empty)]
    if lines.empty:
        st.warning("The slice holds no pairs.")
    elif not shown.empty:
        ui.chart(charts.direction_lines(shown, title=f"Attention mass by layer and negative type ({run.model_name}, "
                                                     f"{run.dataset_name})", columns=4, labels=lab),
                 shown, f"{run.name}-directions-by-layer", key="dir_lines")
    with st.expander("Values of the lines"):
        st.dataframe(lines, hide_index=True, key="dir_lines_values")

# -- lexical vs semantic matching by layer (the paper's first finding) -------------------------
st.divider()
st.subheader("Lexical vs semantic matching by layer")
lexical = data.query(run, "lexical_by_layer")
lexical = lexical[lexical["metric"].isin(LEXICAL_METRICS)] if len(lexical) else lexical
if lexical.empty:
    st.info("This run holds no summary metrics to split exact-match from other document tokens.")
else:
    st.caption(f"{escape(lab.direction('q_d'))} mass on document tokens that repeat a query token exactly "
               "(q_d_exact, lexical matching) and on the others (q_d_other, semantic matching), per layer (mean over "
               "the layer's heads), for every pair of the run: per query the mean over its pairs of a kind, then the "
               "mean over queries with its 95% bootstrap interval over queries; below, relevant - hard and relevant - "
               "easy as means over queries of per-query differences. The slice does not apply (the query is the "
               "unit; the report prints the same table).")
    ui.chart(charts.lexical_semantic(lexical, title=f"Lexical vs semantic matching by layer ({run.model_name}, "
                                                    f"{run.dataset_name})", labels=lab),
             lexical, f"{run.name}-lexical-semantic-by-layer", key="dir_lexical")
    with st.expander("Values of the lexical vs semantic chart"):
        st.dataframe(lexical, hide_index=True, key="dir_lexical_values")

# -- decoder cross-attention (encoder-decoder families: MonoT5) --------------------------------
if run.has("decoder_cross_attention"):
    st.divider()
    st.subheader("Decoder cross-attention from the scoring position")
    st.caption(f"{escape(run.model_name)} scores at its decoder's first step: the weight that position gives each "
               "encoder segment (summed over the segment's tokens; the five sum to 1), per decoder layer x head, by "
               "negative type. The slice's queries, negative types and grades apply; its layers and heads are the "
               "encoder's and do not.")
    cross = data.query(run, "cross_attention", where=sl)
    if cross.empty:
        st.warning("The slice holds no pairs.")
        st.stop()
    segs = list(SEGMENTS)
    state.bind("dir_cross_seg", "d", clean=state.choice(segs, "d"))
    st.radio("Encoder segment", segs, key="dir_cross_seg", format_func=lambda s: escape(lab.segment(s)),
             horizontal=True)
    state.publish("dir_cross_seg", default="d")
    seg = st.session_state["dir_cross_seg"]
    one = cross[cross["segment"] == seg]
    ui.chart(charts.cross_attention_maps(one, title=f"Cross-attention mass on the encoder's {lab.segment(seg)} from "
                                                    f"the scoring position ({run.model_name}, {run.dataset_name})",
                                         value_title=f"Mass on {lab.segment(seg)}"),
             one, f"{run.name}-cross-attention-{seg}", key="dir_cross")
    with st.expander("Values of the cross-attention maps"):
        st.dataframe(cross, hide_index=True, key="dir_cross_values")
