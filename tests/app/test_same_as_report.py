"""The app's pages and ``python -m precompute.report`` print the same tables: both call the reader's methods
(matching_atlas.Run), and the report's printed numbers are the cells of those DataFrames."""

from __future__ import annotations

import pandas as pd
import pytest

import matching_atlas as ma
from matching_atlas.ablations import TABLE1_KINDS
from precompute import report
from precompute.statistics import fmt_p
from tests.conftest import REPO

RUN = REPO / "tests" / "fixtures" / "store-v2" / "tiny-dl__tiny-bert"


@pytest.fixture(scope="module")
def run():
    return ma.open_run(RUN, progress=False)


def test_the_ablations_page_shows_the_readers_table1(app, run):
    from tests.app.test_pages import frame, ok

    at = app(RUN.parent, "ablations")
    ok(at)
    shown = frame(at, "condition_id", "removes", "significance")
    want = run.table1(kind=TABLE1_KINDS)
    assert shown["condition_id"].tolist() == want["condition_id"].tolist()
    for col in ("n_queries", "mean", "baseline", "delta", "p", "p_holm"):
        pd.testing.assert_series_equal(shown[col].reset_index(drop=True), want[col].reset_index(drop=True),
                                       check_dtype=False, check_names=False)


def test_the_reports_numbers_are_the_readers_cells(run, capsys):
    assert report.main([str(RUN)]) == 0
    out = capsys.readouterr().out
    rows = report.load(RUN, "nDCG@10", "pairs")[2]
    assert rows == report.records(run.table1())  # the report's rows are table1's
    table = run.table1(kind="direction")
    assert len(table)
    for r in table.itertuples():
        line = next(l for l in out.splitlines() if f" {r.mode} " in l and f"{r.mean:.4f}" in l
                    and f"{r.delta:+.4f}" in l and report.mark(r.p_holm) in l)
        assert line
    summary = run.patching_summary("cls")  # what the Patching page's robust summary shows
    heads = summary[summary["component"] == "head"].sort_values("rank").head(3)
    assert len(heads)
    for h in heads.itertuples():
        head = f"L{int(h.layer)}.H{int(h.head)}"
        assert f"{int(h.rank):>4} {head:<7} {h.ratio:+.3f} [{h.ratio_low:+.3f}, {h.ratio_high:+.3f}]" in out


def test_compare_prints_the_readers_table(run, capsys):
    assert report.main([str(RUN), "--compare", str(RUN), "--metric", "q2d_max"]) == 0
    out = capsys.readouterr().out
    table = run.compare(run, metric="q2d_max")
    printed = [line.split() for line in out.splitlines() if line[:1].isdigit()]
    assert [float(p[3]) for p in printed] == [round(v, 4) for v in table["value_a"]]


def _cells(text: str) -> list[float]:
    """The numbers of one printed cell group such as '+0.2982 [+0.236,+0.352]'."""
    import re

    return [float(x) for x in re.findall(r"[+-]?\d+\.\d+", text)]


def test_the_ablations_page_shows_the_readers_query_level_table1_and_contrasts(app, run, capsys):
    from tests.app.test_pages import frame, ok

    at = app(RUN.parent, "ablations")
    ok(at)
    shown = frame(at, "condition_id", "score_change", "delta_pairwise_hard", "ndcg_ties")
    want = run.ranking_effects().set_index("condition_id").loc[shown["condition_id"]].reset_index()
    assert len(shown) and set(shown["kind"]) <= set(TABLE1_KINDS)
    for col in ("n_queries", "score_change", "score_change_low", "pairwise", "delta_pairwise_hard_high",
                "delta_pairwise_easy", "ndcg_ties"):
        pd.testing.assert_series_equal(shown[col].reset_index(drop=True), want[col].reset_index(drop=True),
                                       check_dtype=False, check_names=False)
    contrasts = frame(at, "title", "measure_diff", "p_holm")
    assert contrasts["title"].tolist() == ["Q->D vs D->Q"]
    pd.testing.assert_frame_equal(contrasts.drop(columns="significance").reset_index(drop=True),
                                  run.condition_contrasts(), check_dtype=False)
    assert set(contrasts["significance"]) == {""}  # 3 queries: no stars
    assert any("fewer than 10 queries" in w.value for w in at.warning)

    assert report.main([str(RUN)]) == 0  # the report prints the same cells
    out = capsys.readouterr().out.splitlines()
    for r in shown[shown["kind"] == "direction"].itertuples():
        score = f"{r.score_change:+8.4f} [{r.score_change_low:+.3f},{r.score_change_high:+.3f}]"
        line = next(l for l in out if f" {r.mode} " in l and score in l)
        assert f"{r.pairwise:6.4f}" in line and f"{r.ndcg_ties:6.4f}" in line
        assert f"{r.delta_pairwise_hard:+8.4f} [{r.delta_pairwise_hard_low:+.3f},{r.delta_pairwise_hard_high:+.3f}]" in line
    c = contrasts.iloc[0]
    line = next(l for l in out if l.startswith("Q->D vs D->Q"))
    assert f"{c.measure_diff:+10.4f}" in line and f"{c.pairwise_easy:+8.4f} [{c.pairwise_easy_low:+.3f}" in line


def test_the_report_prints_the_readers_lexical_table(run, capsys):
    assert report.main([str(RUN)]) == 0
    out = capsys.readouterr().out.splitlines()
    table = run.lexical_by_layer()
    assert len(table)
    for r in table.itertuples():
        cells = f"{r.relevant:8.4f}  {r.hard:8.4f}  {r.easy:8.4f}"
        diff = f"{r.relevant_minus_hard:+.4f} [{r.relevant_minus_hard_low:+.4f},{r.relevant_minus_hard_high:+.4f}]"
        assert any(cells in l and diff in l and l.split()[0] == str(r.layer) for l in out), (r.metric, r.layer)


def test_the_report_prints_the_readers_noop_check(store, capsys):
    from tests.app.conftest import DL20

    table = ma.open_run(store / DL20, progress=False).noop_targets()
    assert report.main([str(store / DL20)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(table) and "No-op check" in "\n".join(out)
    for (source, layer), rows in table.groupby(["source", "layer"]):
        cells = [f"{r.mass:.4f} [{r.mass_low:.4f},{r.mass_high:.4f}]" for r in rows.itertuples()]
        assert any(all(c in l for c in cells) and l.split()[0] == str(layer) for l in out), (source, layer)


def test_the_report_prints_the_alignment_test_the_spectra_page_shows(store, capsys):
    from tests.app.conftest import DL20

    reader = ma.open_run(store / DL20, progress=False)
    table = reader.alignment_behaviour()  # q_d, the report's metric
    assert len(table)
    assert report.main([str(store / DL20)]) == 0
    out = capsys.readouterr().out
    for r in table.itertuples():
        assert (f"  {r.label:<28} heads {r.heads:>4}  rho {r.rho:+.3f} [{r.low:+.3f},{r.high:+.3f}]  "
                f"p {fmt_p(r.p)}") in out
