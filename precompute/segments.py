"""Tokenise ``[CLS] query [SEP] document [SEP]`` and split every input into five segments.

Segments come from the fast tokenizer's sequence ids and special-token mask, never from token
ids of a particular vocabulary, so the same code holds for BERT (``[CLS] q [SEP] d [SEP]``) and
RoBERTa-style models (``<s> q </s></s> d </s>``, where SEP1 is both separators). Special tokens
before the query are CLS, between query and document SEP1, after the document SEP2; padding
belongs to no segment (``names.PADDING``). Only the document is ever truncated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from precompute.names import PADDING, SEGMENT_INDEX

CLS, Q, SEP1, D, SEP2 = (SEGMENT_INDEX[s] for s in ("cls", "q", "sep1", "d", "sep2"))


@dataclass
class EncodedBatch:
    """Model inputs plus the per-token segment ids of one batch of pairs."""

    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask (+ token_type_ids where the model has them)
    segments: torch.Tensor  # [batch, seq] int8, 0..4 = cls, q, sep1, d, sep2; -1 = padding
    q_tokens: list[int]
    d_tokens: list[int]
    d_tokens_full: list[int]

    @property
    def truncated(self) -> list[bool]:
        return [kept < full for kept, full in zip(self.d_tokens, self.d_tokens_full)]

    def to(self, device) -> "EncodedBatch":
        return EncodedBatch(
            {k: v.to(device) for k, v in self.inputs.items()},
            self.segments.to(device),
            self.q_tokens,
            self.d_tokens,
            self.d_tokens_full,
        )


def segment_ids(sequence_ids: list[int | None], special: list[int], attention: list[int]) -> list[int]:
    """Segment of every token of one encoded pair (see module docstring for the rule)."""
    out = []
    seen_q = seen_d = False
    for seq, is_special, attended in zip(sequence_ids, special, attention):
        if not attended:
            out.append(PADDING)
        elif seq == 0 and not is_special:
            seen_q = True
            out.append(Q)
        elif seq == 1 and not is_special:
            seen_d = True
            out.append(D)
        elif seen_d:
            out.append(SEP2)
        elif seen_q:
            out.append(SEP1)
        else:
            out.append(CLS)
    return out


def check_tokenizer(tokenizer) -> None:
    """Segments need a fast tokenizer (sequence ids); say so in one line otherwise."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer; segments need sequence ids (use a model folder with tokenizer.json)")


def encode(tokenizer, queries: list[str], docs: list[str], max_length: int) -> EncodedBatch:
    """Encode pairs with document-only truncation and derive their segments.

    Token type ids are returned only where the tokenizer's model takes them (not RoBERTa, DistilBERT).
    """
    enc = tokenizer(
        queries,
        docs,
        truncation="only_second",
        max_length=max_length,
        padding=True,
        return_tensors="pt",
        return_special_tokens_mask=True,
    )
    full = tokenizer(docs, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    special = enc.pop("special_tokens_mask").tolist()
    attention = enc["attention_mask"].tolist()
    segs = [segment_ids(enc.sequence_ids(i), special[i], attention[i]) for i in range(len(queries))]
    segments = torch.tensor(segs, dtype=torch.int8)
    q_tokens = (segments == Q).sum(1).tolist()
    d_tokens = (segments == D).sum(1).tolist()
    return EncodedBatch(dict(enc), segments, q_tokens, d_tokens, [len(ids) for ids in full])
