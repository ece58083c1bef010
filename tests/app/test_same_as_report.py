"""The app's pages and ``python -m precompute.report`` print the same tables: both call the reader's methods
(matching_atlas.Run), and the report's printed numbers are the cells of those DataFrames."""

from __future__ import annotations

import pandas as pd
import pytest

import matching_atlas as ma
from matching_atlas.ablations import TABLE1_KINDS
from precompute import report
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
