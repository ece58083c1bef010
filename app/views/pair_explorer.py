"""Pair explorer: one query and one of its passages: score, grade, negative type, the stored summaries
of a chosen head, and (when the run's model can be loaded here) the token-level attention, live."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, data, live, state, ui
from matching_atlas.errors import error_text
from app.text import code, escape
from precompute.config import JobConfig
from app.family import labels_of
from precompute.metrics import MATCHING_METRICS, METRICS
from precompute.names import DIRECTIONS, SEGMENTS, split_direction

ctx, run = ui.require_run()
sl = ctx.slice
lab = labels_of(run)
SEGMENT_LABELS = lab.mapping  # the family's words for the five segments
SPECIAL = ("cls", "sep1", "sep2")  # the segments of one token each: [CLS] and the two [SEP]

st.title("Pair explorer")
st.caption(f"{escape(run.dataset_name)} x {escape(run.model_name)} · queries and passages of the slice: "
           f"{escape(sl.describe())}")

qdf = data.query(run, "queries")
if sl.qids:
    qdf = qdf[qdf["qid"].isin(sl.qids)]
qids = list(qdf["qid"])
qtext = dict(zip(qdf["qid"], qdf["query"]))
if not qids:
    st.warning("The slice holds no query.")
    st.stop()

link = {key: state.asked(key) for key in ("pair_q", "pair_id", "pair_layer", "pair_head")}  # a link's pair and head
state.bind("pair_q", qids[0], clean=state.choice(qids, qids[0]))
st.selectbox("Query", qids, key="pair_q", format_func=lambda q: f"{q}: {qtext.get(q, '')}")
state.publish("pair_q", default=qids[0])
qid = st.session_state["pair_q"]

pairs = data.query(run, "pairs", qid, where=sl)
if pairs.empty:
    st.warning("This query has no passage in the slice (check the negative types and grades in the sidebar).")
    st.stop()
ids = [int(p) for p in pairs["pair_id"]]
info = {int(r.pair_id): r for r in pairs.itertuples()}
state.bind("pair_id", ids[0], parse=int, clean=state.choice(ids, ids[0]))
st.selectbox(
    "Passage (best score first)", ids, key="pair_id",
    format_func=lambda p: f"#{ids.index(p) + 1} · {info[p].neg_type} · grade {info[p].grade} · "
                          f"score {info[p].score:.3f} · {info[p].docid}: {info[p].doc[:70]}",
)
state.publish("pair_id", default=ids[0])
pair_id = int(st.session_state["pair_id"])
pair = data.query(run, "pair", pair_id).iloc[0]

m = st.columns(5)
m[0].metric("Model score", f"{pair['score']:.4f}")
m[1].metric("Grade", f"{int(pair['grade'])}", help="NIST grade 0-3; -1 = easy negative (never judged).")
m[2].metric("Negative type", str(pair["neg_type"]))
m[3].metric("Rank among the query's pairs", f"{ids.index(pair_id) + 1} / {len(ids)}")
m[4].metric("Tokens (query / passage kept / passage full)",
            f"{int(pair['q_tokens'])} / {int(pair['d_tokens'])} / {int(pair['d_tokens_full'])}")
st.markdown(f"**Query** {code(pair['qid'])}: {escape(pair['query'])}")
with st.container(border=True):
    st.markdown(f"**Passage** {code(pair['docid'])}" + (" (truncated to fit the model)" if pair["truncated"] else ""))
    st.markdown(escape(pair["doc"]))

st.divider()
c1, c2, _ = st.columns([1, 1, 3])
layer_opts = list(range(sl.layers[0], sl.layers[1] + 1)) if sl.layers else list(range(ctx.layers))
head_opts = list(sl.heads) or list(range(ctx.heads))
# A click on a cell of the every-head grid (drawn below) picks that layer and head: its event is in the session
# state before the selectboxes are drawn, so they follow it in the same rerun.
clicked = ui.cell_from_event(st.session_state.get("pair_grid"))
if clicked is not None and clicked != st.session_state.get("_pair_last_click"):
    st.session_state["_pair_last_click"] = clicked
    if clicked[0] in layer_opts and clicked[1] in head_opts:
        st.session_state["pair_layer"], st.session_state["pair_head"] = clicked
state.bind("pair_layer", layer_opts[0], parse=int, clean=state.choice(layer_opts, layer_opts[0]))
c1.selectbox("Layer", layer_opts, key="pair_layer")
state.publish("pair_layer", default=layer_opts[0])
state.bind("pair_head", head_opts[0], parse=int, clean=state.choice(head_opts, head_opts[0]))
c2.selectbox("Head", head_opts, key="pair_head")
state.publish("pair_head", default=head_opts[0])
layer, head = int(st.session_state["pair_layer"]), int(st.session_state["pair_head"])
shown = {"pair_q": qid, "pair_id": pair_id, "pair_layer": layer, "pair_head": head}
refused = [f"{key.removeprefix('pair_')} {code(str(value)[:80])}" for key, value in link.items()
           if value is not None and value != str(shown[key])]
if refused:
    st.warning(f"The link asks for {', '.join(refused)}, which this run and slice do not hold (check the slice in the "
               "sidebar); showing the first one instead.", icon=":material/link_off:")

stored = data.query(run, "pair_head_metrics", pair_id, layer, head)
left, right = st.columns(2)
with left:
    if stored.empty:
        st.info("No stored summary for this pair and head.")
    else:
        row = stored.iloc[0]
        mat = pd.DataFrame([{"src": s, "dst": d, "direction": x, "mean": pd.to_numeric(row[x], errors="coerce")}
                            for x in DIRECTIONS for s, d in [split_direction(x)]])
        ui.chart(charts.direction_matrix(mat, title=f"Stored segment attention of this pair, head {layer}.{head}",
                                         value_title="Attention mass", labels=lab),
                 mat, f"{run.name}-pair-{pair_id}-head-{layer}.{head}-segments", key="pair_matrix")
        mm = st.columns(len(MATCHING_METRICS))
        for col, name in zip(mm, MATCHING_METRICS):
            v = pd.to_numeric(row[name], errors="coerce")
            col.metric(name, f"{float(v):.4f}" if pd.notna(v) else lab.missing(name), help=escape(lab.metric(name)))
with right:
    default_metric = "q_d" if lab.possible("q_d") else "d_q"
    state.bind("pair_metric", default_metric, clean=state.choice(list(METRICS), default_metric))
    st.selectbox("Metric on every head", list(METRICS), key="pair_metric",
                 format_func=lambda x: f"{x}: {lab.metric(x)}" + ("" if lab.possible(x) else " (not possible: causal)"))
    state.publish("pair_metric", default=default_metric)
    pm = st.session_state["pair_metric"]
    grid = data.query(run, "pair_metric_grid", pair_id, pm, where=sl)
    if len(grid) and grid["value"].isna().all():
        st.info(escape(lab.why_empty(pm)), icon=":material/block:")
    if len(grid):
        ui.chart(charts.head_heatmap(grid, "value", title=f"{pm} of this pair on every head",
                                     value_title=pm, selected=(layer, head), missing=lab.missing(pm)),
                 grid, f"{run.name}-pair-{pair_id}-{pm}-heads", key="pair_grid", select=charts.CELL)
        st.caption("Click a cell to open that head.")

# -- every head of the layer: segment matrices, [CLS] and [SEP] included ---------------------------
st.subheader(f"Every head of layer {layer}: where each segment's attention goes")
heads_of_layer = data.query(run, "pair_layer_metrics", pair_id, layer, where=sl)
if heads_of_layer.empty:
    st.info("No stored summary of this pair on the slice's heads of this layer.")
else:
    small = pd.DataFrame([{"head": int(r["head"]), "src": a, "dst": b, "value": pd.to_numeric(r[x], errors="coerce")}
                          for _, r in heads_of_layer.iterrows() for x in DIRECTIONS for a, b in [split_direction(x)]])
    ui.chart(charts.segment_matrices(small, title=f"Attention mass of each segment to each segment, every head of "
                                                  f"layer {layer} (this pair)", labels=lab),
             small, f"{run.name}-pair-{pair_id}-layer-{layer}-segments", key="pair_small_multiples")
    parked = small[small["dst"].isin(SPECIAL) & small["src"].isin(("q", "d"))].groupby("head")["value"].sum(min_count=1) / 2
    if parked.notna().any():
        most = int(parked.idxmax())
        st.caption(f"Rows: the attending segment; columns: the attended one; a row sums to 1. Query and document "
                   f"tokens of this pair send on average {parked.mean():.0%} of their attention to "
                   f"{escape(' / '.join(lab.segment(x) for x in SPECIAL))} on this layer's heads (most: head "
                   f"{layer}.{most}, {parked.max():.0%}): attention parked there moves little of the passage into the "
                   "query (the no-op pattern).")

# -- live token attention ---------------------------------------------------------------------
st.subheader(f"Token-level attention, head {layer}.{head}")
folder, why = live.availability(run)
if folder is None:
    st.info(f"Token-level attention is computed live from the run's model, but {escape(why)}; this page shows the "
            "stored summaries only. Run the app on a machine with the model folder (and torch + transformers) to see "
            "token weights.", icon=":material/info:")
    st.stop()

TOKENS_FROM, TOKENS_TO = ["q"], ["d"]  # Query -> Document by default; [CLS] and [SEP] on either side on demand
t1, t2 = st.columns(2)
for col, key, default, label in ((t1, "pair_from", TOKENS_FROM, "Attending tokens of"),
                                 (t2, "pair_to", TOKENS_TO, "Attended tokens of")):
    state.bind(key, default, parse=state.split, clean=lambda v, d=default: state.subset(list(SEGMENTS))(v) or d)
    col.multiselect(label, list(SEGMENTS), key=key, format_func=lambda x: escape(SEGMENT_LABELS[x]))
    state.publish(key, fmt=state.join, default=default)
src = [x for x in SEGMENTS if x in st.session_state["pair_from"]] or TOKENS_FROM
dst = [x for x in SEGMENTS if x in st.session_state["pair_to"]] or TOKENS_TO
src_words, dst_words = (" + ".join(SEGMENT_LABELS[x] for x in xs) for xs in (src, dst))
max_length = run.manifest.parameters.get("max_length") or run.manifest.identity.max_length or JobConfig.max_length
try:
    pa = live.pair_attention(str(folder), str(pair["query"]), str(pair["doc"]), layer, int(max_length))
except Exception as err:  # noqa: BLE001 - a model that loads but does not run here: say so in one line, keep the page
    st.warning(f"The model at {code(folder)} could not be run on this pair: {escape(error_text(err))}")
    st.stop()
if layer >= pa.summaries.shape[0] or head >= pa.summaries.shape[1]:
    st.warning(f"The model at {code(folder)} has {pa.summaries.shape[0]} layers x {pa.summaries.shape[1]} heads; "
               f"head {layer}.{head} does not exist: is it the run's model?")
    st.stop()
frame = live.attention_frame(pa, head, src, dst)
live_metrics = live.metrics(pa, layer, head)
# One attending segment: its mass on the attended ones is the sum of the stored directions (a row sums to 1)
sent = [f"{src[0]}_{x}" for x in dst] if len(src) == 1 else []
k = st.columns(4)
k[0].metric("Live score", f"{pa.score:.4f}", f"{pa.score - float(pair['score']):+.4f} vs stored", delta_color="off")
if sent:
    k[1].metric(f"Live {escape(SEGMENT_LABELS[src[0]])}->{escape(dst_words)} mass",
                f"{sum(live_metrics[x] for x in sent):.4f}")
if sent and not stored.empty:
    kept = pd.to_numeric(stored.iloc[0][sent], errors="coerce")
    k[2].metric("Stored mass", f"{float(kept.sum()):.4f}" if kept.notna().all() else
                lab.missing(next(x for x in sent if pd.isna(kept[x]))))
if not stored.empty:
    gap = live.largest_gap(live_metrics, {m: float(stored.iloc[0][m]) for m in METRICS})
    k[3].metric("Largest live - stored gap", f"{gap:.1e}",
                help=f"Over the head's {len(METRICS)} stored summaries, recomputed live by the job's summary kernel "
                     "(a metric defined on one side only counts as an infinite gap).")
ui.chart(charts.token_heatmap(frame, title=f"{src_words} -> {dst_words} attention weights, "
                                           f"head {layer}.{head} ({run.model_name}, live)",
                              x_title=f"{dst_words} token (attended)", y_title=f"{src_words} token (attending)"),
         frame, f"{run.name}-pair-{pair_id}-head-{layer}.{head}-{'+'.join(src)}-{'+'.join(dst)}-tokens",
         key="pair_tokens_map")
top = (frame.groupby(["dst_pos", "dst_token"], as_index=False)["weight"].sum()
       .sort_values("weight", ascending=False).head(15))
st.caption(f"The {escape(dst_words)} tokens that receive the most attention from {escape(src_words)} tokens (summed "
           "weight):")
st.dataframe(top, hide_index=True, key="pair_top_tokens")
