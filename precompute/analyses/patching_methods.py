"""Activation patching by method, the one entry point the patching stage calls: exact patching
(:mod:`precompute.analyses.patching`, a forward pass per patched activation) or attribution patching
(:mod:`precompute.analyses.attribution`, a first-order estimate of every activation from one backward pass), over
batches of pairs of similar length. A module of its own because attribution builds on patching's sites and hooks."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from precompute.analyses import attribution, batching, patching
from precompute.analyses.patching import Site
from precompute.analyses.patching_ranking import columns_table


def run_chunk(lm, experiment: str, method: str, items: Sequence, sites: Sequence[Site], *, batch_size: int,
              max_length: int, batch_tokens: int | None = None, scale: str = "logit", graddrop: bool = False,
              on_batch=None):
    """``patching_effects`` rows (a pyarrow table) of ``sites`` over ``items`` by ``method`` ('exact' or
    'attribution'), in batches of pairs of similar length (:func:`precompute.analyses.batching.patch_batches`)."""
    tables = []
    with patching.Patcher(lm, eager=method == "attribution") as patcher:
        for chunk, clean, corrupted, rows in batching.patch_batches(lm, items, batch_size=batch_size,
                                                                   max_length=max_length, batch_tokens=batch_tokens):
            if method == "exact":
                clean_s, corrupted_s, patched = patching.patch_batch(patcher, experiment, clean, corrupted, sites,
                                                                     rows_per_forward=rows, scale=scale)
                dropped = None
            else:
                clean_s, corrupted_s, patched, dropped = attribution.attribute_batch(
                    patcher, experiment, clean, corrupted, sites, scale=scale, graddrop=graddrop)
            effects = patching.effect_columns(experiment, method, chunk, clean_s, corrupted_s,
                                              {s: v.detach() for s, v in patched.items()}, dropped)
            tables.append(columns_table(effects))
            if on_batch:
                on_batch(len(chunk))
    return pa.concat_tables(tables) if tables else None
