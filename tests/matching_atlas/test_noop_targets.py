"""Run.noop_targets (the no-op check the Findings page and the report read): the mass relevant pairs' query and
document tokens give [CLS] and the separators by layer equals a direct DuckDB computation on head_attention and pairs;
without value-weighted columns the shares are NaN."""

from __future__ import annotations

import duckdb
import numpy as np

import matching_atlas as ma
from tests.matching_atlas.test_reader import V2


def test_noop_targets_are_the_per_query_means_of_the_masses():
    run = ma.open_run(V2, progress=False)
    got = run.noop_targets()
    assert set(got["source"]) == {"q", "d"} and set(got["target"]) == {"cls", "sep"}
    scan = f"read_parquet('{V2 / 'head_attention.parquet'}')"  # a version-2 store: one head_attention file
    for src in ("q", "d"):
        direct = duckdb.sql(f"""
            WITH q AS (SELECT h.layer, p.qid, avg(h.{src}_cls) AS cls, avg(h.{src}_sep1 + h.{src}_sep2) AS sep
                       FROM {scan} h JOIN read_parquet('{V2 / 'pairs.parquet'}') p USING (pair_id)
                       WHERE p.neg_type = 'relevant' GROUP BY ALL)
            SELECT layer, avg(cls) AS cls, avg(sep) AS sep, count(*) AS n FROM q GROUP BY layer ORDER BY layer""").df()
        for target in ("cls", "sep"):
            rows = got[(got["source"] == src) & (got["target"] == target)].sort_values("layer")
            assert list(rows["layer"]) == list(direct["layer"])
            np.testing.assert_allclose(rows["mass"], direct[target], rtol=1e-5)
            assert list(rows["n_queries"]) == list(direct["n"])
    assert not run.has_value_weighted() and got["share"].isna().all()
