"""Every page driven through streamlit.testing.v1.AppTest on the tiny store: widgets changed, no
exception, and the numbers shown equal direct DuckDB queries on the store's Parquet files (computed
from head_attention / pairs, not from the aggregates the app reads, so the aggregate path is checked too)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from precompute.names import DIRECTIONS
from precompute.statistics import MIN_QUERIES
from precompute.store.schema import SCHEMA_VERSION
from tests.app.conftest import DL19, DL20, SMALL

PAGES = ["overview", "findings", "head_atlas", "directions", "ablations", "patching", "spectra", "pair_explorer", "sql", "compare"]


# -- helpers ----------------------------------------------------------------------------------
def ok(at) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("vega_lite_chart")]


def frame(at, *cols: str) -> pd.DataFrame:
    for d in at.dataframe:
        if all(c in d.value.columns for c in cols):
            return d.value
    raise AssertionError(f"no dataframe with columns {cols}: {[list(d.value.columns) for d in at.dataframe]}")


def metric(at, label: str) -> str:
    for m in at.metric:
        if m.label == label:
            return m.value
    raise AssertionError(f"no metric {label!r}: {[m.label for m in at.metric]}")


def titled(spec: dict) -> bool:
    return bool(spec.get("title")) or any(titled(s) for s in spec.get("layer", []))


# -- every page, every run --------------------------------------------------------------------
@pytest.mark.parametrize("run", [DL20, SMALL])
def test_every_page_renders(app, store, run):
    at = app(store, run=run)
    ok(at)
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        ok(at)
        assert at.title, page
        for spec in charts(at):
            assert titled(spec), (page, spec.get("title"))
    assert at.query_params["run"] == run


def test_full_run_pages_draw_charts(app, store):
    at = app(store, run=DL20)
    expected = {"overview": 1, "findings": 5, "head_atlas": 3, "directions": 2, "ablations": 5, "patching": 3, "spectra": 4,
                "pair_explorer": 2, "compare": 4}
    for page, n in expected.items():
        at.switch_page(f"views/{page}.py").run()
        ok(at)
        assert len(charts(at)) >= n, page


# -- overview ---------------------------------------------------------------------------------
def test_overview_numbers_follow_the_slice(app, store, sql):
    at = app(store, run=DL20)
    ok(at)
    n = sql(DL20, "SELECT count(*) AS n FROM {pairs}")["n"][0]
    assert metric(at, "Pairs in the slice") == f"{n:,}"
    counts = frame(at, "neg_type", "grade", "pairs")
    direct = sql(DL20, "SELECT neg_type, grade, count(*) AS pairs FROM {pairs} GROUP BY ALL ORDER BY neg_type, grade")
    assert counts["pairs"].tolist() == direct["pairs"].tolist()

    at.sidebar.multiselect(key="sl_neg").set_value(["relevant", "hard"]).run()
    at.sidebar.multiselect(key="sl_grades").set_value([0, 3]).run()
    ok(at)
    n = sql(DL20, "SELECT count(*) AS n FROM {pairs} WHERE neg_type IN ('relevant','hard') AND grade IN (0, 3)")["n"][0]
    assert metric(at, "Pairs in the slice") == f"{n:,}"
    assert at.query_params["neg"] == "relevant,hard" and at.query_params["grades"] == "0,3"

    at.sidebar.multiselect(key="sl_neg").set_value([]).run()
    at.sidebar.multiselect(key="sl_grades").set_value([]).run()
    qids = sql(DL20, "SELECT DISTINCT qid FROM {pairs} ORDER BY qid")["qid"].tolist()[:2]
    at.sidebar.multiselect(key="sl_qids").set_value(qids).run()
    ok(at)
    assert metric(at, "Queries in the slice") == "2"
    # nDCG@10 of the slice: the synthetic store's own (python) nDCG of those queries
    from tests.app.synthetic import _ndcg10

    pairs = sql(DL20, "SELECT * FROM {pairs}")
    want = np.mean([_ndcg10(g["score"].to_numpy(), g["grade"].to_numpy(), list(g["docid"]))
                    for q, g in pairs.groupby("qid") if q in qids])
    assert metric(at, "nDCG@10 of the slice") == f"{want:.4f}"
    at.slider(key="ov_bins").set_value(12).run()
    ok(at)
    assert at.query_params["ov_bins"] == "12"


def test_manifest_ndcg_is_shown(app, store):
    at = app(store, run=DL20)
    man = json.loads((store / DL20 / "manifest.json").read_text())
    assert metric(at, "nDCG@10 (manifest)") == f"{man['metrics']['nDCG@10']:.4f}"
    # with the whole run as the slice, the page's nDCG@10 equals the job's
    assert metric(at, "nDCG@10 of the slice") == f"{man['metrics']['nDCG@10']:.4f}"


def test_two_label_models_are_labelled_as_log_probabilities(app, tmp_path):
    """The job writes model.score = "log_softmax[1]" for two-label models (MonoBERT): the axis says log-probability."""
    from tests.app.synthetic import build_run

    build_run(tmp_path, model="monobert-like", n_queries=2, optional=False,
              manifest_overrides={"model": {"name": "monobert-like", "layers": 3, "heads": 4, "num_labels": 2,
                                            "score": "log_softmax[1]"}})
    at = app(tmp_path)
    ok(at)
    titles = [json.dumps(spec) for spec in charts(at)]
    assert any("log-probability of relevance" in t for t in titles) and not any("(logit)" in t for t in titles)


# -- head atlas -------------------------------------------------------------------------------
HEAD_MEANS = """
    SELECT h.layer, h.head, avg(h.{m}) AS mean, count(*) AS n
    FROM {{head_attention}} h JOIN {{pairs}} p USING (pair_id) WHERE {where}
    GROUP BY ALL ORDER BY h.layer, h.head
