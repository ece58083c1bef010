"""head_contrasts on tiny stores with a planted matching head, checked against numpy and scipy per head: the query-level
test (per-query differences, paired t, bootstrap over queries) and the pooled description."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from scipy.stats import mannwhitneyu, ttest_rel

from precompute.analyses.contrasts import CONTRASTS, candidate_heads, compare, contrasts_table, holm
from precompute.metrics import METRICS
from precompute.stages.aggregate_stage import aggregate_pieces
from precompute.statistics import stars
from precompute.store.connect import connect
from precompute.store.schema import HEAD_CONTRASTS, PAIRS
from precompute.store.writer import RunWriter

LAYERS, HEADS = 2, 3
QUERIES = 12
GROUPS = {"relevant": 2, "hard": 2, "easy": 3, "unjudged": 1}  # per query; unjudged pairs must be left out
PLANTED = (1, 2, "q_d")  # relevant pairs get much more Q->D mass on layer 1, head 2, in every query


def _pairs(neg_types: list[str], qids: list[str] | None = None) -> pa.Table:
    n = len(neg_types)
    grade = {"relevant": 2, "hard": 0, "easy": -1, "unjudged": -1}
    return pa.table(
        {
            "pair_id": np.arange(n, dtype=np.int32),
            "qid": qids or ["q1"] * n,
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


def _write(root, neg_types: list[str], qids: list[str], heads: pa.Table) -> None:
    """A run folder with pairs, head_attention and the head_attention_agg the job sums from them."""
    writer = RunWriter(root)
    writer.write_table("pairs", _pairs(neg_types, qids))
    writer.write_table("head_attention", heads)
    writer.write_pieces("head_attention_agg", aggregate_pieces(writer.table_files("head_attention"), writer.table_path("pairs")))


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(0)
    neg_types, qids = [], []
    for q in range(QUERIES):
        kinds = list(rng.permutation([t for t, n in GROUPS.items() for _ in range(n)]))  # groups interleaved
        neg_types += kinds
        qids += [f"q{q:02d}"] * len(kinds)
    root = tmp_path_factory.mktemp("run")
    _write(root, neg_types, qids, _head_attention(neg_types, rng))
    return root, np.array(neg_types), np.array(qids)


@pytest.fixture(scope="module")
def table(store):
    return contrasts_table(connect(store[0]), n_resamples=200)


def _values(con, metric: str, layer: int, head: int) -> np.ndarray:
    """One head's metric in pair_id order, read straight from the store."""
    sql = f"SELECT {metric} FROM head_attention WHERE layer = ? AND head = ? ORDER BY pair_id"
    return np.array([r[0] for r in con.execute(sql, [layer, head]).fetchall()], dtype=np.float64)


def test_table_shape_and_schema(table):
    assert table.schema.equals(HEAD_CONTRASTS.schema)
    assert table.num_rows == len(CONTRASTS) * len(METRICS) * LAYERS * HEADS
    rows = table.to_pylist()
    assert {r["contrast"] for r in rows} == set(CONTRASTS)
    n = {kind: QUERIES * count for kind, count in GROUPS.items()}
    assert {(r["n_a"], r["n_b"]) for r in rows if r["contrast"] == "relevant_vs_easy"} == {(n["relevant"], n["easy"])}
    assert {(r["n_a"], r["n_b"]) for r in rows if r["contrast"] == "relevant_vs_hard"} == {(n["relevant"], n["hard"])}
    assert {(r["n_queries"], r["n_resamples"]) for r in rows} == {(QUERIES, 200)}


@pytest.mark.parametrize("metric", ["q_d", "d2q_max", "sep2_cls"])
def test_pooled_statistics_match_numpy_and_scipy_per_head(store, table, metric):
    root, neg_types, _ = store
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
        assert r["pooled_p"] == pytest.approx(expected.pvalue, rel=1e-12)


