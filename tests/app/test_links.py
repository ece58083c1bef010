"""Links between pages (app/links.py): each table of pairs or heads links to the page at that pair, layer and head;
following the link (its URL given to a new session, as a new tab does) lands there; a hostile link does no harm."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from tests.app.conftest import DL20, MAIN
from tests.app.test_pages import charts, frame, ok

FILES = {"pair-explorer": "pair_explorer", "head-atlas": "head_atlas", "spectra": "spectra"}


def follow(app, store, link: str):
    """A fresh session opened at ``link`` (a relative URL of the app), as a click on a link column does."""
    parts = urlsplit(link)
    params = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    return app(store, FILES[parts.path], **params), params


def links_in(at, column: str) -> list[str]:
    return [v for d in at.dataframe if column in d.value.columns for v in d.value[column] if isinstance(v, str)]


def test_link_targets_are_the_apps_page_paths():
    from app import links

    tree = ast.parse(Path(MAIN).read_text())
    pages = next(n.value for n in tree.body if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "PAGES")
    paths = {elt.elts[3].value for elt in pages.elts}
    assert set(links.TARGETS) <= paths


def test_a_hostile_value_cannot_add_a_parameter_or_leave_the_app(monkeypatch):
    import streamlit as st

    from app import links

    monkeypatch.setattr(st, "query_params", {"run": "r&x=1", "neg": "hard", "atlas_metric": "d_q"})
    url = links.to_pair(7, "q1&pair_id=99#javascript:alert(1)", 2, 3)
    parts = urlsplit(url)
    assert parts.scheme == "" and parts.netloc == "" and parts.path == "pair-explorer" and not parts.fragment
    got = parse_qs(parts.query)
    # the run and the slice are carried, another page's own parameter is not; every value arrives as it was
    assert got == {"run": ["r&x=1"], "neg": ["hard"], "pair_q": ["q1&pair_id=99#javascript:alert(1)"],
                   "pair_id": ["7"], "pair_layer": ["2"], "pair_head": ["3"]}
    with pytest.raises(ValueError):
        links.url("https://evil.example/")


def test_head_atlas_top_pairs_open_the_pair_at_that_head(app, store, sql):
    at = app(store, "head_atlas", run=DL20, atlas_head="2.1", neg="relevant,hard")
    ok(at)
    top = frame(at, "pair_id", "qid", "value")
    assert len(top) and top["open"].notna().all()
    link = top["open"].iloc[3]
    at2, params = follow(app, store, link)
    ok(at2)
    assert params["pair_layer"] == "2" and params["pair_head"] == "1" and params["neg"] == "relevant,hard"
    assert at2.selectbox(key="pair_q").value == top["qid"].iloc[3]
    assert at2.selectbox(key="pair_id").value == top["pair_id"].iloc[3]
    assert (at2.selectbox(key="pair_layer").value, at2.selectbox(key="pair_head").value) == (2, 1)
    assert at2.sidebar.multiselect(key="sl_neg").value == ["relevant", "hard"]
    assert not any("The link asks for" in w.value for w in at2.warning)
    # the stored value the atlas listed is the one the Pair explorer's head shows
    direct = sql(DL20, "SELECT q_d FROM {head_attention} WHERE layer = 2 AND head = 1 AND pair_id = ?",
                 [int(top["pair_id"].iloc[3])])
    assert top["value"].iloc[3] == pytest.approx(direct["q_d"][0], rel=1e-6)


def test_patching_pairs_and_heads_link_to_their_pages(app, store):
    at = app(store, "patching", run=DL20, pat_head="1.0")
    ok(at)
    pairs = frame(at, "patch_id", "effect", "open")
    at2, params = follow(app, store, pairs["open"].iloc[0])
    ok(at2)
    assert (at2.selectbox(key="pair_layer").value, at2.selectbox(key="pair_head").value) == (1, 0)
    assert at2.selectbox(key="pair_q").value == pairs["qid"].iloc[0]
    heads = frame(at, "rank", "head_label", "open")
    at3, params = follow(app, store, heads["open"].iloc[0])
    ok(at3)
    assert at3.selectbox(key="atlas_head").value == heads["head_label"].iloc[0]


def test_a_subspace_condition_opens_its_head_spectrum_with_the_removed_components(app, store, sql):
    at = app(store, "ablations", run=DL20)
    ok(at)
    sub = frame(at, "condition_id", "head_label", "spectrum")
    row = sub[sub["condition_id"].str.contains(":k2/remove")].iloc[0]
    at2, params = follow(app, store, row["spectrum"])
    ok(at2)
    assert at2.selectbox(key="spec_head").value == row["head_label"]
    assert at2.selectbox(key="spec_removed").value == row["condition_id"]
    removed = frame(at2, "k", "sigma", "alignment")
    layer, head = (int(x) for x in row["head_label"].split("."))
    direct = sql(DL20, "SELECT k, sigma FROM {svd} WHERE layer = ? AND head = ? ORDER BY sigma DESC LIMIT 2",
                 [layer, head])
    assert sorted(removed["k"]) == sorted(direct["k"]) == [0, 1]
    rings = [s for s in charts(at2) if "layer" in s and any(l.get("mark", {}).get("size") == 220 for l in s["layer"])]
    assert len(rings) == 2  # both spectrum charts circle the removed components


def test_aligned_components_are_the_largest_sigma_times_alignment():
    from precompute.conditions.subspace_specs import aligned_order, removed_components

    assert aligned_order([4.0, 3.0, 2.0, 1.0], [0.1, 0.9, 0.9, -1.0], 2) == [1, 2]
    assert removed_components("qk:3.5:a2/remove") == (3, 5, "aligned", 2)
    assert removed_components("qk:3.5:k4/scale=2") == (3, 5, "top", 4)
    assert removed_components("q_d@all/zero") is None and removed_components("qk:3.5:k0/remove") is None


def test_a_hostile_link_falls_back_to_the_defaults(app, store):
    at = app(store, "pair_explorer", run=DL20, pair_q="<script>", pair_id="99999999", pair_layer="x",
             pair_head="-1", pair_from="evil", pair_to="")
    ok(at)
    first = at.selectbox(key="pair_q").options[0]
    assert at.selectbox(key="pair_q").value == first.split(":")[0]
    assert at.selectbox(key="pair_layer").value == 0 and at.selectbox(key="pair_head").value == 0
    said = [w.value for w in at.warning if "The link asks for" in w.value]
    assert said and "<script>" in said[0] and "99999999" in said[0]  # told, as text (a code span)
    at = app(store, "spectra", run=DL20, spec_head="1.2", spec_removed="qk:0.0:k1/remove')--")
    ok(at)
    assert at.selectbox(key="spec_head").value == "1.2"
    assert "spec_removed" not in at.query_params


def test_pair_explorer_shows_every_head_of_the_layer_with_cls_and_sep(app, store, sql):
    at = app(store, "pair_explorer", run=DL20, pair_layer="2")
    ok(at)
    pair_id = int(at.selectbox(key="pair_id").value)
    chart = next(c for c in at.get("vega_lite_chart") if "every head of layer 2" in json.loads(c.proto.spec)["title"])
    values = pa.ipc.open_stream(chart.proto.datasets[0].data.data).read_all().to_pandas()
    assert sorted(values["head"].unique()) == list(range(4))
    assert {"cls", "sep1", "sep2"} <= set(values["dst"]) and {"cls", "sep1", "sep2"} <= set(values["src"])
    direct = sql(DL20, "SELECT head, q_cls, d_sep2 FROM {head_attention} WHERE layer = 2 AND pair_id = ? ORDER BY head",
                 [pair_id])
    for _, r in direct.iterrows():
        got = values[(values["head"] == r["head"])].set_index(["src", "dst"])["value"]
        assert got[("q", "cls")] == pytest.approx(r["q_cls"], rel=1e-6)
        assert got[("d", "sep2")] == pytest.approx(r["d_sep2"], rel=1e-6)
    # the every-head grid is clickable (a cell selection), as the Head atlas' map
    grid = next(s for s in charts(at) if "on every head" in json.dumps(s.get("title", "")))
    assert '"name": "cell"' in json.dumps(grid)


# -- consistent slices ----------------------------------------------------------------------------
def test_a_contrast_map_is_not_drawn_when_the_slice_removes_one_side(app, store):
    at = app(store, "head_atlas", run=DL20, atlas_view="relevant_vs_hard", neg="easy")
    ok(at)
    assert not charts(at)
    assert any("leaves no relevant and no hard pairs" in w.value for w in at.warning)
    at = app(store, "head_atlas", run=DL20, atlas_view="relevant_vs_easy", neg="relevant,easy")
    ok(at)
    assert charts(at) and not any("leaves no" in w.value for w in at.warning)


def test_a_box_plot_says_when_the_slice_removes_the_other_side(app, store):
    at = app(store, "head_atlas", run=DL20, atlas_view="relevant_vs_hard", grades="3", atlas_head="1.1")
    ok(at)
    assert any(c for c in charts(at) if "on every head" not in json.dumps(c.get("title", "")))
    stats = frame(at, "neg_type", "grade", "n", "median")
    assert set(stats["neg_type"]) == {"relevant"}
    assert any("remove the hard side" in w.value for w in at.warning)
    at = app(store, "head_atlas", run=DL20, atlas_view="relevant_vs_hard", atlas_head="1.1")
    ok(at)
    assert not any("side of the" in w.value for w in at.warning)


def test_sliced_away_rule():
    from app.slice import sliced_away
    from matching_atlas.slice import Slice

    options = pd.DataFrame({"neg_type": ["relevant", "relevant", "hard", "easy"], "grade": [2, 3, 0, -1]})
    assert sliced_away(Slice(), options, ("relevant", "hard")) == []
    assert sliced_away(Slice(neg_types=("easy",)), options, ("relevant", "hard")) == ["relevant", "hard"]
    assert sliced_away(Slice(grades=(3,)), options, ("relevant", "hard")) == ["hard"]
    assert sliced_away(Slice(grades=(3,)), options, ("relevant", "hard"), grades_on=("relevant",)) == []
    assert sliced_away(Slice(grades=(0,)), options, ("relevant", "hard"), grades_on=("relevant",)) == ["relevant"]


def test_switching_the_patching_experiment_drops_selections_it_does_not_have(app, store):
    at = app(store, "patching", run=DL20, pat_target="component", pat_comp="2.mlp.q", pat_head="1.0")
    ok(at)
    assert at.selectbox(key="pat_comp").value == "2.mlp.q"
    at.radio(key="pat_exp").set_value("cls").run()
    ok(at)
    comps = at.selectbox(key="pat_comp").options
    assert "2.mlp.q" not in [o.split(" ")[0] for o in comps]
    assert at.selectbox(key="pat_comp").value != "2.mlp.q" and at.query_params.get("pat_comp") != "2.mlp.q"
    assert at.selectbox(key="pat_head").value == "1.0"  # a head both experiments patched stays


def test_the_sql_page_shows_no_slice_and_keeps_it_for_the_other_pages(app, store):
    at = app(store, "head_atlas", run=DL20)
    at.sidebar.slider(key="sl_layers").set_value((1, 2)).run()
    at.switch_page("views/sql.py").run()
    ok(at)
    assert not [w for w in at.sidebar.multiselect if w.key == "sl_heads"]
    assert any("The slice does not apply on the SQL page" in c.value for c in at.sidebar.caption)
    at.switch_page("views/head_atlas.py").run()
    ok(at)
    assert at.sidebar.slider(key="sl_layers").value == (1, 2)


def test_every_example_query_of_the_docs_runs_in_the_console(app, store):
    from app.connections import run_sql
    from app.sql_examples import examples
    from matching_atlas.opening import inspect_run

    found = examples()
    assert len(found) >= 5 and all(e.title and e.sql.upper().startswith("SELECT") for e in found)
    run = inspect_run(store / DL20)
    rows = [len(run_sql(run, e.sql, limit=50, session="test-examples").frame) for e in found]  # none raises
    assert sum(n > 0 for n in rows) >= len(found) // 2, rows  # (some select nothing on the tiny synthetic store)
    at = app(store, "sql", run=DL20)
    at.selectbox(key="sql_example").set_value(2).run()
    ok(at)
    assert at.text_area(key="sql_q").value == found[2].sql
    assert at.query_params["sql_q"] == found[2].sql


# -- compare runs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def twin_store(tmp_path_factory):
    """Two runs on the same six queries (one seed): a 3-layer model, and a 2-layer one without component conditions."""
    from tests.app.synthetic import build_run

    root = tmp_path_factory.mktemp("twins")
    a = build_run(root, dataset="trec-dl-2020", model="tiny-ce", seed=0)
    b = build_run(root, dataset="trec-dl-2020", model="tiny-ce-2", layers=2, seed=0, without_kinds=("component",))
    return root, a.name, b.name


def test_compare_labels_runs_by_folder_and_tests_b_minus_a_over_shared_queries(app, twin_store):
    from scipy.stats import ttest_rel

    import matching_atlas as ma

    root, a, b = twin_store
    at = app(root, "compare", run=a)
    ok(at)
    assert at.selectbox(key="cmp_run").value == b
    # the folder names tell the runs apart in every title (never cut: a title is a list of lines)
    assert any(f"A: {a}" in c.value for c in at.caption)
    titles = [s.get("title") for s in charts(at)]
    assert any(a in json.dumps(t) for t in titles) and any(b in json.dumps(t) for t in titles)
    assert not any(str(line).endswith("...") for t in titles for line in (t if isinstance(t, list) else [t]))
    table = frame(at, "condition_id", "kind", "shared_queries", "test_diff", "significance")
    assert {"component", "subspace", "head", "direction"} <= set(table["kind"])  # every kind of either run
    assert table["kind"].notna().all()
    comp = table[table["kind"] == "component"]
    assert comp["delta_a"].notna().all() and comp["delta_b"].isna().all()
    assert any("Only run A has" in i.value and "components" in i.value for i in at.info)  # why B has none
    # B - A tested over shared queries, against a direct computation
    ra, rb = ma.open_run(root / a, progress=False), ma.open_run(root / b, progress=False)
    qa, qb = ra.query_deltas(), rb.query_deltas()
    cid = "q_d@all/zero"
    x = qa[qa["condition_id"] == cid].set_index("qid")["delta"]
    y = qb[qb["condition_id"] == cid].set_index("qid")["delta"]
    row = table.set_index("condition_id").loc[cid]
    assert row["shared_queries"] == len(x) == 6
    assert row["test_diff"] == pytest.approx((y - x).mean(), abs=1e-12)
    assert row["p"] == pytest.approx(ttest_rel(y.loc[x.index], x).pvalue, rel=1e-9)
    assert row["significance"] == ""  # 6 queries: never a star
    assert any("rests on 6 shared queries" in w.value for w in at.warning)


def test_compare_deltas_is_a_paired_test_over_queries():
    from scipy.stats import ttest_rel

    from matching_atlas.ablations import compare_deltas
    from precompute.statistics import MIN_QUERIES

    rng = np.random.default_rng(0)
    qids = [f"q{i}" for i in range(12)]
    a = pd.DataFrame({"condition_id": ["c1"] * 12 + ["c2"] * 12, "qid": qids * 2, "delta": rng.normal(0, 1, 24)})
    b = a.assign(delta=a["delta"] + np.r_[rng.normal(0.8, 0.3, 12), rng.normal(0, 0.3, 12)])
    b = b[b["qid"] != "q0"]  # B lacks one query: the test uses the 11 both hold
    got = compare_deltas(a, b).set_index("condition_id")
    for cid in ("c1", "c2"):
        x = a[(a["condition_id"] == cid) & (a["qid"] != "q0")]["delta"].to_numpy()
        y = b[b["condition_id"] == cid]["delta"].to_numpy()
        assert got.at[cid, "n_queries"] == 11 >= MIN_QUERIES
        assert got.at[cid, "p"] == pytest.approx(ttest_rel(y, x).pvalue, rel=1e-9)
    assert got.at["c1", "significance"] == "***" and got.at["c2", "p_holm"] >= got.at["c2", "p"]


def test_compare_draws_no_contrast_map_for_a_run_whose_slice_removes_a_side(app, store):
    at = app(store, "compare", run=DL20, cmp_view="relevant_vs_hard", neg="easy")
    ok(at)
    assert sum("leaves no relevant and no hard pairs" in w.value for w in at.warning) == 2
    assert not [c for c in charts(at) if "relevant" in json.dumps(c.get("title", "")).lower()
                and "ablation" not in json.dumps(c.get("title", "")).lower()]


def test_the_head_atlas_and_spectra_link_their_head_to_each_other(app, store):
    at = app(store, "head_atlas", run=DL20, atlas_head="1.2")
    ok(at)
    (button,) = [b for b in at.get("link_button") if "in Spectra" in b.proto.label]
    at2, _ = follow(app, store, button.proto.url)
    ok(at2)
    assert at2.selectbox(key="spec_head").value == "1.2"
    (back,) = [b for b in at2.get("link_button") if "in the Head atlas" in b.proto.label]
    at3, _ = follow(app, store, back.proto.url)
    ok(at3)
    assert at3.selectbox(key="atlas_head").value == "1.2"


def test_an_aligned_subspace_condition_opens_its_most_aligned_components(app, tmp_path, sql):
    import duckdb

    from tests.app.synthetic import build_run

    run = build_run(tmp_path, dataset="trec-dl-2020", model="tiny-ce", seed=0, aligned=True)
    at = app(tmp_path, "ablations", run=run.name)
    ok(at)
    sub = frame(at, "condition_id", "head_label", "spectrum")
    row = sub[sub["condition_id"].str.contains(":a2/remove")].iloc[0]
    at2, params = follow(app, tmp_path, row["spectrum"])
    ok(at2)
    assert params["spec_removed"] == row["condition_id"]
    layer, head = (int(x) for x in row["head_label"].split("."))
    direct = duckdb.connect().execute(
        f"SELECT k FROM '{run}/svd.parquet' WHERE layer = ? AND head = ? ORDER BY sigma * alignment DESC, k LIMIT 2",
        [layer, head]).df()
    removed = frame(at2, "k", "sigma", "alignment")
    assert list(removed["k"]) == list(direct["k"])  # in the order the condition picks them
    assert any("with the largest sigma_k (u_k . v_k)" in c.value for c in at2.caption)