"""


def test_head_atlas_means_equal_head_attention(app, store, sql):
    at = app(store, "head_atlas", run=DL20)
    ok(at)
    shown = frame(at, "layer", "head", "mean", "sd")
    direct = sql(DL20, HEAD_MEANS.format(m="q_d", where="TRUE"))
    np.testing.assert_allclose(shown["mean"], direct["mean"], rtol=1e-6)
    assert shown["n"].tolist() == direct["n"].tolist()

    # change the metric and the slice: layers 1-2, heads 0 and 3, relevant pairs
    at.selectbox(key="atlas_metric").set_value("q2d_max").run()
    at.sidebar.slider(key="sl_layers").set_value((1, 2)).run()
    at.sidebar.multiselect(key="sl_heads").set_value([0, 3]).run()
    at.sidebar.multiselect(key="sl_neg").set_value(["relevant"]).run()
    ok(at)
    shown = frame(at, "layer", "head", "mean", "sd")
    direct = sql(DL20, HEAD_MEANS.format(m="q2d_max", where="h.layer BETWEEN 1 AND 2 AND h.head IN (0, 3) "
                                                          "AND p.neg_type = 'relevant'"))
    assert shown[["layer", "head"]].values.tolist() == direct[["layer", "head"]].values.tolist()
    np.testing.assert_allclose(shown["mean"], direct["mean"], rtol=1e-6)
    assert at.query_params["atlas_metric"] == "q2d_max"
    assert at.query_params["layers"] == "1-2" and at.query_params["heads"] == "0,3"


def test_head_atlas_difference_and_one_head(app, store, sql):
    at = app(store, "head_atlas", run=DL20)
    at.radio(key="atlas_view").set_value("relevant_vs_hard").run()
    ok(at)
    shown = frame(at, "layer", "head", "diff", "cohen_d")
    a = sql(DL20, HEAD_MEANS.format(m="q_d", where="p.neg_type = 'relevant'"))
    b = sql(DL20, HEAD_MEANS.format(m="q_d", where="p.neg_type = 'hard'"))
    np.testing.assert_allclose(shown["diff"], a["mean"] - b["mean"], rtol=1e-6, atol=1e-12)
    # Cohen's d of the slice equals the precomputed statistic when the slice is the whole run
    hc = sql(DL20, "SELECT layer, head, cohen_d FROM {head_contrasts} WHERE metric = 'q_d' "
                   "AND contrast = 'relevant_vs_hard' ORDER BY layer, head")
    np.testing.assert_allclose(shown["cohen_d"], hc["cohen_d"], rtol=1e-6)
    assert "run_p_holm" in shown.columns
    # the stars come from the test over queries, and never from fewer than MIN_QUERIES of them
    n_q = sql(DL20, "SELECT max(n_queries) AS n FROM {head_contrasts}")["n"][0]
    assert n_q < MIN_QUERIES and not shown["significant"].any()
    assert any("fewer than 10 queries" in w.value for w in at.warning)

    at.radio(key="atlas_color").set_value("cohen_d").run()
    ok(at)
    spec = charts(at)[0]
    assert "Cohen" in json.dumps(spec["layer"][0]["encoding"]["color"]["title"])

    # open one head through the selector (what a click on the map does)
    at.selectbox(key="atlas_head").set_value("2.1").run()
    ok(at)
    assert at.query_params["atlas_head"] == "2.1"
    row = shown[(shown["layer"] == 2) & (shown["head"] == 1)].iloc[0]
    assert metric(at, "Difference of q_d") == f"{row['diff']:+.4f}"
    stats = frame(at, "neg_type", "grade", "n", "median")
    direct = sql(DL20, "SELECT p.neg_type, p.grade, count(*) AS n, median(h.q_d) AS median FROM {head_attention} h "
                       "JOIN {pairs} p USING (pair_id) WHERE h.layer = 2 AND h.head = 1 GROUP BY ALL ORDER BY 1, 2")
    assert stats["n"].tolist() == direct["n"].tolist()
    np.testing.assert_allclose(stats["median"], direct["median"], rtol=1e-6)
    top = frame(at, "pair_id", "qid", "value")
    best = sql(DL20, "SELECT max(q_d) AS m FROM {head_attention} WHERE layer = 2 AND head = 1")["m"][0]
    assert top["value"].iloc[0] == pytest.approx(best, rel=1e-6)
    at.radio(key="atlas_order").set_value("smallest").run()
    ok(at)
    worst = sql(DL20, "SELECT min(q_d) AS m FROM {head_attention} WHERE layer = 2 AND head = 1")["m"][0]
    assert frame(at, "pair_id", "qid", "value")["value"].iloc[0] == pytest.approx(worst, rel=1e-6)


def test_head_atlas_state_comes_from_the_url(app, store):
    at = app(store, "head_atlas", run=DL20, atlas_metric="d_q", atlas_view="relevant_vs_easy", atlas_head="1.3",
             layers="1-2")
    ok(at)
    assert at.selectbox(key="atlas_metric").value == "d_q"
    assert at.radio(key="atlas_view").value == "relevant_vs_easy"
    assert at.selectbox(key="atlas_head").value == "1.3"
    assert at.sidebar.slider(key="sl_layers").value == (1, 2)
    # a malformed URL falls back to defaults instead of failing
    at = app(store, "head_atlas", run=DL20, atlas_metric="nonsense", atlas_head="x.y", heads="a,b,99", layers="9-1")
    ok(at)
    assert at.selectbox(key="atlas_metric").value == "q_d"


def test_head_click_event_is_parsed():
    from app import charts as C
    from app.ui import cell_from_event

    assert cell_from_event({"selection": {C.CELL: [{"layer": 2, "head": 5}]}}) == (2, 5)
    assert cell_from_event({"selection": {C.CELL: {"layer": [1], "head": [0]}}}) == (1, 0)
    assert cell_from_event({"selection": {C.CELL: {}}}) is None
    assert cell_from_event(None) is None


# -- directions -------------------------------------------------------------------------------
def test_directions_lexical_vs_semantic_chart_is_the_readers_table_and_query_level(app, store, sql):
    import matching_atlas as ma

    at = app(store, "directions", run=DL20)
    ok(at)
    shown = frame(at, "metric", "layer", "relevant_minus_hard", "easy_low")
    assert sorted(set(shown["metric"])) == ["q_d_exact", "q_d_other"]
    want = ma.open_run(store / DL20, progress=False).lexical_by_layer()
    want = want[want["metric"].isin(["q_d_exact", "q_d_other"])]
    pd.testing.assert_frame_equal(shown.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False)
    per_query = sql(DL20, "SELECT p.qid, p.neg_type, avg(h.q_d_other) AS m FROM {head_attention} h JOIN {pairs} p "
                          "USING (pair_id) WHERE h.layer = 1 AND p.neg_type IN ('relevant', 'hard') GROUP BY ALL")
    wide = per_query.pivot(index="qid", columns="neg_type", values="m").dropna()
    row = shown[(shown["metric"] == "q_d_other") & (shown["layer"] == 1)].iloc[0]
    assert row["relevant_minus_hard"] == pytest.approx((wide["relevant"] - wide["hard"]).mean(), rel=1e-6)
    assert row["n_queries_relevant_minus_hard"] == len(wide)
    assert row["relevant_minus_hard_low"] <= row["relevant_minus_hard"] <= row["relevant_minus_hard_high"]
    assert any("Lexical vs semantic matching by layer" in (c.get("title") or "") for c in charts(at)
               if isinstance(c.get("title"), str))


def test_directions_matrix_and_lines(app, store, sql):
    at = app(store, "directions", run=DL20)
    ok(at)
    shown = frame(at, "src", "dst", "direction", "mean")
    cols = ", ".join(f"avg({d}) AS {d}" for d in DIRECTIONS)
    direct = sql(DL20, f"SELECT {cols} FROM {{head_attention}}").iloc[0]
    np.testing.assert_allclose(shown.set_index("direction")["mean"][list(DIRECTIONS)], direct[list(DIRECTIONS)],
                               rtol=1e-6)
    # rows of the matrix sum to one
    np.testing.assert_allclose(shown.groupby("src")["mean"].sum(), 1.0, rtol=1e-5)

    at.radio(key="dir_scope").set_value("head").run()
    at.selectbox(key="dir_layer").set_value(1).run()
    at.selectbox(key="dir_head").set_value(2).run()
    at.radio(key="dir_show").set_value("relevant_vs_easy").run()
    ok(at)
    shown = frame(at, "direction", "mean_a", "mean_b", "diff").set_index("direction")
    q = ("SELECT avg(h.q_d) AS m FROM {head_attention} h JOIN {pairs} p USING (pair_id) "
         "WHERE h.layer = 1 AND h.head = 2 AND p.neg_type = ?")
    a, b = sql(DL20, q, ["relevant"])["m"][0], sql(DL20, q, ["easy"])["m"][0]
    assert shown.loc["q_d", "diff"] == pytest.approx(a - b, rel=1e-6)
    assert at.query_params["dir_scope"] == "head" and at.query_params["dir_layer"] == "1"

    at.multiselect(key="dir_dirs").set_value(["q_d", "d_cls"]).run()
    ok(at)
    lines = frame(at, "layer", "neg_type", "direction", "mean")
    assert set(lines["direction"]) == {"q_d", "d_cls"}
    direct = sql(DL20, "SELECT h.layer, p.neg_type, avg(h.d_cls) AS m FROM {head_attention} h JOIN {pairs} p "
                       "USING (pair_id) GROUP BY ALL ORDER BY 1, 2")
    got = lines[lines["direction"] == "d_cls"].sort_values(["layer", "neg_type"])
    np.testing.assert_allclose(got["mean"], direct["m"], rtol=1e-6)


# -- ablations --------------------------------------------------------------------------------
def test_ablations_table_and_per_query(app, store, sql):
    at = app(store, "ablations", run=DL20)
    ok(at)
    table = frame(at, "condition_id", "delta", "p_holm", "significance")
    direct = sql(DL20, "SELECT condition_id, delta FROM {ablation_summary} WHERE scope = 'pairs' AND "
                       "measure = 'nDCG@10' AND kind IN ('baseline', 'direction', 'group') ORDER BY condition_id")
    got = table.sort_values("condition_id")
    assert got["condition_id"].tolist() == direct["condition_id"].tolist()
    np.testing.assert_allclose(got["delta"], direct["delta"], rtol=1e-9)

    biggest = direct.iloc[direct["delta"].abs().idxmax()]["condition_id"]
    assert at.selectbox(key="abl_cond").value == biggest  # the largest effect is shown first
    at.selectbox(key="abl_cond").set_value("q_d@all/zero").run()
    ok(at)
    per_query = frame(at, "qid", "value", "baseline", "delta")
    direct = sql(DL20, "SELECT c.qid, c.value - b.value AS delta FROM {ablation_metrics} c JOIN {ablation_metrics} b "
                       "ON b.qid = c.qid AND b.condition_id = 'none' AND b.scope = c.scope AND b.measure = c.measure "
                       "WHERE c.condition_id = 'q_d@all/zero' AND c.scope = 'pairs' ORDER BY c.qid")
    got = per_query.sort_values("qid")
    np.testing.assert_allclose(got["delta"], direct["delta"], rtol=1e-9, atol=1e-12)
    assert metric(at, "Mean delta over the slice's queries") == f"{direct['delta'].mean():+.4f}"
    assert at.query_params["abl_cond"] == "q_d@all/zero"

    at.selectbox(key="abl_scope").set_value("judged").run()
    ok(at)
    assert at.query_params["abl_scope"] == "judged"
    assert len(charts(at)) >= 3


def test_ablations_query_level_table_and_named_contrasts(app, store):
    import matching_atlas as ma

    reader = ma.open_run(store / DL20, progress=False)
    at = app(store, "ablations", run=DL20)
    ok(at)
    table = frame(at, "condition_id", "n_queries", "score_change", "delta_pairwise_easy", "ndcg_ties")
    want = reader.ranking_effects().set_index("condition_id").loc[table["condition_id"]]
    np.testing.assert_allclose(table["delta_pairwise_easy_low"], want["delta_pairwise_easy_low"], rtol=1e-12)
    assert (table["n_queries"] == want["n_queries"].to_numpy()).all()
    assert frame(at, "title", "measure_diff")["title"].tolist() == ["Q->D vs D->Q"]

    at.text_input(key="abl_contrasts").input("cross:all, q_d:cross").run()  # parsed as the report's --contrasts
    ok(at)
    shown = frame(at, "title", "measure_diff", "significance")
    assert shown["title"].tolist() == ["Q->D vs D->Q", "cross vs all", "q_d vs cross"]
    want = reader.condition_contrasts("q_d:d_q,cross:all,q_d:cross")
    np.testing.assert_allclose(shown["p_holm"], want["p_holm"], rtol=1e-12)
    n = int(shown["n_queries"].min())
    assert (n < MIN_QUERIES) == any("fewer than 10 queries" in w.value for w in at.warning)
    if n < MIN_QUERIES:
        assert set(shown["significance"]) == {""}
    assert at.query_params["abl_contrasts"] == "cross:all, q_d:cross"  # shareable

    at.text_input(key="abl_contrasts").input("cross").run()  # malformed: one line, the default row still shown
    assert not at.exception
    assert [e.value for e in at.error] == ["'cross': expected A:B, two condition names or ids (q_d:d_q)"]
    assert frame(at, "title", "measure_diff")["title"].tolist() == ["Q->D vs D->Q"]

    at.text_input(key="abl_contrasts").input("nothing:d_q").run()
    ok(at)
    assert frame(at, "title", "missing")["missing"].tolist()[-1] == "nothing"


def test_ablations_absent_is_explained(app, store):
    at = app(store, "ablations", run=SMALL)
    ok(at)
    assert any("no ablations yet" in i.value for i in at.info)
    assert any("python -m precompute" in c.value and "--ablations" in c.value for c in at.code)


# -- spectra ----------------------------------------------------------------------------------
def test_spectra(app, store, sql):
    at = app(store, "spectra", run=DL20)
    ok(at)
    at.selectbox(key="spec_head").set_value("1.2").run()
    ok(at)
    direct = sql(DL20, "SELECT sum(sigma * alignment) / sum(sigma) AS a, max(sigma) AS s FROM {svd} "
                       "WHERE layer = 1 AND head = 2")
    assert metric(at, "Alignment score") == f"{direct['a'][0]:+.4f}"
    assert metric(at, "Largest singular value") == f"{direct['s'][0]:.4f}"
    at.selectbox(key="spec_metric").set_value("q2d_max").run()
    at.selectbox(key="spec_contrast").set_value("relevant_vs_hard").run()
    ok(at)
    assert at.query_params["spec_metric"] == "q2d_max"
    assert len(charts(at)) == 4


def test_spectra_alignment_vs_query_level_effect_with_spearman(app, store):
    import matching_atlas as ma
    from scipy.stats import spearmanr

    from precompute.statistics import fmt_p

    at = app(store, "spectra", run=DL20)
    ok(at)
    scatter = next(c for c in charts(at) if "d_z" in str(c.get("title")))
    assert scatter["encoding"]["y"]["field"] == "effect_dz"
    y_title = scatter["encoding"]["y"]["title"]  # wrapped into lines when longer than the plot's height
    assert " ".join(y_title if isinstance(y_title, list) else [y_title]).startswith("Query-level effect d_z of q_d")
    at.selectbox(key="spec_contrast").set_value("relevant_vs_hard").run()
    ok(at)
    reader = ma.open_run(store / DL20, progress=False)
    row = reader.alignment_behaviour("q_d").set_index("contrast").loc["relevant_vs_hard"]
    heads = reader.sql("SELECT a.alignment_score, c.effect_dz FROM head_alignment a JOIN head_contrasts c "
                       "USING (layer, head) WHERE c.metric = 'q_d' AND c.contrast = 'relevant_vs_hard' "
                       "AND c.effect_dz IS NOT NULL")
    assert row["rho"] == pytest.approx(spearmanr(heads["alignment_score"], heads["effect_dz"]).statistic, abs=1e-12)
    assert row["heads"] == len(heads) and row["low"] <= row["rho"] <= row["high"]
    assert metric(at, "Spearman's rho") == f"{row['rho']:+.3f}"
    assert metric(at, "Permutation p") == fmt_p(row["p"])
    assert metric(at, "95% interval") == f"[{row['low']:+.3f}, {row['high']:+.3f}]"
    assert metric(at, "Heads / queries") == f"{int(row['heads'])} / {int(row['n_queries'])}"


def test_spectra_absent_is_explained(app, store):
    at = app(store, "spectra", run=SMALL)
    ok(at)
    assert any("no spectra yet" in i.value for i in at.info)


# -- pair explorer ----------------------------------------------------------------------------
def test_pair_explorer(app, store, sql):
    at = app(store, "pair_explorer", run=DL20)
    ok(at)
    qid = sql(DL20, "SELECT qid FROM {pairs} ORDER BY qid DESC LIMIT 1")["qid"][0]
    at.selectbox(key="pair_q").set_value(qid).run()
    ok(at)
    pairs = sql(DL20, "SELECT pair_id, score, grade, neg_type FROM {pairs} WHERE qid = ? ORDER BY score DESC", [qid])
    pick = pairs.iloc[3]
    at.selectbox(key="pair_id").set_value(int(pick["pair_id"])).run()
    at.selectbox(key="pair_layer").set_value(2).run()
    at.selectbox(key="pair_head").set_value(3).run()
    ok(at)
    assert metric(at, "Model score") == f"{pick['score']:.4f}"
    assert metric(at, "Grade") == str(int(pick["grade"]))
    assert metric(at, "Negative type") == pick["neg_type"]
    assert metric(at, "Rank among the query's pairs") == f"4 / {len(pairs)}"
    stored = sql(DL20, "SELECT q2d_max FROM {head_attention} WHERE pair_id = ? AND layer = 2 AND head = 3",
                 [int(pick["pair_id"])])
    assert metric(at, "q2d_max") == f"{stored['q2d_max'][0]:.4f}"
    # the tiny store's model is not on this machine: the page says why instead of failing
    assert any("is not a folder on this machine" in i.value for i in at.info)
    assert at.query_params["pair_id"] == str(int(pick["pair_id"]))


# -- SQL --------------------------------------------------------------------------------------
def test_sql_select_and_schema(app, store, sql):
    at = app(store, "sql", run=DL20)
    ok(at)
    got = frame(at, "neg_type", "grade", "pairs")
    direct = sql(DL20, "SELECT neg_type, grade, count(*) AS pairs FROM {pairs} GROUP BY ALL ORDER BY neg_type, grade")
    assert got["pairs"].tolist() == direct["pairs"].tolist()
    assert any(e.label.startswith("head_attention_agg") for e in at.expander)
    at.text_area(key="sql_q").set_value("SELECT layer, avg(q_d) AS m FROM head_attention GROUP BY layer ORDER BY layer").run()
    ok(at)
    got = frame(at, "layer", "m")
    direct = sql(DL20, "SELECT layer, avg(q_d) AS m FROM {head_attention} GROUP BY layer ORDER BY layer")
    np.testing.assert_allclose(got["m"], direct["m"], rtol=1e-9)
    assert [b.label for b in at.get("download_button")].count("Download CSV") == 1
    at.radio(key="sql_plan").set_value("EXPLAIN ANALYZE").run()
    ok(at)
    assert at.query_params["sql_plan"] == "EXPLAIN ANALYZE"
    assert any("Total Time" in c.value and "Group By" in c.value for c in at.code)


# -- compare ----------------------------------------------------------------------------------
def test_compare_runs(app, store, sql):
    at = app(store, "compare", run=DL20)
    ok(at)
    assert at.selectbox(key="cmp_run").value == DL19  # same model, other dataset by default
    diff = frame(at, "layer", "head", "mean_a", "mean_b", "diff")
    a, b = sql(DL20, HEAD_MEANS.format(m="q_d", where="TRUE")), sql(DL19, HEAD_MEANS.format(m="q_d", where="TRUE"))
    np.testing.assert_allclose(diff["diff"], b["mean"] - a["mean"], rtol=1e-6, atol=1e-12)
    table = frame(at, "condition_id", "delta_a", "delta_b", "diff")
    da = sql(DL20, "SELECT condition_id, delta FROM {ablation_summary} WHERE scope = 'pairs' AND measure = 'nDCG@10' "
                   "AND kind <> 'baseline'")  # every kind: Table 1, sweeps, heads, components, subspaces
    db = sql(DL19, "SELECT condition_id, delta FROM {ablation_summary} WHERE scope = 'pairs' AND measure = 'nDCG@10' "
                   "AND kind <> 'baseline'")
    want = da.merge(db, on="condition_id", suffixes=("_a", "_b")).sort_values("condition_id")
    np.testing.assert_allclose(table.sort_values("condition_id")["diff"], want["delta_b"] - want["delta_a"], atol=1e-12)

    # a model with fewer layers: the difference covers the shared grid
    at.selectbox(key="cmp_run").set_value(SMALL).run()
    at.radio(key="cmp_view").set_value("relevant_vs_easy").run()
    ok(at)
    diff = frame(at, "layer", "head", "diff_a", "diff_b", "diff")
    assert diff["diff"].notna().sum() == 2 * 4
    assert any("no ablations yet" in i.value for i in at.info)


# -- no store, refused runs -------------------------------------------------------------------
def test_no_store_shows_the_precompute_command(app, tmp_path):
    from app.commands import PRECOMPUTE_COMMAND

    at = app(tmp_path / "nothing-here")
    ok(at)
    assert at.title[0].value == "Matching Atlas"
    assert any(c.value == PRECOMPUTE_COMMAND for c in at.code)
    assert any("no store yet" in w.value for w in at.warning)


def test_empty_store_shows_the_precompute_command(app, tmp_path):
    from app.commands import full_run_minutes

    (tmp_path / "store").mkdir()
    at = app(tmp_path / "store")
    ok(at)
    assert any("holds no run yet" in w.value for w in at.warning)
    summary, ablation = full_run_minutes()
    text = " ".join(m.value for m in at.markdown)
    assert f"about {summary + ablation:.0f} minutes" in text and "32 conditions" in text


def test_other_schema_version_is_refused(app, bad_store):
    at = app(bad_store, run="trec-dl-2020__old-ce")
    assert not at.exception
    msgs = [e.value for e in at.error]
    assert any(f"schema version {SCHEMA_VERSION + 1}" in m and str(SCHEMA_VERSION) in m.split("reads")[1] for m in msgs)
    assert len(at.get("vega_lite_chart")) == 0


def test_running_run_is_refused(app, bad_store):
    at = app(bad_store, run="trec-dl-2019__busy-ce")
    assert not at.exception
    assert any("'running', not 'complete'" in e.value for e in at.error)


def test_the_app_does_not_import_torch(store):
    """torch is imported only when a pair's live attention is computed (the tiny store's model is absent)."""
    import subprocess
    import sys

    from tests.app.conftest import MAIN

    code = f"""
