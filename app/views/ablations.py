"""Ablations: the paper's Table 1 for the run, per-layer sweeps, the head-ablation heatmap, the conditions a causal
model refused, component conditions (MLP and attention blocks: their table and a layer x segment grid), QK-subspace
conditions (nDCG change beside the change of the head's own metrics), and the per-query deltas of the condition
clicked (or chosen). Each section's stars are Holm-corrected within its own analysis (ablation_summary.analysis)."""

from __future__ import annotations

import streamlit as st

import pandas as pd

from app import charts, data, state, ui
from app.commands import ABLATIONS_FLAGS, COMPONENT_FLAGS, SUBSPACE_FLAGS, SWEEP_FLAGS, command_for
from app.family import labels_of, refused_reason
from app.text import code, escape
from matching_atlas.ablations import TABLE1_KINDS
from precompute.conditions import BASELINE, kind_of
from precompute.names import DIRECTIONS
from precompute.conditions.contrasts import parse_contrasts
from precompute.statistics import ALPHA, FEW_QUERIES_WARNING, MIN_QUERIES, STARS_LEGEND, stars

ctx, run = ui.require_run()
ABLATIONS_COMMAND = command_for(run, ABLATIONS_FLAGS)
SWEEPS_COMMAND = command_for(run, SWEEP_FLAGS)
sl = ctx.slice
lab = labels_of(run)
info = run.manifest.ablations if run.manifest else None
refused = list(info.refused) if info is not None else []


def show_refused() -> None:
    if not refused:
        return
    st.subheader(f"Refused conditions ({len(refused)})")
    rows = [(c, *refused_reason(c, info.groups if info else None, lab)) for c in refused]
    st.dataframe(pd.DataFrame(rows, columns=["condition_id", "removes", "reason"]), hide_index=True,
                 key="abl_refused")
    st.caption("Listed in the manifest (ablations.refused): refused before the run, so they never dilute a Holm family.")


CI = "95% percentile bootstrap interval over queries (seeded with the run's seed)"
CONTRAST_TEXT_LIMIT = 300  # characters of the contrasts field (a shared link is untrusted input)


def interval_columns(names: dict[str, str], fmt: str = "%+.4f") -> dict:
    """column_config for each statistic ``name`` -> title and its ``_low`` / ``_high`` bounds."""
    out = {}
    for name, title in names.items():
        out[name] = st.column_config.NumberColumn(title, format=fmt)
        out[f"{name}_low"] = st.column_config.NumberColumn("low", format=fmt)
        out[f"{name}_high"] = st.column_config.NumberColumn("high", format=fmt)
    return out


QUERY_LEVEL_COLUMNS = ["n_queries", "score_change", "score_change_low", "score_change_high", "pairwise",
                       *(f"delta_{s}{x}" for s in ("pairwise", "pairwise_hard", "pairwise_easy") for x in ("", "_low", "_high")),
                       "ndcg_ties", "delta_ndcg_ties"]


def query_level_table() -> pd.DataFrame:
    """The Table 1 conditions (baseline first) with the reader's query-level ranking effects, as the page shows them."""
    effects = data.query(run, "ranking_effects", measure=measure, scope=scope)
    parts = table[["condition_id", "kind", "mode"]].copy()
    parts.insert(1, "removes", [lab.direction(c) if c in DIRECTIONS else c for c in table["condition"]])
    return parts.merge(effects, on="condition_id", how="inner")[list(parts.columns) + QUERY_LEVEL_COLUMNS]


