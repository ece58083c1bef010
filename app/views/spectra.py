"""Spectra: singular values and alignment of each head's W_Q W_K^T, the head-level alignment score,
and how it relates to the head's matching statistics."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from app import charts, data, links, state, ui
from app.commands import command_for
from app.family import labels_of
from app.text import escape
from precompute.metrics import METRICS
from precompute.analyses.alignment_behaviour import PERMUTATIONS
from precompute.conditions.subspace_specs import aligned_order, removed_components
from precompute.names import CONTRAST_LABELS, CONTRASTS
from precompute.statistics import FEW_QUERIES_WARNING, MIN_QUERIES, fmt_p

ctx, run = ui.require_run()
sl = ctx.slice
lab = labels_of(run)
DEFAULT_METRIC = "q_d" if lab.possible("q_d") else "d_q"

st.title("Query-key spectra")
st.caption(f"{escape(run.model_name)} · the slice's layers and heads ({escape(sl.describe())}). "
           "Alignment u_k . v_k near 1 means the head matches a direction of the residual stream with itself: "
           "the signature of a matching head.")

spectra_info = run.manifest.spectra if run.manifest else None
if not run.has("svd"):
    if spectra_info is not None and spectra_info.computed is False:
        st.info(f"The job did not compute spectra for {escape(run.model_name)}: "
                f"{escape(spectra_info.reason or 'no reason recorded')}.")
        st.stop()
    ui.missing_table("spectra", command_for(run))
    st.stop()
if spectra_info is not None and spectra_info.matrix:
    st.caption(f"The spectrum is of: {escape(spectra_info.matrix)}")

align = data.query(run, "head_alignment", where=sl)
if align.empty:
    st.warning("No head of the slice has a spectrum.")
    st.stop()

heads = [ui.head_label(layer, head) for layer, head in zip(align["layer"], align["head"])]
default_head = heads[int(align["alignment_score"].to_numpy().argmax())]
sel_layer, sel_head = ui.selected_head("spec_map", "spec_head", heads, default_head)

left, right = st.columns([3, 2])
with left:
    ui.chart(charts.head_heatmap(align, "alignment_score",
                                 title=f"Alignment score per head ({run.model_name})",
                                 value_title="Alignment score", diverging=True, tooltip=["sigma_max", "n_sigma"],
                                 selected=(sel_layer, sel_head)),
             align, f"{run.name}-alignment-scores", key="spec_map", select=charts.CELL)
with right:
    st.selectbox("Head (layer.head)", heads, key="spec_head")
    state.publish("spec_head", default=default_head)
    sel_layer, sel_head = ui.parse_head(st.session_state["spec_head"])
    row = align[(align["layer"] == sel_layer) & (align["head"] == sel_head)].iloc[0]
    st.metric("Alignment score", f"{row['alignment_score']:+.4f}")
    st.metric("Largest singular value", f"{row['sigma_max']:.4f}")
    st.metric("Singular values stored", f"{int(row['n_sigma'])}")
    st.caption("Alignment score: the sigma-weighted mean of u_k . v_k over the head's spectrum.")
    st.link_button(f"Head {sel_layer}.{sel_head} in the Head atlas", links.to_head(sel_layer, sel_head),
                   icon=":material/grid_on:", type="tertiary")

st.subheader(f"Spectra of layer {sel_layer}")
spectra = data.query(run, "spectra", where=sl.with_(layers=(sel_layer, sel_layer)))

# -- the components a QK-subspace condition of this head removes (a link from the Ablations page names one) ----
conditions = data.query(run, "conditions") if run.has("ablation_conditions") else pd.DataFrame()
own = [] if conditions.empty else [
    c for c in conditions["condition_id"] if (removed_components(c) or (None, None))[:2] == (sel_layer, sel_head)]
state.bind("spec_removed", "", clean=state.choice(["", *own], ""))
removed = pd.DataFrame()
if own:
    st.selectbox("Highlight the components removed by", ["", *own], key="spec_removed",
                 format_func=lambda c: c or "no condition", help="The QK-subspace conditions of this head (Ablations "
                 "page): k<n> edits the n largest singular components, a<n> the n with the largest sigma_k (u_k . v_k).")
    picked = st.session_state["spec_removed"]
    if picked:
        _, _, how, n = removed_components(picked)
        head_spectrum = spectra[(spectra["layer"] == sel_layer) & (spectra["head"] == sel_head)].sort_values("k")
        ks = (list(range(n)) if how == "top" else
              aligned_order(head_spectrum["sigma"], head_spectrum["alignment"], n))
        removed = head_spectrum[head_spectrum["k"].isin(ks)].assign(
            head_label=f"L{sel_layer}.H{sel_head}", order=lambda d: d["k"].map({k: i for i, k in enumerate(ks)}))
        stored = [a for a in (conditions.loc[conditions["condition_id"] == picked, "alignments"]
                              if "alignments" in conditions else []) if isinstance(a, (list, tuple)) or hasattr(a, "shape")]
        words = ("its " + str(n) + " largest singular components" if how == "top" else
                 f"its {n} components with the largest sigma_k (u_k . v_k)")
        st.caption(f"{escape(picked)} edits {words} of head {sel_layer}.{sel_head}: k = "
                   f"{', '.join(str(k) for k in ks)} (circled in both charts).")
        if stored and len(stored[0]):
            st.caption("Alignments the job stored with the condition: "
                       + ", ".join(f"{float(a):+.3f}" for a in stored[0]) + ".")
state.publish("spec_removed", default="")


def with_removed(chart, y: str):
    """The chart with the removed components circled (none: the chart as it is)."""
    if removed.empty:
        return chart
    ring = alt.Chart(removed).mark_point(size=220, filled=False, color="black", strokeWidth=2).encode(
        x="k:Q", y=f"{y}:Q", tooltip=[alt.Tooltip("k:Q", title="removed component k"),
                                      alt.Tooltip("sigma:Q", format=".4f"), alt.Tooltip("alignment:Q", format=".3f")])
    return alt.layer(chart, ring)


c1, c2 = st.columns(2)
with c1:
    ui.chart(with_removed(charts.spectrum_lines(spectra, "sigma_rel",
                                                title=f"Layer {sel_layer}: singular values of W_Q W_K^T",
                                                y_title="sigma_k / sigma_0 (relative to the head's largest)"),
                          "sigma_rel"),
             spectra, f"{run.name}-spectra-layer-{sel_layer}", key="spec_sigma")
with c2:
    ui.chart(with_removed(charts.spectrum_lines(spectra, "alignment", title=f"Layer {sel_layer}: alignment u_k . v_k",
                                                y_title="Alignment u_k . v_k (cosine)"), "alignment"),
             spectra, f"{run.name}-alignment-layer-{sel_layer}", key="spec_align")
if not removed.empty:
    st.dataframe(removed.sort_values("order")[["k", "sigma", "sigma_rel", "alignment"]], hide_index=True,
                 key="spec_removed_table")

st.subheader("Alignment and matching")
c1, c2 = st.columns(2)
state.bind("spec_metric", DEFAULT_METRIC, clean=state.choice(list(METRICS), DEFAULT_METRIC))
c1.selectbox("Matching statistic of", list(METRICS), key="spec_metric",
             format_func=lambda m: f"{m}: {lab.metric(m)}" + ("" if lab.possible(m) else " (not possible: causal)"))
state.publish("spec_metric", default=DEFAULT_METRIC)
contrasts = list(CONTRASTS)
state.bind("spec_contrast", contrasts[0], clean=state.choice(contrasts, contrasts[0]))
c2.selectbox("Contrast", contrasts, key="spec_contrast", format_func=CONTRAST_LABELS.get)
state.publish("spec_contrast", default=contrasts[0])
metric, contrast = st.session_state["spec_metric"], st.session_state["spec_contrast"]
if run.has("head_contrasts"):
    rel = data.query(run, "alignment_vs_contrast", metric, contrast, where=sl)
    source = "the run's matching-head statistics (head_contrasts, all queries)"
else:
    rel = data.query(run, "alignment_vs_slice_difference", metric, contrast, where=sl)
    source = "the slice (computed from head_attention_agg; the run has no head_contrasts table yet)"
# The query-level effect d_z (mean over queries of the per-query difference / its sd) where the run has it; the
# pooled pair-level Cohen's d only for a store written before schema version 6 or a slice, and the axis says which.
query_level = "effect_dz" in rel and rel["effect_dz"].notna().any()
y, y_title = (("effect_dz", f"Query-level effect d_z of {metric}, {CONTRAST_LABELS[contrast]}") if query_level else
              ("cohen_d", f"Cohen's d of {metric} pooled over pairs (descriptive), {CONTRAST_LABELS[contrast]}"))
if rel.empty or rel[y].isna().all():
    st.info(escape(lab.why_empty(metric)) if not lab.possible(metric) else "No matching statistic for these heads.")
    st.stop()
rel = rel.assign(head_label=[ui.head_label(a, b) for a, b in zip(rel["layer"], rel["head"])])
ui.chart(charts.scatter(rel, "alignment_score", y,
                        title=f"Alignment score vs {'d_z' if query_level else 'pooled Cohen' + chr(39) + 's d'} of "
                              f"{metric} ({CONTRAST_LABELS[contrast]}; {run.model_name})",
                        x_title="Alignment score of the head", y_title=y_title,
                        color="layer", color_title="Layer",
                        tooltip=["head_label", "alignment_score", y, "n_queries", "p_holm"] if query_level else
                        ["head_label", "alignment_score", "cohen_d", "diff", "p_holm"]),
         rel, f"{run.name}-alignment-vs-{metric}-{contrast}", key="spec_scatter")
st.caption(f"Each point is a head of the slice; effects from {source}."
           + (" d_z: the mean over queries of the per-query difference of group means, divided by its standard "
              "deviation over queries (the query is the unit)." if query_level else
              " This store holds pooled pair-level statistics only: Cohen's d over pairs pooled across queries, "
              "descriptive (rerun the job into a new folder for query-level effects)."))

tested = data.query(run, "alignment_behaviour", metric) if query_level else None
if tested is not None:
    row = tested[tested["contrast"] == contrast]
    if row.empty:
        st.info("No head has a defined query-level effect for this metric and contrast: no correlation to test.")
    else:
        r = row.iloc[0]
        m = st.columns(4)
        m[0].metric("Spearman's rho", f"{r['rho']:+.3f}")
        m[1].metric("Permutation p", fmt_p(r["p"]))
        m[2].metric("95% interval", f"[{r['low']:+.3f}, {r['high']:+.3f}]")
        m[3].metric("Heads / queries", f"{int(r['heads'])} / {int(r['n_queries'])}")
        st.caption(f"Spearman's rank correlation across every head of the run (not only the slice's) between the "
                   f"alignment score and d_z of {escape(metric)}; two-sided p from {PERMUTATIONS:,} seeded permutations "
                   "of the effects; interval: 95% percentile bootstrap resampling heads (seeded). The effects rest on "
                   f"up to {int(r['n_queries'])} queries each. The report prints the same test for q_d.")
        if int(r["n_queries"]) < MIN_QUERIES:
            st.warning(FEW_QUERIES_WARNING, icon=":material/warning:")
