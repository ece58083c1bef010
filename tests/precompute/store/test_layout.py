"""head_attention as one file per layer (precompute/store/layout.py): written whole or not at all, merged from sorted
parts by concatenation with the bytes a sort gives, read as one table; a run of the one-file layout (stores written
before) reads, reports and resumes unchanged, and gains subspace_effects equal to its view."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from precompute import report
from precompute.job import run
from precompute.metrics import METRICS
from precompute.store import integrity, layout
from precompute.store.connect import connect, is_stored
from precompute.store.schema import TABLES
from precompute.store.writer import RunWriter, write_parquet
from tests.conftest import read_table, table_files
from tests.precompute.crashing import single_thread

LAYERS, HEADS = 3, 2


def heads_table(pairs: range, seed: int = 0) -> pa.Table:
    """head_attention rows of ``pairs`` on every head, in the order the summary pass produces them (pair-major)."""
    rng = np.random.default_rng(seed)
    ids = np.array(pairs, dtype=np.int32)
    cols = {"pair_id": np.repeat(ids, LAYERS * HEADS),
            "layer": np.tile(np.repeat(np.arange(LAYERS, dtype=np.int8), HEADS), len(ids)),
            "head": np.tile(np.arange(HEADS, dtype=np.int8), len(ids) * LAYERS)}
    cols.update({m: rng.random(len(ids) * LAYERS * HEADS, dtype=np.float32) for m in METRICS})
    return pa.table(cols)


def test_a_partitioned_table_is_one_file_per_layer_replaced_whole(tmp_path):
    w = RunWriter(tmp_path, identity={"model": "m"})
    write_parquet(TABLES["head_attention"], heads_table(range(4)), tmp_path / "head_attention.parquet")  # older layout
    w.write_table("head_attention", heads_table(range(10)))
    files = layout.files(tmp_path, "head_attention")
    assert [f.relative_to(tmp_path).as_posix() for f in files] == [f"head_attention/layer={i}/data.parquet"
                                                                    for i in range(LAYERS)]
    assert not (tmp_path / "head_attention.parquet").exists()  # superseded by the folder
    for layer, f in enumerate(files):
        integrity.verify(f, "head_attention", TABLES["head_attention"].schema, identity={"model": "m"})
        assert set(pq.read_table(f, columns=["layer"]).column(0).to_pylist()) == {layer}
    w.write_table("head_attention", heads_table(range(7)))  # rewritten: the folder is replaced, not mixed
    assert w.table_rows("head_attention") == 7 * LAYERS * HEADS
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    con = connect(tmp_path)
    assert con.execute("SELECT count(*), count(DISTINCT layer) FROM head_attention").fetchone() == (42, LAYERS)
    assert [r[1] for r in con.execute("DESCRIBE head_attention").fetchall()[:3]] == ["INTEGER", "TINYINT", "TINYINT"]


def test_a_killed_write_leaves_nothing_that_is_read(tmp_path):
    """A temporary folder of a killed job is never read and is removed by the next job."""
    w = RunWriter(tmp_path, identity={"model": "m"})
    w.write_table("head_attention", heads_table(range(3)))
    stale = tmp_path / ".head_attention.tmp-99999" / "layer=0"
    stale.mkdir(parents=True)
    shutil.copy(layout.files(tmp_path, "head_attention")[0], stale / "data.parquet")
    assert len(layout.files(tmp_path, "head_attention")) == LAYERS
    w.remove_stale_temporaries()
    assert not stale.parent.exists()


@pytest.mark.parametrize("table", ["head_attention", "pairs"])
def test_sorted_parts_merge_by_concatenation_to_the_bytes_of_a_sort(tmp_path, monkeypatch, table):
    """Parts of consecutive pair ranges (the summary pass's chunks) are concatenated, not sorted: the same bytes as
    DuckDB's sort of the same parts."""
    from precompute.store import writer as writer_module

    def parts(root: Path) -> RunWriter:
        w = RunWriter(root, identity={"model": "m"})
        for k, start in enumerate(range(0, 20, 6)):
            chunk = range(start, min(start + 6, 20))
            if table == "head_attention":
                data = heads_table(chunk, seed=k)
            else:
                data = pa.table({c.name: pa.array([None] * len(chunk), c.type) if c.nullable else
                                 pa.array([(i * 7) % 5 for i in chunk], c.type) if pa.types.is_integer(c.type) else
                                 pa.array([f"{c.name}{i}" for i in chunk], c.type) if pa.types.is_string(c.type) else
                                 pa.array([i / 3 for i in chunk], c.type) if pa.types.is_floating(c.type) else
                                 pa.array([i % 2 == 0 for i in chunk], c.type) for c in TABLES[table].columns})
                data = data.set_column(0, "pair_id", pa.array(list(chunk)[::-1], pa.int32()))  # a part in any order
            w.write_part(table, f"{k:06d}", data)
        return w

    concatenated = parts(tmp_path / "a").merge_parts(table, staged=True)
    monkeypatch.setattr(writer_module, "_concatenated", lambda spec, folder: None)  # what a sort gives
    sorted_ = parts(tmp_path / "b").merge_parts(table, staged=True)
    assert [f.read_bytes() for f in layout.files_in(concatenated, table)] == \
        [f.read_bytes() for f in layout.files_in(sorted_, table)]
    if table == "head_attention":  # a part holds one row group per head: the merge reads them one at a time
        for part in (tmp_path / "b" / "_parts" / table).glob("*/*.parquet"):
            md = pq.read_metadata(part)
            heads = [md.row_group(i).column(md.schema.names.index("head")).statistics for i in range(md.num_row_groups)]
            assert md.num_row_groups == HEADS and [(h.min, h.max) for h in heads] == [(h, h) for h in range(HEADS)]


def test_parts_of_older_versions_holding_several_heads_per_row_group_merge_to_the_same_bytes(tmp_path):
    """Parts written before a part held one row group per head (a run resumed with this version) still merge by
    concatenation, each row group read for each of its heads and filtered, to the bytes of DuckDB's sort."""
    from precompute.store import integrity
    from precompute.store.writer import _concatenated

    def parts(root: Path, one_row_group: bool) -> RunWriter:
        w = RunWriter(root, identity={"model": "m"})
        for k, start in enumerate(range(0, 20, 6)):
            w.write_part("head_attention", f"{k:06d}", heads_table(range(start, min(start + 6, 20)), seed=k))
        if one_row_group:
            for part in (root / "_parts" / "head_attention").glob("*/*.parquet"):
                data = pq.read_table(part)
                integrity.write(data, part, table="head_attention", identity={"model": "m"}, row_group_size=10**6)
                assert pq.read_metadata(part).num_row_groups == 1
        return w

    spec = TABLES["head_attention"]
    old = parts(tmp_path / "old", one_row_group=True)
    assert _concatenated(spec, tmp_path / "old" / "_parts" / "head_attention") is not None
    merged = old.merge_parts("head_attention", staged=True)
    new = parts(tmp_path / "new", one_row_group=False)
    expected = new.merge_parts("head_attention", staged=True)
    assert [f.read_bytes() for f in layout.files_in(merged, "head_attention")] == \
        [f.read_bytes() for f in layout.files_in(expected, "head_attention")]


def test_parts_that_do_not_follow_each_other_are_sorted(tmp_path):
    """Two parts holding the same pairs (an interrupted request grouped otherwise) are not concatenated."""
    from precompute.store.writer import _concatenated

    w = RunWriter(tmp_path, identity={"model": "m"})
    w.write_part("head_attention", "000000", heads_table(range(0, 6)))
    w.write_part("head_attention", "000001", heads_table(range(4, 9), seed=1))
    assert _concatenated(TABLES["head_attention"], tmp_path / "_parts" / "head_attention") is None
    w.merge_parts("head_attention", staged=True)  # by DuckDB's sort
    merged = pa.concat_tables(pq.read_table(f) for f in layout.files_in(w.staged_path("head_attention"), "head_attention"))
    keys = list(zip(*(merged.column(k).to_pylist() for k in ("layer", "head", "pair_id"))))
    assert keys == sorted(keys) and len(keys) == 11 * LAYERS * HEADS


def one_file_copy(run: Path, tmp_path: Path) -> Path:
    """A copy of a finished run in the layout of the stores written before: one head_attention file (as the writer
    wrote it then, with the run's identity) and no stored subspace_effects."""
    old = tmp_path / "one-file"
    shutil.copytree(run, old)
    identity = integrity.stored_identity(layout.files(old, "head_attention")[0])
    write_parquet(TABLES["head_attention"], read_table(old, "head_attention"), old / "head_attention.parquet", identity)
    shutil.rmtree(old / "head_attention")
    (old / "subspace_effects.parquet").unlink()
    return old


def test_a_run_of_the_one_file_layout_reads_reports_and_resumes(tiny_bert_run, tmp_path, capsys):
    cfg, fresh = tiny_bert_run
    old = one_file_copy(fresh, tmp_path)
    new_con, old_con = connect(fresh), connect(old)
    order = "ORDER BY layer, head, pair_id"
    assert old_con.execute(f"SELECT * FROM head_attention {order}").fetchall() == \
        new_con.execute(f"SELECT * FROM head_attention {order}").fetchall()
    # the view computes what the job stored (the job's numpy means against DuckDB's UNPIVOT and join)
    assert is_stored(new_con, "subspace_effects") and not is_stored(old_con, "subspace_effects")
    assert new_con.execute("DESCRIBE subspace_effects").fetchall() == old_con.execute("DESCRIBE subspace_effects").fetchall()
    cols = "condition_id, layer, head, metric, n, mean, baseline, delta, sd_delta"
    stored = new_con.execute(f"SELECT {cols} FROM subspace_effects ORDER BY condition_id, metric").fetchall()
    viewed = old_con.execute(f"SELECT {cols} FROM subspace_effects ORDER BY condition_id, metric").fetchall()
    assert len(stored) == len(viewed) > 0
    for a, b in zip(stored, viewed):
        assert a[:5] == b[:5] and np.allclose(a[5:], b[5:], rtol=1e-6, atol=1e-9)
    assert report.main([str(fresh)]) == 0
    want = capsys.readouterr().out
    assert report.main([str(old)]) == 0
    assert capsys.readouterr().out.replace(str(old), str(fresh)) == want  # the same report but for the folder's name

    with single_thread():
        run(dataclasses.replace(cfg, out=old))  # the same command on the older folder
    assert (old / "head_attention.parquet").exists() and not (old / "head_attention").exists()  # not rewritten
    assert (old / "subspace_effects.parquet").read_bytes() == (fresh / "subspace_effects.parquet").read_bytes()
    same = {f.relative_to(fresh) for f in table_files(fresh)} - {f.relative_to(fresh) for f in layout.files(fresh, "head_attention")}
    assert {p for p in same if (old / p).read_bytes() != (fresh / p).read_bytes()} == set()

