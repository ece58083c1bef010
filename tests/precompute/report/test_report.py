"""python -m precompute.report: Table 1 form of a finished run, and one-line errors (exit 2) for anything else."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from precompute import report
from precompute.store.connect import connect
from tests.conftest import REPO
from tests.precompute.analyses.test_ablations import run_job, sensitive_model


@pytest.fixture(scope="module")
def finished(tiny_dataset, tmp_path_factory):
    model = sensitive_model("bert", tmp_path_factory.mktemp("report-bert"))
    _, root = run_job(tiny_dataset, model, tmp_path_factory.mktemp("report") / "run", ablations=("groups", "layers", "heads"),
                      ablation_groups=("mine=Q->D,D->Q",), ablation_heads=("1.*",), ablation_modes=("zero", "mask"),
                      contrasts=("cross:all",))
    return tiny_dataset, model, root


def test_the_jobs_declared_contrasts_are_the_reports_default(finished, capsys):
    """--contrasts given to the job is recorded with its settings; the report compares those pairs after Q->D vs D->Q
    unless its own --contrasts names others."""
    import matching_atlas as ma

    _, _, root = finished
    assert ma.open_run(root, progress=False).declared_contrasts() == [("q_d", "d_q"), ("cross", "all")]
    assert report.main([str(root)]) == 0
    out = capsys.readouterr().out
    block = out[out.index("Direct comparisons"):].splitlines()[3:7]
    assert block[0].startswith("q_d vs d_q") and "no condition 'q_d'" in block[0]  # a run of groups only
    assert [l.split("/")[0].strip() for l in block[1:3]] == ["cross vs all"] * 2
    assert report.main([str(root), "--contrasts", "mine:all"]) == 0
    again = capsys.readouterr().out
    block = again[again.index("Direct comparisons"):].splitlines()[3:6]
    assert block[0].startswith("q_d vs d_q") and [l.split("/")[0].strip() for l in block[1:3]] == ["mine vs all"] * 2


def test_table_one_form(finished, capsys):
    _, _, root = finished
    assert report.main([str(root)]) == 0
    out = capsys.readouterr().out
    base = connect(root).execute("SELECT mean FROM ablation_summary WHERE condition_id = 'none' AND measure = 'nDCG@10'").fetchone()[0]
    assert f"nDCG@10 = {base:.4f}" in out
    assert "Model     " in out and "3 layers x 4 heads" in out and "Holm-corrected" in out and "*** p<0.001" in out
    assert "condition" in out and "delta" in out and "Q<->D (cross)" in out and "all 25 (all)" in out and "mine" in out
    cross = connect(root).execute("SELECT mean, delta, p_holm FROM ablation_summary WHERE condition_id = 'cross@all/zero'").fetchone()
    line = next(l for l in out.splitlines() if l.startswith("Q<->D (cross)") and " zero " in l)
    n_queries = connect(root).execute("SELECT count(DISTINCT qid) FROM pairs").fetchone()[0]
    assert f"{cross[0]:.4f}" in line and f"{cross[1]:+.4f}" in line and report.mark(cross[2], n_queries=n_queries) in line
    assert "Per-layer sweeps" in out and "Q->D /zero" in out and "L2" in out
    assert "Heads" in out and "L1" in out and "H3" in out


def test_filters(finished, capsys):
    _, _, root = finished
    assert report.main([str(root), "--kind", "head", "--mode", "zero", "--measure", "ndcg@10"]) == 0
    out = capsys.readouterr().out
    assert "Heads" in out and "Groups" not in out and "Per-layer" not in out


def test_marks():
    assert [report.mark(p) for p in (None, 0.2, 0.04, 0.009, 0.0001)] == ["", "", "*", "**", "***"]
    assert report.mark(0.0001, n_queries=9) == "" and report.mark(0.0001, n_queries=10) == "***"


def test_fewer_than_ten_queries_no_stars_and_the_direct_test(finished, capsys):
    """The tiny run has fewer than 10 queries: its header says so, no line carries a star even where a corrected p is
    below 0.05, and Table 1's query-level part and the direct comparisons are printed."""
    _, _, root = finished
    con = connect(root)
    assert con.execute("SELECT count(DISTINCT qid) FROM pairs").fetchone()[0] < 10
    assert report.main([str(root), "--contrasts", "q_d:d_q,mine:cross"]) == 0
    out = capsys.readouterr().out
    header = out.split("\n\n", 1)[0]
    assert "fewer than 10 queries" in header
    manifest, measure, rows = report.load(root, "nDCG@10", "pairs")
    significant = [{**r, "p_holm": None if r["p_holm"] is None else 1e-5} for r in rows]  # as if every test passed
    printed = report.render(manifest, root, measure, "pairs", significant, list(report.kind_order()), None)
    legend = "* p<0.05  ** p<0.01  *** p<0.001"
    assert not any("*" in l.replace(legend, "").replace("*->", "") for l in printed.splitlines())
    assert "Table 1, query level" in out and "d PA hard" in out and "nDCG~" in out
    # the run removes Q->D and D->Q only together (group mine): the default comparison says it has no q_d condition
    # (the titled row on a run that has both: test_ranking_effects and the reference run in the closing note)
    assert any(l.startswith("q_d vs d_q") and "no condition 'q_d' in this run" in l for l in out.splitlines())
    assert any(l.startswith("mine vs cross") for l in out.splitlines())
    assert report.main([str(root), "--contrasts", "q_d"]) == 2 and "expected A:B" in capsys.readouterr().err


