"""The summary pass: score every pair and reduce each layer's attention to per-head summaries.

Pairs are processed in fixed *chunks* (``chunk_size`` consecutive pair ids), each written as one
part of the ``pairs`` and ``head_attention`` tables, so an interrupted run resumes at the first
missing chunk and ends with exactly the tables an uninterrupted run writes. Inside a chunk,
pairs are sorted by token length and batched, so padding stays small.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from precompute.attention import AtlasProbe, plain_attention
from precompute.model import LoadedModel, relevance
from precompute.names import METRICS
from precompute.pairs import Pair
from precompute.segments import D, Q, EncodedBatch, encode


def chunked(pairs: Sequence[Pair], chunk_size: int) -> Iterator[tuple[str, Sequence[Pair]]]:
    """(part key, pairs) for consecutive slices of the pair list; keys sort in pair order."""
    for start in range(0, len(pairs), chunk_size):
        yield f"{start // chunk_size:06d}", pairs[start : start + chunk_size]


def length_batches(lm: LoadedModel, pairs: Sequence[Pair], batch_size: int, max_length: int) -> list[list[Pair]]:
    """Batches of similar token length (longest first), so padding wastes little compute."""
    lengths = lm.tokenizer(
        [p.query for p in pairs], [p.doc for p in pairs], truncation="only_second", max_length=max_length,
        return_length=True, return_attention_mask=False, return_token_type_ids=False,
    )["length"]
    order = sorted(range(len(pairs)), key=lambda i: (-lengths[i], pairs[i].pair_id))
    return [[pairs[i] for i in order[s : s + batch_size]] for s in range(0, len(order), batch_size)]


def typical_batch(pairs: Sequence[Pair], batch_size: int) -> list[Pair]:
    """A batch of pairs of typical (median and just above) length, for timing estimates before a pass."""
    return sorted(pairs, key=lambda p: len(p.query) + len(p.doc))[len(pairs) // 2 :][:batch_size]


def exact_match_counts(batch: EncodedBatch) -> tuple[list[int], list[int]]:
    """Per pair: query tokens whose id occurs in the kept document, document tokens whose id occurs in the query."""
    ids, seg = batch.inputs["input_ids"], batch.segments
    same = (ids[:, :, None] == ids[:, None, :]) & (seg == Q)[:, :, None] & (seg == D)[:, None, :]  # [batch, q_pos, d_pos]
    return same.any(2).sum(1).tolist(), same.any(1).sum(1).tolist()


def summarise_batch(probe: AtlasProbe, lm: LoadedModel, pairs: list[Pair], max_length: int) -> tuple[dict, np.ndarray]:
    """Score one batch and summarise its attention: (pair columns, summaries [batch, layer, head, metric])."""
    batch = encode(lm.tokenizer, [p.query for p in pairs], [p.doc for p in pairs], max_length)
    q_exact, d_exact = exact_match_counts(batch)
    on_device = batch.to(lm.device)
    logits, summaries = probe.run(on_device.inputs, on_device.segments, summarise=True)
    columns = {
        "pair_id": [p.pair_id for p in pairs],
        "qid": [p.qid for p in pairs],
        "docid": [p.docid for p in pairs],
        "query": [p.query for p in pairs],
        "doc": [p.doc for p in pairs],
        "grade": [p.grade for p in pairs],
        "neg_type": [p.neg_type for p in pairs],
        "score": relevance(logits).cpu().numpy(),
        "q_tokens": batch.q_tokens,
        "d_tokens": batch.d_tokens,
        "d_tokens_full": batch.d_tokens_full,
        "truncated": batch.truncated,
        "q_exact_tokens": q_exact,
        "d_exact_tokens": d_exact,
        "run_rank": [p.run_rank for p in pairs],
        "run_score": [p.run_score for p in pairs],
    }
    return columns, summaries.cpu().numpy()


def head_rows(pair_ids: np.ndarray, summaries: np.ndarray) -> pa.Table:
    """Long head_attention rows from summaries [pair, layer, head, metric]."""
    n, n_layers, n_heads, _ = summaries.shape
    table = {
        "pair_id": np.repeat(pair_ids.astype(np.int32), n_layers * n_heads),
        "layer": np.tile(np.repeat(np.arange(n_layers, dtype=np.int8), n_heads), n),
        "head": np.tile(np.arange(n_heads, dtype=np.int8), n * n_layers),
    }
    flat = summaries.reshape(n * n_layers * n_heads, len(METRICS)).astype(np.float32)
    table.update({name: flat[:, i] for i, name in enumerate(METRICS)})
    return pa.table(table)


def summarise_chunk(lm: LoadedModel, pairs: Sequence[Pair], *, batch_size: int, max_length: int,
                    on_batch: Callable[[int], None] | None = None) -> tuple[pa.Table, pa.Table]:
    """(pairs part, head_attention part) of one chunk."""
    cols: dict[str, list] = {}
    summaries = []
    with AtlasProbe(lm.model) as probe:
        for batch in length_batches(lm, pairs, batch_size, max_length):
            batch_cols, batch_summaries = summarise_batch(probe, lm, batch, max_length)
            for k, v in batch_cols.items():
                cols.setdefault(k, []).extend(list(v))
            summaries.append(batch_summaries)
            if on_batch:
                on_batch(len(batch))
    pairs_part = pa.table(cols)
    heads_part = head_rows(np.asarray(cols["pair_id"]), np.concatenate(summaries))
    return pairs_part, heads_part


@torch.inference_mode()
def plain_scores(lm: LoadedModel, pairs: Sequence[Pair], *, batch_size: int, max_length: int,
                 implementation: str = "sdpa") -> np.ndarray:
    """Scores with a stock attention implementation and no summaries: the baseline the summary pass is measured against."""
    scores = {}
    with plain_attention(lm.model, implementation):
        for batch in length_batches(lm, pairs, batch_size, max_length):
            enc = encode(lm.tokenizer, [p.query for p in batch], [p.doc for p in batch], max_length).to(lm.device)
            for p, s in zip(batch, relevance(lm.model(**enc.inputs).logits).cpu().numpy()):
                scores[p.pair_id] = s
    return np.array([scores[p.pair_id] for p in pairs], dtype=np.float32)
