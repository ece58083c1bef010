"""head_contrasts on a tiny store with a planted matching head, checked against numpy and scipy per head."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import mannwhitneyu

from precompute.analyses.contrasts import CONTRASTS, candidate_heads, compare, contrasts_table, holm
from precompute.metrics import METRICS
from precompute.store.connect import connect
from precompute.store.schema import HEAD_CONTRASTS, PAIRS
from precompute.store.writer import RunWriter

LAYERS, HEADS = 2, 3
GROUPS = {"relevant": 14, "hard": 11, "easy": 17, "unjudged": 3}  # unjudged pairs must be left out
PLANTED = (1, 2, "q_d")  # relevant pairs get much more Q->D mass on layer 1, head 2


def _pairs(neg_types: list[str]) -> pa.Table:
    n = len(neg_types)
    grade = {"relevant": 2, "hard": 0, "easy": -1, "unjudged": -1}
    return pa.table(
        {
            "pair_id": np.arange(n, dtype=np.int32),
            "qid": ["q1"] * n,
            "docid": [f"d{i}" for i in range(n)],
            "query": ["a query"] * n,
            "doc": ["a passage"] * n,
            "grade": np.array([grade[t] for t in neg_types], dtype=np.int8),
            "neg_type": neg_types,
            "score": np.zeros(n, dtype=np.float32),
            "q_tokens": np.full(n, 3, dtype=np.int16),
            "d_tokens": np.full(n, 20, dtype=np.int16),
            "d_tokens_full": np.full(n, 20, dtype=np.int32),
            "truncated": np.zeros(n, dtype=bool),
            "q_exact_tokens": np.ones(n, dtype=np.int16),
            "d_exact_tokens": np.ones(n, dtype=np.int16),
            "run_rank": pa.nulls(n, pa.int16()),
            "run_score": pa.nulls(n, pa.float32()),
        },
        schema=PAIRS.schema,
    )


def _head_attention(neg_types: list[str], rng: np.random.Generator) -> pa.Table:
    n = len(neg_types)
    relevant = np.array(neg_types) == "relevant"
    layer, head, pair = (a.ravel() for a in np.meshgrid(np.arange(LAYERS), np.arange(HEADS), np.arange(n), indexing="ij"))
    columns = {m: rng.uniform(0, 0.4, len(pair)).astype(np.float32) for m in METRICS}
    planted = (layer == PLANTED[0]) & (head == PLANTED[1]) & relevant[pair]
    columns[PLANTED[2]][planted] += 0.5
    columns["d2q_max"][(layer == 0) & (head == 0)] = 0.25  # a constant head: cohen_d must be NULL
    return pa.table({"pair_id": pair.astype(np.int32), "layer": layer.astype(np.int8), "head": head.astype(np.int8), **columns})


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    neg_types = [t for t, n in GROUPS.items() for _ in range(n)]
    neg_types = list(rng.permutation(neg_types))  # groups interleaved in pair_id order
    root = tmp_path_factory.mktemp("run")
    writer = RunWriter(root)
    writer.write_table("pairs", _pairs(neg_types))
    writer.write_table("head_attention", _head_attention(neg_types, rng))
    return root, np.array(neg_types)


@pytest.fixture(scope="module")
def table(store):
    return contrasts_table(connect(store[0]))


def _values(con, metric: str, layer: int, head: int) -> np.ndarray:
    """One head's metric in pair_id order, read straight from the store."""
    sql = f"SELECT {metric} FROM head_attention WHERE layer = ? AND head = ? ORDER BY pair_id"
    return np.array([r[0] for r in con.execute(sql, [layer, head]).fetchall()], dtype=np.float64)


def test_table_shape_and_schema(table):
    assert table.schema.equals(HEAD_CONTRASTS.schema)
    assert table.num_rows == len(CONTRASTS) * len(METRICS) * LAYERS * HEADS
    rows = table.to_pylist()
    assert {r["contrast"] for r in rows} == set(CONTRASTS)
    assert {(r["n_a"], r["n_b"]) for r in rows if r["contrast"] == "relevant_vs_easy"} == {(14, 17)}
    assert {(r["n_a"], r["n_b"]) for r in rows if r["contrast"] == "relevant_vs_hard"} == {(14, 11)}


