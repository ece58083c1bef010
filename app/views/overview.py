"""Overview: provenance of the run (judged pairs skipped and why, queries used, the analyses present and the command
that adds each missing one), model (and its family: segment meanings, template, answer tokens) and dataset, counts by
negative type and grade, nDCG@10, score distributions."""

from __future__ import annotations

import streamlit as st

from app import charts, data, state, ui
from app.family import labels_of
from app.text import code, escape
from app.slice import neg_order
from precompute.names import SCORE_KINDS, SEGMENTS

JUDGED_KINDS = ("relevant", "hard")  # judged for the query (grade >= 1, grade 0); easy negatives are not


def missing_settings(names) -> dict:
    """The job settings that add the analyses ``names`` of ``Run.analyses()`` (``ablations:<set>``,
    ``patching:<experiment>``; spectra and head statistics come with any resumed job)."""
    sets = tuple(n.split(":", 1)[1] for n in names if n.startswith("ablations:"))
    experiments = tuple(n.split(":", 1)[1] for n in names if n.startswith("patching:"))
    return {**({"ablations": sets} if sets else {}), **({"patching": experiments} if experiments else {})}

ctx, run = ui.require_run()
sl = ctx.slice
man = run.manifest
# What pairs.score is (the job writes "logit" or "log_softmax[1]"); an unknown kind is shown as written.
SCORE_WORDS = SCORE_KINDS.get(str(run.model.score), f"score ({run.model.score or 'unknown kind'})")

st.title(f"Overview: {escape(run.dataset_name)} x {escape(run.model_name)}")
st.caption(f"Run folder {code(run.path)} · created {escape(man.created or '?')} · slice: {escape(sl.describe())}")

counts = data.query(run, "pair_counts", where=sl.pairs_only())
ndcg = data.query(run, "ndcg", where=sl.pairs_only())
n_pairs = int(counts["pairs"].sum()) if len(counts) else 0
n_queries = int(ndcg["qid"].nunique()) if len(ndcg) else 0
manifest_ndcg = man.metrics.get("nDCG@10")

c = st.columns(5)
c[0].metric("Pairs in the slice", f"{n_pairs:,}")
c[1].metric("Queries in the slice", f"{n_queries:,}")
c[2].metric("Layers x heads", f"{ctx.layers} x {ctx.heads}")
c[3].metric("nDCG@10 of the slice", f"{ndcg['ndcg'].mean():.4f}" if len(ndcg) else "n/a",
            help="Mean over the slice's queries of nDCG@10 of the model's ranking of the slice's pairs "
                 "(linear gains = NIST grades; easy negatives and grade 0 gain nothing; ideal ranking "
                 "over the same pairs).")
c[4].metric("nDCG@10 (manifest)", f"{manifest_ndcg:.4f}" if isinstance(manifest_ndcg, (int, float)) else "n/a",
            help="ir_measures over all pairs of the run and the qrels, as computed by the precompute job.")

st.subheader("Provenance")
counts_of = man.counts
kept = {k: int(v) for k, v in (counts_of.neg_type or {}).items()}
skipped = {k: int(v) for k, v in (counts_of.skipped or {}).items()}
judged_kept = sum(kept.get(k, 0) for k in JUDGED_KINDS)
judged_skipped = sum(skipped.get(k, 0) for k in JUDGED_KINDS)
if judged_skipped:
    st.warning(
        f"**{judged_skipped:,} of {judged_kept + judged_skipped:,} judged pairs were skipped** because their passage "
        "text is missing from the collection ("
        + ", ".join(f"{k} {skipped.get(k, 0):,}" for k in JUDGED_KINDS) + f"): the model scores, nDCG@10 and every "
        f"statistic of this run rest on the {judged_kept:,} judged pairs kept.", icon=":material/warning:")
elif skipped:
    st.markdown("No judged pair was skipped: every judged passage of the run's queries has its text.")
else:
    st.markdown("The manifest records no skipped pairs (a run written before the job counted them).")
if skipped.get("easy"):
    st.markdown(f"{skipped['easy']:,} easy negatives drawn had no passage text and were skipped.")
params = man.parameters or {}
max_queries = params.get("max_queries")
source = (f"the top {escape(params.get('depth', '?'))} candidates of {code(params['candidates'])} per query"
          if params.get("candidates") else
          f"the judged passages plus {escape(params.get('easy_negatives', '?'))} easy negatives per query")
st.markdown(
    f"**{counts_of.queries if counts_of.queries is not None else n_queries:,} queries used**"
    + (f" (the first {escape(max_queries)} judged queries of the dataset: {code(f'--max-queries {max_queries}')})"
       if max_queries else " (every judged query of the dataset)") + f"; pairs: {source}.")