def show_query_level() -> None:
    if not run.has("ablation_scores"):
        return
    st.subheader("Table 1 at query level: score change, pairwise accuracy, nDCG with ties in expectation")
    q = query_level_table()
    st.dataframe(q, hide_index=True, key="abl_query_level", column_config={
        "n_queries": st.column_config.NumberColumn("Queries", format="%d"),
        **interval_columns({"score_change": "Mean score change"}),
        "pairwise": st.column_config.NumberColumn("Pairwise accuracy", format="%.4f"),
        **interval_columns({"delta_pairwise": "Delta PA", "delta_pairwise_hard": "Delta PA vs hard",
                            "delta_pairwise_easy": "Delta PA vs easy"}),
        "ndcg_ties": st.column_config.NumberColumn("nDCG (ties in expectation)", format="%.4f"),
        "delta_ndcg_ties": st.column_config.NumberColumn("Delta nDCG (ties in expectation)", format="%+.4f")})
    st.caption("Per query, then the mean over queries with its " + CI + ". Pairwise accuracy (PA): share of a "
               "query's (relevant, non-relevant) pairs scored in the right order, a tie counting 1/2; vs hard / vs "
               "easy: only hard or only easy negatives as the non-relevant side (semantic vs lexical matching). "
               "nDCG with ties in expectation: ties broken at random, exactly in expectation (ir_measures, like "
               "trec_eval, breaks them by docid); empty for a run built from a run file (its pairs lack the judged "
               "passages below the depth).")
    ui.table_download(q, f"{run.name}-table1-query-level-{scope}-{measure}", key="abl_query_level_csv")


def contrasts_table(text: str) -> pd.DataFrame:
    """The run's declared contrasts (``Q->D vs D->Q`` first) and those named in ``text`` (parsed by the report's
    parser), as the page shows them."""
    pairs = data.query(run, "declared_contrasts") + parse_contrasts(text)
    shown = data.query(run, "condition_contrasts", list(dict.fromkeys(pairs)), measure=measure, scope=scope).copy()
    shown.insert(shown.columns.get_loc("p_holm") + 1, "significance",
                 [stars(p, not_significant="n.s.", n_queries=int(n)) if pd.notna(n) else ""
                  for p, n in zip(shown["p_holm"], shown["n_queries"])])
    return shown


def show_contrasts() -> None:
    if not run.has("ablation_scores"):
        return
    st.subheader("Direct comparisons of two conditions")
    state.bind("abl_contrasts", "", clean=lambda v: str(v)[:CONTRAST_TEXT_LIMIT])
    st.text_input("Compare conditions (A:B, comma-separated: condition names over all layers or condition ids)",
                  key="abl_contrasts", max_chars=CONTRAST_TEXT_LIMIT, placeholder="cross:all, q_d@all/zero:d_q@all/zero",
                  help="The same syntax as the report's --contrasts. Q->D vs D->Q and the contrasts the run's job "
                       "declared (--contrasts) are always shown.")
    state.publish("abl_contrasts", default="")
    try:
        shown = contrasts_table(st.session_state["abl_contrasts"])
    except ValueError as err:
        st.error(escape(str(err).replace("--contrasts ", "")), icon=":material/error:")
        shown = contrasts_table("")
    st.dataframe(shown, hide_index=True, key="abl_contrasts_table", column_config={
        "title": "Comparison", "missing": "Condition not in this run",
        "n_queries": st.column_config.NumberColumn("Queries", format="%d"),
        "measure_diff": st.column_config.NumberColumn(f"Delta {measure} (a - b)", format="%+.4f"),
        "t": st.column_config.NumberColumn("t", format="%.2f"), "p": st.column_config.NumberColumn("p", format="%.3g"),
        "p_holm": st.column_config.NumberColumn("p (Holm)", format="%.3g"),
        **interval_columns({"score_change": "Delta score", "pairwise": "Delta PA", "pairwise_hard": "Delta PA vs hard",
                            "pairwise_easy": "Delta PA vs easy", "ndcg_ties": "Delta nDCG (ties in expectation)"})})
    st.caption(f"a - b per query: paired two-sided t-test of {escape(measure)} over the queries both hold, Holm across "
               f"the rows shown; the ranking statistics' differences with their {CI}. {STARS_LEGEND}; no stars below "
               f"{MIN_QUERIES} queries.")
    tested = shown["n_queries"].dropna()
    if len(tested) and int(tested.min()) < MIN_QUERIES:
        st.warning(FEW_QUERIES_WARNING, icon=":material/warning:")


