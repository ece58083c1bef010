"""The Findings page on two synthetic stores (tests/app/synthetic.py, ``build_findings_store``): one built so that
every finding of the paper holds, one where each fails. Each generated sentence's numbers are checked against direct
DuckDB computations on the store's Parquet files (not through the reader), and its words against the outcome."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from precompute.statistics import bootstrap_over_queries
from tests.app.conftest import DL20, SMALL, _direct
from tests.app.synthetic import build_findings_store

RUN = "trec-dl-2020__tiny-ce"
SEED = 7  # build_findings_store's run seed: the bootstrap of the reader and of these tests


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    return {holds: build_findings_store(tmp_path_factory.mktemp(f"findings-{holds}"), holds=holds)
            for holds in (True, False)}


@pytest.fixture(scope="module")
def pages(stores):
    """The Findings page of each store, run once: its sentences (Markdown unescaped) and its links."""
    from streamlit.testing.v1 import AppTest

    from tests.app.conftest import MAIN

    out = {}
    with pytest.MonkeyPatch.context() as mp:
        for holds, store in stores.items():
            mp.setenv("ATLAS_STORE", str(store))
            at = AppTest.from_file(str(MAIN), default_timeout=60)
            at.query_params["run"] = RUN
            at.run()
            at.switch_page("views/findings.py").run()
            assert not at.exception and not at.error, ([e.value for e in at.exception], [e.value for e in at.error])
            out[holds] = at
    return out


@pytest.fixture(scope="module")
def sql(stores):
    cons = {holds: _direct(store) for holds, store in stores.items()}
    yield lambda holds, text: cons[holds][1](RUN, text)
    for con, _ in cons.values():
        con.close()


def plain(text: str) -> str:
    return text.replace("\\", "").replace("\u2060", "")


def sentence(at, start: str, *, mark: bool = False) -> str:
    """The one sentence containing ``start``; ``mark``: with its holds / fails icon."""
    found = [plain(m.value) for m in at.markdown if start in plain(m.value)]
    assert len(found) == 1, (start, [plain(m.value)[:80] for m in at.markdown])
    return found[0] if mark else re.sub(r"^:material/\w+: ", "", found[0])


def ci(est: float, low: float, high: float) -> str:
    return f"{est:+.3f} [{low:+.3f}, {high:+.3f}]"


# -- staged matching ---------------------------------------------------------------------------------------------
def per_query_layer_diff(sql, holds: bool, metric: str, versus: str) -> tuple[list[int], np.ndarray]:
    """[layers, queries] of the query's mean over heads and relevant pairs minus its mean over the negatives."""
    df = sql(holds, f"""
        SELECT h.layer, p.qid, avg(CASE WHEN p.neg_type = 'relevant' THEN h.{metric} END)
                                - avg(CASE WHEN p.neg_type = '{versus}' THEN h.{metric} END) AS diff
        FROM {{head_attention}} h JOIN {{pairs}} p USING (pair_id) GROUP BY ALL ORDER BY h.layer, p.qid""")
    wide = df.pivot(index="layer", columns="qid", values="diff")
    return list(wide.index), wide.to_numpy()


def first_layer(sql, holds, metric, versus):
    layers, x = per_query_layer_diff(sql, holds, metric, versus)
    est, low, high = bootstrap_over_queries(lambda w: (w @ x.T) / w.sum(axis=1, keepdims=True), x.shape[1], seed=SEED)
    hits = [i for i in range(len(layers)) if low[i] > 0]
    return (layers[hits[0]], ci(est[hits[0]], low[hits[0]], high[hits[0]])) if hits else None


