"""Component and QK-subspace conditions on the Ablations page, and the Patching page, on the tiny store: the numbers
shown equal direct DuckDB queries on the Parquet files, NULL effects are counted (never averaged as 0), the
drill-down lists the pairs with the largest effect, and the page's widgets survive a URL round trip."""

from __future__ import annotations

import numpy as np
import pytest

from precompute.names import DIRECTIONS
from tests.app.conftest import DL20, SMALL
from tests.app.test_pages import charts, frame, metric, ok

SUMMARY = ("SELECT condition_id, delta, p_holm FROM {{ablation_summary}} WHERE kind = '{kind}' AND scope = 'pairs' "
           "AND measure = 'nDCG@10' ORDER BY condition_id")


# -- ablations: components ----------------------------------------------------------------------------
def test_component_conditions_table_and_grid(app, store, sql):
    at = app(store, "ablations", run=DL20)
    ok(at)
    comp = frame(at, "condition_id", "component", "tokens", "delta", "significance")
    direct = sql(DL20, SUMMARY.format(kind="component"))
    got = comp.sort_values("condition_id")
    assert got["condition_id"].tolist() == direct["condition_id"].tolist()
    np.testing.assert_allclose(got["delta"], direct["delta"], rtol=1e-9)
    rows = comp.set_index("condition_id")
    assert tuple(rows.loc["mlp@1:d/mean", ["component", "tokens"]]) == ("mlp", "Document")
    assert tuple(rows.loc["attn@2/mean", ["component", "tokens"]]) == ("attn", "all tokens")
    assert rows.loc["attn@0-2/zero", "layers"] == "0-2"  # a multi-layer condition: in the table, not the grid
    # the grid: one panel per component, layer x {all tokens, cls, q, d}
    grid = [c for c in charts(at) if "facet" in c and "Removed at" in str(c)]
    assert grid and "component" in str(grid[0]["facet"])
    # each section names its own Holm family
    text = " ".join(c.value for c in at.caption)
    for analysis in ("attention", "components", "subspace"):
        assert f"**{analysis}** analysis" in text
    tested = int(sql(DL20, "SELECT count(p) AS n FROM {ablation_summary} WHERE kind = 'component' AND scope = 'pairs' "
                           "AND measure = 'nDCG@10'")["n"][0])
    assert f"component conditions: {tested} tested" in text

    # a component condition's per-query deltas
    at.selectbox(key="abl_cond").set_value("mlp@0:cls/mean").run()
    ok(at)
    per_query = frame(at, "qid", "value", "baseline", "delta").sort_values("qid")
    want = sql(DL20, "SELECT c.qid, c.value - b.value AS delta FROM {ablation_metrics} c JOIN {ablation_metrics} b "
                     "ON b.qid = c.qid AND b.condition_id = 'none' AND b.scope = c.scope AND b.measure = c.measure "
                     "WHERE c.condition_id = 'mlp@0:cls/mean' AND c.scope = 'pairs' ORDER BY c.qid")
    np.testing.assert_allclose(per_query["delta"], want["delta"], atol=1e-12)


# -- ablations: QK subspaces --------------------------------------------------------------------------
def test_subspace_conditions_read_off_one_row(app, store, sql):
    at = app(store, "ablations", run=DL20)
    ok(at)
    sub = frame(at, "condition_id", "head_label", "delta_q_d", "delta_d_q", "other_direction").set_index("condition_id")
    direct = sql(DL20, SUMMARY.format(kind="subspace")).set_index("condition_id")
    assert sorted(sub.index) == sorted(direct.index)
    np.testing.assert_allclose(sub.loc[direct.index, "delta"], direct["delta"], rtol=1e-9)
    cols = ", ".join(f"avg(s.{d} - h.{d}) AS {d}" for d in DIRECTIONS + ("q_d_exact",))
    heads = sql(DL20, f"SELECT s.condition_id, {cols} FROM {{subspace_head_metrics}} s JOIN {{head_attention}} h "
                      "USING (pair_id, layer, head) GROUP BY 1 ORDER BY 1").set_index("condition_id")
    for cid, row in heads.iterrows():
        assert sub.loc[cid, "delta_q_d"] == pytest.approx(row["q_d"], abs=1e-6)
        assert sub.loc[cid, "delta_d_q"] == pytest.approx(row["d_q"], abs=1e-6)
        assert sub.loc[cid, "delta_q_d_exact"] == pytest.approx(row["q_d_exact"], abs=1e-6)
        others = row[[d for d in DIRECTIONS if d not in ("q_d", "d_q")]]
        biggest = others.abs().idxmax()
        assert sub.loc[cid, "other_direction"].startswith(f"{biggest} (")
        assert sub.loc[cid, "other_delta"] == pytest.approx(others[biggest], abs=1e-6)
    # removing the top components lowers the head's Query->Document mass; the head label is layer.head
    assert (sub.loc[[c for c in sub.index if c.endswith("/remove")], "delta_q_d"] < 0).all()
    assert sub.loc["qk:2.1:k2/remove", "head_label"] == "2.1"

    at.selectbox(key="abl_sub").set_value("qk:2.1:k2/remove").run()
    ok(at)
    assert at.query_params["abl_sub"] == "qk:2.1:k2/remove"
    assert any("Change of the head's own metrics under qk:2.1:k2/remove" in str(c.get("title")) for c in charts(at))


