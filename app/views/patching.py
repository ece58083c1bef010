"""Activation patching: how much of the score difference between a clean and a corrupted input one activation
recovers (effect = (patched - corrupted) / (clean - corrupted)), exactly or to first order (attribution patching):
the heads ranked by the robust summary (median, ratio of sums, thresholded mean with bootstrap intervals over
queries; docs/patching.md), the share each head and each layer x component x segment recovers in the slice (ratio of
sums with its interval over the slice's queries; the plain mean over pairs only as a descriptive column), and the
patch pairs with the largest effect of a clicked head or component. NULL effects (|clean - corrupted| < epsilon) are
counted and shown as such, never averaged as 0."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from app import charts, data, links, state, ui
from app.commands import PATCHING_FLAGS, command_for
from app.family import labels_of
from app.text import escape

ctx, run = ui.require_run()
sl = ctx.slice
lab = labels_of(run)
info = run.manifest.patching if run.manifest else None
EPS = f"{info.epsilon:g}" if info is not None and info.epsilon is not None else "epsilon"
EXPERIMENT_WORDS = {
    "tfc1": "tfc1: a query term (clean) vs a filler of as many tokens (corrupted) inserted in the passage",
    "tfc2": "tfc2: the query term twice (clean) vs the term and a filler (corrupted): a second occurrence",
    "stmc1": "stmc1: a word related to the query term (clean) vs a filler (corrupted)",
    "cls": "cls: a relevant passage (clean) vs a hard negative (corrupted) of the same query, patched at the pooling "
           "position only",
}
METHOD_WORDS = {"attribution": "attribution (first-order estimate of every activation)",
                "exact": "exact (a forward pass per patched activation)"}

st.title("Activation patching")
st.caption(f"{escape(run.dataset_name)} x {escape(run.model_name)} · slice: {escape(sl.describe())}. Effect = "
           "(patched - corrupted) / "
           "(clean - corrupted): 1 = the patched activation carries the whole score difference, 0 = none of it.")

if not (run.has("patching_effects") and run.has("patching_pairs")):
    ui.missing_table("activation-patching results", command_for(run, PATCHING_FLAGS))
    st.stop()

experiments = data.query(run, "patching_experiments")
if experiments.empty:
    ui.missing_table("activation-patching results", command_for(run, PATCHING_FLAGS))
    st.stop()
names = list(experiments["experiment"])
default_exp = "tfc1" if "tfc1" in names else names[0]
state.bind("pat_exp", default_exp, clean=state.choice(names, default_exp))
st.radio("Experiment", names, key="pat_exp", horizontal=True,
         format_func=lambda e: f"{escape(EXPERIMENT_WORDS.get(e, e))} "
                               f"({int(experiments.set_index('experiment').at[e, 'patch_pairs']):,} pairs)")
state.publish("pat_exp", default=default_exp)
exp = st.session_state["pat_exp"]
if exp == "cls":
    st.caption("cls pairs join the slice by their hard negative or their relevant passage (negative types, grades); "
               "the slice's queries apply to both.")
SEGMENT_NAMES = {"cls": "pooling position"} if exp == "cls" else {"all": "all tokens"}
methods = data.query(run, "patching_methods", exp)
method_names = list(methods["method"])
state.bind("pat_method", method_names[0], clean=state.choice(method_names, method_names[0]))
st.radio("Method", method_names, key="pat_method", horizontal=True,
         format_func=lambda m: f"{METHOD_WORDS.get(m, m)} ({int(methods.set_index('method').at[m, 'heads'])} heads)")
state.publish("pat_method", default=method_names[0])
method = st.session_state["pat_method"]

# -- robust summary ---------------------------------------------------------------------------------
st.subheader("Heads ranked by how surely they recover the difference")
summary = data.query(run, "patching_summary", exp, method)
ranked = summary[summary["component"] == "head"].sort_values("rank") if not summary.empty else summary
if ranked.empty:
    st.info("No head was patched with this method.")
else:
    first = ranked.iloc[0]
    r = st.columns(4)
    r[0].metric("Input pairs", f"{int(first['n_pairs']):,}", help="Every input pair of the experiment (not the slice).")
    r[1].metric("Queries", f"{int(first['n_queries']):,}", help="The intervals resample queries, not pairs.")
    r[2].metric("Excluded from the thresholded mean", f"{int(first['n_excluded']):,}",
                help="|clean - corrupted| below the run's min delta (--patching-min-delta).")
    r[3].metric("Corruption raised the score", f"{int(first['n_raised']):,}",
                help="Pairs with corrupted > clean: kept in every statistic.")
    table = ranked.assign(head_label=[ui.head_label(int(a), int(b)) for a, b in zip(ranked["layer"], ranked["head"])],
                          open=links.head_column(ranked))
    st.dataframe(table[["open", "rank", "head_label", "ratio", "ratio_low", "ratio_high", "median", "median_low",
                        "median_high", "tmean", "tmean_low", "tmean_high", "mean"]],
                 hide_index=True, key="pat_summary", column_config={
                     "head_label": "head", "open": links.column("Head", "Open the head in the Head atlas (new tab)"), "mean": st.column_config.NumberColumn("plain mean", format="%+.3f"),
                     **{c: st.column_config.NumberColumn(c, format="%+.3f") for c in
                        ("ratio", "ratio_low", "ratio_high", "median", "median_low", "median_high", "tmean",
                         "tmean_low", "tmean_high")}})
    st.caption("Ranked by ratio_low, the lower end of the ratio of sums' interval. ratio = sum(patched - corrupted) / "
               "sum(clean - corrupted); median = the pairs' median effect; tmean = the mean effect over pairs whose "
               "|clean - corrupted| reaches the min delta; each with a 95% bootstrap interval over queries. The plain "
               "mean, dominated by pairs whose corruption barely moved the score, is shown for comparison only.")
    ui.table_download(table.drop(columns="open"), f"{run.name}-patching-{exp}-{method}-summary", key="pat_summary_csv")

heads = data.query(run, "patching_heads", exp, where=sl, method=method)
comps = data.query(run, "patching_components", exp, where=sl, method=method)
rows = int(heads["n"].sum() + heads["n_null"].sum() + comps["n"].sum() + comps["n_null"].sum())
nulls = int(heads["n_null"].sum() + comps["n_null"].sum())
if rows == 0:
    st.warning("The slice holds no patch pair of this experiment (check the negative types, grades and queries).")
    st.stop()
m = st.columns(3)
m[0].metric("Patched activations x pairs in the slice", f"{rows:,}")
m[1].metric("NULL effects", f"{nulls:,}", help=f"|clean - corrupted| < {EPS}: the effect is undefined; counted here "
                                                 "and left out of every mean (never averaged as 0).")
skipped = (info.skipped or {}).get(exp) if info is not None else None
m[2].metric("Run pairs left out (no aligned term and filler)", f"{skipped:,}" if isinstance(skipped, int) else "n/a")

# -- layer x head --------------------------------------------------------------------------------
st.subheader("Heads")
head_labels = [ui.head_label(a, b) for a, b in zip(heads["layer"], heads["head"])]
if heads.empty:
    st.info("No head was patched in this experiment and slice.")
else:
    default_head = head_labels[int(heads["ratio_low"].fillna(-np.inf).to_numpy().argmax())]
    clicked = ui.cell_from_event(st.session_state.get("pat_heads_map"))
    if clicked is not None and clicked != st.session_state.get("_pat_last_cell"):
        st.session_state["_pat_last_cell"] = clicked
        if ui.head_label(*clicked) in head_labels:
            st.session_state["pat_head"] = ui.head_label(*clicked)
            st.session_state["pat_target"] = "head"
    state.bind("pat_head", default_head, clean=state.choice(head_labels, default_head))
    sel = ui.parse_head(st.session_state["pat_head"])
    hm = heads.copy()
    queries = int(heads["n_queries"].max()) if heads["n_queries"].notna().any() else 0
    ui.chart(charts.head_heatmap(hm, "ratio", title=f"Share of the score gap each head recovers ({exp}; "
                                                    f"{run.model_name}, {run.dataset_name}; {queries} queries)",
                                 value_title="Ratio of sums", diverging=True,
                                 tooltip=["ratio_low", "ratio_high", "n_queries", "n", "n_null", "mean"], selected=sel,
                                 missing="undefined: the slice's score differences sum to zero"),
             hm, f"{run.name}-patching-{exp}-heads", key="pat_heads_map", select=charts.CELL)
    st.caption("Ratio of sums = sum(patched - corrupted) / sum(clean - corrupted) over the slice's pairs: the share of "
               "their total score difference the head recovers (a pair weighs by its difference, so one whose "
               "corruption barely moved the score weighs nearly nothing). Tooltip: its 95% bootstrap interval over "
               f"the slice's queries ({queries}), the pairs and NULL effects, and the plain mean over pairs "
               "(descriptive only). Click a head to list its pairs below.")
    hm["head_label"] = head_labels
    top = hm.dropna(subset=["ratio_low"]).sort_values("ratio_low", ascending=False).head(20)
    if len(top):
        ui.chart(charts.effect_intervals(top, label="head_label", value="ratio", low="ratio_low", high="ratio_high",
                                         title=f"The 20 heads whose recovered share is surely largest (ranked by the "
                                               f"interval's lower end; 95% bootstrap intervals over {queries} "
                                               f"queries, {exp})", x_title="Ratio of sums"),
                 top, f"{run.name}-patching-{exp}-top-heads", key="pat_top_heads")
    with st.expander("Values per head (ratio of sums and thresholded mean with their intervals over queries; plain "
                     "moments over pairs, descriptive)"):
        st.dataframe(hm[["layer", "head", "n_queries", "ratio", "ratio_low", "ratio_high", "tmean", "tmean_low",
                         "tmean_high", "n", "n_null", "mean", "sd"]], hide_index=True, key="pat_heads_values")

# -- components -----------------------------------------------------------------------------------
st.subheader("Components by layer")
comp_ids = [f"{a}.{c}.{g}" for a, c, g in zip(comps["layer"], comps["component"], comps["segment"])]


def comp_words(cid: str) -> str:
    layer, comp, seg = cid.split(".", 2)
    return f"layer {layer} · {comp} · {SEGMENT_NAMES.get(seg) or lab.segment(seg)}"


if comps.empty:
    st.info("No component was patched in this experiment and slice.")
else:
    picked = ui.point_from_event(st.session_state.get("pat_curves"), charts.POINT, ("layer", "component", "segment"))
    if picked is not None and picked != st.session_state.get("_pat_last_point"):
        st.session_state["_pat_last_point"] = picked
        cid = f"{int(picked[0])}.{picked[1]}.{picked[2]}"
        if cid in comp_ids:
            st.session_state["pat_comp"] = cid
            st.session_state["pat_target"] = "component"
    ui.chart(charts.component_curves(comps, title=f"Share of the score gap recovered per layer and component ({exp}; "
                                                  f"{run.model_name}, {run.dataset_name})",
                                     y_title="Ratio of sums (band: 95% interval over queries)", labels=lab,
                                     segment_names=SEGMENT_NAMES),
             comps, f"{run.name}-patching-{exp}-components", key="pat_curves", select=charts.POINT)
    st.caption("resid = the residual stream entering the layer, attn / mlp = the blocks' output projections before "
               "their residual add, resid_post = the last layer's output. Click a point to list its pairs below.")
    with st.expander("Values per layer x component x segment"):
        st.dataframe(comps, hide_index=True, key="pat_comp_values")

# -- drill-down ------------------------------------------------------------------------------------
st.divider()
st.subheader("Pairs with the largest effect")
targets = [t for t, ok in (("head", len(heads)), ("component", len(comps))) if ok]
state.bind("pat_target", targets[0], clean=state.choice(targets, targets[0]))
c1, c2, c3 = st.columns([1, 2, 1])
c1.radio("Of a", targets, key="pat_target")
state.publish("pat_target", default=targets[0])
target = st.session_state["pat_target"]
if len(heads):
    c2.selectbox("Head (layer.head)", head_labels, key="pat_head", disabled=target != "head")
    state.publish("pat_head", default=default_head)
if len(comps):
    default_comp = comp_ids[int(comps["ratio_low"].fillna(-np.inf).to_numpy().argmax())]
    state.bind("pat_comp", default_comp, clean=state.choice(comp_ids, default_comp))
    c2.selectbox("Component", comp_ids, key="pat_comp", format_func=comp_words, disabled=target != "component")
    state.publish("pat_comp", default=default_comp)
state.bind("pat_order", "largest", clean=state.choice(["largest", "smallest"], "largest"))
c3.radio("Pairs by", ["largest", "smallest"], key="pat_order", format_func=lambda o: f"{o} effect")
state.publish("pat_order", default="largest")
descending = st.session_state["pat_order"] == "largest"

if target == "head":
    layer, head = ui.parse_head(st.session_state["pat_head"])
    component, segment, what = "head", None, f"head {layer}.{head}"
    stats = heads[(heads["layer"] == layer) & (heads["head"] == head)]
else:
    lay, component, segment = st.session_state["pat_comp"].split(".", 2)
    layer, head, what = int(lay), None, comp_words(st.session_state["pat_comp"])
    stats = comps[(comps["layer"] == layer) & (comps["component"] == component) & (comps["segment"] == segment)]
row = stats.iloc[0]
k = st.columns(4)
k[0].metric(f"Share recovered, {escape(what)}", f"{row['ratio']:+.4f}" if pd.notna(row["ratio"]) else "undefined",
            help="Ratio of sums over the slice's pairs: sum(patched - corrupted) / sum(clean - corrupted). "
                 f"Plain mean over pairs (descriptive): {row['mean']:+.4f}." if pd.notna(row["mean"]) else None)
k[1].metric(f"95% interval over {int(row['n_queries']) if pd.notna(row['n_queries']) else 0} queries",
            f"{row['ratio_low']:+.3f} to {row['ratio_high']:+.3f}" if pd.notna(row["ratio_low"]) else "n/a",
            help="Percentile bootstrap over the slice's queries (seeded, the run's resamples).")
k[2].metric("Pairs with an effect", f"{int(row['n']):,}")
k[3].metric("NULL effects", f"{int(row['n_null']):,}", help=f"|clean - corrupted| < {EPS}: left out, not counted as 0.")
top = data.query(run, "patching_top_pairs", exp, layer, component, segment, head, 20, descending, where=sl,
                 method=method)
if top.empty:
    st.info(f"No pair of the slice has a defined effect for {escape(what)}.")
    st.stop()
cols = ["patch_id", "qid", "query", "term", "clean_insert", "filler", "rule", "clean", "corrupted", "patched", "effect",
        "neg_type", "grade", "docid", "passage", "clean_docid", "clean_passage", "clean_grade"]
if exp != "cls":
    cols = [c for c in cols if not c.startswith("clean_") or c == "clean_insert"]
else:
    cols = [c for c in cols if c not in ("term", "filler", "clean_insert", "rule")]
shown = top[cols].assign(open=links.pair_column(top, layer, head))
if exp == "cls":  # the clean input is a pair of the run too: its relevant passage
    shown["open_clean"] = links.pair_column(top, layer, head, pair="clean_pair_id")
st.dataframe(shown, hide_index=True, key="pat_top", column_order=["open", *(["open_clean"] if exp == "cls" else []), *cols],
             column_config={
    "open": links.column("Pair", "Open the run's pair this patch input was built from in the Pair explorer"
                         + (f" at head {layer}.{head}" if head is not None else f" at layer {layer}") + " (new tab)"),
    "open_clean": links.column("Clean pair", "Open the clean (relevant) pair in the Pair explorer (new tab)"),
    "effect": st.column_config.NumberColumn("effect", format="%+.4f"),
    "clean": st.column_config.NumberColumn("clean score", format="%.4f"),
    "corrupted": st.column_config.NumberColumn("corrupted score", format="%.4f"),
    "patched": st.column_config.NumberColumn("patched score", format="%.4f"),
    "passage": "corrupted passage" if exp == "cls" else "passage",
    "clean_passage": "clean (relevant) passage"})
st.caption(f"{exp}: the clean input is the passage with clean_insert at its start, the corrupted one with the filler "
           "there (tfc2: after one occurrence of the term); rule says how they were chosen." if exp != "cls" else
           "cls: the clean input is the relevant passage, the corrupted one the hard negative; the pooling position "
           "is patched.")
ui.table_download(top, f"{run.name}-patching-{exp}-{what}-pairs", key="pat_top_csv")
