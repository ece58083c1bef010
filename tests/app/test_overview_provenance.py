"""The Overview's provenance, shown plainly (not inside the manifest's JSON): judged pairs skipped and why, queries
used, the analyses present and the command that adds the missing ones."""

from __future__ import annotations

import duckdb
import pytest

from tests.app.synthetic import build_run

RUN = "trec-dl-2020__skip-ce"
SKIPPED = {"relevant": 5, "hard": 7, "easy": 0}


@pytest.fixture(scope="module")
def skip_store(tmp_path_factory):
    """A run without optional tables whose job skipped judged pairs (passages missing from the collection)."""
    store = tmp_path_factory.mktemp("skip-store")
    run = build_run(store, model="skip-ce", optional=False)
    counts = duckdb.sql(f"SELECT neg_type, count(*) AS n FROM read_parquet('{run / 'pairs.parquet'}') GROUP BY ALL").df()
    kept = dict(zip(counts["neg_type"], counts["n"].astype(int)))
    build_run(store, model="skip-ce", optional=False, manifest_overrides={
        "counts": {"pairs": sum(kept.values()), "queries": 6, "neg_type": kept, "skipped": SKIPPED, "truncated": 0},
        "parameters": {"max_queries": 6, "easy_negatives": 2, "seed": 0, "max_length": 512}})
    return store, kept


def test_skipped_pairs_queries_and_missing_analyses(app, skip_store):
    store, _ = skip_store
    at = app(store, run=RUN)
    assert not at.exception and not at.error
    judged = duckdb.sql(f"SELECT count(*) AS n, count(DISTINCT qid) AS q FROM read_parquet('{store / RUN / 'pairs.parquet'}') "
                        "WHERE neg_type IN ('relevant', 'hard')").df().iloc[0]
    skipped = SKIPPED["relevant"] + SKIPPED["hard"]
    warning = [w.value for w in at.warning if "judged pairs were skipped" in w.value]
    assert warning == [f"**{skipped} of {int(judged['n']) + skipped} judged pairs were skipped** because their passage "
                       f"text is missing from the collection (relevant 5, hard 7): the model scores, nDCG@10 and every "
                       f"statistic of this run rest on the {int(judged['n'])} judged pairs kept."]
    text = [m.value for m in at.markdown]
    assert any(t.startswith(f"**{int(judged['q'])} queries used** (the first 6 judged queries") for t in text), text
    assert any(t.startswith("**Not computed yet:**") and "Components" in t for t in text), text
    command = [c.value for c in at.code if c.value.startswith("python -m precompute")]
    assert len(command) == 1
    assert "--ablations directions,groups,layers,heads,components,subspace,aligned" in command[0]
    assert "--patching tfc1,tfc2,stmc1,cls" in command[0]


def test_a_run_without_skips_says_so(app, store):
    from tests.app.conftest import DL20

    at = app(store, run=DL20)
    assert not any("skipped" in w.value for w in at.warning)
    assert any(m.value.startswith("No judged pair was skipped") for m in at.markdown)
    assert any(m.value.startswith("**Analyses in this run:**") and "Activation patching, experiment tfc1" in m.value
               for m in at.markdown)
