"""head_attention_agg handed out one head at a time (precompute/stages/aggregate_stage.py) equals SQL's sums,
whatever the row groups: a head over several row groups, a row group over two heads."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute  # noqa: F401 (pa.compute)
import pyarrow.parquet as pq
import pytest

from precompute.metrics import METRICS
from precompute.stages.aggregate_stage import aggregate_pieces
from precompute.store.schema import TABLES

LAYERS, HEADS, PAIRS = 2, 3, 10


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(1)
    ids = np.arange(PAIRS, dtype=np.int32)
    pairs = pa.table({"pair_id": ids, "qid": [f"q{i % 3}" for i in ids], "neg_type": ["hard", "easy"] * (PAIRS // 2),
                      "grade": pa.array([None if i % 2 else i % 4 for i in ids], pa.int8())})
    layer, head, pair = (a.ravel() for a in np.meshgrid(np.arange(LAYERS), np.arange(HEADS), ids, indexing="ij"))
    heads = {"pair_id": pair.astype(np.int32), "layer": layer.astype(np.int8), "head": head.astype(np.int8)}
    heads.update({m: rng.random(len(pair)).astype(np.float32) for m in METRICS})
    heads[METRICS[0]] = pa.array(heads[METRICS[0]], mask=rng.random(len(pair)) < 0.3)  # some NULLs
    heads[METRICS[1]] = pa.nulls(len(pair), pa.float32())  # undefined everywhere: NULL sums
    pq.write_table(pa.table(pairs), tmp_path / "pairs.parquet")
    return tmp_path, pa.table(heads)


@pytest.mark.parametrize("row_group", [7, PAIRS, 4 * PAIRS, 1000])  # straddling two heads, one head each, ...
def test_pieces_equal_sql_sums_whatever_the_row_groups(files, row_group):
    root, heads = files
    pq.write_table(heads, root / "head_attention.parquet", row_group_size=row_group)
    pieces = list(aggregate_pieces([root / "head_attention.parquet"], root / "pairs.parquet"))
    assert len(pieces) == LAYERS * HEADS  # one piece per head
    got = pa.concat_tables(pieces)
    key = list(TABLES["head_attention_agg"].sort_key)
    assert got.equals(got.sort_by([(k, "ascending") for k in key]))  # the pieces follow each other in table order
    want = duckdb.sql(
        "SELECT h.layer, h.head, p.qid, p.neg_type, p.grade, count(*) AS n, "
        + ", ".join(f"sum(CAST(h.{m} AS DOUBLE)) AS {m}_sum, sum(CAST(h.{m} AS DOUBLE) ^ 2) AS {m}_sumsq" for m in METRICS)
        + f" FROM '{root / 'head_attention.parquet'}' h JOIN '{root / 'pairs.parquet'}' p USING (pair_id) "
        "GROUP BY ALL ORDER BY h.layer, h.head, p.qid, p.neg_type, p.grade NULLS LAST"
    ).to_arrow_table()
    assert got.num_rows == want.num_rows
    for name in want.column_names:
        a, b = got.column(name).to_pylist(), want.column(name).to_pylist()
        if name.endswith(("_sum", "_sumsq")):
            assert [x is None for x in a] == [x is None for x in b], name
            np.testing.assert_allclose([x for x in a if x is not None], [x for x in b if x is not None], rtol=1e-12)
        else:
            assert a == b, name


def test_pair_ids_the_pairs_table_lacks_are_refused(files):
    root, heads = files
    pq.write_table(heads, root / "head_attention.parquet")
    pq.write_table(pa.table({"pair_id": pa.array([0, 1], pa.int32()), "qid": ["a", "b"], "neg_type": ["hard"] * 2,
                             "grade": pa.array([0, 1], pa.int8())}), root / "pairs.parquet")
    with pytest.raises(ValueError, match="pairs table lacks"):
        list(aggregate_pieces([root / "head_attention.parquet"], root / "pairs.parquet"))


def test_one_file_per_layer_gives_the_bits_of_one_file(files):
    """The job's layout (head_attention/layer=L/data.parquet) and the one-file layout of older stores hold the same
    row groups (none holds two heads), so the aggregate is the same to the bit."""
    root, heads = files
    pq.write_table(heads, root / "head_attention.parquet", row_group_size=PAIRS)
    layers = []
    for layer in range(LAYERS):
        layers.append(root / f"layer={layer}.parquet")
        pq.write_table(heads.filter(pa.compute.equal(heads.column("layer"), layer)), layers[-1], row_group_size=PAIRS)
    one = pa.concat_tables(aggregate_pieces([root / "head_attention.parquet"], root / "pairs.parquet"))
    assert pa.concat_tables(aggregate_pieces(layers, root / "pairs.parquet")).equals(one)