def test_staged_matching(pages, sql):
    text = sentence(pages[True], "Exact-match mass")
    layer, numbers = first_layer(sql, True, "q_d_exact", "easy")
    assert f"separates relevant passages from easy negatives from layer {layer} ({numbers})" in text
    layer_other, numbers = first_layer(sql, True, "q_d_other", "hard")
    assert f"other document tokens separates relevant passages from hard negatives from layer {layer_other} " \
           f"({numbers})" in text
    assert layer_other > layer and "lexical matching comes first, semantic matching later" in text
    assert "(12 queries)" in text

    text = sentence(pages[False], "Exact-match mass")
    assert first_layer(sql, False, "q_d_exact", "easy") is None
    assert "never separates relevant passages from easy negatives" in text
    assert "no lexical signal, so no staged order on this run" in text


# -- matching heads ------------------------------------------------------------------------------------------------
def test_matching_heads(pages, sql):
    for holds in (True, False):
        text = sentence(pages[holds], "heads (")
        rows = sql(holds, "SELECT * FROM {head_contrasts} WHERE metric = 'q_d' AND contrast = 'relevant_vs_easy'")
        k = int(((rows["p_holm"] < 0.05) & (rows["effect"] > 0) & (rows["n_queries"] >= 10)).sum())
        top = rows.loc[rows["effect_dz"].astype(float).idxmax()]
        head = f"{int(top['layer'])}.{int(top['head'])}"
        assert text.startswith(f"{k} of {len(rows)} heads ({k / len(rows):.0%})")
        assert f"head {head}, by {ci(top['effect'], top['effect_low'], top['effect_high'])}" in text
        patched = sql(holds, f"""SELECT ratio, ratio_low, ratio_high, n_queries, n_pairs FROM {{patching_summary}}
            WHERE experiment = 'tfc1' AND method = 'exact' AND component = 'head' AND layer = {int(top['layer'])}
                  AND head = {int(top['head'])}""").iloc[0]  # the robust summary, not the plain mean over pairs
        assert (f"patching it recovers {ci(patched['ratio'], patched['ratio_low'], patched['ratio_high'])} of the score "
                f"gap (tfc1, ratio of sums over {int(patched['n_queries'])} queries, {int(patched['n_pairs'])} patch "
                "pairs)") in text
        ablated = sql(holds, f"""SELECT delta FROM {{ablation_summary}} WHERE condition_id = 'head:{head}/zero'
            AND scope = 'pairs' AND measure = 'nDCG@10'""")["delta"].iloc[0]
        assert f"changes nDCG@10 by {ablated:+.3f}" in text
    assert "a few heads carry the matching, as in the paper" in sentence(pages[True], "heads (")
    assert "spread over more than 25% of the heads, not a few" in sentence(pages[False], "heads (")


# -- [CLS] / [SEP] -----------------------------------------------------------------------------------------------------
def test_noop_targets(pages, sql):
    for holds in (True, False):
        text = sentence(pages[holds], "give [CLS] and the separators")
        for src, word in (("q", "Query"), ("d", "Document")):
            df = sql(holds, f"""
                WITH q AS (SELECT h.layer, p.qid, avg(h.{src}_cls) AS cls, avg(h.{src}_sep1 + h.{src}_sep2) AS sep,
                                  avg(h.vw_{src}_cls + h.vw_{src}_sep1 + h.vw_{src}_sep2) AS share
                           FROM {{head_attention}} h JOIN {{pairs}} p USING (pair_id)
                           WHERE p.neg_type = 'relevant' GROUP BY ALL)
                SELECT layer, avg(cls) AS cls, avg(sep) AS sep, avg(share) AS share, count(*) AS n FROM q
                GROUP BY layer ORDER BY layer""")
            peak = df.loc[(df["cls"] + df["sep"]).idxmax()]
            assert (f"{word} tokens give [CLS] and the separators up to {peak['cls'] + peak['sep']:.1%} of their "
                    f"attention (layer {int(peak['layer'])}: [CLS] {peak['cls']:.1%}, SEP {peak['sep']:.1%})") in text
            word = "but only" if holds else "and"
            assert f"{word} {peak['share']:.1%} of the head output there (value-weighted share)" in text
            assert (peak["share"] < peak["cls"] + peak["sep"]) == holds
        assert "(relevant pairs, 12 queries)" in text
    assert "attended more than they contribute, read as a no-op" in sentence(pages[True], "give [CLS]")
    assert "they contribute at least as much as they are attended, not a no-op" in sentence(pages[False], "give [CLS]")


