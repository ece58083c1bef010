"""The share of the score gap each patched activation recovers in a slice (ratio of sums and thresholded mean, with
bootstrap intervals over the slice's queries): the whole run's come from patching_summary; a slice of the run's
pairs sums each activation per query in SQL and resamples those sums. Checked against the job's own summary
function applied to the slice's pairs (precompute.analyses.patching_ranking.summary_columns), an independent path
from the pair-level effects. On the synthetic run of tests/app/synthetic.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import matching_atlas as ma
from matching_atlas.patching import ROBUST
from matching_atlas.slice import Slice
from precompute.analyses.patching_ranking import rows_of, settings_of, summary_columns
from tests.app.synthetic import build_run

STATISTICS = [c for c in ROBUST if c != "n_queries"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return ma.open_run(build_run(tmp_path_factory.mktemp("store")), progress=False)


def _job_summary(run, experiment: str, qids: list[str]) -> pd.DataFrame:
    """What the job's summary gives over the patch pairs of ``qids`` only (exact method)."""
    table = run.connection.sql(
        "SELECT e.experiment, e.method, e.patch_id, p.qid, e.layer, e.head, e.component, e.segment, e.clean, "
        "e.corrupted, e.patched FROM patching_effects e JOIN pairs p USING (pair_id) "
        f"WHERE e.experiment = '{experiment}' AND e.method = 'exact' AND p.qid IN ({', '.join(map(repr, qids))})"
    ).to_arrow_table()
    columns = summary_columns(rows_of(table), settings_of(run.info.manifest.patching))
    frame = pd.DataFrame({k: np.ma.filled(v.astype(float), np.nan) if k in ("head", "rank") else np.ma.getdata(v)
                          for k, v in columns.items()})
    return frame[frame["component"] == "head"].astype({"layer": int, "head": int}).sort_values(["layer", "head"])


def _queries(run, experiment: str) -> list[str]:
    return [r[0] for r in run.connection.execute(
        "SELECT DISTINCT p.qid FROM patching_pairs pp JOIN pairs p USING (pair_id) WHERE pp.experiment = ? ORDER BY 1",
        [experiment]).fetchall()]


@pytest.mark.parametrize("experiment", ["tfc1", "cls"])
def test_the_whole_run_shows_the_stored_summary(run, experiment):
    heads = run.patching_heads(experiment)
    stored = run.patching_summary(experiment, "exact")
    stored = stored[stored["component"] == "head"].astype({"layer": int, "head": int}).sort_values(["layer", "head"])
    assert len(heads) >= 9 and heads[["layer", "head"]].values.tolist() == stored[["layer", "head"]].values.tolist()
    np.testing.assert_array_equal(heads[ROBUST].to_numpy(float), stored[ROBUST].to_numpy(float))


@pytest.mark.parametrize("experiment", ["tfc1", "cls"])
def test_a_slice_of_every_query_computes_the_stored_numbers_from_per_query_sums(run, experiment):
    """Naming every query makes the reader aggregate (a slice filter), over the same pairs as the stored summary."""
    every = Slice(qids=tuple(_queries(run, experiment)))
    sliced, stored = run.patching_heads(experiment, where=every), run.patching_heads(experiment)
    assert (sliced["n_queries"] == stored["n_queries"]).all() and sliced["n_queries"].min() >= 3
    np.testing.assert_allclose(sliced[STATISTICS].to_numpy(float), stored[STATISTICS].to_numpy(float), rtol=1e-9,
                               atol=1e-12)
    comps, comps_stored = run.patching_components(experiment, where=every), run.patching_components(experiment)
    np.testing.assert_allclose(comps[STATISTICS].to_numpy(float), comps_stored[STATISTICS].to_numpy(float), rtol=1e-9,
                               atol=1e-12)


def test_a_slice_of_some_queries_equals_the_jobs_summary_of_their_pairs(run):
    qids = _queries(run, "tfc1")[::2]
    assert 2 <= len(qids) < len(_queries(run, "tfc1"))
    sliced = run.patching_heads("tfc1", where=Slice(qids=tuple(qids)))
    job = _job_summary(run, "tfc1", qids)
    assert sliced[["layer", "head"]].values.tolist() == job[["layer", "head"]].values.tolist()
    assert (sliced["n_queries"] == len(qids)).all()
    np.testing.assert_allclose(sliced[STATISTICS].to_numpy(float), job[STATISTICS].to_numpy(float), rtol=1e-9,
                               atol=1e-12)
    whole = run.patching_heads("tfc1")
    assert not np.allclose(sliced["ratio"], whole["ratio"])  # the slice's own numbers, not the whole run's
    ratio = (sliced["ratio"] >= sliced["ratio_low"]) & (sliced["ratio"] <= sliced["ratio_high"])
    assert ratio[sliced["ratio"].notna()].all()


def test_the_slice_layers_and_heads_filter_the_robust_columns(run):
    sl = Slice(layers=(1, 2), heads=(0, 3))
    heads = run.patching_heads("tfc1", where=sl)
    assert heads[["layer", "head"]].values.tolist() == [[1, 0], [1, 3], [2, 0], [2, 3]]
    whole = run.patching_heads("tfc1").set_index(["layer", "head"])
    np.testing.assert_array_equal(heads.set_index(["layer", "head"])[ROBUST].to_numpy(float),
                                  whole.loc[[(1, 0), (1, 3), (2, 0), (2, 3)], ROBUST].to_numpy(float))
