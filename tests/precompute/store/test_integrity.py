"""What the job reads back is verified: a damaged part is recomputed, a damaged table rebuilt or named in one
line (exit 2), never merged or trusted; the run's identity survives a deleted manifest; a full disk is one line."""

from __future__ import annotations

import errno
import json
import random
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from precompute.cli import main
from precompute.job import run
from precompute.store import integrity, layout
from precompute.store.manifest import read_manifest
from precompute.store.schema import TABLES
from precompute.store.writer import RunWriter
from tests.precompute.crashing import killed_at, single_thread, tables
from tests.tiny_models import build


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def flip(path: Path, n: int = 200, seed: int = 0) -> None:
    """Flip ``n`` bytes in the middle third of a file (its pages), leaving the footer readable."""
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for _ in range(n):
        i = rng.randrange(len(data) // 3, 2 * len(data) // 3)
        data[i] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def args_of(cfg) -> list[str]:
    return ["--dataset", cfg.dataset, "--model", cfg.model, "--out", str(cfg.out), "--cache", str(cfg.cache),
            "--easy-negatives", str(cfg.easy_negatives), "--max-queries", str(cfg.max_queries),
            "--batch-size", str(cfg.batch_size), "--chunk-size", str(cfg.chunk_size), "--ablations", "groups",
            "--no-progress"]


def copy_of(fresh: Path, tmp_path: Path) -> Path:
    root = tmp_path / "run"
    shutil.copytree(fresh, root)
    return root


# -- parts -----------------------------------------------------------------------------------------------------


@pytest.mark.slow  # crash injection: the job is killed at a crash point, then rerun
@pytest.mark.parametrize("point, table", [("summaries.chunk:2", "head_attention"), ("ablations.part:3", "ablation_scores")])
def test_a_damaged_part_is_recomputed(point, table, small_runs, tmp_path, capsys):
    config, fresh, _ = small_runs
    cfg = config(tmp_path / "run")
    assert killed_at(cfg, point) < 0
    part = sorted((cfg.out / "_parts" / table).rglob("*.parquet"))[0]  # (head_attention: in its layer folders)
    flip(part)
    capsys.readouterr()
    run(cfg)
    assert f"{part} is damaged" in capsys.readouterr().err  # named, deleted, computed again
    assert tables(cfg.out) == tables(fresh)


# -- finished tables -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("table, damage", [
    ("head_attention_agg", truncate), ("head_attention_agg", flip), ("svd", truncate), ("head_contrasts", flip),
    ("ablation_metrics", flip), ("ablation_summary", truncate), ("ablation_conditions", flip),
])
def test_a_damaged_derived_table_is_rebuilt(table, damage, small_runs, tmp_path, capsys):
    config, fresh, _ = small_runs
    root = copy_of(fresh, tmp_path)
    damage(root / f"{table}.parquet")
    capsys.readouterr()
    assert main(args_of(config(root))) == 0
    assert f"{root / table}.parquet" in capsys.readouterr().err
    assert tables(root) == tables(fresh)


@pytest.mark.parametrize("table", ["pairs", "head_attention", "ablation_scores"])
def test_a_damaged_table_of_computed_work_is_named(table, small_runs, tmp_path, capsys):
    """Hours of work are not silently recomputed: one line names the file (one layer's file of head_attention) and
    says what to do; exit 2."""
    config, fresh, _ = small_runs
    root = copy_of(fresh, tmp_path)
    files = layout.files(root, table)
    damaged = files[len(files) // 2]
    flip(damaged)
    capsys.readouterr()
    assert main(args_of(config(root))) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {damaged}") and "delete it and rerun" in err, err


def test_verify_catches_flipped_bytes_anywhere(tmp_path):
    """Page checksums, row counts and statistics: 60 damaged copies (1 or 200 flipped bytes, in the pages or
    anywhere, footer included) either fail verification or still hold exactly the data written."""
    import pyarrow.parquet as pq

    spec = TABLES["head_attention"]
    rng = np.random.default_rng(0)
    data = pa.table({c.name: pa.array((rng.random(5000) * (1 if pa.types.is_floating(c.type) else 100))  # in bounds
                                      .astype(c.type.to_pandas_dtype()), c.type)
                     for c in spec.columns}).cast(spec.schema)
    path = tmp_path / "t.parquet"
    integrity.write(data, path, table=spec.name, identity={"model": "m"}, row_group_size=1000)
    original, caught = path.read_bytes(), 0
    for seed in range(60):
        path.write_bytes(original)
        if seed % 3:
            flip(path, n=200 if seed % 2 else 1, seed=seed)
        else:
            flip_anywhere(path, seed)
        try:
            integrity.verify(path, spec.name, spec.schema)
        except integrity.CorruptFile:
            caught += 1
            continue
        assert pq.read_table(path).equals(data), f"seed {seed}: changed data passed verification"
    assert caught >= 55


def flip_anywhere(path: Path, seed: int) -> None:
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    for _ in range(200):
        i = rng.randrange(len(data))
        data[i] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))