import os, sys
os.environ["ATLAS_STORE"] = {str(store)!r}
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({str(MAIN)!r}, default_timeout=60).run()
for page in ("head_atlas", "pair_explorer", "sql"):
    at.switch_page(f"views/{{page}}.py").run()
    assert not at.exception, [e.value for e in at.exception]
print("torch" in sys.modules, "transformers" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(MAIN.parents[1]))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["False", "False"]


def test_switching_runs_keeps_a_valid_slice(app, store):
    at = app(store, "head_atlas", run=DL20)
    at.sidebar.slider(key="sl_layers").set_value((1, 2)).run()
    at.sidebar.multiselect(key="sl_heads").set_value([3]).run()
    at.selectbox(key="atlas_head").set_value("2.3").run()
    qids = at.sidebar.multiselect(key="sl_qids").options[:2]
    at.sidebar.multiselect(key="sl_qids").set_value(qids).run()
    ok(at)
    at.sidebar.selectbox(key="run").set_value(SMALL).run()  # 2 layers, other queries
    ok(at)
    assert at.sidebar.slider(key="sl_layers").value == (1, 1)
    assert at.sidebar.multiselect(key="sl_qids").value == []
    assert at.selectbox(key="atlas_head").value == "1.3"
    for page in PAGES:
        at.switch_page(f"views/{page}.py").run()
        ok(at)
