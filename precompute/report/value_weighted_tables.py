"""The report's no-op check (Kobayashi et al., EMNLP 2020, "Attention is Not Only a Weight"): per layer, the attention
mass Query and Document tokens give [CLS] and the separators beside the value-weighted share of the head's output
those targets contribute (``vw_*``, precompute.metrics). A target that receives much attention but contributes a
small share of the output norm is read as a no-op, measured rather than inferred from attention weights.

Relevant pairs only; per layer the mean over its heads, per query the mean over its relevant pairs, then the mean over
queries (as the lexical table, precompute.report.lexical_tables, whose per-query layer means it reuses)."""

from __future__ import annotations

import numpy as np

from precompute.report.lexical_tables import layer_means

SOURCES = (("q", "Query"), ("d", "Document"))
TARGETS = (("CLS", ("cls",)), ("SEP", ("sep1", "sep2")))  # SEP: both separators (sep1 + sep2)


def layer_values(con, src: str, dsts: tuple[str, ...], prefix: str = "") -> tuple[list[int], np.ndarray, int]:
    """(layers, [layers] mean over queries of the relevant pairs' ``prefix``src_dst summed over ``dsts``, queries)."""
    total, layers, n_q = None, [], 0
    for dst in dsts:
        layers, _, means = layer_means(con, f"{prefix}{src}_{dst}")
        relevant = means[:, :, 0]  # [layers, queries]
        total = relevant if total is None else total + relevant
    keep = ~np.isnan(total).any(axis=0)
    n_q = int(keep.sum())
    return layers, total[:, keep].mean(axis=1) if n_q else np.full(len(layers), np.nan), n_q


def render(con) -> list[str]:
    """Lines of the section; [] for a run without head_attention_agg or without the shares (a store of schema
    version 6 or older: its report prints what it printed before)."""
    views = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    if "head_attention_agg" not in views:
        return []
    stored = con.execute("SELECT count(vw_q_cls_sum) FROM head_attention_agg").fetchone()[0]
    if not stored:
        return []
    out = ["", "No-op check: attention mass vs value-weighted share into CLS and SEP by layer (relevant pairs; mean over the layer's heads, the query's pairs, then queries; SEP = both "
           "separators; share = sum over target tokens of ||a_ij W_O^h v_j|| / sum over all tokens, per source token; "
           "ratio < 1: attended more than it contributes)"]
    for src, label in SOURCES:
        columns = []
        for name, dsts in TARGETS:
            layers, mass, n_q = layer_values(con, src, dsts)
            _, share, _ = layer_values(con, src, dsts, prefix="vw_")
            columns.append((name, mass, share))
        head = f"  {label + ' ->':<11} {'layer':>5}" + "".join(
            f"  {name + ' mass':>9}  {name + ' share':>9}  {'ratio':>6}" for name, _, _ in columns) + f"  (n_q {n_q})"
        out += ["", head, "  " + "-" * (len(head) - 2)]
        for i, layer in enumerate(layers):
            with np.errstate(invalid="ignore", divide="ignore"):
                cells = "".join(f"  {mass[i]:9.4f}  {share[i]:9.4f}  {share[i] / mass[i]:6.2f}" for _, mass, share in columns)
            out.append(f"  {'':<11} {layer:>5}{cells}")
    return out