@pytest.mark.parametrize("metric", ["q_d", "sep2_cls"])
def test_query_level_statistics_match_scipy_per_head(store, table, metric):
    """effect = mean over queries of per-query group-mean differences; t and p = scipy's paired t-test of the per-query
    group means; the interval holds the effect."""
    root, neg_types, qids = store
    con = connect(root)
    for r in (r for r in table.to_pylist() if r["metric"] == metric):
        x = _values(con, metric, r["layer"], r["head"])
        a_type, b_type = CONTRASTS[r["contrast"]]
        queries = sorted(set(qids))
        a = np.array([x[(qids == q) & (neg_types == a_type)].mean() for q in queries])
        b = np.array([x[(qids == q) & (neg_types == b_type)].mean() for q in queries])
        assert r["effect"] == pytest.approx((a - b).mean(), rel=1e-9, abs=1e-12)
        expected = ttest_rel(a, b)
        assert r["t"] == pytest.approx(expected.statistic, rel=1e-6)
        assert r["p"] == pytest.approx(expected.pvalue, rel=1e-6)
        assert r["effect_dz"] == pytest.approx((a - b).mean() / (a - b).std(ddof=1), rel=1e-6)
        assert r["effect_low"] <= r["effect"] <= r["effect_high"]


def test_constant_head_has_null_cohen_d_and_no_test(table):
    constant = [r for r in table.to_pylist() if (r["metric"], r["layer"], r["head"]) == ("d2q_max", 0, 0)]
    assert len(constant) == len(CONTRASTS)
    assert all(r["cohen_d"] is None and r["diff"] == 0 and r["pooled_p"] == 1 for r in constant)
    assert all(r["effect"] == 0 and r["p"] is None and r["p_holm"] is None and r["effect_dz"] is None for r in constant)


def test_holm_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.005, np.nan])
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06; NaN untested
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02, np.nan])
    np.testing.assert_allclose(holm(np.array([0.5, 0.9])), [1.0, 1.0])


def test_p_holm_is_holm_over_each_contrast_and_family(table):
    """Holm's textbook loop over one contrast's tested rows of one family: the attention metrics' p_holm does not
    depend on the value-weighted shares (a family of their own), and vice versa."""
    from precompute.metrics import VALUE_WEIGHTED_METRICS

    for contrast in CONTRASTS:
        rows = [r for r in table.to_pylist() if r["contrast"] == contrast]
        assert len(rows) == len(METRICS) * LAYERS * HEADS
        for family in (True, False):
            members = [r for r in rows if (r["metric"] in VALUE_WEIGHTED_METRICS) == family and r["p"] is not None]
            assert members  # both families are tested here
            p = np.array([r["p"] for r in members])
            m = len(p)
            order = np.argsort(p, kind="stable")
            expected = np.empty(m)
            running = 0.0
            for i, j in enumerate(order):  # the textbook loop
                running = max(running, min(1.0, (m - i) * p[j]))
                expected[j] = running
            np.testing.assert_allclose([r["p_holm"] for r in members], expected, rtol=1e-12)


def test_planted_head_is_the_top_candidate(store, table):
    root = store[0]
    RunWriter(root).write_table("head_contrasts", table)
    con = connect(root)
    for contrast in ("relevant_vs_easy", "relevant_vs_hard"):
        top = candidate_heads(con, contrast=contrast)
        assert (top.loc[0, "layer"], top.loc[0, "head"], top.loc[0, "metric"]) == PLANTED
        assert top.loc[0, "rank"] == 1 and top.loc[0, "p_holm"] < 0.05 and top.loc[0, "effect"] > 0
        assert (top["p_holm"] < 0.05).all() and (top["effect"] > 0).all() and (top["n_queries"] == QUERIES).all()
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
    _write(tmp_path, neg_types, ["q1"] * len(neg_types), _head_attention(neg_types, np.random.default_rng(1)))
    table = contrasts_table(connect(tmp_path))
    assert set(table.column("contrast").to_pylist()) == {"relevant_vs_hard"}
    assert table.num_rows == len(METRICS) * LAYERS * HEADS
    rows = table.to_pylist()  # one query: an effect, no test
    assert all(r["n_queries"] == 1 and r["p"] is None and r["effect"] is not None for r in rows)


