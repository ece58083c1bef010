"""Findings: one section per finding of the paper and per open question, each read off the open run's stored analyses
through the shared reader (:class:`matching_atlas.Run` via ``app.data.query``): a sentence whose words the numbers
choose (:mod:`app.findings`), the number of queries (a warning below MIN_QUERIES), a small chart where one reads
better, a link to the page that shows the detail, and, for an analysis the run lacks, the exact command that adds it.
The whole run is read (the sidebar's slice does not apply: the findings are claims about the run)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from app import charts, charts_findings, data, findings, open_questions, ui
from app.family import labels_of
from app.findings import Reading
from app.text import code, escape
from precompute.analyses.value_weighted import SINCE_SCHEMA
from precompute.names import PATCHING_EXPERIMENTS
from precompute.statistics import FEW_QUERIES_WARNING

ctx, run = ui.require_run()
lab = labels_of(run)
analyses = data.query(run, "analyses").set_index("analysis")

st.title("Findings")
st.caption(f"{escape(run.dataset_name)} x {escape(run.model_name)}: the paper's findings and open questions "
           "(Vast et al., SIGIR 2025 WExIR), each read off this run's numbers over the whole run (the sidebar's "
           "slice does not apply here). Every sentence is computed; docs/app.md says from what.")


def show(reading: Reading) -> None:
    """The sentence, whether it holds, and the query-count warning."""
    mark = {True: ":material/check_circle: ", False: ":material/cancel: ", None: ""}[reading.holds]
    st.markdown(mark + escape(reading.sentence))
    if reading.few_queries:
        st.warning(f"Rests on {reading.n_queries} queries: {FEW_QUERIES_WARNING}.", icon=":material/warning:")


def missing(*names: str) -> None:
    """For each analysis of ``names`` the run lacks: its title and the exact command that adds it."""
    for name in names:
        if name in analyses.index and not analyses.at[name, "present"]:
            row = analyses.loc[name]
            if row["command"]:
                st.caption(f"Not in this run: {escape(row['title'])}. Add it with:")
                st.code(row["command"], language=None, wrap_lines=True)  # no highlighting: store text stays one text
            elif row["note"]:
                st.caption(f"{escape(row['title'])}: {escape(row['note'])}")


def link(page: str, label: str, **params: str) -> None:
    """A link to another page with that page's own URL parameters (shared URL state, app.state); the session keeps
    the run and the slice. ``label`` is the app's own words (no store text: a link label renders Markdown colours)."""
    st.page_link(f"views/{page}.py", label=label, icon=":material/arrow_forward:", query_params=params or None)


def patching_present() -> list[str]:
    return [e for e in PATCHING_EXPERIMENTS if f"patching:{e}" in analyses.index and analyses.at[f"patching:{e}", "present"]]


# -- 1. staged matching ------------------------------------------------------------------------------------------------
st.header("Lexical matching early, semantic matching later")
lexical = data.query(run, "lexical_by_layer")
if not lab.possible("q_d"):
    st.info(f"{lab.why_empty('q_d')} The paper's Query->Document findings do not apply as such; the Directions page "
            "shows the directions this model can attend.")
elif lexical.empty:
    st.info("This run has no attention summaries by layer.")
else:
    show(findings.staged(lexical))
    shown = lexical[lexical["metric"].isin(("q_d_exact", "q_d_other"))]
    ui.chart(charts.lexical_semantic(shown, title=f"Lexical vs semantic matching by layer ({run.model_name})"),
             shown, f"{run.name}-findings-lexical", key="fnd_lexical")
    link("directions", "Directions: the masses by layer and negative type")

# -- 2. matching heads -------------------------------------------------------------------------------------------------
st.header("A few heads carry Query->Document matching")
contrasts = data.query(run, "head_contrasts", metric="q_d") if run.has("head_contrasts") else None
if not lab.possible("q_d"):
    st.info(lab.why_empty("q_d"))
elif contrasts is None or contrasts.empty:
    st.info("This run has no matching-head statistics (head_contrasts).")
    missing("contrasts")
else:
    ablations = data.query(run, "head_ablations") if run.has("ablation_summary") else pd.DataFrame()
    patched = {e: findings.robust_patching(data.query(run, "patching_summary", e)) for e in patching_present()}
    reading, top = findings.matching_heads(contrasts, ctx.layers * ctx.heads, ablations, patched)
    show(reading)
    easy = contrasts[(contrasts["contrast"] == "relevant_vs_easy") & contrasts["effect"].notna()]
    if len(easy):
        best = easy.sort_values("effect", ascending=False).head(12)
        shown = best.assign(item=[ui.head_label(int(r.layer), int(r.head)) for r in best.itertuples()],
                            estimate=best["effect"], low=best["effect_low"], high=best["effect_high"])
        ui.chart(charts_findings.estimates(shown, title="Heads with the largest Query->Document effect (relevant - "
                                           "easy negatives, mean over queries, 95% CI)",
                                           x_title="Query->Document mass difference", y_title="Head (layer.head)"),
                 shown[["item", "estimate", "low", "high", "n_queries"]], f"{run.name}-findings-heads",
                 key="fnd_heads")
    if top is not None:
        label = ui.head_label(int(top["layer"]), int(top["head"]))
        link("head_atlas", f"Head atlas: head {label}, relevant - easy negatives", atlas_view="relevant_vs_easy",
             atlas_head=label)
        for experiment in patched:
            link("patching", f"Patching ({experiment}): the pairs of head {label}", pat_exp=experiment,
                 pat_target="head", pat_head=label)
    missing("ablations:heads", *(f"patching:{e}" for e in ("tfc1", "cls")))

