"""Compare runs: two runs side by side (two models on one dataset, or one model on two datasets): the head atlas
of each and their difference, aligned by layer index (the shared layer x head grid) or by relative depth (each
layer's mean, or largest, head value against (layer + 0.5) / layers, binned into the shallower model's layers:
``matching_atlas.depth``), and the ablation table of each."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, data, state, ui
from matching_atlas import depth
from matching_atlas.ablations import TABLE1_KINDS, compare_deltas
from precompute.conditions import REGISTRY
from precompute.statistics import FEW_QUERIES_WARNING, MIN_QUERIES, STARS_LEGEND
from precompute.depth import layers_in_span
from app.commands import ABLATIONS_FLAGS, command_for
from app.family import labels_of
from app.runs import run_labels
from app.text import code, escape
from app.slice import Slice, sliced_away
from precompute.metrics import METRICS
from precompute.names import CONTRAST_LABELS, CONTRASTS


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
c1.selectbox("Compare the sidebar's run with", names, key="cmp_run",
             format_func=lambda n: f"{n}: {run_labels(ctx.runs)[n]}")
state.publish("cmp_run", default=default)
run_b = ui.verified(by_name[st.session_state["cmp_run"]])  # checked before any of its data is shown
if not run_b.ok:
    st.error(f"Run B cannot be opened: {escape(run_b.problem)}", icon=":material/error:")
    st.stop()
lab_a, lab_b = labels_of(run_a), labels_of(run_b)
DEFAULT_METRIC = "q_d" if lab_a.possible("q_d") and lab_b.possible("q_d") else "d_q"


def metric_choice(m: str) -> str:
    gone = [tag for tag, lab in (("A", lab_a), ("B", lab_b)) if not lab.possible(m)]
    return f"{m}: {lab_a.metric(m)}" + (f" (not possible in {' and '.join(gone)}: causal)" if gone else "")


state.bind("cmp_metric", DEFAULT_METRIC, clean=state.choice(list(METRICS), DEFAULT_METRIC))
c2.selectbox("Metric", list(METRICS), key="cmp_metric", format_func=metric_choice)
state.publish("cmp_metric", default=DEFAULT_METRIC)
VIEWS = {"mean": "Mean over the slice", **CONTRAST_LABELS}
state.bind("cmp_view", "mean", clean=state.choice(list(VIEWS), "mean"))
c3.radio("Show", list(VIEWS), key="cmp_view", format_func=VIEWS.get, horizontal=True)
state.publish("cmp_view", default="mean")
metric, view = st.session_state["cmp_metric"], st.session_state["cmp_view"]

ALIGN = {"layer": "Layer index (layer x head grid)", "depth": "Relative depth (layer / number of layers)"}
layers_a, layers_b = int(run_a.model.layers or ctx.layers), int(run_b.model.layers or 0) or None
default_align = "layer" if layers_b in (None, layers_a) else "depth"
state.bind("cmp_align", default_align, clean=state.choice(list(ALIGN), default_align))
st.radio("Align the two models by", list(ALIGN), key="cmp_align", format_func=ALIGN.get, horizontal=True,
         help="Models of different depths (a 6-layer MiniLM, a 24-layer MonoBERT-large) only compare by relative "
              "depth: layer l of an L-layer model sits at (l + 0.5) / L, and the deeper model's layers are binned "
              "into the shallower model's.")
state.publish("cmp_align", default=default_align)
align = st.session_state["cmp_align"]

A, B = f"A: {run_a.name}", f"B: {run_b.name}"  # folder names: unique in a store, whatever model and dataset
st.caption(f"**{escape(A)}** vs **{escape(B)}** · slice: {escape(sl.describe())}. A and B share one colour scale."
           + ("" if lab_a.names == lab_b.names else
              f" Segment words differ: A {escape(', '.join(lab_a.names))}; B {escape(', '.join(lab_b.names))} (the "
              "columns are the same: the labels follow A)."))

# The slice's queries only exist in the run of the same dataset; layers/heads are clamped to each model (by
# depth: B's layers whose middle lies in the depth span of the slice's layers of A).
def slice_for(run) -> Slice:
    same_dataset = run.dataset_name == run_a.dataset_name
    s = sl if same_dataset else sl.with_(qids=())
    n = int(run.model.layers or 10**6)
    if align == "depth" and run is not run_a and s.layers is not None and run.model.layers:
        s = s.with_(layers=layers_in_span(s.layers[0], s.layers[1], layers_a, n) or s.layers)
    return s.clamp(layers=n, heads=int(run.model.heads or 10**6))


sl_a, sl_b = slice_for(run_a), slice_for(run_b)
if sl.qids and run_b.dataset_name != run_a.dataset_name:
    st.caption(f"B is another dataset ({escape(run_b.dataset_name)}): the slice's query filter is not applied to B.")
if align == "depth" and sl.layers is not None and sl_b.layers != sl.layers:
    st.caption(f"The slice's layers {sl.layers[0]}-{sl.layers[1]} of A are B's layers "
               f"{sl_b.layers[0] if sl_b.layers else 0}-{sl_b.layers[1] if sl_b.layers else (layers_b or 1) - 1} "
               "by relative depth.")


def grid_of(run, s):
    if view == "mean":
        return data.query(run, "head_means", metric, where=s), "mean"
    gone = sliced_away(s, data.query(run, "slice_options"), CONTRASTS[view], grades_on=CONTRASTS[view][:1])
    if gone:  # a difference needs both groups (as on the Head atlas)
        st.warning(f"Run {'A' if run is run_a else 'B'}: the slice leaves no {' and no '.join(gone)} pairs, so its "
                   f"{escape(VIEWS[view])} map is not drawn.", icon=":material/filter_alt_off:")
        return pd.DataFrame(columns=["layer", "head", "diff"]), "diff"
    return data.query(run, "head_difference", metric, view, where=s), "diff"


grid_a, value = grid_of(run_a, sl_a)
grid_b, _ = grid_of(run_b, sl_b)
label = lab_a.metric(metric)
value_title = f"Mean {label}" if view == "mean" else f"{label}: {VIEWS[view]}"
diverging = view != "mean"
for tag, lab, grid in (("A", lab_a, grid_a), ("B", lab_b, grid_b)):
    if len(grid) and grid[value].isna().all():
        st.info(f"Run {tag}: {escape(lab.why_empty(metric))}", icon=":material/block:")

if align == "depth":
    st.subheader("By relative depth")
    c1, _ = st.columns([1, 2])
    HOW = {"mean": "Mean over the layer's heads", "max": "Largest head of the layer"}
    state.bind("cmp_depth_stat", "mean", clean=state.choice(list(HOW), "mean"))
    c1.radio("Per layer", list(HOW), key="cmp_depth_stat", format_func=HOW.get, horizontal=True)
    state.publish("cmp_depth_stat", default="mean")
    how = st.session_state["cmp_depth_stat"]
    la, lb = int(run_a.model.layers or ctx.layers), int(run_b.model.layers or (grid_b["layer"].max() + 1))
    prof_a = depth.layer_profile(grid_a, value, la, how) if len(grid_a) else pd.DataFrame()
    prof_b = depth.layer_profile(grid_b, value, lb, how) if len(grid_b) else pd.DataFrame()
    if prof_a.empty or prof_b.empty:
        st.warning("One of the runs has no pairs in the slice for this view.")
    else:
        y_title = f"{metric}, {how} over the layer's heads"
        long = pd.concat([prof_a.assign(run=A), prof_b.assign(run=B)], ignore_index=True).dropna(subset=["value"])
        if len(long):
            ui.chart(charts.depth_lines(long, title=[f"{value_title} by relative depth",
                                                     f"{run_a.name} ({la} layers) vs {run_b.name} ({lb} layers)"],
                                        y_title=y_title),
                     long, f"compare-depth-{run_a.name}-vs-{run_b.name}-{metric}-{view}", key="cmp_depth_lines")
        bins = depth.align_by_depth(prof_a, la, prof_b, lb)
        st.caption(f"Depth bins = the shallower model's {min(la, lb)} layers: layer l of an L-layer model goes to "
                   f"bin floor((l + 0.5) x {min(la, lb)} / L); a bin's value is the mean of its layers' values.")
        valid = bins.dropna(subset=["diff"])
        if len(valid):
            ui.chart(charts.depth_bins(valid, title=["B - A by depth bin", f"{value_title} ({how} over heads)"],
                                       x_title="B - A"),
                     valid, f"compare-depth-bins-{run_a.name}-vs-{run_b.name}-{metric}-{view}", key="cmp_depth_bins")
        st.dataframe(bins, hide_index=True, key="cmp_depth_values")

st.subheader("Head atlas" + (" (layer x head, by layer index)" if align == "depth" else ""))
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
        ui.chart(charts.head_heatmap(grid, value, title=[f"{tag}: {value_title}", f"{run.name} ({run.model_name} on "
                                                                                   f"{run.dataset_name})"],
                                     value_title=value_title, diverging=diverging, selectable=False,
                                     domain=shared, missing=labels_of(run).missing(metric)),
                 grid, f"compare-{tag}-{run.name}-{metric}-{view}", key=key)

if align == "layer" and len(grid_a) and len(grid_b):
    diff = compare_frames(grid_a, grid_b, ["layer", "head"], value)
    common = diff.dropna(subset=["diff"])
    shared_cells = diff.dropna(subset=[f"{value}_a", f"{value}_b"], how="all")
    if common.empty and len(diff.dropna(subset=["layer"])) and len(shared_cells) and \
            not (lab_a.possible(metric) and lab_b.possible(metric)):
        st.info(f"No difference: {metric} is not possible (causal) in at least one of the runs.")
    elif common.empty:
        st.info("The two runs share no layer x head with a value.")
    else:
        ui.chart(charts.head_heatmap(common, "diff", title=[f"B - A: {value_title}",
                                                            f"{run_b.name} minus {run_a.name}"],
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
            st.info(f"Run {tag} ({escape(run.name)}) has no ablations yet: {code(command_for(run, ABLATIONS_FLAGS))}")
    st.stop()
oa = data.query(run_a, "ablation_options")
ob = data.query(run_b, "ablation_options")
common_options = oa.merge(ob, on=["scope", "measure"])
if common_options.empty:
    st.info("The two runs share no (scope, measure) of ablation results.")
    st.stop()
combos = [f"{s} · {m}" for s, m in zip(common_options["scope"], common_options["measure"])]
state.bind("cmp_abl", combos[0], clean=state.choice(combos, combos[0]))
st.selectbox("Scope and measure", combos, key="cmp_abl")
state.publish("cmp_abl", default=combos[0])
scope, measure = st.session_state["cmp_abl"].split(" · ", 1)
ta = data.query(run_a, "table1", measure=measure, scope=scope)  # every kind: Table 1, sweeps, heads, components ...
tb = data.query(run_b, "table1", measure=measure, scope=scope)
table = compare_frames(ta, tb, ["condition_id"], "delta")
for tag, t in (("a", ta), ("b", tb)):
    table = table.merge(t[["condition_id", "kind", "mean", "p_holm", "n_queries"]].rename(
        columns={"kind": f"kind_{tag}", "mean": f"mean_{tag}", "p_holm": f"p_holm_{tag}",
                 "n_queries": f"n_queries_{tag}"}), on="condition_id", how="left")
table.insert(1, "kind", table["kind_a"].fillna(table["kind_b"]))
table = table[table["kind"] != "baseline"]

# Kinds only one run computed: said, with the command that adds them, instead of rows of None
kinds_a, kinds_b = set(ta["kind"]), set(tb["kind"])
order = list(REGISTRY)
for kind in sorted((kinds_a ^ kinds_b) - {"baseline"}, key=lambda k: order.index(k) if k in order else len(order)):
    has, lacks, other = ("A", "B", run_b) if kind in kinds_a else ("B", "A", run_a)
    spec = REGISTRY.get(kind)
    flags = {"ablations": (spec.condition_set,)} if spec is not None and spec.condition_set else ABLATIONS_FLAGS
    st.info(f"Only run {has} has {escape(spec.title if spec else kind)} conditions: run {lacks} "
            f"({escape(other.name)}) computed none, so they are listed without a B - A difference. Compute them with "
            f"{code(command_for(other, flags))}.", icon=":material/info:")

# B - A over the queries both runs hold: the paired test per condition
tests = compare_deltas(data.query(run_a, "query_deltas", measure=measure, scope=scope, where=sl_a),
                       data.query(run_b, "query_deltas", measure=measure, scope=scope, where=sl_b))
table = table.merge(tests.rename(columns={"diff": "test_diff", "n_queries": "shared_queries"}),
                    on="condition_id", how="left")
table = table[["condition_id", "kind", "n_queries_a", "mean_a", "delta_a", "p_holm_a", "n_queries_b", "mean_b",
               "delta_b", "p_holm_b", "diff", "shared_queries", "test_diff", "t", "p", "p_holm", "significance"]]
st.dataframe(table, hide_index=True, key="cmp_ablations", column_config={
    "diff": st.column_config.NumberColumn("delta B - delta A (all queries)", format="%+.4f"),
    "shared_queries": st.column_config.NumberColumn("Shared queries", format="%d"),
    "test_diff": st.column_config.NumberColumn("B - A over shared queries", format="%+.4f"),
    "p_holm": st.column_config.NumberColumn("p (Holm, B - A)", format="%.3g"),
    "significance": "B - A"})
shared = tests["n_queries"].max() if len(tests) else 0
st.caption(f"delta = condition - baseline of {escape(measure)} ({escape(scope)}), mean over each run's queries. B - A "
           "is tested over the queries both runs hold (the slice's queries where it names some): per query, delta_B - "
           "delta_A; a paired two-sided t-test over those queries, Holm across the conditions; "
           f"{STARS_LEGEND}; no star below {MIN_QUERIES} queries.")
if not len(tests) or shared == 0:
    st.info(f"The runs share no query ({escape(run_a.dataset_name)} vs {escape(run_b.dataset_name)}): B - A cannot be "
            "tested query by query, only the two means compared.", icon=":material/info:")
elif shared < MIN_QUERIES:
    st.warning(f"B - A rests on {int(shared)} shared queries: {FEW_QUERIES_WARNING}.", icon=":material/warning:")
ui.table_download(table, f"compare-ablations-{run_a.name}-vs-{run_b.name}", key="cmp_ablations_csv")
long = table.melt(id_vars=["condition_id"], value_vars=["delta_a", "delta_b"], var_name="run", value_name="delta")
long["run"] = long["run"].map({"delta_a": A, "delta_b": B})
long = long.dropna(subset=["delta"])
long = long[long["condition_id"].isin(table.loc[table["kind"].isin(TABLE1_KINDS), "condition_id"])]
ui.chart(charts.grouped_deltas(long, title=f"Table 1 ablation effects on {measure} ({scope}), A vs B",
                               x_title=f"Delta {measure} (condition - baseline)"),
         long, f"compare-ablation-deltas-{run_a.name}-vs-{run_b.name}", key="cmp_ablation_bars")