for experiment, n in ((man.patching.skipped if man.patching else None) or {}).items():
    if n:
        st.markdown(f"Patching {code(experiment)}: {int(n):,} drawn run pairs left out for want of aligned inputs "
                    "(docs/patching.md).")
analyses = data.query(run, "analyses")
present = analyses[analyses["present"]]
st.markdown("**Analyses in this run:** " + (", ".join(escape(t) for t in present["title"]) or "none"))
absent = analyses[~analyses["present"]]
addable = absent[absent["command"].notna()]
for row in absent[absent["command"].isna() & absent["note"].notna()].itertuples():
    st.markdown(f"**Cannot be computed for this model:** {escape(row.title)} ({escape(row.note)}).")
if len(addable):
    st.markdown("**Not computed yet:** " + ", ".join(escape(t) for t in addable["title"])
                + ". This command resumes the run and adds every one of them (the Findings page names the command "
                "of each):")
    st.code(data.query(run, "command", **missing_settings(addable["analysis"])), language=None, wrap_lines=True)

left, right = st.columns(2)
with left:
    st.subheader("Model")
    model = run.model
    st.markdown(
        f"**{escape(run.model_name)}** · {code(model.id or '?')} · {escape(model.architecture or '?')} "
        f"({escape(model.model_type or '?')}) · hidden {model.hidden or '?'} · {model.num_labels or '?'} label(s), "
        f"score = {escape(SCORE_WORDS)}"
    )
    lab = labels_of(run)
    family = model.family or "bert-style encoder (no family recorded: a schema-version-1 run)"
    st.markdown(
        f"**Family** {escape(family)} · "
        f"{'causal (a token attends only to earlier ones)' if lab.causal else 'bidirectional'}"
        + (f" · attention reached by: {escape(model.attention)}" if model.attention else "")
    )
    st.markdown("**Segments** " + " · ".join(f"`{s}` = {escape(lab.segment(s))}" for s in SEGMENTS))
    if model.template:
        st.markdown("**Template**")
        st.code(model.template, language=None, wrap_lines=True)
    if model.answer_tokens:
        ids = list(model.answer_ids or [])
        tokens = [code(repr(t)) + (f" (id {ids[i]})" if i < len(ids) else "")
                  for i, t in enumerate(model.answer_tokens)]
        st.markdown("**Answer tokens** (positive, negative): " + ", ".join(tokens))
    if lab.causal:
        st.caption(f"{len(lab.impossible)} of the 25 directions go into a later segment and are not possible "
                   "(NULL in the store, shown as 'not possible (causal)').")
with right:
    st.subheader("Dataset")
    st.markdown(
        f"**{escape(run.dataset_name)}** · {code(run.dataset.spec or '?')} · max length "
        f"{escape(params.get('max_length', '?'))} · {escape(params.get('easy_negatives', '?'))} easy negatives per "
        f"query · seed {escape(params.get('seed', '?'))}"
    )
with st.expander("Manifest"):
    st.json(man.to_dict(), expanded=1)

st.subheader("Pairs by negative type and grade")
st.dataframe(
    counts,
    hide_index=True,
    column_config={
        "neg_type": "Negative type", "grade": "Grade", "pairs": "Pairs", "queries": "Queries",
        "mean_score": st.column_config.NumberColumn("Mean score", format="%.3f"),
        "truncated": "Truncated passages",
    },
    key="ov_counts",
)
ui.table_download(counts, f"{run.name}-pair-counts", key="ov_counts_csv")

st.subheader("Score distributions by negative type")
state.bind("ov_bins", 40, parse=int, clean=lambda v: min(100, max(5, int(v))))
st.slider("Bins", 5, 100, key="ov_bins")
state.publish("ov_bins", default=40)
hist = data.query(run, "score_histogram", int(st.session_state["ov_bins"]), where=sl.pairs_only())
if len(hist):
    ui.chart(
        charts.histogram(hist, title=f"Model score by negative type ({run.model_name}, {run.dataset_name})",
                         x_title=f"Model {SCORE_WORDS}"),
        hist, f"{run.name}-score-histogram", key="ov_hist",
    )
    summary = data.query(run, "score_summary", where=sl.pairs_only())
    summary = summary.set_index("neg_type").reindex(neg_order(summary["neg_type"]))
    st.dataframe(summary.reset_index(), hide_index=True, key="ov_summary")
else:
    st.info("The slice holds no pairs.")

with st.expander("nDCG@10 per query"):
    st.dataframe(ndcg, hide_index=True, key="ov_ndcg")
    ui.table_download(ndcg, f"{run.name}-ndcg10-per-query", key="ov_ndcg_csv")
