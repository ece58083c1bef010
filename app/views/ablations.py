"""Ablations: the paper's Table 1 for the run, per-layer sweeps, the head-ablation heatmap, and the
per-query deltas of the condition clicked (or chosen)."""

from __future__ import annotations

import streamlit as st

from app import charts, data, queries, state, ui
from app.commands import ABLATIONS_FLAGS, SWEEP_FLAGS, command_for
from precompute.conditions import BASELINE
from precompute.statistics import ALPHA, STARS_LEGEND, stars

ctx, run = ui.require_run()
ABLATIONS_COMMAND = command_for(run, ABLATIONS_FLAGS)
SWEEPS_COMMAND = command_for(run, SWEEP_FLAGS)
sl = ctx.slice

st.title("Ablations")
st.caption(f"{run.dataset_name} x {run.model_name} · queries of the slice: "
           f"{'all' if not sl.qids else len(sl.qids)} (ablations act on every layer/head named by the condition; "
           "the slice's layers, heads and negative types do not apply here)")

if not (run.has("ablation_summary") and run.has("ablation_metrics")):
    ui.missing_table("ablations", ABLATIONS_COMMAND)
    st.stop()

options = data.query(run, queries.ablation_options)
if options.empty:
    ui.missing_table("ablation results", ABLATIONS_COMMAND)
    st.stop()
scopes = list(dict.fromkeys(options["scope"]))
c1, c2 = st.columns(2)
state.bind("abl_scope", scopes[0], clean=state.choice(scopes, scopes[0]))
c1.selectbox("Scope (which pairs are ranked)", scopes, key="abl_scope",
             help="pairs: all pairs of the run (easy negatives count as non-relevant); judged: judged pairs only; "
                  "run: the candidate run's pairs.")
state.publish("abl_scope", default=scopes[0])
scope = st.session_state["abl_scope"]
measures = list(options[options["scope"] == scope]["measure"])
state.bind("abl_measure", measures[0], clean=state.choice(measures, measures[0]))
c2.selectbox("Measure", measures, key="abl_measure")
state.publish("abl_measure", default=measures[0])
measure = st.session_state["abl_measure"]

table = data.query(run, queries.ablation_table, scope, measure)
sweeps = data.query(run, queries.ablation_layer_sweeps, scope, measure)
heads = data.query(run, queries.ablation_heads, scope, measure)
conditions = [c for c in list(table["condition_id"]) + list(sweeps["condition_id"]) + list(heads["condition_id"])
              if c != BASELINE]

# -- Table 1 ----------------------------------------------------------------------------------
st.subheader(f"Table 1: {measure} under each ablation ({scope})")
shown = table.copy()
shown["significance"] = [stars(p, not_significant="n.s.") for p in shown["p_holm"]]
if sl.qids:
    part = data.query(run, queries.ablation_slice_means, sl, scope, measure)
    shown = shown.merge(part[["condition_id", "n_queries", "mean", "delta"]].rename(
        columns={"n_queries": "slice_queries", "mean": "slice_mean", "delta": "slice_delta"}),
        on="condition_id", how="left")
event = st.dataframe(
    shown, hide_index=True, key="abl_table", on_select="rerun", selection_mode="single-row",
    column_config={
        "condition_id": "Condition id", "mean": st.column_config.NumberColumn(measure, format="%.4f"),
        "baseline": st.column_config.NumberColumn("Baseline", format="%.4f"),
        "delta": st.column_config.NumberColumn("Delta", format="%+.4f"),
        "p_holm": st.column_config.NumberColumn("p (Holm)", format="%.3g"),
        "p": st.column_config.NumberColumn("p", format="%.3g"), "t": st.column_config.NumberColumn("t", format="%.2f"),
    },
)
st.caption("Delta = condition - baseline, mean over queries; paired t-test over queries, Holm-corrected across the "
           f"run's conditions ({STARS_LEGEND}). Select a row to see its per-query deltas below.")
ui.table_download(shown, f"{run.name}-table1-{scope}-{measure}", key="abl_table_csv")

picked = None
try:
    rows = list(event["selection"]["rows"])
except (KeyError, TypeError):
    rows = []
if rows:
    picked = shown.iloc[rows[0]]["condition_id"]