@pytest.mark.parametrize("heads_per_block", [1, 5])  # one head at a time; blocks that straddle layers
def test_heads_read_in_blocks_give_the_same_table(store, table, monkeypatch, heads_per_block):
    """Memory stays flat: heads are read in blocks of BLOCK_VALUES values, and the table does not depend on it."""
    import precompute.analyses.contrasts as contrasts

    n_pairs = len(store[1])
    monkeypatch.setattr(contrasts, "BLOCK_VALUES", heads_per_block * n_pairs)
    blocked = contrasts_table(connect(store[0]), n_resamples=200)
    assert blocked.schema.equals(table.schema) and blocked.num_rows == table.num_rows
    for name in table.column_names:  # the same rows; statistics to the last bits numpy's vectorised sums may differ in
        got, want = blocked.column(name).to_numpy(zero_copy_only=False), table.column(name).to_numpy(zero_copy_only=False)
        if want.dtype.kind == "f":
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, equal_nan=True)
        else:
            assert (got == want).all(), name


def _one_head_store(root, effects: dict[str, float], sizes: dict[str, tuple[int, int]], seed: int = 0) -> None:
    """A one-layer, one-head run: query q gets sizes[q] = (relevant, hard) pairs with q_d ~ U(0, 0.4), its relevant pairs
    raised by effects[q]."""
    rng = np.random.default_rng(seed)
    neg_types, qids, q_d = [], [], []
    for q, (n_rel, n_hard) in sizes.items():
        neg_types += ["relevant"] * n_rel + ["hard"] * n_hard
        qids += [q] * (n_rel + n_hard)
        q_d += list(rng.uniform(0, 0.4, n_rel) + effects.get(q, 0.0)) + list(rng.uniform(0, 0.4, n_hard))
    n = len(neg_types)
    columns = {m: np.full(n, 0.1, dtype=np.float32) for m in METRICS}
    columns["q_d"] = np.minimum(np.array(q_d), 1.0).astype(np.float32)
    heads = pa.table({"pair_id": np.arange(n, dtype=np.int32), "layer": np.zeros(n, np.int8), "head": np.zeros(n, np.int8),
                      **columns})
    _write(root, neg_types, qids, heads)


def _q_d_row(root, **kwargs) -> dict:
    table = contrasts_table(connect(root), **kwargs)
    return next(r for r in table.to_pylist() if r["metric"] == "q_d" and r["contrast"] == "relevant_vs_hard")


def test_one_query_carrying_the_whole_difference_is_pooled_significant_but_not_over_queries(tmp_path):
    """Query q00 has 60 relevant pairs raised by 0.3 and 60 hard ones, eleven other queries 2 + 2 pairs and no effect:
    pooled over pairs the head looks matching (Mann-Whitney p tiny); over queries it is not (one query of 12)."""
    sizes = {f"q{i:02d}": (60, 60) if i == 0 else (2, 2) for i in range(12)}
    _one_head_store(tmp_path, {"q00": 0.3}, sizes)
    r = _q_d_row(tmp_path)
    assert r["pooled_p"] < 1e-6 and r["cohen_d"] > 0.8  # the pooled test: "significant"
    assert r["n_queries"] == 12 and r["p"] > 0.05 and r["p_holm"] > 0.05 and stars(r["p_holm"], n_queries=12) == ""
    assert r["effect_low"] < 0 < r["effect_high"]


def test_known_per_query_effect_is_recovered_within_its_interval(tmp_path):
    sizes = {f"q{i:02d}": (3, 4) for i in range(30)}
    _one_head_store(tmp_path, {q: 0.1 for q in sizes}, sizes, seed=5)
    r = _q_d_row(tmp_path)
    assert r["effect_low"] < 0.1 < r["effect_high"] and r["effect_high"] - r["effect_low"] < 0.1
    assert r["n_queries"] == 30 and r["p_holm"] < 0.001 and stars(r["p_holm"], n_queries=30) == "***"