def test_a_run_without_shares_says_which_version_adds_them(app):
    from tests.app.test_old_stores import FIXTURES

    at = app(FIXTURES / "store-v2", page="findings")  # written by the version-2 job: no value-weighted shares
    assert not at.exception and not at.error
    noop = sentence(at, "give [CLS] and the separators", mark=True)
    assert not noop.startswith(":material/")  # neither holds nor fails: undecided
    assert ("needs the value-weighted shares (vw_<src>_<dst>), which the summary pass stores from store schema "
            "version 7; this run is version 2") in noop


# -- Table 1 ---------------------------------------------------------------------------------------------------------------
def test_table1(pages, sql):
    for holds in (True, False):
        text = sentence(pages[holds], "Without ablation nDCG@10 is")
        m = sql(holds, """SELECT qid, condition_id, value FROM {ablation_metrics}
                          WHERE scope = 'pairs' AND measure = 'nDCG@10'""").pivot(index="qid", columns="condition_id",
                                                                                values="value")
        assert f"Without ablation nDCG@10 is {m['none'].mean():.3f} (the paper's MonoBERT: 0.81)" in text
        assert f"removing Query->Document gives {m['q_d@all/zero'].mean():.3f} " \
               f"({m['q_d@all/zero'].mean() - m['none'].mean():+.3f}, Holm p" in text
        assert f"removing Document->Query gives {m['d_q@all/zero'].mean():.3f}" in text
        assert f"removing every direction gives {m['all@all/zero'].mean():.3f}" in text
        diff = (m["q_d@all/zero"] - m["d_q@all/zero"]).mean()
        assert f"The direct paired test Q->D vs D->Q: {diff:+.3f} (Holm p" in text and "12 queries)" in text
        assert (diff < 0) == holds
    assert "removing Query->Document costs more than removing Document->Query, as in the paper" in \
        sentence(pages[True], "Without ablation")
    assert "the paper's finding does not hold on this run" in sentence(pages[False], "Without ablation")
    table = next(d.value for d in pages[True].dataframe if "paper (MonoBERT)" in d.value.columns)
    assert list(table["paper (MonoBERT)"]) == ["0.81", "0.81", "0.67*", "0.48*"]


# -- QK alignment vs behaviour ---------------------------------------------------------------------------------------------
def test_alignment(pages, sql):
    from scipy.stats import spearmanr

    for holds in (True, False):
        text = sentence(pages[holds], "QK alignment rank-correlates")
        df = sql(holds, """
            WITH a AS (SELECT layer, head, sum(sigma * alignment) / sum(sigma) AS score FROM {svd} GROUP BY ALL)
            SELECT a.score, c.effect_dz FROM a JOIN {head_contrasts} c USING (layer, head)
            WHERE c.metric = 'q_d' AND c.contrast = 'relevant_vs_easy'""")
        rho = spearmanr(df["score"], df["effect_dz"].astype(float)).statistic
        assert f"Across {len(df)} heads" in text and f"relevant - easy negatives: rho {rho:+.2f} [" in text
        assert (rho > 0) == holds
    assert "heads whose QK circuit aligns query and document match more" in sentence(pages[True], "QK alignment")
    assert "alignment does not predict matching behaviour on this run" in sentence(pages[False], "QK alignment")


# -- open questions ----------------------------------------------------------------------------------------------------------
def test_other_models(pages):
    assert "the store also holds other-ce on trec-dl-2020" in sentence(pages[True], "This run is tiny-ce")
    links = [(e.proto.page, e.proto.query_string) for e in pages[True].get("page_link")]
    assert ("compare", "cmp_run=trec-dl-2020__other-ce") in links
    assert "the store holds no other model's run on trec-dl-2020" in sentence(pages[False], "This run is tiny-ce")


