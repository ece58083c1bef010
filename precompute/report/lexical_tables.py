"""The report's lexical vs semantic matching by layer: the cells of :meth:`matching_atlas.Run.lexical_by_layer`
(computed by :mod:`precompute.analyses.lexical_layers`), one block per metric."""

from __future__ import annotations

from precompute.analyses.lexical_layers import KINDS


def render(run, seed: int = 0) -> list[str]:
    """Lines of the section for ``run`` (a :class:`matching_atlas.Run`); [] for a run without head_attention_agg."""
    frame = run.lexical_by_layer(seed=seed)
    if frame.empty:
        return []
    out = ["", "Lexical vs semantic matching by layer (head_attention_agg; mean over the layer's heads; per kind the mean "
           "over queries of the query's mean; differences: mean over queries with both kinds of the per-query "
           "difference [95% bootstrap interval over queries])"]
    for metric, rows in frame.groupby("metric", sort=False):
        n_hard, n_easy = (int(rows[f"n_queries_relevant_minus_{k}"].iloc[0]) for k in ("hard", "easy"))
        head = (f"  {metric:<10} {'layer':>5}  {'relevant':>8}  {'hard':>8}  {'easy':>8}  "
                f"{'relevant - hard (n_q ' + str(n_hard) + ')':>30}  {'relevant - easy (n_q ' + str(n_easy) + ')':>30}")
        out += ["", head, "  " + "-" * (len(head) - 2)]
        for r in rows.to_dict("records"):
            cells = "  ".join(f"{r[k]:8.4f}" for k in KINDS)
            diffs = "  ".join(f"{f'{d[0]:+.4f} [{d[1]:+.4f},{d[2]:+.4f}]':>30}" for d in (
                (r[f"relevant_minus_{k}"], r[f"relevant_minus_{k}_low"], r[f"relevant_minus_{k}_high"])
                for k in ("hard", "easy")))
            out.append(f"  {'':<10} {r['layer']:>5}  {cells}  {diffs}")
    return out
