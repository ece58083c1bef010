"""kill -9 at every crash point of every stage, then a rerun: the run folder ends byte-identical to an
uninterrupted run's (precompute.crash declares the points; the job dies there by SIGKILL, no cleanup)."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path

import pytest

from precompute import crash
from precompute.job import run
from precompute.store.manifest import read_manifest
from tests.precompute.crashing import killed_at, single_thread, tables

pytestmark = pytest.mark.slow  # every test kills a job and reruns it

# (point, n-th pass) in a fresh run (summaries, spectra, contrasts, groups ablations)...
FRESH = [
    "summaries.part:2", "summaries.chunk:1", "summaries.staged", "summaries.committed", "summaries.installing:2",
    "summaries.installed", "spectra.written", "contrasts.written", "manifest.temporary:3", "job.stage:2", "job.catalog",
]
# ... and in a rerun adding conditions (the groups at layer 1) to a finished run: the ablation commit's case.
ADDING = [
    "ablations.settings", "ablations.definitions", "ablations.part:2", "ablations.staged", "ablations.committed",
    "ablations.installing:1", "ablations.installing:3", "ablations.installed",
]
# ... and in a rerun adding a mean-mode component condition and the tfc1 patching experiment to a finished run.
ANALYSES = [
    "component_means.part", "component_means.staged", "component_means.committed", "component_means.installing",
    "component_means.installed", "patching.part", "patching.staged", "patching.committed", "patching.installing:1",
    "patching.installed",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():  # tiny tensors: one thread is faster than two fighting other tests for the cores
        yield


def assert_repaired(root: Path, reference: Path) -> None:
    assert tables(root) == tables(reference)  # same tables, byte for byte
    assert not (root / "_parts").exists() and not (root / "_staged").exists()
    assert not list(root.rglob(".*.tmp-*"))
    manifest, want = read_manifest(root), read_manifest(reference)
    assert manifest.status == "complete"
    assert manifest.to_dict()["tables"] == want.to_dict()["tables"]
    assert manifest.ablations.conditions == want.ablations.conditions


def test_every_point_is_tested():
    assert {p.split(":")[0] for p in FRESH + ADDING + ANALYSES} == set(crash.POINTS)


@pytest.mark.parametrize("point", FRESH)
def test_kill_in_a_fresh_run_then_rerun(point, small_runs, tmp_path):
    config, fresh, _ = small_runs
    cfg = config(tmp_path / "run")
    assert killed_at(cfg, point) == -signal.SIGKILL, f"the job never reached {point}"
    run(cfg)
    assert_repaired(cfg.out, fresh)
    assert [i.status for i in read_manifest(cfg.out).invocations] == ["running", "complete"]  # the killed job kept


@pytest.mark.parametrize("point", ADDING)
def test_kill_while_adding_conditions_then_rerun(point, small_runs, tmp_path):
    config, fresh, added = small_runs
    shutil.copytree(fresh, tmp_path / "run")
    cfg = config(tmp_path / "run", "all", "1")
    assert killed_at(cfg, point) == -signal.SIGKILL, f"the job never reached {point}"
    run(cfg)
    assert_repaired(cfg.out, added)


@pytest.mark.parametrize("point", ANALYSES)
def test_kill_while_adding_component_means_and_patching_then_rerun(point, small_runs, tmp_path):
    from dataclasses import replace

    config, fresh, _ = small_runs
    analysed = tmp_path / "reference"
    shutil.copytree(fresh, analysed)
    extra = dict(ablation_components=("mlp@1:d/mean",), patching=("tfc1",))
    run(replace(config(analysed), **extra))
    shutil.copytree(fresh, tmp_path / "run")
    cfg = replace(config(tmp_path / "run"), **extra)
    assert killed_at(cfg, point) == -signal.SIGKILL, f"the job never reached {point}"
    run(cfg)
    assert tables(cfg.out) == tables(analysed)
    assert not (cfg.out / "_parts").exists() and not (cfg.out / "_staged").exists()
    assert read_manifest(cfg.out).patching.experiments == ["tfc1"]


def test_identical_runs_write_identical_bytes(small_runs, tmp_path):
    """Every table of a second run equals the first's byte for byte."""
    config, fresh, _ = small_runs
    again = run(config(tmp_path / "again"))
    assert tables(again) == tables(fresh) and len(tables(fresh)) >= 9


