"""The no-op check (Kobayashi et al., EMNLP 2020, "Attention is Not Only a Weight"): per layer, the attention mass
Query and Document tokens give [CLS] and the separators beside the value-weighted share of the head's output those
targets contribute (``vw_*``, :mod:`precompute.metrics`). A target that receives much attention but contributes a
small share of the output norm is read as a no-op: measured, not inferred from attention weights.

Relevant pairs only. Per layer the mean over its heads, per query the mean over its relevant pairs, then the mean
over queries with a seeded bootstrap interval over queries (as :mod:`precompute.analyses.lexical_layers`, whose
per-query layer means it reuses). Read by :meth:`matching_atlas.Run.noop_targets`."""

from __future__ import annotations

import numpy as np

from precompute.analyses.lexical_layers import KINDS, interval, layer_means

SINCE_SCHEMA = 7  # the store schema version whose summary pass stores the shares (precompute.store.schema)
SOURCES = ("q", "d")  # the tokens whose attention is read: query and document
TARGETS = {"cls": ("cls",), "sep": ("sep1", "sep2")}  # 'sep': both separators together
RELEVANT = KINDS.index("relevant")


def stored(con) -> bool:
    """Whether the run holds the shares (schema 7 and later; older stores read them NULL)."""
    return bool(con.execute("SELECT count(vw_q_cls_sum) FROM head_attention_agg").fetchone()[0])


def _per_query(con, src: str, dsts: tuple[str, ...], prefix: str) -> tuple[list[int], np.ndarray]:
    """(layers, [layers, queries] relevant pairs' mean of ``prefix``src_dst summed over ``dsts``)."""
    total, layers = None, []
    for dst in dsts:
        layers, _, means = layer_means(con, f"{prefix}{src}_{dst}")
        relevant = means[:, :, RELEVANT]
        total = relevant if total is None else total + relevant
    return layers, total


def noop_by_layer(con, seed: int = 0) -> list[dict]:
    """One record per source (``q``, ``d``) x target (``cls``, ``sep``) x layer: ``mass`` and ``share`` (each with
    ``_low`` / ``_high``, the bootstrap interval over the ``n_queries`` queries with relevant pairs), and ``ratio`` =
    share / mass (below 1: the target is attended more than it contributes). A run without the shares (schema 6 and
    older) gets the masses with NaN shares."""
    shares = stored(con)
    out = []
    for src in SOURCES:
        for target, dsts in TARGETS.items():
            layers, mass = _per_query(con, src, dsts, "")
            keep = ~np.isnan(mass).any(axis=0)
            m = interval(mass[:, keep], seed)
            s = interval(_per_query(con, src, dsts, "vw_")[1][:, keep], seed) if shares else (np.full(len(layers), np.nan),) * 3
            for i, layer in enumerate(layers):
                with np.errstate(invalid="ignore", divide="ignore"):
                    ratio = float(s[0][i] / m[0][i])
                out.append({"source": src, "target": target, "layer": layer,
                            "mass": float(m[0][i]), "mass_low": float(m[1][i]), "mass_high": float(m[2][i]),
                            "share": float(s[0][i]), "share_low": float(s[1][i]), "share_high": float(s[2][i]),
                            "ratio": ratio, "n_queries": int(m[3])})
    return out