def family_note(analysis: str, kinds: str) -> str:
    """Which Holm family a section's stars use, and its size in this run."""
    fam = families[families["analysis"] == analysis]
    tested = int(fam["tested"].iloc[0]) if len(fam) else 0
    return (f"Stars: Holm-corrected p within the **{analysis}** analysis' own family ({kinds}: {tested} tested "
            f"conditions of this scope and measure), {STARS_LEGEND}.")

st.title("Ablations")
st.caption(f"{escape(run.dataset_name)} x {escape(run.model_name)} · queries of the slice: "
           f"{'all' if not sl.qids else len(sl.qids)} (ablations act on every layer/head named by the condition; "
           "the slice's layers, heads and negative types do not apply here)")

if not (run.has("ablation_summary") and run.has("ablation_metrics")):
    show_refused()
    ui.missing_table("ablations", ABLATIONS_COMMAND)
    st.stop()

options = data.query(run, "ablation_options")
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

table = data.query(run, "table1", measure=measure, scope=scope, kind=TABLE1_KINDS)
sweeps = data.query(run, "layer_sweeps", measure=measure, scope=scope)
heads = data.query(run, "head_ablations", measure=measure, scope=scope)
components = data.query(run, "component_effects", measure=measure, scope=scope)
families = data.query(run, "holm_families", measure=measure, scope=scope)

# -- Table 1 ----------------------------------------------------------------------------------
st.subheader(f"Table 1: {escape(measure)} under each ablation ({escape(scope)})")
shown = table.copy()
shown.insert(3, "removes", [lab.direction(c) if c in DIRECTIONS else c for c in shown["condition"]])
shown["significance"] = [stars(p, not_significant="n.s.", n_queries=n) for p, n in zip(shown["p_holm"], shown["n_queries"])]
if sl.qids:
    part = data.query(run, "slice_means", measure=measure, scope=scope, where=sl)
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
st.caption("Delta = condition - baseline, mean over queries; paired t-test over queries. "
           + family_note("attention", "directions, groups, layer sweeps, heads")
           + " Select a row to see its per-query deltas below.")
ui.table_download(shown, f"{run.name}-table1-{scope}-{measure}", key="abl_table_csv")
if len(table) and int(table["n_queries"].max()) < MIN_QUERIES:
    st.warning(FEW_QUERIES_WARNING, icon=":material/warning:")
show_refused()
show_query_level()
show_contrasts()

picked = None
try:
    rows = list(event["selection"]["rows"])
except (KeyError, TypeError):
    rows = []
if rows:
    picked = shown.iloc[rows[0]]["condition_id"]

# -- per-layer sweeps -------------------------------------------------------------------------
if len(sweeps):
    st.subheader(kind_of("layer_sweep").title)
    ui.chart(charts.layer_sweep(sweeps, title=f"{measure} change when one layer is ablated ({run.model_name}, "
                                              f"{run.dataset_name}, {scope})",
                                y_title=f"Delta {measure} (condition - baseline)"),
             sweeps, f"{run.name}-layer-sweeps-{scope}-{measure}", key="abl_sweeps")
else:
    st.caption(f"No per-layer sweeps in this run ({code(SWEEPS_COMMAND)} computes them).")

