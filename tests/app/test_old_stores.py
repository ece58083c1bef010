"""Stores of schema versions 1 and 2 (tests/fixtures/store-v1, store-v2) open in the app as they did: the app's
ablation queries return what the code that wrote them returned (``app.json`` beside each fixture, recorded with that
code), and every page of the version-2 fixture, which holds every condition kind, opens without an error."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from app import ablation_queries as aq
from app.connections import open_run
from app.slice import Slice
from tests.app.test_pages import PAGES, frame, ok

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
QUERIES = {  # app.json's names -> the query (scope, measure given)
    "ablation_table": aq.ablation_table, "ablation_layer_sweeps": aq.ablation_layer_sweeps,
    "ablation_heads": aq.ablation_heads, "analysis_families": aq.analysis_families,
    "component_table": aq.component_table, "subspace_table": aq.subspace_table,
    "slice_means": lambda con, scope, measure: aq.ablation_slice_means(con, Slice(), scope, measure),
}


def _recorded(df: pd.DataFrame) -> dict:
    """A frame as app.json recorded it."""
    return json.loads(df.to_json(orient="split", index=False, double_precision=12))


@pytest.mark.parametrize("fixture", ["store-v1", "store-v2"])
def test_the_ablation_queries_return_what_they_did(fixture):
    want = json.loads((FIXTURES / fixture / "app.json").read_text())
    con = open_run(FIXTURES / fixture / "tiny-dl__tiny-bert")
    assert _recorded(aq.ablation_options(con)) == want.pop("options")
    assert want  # at least one scope / measure
    for key, frames in want.items():
        scope, measure = key.split("/")
        assert set(frames) == set(QUERIES)
        for name, recorded in frames.items():
            assert _recorded(QUERIES[name](con, scope, measure)) == recorded, (fixture, key, name)


def test_every_page_of_the_version_2_fixture_opens(app):
    at = app(FIXTURES / "store-v2")
    ok(at)
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        ok(at)
        if page == "ablations":
            comp = frame(at, "component", "tokens")
            assert len(comp) == 24 and "mlp:d@0/mean" in set(comp["condition_id"])  # stored ids shown as stored
            assert len(frame(at, "head_label", "k", "operation")) == 8
