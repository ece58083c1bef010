"""The summary pass: score every pair and reduce each layer's attention to per-head summaries.

Pairs are processed in fixed *chunks* (``chunk_size`` consecutive pair ids), each written as one
part of the ``pairs`` and ``head_attention`` tables, so an interrupted run resumes at the first
missing chunk and ends with exactly the tables an uninterrupted run writes. Inside a chunk,
pairs are sorted by token length and batched, so padding stays small.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import pyarrow as pa
import torch

from precompute.analyses.batching import length_batches
from precompute.kernels.eager import SummaryProbe
from precompute.metrics import METRICS
from precompute.families.loading import LoadedModel
from precompute.pairs import Pair
from precompute.families.segments import D, Q, EncodedBatch


def exact_match_counts(batch: EncodedBatch) -> tuple[list[int], list[int]]:
    """Per pair: query tokens whose id occurs in the kept document, document tokens whose id occurs in the query."""
    ids, seg = batch.inputs["input_ids"], batch.segments
    same = (ids[:, :, None] == ids[:, None, :]) & (seg == Q)[:, :, None] & (seg == D)[:, None, :]  # [batch, q_pos, d_pos]
    return same.any(2).sum(1).tolist(), same.any(1).sum(1).tolist()


def summarise_batch(probe: SummaryProbe, lm: LoadedModel, pairs: list[Pair], max_length: int):
    """Score one batch and summarise its attention: (pair columns, summaries [batch, layer, head, metric],
    decoder cross-attention masses [batch, decoder layer, head, 5] or None)."""
    batch = lm.encode([p.query for p in pairs], [p.doc for p in pairs], max_length)
    q_exact, d_exact = exact_match_counts(batch)
    scores, summaries, cross = probe.run(batch.to(lm.device), summarise=True)
    columns = {
        "pair_id": [p.pair_id for p in pairs],
        "qid": [p.qid for p in pairs],
        "docid": [p.docid for p in pairs],
        "query": [p.query for p in pairs],
        "doc": [p.doc for p in pairs],
        "grade": [p.grade for p in pairs],
        "neg_type": [p.neg_type for p in pairs],
        "score": scores.cpu().numpy(),
        "q_tokens": batch.q_tokens,
        "d_tokens": batch.d_tokens,
        "d_tokens_full": batch.d_tokens_full,
        "truncated": batch.truncated,
        "q_exact_tokens": q_exact,
        "d_exact_tokens": d_exact,
        "run_rank": [p.run_rank for p in pairs],
        "run_score": [p.run_score for p in pairs],
    }
    return columns, summaries.cpu().numpy(), None if cross is None else cross.cpu().numpy()


def _grid(pair_ids: np.ndarray, n_layers: int, n_heads: int) -> dict[str, np.ndarray]:
    """pair_id, layer, head columns of [pair, layer, head]-shaped values flattened in C order."""
    n = len(pair_ids)
    return {
        "pair_id": np.repeat(pair_ids.astype(np.int32), n_layers * n_heads),
        "layer": np.tile(np.repeat(np.arange(n_layers, dtype=np.int8), n_heads), n),
        "head": np.tile(np.arange(n_heads, dtype=np.int8), n * n_layers),
    }


def head_rows(pair_ids: np.ndarray, summaries: np.ndarray) -> pa.Table:
    """Long head_attention rows from summaries [pair, layer, head, metric]; NaN (undefined) is stored as NULL."""
    n, n_layers, n_heads, _ = summaries.shape
    table = _grid(pair_ids, n_layers, n_heads)
    flat = summaries.reshape(n * n_layers * n_heads, len(METRICS)).astype(np.float32)
    columns = {name: pa.array(flat[:, i], pa.float32(), from_pandas=True) for i, name in enumerate(METRICS)}
    return pa.table({**{k: pa.array(v) for k, v in table.items()}, **columns})


def cross_rows(pair_ids: np.ndarray, cross: np.ndarray) -> pa.Table:
    """Long decoder_cross_attention rows from masses [pair, decoder layer, head, 5] (segment columns)."""
    from precompute.names import SEGMENTS

    n, n_layers, n_heads, _ = cross.shape
    flat = cross.reshape(n * n_layers * n_heads, len(SEGMENTS)).astype(np.float32)
    return pa.table({**_grid(pair_ids, n_layers, n_heads), **{seg: flat[:, i] for i, seg in enumerate(SEGMENTS)}})


def summarise_chunk(lm: LoadedModel, pairs: Sequence[Pair], *, batch_size: int, max_length: int,
                    batch_tokens: int | None = None, on_batch: Callable[[int], None] | None = None) -> tuple[pa.Table, pa.Table, pa.Table | None]:
    """(pairs part, head_attention part, decoder_cross_attention part or None) of one chunk."""
    cols: dict[str, list] = {}
    summaries, crosses = [], []
    with SummaryProbe(lm) as probe:
        for batch in length_batches(lm, pairs, batch_size, max_length, batch_tokens):
            batch_cols, batch_summaries, batch_cross = summarise_batch(probe, lm, batch, max_length)
            for k, v in batch_cols.items():
                cols.setdefault(k, []).extend(list(v))
            summaries.append(batch_summaries)
            if batch_cross is not None:
                crosses.append(batch_cross)
            if on_batch:
                on_batch(len(batch))
    pair_ids = np.asarray(cols["pair_id"])
    cross_part = cross_rows(pair_ids, np.concatenate(crosses)) if crosses else None
    return pa.table(cols), head_rows(pair_ids, np.concatenate(summaries)), cross_part


@contextlib.contextmanager
def plain_attention(lm: LoadedModel, implementation: str = "sdpa"):
    """Run the model with a stock attention implementation (the plain scoring baseline): ``implementation``, or eager
    where the architecture refuses it (Gemma-2 has no SDPA); families that compute attention inline (DeBERTa-v2,
    MPNet) have only their own."""
    if lm.family.attention != "interface":
        yield lm
        return
    previous = lm.model.config._attn_implementation
    try:
        lm.model.set_attn_implementation(implementation)
    except ValueError:
        lm.model.set_attn_implementation("eager")
    try:
        yield lm
    finally:
        lm.model.set_attn_implementation(previous)


@torch.inference_mode()
def plain_scores(lm: LoadedModel, pairs: Sequence[Pair], *, batch_size: int, max_length: int,
                 batch_tokens: int | None = None, implementation: str = "sdpa") -> np.ndarray:
    """Scores with a stock attention implementation and no summaries: the baseline the summary pass is measured against."""
    scores = {}
    with plain_attention(lm, implementation):
        for batch in length_batches(lm, pairs, batch_size, max_length, batch_tokens):
            enc = lm.encode([p.query for p in batch], [p.doc for p in batch], max_length).to(lm.device)
            for p, s in zip(batch, lm.family.scores(lm, enc).cpu().numpy()):
                scores[p.pair_id] = s
    return np.array([scores[p.pair_id] for p in pairs], dtype=np.float32)
