"""Stores of schema versions 1 and 2 (tests/fixtures/store-v1, store-v2) open in the app as they did: the app's
ablation queries return what the code that wrote them returned (``app.json`` beside each fixture, recorded with that
code), and every page of the version-2 fixture, which holds every condition kind, opens without an error."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from matching_atlas import Run
from matching_atlas.ablations import TABLE1_KINDS
from matching_atlas.opening import inspect_run
from matching_atlas.slice import Slice
from tests.app.test_pages import PAGES, frame, ok

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# Table 1's columns when app.json was recorded (table1 now also has every part of a condition as a column)
RECORDED_TABLE1 = ["condition_id", "kind", "condition", "mode", "layers", "n_queries", "mean", "baseline", "delta", "t",
                   "p", "p_holm"]
QUERIES = {  # app.json's names -> the reader's result (scope, measure given)
    "ablation_table": lambda run, scope, measure: run.table1(measure, scope, kind=TABLE1_KINDS)[RECORDED_TABLE1],
    "ablation_layer_sweeps": lambda run, scope, measure: run.layer_sweeps(measure, scope),
    "ablation_heads": lambda run, scope, measure: run.head_ablations(measure, scope),
    "analysis_families": lambda run, scope, measure: run.holm_families(measure, scope),
    "component_table": lambda run, scope, measure: run.component_effects(measure, scope),
    "subspace_table": lambda run, scope, measure: run.subspace_effects(measure, scope),
    "slice_means": lambda run, scope, measure: run.slice_means(measure, scope, Slice()),
}


def _recorded(df: pd.DataFrame) -> dict:
    """A frame as app.json recorded it."""
    return json.loads(df.to_json(orient="split", index=False, double_precision=12))


@pytest.mark.parametrize("fixture", ["store-v1", "store-v2"])
def test_the_ablation_queries_return_what_they_did(fixture):
    want = json.loads((FIXTURES / fixture / "app.json").read_text())
    con = Run(inspect_run(FIXTURES / fixture / "tiny-dl__tiny-bert"))
    assert _recorded(con.ablation_options()) == want.pop("options")
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
