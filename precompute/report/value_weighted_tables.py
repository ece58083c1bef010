"""The report's no-op check: the cells of :meth:`matching_atlas.Run.noop_targets` (computed by
:mod:`precompute.analyses.value_weighted`), one block per source segment."""

from __future__ import annotations

import math

from precompute.names import SEGMENT_LABELS


def _cell(value: float, low: float, high: float) -> str:
    return f"{value:.4f} [{low:.4f},{high:.4f}]"


def render(run, seed: int = 0) -> list[str]:
    """Lines of the section for ``run`` (a :class:`matching_atlas.Run`); [] for a run without the shares (a store of
    schema version 6 or older: its report prints what it printed before)."""
    if not run.has_value_weighted():
        return []
    frame = run.noop_targets(seed=seed)
    out = ["", "No-op check: attention mass vs value-weighted share into CLS and SEP by layer (relevant pairs; mean over "
           "the layer's heads, the query's pairs, then queries [95% bootstrap interval over queries]; SEP = both "
           "separators; share = sum over target tokens of ||a_ij W_O^h v_j|| / sum over all tokens, per source token; "
           "ratio < 1: attended more than it contributes)"]
    for source, rows in frame.groupby("source", sort=False):
        targets = list(dict.fromkeys(rows["target"]))
        n_q = int(rows["n_queries"].min())
        head = f"  {SEGMENT_LABELS[source] + ' ->':<11} {'layer':>5}" + "".join(
            f"  {t.upper() + ' mass':>25}  {t.upper() + ' share':>25}  {'ratio':>6}" for t in targets) + f"  (n_q {n_q})"
        out += ["", head, "  " + "-" * (len(head) - 2)]
        for layer, cells in rows.groupby("layer", sort=True):
            by_target = {r["target"]: r for r in cells.to_dict("records")}
            text = ""
            for t in targets:
                r = by_target[t]
                ratio = "   nan" if math.isnan(r["ratio"]) else f"{r['ratio']:6.2f}"
                text += (f"  {_cell(r['mass'], r['mass_low'], r['mass_high']):>25}"
                         f"  {_cell(r['share'], r['share_low'], r['share_high']):>25}  {ratio}")
            out.append(f"  {'':<11} {layer:>5}{text}")
    return out
