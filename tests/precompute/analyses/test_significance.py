"""Per-query metrics of ablation conditions equal ir_measures run by hand; t-tests equal scipy; the stored Holm
p-values equal a hand computation per analysis (precompute.statistics.holm itself: tests/precompute/test_statistics.py);
scopes rank the right pairs."""

from __future__ import annotations

import math

import ir_measures
import numpy as np
import pytest
from scipy import stats

from precompute.analyses import significance as S
from precompute.store.connect import connect
from tests.precompute.analyses.test_ablations import run_job, sensitive_model


def test_paired_ttest_is_scipy_and_undefined_cases():
    rng = np.random.default_rng(0)
    base = rng.random(20)
    cond = base - 0.05 + rng.normal(0, 0.05, 20)
    t, p = S.paired_ttest(cond, base)
    want = stats.ttest_rel(cond, base)
    assert t == pytest.approx(want.statistic) and p == pytest.approx(want.pvalue)
    assert S.paired_ttest(base, base) == (None, None)  # identical per query: no test
    assert S.paired_ttest(base[:1], base[:1] + 1) == (None, None)  # one query


def test_scopes():
    grade = np.array([2, 0, -1, -1, 1])
    rank = np.array([1.0, np.nan, 2.0, np.nan, 3.0])
    assert S.scope_mask("pairs", grade, rank).all()
    assert S.scope_mask("judged", grade, rank).tolist() == [True, True, False, False, True]
    assert S.scope_mask("run", grade, rank).tolist() == [True, False, True, False, True]
    assert S.resolve_scopes(None, None) == ["pairs"] and S.resolve_scopes(None, "run:x") == ["pairs", "run"]
    with pytest.raises(ValueError, match="--candidates"):
        S.resolve_scopes(["run"], None)


@pytest.fixture(scope="module")
def run_folder(tiny_dataset, tmp_path_factory):
    """Pairs from a run file (+ easy negatives), two measures, all three scopes, directions and groups."""
    model = sensitive_model("bert", tmp_path_factory.mktemp("sig-bert"))
    _, root = run_job(tiny_dataset, model, tmp_path_factory.mktemp("sig") / "run", candidates="run:first", depth=8,
                      max_queries=4, ablations=("directions", "groups"), measures=("nDCG@10", "RR@10"),
                      eval_scopes=("pairs", "judged", "run"))
    return tiny_dataset, root


def test_metrics_equal_ir_measures_by_hand(run_folder):
    dataset, root = run_folder
    qrels = [ir_measures.Qrel(q, d, int(g)) for q, _, d, g in (line.split() for line in (dataset / "qrels.txt").read_text().splitlines())]
    con = connect(root)
    rows = con.execute(
        "SELECT s.condition_id, p.qid, p.docid, s.score, p.grade, p.run_rank FROM ablation_scores s JOIN pairs p USING (pair_id)"
    ).fetchall()
    stored = {(c, sc, m, q): v for c, sc, m, q, v in con.execute(
        "SELECT condition_id, scope, measure, qid, value FROM ablation_metrics").fetchall()}
    keep = {"pairs": lambda g, r: True, "judged": lambda g, r: g >= 0, "run": lambda g, r: r is not None}
    measures = [ir_measures.parse_measure("nDCG@10"), ir_measures.parse_measure("RR@10")]
    want = {}
    for cid in {r[0] for r in rows}:
        for scope, ok in keep.items():
            run = [ir_measures.ScoredDoc(q, d, float(s)) for c, q, d, s, g, r in rows if c == cid and ok(g, r)]
            for m in ir_measures.iter_calc(measures, [x for x in qrels if x.query_id in {d.query_id for d in run}], run):
                want[(cid, scope, str(m.measure), m.query_id)] = m.value
    assert stored.keys() == want.keys()
    assert max(abs(stored[k] - want[k]) for k in want) < 1e-12
    # the run scope leaves out the easy negatives added to a run's candidates
    assert con.execute("SELECT count(*) FROM pairs WHERE run_rank IS NULL").fetchone()[0] > 0


def test_summary_equals_scipy_and_holm_by_hand(run_folder):
    _, root = run_folder
    con = connect(root)
    metrics = con.execute("SELECT condition_id, scope, measure, qid, value FROM ablation_metrics").fetchall()
    summary = con.execute("SELECT condition_id, scope, measure, n_queries, mean, baseline, delta, t, p, p_holm, kind "
                          "FROM ablation_summary").fetchall()
    per: dict = {}
    for cid, scope, measure, qid, value in metrics:
        per.setdefault((scope, measure), {}).setdefault(cid, {})[qid] = value
    n_checked = 0
    for (scope, measure), by_cond in per.items():
        base = by_cond["none"]
        qids = sorted(base)
        expect_p = {}
        for cid, vals in by_cond.items():
            x, y = np.array([vals[q] for q in qids]), np.array([base[q] for q in qids])
            row = next(r for r in summary if r[:3] == (cid, scope, measure))
            assert row[3] == len(qids) and row[4] == pytest.approx(x.mean()) and row[5] == pytest.approx(y.mean())
            assert row[6] == pytest.approx(x.mean() - y.mean(), abs=1e-15)
            if cid == "none" or np.array_equal(x, y):
                assert row[7] is None and row[8] is None and row[9] is None
                continue
            res = stats.ttest_rel(x, y)
            assert row[7] == pytest.approx(res.statistic) and row[8] == pytest.approx(res.pvalue)
            expect_p[cid] = res.pvalue
            n_checked += 1
        # Holm by hand: sort, multiply by (m - rank), running maximum, cap at 1
        m, running = len(expect_p), 0.0
        for rank, cid in enumerate(sorted(expect_p, key=expect_p.get)):
            running = max(running, min(1.0, (m - rank) * expect_p[cid]))
            got = next(r[9] for r in summary if r[:3] == (cid, scope, measure))
            assert math.isclose(got, running, rel_tol=1e-12), (cid, got, running)
    assert n_checked > 20  # the sensitive model moves most conditions
    assert {r[10] for r in summary} == {"baseline", "direction", "group"}
    analysis = dict(con.execute("SELECT kind, any_value(analysis) FROM ablation_summary GROUP BY kind").fetchall())
    assert analysis == {"baseline": None, "direction": "attention", "group": "attention"}  # the baseline: no family
