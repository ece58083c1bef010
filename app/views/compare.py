"""Compare runs: two runs side by side (two models on one dataset, or one model on two datasets):
the head atlas and the ablation table of each, and their difference."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, data, queries, state, ui
from app.commands import ABLATIONS_FLAGS, command_for
from app.runs import run_labels
from app.slice import Slice
from precompute.names import CONTRAST_LABELS, METRICS, metric_label


def compare_frames(a: pd.DataFrame, b: pd.DataFrame, keys: list[str], value: str) -> pd.DataFrame:
    """Outer-join two results on ``keys`` and add ``diff`` = b - a of ``value`` (NaN where one side lacks the key)."""
    left = a[keys + [value]].rename(columns={value: value + "_a"})
    right = b[keys + [value]].rename(columns={value: value + "_b"})
    out = left.merge(right, on=keys, how="outer")
    out["diff"] = out[value + "_b"] - out[value + "_a"]
    return out.sort_values(keys).reset_index(drop=True)


ctx, run_a = ui.require_run()
sl = ctx.slice

st.title("Compare runs")
others = [r for r in ctx.ok_runs if r.name != run_a.name]
if not others:
    st.info("The store holds only one run this app can open. Build a second one (another model, or the same "
            "model on another dataset) to compare.")
    st.stop()
names = [r.name for r in others]
by_name = {r.name: r for r in others}
# Default partner: same model on another dataset, else another model on the same dataset, else the first.
default = next((r.name for r in others if r.model_name == run_a.model_name),
               next((r.name for r in others if r.dataset_name == run_a.dataset_name), names[0]))
state.bind("cmp_run", default, clean=state.choice(names, default))
c1, c2, c3 = st.columns([2, 2, 2])
c1.selectbox("Compare the sidebar's run with", names, key="cmp_run", format_func=run_labels(ctx.runs).get)
state.publish("cmp_run", default=default)
run_b = by_name[st.session_state["cmp_run"]]
state.bind("cmp_metric", "q_d", clean=state.choice(list(METRICS), "q_d"))
c2.selectbox("Metric", list(METRICS), key="cmp_metric", format_func=lambda m: f"{m}: {metric_label(m)}")
state.publish("cmp_metric", default="q_d")
VIEWS = {"mean": "Mean over the slice", **CONTRAST_LABELS}
state.bind("cmp_view", "mean", clean=state.choice(list(VIEWS), "mean"))
c3.radio("Show", list(VIEWS), key="cmp_view", format_func=VIEWS.get, horizontal=True)
state.publish("cmp_view", default="mean")
metric, view = st.session_state["cmp_metric"], st.session_state["cmp_view"]

A, B = f"A: {run_a.label}", f"B: {run_b.label}"
st.caption(f"**{A}** vs **{B}** · slice: {sl.describe()}. A and B share one colour scale.")

# The slice's queries only exist in the run of the same dataset; layers/heads are clamped to each model.
def slice_for(run) -> Slice:
    same_dataset = run.dataset_name == run_a.dataset_name
    s = sl if same_dataset else sl.with_(qids=())
    return s.clamp(layers=int(run.model.layers or 10**6), heads=int(run.model.heads or 10**6))


sl_a, sl_b = slice_for(run_a), slice_for(run_b)
if sl.qids and run_b.dataset_name != run_a.dataset_name:
    st.caption(f"B is another dataset ({run_b.dataset_name}): the slice's query filter is not applied to B.")


def grid_of(run, s):
    if view == "mean":
        return data.query(run, queries.head_means, s, metric), "mean"
    return data.query(run, queries.head_difference, s, metric, view), "diff"


grid_a, value = grid_of(run_a, sl_a)
grid_b, _ = grid_of(run_b, sl_b)
label = metric_label(metric)
value_title = f"Mean {label}" if view == "mean" else f"{label}: {VIEWS[view]}"
diverging = view != "mean"

st.subheader("Head atlas")
both = [g[value] for g in (grid_a, grid_b) if len(g)]
shared = None
if both:
    values = pd.concat(both)
    shared = (float(values.min()), float(values.max())) if values.notna().any() else None
left, right = st.columns(2)
for col, grid, run, tag, key in ((left, grid_a, run_a, "A", "cmp_map_a"), (right, grid_b, run_b, "B", "cmp_map_b")):
    with col:
        if grid.empty:
            st.warning(f"Run {tag} has no pairs in the slice for this view.")
            continue
        ui.chart(charts.head_heatmap(grid, value, title=f"{tag}: {value_title} ({run.model_name}, {run.dataset_name})",
                                     value_title=value_title, diverging=diverging, selectable=False,
                                     domain=shared),
                 grid, f"compare-{tag}-{run.name}-{metric}-{view}", key=key)

if len(grid_a) and len(grid_b):
    diff = compare_frames(grid_a, grid_b, ["layer", "head"], value)
    common = diff.dropna(subset=["diff"])
    if common.empty:
        st.info("The two runs share no layer x head.")
    else:
        ui.chart(charts.head_heatmap(common, "diff", title=f"B - A: {value_title} ({run_b.model_name} on "
                                                            f"{run_b.dataset_name} minus {run_a.model_name} on "
                                                            f"{run_a.dataset_name})",
                                     value_title=f"B - A, {value_title}", diverging=True, selectable=False,
                                     tooltip=[f"{value}_a", f"{value}_b"]),
                 common, f"compare-diff-{run_a.name}-vs-{run_b.name}-{metric}-{view}", key="cmp_map_diff")
        if len(common) < len(diff):
            st.caption(f"{len(diff) - len(common)} heads exist in only one of the runs (different architectures): "
                       "the difference covers the shared layer x head grid.")
        with st.expander("Values"):
            st.dataframe(diff, hide_index=True, key="cmp_values")

st.subheader("Ablation table")
has_a, has_b = run_a.has("ablation_summary"), run_b.has("ablation_summary")
if not (has_a and has_b):
    for run, has, tag in ((run_a, has_a, "A"), (run_b, has_b, "B")):
        if not has:
            st.info(f"Run {tag} ({run.name}) has no ablations yet: `{command_for(run, ABLATIONS_FLAGS)}`")
    st.stop()
oa = data.query(run_a, queries.ablation_options)
ob = data.query(run_b, queries.ablation_options)
common_options = oa.merge(ob, on=["scope", "measure"])
if common_options.empty:
    st.info("The two runs share no (scope, measure) of ablation results.")
    st.stop()
combos = [f"{s} · {m}" for s, m in zip(common_options["scope"], common_options["measure"])]
state.bind("cmp_abl", combos[0], clean=state.choice(combos, combos[0]))
st.selectbox("Scope and measure", combos, key="cmp_abl")
state.publish("cmp_abl", default=combos[0])
scope, measure = st.session_state["cmp_abl"].split(" · ", 1)
ta = data.query(run_a, queries.ablation_table, scope, measure)
tb = data.query(run_b, queries.ablation_table, scope, measure)
table = compare_frames(ta, tb, ["condition_id"], "delta")
table = table.merge(ta[["condition_id", "mean", "p_holm"]].rename(columns={"mean": "mean_a", "p_holm": "p_holm_a"}),
                    on="condition_id", how="left")
table = table.merge(tb[["condition_id", "mean", "p_holm"]].rename(columns={"mean": "mean_b", "p_holm": "p_holm_b"}),
                    on="condition_id", how="left")
table = table[["condition_id", "mean_a", "delta_a", "p_holm_a", "mean_b", "delta_b", "p_holm_b", "diff"]]
st.dataframe(table, hide_index=True, key="cmp_ablations",
             column_config={"diff": st.column_config.NumberColumn("delta B - delta A", format="%+.4f")})
ui.table_download(table, f"compare-ablations-{run_a.name}-vs-{run_b.name}", key="cmp_ablations_csv")
long = table.melt(id_vars=["condition_id"], value_vars=["delta_a", "delta_b"], var_name="run", value_name="delta")
long["run"] = long["run"].map({"delta_a": A, "delta_b": B})
long = long.dropna(subset=["delta"])
ui.chart(charts.grouped_deltas(long, title=f"Ablation effects on {measure} ({scope}), A vs B",
                               x_title=f"Delta {measure} (condition - baseline)"),
         long, f"compare-ablation-deltas-{run_a.name}-vs-{run_b.name}", key="cmp_ablation_bars")
