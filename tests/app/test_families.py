"""Families on the pages: segment labels from the manifest, causal directions shown as "not possible (causal)"
(never as 0, never a crash), refused conditions listed, MonoT5's decoder cross-attention, version-1 runs labelled
as pair templates, and two models of different depths compared by relative depth."""

from __future__ import annotations

import precompute.depth as depth_rule

import json
import math

import numpy as np
import pandas as pd
import pytest

from matching_atlas import depth
from app.family import NOT_POSSIBLE, Labels
from precompute.metrics import METRICS
from precompute.names import DIRECTIONS, SEGMENTS, split_direction
from precompute.store.manifest import ModelInfo
from tests.app.synthetic import CAUSAL, DEEP, MONOT5, TEMPLATE_LABELS, V1
from tests.app.test_pages import charts, frame, metric, ok


def later(d: str) -> bool:
    src, dst = split_direction(d)
    return SEGMENTS.index(dst) > SEGMENTS.index(src)


# -- labels, unit ----------------------------------------------------------------------------------------
def test_labels_follow_the_manifest():
    lab = Labels.of(ModelInfo(segment_labels=dict(TEMPLATE_LABELS), causal=True, family="decoder-classifier"))
    assert lab.segment("cls") == "Prefix" and lab.direction("sep1_q") == "Middle->Query"
    assert lab.metric("cls_q") == "Prefix->Query attention mass"
    assert lab.metric("q2d_max") == "Query->Document max weight"
    assert not lab.possible("q_d") and not lab.possible("q_d_exact") and lab.possible("d_q") and lab.possible("d2q_max")
    assert set(lab.impossible) == {d for d in DIRECTIONS if later(d)}
    assert lab.missing("q_d") == NOT_POSSIBLE and "not possible (causal)" in lab.why_empty("q2d_max")
    old = Labels.of(ModelInfo())  # a version-1 manifest: no segment_labels, not causal
    assert old.names == ("CLS", "Query", "SEP1", "Document", "SEP2") and old.impossible == ()
    assert all(old.metric(m) for m in METRICS)


# -- causal runs -----------------------------------------------------------------------------------------
def test_causal_directions_are_not_possible(app, family_store, family_sql):
    at = app(family_store, "directions", run=CAUSAL)
    ok(at)
    shown = frame(at, "direction", "mean", "note", "meaning").set_index("direction")
    cols = ", ".join(f"avg({d}) AS {d}" for d in DIRECTIONS)
    direct = family_sql(CAUSAL, f"SELECT {cols} FROM {{head_attention}}").iloc[0]
    for d in DIRECTIONS:
        if later(d):
            assert math.isnan(shown.loc[d, "mean"]) and shown.loc[d, "note"] == NOT_POSSIBLE, d  # never 0
            assert pd.isna(direct[d])
        else:
            assert shown.loc[d, "mean"] == pytest.approx(direct[d], rel=1e-6) and shown.loc[d, "note"] == ""
    # each segment's possible masses sum to 1; the labels are the template family's
    sums = shown.assign(src=[split_direction(d)[0] for d in shown.index]).groupby("src")["mean"].sum()
    np.testing.assert_allclose(sums, 1.0, rtol=1e-5)
    assert shown.loc["cls_cls", "meaning"] == "Prefix->Prefix"
    matrix = json.dumps(charts(at)[0])
    assert "status_text" in matrix and "Prefix" in matrix and "Suffix" in matrix and '"CLS"' not in matrix
    # the default directions include q_d: the page says why it has no line, and draws the others
    assert any("q_d is not possible (causal)" in i.value for i in at.info)
    lines = frame(at, "layer", "neg_type", "direction", "mean")
    assert lines[lines["direction"] == "q_d"]["mean"].isna().all()
    assert lines[lines["direction"] == "d_q"]["mean"].notna().all()


