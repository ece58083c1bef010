"""The reader's head, pair, ablation and patching results (matching_atlas) against independent computations on the tiny store."""

from __future__ import annotations

import numpy as np
import pytest

from matching_atlas import Run, sqltext
from matching_atlas.opening import inspect_run
from matching_atlas.slice import Slice
from precompute.metrics import METRICS
from precompute.store.connect import connect
from tests.app.conftest import DL20


@pytest.fixture(scope="module")
def con(store):
    """The run's reader (its methods) with the DuckDB connection's ``execute`` for the independent computations."""
    run = Run(inspect_run(store / DL20))
    run.execute = run.connection.execute
    return run


def plain_run(path):
    """A reader on a plain store connection: no in-memory aggregate, no row-position layout."""
    run = Run(inspect_run(path))
    run._con = connect(path)
    return run


@pytest.fixture(scope="module")
def joined(con):
    return con.execute("SELECT h.*, p.qid, p.neg_type, p.grade FROM head_attention h JOIN pairs p USING (pair_id)").df()


@pytest.mark.parametrize("metric", ["q_d", "sep2_cls", "q_d_exact", "d2q_max"])
def test_head_means_from_the_aggregate_equal_head_attention(con, joined, metric):
    sl = Slice(layers=(1, 2), grades=(0, 2, 3))
    got = con.head_means(metric, where=sl)
    sub = joined[joined["layer"].between(1, 2) & joined["grade"].isin([0, 2, 3])]
    want = sub.groupby(["layer", "head"])[metric].agg(["mean", "std", "count"]).reset_index()
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-6)
    np.testing.assert_allclose(got["sd"], want["std"] * np.sqrt((want["count"] - 1) / want["count"]), rtol=1e-4)


def test_head_difference_cohen_d_equals_pandas(con, joined):
    got = con.head_difference("q2d_max", "relevant_vs_easy", where=Slice(heads=(1,)))
    for row in got.itertuples():
        g = joined[(joined["layer"] == row.layer) & (joined["head"] == row.head)]
        a = g[g.neg_type == "relevant"]["q2d_max"].astype(float)
        b = g[g.neg_type == "easy"]["q2d_max"].astype(float)
        sd = np.sqrt(((len(a) - 1) * a.var() + (len(b) - 1) * b.var()) / (len(a) + len(b) - 2))
        assert row.diff == pytest.approx(a.mean() - b.mean(), rel=1e-6)
        assert row.cohen_d == pytest.approx((a.mean() - b.mean()) / sd, rel=1e-5)


def test_grade_filter_applies_to_the_relevant_side_only(con):
    got = con.head_difference("q_d", "relevant_vs_hard", where=Slice(grades=(3,)))
    assert (got["n_a"] == 6).all() and (got["n_b"] == 18).all()


def test_ndcg_matches_ir_measures(con):
    ir_measures = pytest.importorskip("ir_measures")
    pairs = con.execute("SELECT qid, docid, score, grade FROM pairs").df()
    qrels = [ir_measures.Qrel(r.qid, r.docid, max(int(r.grade), 0)) for r in pairs.itertuples()]
    run = [ir_measures.ScoredDoc(r.qid, r.docid, float(r.score)) for r in pairs.itertuples()]
    want = {m.query_id: m.value for m in ir_measures.iter_calc([ir_measures.nDCG @ 10], qrels, run)}
    got = con.ndcg(where=Slice()).set_index("qid")["ndcg"]
    for qid, value in want.items():
        assert got[qid] == pytest.approx(value, abs=1e-4)


def test_histogram_shares_sum_to_one(con):
    hist = con.score_histogram(17, where=Slice())
    assert hist["bin"].between(0, 16).all()
    np.testing.assert_allclose(hist.groupby("neg_type")["share"].sum(), 1.0)
    assert hist.groupby("neg_type")["n"].sum().to_dict() == {"easy": 12, "hard": 18, "relevant": 18}


def test_unknown_names_are_refused(con):
    with pytest.raises(sqltext.QueryError):
        con.head_means("q_d; DROP VIEW pairs", where=Slice())
    with pytest.raises(sqltext.QueryError):
        con.head_difference("q_d", "relevant_vs_everything", where=Slice())
    assert sqltext.lit("o'brien") == "'o''brien'"
    assert len(con.pairs("x' OR '1'='1", where=Slice())) == 0


def test_every_metric_has_a_column(con):
    cols = set(con.execute("DESCRIBE head_attention_agg").df()["column_name"])
    assert {f"{m}_sum" for m in METRICS} <= cols