def test_components(pages, sql):
    for holds in (True, False):
        text = sentence(pages[holds], "component conditions")
        rows = sql(holds, """SELECT * FROM {ablation_summary} WHERE kind = 'component' AND layer IS NOT NULL
                             AND scope = 'pairs' AND measure = 'nDCG@10'""")
        worst = rows.loc[rows["delta"].idxmin()]
        assert f"of layer {int(worst['layer'])} costs the most: nDCG@10 {worst['delta']:+.3f}" in text
        k = int((rows["p_holm"] < 0.05).sum())
        assert (f"{k} of {len(rows)} single-layer component conditions change it after Holm" if k else
                f"none of the {len(rows)} single-layer component conditions changes it after Holm") in text
        assert (k > 0) == holds
        best = sql(holds, """SELECT layer, ratio, ratio_low, ratio_high, n_queries FROM {patching_summary}
            WHERE experiment = 'tfc1' AND method = 'exact' AND component <> 'head'
            ORDER BY ratio_low DESC LIMIT 1""").iloc[0]  # surely the most: the largest lower bound over queries
        assert (f"of layer {int(best['layer'])} surely recovers the largest share: "
                f"{ci(best['ratio'], best['ratio_low'], best['ratio_high'])} of the score gap (tfc1, ratio of sums "
                f"over {int(best['n_queries'])} queries") in text


def test_subspace(pages, sql):
    for holds in (True, False):
        text = sentence(pages[holds], "QK directions of head")
        own = sql(holds, """SELECT e.condition_id, e.delta, s.delta AS ndcg FROM {subspace_effects} e
            JOIN {ablation_summary} s USING (condition_id)
            WHERE e.metric = 'q_d' AND s.operation = 'remove' AND s.scope = 'pairs' AND s.measure = 'nDCG@10'
            ORDER BY e.delta LIMIT 1""").iloc[0]
        assert f"own Query->Document mass by {own['delta']:+.3f}" in text
        assert f"nDCG@10 changes by {own['ndcg']:+.3f}" in text
    assert "specific to the head's matching and changes the ranking" in sentence(pages[True], "QK directions")
    assert "not specific to the head's matching" in sentence(pages[False], "QK directions")


@pytest.mark.parametrize("start", ["Exact-match mass", "heads (", "give [CLS]", "Without ablation", "QK alignment",
                                   "component conditions", "QK directions of head"])
def test_each_finding_is_marked_holding_or_not(pages, start):
    assert sentence(pages[True], start, mark=True).startswith(":material/check_circle: ")
    assert sentence(pages[False], start, mark=True).startswith(":material/cancel: ")


def test_links_name_their_page_and_view(pages, sql):
    links = [(e.proto.page, e.proto.query_string) for e in pages[True].get("page_link")]
    assert {"directions", "head-atlas", "ablations", "spectra", "compare", "patching"} <= {p for p, _ in links}
    head = re.search(r"head (\d\.\d), by", sentence(pages[True], "heads (")).group(1)
    assert ("head-atlas", f"atlas_view=relevant_vs_easy&atlas_head={head}") in links
    assert ("patching", f"pat_exp=tfc1&pat_target=head&pat_head={head}") in links
    assert ("ablations", "abl_cond=q_d%40all%2Fzero") in links
    worst = sql(True, """SELECT condition_id FROM {ablation_summary} WHERE kind = 'component' AND layer IS NOT NULL
                         AND scope = 'pairs' AND measure = 'nDCG@10' ORDER BY delta LIMIT 1""")["condition_id"][0]
    assert any(p == "ablations" and q.startswith("abl_cond=") and worst.split("@")[0] in q for p, q in links)
    assert any(p == "patching" and "pat_target=component&pat_comp=" in q for p, q in links), links
    sub = re.search(r"QK directions of head (\d\.\d)", sentence(pages[True], "QK directions")).group(1)
    assert any(p == "ablations" and q.startswith(f"abl_sub=qk%3A{sub}") for p, q in links), links