# -- patching -----------------------------------------------------------------------------------------
HEADS = """
    SELECT layer, head, count(effect) AS n, count(*) - count(effect) AS n_null, avg(effect) AS mean,
           stddev_samp(effect) AS sd,
           sum(CAST(patched AS DOUBLE) - corrupted) / sum(CAST(clean AS DOUBLE) - corrupted) AS ratio
    FROM {{patching_effects}} WHERE experiment = '{exp}' AND component = 'head' GROUP BY ALL ORDER BY layer, head
"""


def test_patching_heads_components_and_nulls(app, store, sql):
    at = app(store, "patching", run=DL20)
    ok(at)
    assert at.radio(key="pat_exp").value == "tfc1"
    heads = frame(at, "layer", "head", "n_queries", "ratio", "ratio_low", "ratio_high", "n", "n_null", "mean", "sd")
    direct = sql(DL20, HEADS.format(exp="tfc1"))
    assert heads[["layer", "head", "n", "n_null"]].values.tolist() == direct[["layer", "head", "n", "n_null"]].values.tolist()
    np.testing.assert_allclose(heads[["mean", "sd"]], direct[["mean", "sd"]], rtol=1e-6)
    # what the page concludes from: the ratio of sums, its interval over the run's queries
    np.testing.assert_allclose(heads["ratio"], direct["ratio"], rtol=1e-6)
    assert ((heads["ratio_low"] <= heads["ratio"]) & (heads["ratio"] <= heads["ratio_high"])).all()
    queries = sql(DL20, "SELECT count(DISTINCT p.qid) AS n FROM {patching_pairs} pp JOIN {pairs} p USING (pair_id) "
                        "WHERE pp.experiment = 'tfc1'")["n"][0]
    assert (heads["n_queries"] == queries).all() and queries >= 3
    # NULL effects are counted and left out of the mean, never averaged as 0
    assert (direct["n_null"] > 0).all()
    as_zero = sql(DL20, "SELECT avg(coalesce(effect, 0)) AS m FROM {patching_effects} WHERE experiment = 'tfc1' AND "
                        "component = 'head' AND layer = 2 AND head = 1")["m"][0]
    assert heads.set_index(["layer", "head"]).loc[(2, 1), "mean"] != pytest.approx(as_zero, rel=1e-3)
    nulls = sql(DL20, "SELECT count(*) AS n FROM {patching_effects} WHERE experiment = 'tfc1' AND effect IS NULL")["n"][0]
    assert metric(at, "NULL effects") == f"{nulls:,}"

    comps = frame(at, "layer", "component", "segment", "mean", "n_null")
    want = sql(DL20, "SELECT layer, component, segment, avg(effect) AS mean FROM {patching_effects} WHERE experiment = "
                     "'tfc1' AND component <> 'head' GROUP BY ALL")
    got = comps.merge(want, on=["layer", "component", "segment"], suffixes=("", "_direct"))
    assert len(got) == len(want) == 3 * 3 * 6
    np.testing.assert_allclose(got["mean"], got["mean_direct"], rtol=1e-6)

    # drill-down of a head: the pairs with the largest effect, with query, term, filler and the three scores
    at.selectbox(key="pat_head").set_value("2.1").run()
    ok(at)
    top = frame(at, "patch_id", "query", "term", "filler", "clean", "corrupted", "patched", "effect")
    best = sql(DL20, "SELECT patch_id, clean, corrupted, patched, effect FROM {patching_effects} WHERE experiment = "
                     "'tfc1' AND component = 'head' AND layer = 2 AND head = 1 AND effect IS NOT NULL "
                     "ORDER BY effect DESC, patch_id LIMIT 20")
    assert top["patch_id"].tolist() == best["patch_id"].tolist()
    np.testing.assert_allclose(top[["clean", "corrupted", "patched", "effect"]], best[["clean", "corrupted", "patched",
                                                                                      "effect"]], rtol=1e-6)
    assert set(top["term"]) == {"topic"} and set(top["filler"]) == {"the"}
    assert metric(at, "Share recovered, head 2.1") == f"{direct.set_index(['layer', 'head']).loc[(2, 1), 'ratio']:+.4f}"

    # drill-down of a component, smallest effects first
    at.radio(key="pat_target").set_value("component").run()
    at.selectbox(key="pat_comp").set_value("1.mlp.d").run()
    at.radio(key="pat_order").set_value("smallest").run()
    ok(at)
    top = frame(at, "patch_id", "effect")
    worst = sql(DL20, "SELECT patch_id, effect FROM {patching_effects} WHERE experiment = 'tfc1' AND component = 'mlp' "
                      "AND segment = 'd' AND layer = 1 AND effect IS NOT NULL ORDER BY effect, patch_id LIMIT 20")
    assert top["patch_id"].tolist() == worst["patch_id"].tolist()
    params = {k: at.query_params[k] for k in ("pat_target", "pat_comp", "pat_order")}
    assert params == {"pat_target": "component", "pat_comp": "1.mlp.d", "pat_order": "smallest"}

    # the same view from its URL
    again = app(store, "patching", run=DL20, **params)
    ok(again)
    assert again.radio(key="pat_target").value == "component"
    assert again.selectbox(key="pat_comp").value == "1.mlp.d"
    assert frame(again, "patch_id", "effect")["patch_id"].tolist() == worst["patch_id"].tolist()