def test_fast_pair_lookups_equal_the_plain_queries(store, tmp_path):
    import shutil

    import pyarrow.parquet as pq

    fast, plain = Run(inspect_run(store / DL20)), plain_run(store / DL20)
    assert fast._layout() == (3, 4, 48) and plain._layout() is None
    for sl in (Slice(), Slice(layers=(1, 2), heads=(0, 3))):
        for pid in (0, 17, 47):
            a, b = fast.pair_metric_grid(pid, "q_d", where=sl), plain.pair_metric_grid(pid, "q_d", where=sl)
            pd_testing(a, b)
    pd_testing(fast.pair_head_metrics(9, 2, 1), plain.pair_head_metrics(9, 2, 1))
    # the in-memory aggregate gives the same numbers as the Parquet view
    pd_testing(fast.head_means("q_d", where=Slice()), plain.head_means("q_d", where=Slice()))

    # a run where one pair lacks a head: no positional reads, same answers
    holey = tmp_path / DL20
    shutil.copytree(store / DL20, holey)
    t = pq.read_table(holey / "head_attention.parquet").to_pandas()
    t = t[~((t["pair_id"] == 5) & (t["layer"] == 0) & (t["head"] == 0))]
    pq.write_table(pa_table(t), holey / "head_attention.parquet")
    con = Run(inspect_run(holey))
    assert con._layout() is None
    grid = con.pair_metric_grid(6, "q_d", where=Slice())
    pd_testing(grid, plain.pair_metric_grid(6, "q_d", where=Slice()))
    assert len(con.pair_metric_grid(5, "q_d", where=Slice())) == 11


def pd_testing(a, b):
    import pandas.testing

    pandas.testing.assert_frame_equal(a.reset_index(drop=True), b.reset_index(drop=True), check_dtype=False)


def pa_table(df):
    import pyarrow as pa

    return pa.Table.from_pandas(df, preserve_index=False)


# -- ablations: subspaces; patching --------------------------------------------------------------------
def test_subspace_deltas_equal_the_view(con):
    """The Ablations page computes the head's metric changes as two column scans; they equal the store's view
    subspace_effects (mean over pairs of with - without)."""
    view = con.execute("SELECT condition_id, metric, n, mean, baseline, delta FROM subspace_effects").df()
    ids = sorted(view["condition_id"].unique())
    assert len(ids) == 8
    for cid in ids[:3]:
        got = con.subspace_metric_deltas(cid).set_index("metric")
        want = view[view["condition_id"] == cid].set_index("metric")
        assert sorted(got.index) == sorted(want.index) == sorted(METRICS)
        assert (got.loc[want.index, "n"] == want["n"]).all()
        np.testing.assert_allclose(got.loc[want.index, ["mean", "baseline", "delta"]].to_numpy(float),
                                   want[["mean", "baseline", "delta"]].to_numpy(float), rtol=1e-6, atol=1e-7)
    table = con.subspace_effects(measure="nDCG@10", scope="pairs").set_index("condition_id")
    qd = view[view["metric"] == "q_d"].set_index("condition_id")["delta"]
    np.testing.assert_allclose(table.loc[qd.index, "delta_q_d"], qd, atol=1e-7)


def test_patching_queries_equal_pandas(con):
    fx = con.execute("SELECT e.*, p.qid, p.neg_type, p.grade FROM patching_effects e JOIN pairs p USING (pair_id)").df()
    qids = sorted(fx["qid"].unique())[:3]
    sl = Slice(layers=(1, 2), heads=(0, 3), qids=tuple(qids))
    got = con.patching_heads("tfc1", where=sl)
    sub = fx[(fx["experiment"] == "tfc1") & (fx["component"] == "head") & fx["layer"].between(1, 2)
             & fx["head"].isin([0, 3]) & fx["qid"].isin(qids)]
    want = sub.groupby(["layer", "head"])["effect"].agg(["mean", "std", "count", "size"]).reset_index()
    assert got[["layer", "head"]].values.tolist() == want[["layer", "head"]].values.tolist()
    np.testing.assert_allclose(got["mean"], want["mean"], rtol=1e-6)
    assert got["n"].tolist() == want["count"].tolist()
    assert got["n_null"].tolist() == (want["size"] - want["count"]).tolist()
    np.testing.assert_allclose(got["ci_hi"] - got["mean"], 1.96 * want["std"] / np.sqrt(want["count"]), rtol=1e-5)
    comps = con.patching_components("tfc1", where=sl)
    assert set(comps["component"]) == {"resid", "attn", "mlp"} and comps["layer"].between(1, 2).all()
    assert len(comps) == 3 * 6 * 2  # components x segments (all + 5) x layers: the head filter does not apply
    top = con.patching_top_pairs("tfc1", 2, "resid", "all", None, 5, True, where=sl)
    best = fx[(fx["experiment"] == "tfc1") & (fx["component"] == "resid") & (fx["segment"] == "all")
              & (fx["layer"] == 2) & fx["qid"].isin(qids)].dropna(subset=["effect"]).nlargest(5, "effect")
    np.testing.assert_allclose(top["effect"], best["effect"], rtol=1e-6)
    assert set(top["qid"]) <= set(qids)
