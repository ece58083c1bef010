"""Tokenise a query-passage pair and split every input into five segments. Two ways, one per kind of input:

* **Pair template** (:func:`encode`): the tokenizer's own pair template, ``[CLS] query [SEP] document [SEP]``.
  Segments come from the fast tokenizer's sequence ids and special-token mask, never from token ids of a
  particular vocabulary, so the same code holds for BERT (``[CLS] q [SEP] d [SEP]``) and RoBERTa-style models
  (``<s> q </s></s> d </s>``, where SEP1 is both separators). Special tokens before the query are CLS, between
  query and document SEP1, after the document SEP2.
* **Text template** (:func:`encode_template`): a prompt such as ``Query: {query} Document: {document} Relevant:``
  (MonoT5, decoder rerankers). The five segments are then prefix (template text before the query, with any
  BOS), query, middle (template text between query and document), document and suffix (template text after
  the document, with any EOS). They come from the template's character offsets through the fast tokenizer's
  offset mapping: a token whose characters straddle a boundary belongs to the segment holding its first
  character, leading whitespace aside (byte-level BPE tokenizers attach a word's preceding space to it, so
  ``" what"`` after ``"Query:"`` is a query token); special tokens the tokenizer adds belong to the prefix before the first text token and to the
  suffix after it. A query or passage that itself contains template-like text ("Document:") stays in its
  own segment, since only the template's own offsets draw the boundaries.

Either way padding belongs to no segment (``names.PADDING``) and only the document is ever truncated.
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

    def repeat(self, k: int) -> "EncodedBatch":
        """The batch repeated ``k`` times along the batch axis (rows = pairs x conditions, condition-major)."""
        return EncodedBatch({name: t.repeat(k, 1) for name, t in self.inputs.items()}, self.segments.repeat(k, 1),
                            self.q_tokens * k, self.d_tokens * k, self.d_tokens_full * k)

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


# -- text templates ---------------------------------------------------------------------------------------

QUERY_SLOT, DOCUMENT_SLOT = "{query}", "{document}"


def split_template(template: str) -> tuple[str, str, str]:
    """(prefix, middle, suffix) of a template holding ``{query}`` then ``{document}`` once each."""
    if template.count(QUERY_SLOT) != 1 or template.count(DOCUMENT_SLOT) != 1:
        raise ValueError(f"template {template!r} must contain {QUERY_SLOT} and {DOCUMENT_SLOT} exactly once each")
    prefix, rest = template.split(QUERY_SLOT)
    if DOCUMENT_SLOT not in rest:
        raise ValueError(f"template {template!r} must put {QUERY_SLOT} before {DOCUMENT_SLOT}")
    middle, suffix = rest.split(DOCUMENT_SLOT)
    return prefix, middle, suffix


def _first_character(text: str, start: int, end: int) -> int:
    """Where a token's first character is: its first non-whitespace one when it has any."""
    piece = text[start:end]
    stripped = piece.lstrip()
    return start + (len(piece) - len(stripped)) if stripped else start


def template_segments(text: str, offsets: list[tuple[int, int]], special: list[int],
                      bounds: tuple[int, int, int, int]) -> list[int]:
    """Segment of every token of one templated ``text``: ``bounds`` = (query start, query end, doc start, doc end)
    in characters; a token belongs to the segment of its first character (module docstring)."""
    q_start, q_end, d_start, d_end = bounds
    text_tokens = [i for i, sp in enumerate(special) if not sp]
    first = text_tokens[0] if text_tokens else len(special)
    out = []
    for i, ((start, end), sp) in enumerate(zip(offsets, special)):
        start = _first_character(text, start, end)
        if sp:
            out.append(CLS if i < first else SEP2)
        elif start < q_start:
            out.append(CLS)
        elif start < q_end:
            out.append(Q)
        elif start < d_start:
            out.append(SEP1)
        elif start < d_end:
            out.append(D)
        else:
            out.append(SEP2)
    return out


def _encode_templated(tokenizer, parts: tuple[str, str, str], query: str, doc: str):
    prefix, middle, suffix = parts
    text = f"{prefix}{query}{middle}{doc}{suffix}"
    q_start = len(prefix)
    d_start = q_start + len(query) + len(middle)
    enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True, return_attention_mask=False,
                    return_token_type_ids=False)
    segs = template_segments(text, enc["offset_mapping"], enc["special_tokens_mask"],
                             (q_start, q_start + len(query), d_start, d_start + len(doc)))
    return enc["input_ids"], segs, enc["offset_mapping"], d_start


def encode_one_template(tokenizer, parts: tuple[str, str, str], query: str, doc: str, max_length: int):
    """(input ids, segments, document tokens before truncation) of one pair, the document cut to fit."""
    ids, segs, offsets, d_start = _encode_templated(tokenizer, parts, query, doc)
    full = segs.count(D)
    keep = full - (len(ids) - max_length)
    while len(ids) > max_length:
        if keep < 1:
            raise ValueError(f"--max-length {max_length} leaves no room for the document after the template and the "
                             f"query ({len(ids) - full} tokens); raise --max-length")
        doc_positions = [i for i, s in enumerate(segs) if s == D]
        cut = offsets[doc_positions[keep]][0] - d_start  # the first dropped document token's first character
        ids, segs, offsets, d_start = _encode_templated(tokenizer, parts, query, doc[:cut].rstrip())
        keep -= 1  # token boundaries can move at the cut: shrink until the text fits
    return ids, segs, full


def encode_template(tokenizer, template: str, queries: list[str], docs: list[str], max_length: int) -> EncodedBatch:
    """Encode pairs through a text template (module docstring), padded on the tokenizer's padding side."""
    parts = split_template(template)
    rows = [encode_one_template(tokenizer, parts, q, d, max_length) for q, d in zip(queries, docs)]
    width = max(len(ids) for ids, _, _ in rows)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    input_ids, attention, segments = [], [], []
    for ids, segs, _ in rows:
        n = width - len(ids)
        pad = lambda seq, value: ([value] * n + seq) if left else (seq + [value] * n)  # noqa: E731
        input_ids.append(pad(list(ids), pad_id))
        attention.append(pad([1] * len(ids), 0))
        segments.append(pad(list(segs), PADDING))
    seg = torch.tensor(segments, dtype=torch.int8)
    inputs = {"input_ids": torch.tensor(input_ids), "attention_mask": torch.tensor(attention)}
    return EncodedBatch(inputs, seg, (seg == Q).sum(1).tolist(), (seg == D).sum(1).tolist(), [full for _, _, full in rows])