def test_causal_head_atlas_pair_explorer_and_refused(app, family_store):
    at = app(family_store, "head_atlas", run=CAUSAL)
    ok(at)
    assert at.selectbox(key="atlas_metric").value == "d_q"  # q_d is not possible: d_q is the default
    at.selectbox(key="atlas_metric").set_value("q_d").run()
    ok(at)
    assert any("not possible (causal)" in i.value for i in at.info)
    grid = frame(at, "layer", "head", "mean", "sd")
    assert len(grid) == 6 * 2 and grid["mean"].isna().all()  # NULL, not 0
    assert '"field": "status"' in json.dumps(charts(at)[0])  # the grey "not possible (causal)" cells

    at.switch_page("views/pair_explorer.py").run()
    ok(at)
    assert metric(at, "q2d_max") == NOT_POSSIBLE and metric(at, "d2q_max") != NOT_POSSIBLE

    at.switch_page("views/ablations.py").run()
    ok(at)
    refused = frame(at, "condition_id", "removes", "reason").set_index("condition_id")
    assert sorted(refused.index) == ["d_sep2@all/zero", "q_d@all/zero"]
    assert refused.loc["q_d@all/zero", "removes"] == "q_d (Query->Document)"
    assert "cannot attend" in refused.loc["q_d@all/zero", "reason"]
    sub = frame(at, "condition_id", "delta_q_d", "delta_d_q")
    assert sub["delta_q_d"].isna().all() and (sub["delta_d_q"] < 0).any()  # its matching runs Document->Query

    at.switch_page("views/compare.py").run()
    ok(at)  # against other runs of other depths and families


# -- MonoT5 and version 1 ----------------------------------------------------------------------------------
def test_monot5_overview_and_cross_attention(app, family_store, family_sql):
    at = app(family_store, run=MONOT5)
    ok(at)
    text = " ".join(m.value for m in at.markdown)
    assert "monot5" in text and "`cls` = Prefix" in text and "`sep1` = Middle" in text
    assert "'true'" in text and "id 1176" in text
    assert any(c.value == "Query: {query} Document: {document} Relevant:" for c in at.code)

    at.switch_page("views/directions.py").run()
    ok(at)
    cross = frame(at, "layer", "head", "neg_type", "segment", "mean")
    direct = family_sql(MONOT5, "SELECT x.layer, x.head, p.neg_type, avg(x.d) AS d FROM {decoder_cross_attention} x "
                                "JOIN {pairs} p USING (pair_id) GROUP BY ALL")
    got = cross[cross["segment"] == "d"].merge(direct, on=["layer", "head", "neg_type"])
    assert len(got) == len(direct) == 4 * 3 * 3
    np.testing.assert_allclose(got["mean"], got["d"], rtol=1e-6)
    assert any("encoder's Document" in str(c.get("title")) for c in charts(at))
    at.radio(key="dir_cross_seg").set_value("sep2").run()
    ok(at)
    assert at.query_params["dir_cross_seg"] == "sep2"
    assert any("encoder's Suffix" in str(c.get("title")) for c in charts(at))


def test_version1_run_is_labelled_as_a_pair_template(app, family_store):
    at = app(family_store, run=V1)
    ok(at)
    assert any("no family recorded" in m.value for m in at.markdown)
    at.switch_page("views/directions.py").run()
    ok(at)
    matrix = json.dumps(charts(at)[0])
    assert '"CLS"' in matrix and '"SEP2"' in matrix and "Prefix" not in matrix