# -- per-layer sweeps -------------------------------------------------------------------------
if len(sweeps):
    st.subheader("Per-layer sweeps")
    ui.chart(charts.layer_sweep(sweeps, title=f"{measure} change when one layer is ablated ({run.model_name}, "
                                              f"{run.dataset_name}, {scope})",
                                y_title=f"Delta {measure} (condition - baseline)"),
             sweeps, f"{run.name}-layer-sweeps-{scope}-{measure}", key="abl_sweeps")
else:
    st.caption(f"No per-layer sweeps in this run (`{SWEEPS_COMMAND}` computes them).")

# -- head ablations ---------------------------------------------------------------------------
clicked = ui.cell_from_event(st.session_state.get("abl_heads_map"))
if len(heads):
    st.subheader("Head ablations")
    modes = list(dict.fromkeys(heads["mode"]))
    hmode = modes[0]
    if len(modes) > 1:
        state.bind("abl_head_mode", modes[0], clean=state.choice(modes, modes[0]))
        st.radio("Mode", modes, key="abl_head_mode", horizontal=True)
        state.publish("abl_head_mode", default=modes[0])
        hmode = st.session_state["abl_head_mode"]
    hm = heads[heads["mode"] == hmode].copy()
    hm["significant"] = hm["p_holm"] < ALPHA
    ui.chart(charts.head_heatmap(hm, "delta", title=f"{measure} change when one head is ablated ({hmode}; "
                                                    f"{run.model_name}, {run.dataset_name})",
                                 value_title=f"Delta {measure}", diverging=True,
                                 tooltip=["mean", "p_holm", "condition_id"], mark_significant="significant"),
             hm, f"{run.name}-head-ablations-{scope}-{measure}", key="abl_heads_map", select=charts.CELL)
    st.caption(f"Stars mark Holm-corrected p < {ALPHA}. Click a head to see its per-query deltas below.")
    if clicked is not None and clicked != st.session_state.get("_abl_last_click"):
        st.session_state["_abl_last_click"] = clicked
        hit = hm[(hm["layer"] == clicked[0]) & (hm["head"] == clicked[1])]
        if len(hit):
            picked = hit.iloc[0]["condition_id"]
else:
    st.caption(f"No head ablations in this run (`{SWEEPS_COMMAND}` computes them).")

# -- per-query deltas -------------------------------------------------------------------------
st.divider()
st.subheader("Per-query deltas")
if not conditions:
    st.info("The run has only the baseline.")
    st.stop()
# Default: the Table 1 condition with the largest effect (else the first condition).
effects = table[table["condition_id"] != BASELINE].dropna(subset=["delta"])
default = str(effects.loc[effects["delta"].abs().idxmax(), "condition_id"]) if len(effects) else conditions[0]
if picked is not None and picked in conditions and picked != st.session_state.get("_abl_last_pick"):
    st.session_state["_abl_last_pick"] = picked
    st.session_state["abl_cond"] = picked
state.bind("abl_cond", default, clean=state.choice(conditions, default))
st.selectbox("Condition", conditions, key="abl_cond")
state.publish("abl_cond", default=default)
cond = st.session_state["abl_cond"]
per_query = data.query(run, queries.ablation_per_query, sl, cond, scope, measure)
if per_query.empty:
    st.info("No per-query values for this condition in the slice.")
    st.stop()
m = st.columns(3)
m[0].metric(f"Mean {measure} under {cond}", f"{per_query['value'].mean():.4f}")
m[1].metric("Mean delta over the slice's queries", f"{per_query['delta'].mean():+.4f}")
m[2].metric("Queries hurt / helped", f"{int((per_query['delta'] < 0).sum())} / {int((per_query['delta'] > 0).sum())}")
ui.chart(charts.delta_bars(per_query[["qid", "delta", "value", "baseline", "query"]],
                           title=f"{measure} change per query under {cond} ({run.model_name}, {run.dataset_name})",
                           x_title=f"Delta {measure} (condition - baseline)"),
         per_query, f"{run.name}-per-query-{cond}-{scope}-{measure}", key="abl_per_query")
st.dataframe(per_query, hide_index=True, key="abl_per_query_table")