# -- few queries, missing analyses ---------------------------------------------------------------------------------
def test_few_queries_warn_and_claim_nothing(app, store):
    at = app(store, page="findings", run=DL20)  # 6 queries
    assert not at.exception and not at.error
    assert len(at.warning) >= 5 and all("fewer than 10 queries" in w.value for w in at.warning)
    heads = sentence(at, "no head is called significant")
    assert heads.startswith("With 6 queries (fewer than 10)")
    assert "fewer than 10 queries, not tested for significance" in sentence(at, "Without ablation")
    table = next(d.value for d in at.dataframe if "paper (MonoBERT)" in d.value.columns)
    assert not any(str(v).endswith("*") for v in table["this run"])


def test_missing_analyses_print_their_command(app, store):
    at = app(store, page="findings", run=SMALL)  # no optional tables
    assert not at.exception and not at.error
    commands = [c.value for c in at.code]
    assert any("--ablations" in c and "components" in c for c in commands), commands
    assert any("--patching" in c for c in commands), commands
    assert all(c.startswith("python -m precompute ") for c in commands), commands


def test_a_causal_model_gets_no_query_to_document_claim(app, family_store):
    from tests.app.synthetic import CAUSAL

    at = app(family_store, page="findings", run=CAUSAL)
    assert not at.exception and not at.error
    assert sum("q_d is not possible (causal)" in i.value for i in at.info) == 2
    assert not any("Exact-match mass" in m.value or "heads (" in m.value for m in at.markdown)
    noop = sentence(at, "give [CLS] and the separators")
    assert "nan" not in noop and "(relevant pairs, 3 queries)" in noop
    assert "(causal: each token attends only to earlier ones)" in sentence(at, "This run is tiny-decoder")


def test_hard_easy_split_of_removing_query_to_document(pages, sql):
    """Pairwise accuracy (a tie counts 1/2) against hard and against easy negatives, per query, under q_d removal
    minus without: the mean over queries is the sentence's."""
    scores = sql(True, """SELECT s.condition_id, p.qid, p.neg_type, s.score FROM {ablation_scores} s
                          JOIN {pairs} p USING (pair_id) WHERE s.condition_id IN ('none', 'q_d@all/zero')""")

    def accuracy(g, versus):
        rel, neg = g[g["neg_type"] == "relevant"]["score"].to_numpy(), g[g["neg_type"] == versus]["score"].to_numpy()
        return float(((rel[:, None] > neg[None]) + 0.5 * (rel[:, None] == neg[None])).mean())

    text = sentence(pages[True], "changes pairwise accuracy")
    for versus in ("hard", "easy"):
        acc = scores.groupby(["qid", "condition_id"]).apply(accuracy, versus).unstack()
        change = float((acc["q_d@all/zero"] - acc["none"]).mean())
        assert f"against {versus} negatives by {change:+.3f} [" in text
    assert "(12 queries): it hurts the ordering more against hard negatives (semantic matching)" in text


def test_findings_quote_exact_patching_where_computed_and_attribution_elsewhere():
    from app.findings import robust_patching

    summary = pd.DataFrame({"method": ["attribution", "attribution", "exact", "attribution"],
                            "layer": [0, 0, 0, 1], "head": [0, 1, 0, None],
                            "component": ["head", "head", "head", "mlp"], "segment": ["all"] * 4,
                            "ratio": [0.1, 0.2, 0.3, 0.4]})
    got = robust_patching(summary).sort_values(["layer", "head"])
    assert got[["method", "ratio"]].values.tolist() == [["exact", 0.3], ["attribution", 0.2], ["attribution", 0.4]]
    assert robust_patching(summary.iloc[:0]).empty