@pytest.mark.parametrize("metric", ["q_d", "d2q_max", "sep2_cls"])
def test_statistics_match_numpy_and_scipy_per_head(store, table, metric):
    root, neg_types = store
    rows = [r for r in table.to_pylist() if r["metric"] == metric]
    assert len(rows) == len(CONTRASTS) * LAYERS * HEADS
    con = connect(root)
    for r in rows:
        x = _values(con, metric, r["layer"], r["head"])
        a_type, b_type = CONTRASTS[r["contrast"]]
        a, b = x[neg_types == a_type], x[neg_types == b_type]
        assert r["mean_a"] == pytest.approx(a.mean(), rel=1e-12)
        assert r["mean_b"] == pytest.approx(b.mean(), rel=1e-12)
        assert r["diff"] == pytest.approx(a.mean() - b.mean(), rel=1e-12, abs=1e-15)
        pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
        if pooled == 0:
            assert r["cohen_d"] is None
        else:
            assert r["cohen_d"] == pytest.approx((a.mean() - b.mean()) / pooled, rel=1e-10)
        expected = mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
        assert r["u"] == expected.statistic
        assert r["p"] == pytest.approx(expected.pvalue, rel=1e-12)


def test_constant_head_has_null_cohen_d(table):
    constant = [r for r in table.to_pylist() if (r["metric"], r["layer"], r["head"]) == ("d2q_max", 0, 0)]
    assert len(constant) == 2
    assert all(r["cohen_d"] is None and r["diff"] == 0 and r["p"] == 1 for r in constant)


def test_holm_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06; NaN untested
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02, np.nan])
    np.testing.assert_allclose(holm(np.array([0.5, 0.9])), [1.0, 1.0])


def test_p_holm_is_holm_over_each_contrast(table):
    for contrast in CONTRASTS:
        rows = [r for r in table.to_pylist() if r["contrast"] == contrast]
        p = np.array([r["p"] for r in rows])
        m = len(p)
        assert m == len(METRICS) * LAYERS * HEADS
        order = np.argsort(p, kind="stable")
        expected = np.empty(m)
        running = 0.0
        for i, j in enumerate(order):  # the textbook loop
            running = max(running, min(1.0, (m - i) * p[j]))
            expected[j] = running
        np.testing.assert_allclose([r["p_holm"] for r in rows], expected, rtol=1e-12)


def test_planted_head_is_the_top_candidate(store, table):
    root = store[0]
    RunWriter(root).write_table("head_contrasts", table)
    con = connect(root)
    for contrast in CONTRASTS:
        top = candidate_heads(con, contrast=contrast)
        assert (top.loc[0, "layer"], top.loc[0, "head"], top.loc[0, "metric"]) == PLANTED
        assert top.loc[0, "rank"] == 1 and top.loc[0, "p_holm"] < 0.05 and top.loc[0, "cohen_d"] > 0
        assert (top["p_holm"] < 0.05).all() and (top["cohen_d"] > 0).all()
    assert candidate_heads(con, metric="q2d_max").empty  # random noise: nothing survives Holm
    with pytest.raises(ValueError, match="contrast"):
        candidate_heads(con, contrast="relevant_vs_all")


def test_compare_vectorised_over_heads_equals_one_at_a_time():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(5, 12)), rng.normal(0.3, size=(5, 9))
    together = compare(a, b)
    for h in range(5):
        alone = compare(a[h : h + 1], b[h : h + 1])
        for key, value in together.items():
            np.testing.assert_allclose(value[h], alone[key][0], rtol=1e-12)


def test_store_without_easy_negatives_gives_only_hard_contrast(tmp_path):
    neg_types = ["relevant"] * 4 + ["hard"] * 5
    writer = RunWriter(tmp_path)
    writer.write_table("pairs", _pairs(neg_types))
    writer.write_table("head_attention", _head_attention(neg_types, np.random.default_rng(1)))
    table = contrasts_table(connect(tmp_path))
    assert set(table.column("contrast").to_pylist()) == {"relevant_vs_hard"}
    assert table.num_rows == len(METRICS) * LAYERS * HEADS


@pytest.mark.parametrize("heads_per_block", [1, 5])  # one head at a time; blocks that straddle layers
def test_heads_read_in_blocks_give_the_same_table(store, table, monkeypatch, heads_per_block):
    """Memory stays flat: heads are read in blocks of BLOCK_VALUES values, and the table does not depend on it."""
    import precompute.analyses.contrasts as contrasts

    n_pairs = len(store[1])
    monkeypatch.setattr(contrasts, "BLOCK_VALUES", heads_per_block * n_pairs)
    blocked = contrasts_table(connect(store[0]))
    assert blocked.schema.equals(table.schema) and blocked.num_rows == table.num_rows
    for name in table.column_names:  # the same rows; statistics to the last bits numpy's vectorised sums may differ in
        got, want = blocked.column(name).to_numpy(zero_copy_only=False), table.column(name).to_numpy(zero_copy_only=False)
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, equal_nan=True)
        else:
            assert (got == want).all(), name
