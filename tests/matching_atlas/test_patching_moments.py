"""The whole run's patching moments (n, n_null, mean, sd per activation: schema 8) are read from patching_summary and
equal what aggregating patching_effects gives; a slice of queries still aggregates the effects; a store of schema 7,
whose summary lacks them, opens and gives the same numbers from the effects. On a synthetic run whose every 5th patch
pair has |clean - corrupted| below epsilon (NULL effects) and defined effects elsewhere (tests/app/synthetic.py)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

import matching_atlas as ma
from matching_atlas.slice import Slice
from tests.app.synthetic import build_run

MOMENTS = ["mean", "sd", "ci_lo", "ci_hi"]


def _as_schema_7(run, dest):
    """A copy of ``run`` as schema 7 wrote it: patching_summary without n_null and sd (its footer metadata kept)."""
    shutil.copytree(run, dest)
    path = dest / "patching_summary.parquet"
    file = pq.ParquetFile(path)
    kept = {k: v for k, v in (file.metadata.metadata or {}).items() if not k.startswith(b"ARROW")}
    pq.write_table(file.read().drop_columns(["n_null", "sd"]).replace_schema_metadata(kept), path)
    manifest = json.loads((dest / "manifest.json").read_text())
    manifest["schema_version"] = 7
    (dest / "manifest.json").write_text(json.dumps(manifest))
    return dest


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    folder = build_run(tmp_path_factory.mktemp("store"))
    older = _as_schema_7(folder, tmp_path_factory.mktemp("schema7") / folder.name)
    return ma.open_run(folder, progress=False), ma.open_run(older, progress=False)


def _scanned(run, name, *args, **kwargs):
    """``run.<name>(...)`` computed from patching_effects (the stored moments ignored), on the same connection."""
    run._moments_stored = lambda *a: False
    try:
        return getattr(run, name)(*args, **kwargs)
    finally:
        del run._moments_stored


@pytest.mark.parametrize("name, keys", [("patching_heads", ["layer", "head"]),
                                        ("patching_components", ["layer", "component", "segment"])])
@pytest.mark.parametrize("experiment", ["tfc1", "cls"])
def test_the_stored_moments_equal_the_aggregated_effects(runs, name, keys, experiment):
    run, _ = runs
    assert run._moments_stored(experiment, "exact")
    stored, scanned = getattr(run, name)(experiment), _scanned(run, name, experiment)
    assert len(stored) >= 9 and stored[keys].values.tolist() == scanned[keys].values.tolist()
    assert (stored["n_null"] > 0).all() and (stored["n"] > 2).all()  # NULL and defined effects in every cell
    assert (stored[["n", "n_null"]].values == scanned[["n", "n_null"]].values).all()
    np.testing.assert_allclose(stored[MOMENTS].astype(float), scanned[MOMENTS].astype(float), rtol=1e-5, atol=1e-6)


def test_the_slice_layers_and_heads_filter_the_stored_moments(runs):
    run, _ = runs
    sl = Slice(layers=(1, 2), heads=(0, 3))
    stored, scanned = run.patching_heads("tfc1", where=sl), _scanned(run, "patching_heads", "tfc1", where=sl)
    assert stored[["layer", "head"]].values.tolist() == [[1, 0], [1, 3], [2, 0], [2, 3]]
    np.testing.assert_allclose(stored[MOMENTS].astype(float), scanned[MOMENTS].astype(float), rtol=1e-5)


def test_a_slice_of_queries_aggregates_the_effects(runs):
    run, _ = runs
    qid = run.connection.execute("SELECT qid FROM patching_pairs WHERE experiment = 'tfc1' LIMIT 1").fetchone()[0]
    one = run.patching_heads("tfc1", where=Slice(qids=(qid,)))
    every = run.patching_heads("tfc1")
    assert 0 < one["n"].max() < every["n"].min()  # that query's pairs only: not the stored whole-run moments


def test_the_null_pairs_come_from_the_summary_and_match_the_distinct_count(runs):
    run, _ = runs
    stored, scanned = run.patching_experiments(), _scanned(run, "patching_experiments")
    assert stored.equals(scanned) and (stored["null_pairs"] > 0).all()


def test_a_schema_7_store_opens_and_gives_the_same_numbers(runs):
    run, older = runs
    assert not older._moments_stored() and older.info.manifest.schema_version == 7
    assert older.patching_summary()[["n_null", "sd"]].isna().all().all()
    for experiment in ("tfc1", "cls"):
        for name in ("patching_heads", "patching_components"):
            np.testing.assert_allclose(getattr(older, name)(experiment)[["n", "n_null", *MOMENTS]].astype(float),
                                       getattr(run, name)(experiment)[["n", "n_null", *MOMENTS]].astype(float),
                                       rtol=1e-5, atol=1e-6)
    assert older.patching_experiments().equals(run.patching_experiments())
