"""The Findings page's readings of the paper's findings (its open questions: :mod:`app.open_questions`): one sentence
per finding, its words chosen by the numbers of the open run (never canned), with whether the finding holds on this
run and the number of queries it rests on.

Each function takes the reader's frames (:class:`matching_atlas.Run`: lexical_by_layer, head_contrasts,
head_ablations, patching_summary, noop_targets, table1, condition_contrasts, ranking_effects, alignment_behaviour) and
returns a :class:`Reading`; nothing here queries the store or imports Streamlit, so tests check the words against
direct computations. The rules (what "separates", "few heads" and "no-op"
mean) are the module's constants and are stated in docs/app.md, section Findings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from precompute.statistics import ALPHA, MIN_QUERIES, fmt_p, stars

# The paper's MonoBERT Table 1 (nDCG@10 on TREC DL; * significant): the values shown beside the run's.
PAPER_TABLE1 = {"none": ("0.81", "baseline"), "d_q": ("0.81", "Document->Query removed"),
                "q_d": ("0.67*", "Query->Document removed"), "all": ("0.48*", "every direction removed")}
FEW_HEADS = 0.25  # "few heads carry the matching": at least one and at most this share of the heads significant
TABLE1_MODE = "zero"  # the paper's ablation: attention weights set to zero


@dataclass
class Reading:
    """One section's reading: the sentence, whether the finding holds (None: cannot tell: missing analysis or too few
    queries) and the number of queries it rests on."""

    sentence: str
    holds: bool | None
    n_queries: int | None

    @property
    def few_queries(self) -> bool:
        return self.n_queries is not None and self.n_queries < MIN_QUERIES


def signed(x: float, digits: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:+.{digits}f}"


def interval(est: float, low: float, high: float, digits: int = 3) -> str:
    """``+0.013 [+0.011, +0.016]``."""
    return f"{signed(est, digits)} [{signed(low, digits)}, {signed(high, digits)}]"


def queries(n: int | None) -> str:
    return f"{n} quer{'y' if n == 1 else 'ies'}"


# -- staged matching: lexical early, semantic later ---------------------------------------------------------------
def first_separating_layer(lex: pd.DataFrame, metric: str, versus: str) -> pd.Series | None:
    """The row of the first layer where relevant minus ``versus`` (hard, easy) of ``metric`` has its bootstrap interval
    above 0 (relevant pairs get more of the mass, over queries); None when no layer does."""
    rows = lex[lex["metric"] == metric].sort_values("layer")
    hit = rows[rows[f"relevant_minus_{versus}_low"] > 0]
    return hit.iloc[0] if len(hit) else None


def _separation(row: pd.Series | None, versus: str, what: str) -> str:
    if row is None:
        return f"never separates relevant passages from {versus} negatives"
    col = f"relevant_minus_{versus}"
    return (f"{what}separates relevant passages from {versus} negatives from layer {int(row['layer'])} "
            f"({interval(row[col], row[col + '_low'], row[col + '_high'])})")


def staged(lex: pd.DataFrame) -> Reading:
    """Lexical early, semantic later: the exact-match mass (q_d_exact) should separate relevant passages from
    negatives at an earlier layer than the mass on the other document tokens (q_d_other) separates them from hard
    negatives (same surface words, so only meaning tells them apart)."""
    exact_easy = first_separating_layer(lex, "q_d_exact", "easy")
    exact_hard = first_separating_layer(lex, "q_d_exact", "hard")
    other_hard = first_separating_layer(lex, "q_d_other", "hard")
    rows = lex[lex["metric"] == "q_d_exact"]
    n = int(rows["n_queries_relevant_minus_easy"].max()) if len(rows) else 0
    exact = (f"Exact-match mass {_separation(exact_easy, 'easy', '')}"
             + (f" and {_separation(exact_hard, 'hard', '')}" if exact_hard is not None
                else f" {'but' if exact_easy is not None else 'and'} never from hard negatives"))
    other = f"mass on the other document tokens {_separation(other_hard, 'hard', '')}"
    lexical = min((int(r["layer"]) for r in (exact_easy, exact_hard) if r is not None), default=None)
    if lexical is None:
        verdict, holds = "no lexical signal, so no staged order on this run", False
    elif other_hard is None:
        verdict, holds = "no semantic signal against hard negatives, so no staged order on this run", False
    elif int(other_hard["layer"]) > lexical:
        verdict, holds = "lexical matching comes first, semantic matching later, as in the paper", True
    else:
        verdict, holds = ("the semantic signal comes no later than the lexical one: the staged order does not hold "
                          "on this run"), False
    return Reading(f"{exact}; {other} ({queries(n)}): {verdict}.", holds, n)


# -- matching heads --------------------------------------------------------------------------------------------------
def significant_heads(contrasts: pd.DataFrame) -> pd.DataFrame:
    """Rows of one contrast's head_contrasts with a positive effect whose Holm p is below ALPHA, from a test over at
    least MIN_QUERIES queries (the project's rule: no significance below it)."""
    return contrasts[(contrasts["p_holm"] < ALPHA) & (contrasts["effect"] > 0)
                     & (contrasts["n_queries"].fillna(0) >= MIN_QUERIES)]


def matching_heads(contrasts: pd.DataFrame, n_heads: int, ablations: pd.DataFrame,
                   patching: dict[str, pd.DataFrame]) -> tuple[Reading, pd.Series | None]:
    """Few heads carry Query->Document matching: head_contrasts of q_d (relevant vs easy, relevant vs hard), the
    strongest head, and its causal weight where the run has head ablations (head_ablations) or patching
    (patching_summary per experiment: robust_patching). Returns the reading and the strongest head's row (None
    without statistics)."""
    easy = contrasts[(contrasts["contrast"] == "relevant_vs_easy") & contrasts["effect"].notna()]
    hard = contrasts[(contrasts["contrast"] == "relevant_vs_hard") & contrasts["effect"].notna()]
    if easy.empty:
        return Reading("This run has no query-level head statistics of Query->Document mass (relevant vs easy).",
                       None, None), None
    n = int(easy["n_queries"].max())
    order = easy["effect_dz"].astype(float).fillna(easy["effect"].astype(float))
    top = easy.loc[order.idxmax()]
    head = f"{int(top['layer'])}.{int(top['head'])}"
    strongest = (f"head {head}, by {interval(top['effect'], top['effect_low'], top['effect_high'])}"
                 + (f" (d_z {top['effect_dz']:.2f})" if pd.notna(top["effect_dz"]) else ""))
    if n < MIN_QUERIES:
        sentence = (f"With {queries(n)} (fewer than {MIN_QUERIES}) no head is called significant; the largest "
                    f"Query->Document difference between relevant passages and easy negatives is {strongest}.")
        holds = None
    else:
        k, k_hard = len(significant_heads(easy)), len(significant_heads(hard))
        share = k / n_heads if n_heads else 0.0
        sentence = (f"{k} of {n_heads} heads ({share:.0%}) give relevant passages more Query->Document attention than "
                    f"easy negatives after Holm (paired t over {queries(n)}), {k_hard} more than hard negatives"
                    + (f"; the strongest is {strongest}" if k else f"; the largest difference is {strongest}"))
        if k == 0:
            verdict, holds = "no head carries the matching on this run", False
        elif share <= FEW_HEADS:
            verdict, holds = "a few heads carry the matching, as in the paper", True
        else:
            verdict, holds = f"the matching is spread over more than {FEW_HEADS:.0%} of the heads, not a few", False
        sentence += f": {verdict}."
    sentence += " " + causal_weight(int(top["layer"]), int(top["head"]), ablations, patching)
    return Reading(sentence, holds, n), top


def robust_patching(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per patched activation of a ``patching_summary`` (``Run.patching_summary``): the exact method's where it
    was computed, attribution's elsewhere. Findings quote these rows (the ratio of sums with its bootstrap interval
    over queries), not the plain mean over pairs, which one pair with a near-zero score difference can dominate."""
    if summary.empty:
        return summary
    exact_first = summary.assign(_other=summary["method"] != "exact").sort_values("_other", kind="stable")
    return exact_first.drop_duplicates(["layer", "head", "component", "segment"]).drop(columns="_other")


def recovered(row: pd.Series, experiment: str) -> str:
    """``+0.31 [+0.25, +0.37] of the score gap (tfc1, ratio of sums over 12 queries, 340 patch pairs)``."""
    return (f"{interval(row['ratio'], row['ratio_low'], row['ratio_high'])} of the score gap ({experiment}, ratio of "
            f"sums over {queries(int(row['n_queries']))}, {int(row['n_pairs'])} patch pairs)")


def causal_weight(layer: int, head: int, ablations: pd.DataFrame, patching: dict[str, pd.DataFrame]) -> str:
    """What removing or patching one head does, from the run's head ablations and patching summaries (experiment ->
    :func:`robust_patching` rows)."""
    parts = []
    abl = ablations[(ablations["layer"] == layer) & (ablations["head"] == head)] if len(ablations) else ablations
    if len(abl):
        r = abl.sort_values("mode", key=lambda s: s != TABLE1_MODE).iloc[0]
        parts.append(f"ablating it alone ({r['mode']}) changes nDCG@10 by {signed(r['delta'])} (Holm p "
                     f"{fmt_p(r['p_holm'])})")
    for experiment, rows in patching.items():
        e = rows[(rows["component"] == "head") & (rows["layer"] == layer) & (rows["head"] == head)] \
            if len(rows) else rows
        if len(e):
            parts.append(f"patching it recovers {recovered(e.iloc[0], experiment)}")
    if not parts:
        return f"This run has no head ablations or patching to weigh head {layer}.{head} causally."
    return f"Causally, head {layer}.{head}: " + "; ".join(parts) + "."


# -- [CLS] / [SEP] as no-op targets --------------------------------------------------------------------------------
SOURCE_WORDS = {"q": "Query", "d": "Document"}


def noop(targets: pd.DataFrame, shares_note: str) -> Reading:
    """[CLS] and the separators as no-op targets: per source (query, document tokens), the layer where they receive
    the most attention (CLS + SEP), and there the value-weighted share of the head output they contribute; a no-op
    when the share is below the mass for both sources. ``shares_note``: what to say when the run has no shares."""
    if targets.empty:
        return Reading("This run has no attention summaries by layer.", None, None)
    defined = targets[targets["mass"].notna()]  # a causal model's query cannot attend the separators after it
    if defined.empty:
        return Reading("No attention mass into [CLS] or the separators is defined on this run.", None, None)
    both = defined.groupby(["source", "layer"], as_index=False)[["mass", "share"]].sum(min_count=1)
    n = int(defined["n_queries"].min())
    parts, no_op = [], []
    for src in ("q", "d"):
        rows = both[both["source"] == src]
        if rows.empty:
            continue
        peak = rows.loc[rows["mass"].idxmax()]
        layer = int(peak["layer"])
        cls_sep = defined[(defined["source"] == src) & (defined["layer"] == layer)].set_index("target")["mass"]
        names = {"cls": "[CLS]", "sep": "SEP"}
        text = (f"{SOURCE_WORDS[src]} tokens give [CLS] and the separators up to {peak['mass']:.1%} of their "
                f"attention (layer {layer}: " + ", ".join(f"{names[t]} {v:.1%}" for t, v in cls_sep.items()) + ")")
        if pd.notna(peak["share"]):
            text += f" but only {peak['share']:.1%} of the head output there (value-weighted share)" \
                if peak["share"] < peak["mass"] else f" and {peak['share']:.1%} of the head output there (value-weighted share)"
            no_op.append(bool(peak["share"] < peak["mass"]))
        parts.append(text)
    sentence = "; ".join(parts) + f" (relevant pairs, {queries(n)})"
    if not no_op:
        return Reading(sentence + f". {shares_note}", None, n)
    if all(no_op):
        return Reading(sentence + ": attended more than they contribute, read as a no-op, as in the paper.", True, n)
    return Reading(sentence + ": they contribute at least as much as they are attended, not a no-op on this run.",
                   False, n)


# -- Table 1 ----------------------------------------------------------------------------------------------------------
def table1_rows(t1: pd.DataFrame) -> dict[str, pd.Series]:
    """The rows of the paper's Table 1 in the run's table1: the baseline and the conditions q_d, d_q and all over every
    layer, the zeroing mode first."""
    out = {}
    if t1.empty:
        return out
    base = t1[t1["kind"] == "baseline"]
    if len(base):
        out["none"] = base.iloc[0]
    for name in ("q_d", "d_q", "all"):
        rows = t1[(t1["condition"] == name) & (t1["layers"].fillna("all") == "all")]
        if len(rows):
            out[name] = rows.sort_values("mode", key=lambda s: s != TABLE1_MODE).iloc[0]
    return out


def paper_table(t1: pd.DataFrame) -> pd.DataFrame:
    """The paper's MonoBERT values beside the run's: condition, paper, ours (mean, stars from Holm p when the test rests
    on at least MIN_QUERIES queries), delta, Holm p, queries."""
    rows = table1_rows(t1)
    out = []
    for name, (paper, what) in PAPER_TABLE1.items():
        r = rows.get(name)
        if r is None:
            out.append({"condition": what, "paper (MonoBERT)": paper, "this run": "not computed", "delta": math.nan,
                        "p (Holm)": "-", "queries": None})
            continue
        n = int(r["n_queries"])
        out.append({"condition": what, "paper (MonoBERT)": paper,
                    "this run": f"{r['mean']:.3f}{stars(r['p_holm'], n_queries=n) if name != 'none' else ''}",
                    "delta": float(r["delta"]) if name != "none" else math.nan,
                    "p (Holm)": fmt_p(r["p_holm"]) if name != "none" else "-", "queries": n})
    return pd.DataFrame(out)


def table1(t1: pd.DataFrame, contrasts: pd.DataFrame) -> Reading:
    """Q->D vs D->Q: the run's nDCG@10 without ablation and with each direction removed, and the direct paired test
    (condition_contrasts' first row, 'Q->D vs D->Q'); holds when removing Query->Document costs significantly more."""
    rows = table1_rows(t1)
    if "none" not in rows:
        return Reading("This run has no ablations.", None, None)
    n = int(rows["none"]["n_queries"])
    said = [f"Without ablation nDCG@10 is {rows['none']['mean']:.3f} (the paper's MonoBERT: 0.81)"]
    for name, what in (("q_d", "removing Query->Document"), ("d_q", "removing Document->Query"),
                       ("all", "removing every direction")):
        r = rows.get(name)
        if r is not None:
            said.append(f"{what} gives {r['mean']:.3f} ({signed(r['delta'])}, Holm p {fmt_p(r['p_holm'])}; paper "
                        f"{PAPER_TABLE1[name][0]})")
        else:
            said.append(f"{what} was not computed")
    sentence = ", ".join(said) + f" ({queries(n)})."
    row = contrasts.iloc[0] if len(contrasts) else None
    if row is None or (isinstance(row.get("missing"), str) and row["missing"]) or pd.isna(row["measure_diff"]):
        return Reading(sentence + " The direct paired test Q->D vs D->Q needs both conditions.", None, n)
    cn = int(row["n_queries"])
    test = f" The direct paired test Q->D vs D->Q: {signed(row['measure_diff'])} (Holm p {fmt_p(row['p_holm'])}, " \
           f"{queries(cn)})"
    if cn < MIN_QUERIES:
        return Reading(sentence + test + f": fewer than {MIN_QUERIES} queries, not tested for significance.", None, cn)
    if row["measure_diff"] < 0 and row["p_holm"] < ALPHA:
        return Reading(sentence + test + ": removing Query->Document costs more than removing Document->Query, as in "
                       "the paper.", True, cn)
    if row["measure_diff"] >= 0:
        return Reading(sentence + test + ": removing Query->Document costs no more than removing Document->Query; "
                       "the paper's finding does not hold on this run.", False, cn)
    return Reading(sentence + test + ": the test does not separate the two directions; the paper's finding does not "
                   "hold on this run.", False, cn)


def hard_easy(t1: pd.DataFrame, effects: pd.DataFrame) -> Reading | None:
    """What removing Query->Document does to the ordering against hard negatives (same words, so semantic matching)
    and against easy ones (lexical matching): the mean per-query change of pairwise accuracy with its bootstrap
    interval over queries (ranking_effects); None without the condition."""
    row = table1_rows(t1).get("q_d")
    found = effects[effects["condition_id"] == row["condition_id"]] if row is not None and len(effects) else effects
    if row is None or found.empty:
        return None
    e = found.iloc[0]
    n = int(e["n_queries"])
    hard, easy = float(e["delta_pairwise_hard"]), float(e["delta_pairwise_easy"])
    said = (f"Removing Query->Document changes pairwise accuracy against hard negatives by "
            f"{interval(hard, e['delta_pairwise_hard_low'], e['delta_pairwise_hard_high'])} and against easy negatives "
            f"by {interval(easy, e['delta_pairwise_easy_low'], e['delta_pairwise_easy_high'])} ({queries(n)})")
    if math.isnan(hard) or math.isnan(easy):
        return Reading(said + ".", None, n)
    which = ("more against hard negatives (semantic matching) than against easy ones" if hard < easy else
             "more against easy negatives (lexical matching) than against hard ones")
    return Reading(said + f": it hurts the ordering {which}.", None, n)


# -- QK alignment vs matching behaviour ----------------------------------------------------------------------------
def alignment(df: pd.DataFrame) -> Reading:
    """Spearman's rho across heads between QK alignment and the query-level Query->Document effect, per contrast
    (alignment_behaviour); holds when relevant vs easy (else the first contrast) has rho > 0 with permutation
    p < ALPHA."""
    if df.empty:
        return Reading("This run has no alignment statistics.", None, None)
    main = df[df["contrast"] == "relevant_vs_easy"]
    main = main.iloc[0] if len(main) else df.iloc[0]
    n = int(main["n_queries"])

    def words(r) -> str:
        return f"{str(r['label']).lower()}: rho {interval(r['rho'], r['low'], r['high'], 2)}, permutation p {fmt_p(r['p'])}"

    rest = [words(r) for _, r in df.iterrows() if r["contrast"] != main["contrast"]]
    sentence = (f"Across {int(main['heads'])} heads, QK alignment rank-correlates with the query-level "
                f"Query->Document effect ({words(main)}; effects over {queries(n)})"
                + (f"; {'; '.join(rest)}" if rest else ""))
    if main["rho"] > 0 and main["p"] < ALPHA:
        return Reading(sentence + ": heads whose QK circuit aligns query and document match more.", True, n)
    return Reading(sentence + ": alignment does not predict matching behaviour on this run.", False, n)