# -- 3. [CLS] / [SEP] as no-op targets -------------------------------------------------------------------------------------
st.header("[CLS] and [SEP] as no-op targets")
targets = data.query(run, "noop_targets")
shares_note = (f"Whether they are no-ops needs the value-weighted shares (vw_<src>_<dst>), which the summary pass "
               f"stores from store schema version {SINCE_SCHEMA}; this run is version "
               f"{run.manifest.schema_version}: a new run of this checkout's precompute into a new folder computes them.")
reading = findings.noop(targets, shares_note)
show(reading)
if len(targets):
    ui.chart(charts_findings.mass_and_share(targets, title="Attention mass (solid) vs value-weighted share (dashed) into "
                                            "[CLS] and SEP by layer, relevant pairs"),
             targets, f"{run.name}-findings-noop", key="fnd_noop")
    link("directions", "Directions: every segment-to-segment mass")

# -- 4. Table 1 ---------------------------------------------------------------------------------------------------------
st.header("Table 1: Query->Document matters, Document->Query does not")
table1 = data.query(run, "table1") if run.has("ablation_summary") else None
if table1 is None or table1.empty:
    st.info("This run has no ablations.")
    missing("ablations:directions", "ablations:groups")
else:
    pairs = data.query(run, "condition_contrasts")
    show(findings.table1(table1, pairs))
    split = findings.hard_easy(table1, data.query(run, "ranking_effects"))
    if split is not None:
        show(split)
    removed_qd = findings.table1_rows(table1).get("q_d")
    st.dataframe(findings.paper_table(table1), hide_index=True, key="fnd_table1",
                 column_config={"delta": st.column_config.NumberColumn("delta", format="%+.3f")})
    st.caption("nDCG@10 over the run's pairs; the paper's values: MonoBERT on TREC DL (Vast et al., Table 1). Stars from "
               "Holm's p of the paired t-test over queries, never below 10 queries.")
    link("ablations", "Ablations: Table 1 at query level, the direct comparisons and the per-query deltas of "
         "Query->Document removed", **({"abl_cond": removed_qd["condition_id"]} if removed_qd is not None else {}))
    missing("ablations:directions", "ablations:groups")

# -- 5. QK alignment vs matching behaviour -----------------------------------------------------------------------------------
st.header("QK alignment vs matching behaviour")
alignment = data.query(run, "alignment_behaviour")
if alignment.empty:
    st.info("This run has no QK spectra or no query-level head statistics to correlate.")
    missing("spectra", "contrasts")
else:
    show(findings.alignment(alignment))
    heads = data.query(run, "alignment_vs_contrast", "q_d", "relevant_vs_easy")
    if len(heads) and heads["effect_dz"].notna().any():
        ui.chart(charts.scatter(heads, "alignment_score", "effect_dz",
                                title="QK alignment vs Query->Document effect d_z (relevant - easy), one point per head",
                                x_title="QK alignment score", y_title="Effect d_z over queries", color="layer",
                                color_title="Layer", tooltip=["layer", "head", "alignment_score", "effect_dz",
                                                               "n_queries"]),
                 heads, f"{run.name}-findings-alignment", key="fnd_alignment")
    link("spectra", "Spectra: alignment against each head's effect")

# -- 6. open question 1: other model families --------------------------------------------------------------------------
st.header("Open question 1: do other model families match the same way?")
others = [r for r in ctx.ok_runs if r.name != run.name and r.dataset_name == run.dataset_name
          and r.model_name != run.model_name]
show(open_questions.family(run.model_name, run.model.family, bool(run.model.causal), run.dataset_name,
                     [r.model_name for r in others]))
if others:
    link("compare", "Compare runs: this run beside the first other model's", cmp_run=others[0].name)
else:
    st.caption("A run of another model on the same dataset adds the comparison, e.g.:")
    st.code(f"python -m precompute --dataset {run.dataset.spec or run.dataset_name} --model MODEL", language=None,
            wrap_lines=True)

# -- 7. open question 2: components by layer and segment ---------------------------------------------------------------
st.header("Open question 2: which components, at which layers and tokens?")
comp = data.query(run, "component_effects") if run.has("ablation_summary") else pd.DataFrame()
patched = {e: findings.robust_patching(data.query(run, "patching_summary", e)) for e in patching_present()}
if comp.empty and not any(len(p) for p in patched.values()):
    st.info("This run has neither component ablations nor component patching.")
else:
    reading, worst, bests = open_questions.components(comp, patched)
    show(reading)
    if len(comp):
        grid = comp[comp["layer"].notna()]
        if len(grid):
            ui.chart(charts.component_grid(grid, title="nDCG@10 change when one layer's block output is removed",
                                           value_title="Delta nDCG@10"),
                     grid, f"{run.name}-findings-components", key="fnd_components")
    if worst is not None:
        link("ablations", f"Ablations: per-query deltas of {worst['condition_id']}", abl_cond=worst["condition_id"])
    for experiment, best in bests.items():
        target = f"{int(best['layer'])}.{best['component']}.{best['segment']}"
        link("patching", f"Patching ({experiment}): the pairs of layer {target.replace('.', ' · ')}",
             pat_exp=experiment, pat_target="component", pat_comp=target)
missing("ablations:components", "patching:tfc1", "patching:cls")

# -- 8. open question 3: QK-subspace interventions -----------------------------------------------------------------
st.header("Open question 3: does editing a head's QK subspace change only its matching?")
sub = data.query(run, "subspace_effects") if run.has("ablation_summary") else None
if sub is None or sub.empty:
    st.info("This run has no QK-subspace interventions.")
else:
    reading, row = open_questions.subspace(sub)
    show(reading)
    if row is not None:
        link("ablations", f"Ablations: {row['condition_id']}, every metric of its head", abl_sub=row["condition_id"])
missing("ablations:subspace")
st.caption(f"Run folder {code(run.path)}.")
