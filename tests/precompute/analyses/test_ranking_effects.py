"""Table 1's query-level statistics against independent computations: nDCG with ties in expectation against the
average over every tie order (and ir_measures without ties), pairwise accuracy against a loop over pairs."""

from __future__ import annotations

import itertools

import ir_measures
import numpy as np
import pytest

from precompute.analyses.ranking_effects import pairwise_accuracy, tie_expected_ndcg
from precompute.conditions.contrasts import parse_contrasts


def _ndcg_by_order(order: list[int], grades: np.ndarray, k: int) -> float:
    gains = np.maximum(grades, 0)[order][:k]
    ideal = np.sort(np.maximum(grades, 0))[::-1][:k]
    discount = 1 / np.log2(np.arange(2, k + 2))
    return float(gains @ discount[: len(gains)] / (ideal @ discount[: len(ideal)]))


def test_tied_ndcg_is_the_average_over_every_order_of_the_ties():
    scores = np.array([3.0, 1.0, 1.0, 1.0, 2.0, 1.0, 0.5])
    grades = np.array([0, 3, 0, 1, 2, -1, 1])
    k = 4  # the cutoff falls inside the tie of four passages at score 1.0
    tie = [1, 2, 3, 5]
    orders = [[0, 4, *perm, 6] for perm in itertools.permutations(tie)]
    expected = np.mean([_ndcg_by_order(o, grades, k) for o in orders])
    assert tie_expected_ndcg(scores, grades, k) == pytest.approx(expected, rel=1e-12)
    assert tie_expected_ndcg(np.zeros(7), grades, k) == pytest.approx(  # all tied: every order of the seven
        np.mean([_ndcg_by_order(list(o), grades, k) for o in itertools.permutations(range(7))]), rel=1e-12)


def test_untied_ndcg_equals_ir_measures():
    rng = np.random.default_rng(0)
    scores, grades = rng.normal(size=15), rng.integers(-1, 4, size=15)
    qrels = [ir_measures.Qrel("q", f"d{i}", int(g)) for i, g in enumerate(grades) if g >= 0]
    run = [ir_measures.ScoredDoc("q", f"d{i}", float(s)) for i, s in enumerate(scores)]
    assert tie_expected_ndcg(scores, grades, 10) == pytest.approx(ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run)[ir_measures.nDCG @ 10], rel=1e-9)


def test_pairwise_accuracy_counts_pairs_and_half_ties():
    scores = np.array([2.0, 1.0, 1.0, 0.0, 3.0])
    relevant = np.array([True, True, False, False, False])
    negative = ~relevant
    by_hand = np.mean([1.0 if scores[r] > scores[n] else 0.5 if scores[r] == scores[n] else 0.0
                       for r in np.flatnonzero(relevant) for n in np.flatnonzero(negative)])
    assert pairwise_accuracy(scores, relevant, negative) == pytest.approx(by_hand)
    assert np.isnan(pairwise_accuracy(scores, relevant, np.zeros(5, bool)))


def test_contrasts_flag_parses_and_refuses_in_one_line():
    assert parse_contrasts("q_d:d_q, cross:all,q_d:d_q") == [("q_d", "d_q"), ("cross", "all")]
    for bad in ("q_d", "q_d:", ":d_q", "a:b:c"):
        with pytest.raises(ValueError, match="expected A:B"):
            parse_contrasts(bad)


def test_direct_comparison_is_a_paired_test_over_queries_titled_by_the_directions():
    from scipy.stats import ttest_rel

    from precompute.analyses.ranking_effects import STATISTICS, RankingEffects, compare_conditions

    rng = np.random.default_rng(2)
    qids = [f"q{i}" for i in range(12)]
    a, b = rng.uniform(size=12), rng.uniform(size=12)
    conditions = [{"condition_id": "qd@all/zero", "condition": "qd", "mode": "zero", "layers": "all", "directions": "q_d"},
                  {"condition_id": "dq@all/zero", "condition": "dq", "mode": "zero", "layers": "all", "directions": "d_q"}]
    values = {"qd@all/zero": dict(zip(qids, a)), "dq@all/zero": dict(zip(qids, b))}
    effects = RankingEffects(qids, {c: rng.uniform(size=(12, len(STATISTICS))) for c in values})
    (row,) = compare_conditions([("qd", "dq")], conditions, values, effects, n_resamples=200)
    assert row["title"] == "Q->D vs D->Q" and row["n_queries"] == 12
    assert row["p"] == pytest.approx(ttest_rel(a, b).pvalue) and row["p_holm"] == pytest.approx(row["p"])
    diff = effects.values["qd@all/zero"] - effects.values["dq@all/zero"]
    assert row["pairwise"][0] == pytest.approx(diff[:, 1].mean()) and row["pairwise"][1] <= row["pairwise"][0] <= row["pairwise"][2]
    (missing,) = compare_conditions([("q_d", "dq")], conditions, values, effects)
    assert missing["missing"] == "q_d"
