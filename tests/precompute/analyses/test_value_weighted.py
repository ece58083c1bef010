"""The no-op check (precompute.analyses.value_weighted, which the reader and the report show) against numpy on
head_attention, and nothing for a store written before the value-weighted shares."""

from __future__ import annotations

import numpy as np
import pytest

from precompute.analyses.value_weighted import noop_by_layer
from precompute.store.connect import connect
from tests.conftest import REPO
from tests.precompute.analyses.test_contrasts import HEADS, LAYERS, QUERIES, _head_attention, _write


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    rng = np.random.default_rng(1)
    neg_types = ["relevant", "relevant", "hard", "easy"] * QUERIES
    qids = [f"q{q:02d}" for q in range(QUERIES) for _ in range(4)]
    root = tmp_path_factory.mktemp("run")
    _write(root, neg_types, qids, _head_attention(neg_types, rng))
    return root, np.array(neg_types), np.array(qids)


def _by_layer(con, column: str, neg_types, qids) -> np.ndarray:
    """[layers] mean over queries of the mean over heads and relevant pairs, straight from head_attention."""
    out = []
    for layer in range(LAYERS):
        values = np.array(con.execute(f"SELECT {column} FROM head_attention WHERE layer = ? ORDER BY head, pair_id",
                                      [layer]).fetchnumpy()[column], dtype=np.float64).reshape(HEADS, -1)
        out.append(np.mean([values[:, (qids == q) & (neg_types == "relevant")].mean() for q in sorted(set(qids))]))
    return np.array(out)


def test_shares_and_masses_by_layer_are_means_over_queries(store):
    root, neg_types, qids = store
    con = connect(root)
    rows = noop_by_layer(con)
    assert len(rows) == 2 * 2 * LAYERS and {r["n_queries"] for r in rows} == {QUERIES}
    pick = lambda source, target: sorted((r for r in rows if (r["source"], r["target"]) == (source, target)),  # noqa: E731
                                         key=lambda r: r["layer"])
    sep = pick("q", "sep")
    assert [r["layer"] for r in sep] == list(range(LAYERS))
    want = _by_layer(con, "vw_q_sep1", neg_types, qids) + _by_layer(con, "vw_q_sep2", neg_types, qids)
    np.testing.assert_allclose([r["share"] for r in sep], want, rtol=1e-6)
    cls = pick("d", "cls")
    np.testing.assert_allclose([r["mass"] for r in cls], _by_layer(con, "d_cls", neg_types, qids), rtol=1e-6)
    for r in rows:
        assert r["mass_low"] <= r["mass"] <= r["mass_high"] and r["share_low"] <= r["share"] <= r["share_high"]
        assert r["ratio"] == pytest.approx(r["share"] / r["mass"])
    assert noop_by_layer(con, seed=3) == noop_by_layer(con, seed=3)


def test_a_store_without_the_shares_gives_masses_and_nan_shares():
    con = connect(REPO / "tests" / "fixtures" / "store-v2" / "tiny-dl__tiny-bert")
    rows = noop_by_layer(con)
    assert rows and all(r["mass"] == r["mass"] and r["share"] != r["share"] for r in rows)  # NaN shares