# -- head ablations ---------------------------------------------------------------------------
clicked = ui.cell_from_event(st.session_state.get("abl_heads_map"))
if len(heads):
    st.subheader(kind_of("head").title)
    hmode = ui.pick_one("abl_head_mode", list(dict.fromkeys(heads["mode"])), "Mode")
    hm = heads[heads["mode"] == hmode].copy()
    hm["significant"] = hm["p_holm"] < ALPHA
    ui.chart(charts.head_heatmap(hm, "delta", title=f"{measure} change when one head is ablated ({hmode}; "
                                                    f"{run.model_name}, {run.dataset_name})",
                                 value_title=f"Delta {measure}", diverging=True,
                                 tooltip=["mean", "p_holm", "condition_id"], mark_significant="significant"),
             hm, f"{run.name}-head-ablations-{scope}-{measure}", key="abl_heads_map", select=charts.CELL)
    st.caption(f"Stars mark Holm-corrected p < {ALPHA} (the attention analysis' family). Click a head to see its "
               "per-query deltas below.")
    if clicked is not None and clicked != st.session_state.get("_abl_last_click"):
        st.session_state["_abl_last_click"] = clicked
        hit = hm[(hm["layer"] == clicked[0]) & (hm["head"] == clicked[1])]
        if len(hit):
            picked = hit.iloc[0]["condition_id"]
else:
    st.caption(f"No head ablations in this run ({code(SWEEPS_COMMAND)} computes them).")

# -- component conditions ---------------------------------------------------------------------
st.subheader(kind_of("component").title)
if components.empty:
    st.caption(f"No component conditions in this run ({code(command_for(run, COMPONENT_FLAGS))} computes every layer x "
               "{mlp, attn} x {all tokens, cls, q, d}).")
else:
    comp = components.copy()
    comp["tokens"] = [("all tokens" if g == "all" else lab.segment(g)) for g in comp["segment"]]
    comp["significance"] = [stars(p, not_significant="n.s.") for p in comp["p_holm"]]
    ev = st.dataframe(
        comp[["condition_id", "component", "tokens", "mode", "layers", "n_queries", "mean", "baseline", "delta", "t",
              "p", "p_holm", "significance"]],
        hide_index=True, key="abl_comp_table", on_select="rerun", selection_mode="single-row",
        column_config={"mean": st.column_config.NumberColumn(measure, format="%.4f"),
                       "delta": st.column_config.NumberColumn("Delta", format="%+.4f"),
                       "p_holm": st.column_config.NumberColumn("p (Holm)", format="%.3g")})
    st.caption("The block's output projection is removed before its residual add, at every token or at one "
               "segment's tokens; 'zero' sets it to 0, 'mean' replaces it by its mean over the run's pairs "
               "(component_means). " + family_note("components", "component conditions"))
    ui.table_download(comp, f"{run.name}-components-{scope}-{measure}", key="abl_comp_csv")
    try:
        comp_rows = list(ev["selection"]["rows"])
    except (KeyError, TypeError):
        comp_rows = []
    if comp_rows:
        picked = comp.iloc[comp_rows[0]]["condition_id"]
    grid = comp[comp["layer"].notna()].copy()
    if len(grid):
        grid["layer"] = grid["layer"].astype("int64")
        cmode = ui.pick_one("abl_comp_mode", list(dict.fromkeys(grid["mode"])), "Mode of the grid")
        g = grid[grid["mode"] == cmode].assign(significant=lambda d: d["p_holm"] < ALPHA)
        ui.chart(charts.component_grid(g, title=f"{measure} change when one layer's block output is removed "
                                                f"({cmode}; {run.model_name}, {run.dataset_name}, {scope})",
                                       value_title=f"Delta {measure}", labels=lab, mark_significant="significant"),
                 g, f"{run.name}-component-grid-{cmode}-{scope}-{measure}", key="abl_comp_grid")

# -- QK-subspace conditions -------------------------------------------------------------------
st.subheader(kind_of("subspace").title)
with st.spinner("Reading the subspace heads' metrics (one pass over subspace_head_metrics; cached afterwards) ..."):
    subspace = data.query(run, "subspace_effects", measure=measure, scope=scope)
if subspace.empty:
    st.caption(f"No QK-subspace conditions in this run ({code(command_for(run, SUBSPACE_FLAGS))} computes them for the "
               "heads of --subspace-heads, default the top 5 by Cohen's d of q_d).")
