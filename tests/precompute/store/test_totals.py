"""head_attention_totals (schema 9): head_attention_agg summed over queries, stored by the job and read by the reader
whenever a slice names no queries; stores of schema 8 and older get a view of the same name."""

from __future__ import annotations

import json
import shutil

import duckdb
import numpy as np
import pandas as pd
import pytest

import matching_atlas as ma
from matching_atlas.slice import Slice
from precompute.store.connect import connect, is_stored
from precompute.store.schema import TABLES

KEYS = ["layer", "head", "neg_type", "grade"]


def _stored(run):
    return duckdb.sql(f"SELECT * FROM '{run / 'head_attention_totals.parquet'}' ORDER BY layer, head, neg_type, grade").df()


def test_the_job_stores_the_aggregate_summed_over_queries(tiny_bert_run):
    """Equal to pandas' sum of head_attention_agg over its queries (an independent computation), in the schema's
    columns and order."""
    _, run = tiny_bert_run
    totals = _stored(run)
    agg = duckdb.sql(f"SELECT * FROM '{run / 'head_attention_agg.parquet'}'").df()
    assert agg["qid"].nunique() >= 3 and list(totals.columns) == TABLES["head_attention_totals"].column_names
    sums = [c for c in totals.columns if c not in KEYS]
    want = agg.groupby(KEYS)[sums].sum(min_count=1).reset_index().sort_values(KEYS).reset_index(drop=True)
    assert totals[KEYS].values.tolist() == want[KEYS].values.tolist() and len(totals) < len(agg)
    np.testing.assert_allclose(totals[sums].to_numpy(float), want[sums].to_numpy(float), rtol=1e-12, equal_nan=True)


@pytest.fixture(scope="module")
def schema_8_copy(tiny_bert_run, tmp_path_factory):
    """The run as schema 8 wrote it: no head_attention_totals file."""
    _, run = tiny_bert_run
    old = tmp_path_factory.mktemp("schema8") / run.name
    shutil.copytree(run, old)
    (old / "head_attention_totals.parquet").unlink()
    (old / "atlas.duckdb").unlink(missing_ok=True)
    manifest = json.loads((old / "manifest.json").read_text())
    manifest["schema_version"] = 8
    (old / "manifest.json").write_text(json.dumps(manifest))
    return old


def test_an_older_store_gets_a_view_with_the_same_rows(tiny_bert_run, schema_8_copy):
    _, run = tiny_bert_run
    con = connect(schema_8_copy)
    assert not is_stored(con, "head_attention_totals")
    view = con.execute("SELECT * FROM head_attention_totals ORDER BY layer, head, neg_type, grade").df()
    stored = _stored(run)
    assert view[KEYS].values.tolist() == stored[KEYS].values.tolist()
    np.testing.assert_allclose(view.drop(columns=KEYS).to_numpy(float), stored.drop(columns=KEYS).to_numpy(float),
                               rtol=1e-12, equal_nan=True)


@pytest.mark.parametrize("sl", [Slice(), Slice(layers=(1, 1), neg_types=("relevant", "hard"), grades=(0, 1))])
def test_the_reader_reads_the_totals_unless_the_slice_names_queries_and_the_numbers_agree(tiny_bert_run,
                                                                                        schema_8_copy, sl):
    """Naming every query sends the reader to head_attention_agg; the numbers are the totals' (and a schema-8 copy's,
    through its view)."""
    _, path = tiny_bert_run
    run, old = ma.open_run(path, progress=False), ma.open_run(schema_8_copy, progress=False)
    every = sl.with_(qids=tuple(run.queries()["qid"]))
    for name, args in (("direction_matrix", ()), ("direction_by_layer", ()), ("head_means", ("q_d",)),
                       ("head_difference", ("q_d", "relevant_vs_easy"))):
        got = getattr(run, name)(*args, where=sl)
        for other in (getattr(run, name)(*args, where=every), getattr(old, name)(*args, where=sl)):
            pd.testing.assert_frame_equal(got, other, check_dtype=False, rtol=1e-9)
    assert run.shape().values.tolist() == old.shape().values.tolist()