def test_aggregates_are_exact_and_do_not_depend_on_thread_timing(tmp_path):
    """head_attention_agg merged 3 times from the same 20 parts: identical bytes (DuckDB's parallel sums, used
    before, differed in the last bits from one merge to the next), and equal to SQL's sums (NULLs skipped)."""
    import duckdb
    import numpy as np
    import pyarrow as pa

    from precompute.metrics import METRICS
    from precompute.stages.summary_stage import AGG, HEADS, PAIRS, TOTALS, stage_aggregate
    from precompute.store import layout
    from precompute.store.schema import TABLES
    from precompute.store.writer import RunWriter

    writer, rng, per = RunWriter(tmp_path), np.random.default_rng(0), 100
    for k in range(20):
        ids = np.arange(k * per, (k + 1) * per, dtype=np.int32)
        pairs = {c.name: pa.nulls(per, c.type) if c.nullable else pa.array([False if pa.types.is_boolean(c.type) else
                 "x" if pa.types.is_string(c.type) else 0] * per, c.type) for c in TABLES[PAIRS].columns}
        pairs.update(pair_id=pa.array(ids), qid=pa.array([str(i % 3) for i in ids]), neg_type=pa.array(["hard"] * per),
                     grade=pa.array(np.zeros(per, np.int8)))
        writer.write_part(PAIRS, f"{k:06d}", pa.table(pairs))
        heads = {"pair_id": np.repeat(ids, 4), "layer": np.tile(np.repeat(np.arange(2, dtype=np.int8), 2), per),
                 "head": np.tile(np.arange(2, dtype=np.int8), 2 * per)}
        values = {m: (rng.random(4 * per) * 10.0 ** rng.integers(-8, 3, 4 * per)).astype(np.float32) for m in METRICS}
        heads.update({m: pa.array(v, mask=(v < 1e-7) if m == METRICS[0] else None) for m, v in values.items()})
        heads[METRICS[1]] = pa.nulls(4 * per, pa.float32())  # a metric undefined everywhere: NULL sums
        writer.write_part(HEADS, f"{k:06d}", pa.table(heads))
    merged = set()
    for _ in range(3):
        for table in (HEADS, PAIRS):
            writer.merge_parts(table, staged=True)
        stage_aggregate(writer, writer.staged_path(HEADS), writer.staged_path(PAIRS))
        merged.add((writer.staged_path(AGG).read_bytes(), writer.staged_path(TOTALS).read_bytes()))
    assert len(merged) == 1  # the aggregate and its totals over queries: the same bytes every time
    got = duckdb.sql(f"SELECT * FROM '{writer.staged_path(AGG)}' ORDER BY ALL").fetchnumpy()
    want = duckdb.sql(
        "SELECT h.layer, h.head, p.qid, p.neg_type, p.grade, count(*) AS n, "
        + ", ".join(f"sum(CAST(h.{m} AS DOUBLE)) AS {m}_sum, sum(CAST(h.{m} AS DOUBLE) ^ 2) AS {m}_sumsq" for m in METRICS)
        + f" FROM {layout.scan_sql(writer.staged_path(HEADS), HEADS)} h JOIN '{writer.staged_path(PAIRS)}' p"
        " USING (pair_id) GROUP BY ALL ORDER BY ALL"
    ).fetchnumpy()
    for name, column in want.items():
        if name.endswith(("_sum", "_sumsq")):
            np.testing.assert_allclose(np.ma.filled(got[name], np.nan), np.ma.filled(column, np.nan), rtol=1e-12, err_msg=name)
        else:
            assert list(got[name]) == list(column), name
    assert np.ma.getmaskarray(got[f"{METRICS[1]}_sum"]).all()