# -- relative depth --------------------------------------------------------------------------------------
def test_depth_bins():
    assert [depth_rule.depth_bin(l, 24, 6) for l in range(24)] == [l // 4 for l in range(24)]
    assert [depth_rule.depth_bin(l, 6, 6) for l in range(6)] == list(range(6))
    assert [depth_rule.depth_bin(l, 12, 5) for l in range(12)] == [0, 0, 1, 1, 1, 2, 2, 3, 3, 3, 4, 4]
    assert depth_rule.relative_depth(0, 6) == pytest.approx(1 / 12) and depth_rule.relative_depth(23, 24) == pytest.approx(47 / 48)
    assert depth_rule.layers_in_span(1, 2, 6, 24) == (4, 11) and depth_rule.layers_in_span(0, 5, 6, 24) == (0, 23)
    a = pd.DataFrame({"layer": [0, 0, 1, 1], "head": [0, 1, 0, 1], "v": [1.0, 3.0, 5.0, np.nan]})
    prof = depth.layer_profile(a, "v", 2)
    assert prof["value"].tolist() == [2.0, 5.0] and prof["heads"].tolist() == [2, 1]
    assert depth.layer_profile(a, "v", 2, "max")["value"].tolist() == [3.0, 5.0]
    b = depth.layer_profile(pd.DataFrame({"layer": [0, 1, 2, 3], "head": 0, "v": [1.0, 2.0, 3.0, 4.0]}), "v", 4)
    aligned = depth.align_by_depth(prof, 2, b, 4)
    assert aligned[["layers_a", "layers_b"]].values.tolist() == [["0", "0-1"], ["1", "2-3"]]
    assert aligned["value_b"].tolist() == [1.5, 3.5] and aligned["diff"].tolist() == [-0.5, -1.5]


def test_compare_by_relative_depth(app, family_store, family_sql):
    at = app(family_store, "compare", run=CAUSAL, cmp_run=DEEP)
    ok(at)
    assert at.radio(key="cmp_align").value == "depth"  # 6 vs 12 layers: by depth by default
    assert at.selectbox(key="cmp_metric").value == "d_q"
    bins = frame(at, "bin", "layers_a", "value_a", "layers_b", "value_b", "diff")
    a = family_sql(CAUSAL, "SELECT layer, avg(d_q) AS m FROM {head_attention} GROUP BY layer ORDER BY layer")["m"]
    b = family_sql(DEEP, "SELECT layer, avg(d_q) AS m FROM {head_attention} GROUP BY layer ORDER BY layer")["m"]
    want_b = [(b[2 * k] + b[2 * k + 1]) / 2 for k in range(6)]  # layers 2k, 2k+1 of 12 sit in layer k of 6
    assert bins["layers_b"].tolist() == [f"{2 * k}-{2 * k + 1}" for k in range(6)]
    assert bins["layers_a"].tolist() == [str(k) for k in range(6)]
    np.testing.assert_allclose(bins["value_a"], a, rtol=1e-6)
    np.testing.assert_allclose(bins["value_b"], want_b, rtol=1e-6)
    np.testing.assert_allclose(bins["diff"], np.array(want_b) - a.to_numpy(), rtol=1e-6, atol=1e-12)
    assert any("relative depth" in str(c.get("title")) for c in charts(at))

    at.radio(key="cmp_depth_stat").set_value("max").run()
    ok(at)
    per_head = family_sql(CAUSAL, "SELECT layer, head, avg(d_q) AS m FROM {head_attention} GROUP BY ALL")
    np.testing.assert_allclose(frame(at, "bin", "value_a")["value_a"],
                               per_head.groupby("layer")["m"].max().sort_index(), rtol=1e-6)
    # the slice's layers of A are carried to B by depth
    at.sidebar.slider(key="sl_layers").set_value((1, 2)).run()
    ok(at)
    assert any("are B's layers 2-5 by relative depth" in c.value for c in at.caption)

    at.radio(key="cmp_align").set_value("layer").run()
    ok(at)
    assert at.query_params["cmp_align"] == "layer"
    diff = frame(at, "layer", "head", "mean_a", "mean_b", "diff")
    assert diff["diff"].notna().sum() == 2 * 2  # layers 1-2 x the 2 heads both models have


def test_the_version1_fixture_written_by_the_old_job_opens_on_every_page(app):
    """tests/fixtures/store-v1 was written by the version-1 precompute job: no family fields, no analysis column, no
    component, subspace or patching tables; every page opens, with the pair template's labels."""
    from pathlib import Path

    from tests.app.test_pages import PAGES

    fixture = Path(__file__).resolve().parents[1] / "fixtures" / "store-v1"
    at = app(fixture)
    ok(at)
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        ok(at)
        if page == "directions":
            assert '"CLS"' in json.dumps(charts(at)[0])
        if page == "patching":
            assert any("--patching tfc1,cls" in c.value for c in at.code)
