"""Against real data: a store built by the precompute job, and the live token attention of the real model.

Skipped when absent. The store is $ATLAS_REAL_STORE, else data/store (the job's default), and must
hold trec-dl-2020__minilm-l6-msmarco-ce.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.app.conftest import MAIN
from tests.app.synthetic import build_run

pytestmark = pytest.mark.shared

REAL_RUN = "trec-dl-2020__minilm-l6-msmarco-ce"
REAL_STORE = Path(os.environ.get("ATLAS_REAL_STORE") or Path(MAIN).parents[1] / "data" / "store")


@pytest.fixture(scope="module")
def real_store() -> Path:
    if not (REAL_STORE / REAL_RUN / "manifest.json").exists():
        pytest.skip(f"no real store at {REAL_STORE / REAL_RUN} (build it with python -m precompute, or set "
                    "ATLAS_REAL_STORE)")
    return REAL_STORE


def test_every_page_renders_with_the_real_store(app, real_store):
    import duckdb

    at = app(real_store, run=REAL_RUN)
    expected = {"overview": 1, "head_atlas": 3, "directions": 2, "ablations": 0, "patching": 0, "spectra": 0,
                "pair_explorer": 2, "sql": 0, "compare": 0}
    for page, charts in expected.items():
        at.switch_page(f"views/{page}.py").run(timeout=180)
        assert not at.exception, (page, [e.value for e in at.exception])
        assert not at.error, (page, [e.value for e in at.error])
        assert len(at.get("vega_lite_chart")) >= charts, page
    at.switch_page("views/overview.py").run()
    n = duckdb.connect().execute(f"SELECT count(*) FROM '{real_store / REAL_RUN / 'pairs.parquet'}'").fetchone()[0]
    assert any(m.label == "Pairs in the slice" and m.value == f"{n:,}" for m in at.metric)


def test_live_token_attention_with_the_real_model(app, tmp_path, minilm_dir):
    config = json.loads((minilm_dir / "config.json").read_text())
    build_run(tmp_path, dataset="trec-dl-2020", model="minilm-live", layers=config["num_hidden_layers"],
              heads=config["num_attention_heads"], n_queries=1, optional=False, model_id=str(minilm_dir))
    at = app(tmp_path, "pair_explorer", pair_layer="3", pair_head="5")
    at.run(timeout=180)
    assert not at.exception, [e.value for e in at.exception]
    labels = {m.label for m in at.metric}
    assert "Live score" in labels and "Stored mass" in labels
    specs = [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]
    assert any("live" in str(s.get("title")) for s in specs)
    at.multiselect(key="pair_from").set_value(["d"]).run(timeout=120)
    at.multiselect(key="pair_to").set_value(["cls", "q", "sep1"]).run(timeout=120)  # [CLS] and [SEP] as targets
    assert not at.exception
    assert "Live Document->CLS + Query + SEP1 mass" in {m.label for m in at.metric}, {m.label for m in at.metric}

