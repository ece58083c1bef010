"""--batch-tokens: batch size follows the sequence lengths (long pairs in small batches, short ones up to
--batch-size) and changes no number: the summaries and scores equal those of fixed-size batches."""

from __future__ import annotations

import numpy as np
import pytest

from precompute.families.loading import load
from precompute.pairs import Pair
from precompute.analyses.batching import length_batches
from precompute.analyses.summaries import plain_scores, summarise_chunk
from tests.tiny_families import build_family
from tests.tiny_models import DOCS, QUERIES

MAX_LENGTH = 160


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    """A yes/no decoder reranker: its template makes every pair long, the case --batch-tokens is for."""
    return load(str(build_family("qwen3-yesno", tmp_path_factory.mktemp("yesno"))))


@pytest.fixture(scope="module")
def pairs():
    docs = [*DOCS, *(" ".join([d] * 6) for d in DOCS), *(d.split()[0] for d in DOCS)]  # template + 1 to 100 words
    return [Pair(i, f"q{i % len(QUERIES)}", f"d{i}", QUERIES[i % len(QUERIES)], doc, 0, "easy")
            for i, doc in enumerate(docs * 2)]


def test_batches_hold_at_most_the_token_budget_and_every_pair_once(lm, pairs):
    lengths = dict(zip([p.pair_id for p in pairs],
                       lm.family.token_lengths(lm, [p.query for p in pairs], [p.doc for p in pairs], MAX_LENGTH)))
    budget = 3 * max(lengths.values())
    batches = length_batches(lm, pairs, 8, MAX_LENGTH, budget)
    assert sorted(p.pair_id for b in batches for p in b) == [p.pair_id for p in pairs]
    for batch in batches:
        assert len(batch) <= 8 and len(batch) * max(lengths[p.pair_id] for p in batch) <= budget
    assert max(len(b) for b in batches) > 3, "short pairs should fill bigger batches"
    assert len(length_batches(lm, pairs, 8, MAX_LENGTH, 1)) == len(pairs), "a budget under one pair: one pair a batch"


def test_token_budget_changes_no_number(lm, pairs):
    budget = 3 * MAX_LENGTH
    fixed_pairs, fixed_heads, _ = summarise_chunk(lm, pairs, batch_size=8, max_length=MAX_LENGTH)
    capped_pairs, capped_heads, _ = summarise_chunk(lm, pairs, batch_size=8, max_length=MAX_LENGTH, batch_tokens=budget)
    order = lambda t: np.argsort(t["pair_id"].to_numpy(), kind="stable")  # noqa: E731
    a, b = fixed_pairs.to_pandas(), capped_pairs.to_pandas()
    np.testing.assert_allclose(a["score"].to_numpy()[order(fixed_pairs)], b["score"].to_numpy()[order(capped_pairs)],
                               atol=1e-5)
    key = ["pair_id", "layer", "head"]
    h1 = fixed_heads.to_pandas().sort_values(key).reset_index(drop=True)
    h2 = capped_heads.to_pandas().sort_values(key).reset_index(drop=True)
    assert h1.columns.tolist() == h2.columns.tolist()
    np.testing.assert_allclose(h1.to_numpy(dtype=float), h2.to_numpy(dtype=float), atol=1e-5)
    plain = plain_scores(lm, pairs, batch_size=8, max_length=MAX_LENGTH, batch_tokens=budget)
    np.testing.assert_allclose(plain, a["score"].to_numpy()[order(fixed_pairs)], atol=1e-4)
