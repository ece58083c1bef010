"""How pairs are cut into work: resumable chunks of consecutive pair ids, and forward-pass batches of similar token
length (so padding wastes little compute), with an optional cap on padded tokens per forward.

Every pass of the job (summaries, component means, ablations, patching) batches through here, so a change to
how batches are formed changes them all alike (and changes no number: tests/precompute/analyses/test_batching.py).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from precompute.pairs import Pair

if TYPE_CHECKING:
    from precompute.families.loading import LoadedModel


def chunked(pairs: Sequence[Pair], chunk_size: int) -> Iterator[tuple[str, Sequence[Pair]]]:
    """(part key, pairs) for consecutive slices of the pair list; keys sort in pair order."""
    for start in range(0, len(pairs), chunk_size):
        yield f"{start // chunk_size:06d}", pairs[start : start + chunk_size]


def length_batches(lm: LoadedModel, pairs: Sequence[Pair], batch_size: int, max_length: int,
                   batch_tokens: int | None = None) -> list[list[Pair]]:
    """Batches of similar token length (longest first), so padding wastes little compute. With ``batch_tokens``
    a batch also holds at most that many padded tokens (rows x its longest pair, never under one pair): long
    templated pairs come in small batches, short ones fill ``batch_size``, and memory stays flat."""
    lengths = lm.family.token_lengths(lm, [p.query for p in pairs], [p.doc for p in pairs], max_length)
    order = sorted(range(len(pairs)), key=lambda i: (-lengths[i], pairs[i].pair_id))
    batches, start = [], 0
    while start < len(order):
        rows = batch_size if batch_tokens is None else max(1, min(batch_size, batch_tokens // lengths[order[start]]))
        batches.append([pairs[i] for i in order[start : start + rows]])
        start += rows
    return batches


def typical_batch(pairs: Sequence[Pair], batch_size: int) -> list[Pair]:
    """A batch of pairs of typical (median and just above) length, for timing estimates before a pass."""
    return sorted(pairs, key=lambda p: len(p.query) + len(p.doc))[len(pairs) // 2 :][:batch_size]


def patch_batches(lm: LoadedModel, items: Sequence, *, batch_size: int, max_length: int,
                  batch_tokens: int | None = None):
    """(pairs, clean batch, corrupted batch, patched rows per forward) of ``items`` (the patch pairs of
    :mod:`precompute.analyses.patching`), in batches of ``batch_size // 4`` pairs of similar token length (longest
    first): a forward pads every row to its longest input, and patch pairs of mixed lengths otherwise spend most of a
    patched forward on padding. A forward holds ``batch_size * 4`` patched rows, and with ``batch_tokens`` at most
    that many padded tokens."""
    longest = [max(a, b) for a, b in zip(
        lm.family.token_lengths(lm, [i.query for i in items], [i.clean_doc for i in items], max_length),
        lm.family.token_lengths(lm, [i.query for i in items], [i.corrupted_doc for i in items], max_length))]
    order = sorted(range(len(items)), key=lambda j: (-longest[j], items[j].patch_id))
    pairs_per_batch = max(1, batch_size // 4)
    for start in range(0, len(order), pairs_per_batch):
        chunk = [items[j] for j in order[start : start + pairs_per_batch]]
        clean = lm.encode([i.query for i in chunk], [i.clean_doc for i in chunk], max_length).to(lm.device)
        corrupted = lm.encode([i.query for i in chunk], [i.corrupted_doc for i in chunk], max_length).to(lm.device)
        rows = batch_size * 4
        if batch_tokens is not None:
            padded = max(clean.inputs["input_ids"].shape[1], corrupted.inputs["input_ids"].shape[1])
            rows = max(1, min(rows, batch_tokens // padded))
        yield chunk, clean, corrupted, rows
