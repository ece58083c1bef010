"""Pair building: judged and run modes, easy negatives, determinism, skipped passages, real DL20 figures."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest

from precompute.datasets import Dataset, DatasetError, resolve
from precompute.names import EASY_GRADE
from precompute.pairs import Pair, PairSet, build_pairs
from tests.precompute.test_datasets import QRELS, make_folder


@pytest.fixture
def tiny(tmp_path: Path) -> Dataset:
    return resolve(str(make_folder(tmp_path / "tiny")), tmp_path / "cache")


def by_query(pairs: PairSet) -> dict[str, list[Pair]]:
    """Pairs per qid with pair_id blanked, to compare sets built with different selections."""
    grouped: dict[str, list[Pair]] = {}
    for pair in pairs.pairs:
        grouped.setdefault(pair.qid, []).append(replace(pair, pair_id=0))
    return grouped


def assert_easy_never_judged(pairs: PairSet, qrels: dict[str, dict[str, int]]) -> None:
    easy = [p for p in pairs.pairs if p.neg_type == "easy"]
    assert easy
    assert all(p.docid not in qrels[p.qid] and p.grade == EASY_GRADE and p.doc for p in easy)


def test_judged_mode(tiny: Dataset) -> None:
    pairs = build_pairs(tiny, easy_negatives=3)
    assert pairs.queries == ["q1", "q2", "q3"]  # q4 has no judgments, q5 no query line
    assert pairs.counts() == {"relevant": 4, "hard": 5, "easy": 9}
    assert pairs.skipped == {"relevant": 0, "hard": 2, "easy": 0}  # d13 missing, d12 empty
    assert [p.pair_id for p in pairs.pairs] == list(range(len(pairs.pairs)))
    q1 = [(p.neg_type, p.docid, p.grade) for p in pairs.pairs if p.qid == "q1"]
    assert q1[:3] == [("relevant", "d01", 2), ("relevant", "d02", 1), ("hard", "d03", 0)]
    easy = [docid for kind, docid, _ in q1[3:]]
    assert len(easy) == 3 and easy == sorted(easy) and {k for k, _, _ in q1[3:]} == {"easy"}
    assert all(p.query == "alpha query" and p.run_rank is None and p.run_score is None for p in pairs.pairs[:6])
    assert_easy_never_judged(pairs, QRELS)


def test_easy_pool_is_every_judged_passage_with_text(tiny: Dataset) -> None:
    """q1 may draw from the passages judged for q2, q3 and q5 (even though q5 is not used), never d12 (empty)."""
    pairs = build_pairs(tiny, easy_negatives=100)
    easy = {p.docid for p in pairs.pairs if p.qid == "q1" and p.neg_type == "easy"}
    assert easy == {"d04", "d05", "d06", "d07", "d08", "d09", "d10", "d11"}


def test_same_seed_same_pairs_other_seed_other_negatives(tiny: Dataset) -> None:
    assert build_pairs(tiny, easy_negatives=3, seed=7) == build_pairs(tiny, easy_negatives=3, seed=7)
    first = build_pairs(tiny, easy_negatives=3, seed=0).pairs
    assert any(build_pairs(tiny, easy_negatives=3, seed=seed).pairs != first for seed in range(1, 5))


def test_max_queries_keeps_each_querys_negatives(tiny: Dataset) -> None:
    full = by_query(build_pairs(tiny, easy_negatives=3))
    first = build_pairs(tiny, easy_negatives=3, max_queries=1)
    assert first.queries == ["q1"]
    assert by_query(first) == {"q1": full["q1"]}


def test_no_easy_negatives(tiny: Dataset) -> None:
    assert build_pairs(tiny, easy_negatives=0).counts() == {"relevant": 4, "hard": 5, "easy": 0}


def test_run_mode(tiny: Dataset) -> None:
    pairs = build_pairs(tiny, candidates="run:x", easy_negatives=2)
    q1 = [(p.neg_type, p.docid, p.grade, p.run_rank, p.run_score) for p in pairs.pairs if p.qid == "q1"]
    # d13 (rank 4) has no text and is skipped; the duplicate d11 at rank 5 is ignored.
    assert q1[:3] == [("unjudged", "d11", -1, 1, 9.0), ("relevant", "d01", 2, 2, 8.0), ("hard", "d03", 0, 3, 7.0)]
    assert [(kind, rank) for kind, _, _, rank, _ in q1[3:]] == [("easy", None), ("easy", None)]
    assert pairs.skipped == {"relevant": 0, "hard": 1, "unjudged": 0, "easy": 0}
    assert pairs.counts() == {"relevant": 2, "hard": 2, "unjudged": 1, "easy": 6}
    easy_q1 = {docid for kind, docid, *_ in q1 if kind == "easy"}
    assert not easy_q1 & {"d01", "d02", "d03", "d11", "d13"}  # neither judged for q1 nor in q1's run
    assert_easy_never_judged(pairs, QRELS)


def test_run_depth(tiny: Dataset) -> None:
    pairs = build_pairs(tiny, candidates="run:x", depth=2, easy_negatives=0)
    assert [(p.qid, p.docid, p.run_rank) for p in pairs.pairs] == [
        ("q1", "d11", 1), ("q1", "d01", 2), ("q2", "d04", 1), ("q2", "d11", 2)
    ]


@pytest.mark.parametrize(
    ("candidates", "message"),
    [("x", r"expected run:NAME .*; the dataset's runs: x"), ("run:", "expected run:NAME"),
         ("run:bm25", "bm25 is not a file; the dataset's runs: x"), ("scoreddocs", "has no scoreddocs")],
)
def test_bad_candidates(tiny: Dataset, candidates: str, message: str) -> None:
    with pytest.raises(DatasetError, match=message):
        build_pairs(tiny, candidates=candidates)


def test_no_judged_query_is_an_error(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "tiny")
    (folder / "qrels.txt").write_text("other 0 d01 1\n")
    with pytest.raises(DatasetError, match="no query with both a text and judgments"):
        build_pairs(resolve(str(folder), tmp_path / "cache"))


# --- the real DL20 folder -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dl20(dl20_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return resolve(str(dl20_dir), tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="module")
def dl20_pairs(dl20: Dataset) -> PairSet:
    return build_pairs(dl20)


def test_dl20_matches_the_readme(dl20_pairs: PairSet, dl20: Dataset) -> None:
    assert len(dl20_pairs.queries) == 54
    assert dl20_pairs.counts() == {"relevant": 2316, "hard": 2688, "easy": 1080}
    grades = Counter(p.grade for p in dl20_pairs.pairs if p.neg_type != "easy")
    assert grades == {0: 2688, 1: 1219, 2: 623, 3: 474}
    assert sum(dl20_pairs.skipped.values()) == sum(map(len, dl20.qrels().values())) - 5004
    assert all(n == 20 for n in Counter(p.qid for p in dl20_pairs.pairs if p.neg_type == "easy").values())
    assert_easy_never_judged(dl20_pairs, dl20.qrels())


def test_dl20_determinism(dl20_pairs: PairSet, dl20: Dataset) -> None:
    full = by_query(dl20_pairs)
    first = build_pairs(dl20, max_queries=5)
    assert by_query(first) == {qid: full[qid] for qid in first.queries}
    other = build_pairs(dl20, seed=1, max_queries=5)
    assert [p.docid for p in other.pairs if p.neg_type == "easy"] != [
        p.docid for p in first.pairs if p.neg_type == "easy"
    ]


def test_dl20_bm25_top100(dl20: Dataset) -> None:
    pairs = build_pairs(dl20, candidates="run:bm25", depth=100)
    run_pairs = [p for p in pairs.pairs if p.neg_type != "easy"]
    assert len(run_pairs) + sum(pairs.skipped.values()) == 54 * 100
    assert pairs.counts()["easy"] == 1080
    assert all(1 <= p.run_rank <= 100 and p.run_score is not None for p in run_pairs)
    qrels = dl20.qrels()
    assert all((p.neg_type == "unjudged") == (p.docid not in qrels[p.qid]) for p in run_pairs)
    bm25 = dl20.run("bm25")
    assert all(p.docid not in {d for d, _, _ in bm25[p.qid]} for p in pairs.pairs if p.neg_type == "easy")
