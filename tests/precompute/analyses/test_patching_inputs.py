"""The patching experiments' inputs: aligned clean and corrupted passages, the term, filler and related word each
input used and why (no silent move to another word), and the same seeded draw of pairs per query for every
inserting experiment."""

from __future__ import annotations

import pytest
import torch

from precompute.analyses import patching_inputs as I
from precompute.families.loading import load
from precompute.pairs import Pair
from tests.precompute.analyses.test_ablations import sensitive_model
from tests.tiny_models import DOCS, QUERIES

PAIRS = [Pair(i, f"q{i}", f"d{i}", QUERIES[i], DOCS[i], 1, "relevant") for i in range(len(QUERIES))]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return load(str(sensitive_model("bert", tmp_path_factory.mktemp("bert"))), device="cpu")


def _aligned(lm, item) -> bool:
    batch = lm.encode([item.query] * 2, [item.clean_doc, item.corrupted_doc], 64)
    return torch.equal(batch.segments[0], batch.segments[1]) and not torch.equal(*batch.inputs["input_ids"])


@pytest.mark.parametrize("experiment", I.INSERTING)
def test_inputs_align_and_say_what_they_insert(tiny, experiment):
    items, skipped = I.experiment_inputs(experiment, tiny, PAIRS, 64, per_query=10, seed=0)
    assert skipped == 0 and [i.term for i in items] == ["cat", "hi", "average", "dog"]
    for item, pair in zip(items, PAIRS):
        assert _aligned(tiny, item) and item.pair_id == pair.pair_id and item.qid == pair.qid
        assert item.clean_doc == f"{item.clean_insert} {pair.doc}"
        assert item.corrupted_doc == f"{item.corrupted_insert} {pair.doc}"
        assert item.filler not in item.query.split() and item.rule.startswith("the query's first content word")
    if experiment == "tfc1":
        assert all((i.clean_insert, i.corrupted_insert) == (i.term, i.filler) for i in items)
    if experiment == "tfc2":
        assert all((i.clean_insert, i.corrupted_insert) == (f"{i.term} {i.term}", f"{i.term} {i.filler}") for i in items)
    if experiment == "stmc1":
        for i in items:
            assert i.clean_insert not in I.words(i.query) and i.clean_insert[:4] != i.term[:4]
            assert len(tiny.tokenizer(i.clean_insert, add_special_tokens=False)["input_ids"]) == 1
            assert -1 <= i.similarity <= 1 and f"nearest input-embedding neighbour of '{i.term}'" in i.rule


def test_a_term_without_a_filler_is_skipped_with_its_reason(tiny, monkeypatch):
    """'average' (the first content word of query 2) made two tokens long: no filler has two, so the input takes
    the next content word and its rule says which word was skipped and why."""
    count = I._token_count
    monkeypatch.setattr(I, "_token_count", lambda lm, text: 2 if text == "average" else count(lm, text))
    items, _ = I.experiment_inputs("tfc1", tiny, PAIRS[2:3], 64, per_query=10, seed=0)
    assert items[0].term == "salary"
    assert items[0].rule == "the query's content word 2 ('average' skipped: no filler of 2 tokens)"


def test_pairs_are_drawn_per_query_with_the_seed_alike_for_every_inserting_experiment(tiny):
    pairs = [Pair(i, "q", f"d{i}", QUERIES[0], DOCS[i % 4], 1, "relevant") for i in range(12)]
    drawn = {e: [i.pair_id for i in I.experiment_inputs(e, tiny, pairs, 64, per_query=3, seed=5)[0]]
             for e in I.INSERTING}
    assert len(drawn["tfc1"]) == 3 and drawn["tfc1"] == drawn["tfc2"] == drawn["stmc1"]
    assert drawn["tfc1"] == [i.pair_id for i in I.experiment_inputs("tfc1", tiny, pairs, 64, per_query=3, seed=5)[0]]
    others = {tuple(i.pair_id for i in I.experiment_inputs("tfc1", tiny, pairs, 64, per_query=3, seed=s)[0])
              for s in range(6)}
    assert len(others) > 1  # the seed decides which
