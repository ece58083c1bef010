"""The Findings page's readings of the paper's open questions (other model families, components by layer and
segment, QK-subspace interventions), in the words and rules of :mod:`app.findings`: each function takes the reader's
frames and returns a :class:`app.findings.Reading` whose words the numbers choose."""

from __future__ import annotations

import pandas as pd

from app.findings import Reading, queries, recovered, signed
from precompute.statistics import ALPHA, MIN_QUERIES, fmt_p


# -- open question 1: other model families -----------------------------------------------------------------------
def family(model_name: str, family_name: str | None, causal: bool, dataset: str, others: list[str]) -> Reading:
    """The run's family and the other models' runs on the same dataset in the store (the Compare runs page)."""
    kind = "causal: each token attends only to earlier ones" if causal else "bidirectional"
    sentence = f"This run is {model_name}, a {family_name or 'bert-style encoder'} model ({kind}), on {dataset}"
    if others:
        return Reading(sentence + f"; the store also holds {', '.join(others)} on {dataset}: compare the "
                       "mechanisms across models on the Compare runs page.", None, None)
    return Reading(sentence + f"; the store holds no other model's run on {dataset}, so nothing to compare it with "
                   "yet.", None, None)


# -- open question 2: components by layer and segment --------------------------------------------------------------
COMPONENT_WORDS = {"attn": "attention block", "mlp": "MLP", "resid": "residual stream",
                   "resid_post": "residual stream after the block"}
SEGMENT_WORDS = {"all": "every token", "cls": "[CLS]", "q": "the query tokens", "sep1": "the first separator",
                 "d": "the document tokens", "sep2": "the last separator"}


def components(comp: pd.DataFrame, patching: dict[str, pd.DataFrame]) -> tuple[Reading, pd.Series | None, dict]:
    """Which block output (attention, MLP) at which layer and tokens the ranking needs most (component_effects, the
    largest drop), how many component conditions survive Holm, and which block output patching surely restores the
    most of the score gap (per experiment, :func:`app.findings.robust_patching` rows: the largest lower bound of the
    ratio of sums over queries). Returns the reading, the largest drop's row (None without component conditions) and,
    per experiment, that patching row."""
    parts, holds, n, worst, bests = [], None, None, None, {}
    single = comp[comp["layer"].notna()] if len(comp) else comp
    if len(single):
        n = int(single["n_queries"].max())
        worst = single.loc[single["delta"].idxmin()]
        k = int(((single["p_holm"] < ALPHA) & (single["n_queries"] >= MIN_QUERIES)).sum())
        where = (f"the {COMPONENT_WORDS.get(worst['component'], worst['component'])} output at "
                 f"{SEGMENT_WORDS.get(worst['segment'], worst['segment'])} of layer {int(worst['layer'])}")
        cost = (f"nDCG@10 {signed(worst['delta'])} (Holm p {fmt_p(worst['p_holm'])}, "
                f"{queries(int(worst['n_queries']))})")
        parts.append(f"Removing {where} costs the most: {cost}" if worst["delta"] < 0
                     else f"No single-layer component removal lowers nDCG@10 (the lowest: {where}, {cost})")
        if n < MIN_QUERIES:
            parts.append(f"with fewer than {MIN_QUERIES} queries none is tested for significance")
        else:
            holds = k > 0
            parts.append(f"{k} of {len(single)} single-layer component conditions change it after Holm"
                         if k else f"none of the {len(single)} single-layer component conditions changes it after Holm")
    for experiment, df in patching.items():
        blocks = df[(df["component"] != "head") & df["ratio_low"].notna()] if len(df) else df
        if len(blocks):  # the surest share: the largest lower bound, as the job ranks heads
            best = bests[experiment] = blocks.loc[blocks["ratio_low"].idxmax()]
            parts.append(f"patching the {COMPONENT_WORDS.get(best['component'], best['component'])} at "
                         f"{SEGMENT_WORDS.get(best['segment'], best['segment'])} of layer {int(best['layer'])} surely "
                         f"recovers the largest share: {recovered(best, experiment)}")
    if not parts:
        return Reading("This run has neither component ablations nor component patching.", None, None), None, bests
    sentence = "; ".join(parts)
    return Reading(sentence[0].upper() + sentence[1:] + ".", holds, n), worst, bests


# -- open question 3: QK-subspace interventions --------------------------------------------------------------------
def subspace(sub: pd.DataFrame) -> tuple[Reading, pd.Series | None]:
    """The removal that changes its own head's Query->Document mass the most, beside the largest change of the head's
    other directions and the change of nDCG@10; holds (the intervention is specific and matters) when the own change
    exceeds the other in size and nDCG@10 changes after Holm over at least MIN_QUERIES queries."""
    removed = sub[(sub["operation"] == "remove") & sub["delta_q_d"].notna()] if len(sub) else sub
    if removed.empty:
        return Reading("This run has no QK-subspace removals with their head's metrics.", None, None), None
    r = removed.loc[removed["delta_q_d"].idxmin()]
    n = int(r["n_queries"])
    other = (f"its largest other change is {r['other_direction']} {signed(r['other_delta'])}"
             if isinstance(r["other_direction"], str) else "its other directions are not measured")
    sentence = (f"Removing the top-{int(r['k'])} QK directions of head {int(r['layer'])}.{int(r['head'])} changes its "
                f"own Query->Document mass by {signed(r['delta_q_d'])} while {other}; nDCG@10 changes by "
                f"{signed(r['delta'])} (Holm p {fmt_p(r['p_holm'])}, {queries(n)})")
    specific = not isinstance(r["other_direction"], str) or abs(r["delta_q_d"]) > abs(r["other_delta"])
    if n < MIN_QUERIES:
        return Reading(sentence + f": fewer than {MIN_QUERIES} queries, not tested for significance.", None, n), r
    matters = bool(r["p_holm"] < ALPHA)
    if specific and matters:
        return Reading(sentence + ": the intervention is specific to the head's matching and changes the ranking.",
                       True, n), r
    why = ("the intervention is not specific to the head's matching" if not specific
           else "the ranking does not measurably change")
    return Reading(sentence + f": {why}.", False, n), r