# -- identity --------------------------------------------------------------------------------------------------


def test_deleted_manifest_another_model_is_refused(small_runs, tmp_path, capsys):
    config, fresh, _ = small_runs
    root = copy_of(fresh, tmp_path)
    (root / "manifest.json").unlink()
    other = build("bert", tmp_path / "other", seed=1)
    capsys.readouterr()
    assert main([*args_of(config(root)), "--model", str(other)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: model differs from the run already in this folder"), err
    assert not (root / "manifest.json").exists()


def test_deleted_manifest_is_rebuilt_with_every_section(small_runs, tmp_path):
    config, fresh, _ = small_runs
    root = copy_of(fresh, tmp_path)
    (root / "manifest.json").unlink()
    run(config(root))
    before, after = read_manifest(fresh).to_dict(), read_manifest(root).to_dict()
    for volatile in ("timings", "invocations", "created", "versions"):
        before.pop(volatile), after.pop(volatile)
    before["ablations"]["last_request"].pop("computed_now"), after["ablations"]["last_request"].pop("computed_now")
    assert after == before and {"spectra", "contrasts", "ablations"} <= set(after)
    assert tables(root) == tables(fresh)


def test_tables_without_identity_and_no_manifest_are_refused(tiny_dataset, tmp_path, capsys):
    model = build("bert", tmp_path / "model")
    root = tmp_path / "run"
    RunWriter(root).write_table("svd", TABLES["svd"].schema.empty_table())  # what an older version wrote
    capsys.readouterr()
    assert main(["--dataset", str(tiny_dataset), "--model", str(model), "--out", str(root), "--no-progress",
                 "--cache", str(tmp_path / "cache")]) == 2
    err = capsys.readouterr().err
    assert "holds tables but no manifest.json" in err and "svd.parquet" in err


def test_a_damaged_manifest_is_named(small_runs, tmp_path, capsys):
    config, fresh, _ = small_runs
    root = copy_of(fresh, tmp_path)
    (root / "manifest.json").write_text('{"status": "compl')
    capsys.readouterr()
    assert main(args_of(config(root))) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{root / 'manifest.json'} is not valid JSON" in err and "the tables are kept" in err


# -- full disk -------------------------------------------------------------------------------------------------


def test_disk_full_is_one_line_and_the_parts_are_kept(small_runs, tmp_path, capsys, monkeypatch):
    """pyarrow raises OSError(ENOSPC) on the 4th file: one line naming the folder; the rerun finishes the run."""
    config, fresh, _ = small_runs
    cfg = config(tmp_path / "run")
    calls = []

    def full(real):
        def write(*args, **kwargs):
            calls.append(args[1])
            if len(calls) == 4:
                raise OSError(errno.ENOSPC, "[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device")
            return real(*args, **kwargs)
        return write

    for name in ("write", "write_batches"):  # every Parquet file the writer writes goes through one of these
        monkeypatch.setattr(integrity, name, full(getattr(integrity, name)))
    capsys.readouterr()
    assert main(args_of(cfg)) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: no space left on the device of {cfg.out}") and "finished parts are kept" in err
    assert len(list((cfg.out / "_parts").rglob("*.parquet"))) == 3
    monkeypatch.undo()
    assert main(args_of(cfg)) == 0
    assert tables(cfg.out) == tables(fresh)


def test_disk_full_on_a_real_small_filesystem(small_runs, tmp_path, capsys):
    """A 400 KiB tmpfs (root only: skipped elsewhere) fills up during the run."""
    import pyarrow.parquet as pq

    config, fresh, _ = small_runs
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        cfg = config(mount / "run")
        capsys.readouterr()
        assert main(args_of(cfg)) == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"error: no space left on the device of {cfg.out}"), err
        moved = tmp_path / "moved"
        shutil.copytree(cfg.out, moved)
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    for path in moved.rglob("*.parquet"):  # every file the full disk left is whole, so the rerun can use it
        if any(".tmp-" in part for part in path.relative_to(moved).parts):
            continue  # a temporary the full disk interrupted: never read, removed by the rerun (checked below)
        name = pq.read_metadata(path).metadata[integrity.TABLE.encode()].decode()
        integrity.verify(path, name, TABLES[name].schema)
    assert main(args_of(config(moved))) == 0
    assert not [p for p in moved.rglob("*") if ".tmp-" in p.name]
    assert tables(moved) == tables(fresh)
    assert json.loads((moved / "manifest.json").read_text())["status"] == "complete"


def test_head_attention_row_groups_never_straddle_two_heads(tiny_bert_run):
    """Per-head queries read only that head's row groups: each row group of head_attention holds one (layer, head)."""
    _, root = tiny_bert_run
    heads, groups = set(), 0
    for path in layout.files(root, "head_attention"):  # one file per layer
        f = pq.ParquetFile(path)
        for i in range(f.metadata.num_row_groups):
            group = f.read_row_group(i, columns=["layer", "head"]).to_pydict()
            pairs = set(zip(group["layer"], group["head"]))
            assert len(pairs) == 1, f"row group {i} of {path} holds {sorted(pairs)}"
            assert path.parent.name == f"layer={next(iter(pairs))[0]}"
            heads |= pairs
        groups += f.metadata.num_row_groups
    assert len(heads) == groups  # the tiny run's heads each fit one row group


def test_head_attention_pages_let_a_pair_lookup_skip_the_rest_of_its_row_group(tmp_path):
    """head_attention (one pair looked up on every head) is written in small pages with a page index and a
    delta-coded pair_id; a table without one-group row groups keeps the defaults (1 MB pages, dictionaries)."""
    spec = TABLES["head_attention"]
    n = 20_000
    data = pa.table({c.name: np.zeros(n, np.float32) for c in spec.columns if c.name not in ("layer", "head", "pair_id")})
    data = data.append_column("pair_id", pa.array(np.arange(n), pa.int32())).append_column(
        "layer", pa.array(np.zeros(n, np.int8))).append_column("head", pa.array(np.zeros(n, np.int8)))
    path = tmp_path / "h.parquet"
    integrity.write(data.select(spec.column_names).cast(spec.schema), path, table="head_attention", identity=None,
                    row_group_size=spec.row_group_rows)
    chunk = pq.ParquetFile(path).metadata.row_group(0).column(spec.column_names.index("pair_id"))
    assert "DELTA_BINARY_PACKED" in chunk.encodings and chunk.has_offset_index and chunk.has_column_index
    assert chunk.total_compressed_size < 2_000  # 20,000 ascending ids in a few bytes a page
    pages = pq.ParquetFile(path).metadata.row_group(0).column(spec.column_names.index("q_d"))
    assert pages.has_offset_index
    plain = integrity.options(TABLES["pairs"].schema, "pairs")
    assert "write_page_index" not in plain and "pair_id" in plain["use_dictionary"]


def test_grouped_row_groups_are_cut_at_the_size_limit_within_a_group(tmp_path):
    import pyarrow as pa

    from precompute.store import integrity, layout

    schema = pa.schema([("layer", pa.int8()), ("head", pa.int8()), ("v", pa.float32())])
    rows = [(0, 0)] * 25 + [(0, 1)] * 3 + [(1, 0)] * 10
    table = pa.table({"layer": [r[0] for r in rows], "head": [r[1] for r in rows], "v": [0.0] * len(rows)}, schema=schema)
    reader = pa.RecordBatchReader.from_batches(schema, table.to_batches(max_chunksize=7))
    path = tmp_path / "t.parquet"
    integrity.write_batches(reader, schema, path, table="t", identity=None, row_group_size=10, group_by=("layer", "head"))
    md = pq.ParquetFile(path).metadata
    assert [md.row_group(i).num_rows for i in range(md.num_row_groups)] == [10, 10, 5, 3, 10]


# -- bounds, identity, parallel verification ----------------------------------------------------------------------


def _valid_column(column, n: int) -> pa.Array:
    """``n`` values of ``column`` inside its schema bounds."""
    low, high = column.bounds or (None, None)
    if pa.types.is_list(column.type):
        return pa.array([[0.5]] * n, column.type)
    if pa.types.is_string(column.type):
        return pa.array(["x"] * n, column.type)
    if pa.types.is_boolean(column.type):
        return pa.array([False] * n, column.type)
    value = low if low is not None else (high if high is not None else 0)
    if (low, high) == (0.0, 1.0) or (low, high) == (-1.0, 1.0):
        value = 0.5
    return pa.array([value] * n, column.type)


def _outside(column) -> float:
    low, high = column.bounds
    return high + 0.5 if high is not None else low - 1  # beyond the float slack, and a whole integer step


@pytest.mark.parametrize("name", sorted(TABLES))
def test_every_bound_of_every_table_is_checked(name, tmp_path):
    """A value outside the bounds precompute.store.schema declares (a mass of 741.6, a negative count) fails
    verification naming the file, the column and the allowed range; the same table inside its bounds passes."""
    spec = TABLES[name]
    path = tmp_path / f"{name}.parquet"
    good = pa.table({c.name: _valid_column(c, 40) for c in spec.columns}).cast(spec.schema)
    integrity.write(good, path, table=name, identity=None, row_group_size=10)
    assert integrity.verify(path, name, spec.schema, threads=2) == 40
    assert spec.bounds, f"{name} declares no bounds"
    for column in spec.columns:
        if column.bounds is None:
            continue
        values = good.column(column.name).to_pylist()
        values[27] = _outside(column)  # in the third of four row groups
        bad = good.set_column(good.schema.get_field_index(column.name), column.name, pa.array(values, column.type))
        integrity.write(bad, path, table=name, identity=None, row_group_size=10)
        with pytest.raises(integrity.CorruptFile) as err:
            integrity.verify(path, name, spec.schema, threads=2)
        assert f"column {column.name} of row group 2" in str(err.value) and "outside the range" in str(err.value)


def test_nan_and_null_are_not_out_of_bounds(tmp_path):
    """NaN and NULL mean "undefined" (a causal model's impossible directions): verification lets them through."""
    spec = TABLES["head_attention"]
    data = pa.table({c.name: _valid_column(c, 4) for c in spec.columns}).cast(spec.schema)
    data = data.set_column(data.schema.get_field_index("q_d"), "q_d", pa.array([float("nan"), None, 0.5, 1.0],
                                                                                pa.float32()))
    integrity.write(data, tmp_path / "h.parquet", table="head_attention", identity=None, row_group_size=2)
    assert integrity.verify(tmp_path / "h.parquet", "head_attention", spec.schema) == 4


def test_the_footer_names_a_table_of_another_run(tmp_path):
    spec = TABLES["svd"]
    data = pa.table({c.name: _valid_column(c, 3) for c in spec.columns}).cast(spec.schema)
    path = tmp_path / "svd.parquet"
    integrity.write(data, path, table="svd", identity={"model": "/models/a", "seed": 1}, row_group_size=3)
    integrity.check_footer(path, "svd", spec.schema, rows=3, identity={"model": "/models/a", "seed": 1})
    with pytest.raises(integrity.CorruptFile, match=r"was written by another run: its model is '/models/a', the "
                                                    r"manifest's is '/models/b'"):
        integrity.verify(path, "svd", spec.schema, identity={"model": "/models/b", "seed": 1})
    with pytest.raises(integrity.CorruptFile, match="has 3 rows, the manifest recorded 4"):
        integrity.check_footer(path, "svd", spec.schema, rows=4)
    with pytest.raises(integrity.CorruptFile, match=r"lacks the column\(s\) extra of the store schema"):
        integrity.check_footer(path, "svd", spec.schema.append(pa.field("extra", pa.int8())))
    with pytest.raises(integrity.CorruptFile, match="holds column k as int16, the store schema's type is int32"):
        integrity.check_footer(path, "svd", spec.schema.set(3, pa.field("k", pa.int32())))
    integrity.write(data, path, table="svd", identity=None, row_group_size=3)
    with pytest.raises(integrity.CorruptFile, match="does not record which run wrote it"):
        integrity.check_footer(path, "svd", spec.schema, identity={"model": "/models/a"})


def test_parallel_verification_reports_progress_and_finds_the_damage(tmp_path):
    spec = TABLES["head_attention"]
    rng = np.random.default_rng(1)
    data = pa.table({c.name: pa.array((rng.random(20_000) * (1 if pa.types.is_floating(c.type) else 100))
                                      .astype(c.type.to_pandas_dtype()), c.type) for c in spec.columns}).cast(spec.schema)
    path = tmp_path / "head_attention.parquet"
    integrity.write(data, path, table="head_attention", identity=None, row_group_size=500)
    seen: list[int] = []
    assert integrity.verify(path, "head_attention", spec.schema, threads=2, progress=seen.append) == 20_000
    assert seen == sorted(seen) and seen[-1] == 20_000
    flip(path, n=1, seed=3)
    with pytest.raises(integrity.CorruptFile):
        integrity.verify(path, "head_attention", spec.schema, threads=2)