def test_patching_cls_follows_the_slice(app, store, sql):
    """cls pairs join the slice through their relevant (clean) passage: grade 3 keeps those whose relevant passage
    has grade 3."""
    at = app(store, "patching", run=DL20, pat_exp="cls", neg="relevant", grades="3")
    ok(at)
    assert at.radio(key="pat_exp").value == "cls"
    heads = frame(at, "layer", "head", "n", "n_null", "mean")
    direct = sql(DL20, """
        SELECT e.layer, e.head, count(e.effect) AS n, count(*) - count(e.effect) AS n_null, avg(e.effect) AS mean
        FROM {patching_effects} e JOIN {patching_pairs} pp ON pp.experiment = e.experiment AND pp.patch_id = e.patch_id
        JOIN {pairs} c ON c.pair_id = pp.clean_pair_id
        WHERE e.experiment = 'cls' AND e.component = 'head' AND c.grade = 3 GROUP BY ALL ORDER BY 1, 2
    """)
    assert heads[["n", "n_null"]].values.tolist() == direct[["n", "n_null"]].values.tolist()
    np.testing.assert_allclose(heads["mean"], direct["mean"], rtol=1e-6)
    top = frame(at, "patch_id", "clean_passage", "clean_grade")
    assert set(top["clean_grade"]) == {3}
    assert "pooling position" in str(charts(at))


def test_patching_absent_is_explained(app, store):
    at = app(store, "patching", run=SMALL)
    ok(at)
    assert any("no activation-patching results yet" in i.value for i in at.info)
    assert any("python -m precompute" in c.value and "--patching tfc1,cls" in c.value and "--out" in c.value
               for c in at.code)


# -- ablations: deltas with their intervals -------------------------------------------------------------
def test_ablation_deltas_are_drawn_with_bootstrap_intervals_over_queries(app, store, sql):
    """Table 1, the component and the subspace conditions are also sorted charts of their deltas with 95% intervals:
    the delta is Table 1's (ablation_summary), the interval a percentile bootstrap over queries recomputed here from
    ablation_metrics with the store's seed (precompute.statistics.query_resamples)."""
    import json

    from matching_atlas import Run
    from matching_atlas.opening import inspect_run
    from precompute.statistics import query_resamples

    got = Run(inspect_run(store / DL20)).delta_intervals().set_index("condition_id")
    summary = sql(DL20, SUMMARY.format(kind="component").replace("WHERE kind = 'component' AND", "WHERE"))
    summary = summary[summary["condition_id"] != "none"].set_index("condition_id")
    assert sorted(got.index) == sorted(summary.index)
    np.testing.assert_allclose(got.loc[summary.index, "delta"], summary["delta"], atol=1e-12)
    per_query = sql(DL20, "SELECT c.condition_id, c.qid, c.value - b.value AS d FROM {ablation_metrics} c "
                          "JOIN {ablation_metrics} b ON b.qid = c.qid AND b.scope = c.scope AND b.measure = c.measure "
                          "AND b.condition_id = 'none' WHERE c.scope = 'pairs' AND c.measure = 'nDCG@10' "
                          "AND c.condition_id = 'attn@0-2/zero' ORDER BY c.qid")
    seed = json.loads((store / DL20 / "manifest.json").read_text())["identity"]["seed"]
    weights = query_resamples(len(per_query), seed=seed)
    means = weights @ per_query["d"].to_numpy() / len(per_query)
    low, high = np.percentile(means, [2.5, 97.5])
    row = got.loc["attn@0-2/zero"]
    assert row["n_queries"] == len(per_query) and row["delta_low"] < row["delta"] < row["delta_high"]
    np.testing.assert_allclose([row["delta_low"], row["delta_high"]], [low, high], rtol=1e-12)

    at = app(store, "ablations", run=DL20)
    ok(at)
    drawn = {str(c.get("title")).split(":")[0]: c for c in charts(at) if "95% CI over queries" in str(c.get("title"))}
    assert set(drawn) == {"Table 1", "Component conditions", "QK-subspace conditions"}
    assert "(the 20 largest |delta| of" in drawn["Component conditions"]["title"]
    assert "delta_low" in json.dumps(next(c for c in charts(at) if "one layer is ablated" in str(c.get("title"))))
