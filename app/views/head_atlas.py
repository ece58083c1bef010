"""Head atlas: layer x head heatmap of any summary metric for the slice, or of a relevant-minus-negative
difference with its effect size; clicking a cell opens that head (distributions and top pairs). Metrics are labelled
in the run's family's words; a metric a causal model cannot have is drawn as grey "not possible (causal)" cells."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, data, links, state, ui
from app.commands import command_for
from app.slice import sliced_away
from app.family import labels_of
from app.text import code, escape
from precompute.metrics import METRICS
from precompute.names import CONTRAST_LABELS, CONTRASTS
from precompute.statistics import ALPHA, FEW_QUERIES_WARNING, MIN_QUERIES, fmt_p, stars

ctx, run = ui.require_run()
sl = ctx.slice
lab = labels_of(run)
DEFAULT_METRIC = "q_d" if lab.possible("q_d") else "d_q"  # causal models cannot attend Query->Document

VIEWS = {"mean": "Mean over the slice", **CONTRAST_LABELS}
COLOR_BY = {"diff": "Difference of means", "cohen_d": "Effect size (Cohen's d)"}

st.title("Head atlas")
st.caption(f"{escape(run.dataset_name)} x {escape(run.model_name)} · slice: {escape(sl.describe())}")

c1, c2, c3 = st.columns([3, 2, 2])
state.bind("atlas_metric", DEFAULT_METRIC, clean=state.choice(list(METRICS), DEFAULT_METRIC))
c1.selectbox("Metric", list(METRICS), key="atlas_metric",
             format_func=lambda m: f"{m}: {lab.metric(m)}" + ("" if lab.possible(m) else " (not possible: causal)"))
state.publish("atlas_metric", default=DEFAULT_METRIC)
state.bind("atlas_view", "mean", clean=state.choice(list(VIEWS), "mean"))
c2.radio("Show", list(VIEWS), key="atlas_view", format_func=VIEWS.get)
state.publish("atlas_view", default="mean")
metric, view = st.session_state["atlas_metric"], st.session_state["atlas_view"]
diff_view = view != "mean"
if diff_view:
    state.bind("atlas_color", "diff", clean=state.choice(list(COLOR_BY), "diff"))
    c3.radio("Colour by", list(COLOR_BY), key="atlas_color", format_func=COLOR_BY.get)
    state.publish("atlas_color", default="diff")
color_by = st.session_state.get("atlas_color", "diff") if diff_view else "mean"
label = lab.metric(metric)
state.bind("atlas_fixed", True, parse=lambda raw: raw != "0", clean=bool)
st.toggle("Fixed colour range", key="atlas_fixed",
          help="One colour range per kind of value, the same for every metric and head: [0, 1] for a mass, [-1, 1] "
               "for a difference, [-2, 2] (clamped) for Cohen's d; off, the map spans its own values.")
state.publish("atlas_fixed", fmt=lambda on: "1" if on else "0", default=True)

# -- the heatmap's data -----------------------------------------------------------------------
if not diff_view:
    grid = data.query(run, "head_means", metric, where=sl)
    value, value_title = "mean", f"Mean {metric}"
    title = f"{label} per head: mean over the slice"
    tooltip = ["n", "sd"]
else:
    a, b = CONTRASTS[view]
    # the map compares a's pairs of the slice's grades with every b pair (Run.head_difference): both must remain
    gone = sliced_away(sl, data.query(run, "slice_options"), (a, b), grades_on=(a,))
    if gone:
        st.warning(f"The slice ({escape(sl.describe())}) leaves no {' and no '.join(gone)} pairs, so the map of "
                   f"{a} minus {b} negatives is not drawn: a difference needs both groups. Add "
                   f"{' and '.join(gone)} pairs to the slice's negative types and grades in the sidebar, or show the "
                   "mean over the slice.", icon=":material/filter_alt_off:")
        st.stop()
    grid = data.query(run, "head_difference", metric, view, where=sl)
    value = color_by
    value_title = (f"{metric}: {a} - {b}" if color_by == "diff" else f"Cohen's d of {metric}, {a} vs {b}")
    title = (f"{label} per head: {a} minus {b} negatives" if color_by == "diff"
             else f"Effect size (Cohen's d) of {label}, {a} vs {b} negatives")
    tooltip = ["diff", "cohen_d", "mean_a", "mean_b", "n_a", "n_b"]
    if run.has("head_contrasts"):
        stats = data.query(run, "head_contrasts", metric, view)
        if len(stats):
            # the query-level effect with its bootstrap interval over queries, in the cell's tooltip
            stats = stats[["layer", "head", "effect", "effect_low", "effect_high", "effect_dz", "p_holm",
                           "n_queries"]].rename(columns=lambda c: c if c in ("layer", "head") else f"run_{c}")
            grid = grid.merge(stats, on=["layer", "head"], how="left")
            n_queries = int(stats["run_n_queries"].max()) if stats["run_n_queries"].notna().any() else 0
            # a star only from a test over at least MIN_QUERIES queries (never from the pooled pair-level numbers)
            grid["significant"] = (grid["run_p_holm"] < ALPHA) & (grid["run_n_queries"].fillna(0) >= MIN_QUERIES)
            tooltip += ["run_effect", "run_effect_low", "run_effect_high", "run_effect_dz", "run_p_holm",
                        "run_n_queries"]

if grid.empty:
    st.warning("The slice holds no pairs for this view (check the negative types and grades in the sidebar).")
    st.stop()
no_value = bool(grid[value].isna().all())
if no_value:
    st.info(escape(lab.why_empty(metric)), icon=":material/block:")

heads = [ui.head_label(layer, head) for layer, head in zip(grid["layer"], grid["head"])]
default_head = heads[int(pd.to_numeric(grid[value], errors="coerce").abs().fillna(-1).to_numpy().argmax())]

sel_layer, sel_head = ui.selected_head("atlas_map", "atlas_head", heads, default_head)

domain = legend_title = None
if st.session_state["atlas_fixed"]:
    kind = "mass" if not diff_view else ("difference" if color_by == "diff" else "effect size")
    domain, legend_title = charts.fixed_domain(kind, value_title)
ui.chart(
    charts.head_heatmap(grid, value, title=f"{title} ({run.model_name}, {run.dataset_name})",
                        value_title=value_title, diverging=diff_view, tooltip=tooltip, domain=domain,
                        legend_title=legend_title,
                        mark_significant="significant" if "significant" in grid else None,
                        selected=(sel_layer, sel_head), missing=lab.missing(metric)),
    grid, f"{run.name}-head-atlas-{metric}-{view}-{color_by}", key="atlas_map", select=charts.CELL,
)
if diff_view:
    notes = ["Differences and Cohen's d are computed for the slice from head_attention_agg "
             "(the slice's grade filter applies to the relevant side)."]
    if "significant" in grid:
        notes.append("Stars mark heads significant in the run's matching-head statistics: a paired t-test over the "
                     f"queries that have both groups (the query is the unit; up to {n_queries} here), Holm-corrected "
                     f"across the contrast's heads and metrics, p < {ALPHA}; never below {MIN_QUERIES} queries.")
    st.caption(" ".join(notes))
    if "significant" in grid and n_queries < MIN_QUERIES:
        st.warning(f"The run's matching-head tests rest on {n_queries} queries: {FEW_QUERIES_WARNING}.")
    if not run.has("head_contrasts"):
        st.caption("This run has no matching-head statistics (head_contrasts) yet, so no significance is shown; "
                   f"compute them with {code(command_for(run))} (it resumes the run and adds what is missing).")
with st.expander("Values of the map"):
    st.dataframe(grid, hide_index=True, key="atlas_values")

# -- one head ---------------------------------------------------------------------------------
st.divider()
st.subheader("One head")
st.caption("Click a cell of the map, or choose the head here.")
h1, h2 = st.columns([1, 3])
h1.selectbox("Head (layer.head)", heads, key="atlas_head")
state.publish("atlas_head", default=default_head)
sel_layer, sel_head = ui.parse_head(st.session_state["atlas_head"])
if run.has("svd"):
    h1.link_button(f"Head {sel_layer}.{sel_head} in Spectra", links.to_spectrum(sel_layer, sel_head),
                   icon=":material/ssid_chart:", type="tertiary")
row = grid[(grid["layer"] == sel_layer) & (grid["head"] == sel_head)].iloc[0]
if no_value:
    h2.info(f"Head {sel_layer}.{sel_head}: {metric} is {escape(lab.missing(metric))}; choose another metric to see its "
            "distributions.")
    st.stop()
with h2:
    m = st.columns(4)
    if not diff_view:
        m[0].metric(f"Mean {metric}", f"{row['mean']:.4f}")
        m[1].metric("Standard deviation", f"{row['sd']:.4f}")
        m[2].metric("Pairs", f"{int(row['n']):,}")
    else:
        m[0].metric(f"Difference of {metric}", f"{row['diff']:+.4f}")
        m[1].metric("Cohen's d (slice)", f"{row['cohen_d']:+.3f}" if pd.notna(row["cohen_d"]) else "n/a")
        m[2].metric("Pairs (relevant / negative)", f"{int(row['n_a'])} / {int(row['n_b'])}")
        if "run_p_holm" in row:
            n_q = None if pd.isna(row["run_n_queries"]) else int(row["run_n_queries"])
            m[3].metric("p (Holm, run)", fmt_p(row["run_p_holm"], missing="n/a"),
                        escape(stars(row["run_p_holm"], n_queries=n_q or 0)) or None, delta_color="off",
                        help=f"Paired t-test over {n_q or 0} queries, Holm-corrected (head_contrasts).")

stats = data.query(run, "head_values", sel_layer, sel_head, metric, where=sl)
if stats.empty:
    st.info("No pair of the slice on this head.")
    st.stop()
left, right = st.columns(2)
with left:
    ui.chart(
        charts.box_from_stats(stats, title=f"Head {sel_layer}.{sel_head}: {metric} by negative type and grade",
                              y_title=label),
        stats, f"{run.name}-head-{sel_layer}.{sel_head}-{metric}-box", key="atlas_box",
    )
with right:
    hist = data.query(run, "head_histogram", sel_layer, sel_head, metric, 30, where=sl)
    ui.chart(
        charts.histogram(hist, title=f"Head {sel_layer}.{sel_head}: distribution of {metric} per negative type",
                         x_title=label),
        hist, f"{run.name}-head-{sel_layer}.{sel_head}-{metric}-hist", key="atlas_hist",
    )
if diff_view:
    missing = [g for g in (a, b) if g not in set(stats["neg_type"])]
    if missing:
        st.warning(f"The slice's negative types and grades ({escape(sl.describe())}) remove the {' and '.join(missing)} "
                   f"side of the {a} vs {b} contrast from these distributions: they show "
                   f"{', '.join(sorted(set(stats['neg_type'])))} pairs only. The map above compares with every {b} "
                   "pair (the grade filter applies to the relevant side only).", icon=":material/filter_alt:")
st.dataframe(stats, hide_index=True, key="atlas_head_stats")

state.bind("atlas_order", "largest", clean=state.choice(["largest", "smallest"], "largest"))
st.radio("Top pairs by", ["largest", "smallest"], key="atlas_order", horizontal=True,
         format_func=lambda o: f"{o} {metric}")
state.publish("atlas_order", default="largest")
top = data.query(run, "head_top_pairs", sel_layer, sel_head, metric, 20, st.session_state["atlas_order"] == "largest", where=sl)
st.dataframe(top.assign(open=links.pair_column(top, sel_layer, sel_head)), hide_index=True, key="atlas_top",
             column_order=["open", *top.columns],
             column_config={"open": links.column("Pair", f"Open the pair in the Pair explorer at head {sel_layer}."
                                                          f"{sel_head} (new tab)"),
                            "value": st.column_config.NumberColumn(metric, format="%.4f"),
                            "score": st.column_config.NumberColumn("score", format="%.3f")})
ui.table_download(top, f"{run.name}-head-{sel_layer}.{sel_head}-{metric}-top-pairs", key="atlas_top_csv")
