"""The Pair explorer's live numbers are the stored ones: a tiny BERT and a tiny RoBERTa cross-encoder, a store
written by the real job, and every summary metric of a pair recomputed live (app.live) equal to head_attention."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from app import live
from matching_atlas.opening import inspect_run
from precompute.metrics import METRICS

pytest.importorskip("torch")
pytest.importorskip("transformers")

KINDS = ("bert", "roberta")


@pytest.fixture(scope="module")
def job_store(tmp_path_factory):
    """<store>/<kind>-run for both kinds: the job's summary stage over a tiny dataset in the models' vocabulary
    (max length 32: the longest passages are truncated)."""
    from precompute.config import JobConfig
    from precompute.job import run
    from tests.precompute.conftest import make_dataset
    from tests.tiny_models import build

    root = tmp_path_factory.mktemp("live")
    dataset = make_dataset(root / "dataset", n_queries=2, n_docs=20)
    for kind in KINDS:
        model = build(kind, root / "models" / kind)
        run(JobConfig(dataset=str(dataset), model=str(model), out=root / "store" / f"{kind}-run", cache=root / "cache",
                      easy_negatives=3, batch_size=4, chunk_size=16, max_length=32, progress=False, ablations=(),
                      stages=("summaries",)))
    return root / "store"


def stored(run_path, sql: str):
    con = duckdb.connect()
    tables = {name: f"read_parquet('{run_path / name}.parquet')" for name in ("pairs", "head_attention")}
    return con.execute(sql.format(**tables)).df()


@pytest.mark.parametrize("kind", KINDS)
def test_live_summaries_equal_the_stored_ones(job_store, kind):
    run = inspect_run(job_store / f"{kind}-run")
    assert run.ok, run.problem
    folder, why = live.availability(run)
    assert folder is not None, why
    pairs = stored(run.path, "SELECT * FROM {pairs} ORDER BY d_tokens DESC, pair_id")
    heads = stored(run.path, "SELECT * FROM {head_attention} ORDER BY pair_id, layer, head")
    max_length = run.manifest.parameters.get("max_length") or run.manifest.identity.max_length
    for pair in (pairs.iloc[0], pairs.iloc[len(pairs) // 2], pairs.iloc[-1]):  # longest, middle, shortest
        pa = live._run_pair(str(folder), pair["query"], pair["doc"], 0, int(max_length))
        want = heads[heads["pair_id"] == pair["pair_id"]]
        assert pa.summaries.shape[:2] == (run.model.layers, run.model.heads)
        for row in want.itertuples():
            got = live.metrics(pa, row.layer, row.head)
            np.testing.assert_allclose([got[m] for m in METRICS], [getattr(row, m) for m in METRICS], atol=1e-5,
                                       err_msg=f"{kind} pair {pair['pair_id']} head {row.layer}.{row.head}")
        assert pa.score == pytest.approx(float(pair["score"]), abs=1e-5)
        # the separators: BERT [SEP] d [SEP], RoBERTa </s></s> d </s> (both middle ones are SEP1)
        assert pa.segments.count("sep1") == (1 if kind == "bert" else 2) and pa.segments.count("sep2") == 1
        assert pa.segments.count("q") == int(pair["q_tokens"]) and pa.segments.count("d") == int(pair["d_tokens"])


def test_pair_explorer_shows_live_equal_to_stored(job_store, app):
    at = app(job_store, "pair_explorer", run="roberta-run", pair_layer="1", pair_head="2")
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]
    metrics = {m.label: m.value for m in at.metric}
    assert "Largest live - stored gap" in metrics, [x.value for x in list(at.info) + list(at.warning)]
    assert float(metrics["Largest live - stored gap"]) < 1e-5
    assert metrics["Live Query->Document mass"] == metrics["Stored mass"]


def test_largest_gap_counts_a_metric_defined_on_one_side_only():
    nan = float("nan")
    assert live.largest_gap({"a": 0.5, "b": nan}, {"a": 0.25, "b": nan}) == 0.25
    assert live.largest_gap({"a": 0.5, "b": 0.1}, {"a": 0.5, "b": nan}) == float("inf")
