"""Template segments: boundaries from the template's own character offsets, whatever the query and passage contain."""

from __future__ import annotations

import pytest

from precompute.families.segments import CLS, D, PADDING, Q, SEP1, SEP2, encode_template, split_template
from tests.tiny_families import tokenizer

MONOT5 = "Query: {query} Document: {document} Relevant:"


def _segments(tok, template, query, doc, max_length=128):
    batch = encode_template(tok, template, [query], [doc], max_length)
    ids = batch.inputs["input_ids"][0].tolist()
    return list(zip(tok.convert_ids_to_tokens(ids), batch.segments[0].tolist())), batch


def test_template_text_inside_the_query_and_passage_stays_there():
    tok, _ = tokenizer("t5")
    rows, _ = _segments(tok, MONOT5, "document: relevant?", "query: a cat Document: Relevant: true")
    assert rows == [
        ("query", CLS), (":", CLS),
        ("document", Q), (":", Q), ("relevant", Q), ("?", Q),
        ("document", SEP1), (":", SEP1),
        ("query", D), (":", D), ("a", D), ("cat", D), ("document", D), (":", D), ("relevant", D), (":", D), ("true", D),
        ("relevant", SEP2), (":", SEP2), ("</s>", SEP2),
    ]


def test_a_token_straddling_a_boundary_belongs_to_its_first_characters_segment():
    tok, _ = tokenizer("t5")
    # "cat" + "relevant" and "x" + "a" are single (unknown) words across the template's boundaries
    rows, _ = _segments(tok, "query:{query}relevant x{document} end", "a cat", "a dog")
    assert rows[2:] == [("a", Q), ("<unk>", Q), ("<unk>", SEP1), ("dog", D), ("<unk>", SEP2), ("</s>", SEP2)]


def test_byte_level_tokens_keep_their_word_whatever_space_they_carry():
    tok, _ = tokenizer("bpe")
    rows, _ = _segments(tok, "query: {query} document: {document}", "what is a cat", "a cat")
    by_segment = {s: "".join(t for t, seg in rows if seg == s).replace("Ġ", " ") for s in (CLS, Q, SEP1, D, SEP2)}
    assert by_segment == {CLS: "query:", Q: " what is a cat", SEP1: " document:", D: " a cat", SEP2: ""}


def test_special_tokens_join_the_prefix_and_the_suffix():
    tok, _ = tokenizer("llama")
    rows, _ = _segments(tok, "q {query} d {document}</s>", "cat", "dog")
    assert [s for _, s in rows] == [CLS, CLS, Q, SEP1, D, SEP2]  # <s> q | cat | d | dog | </s>


def test_only_the_document_is_truncated():
    tok, _ = tokenizer("t5")
    rows, batch = _segments(tok, MONOT5, "what is a cat", " ".join(["cat"] * 50), max_length=20)
    assert len(rows) == 20
    assert batch.q_tokens == [4] and batch.d_tokens_full == [50] and batch.truncated == [True]
    assert batch.d_tokens == [20 - 2 - 4 - 2 - 3]  # prefix, query, middle, suffix with </s>
    with pytest.raises(ValueError, match="--max-length 10 leaves no room for the document"):
        encode_template(tok, MONOT5, ["what is a cat"], ["cat"], 10)


def test_padding_follows_the_tokenizers_side():
    tok, _ = tokenizer("t5", padding_side="left")
    batch = encode_template(tok, MONOT5, ["cat", "what is a cat"], ["dog", "dog"], 64)
    assert batch.segments[0, :3].tolist() == [PADDING] * 3 and batch.inputs["attention_mask"][0, :3].sum() == 0
    assert batch.segments[1, 0] == CLS


@pytest.mark.parametrize("template", ["{document} {query}", "{query}", "x {query} {query} {document}"])
def test_a_template_needs_query_then_document_once_each(template):
    with pytest.raises(ValueError, match="template"):
        split_template(template)
