"""The report's no-op check (precompute.report.value_weighted_tables) against numpy on head_attention, and nothing
for a store written before the value-weighted shares."""

from __future__ import annotations

import numpy as np
import pytest

from precompute.report import value_weighted_tables
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
    layers, share, n_q = value_weighted_tables.layer_values(con, "q", ("sep1", "sep2"), prefix="vw_")
    want = _by_layer(con, "vw_q_sep1", neg_types, qids) + _by_layer(con, "vw_q_sep2", neg_types, qids)
    assert layers == list(range(LAYERS)) and n_q == QUERIES
    np.testing.assert_allclose(share, want, rtol=1e-6)
    _, mass, _ = value_weighted_tables.layer_values(con, "d", ("cls",))
    np.testing.assert_allclose(mass, _by_layer(con, "d_cls", neg_types, qids), rtol=1e-6)
    lines = value_weighted_tables.render(con)
    assert lines[1].startswith("No-op check") and sum(f"(n_q {QUERIES})" in line for line in lines) == 2
    assert f"{share[0]:9.4f}" in lines[lines.index(next(l for l in lines if l.strip().startswith("Query ->"))) + 2]


def test_a_store_without_the_shares_prints_no_section():
    con = connect(REPO / "tests" / "fixtures" / "store-v2" / "tiny-dl__tiny-bert")
    assert value_weighted_tables.render(con) == []  # its report prints what it printed before (test_old_stores)