def test_bootstrap_is_seeded_and_reproducible_byte_for_byte(store):
    a, b = (contrasts_table(connect(store[0]), n_resamples=100, seed=7) for _ in range(2))
    for name in ("effect_low", "effect_high"):
        assert a.column(name).to_numpy().tobytes() == b.column(name).to_numpy().tobytes()
    other = contrasts_table(connect(store[0]), n_resamples=100, seed=8)
    assert other.column("effect_low").to_numpy().tobytes() != a.column("effect_low").to_numpy().tobytes()


def test_no_stars_below_ten_queries():
    assert stars(1e-9, n_queries=9) == "" and stars(1e-9, n_queries=10) == "***" and stars(1e-9) == "***"


def test_old_pooled_contrasts_show_no_query_level_test():
    """A schema-1 store's head_contrasts (Mann-Whitney p in p) reads with that p as pooled_p and no query-level test."""
    from tests.conftest import REPO

    con = connect(REPO / "tests" / "fixtures" / "store-v1" / "tiny-dl__tiny-bert")
    rows = con.execute("SELECT * FROM head_contrasts").df()
    assert list(rows.columns) == HEAD_CONTRASTS.column_names
    assert rows["p"].isna().all() and rows["p_holm"].isna().all() and rows["pooled_p"].notna().all()


def test_report_section_shows_queries_intervals_and_what_the_pooled_test_said(store, table):
    """The report's matching-head section (precompute.report.head_tables) on the 12-query store: the planted head
    first with its number of queries and stars, the pooled numbers beside it as descriptive."""
    from precompute.report import head_tables

    root = store[0]
    RunWriter(root).write_table("head_contrasts", table)
    lines = head_tables.render(connect(root).execute("SELECT * FROM head_contrasts").df())
    assert any(l.startswith("Relevant - easy negatives (12 queries), attention metrics") and "never starred" in l
               for l in lines)
    assert any(l.startswith("Relevant - easy negatives (12 queries), value-weighted metrics") for l in lines)
    first = lines[lines.index(next(l for l in lines if l.startswith("Relevant - easy"))) + 4]
    assert first.split()[:3] == ["1.2", "q_d", "12"] and "***" in first and "pooled, descriptive" in first


def test_lexical_by_layer_is_the_mean_over_queries_of_per_query_layer_differences(store):
    """The lexical-vs-semantic table (precompute.analyses.lexical_layers, which the reader and the report show) against
    numpy on head_attention."""
    from precompute.analyses import lexical_layers

    root, neg_types, qids = store
    con = connect(root)
    layers, order, means = lexical_layers.layer_means(con, "q_d_exact")
    assert layers == list(range(LAYERS)) and order == sorted(set(qids))
    x = np.stack([np.stack([_values(con, "q_d_exact", layer, h) for h in range(HEADS)]) for layer in range(LAYERS)])
    for layer in range(LAYERS):
        per_query = [x[layer][:, (qids == q) & (neg_types == "relevant")].mean() - x[layer][:, (qids == q) & (neg_types == "hard")].mean()
                     for q in order]
        np.testing.assert_allclose(means[layer, :, 0] - means[layer, :, 1], per_query, rtol=1e-6)
    rows = [r for r in lexical_layers.by_layer(con) if r["metric"] == "q_d_exact"]
    assert [r["layer"] for r in rows] == list(range(LAYERS)) and {r["n_queries_relevant_minus_hard"] for r in rows} == {12}
    for r in rows:
        d = means[r["layer"], :, 0] - means[r["layer"], :, 1]
        assert r["relevant_minus_hard"] == pytest.approx(np.nanmean(d))
        assert r["relevant_minus_hard_low"] <= r["relevant_minus_hard"] <= r["relevant_minus_hard_high"]