def test_errors_are_one_line_with_exit_2(finished, tmp_path, capsys):
    dataset, model, root = finished
    cases = {}
    cases["not a run folder"] = [str(tmp_path)]
    cases["--kind"] = [str(root), "--kind", "layers"]
    cases["measure 'P@5' is not in this run"] = [str(root), "--measure", "P@5"]
    cases["scope 'run' is not in this run"] = [str(root), "--scope", "run"]
    damaged = tmp_path / "damaged"
    shutil.copytree(root, damaged)
    summary = damaged / "ablation_summary.parquet"
    summary.write_bytes(summary.read_bytes()[: summary.stat().st_size // 2])
    cases[f"{summary} is damaged"] = [str(damaged)]
    for what, change in (("schema version", {"schema_version": 999}), ("not 'complete'", {"status": "running"})):
        copy = tmp_path / what.replace(" ", "-").replace("'", "")
        shutil.copytree(root, copy)
        manifest = json.loads((copy / "manifest.json").read_text())
        (copy / "manifest.json").write_text(json.dumps({**manifest, **change}))
        cases[what] = [str(copy)]
    capsys.readouterr()  # the job's own logs
    for expected, argv in cases.items():
        assert report.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert expected in err and err.count("\n") == 1 and err.startswith("error: "), err


def test_a_run_without_ablations_prints_its_head_sections(finished, tmp_path, capsys):
    """No Table 1 without ablations, said in one line with what adds them; the sections that need none still print."""
    dataset, model, _ = finished
    _, plain = run_job(dataset, model, tmp_path / "plain", ablations=(), stages=("summaries", "contrasts"))
    capsys.readouterr()
    assert report.main([str(plain)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"{plain}: no ablations, so no Table 1 (add them: rerun the command below with --ablations directions,groups)"
    assert "Lexical vs semantic matching by layer" in out and "No-op check" in out and "Rerun" in out
    assert "Table 1," not in out and "Direct comparisons" not in out


def test_module_entry_point(finished):
    _, _, root = finished
    res = subprocess.run([sys.executable, "-m", "precompute.report", str(root), "--kind", "group"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "Groups" in res.stdout, res.stderr


@pytest.mark.slow  # two whole jobs; the binning and its numbers stay in the inner loop: tests/app/test_families.py
# (test_depth_bins, test_compare_by_relative_depth) and tests/app/test_same_as_report.py (the report's --compare table)
def test_two_runs_compare_by_relative_depth(tiny_dataset, tmp_path_factory, capsys):
    """A 2-layer and a 4-layer model: the 4-layer one's layers 0-1 and 2-3 fall into the 2-layer one's bins 0 and 1,
    and each bin's value is the mean of its layers' (checked against the per-layer table of --align layer)."""
    from tests.tiny_models import build

    small = run_job(tiny_dataset, build("bert", tmp_path_factory.mktemp("m2"), layers=2), tmp_path_factory.mktemp("c2") / "run",
                    ablations=())[1]
    deep = run_job(tiny_dataset, build("bert", tmp_path_factory.mktemp("m4"), layers=4), tmp_path_factory.mktemp("c4") / "run",
                   ablations=())[1]
    assert report.main([str(small), "--compare", str(deep), "--align", "layer", "--metric", "q_d_exact"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    b_by_layer = {int(r[0]): float(r[2] if len(r) > 2 else r[1]) for r in rows}
    assert report.main([str(small), "--compare", str(deep), "--metric", "q_d_exact"]) == 0
    bins = [line.split() for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert [(b[1], b[2]) for b in bins] == [("0", "0-1"), ("1", "2-3")]
    for k, b in enumerate(bins):
        assert float(b[4]) == pytest.approx((b_by_layer[2 * k] + b_by_layer[2 * k + 1]) / 2, abs=1e-4)
    assert report.main([str(small), "--compare", str(deep), "--metric", "nope"]) == 2


def test_the_test_line_names_the_families_the_run_has():
    """A run without attention conditions is not "Holm-corrected across the run's 0 tested attention conditions": the
    Test line counts the first analysis present (registry order), the others say theirs under their tables."""
    from precompute.report import kind_order, render

    run = REPO / "tests" / "fixtures" / "store-v2" / "tiny-dl__tiny-bert"
    manifest, measure, rows = report.load(run, "nDCG@10", "pairs")

    def test_line(*kinds: str) -> tuple[str, str]:
        text = render(manifest, run, measure, "pairs", [r for r in rows if r["kind"] in ("baseline", *kinds)],
                      list(kind_order()), None)
        return next(line for line in text.splitlines() if line.startswith("Test")), text

    line, text = test_line("component", "subspace")
    assert "across the run's 20 tested component conditions (each analysis is its own Holm family)" in line
    assert "attention conditions" not in text and " 0 tested" not in text
    assert "(their own Holm family: the run's 8 tested subspace conditions)" in text
    line, text = test_line("component")
    assert "across the run's 20 tested conditions;" in line and "their own Holm family" not in text
    line, _ = test_line("direction", "head", "subspace")
    tested = sum(r["p_holm"] is not None for r in rows if r["kind"] in ("direction", "head"))
    assert f"across the run's {tested} tested attention conditions (each analysis is its own Holm family)" in line