else:
    sub = subspace.copy()
    sub.insert(1, "head_label", [ui.head_label(a, b) for a, b in zip(sub["layer"], sub["head"])])
    sub["significance"] = [stars(p, not_significant="n.s.") for p in sub["p_holm"]]
    sub["other_direction"] = [f"{d} ({lab.direction(d)})" if isinstance(d, str) else None for d in sub["other_direction"]]
    cols = ["condition_id", "head_label", "k", "operation", "mean", "delta", "p_holm", "significance", "delta_q_d",
            "delta_d_q", "delta_q_d_exact", "other_direction", "other_delta"]
    st.dataframe(sub[cols], hide_index=True, key="abl_sub_table", column_config={
        "head_label": "Head", "mean": st.column_config.NumberColumn(measure, format="%.4f"),
        "delta": st.column_config.NumberColumn(f"Delta {measure}", format="%+.4f"),
        "p_holm": st.column_config.NumberColumn("p (Holm)", format="%.3g"),
        "delta_q_d": st.column_config.NumberColumn(f"Delta q_d ({lab.direction('q_d')})", format="%+.4f"),
        "delta_d_q": st.column_config.NumberColumn(f"Delta d_q ({lab.direction('d_q')})", format="%+.4f"),
        "delta_q_d_exact": st.column_config.NumberColumn("Delta q_d_exact", format="%+.4f"),
        "other_direction": "Largest change among the other directions",
        "other_delta": st.column_config.NumberColumn("its delta", format="%+.4f")})
    st.caption("Each condition removes (or scales) the top-k singular components of one head's W_Q W_K^T. Deltas of "
               "the head's own metrics are means over the run's pairs of (with - without) (view subspace_effects); a "
               "NULL delta is a metric this model does not have. " + family_note("subspace", "QK-subspace conditions"))
    ui.table_download(sub, f"{run.name}-subspace-{scope}-{measure}", key="abl_sub_csv")
    sub_ids = list(sub["condition_id"])
    state.bind("abl_sub", sub_ids[0], clean=state.choice(sub_ids, sub_ids[0]))
    st.selectbox("Condition: every metric of its head", sub_ids, key="abl_sub")
    state.publish("abl_sub", default=sub_ids[0])
    if run.has("subspace_head_metrics"):
        deltas = data.query(run, "subspace_metric_deltas", st.session_state["abl_sub"])
        if len(deltas):
            ui.chart(charts.metric_deltas(deltas, title=f"Change of the head's own metrics under "
                                                        f"{st.session_state['abl_sub']} ({run.model_name})",
                                          x_title="Mean change over pairs (with - without)", labels=lab),
                     deltas, f"{run.name}-subspace-{st.session_state['abl_sub']}", key="abl_sub_metrics")

# -- per-query deltas -------------------------------------------------------------------------
conditions = [c for c in list(table["condition_id"]) + list(sweeps["condition_id"]) + list(heads["condition_id"])
              + list(components["condition_id"]) + list(subspace["condition_id"]) if c != BASELINE]
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
per_query = data.query(run, "per_query", cond, measure=measure, scope=scope, where=sl)
if per_query.empty:
    st.info("No per-query values for this condition in the slice.")
    st.stop()
m = st.columns(3)
m[0].metric(f"Mean {escape(measure)} under {escape(cond)}", f"{per_query['value'].mean():.4f}")
m[1].metric("Mean delta over the slice's queries", f"{per_query['delta'].mean():+.4f}")
m[2].metric("Queries hurt / helped", f"{int((per_query['delta'] < 0).sum())} / {int((per_query['delta'] > 0).sum())}")
ui.chart(charts.delta_bars(per_query[["qid", "delta", "value", "baseline", "query"]],
                           title=f"{measure} change per query under {cond} ({run.model_name}, {run.dataset_name})",
                           x_title=f"Delta {measure} (condition - baseline)"),
         per_query, f"{run.name}-per-query-{cond}-{scope}-{measure}", key="abl_per_query")
st.dataframe(per_query, hide_index=True, key="abl_per_query_table")
