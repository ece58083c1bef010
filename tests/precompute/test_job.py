"""The job end to end on tiny models and a tiny dataset folder: tables, numbers, resume after kill -9, errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from precompute.cli import main
from precompute.job import run
from precompute.families.loading import load
from precompute.families.segments import encode
from precompute.store import layout
from precompute.store.connect import connect
from precompute.store.schema import SCHEMA_VERSION, TABLES
from tests.conftest import REPO, read_table, table_files
from tests.precompute.test_datasets import listing
from tests.precompute.conftest import run_tiny_job
from tests.tiny_models import build


@pytest.fixture
def dataset(tiny_dataset) -> Path:
    return tiny_dataset


# The RoBERTa job is a second whole job (slow): its family's numbers have unit-level twins in the inner loop
# (analyses/test_ablations.py's hand-written forwards, test_patching.py's plain loop and tests/app/test_live.py, each
# [roberta]); the whole-job checks run there on the BERT job.
@pytest.fixture(scope="module", params=["bert", pytest.param("roberta", marks=pytest.mark.slow)])
def finished(request, tiny_dataset, tiny_bert_run, tmp_path_factory):
    """A finished run of a tiny model over the tiny dataset: (config, run folder, dataset listing before)."""
    before = listing(tiny_dataset)
    if request.param == "bert":
        return (*tiny_bert_run, before)
    return (*run_tiny_job(request.param, tiny_dataset, tmp_path_factory), before)


def test_tables_and_manifest(finished):
    cfg, root, _ = finished
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["schema_version"] == SCHEMA_VERSION
    con = connect(root)
    n_pairs = con.execute("SELECT count(*) FROM pairs").fetchone()[0]
    assert n_pairs == manifest["counts"]["pairs"] == sum(manifest["counts"]["neg_type"].values())
    layers, heads = manifest["model"]["layers"], manifest["model"]["heads"]
    assert con.execute("SELECT count(*) FROM head_attention").fetchone()[0] == n_pairs * layers * heads
    assert con.execute("SELECT count(*) FROM pairs WHERE neg_type = 'easy'").fetchone()[0] == 3 * manifest["counts"]["queries"]
    assert con.execute("SELECT count(*) FROM pairs WHERE neg_type = 'easy' AND grade <> -1").fetchone()[0] == 0
    for name in ("pairs", "head_attention", "head_attention_agg"):
        for path in layout.files(root, name):
            assert pq.read_schema(path).names == TABLES[name].column_names
    assert [p.relative_to(root).as_posix() for p in layout.files(root, "head_attention")] == \
        [f"head_attention/layer={layer}/data.parquet" for layer in range(layers)]
    assert not (root / "_parts").exists()


def test_head_attention_is_sorted_and_masses_sum_to_one(finished):
    _, root, _ = finished
    t = read_table(root, "head_attention", columns=["layer", "head", "pair_id"]).to_pandas()
    assert t.equals(t.sort_values(["layer", "head", "pair_id"]).reset_index(drop=True))
    con = connect(root)
    worst = con.execute(
        "SELECT max(abs(total - 1)) FROM (SELECT sum(mass) AS total FROM head_attention_long GROUP BY pair_id, layer, head, src)"
    ).fetchone()[0]
    assert worst < 1e-5


def test_scores_equal_a_plain_forward_pass(finished):
    cfg, root, _ = finished
    lm = load(cfg.model, device="cpu")
    pairs = connect(root).sql("SELECT query, doc, score FROM pairs ORDER BY pair_id").df()
    batch = encode(lm.tokenizer, list(pairs["query"]), list(pairs["doc"]), cfg.max_length)
    import torch

    with torch.no_grad():
        want = lm.model(**batch.inputs).logits[:, 0].numpy()
    np.testing.assert_allclose(pairs["score"].to_numpy(), want, atol=1e-5)


def test_manifest_ndcg_equals_ir_measures_over_the_store(finished):
    import ir_measures

    cfg, root, _ = finished
    manifest = json.loads((root / "manifest.json").read_text())
    pairs = connect(root).sql("SELECT qid, docid, score FROM pairs").df()
    qids = set(pairs["qid"])
    qrels = [ir_measures.Qrel(q, d, int(g)) for q, _, d, g in
             (line.split() for line in (Path(cfg.dataset) / "qrels.txt").read_text().splitlines()) if q in qids]
    run_ = [ir_measures.ScoredDoc(r.qid, r.docid, float(r.score)) for r in pairs.itertuples()]
    want = ir_measures.calc_aggregate([ir_measures.nDCG @ 10], qrels, run_)[ir_measures.nDCG @ 10]
    assert manifest["metrics"]["nDCG@10"] == pytest.approx(want, abs=1e-12)


def test_aggregate_table_equals_direct_aggregation(finished):
    _, root, _ = finished
    con = connect(root)
    direct = con.sql(
        "SELECT h.layer, h.head, p.neg_type, count(*) AS n, avg(h.q_d) AS q_d, avg(h.q2d_max) AS q2d "
        "FROM head_attention h JOIN pairs p USING (pair_id) GROUP BY ALL ORDER BY ALL"
    ).df()
    agg = con.sql(
        "SELECT layer, head, neg_type, sum(n) AS n, sum(q_d_sum) / sum(n) AS q_d, sum(q2d_max_sum) / sum(n) AS q2d "
        "FROM head_attention_agg GROUP BY ALL ORDER BY ALL"
    ).df()
    np.testing.assert_array_equal(direct["n"], agg["n"])
    np.testing.assert_allclose(direct[["q_d", "q2d"]], agg[["q_d", "q2d"]], atol=1e-9)


def test_dataset_folder_is_unchanged(finished):
    cfg, _, before = finished
    assert listing(Path(cfg.dataset)) == before


def test_duckdb_catalog_answers_from_another_directory(finished, tmp_path):
    _, root, _ = finished
    out = subprocess.run(
        [sys.executable, "-c", f"import duckdb; print(duckdb.connect({str(root / 'atlas.duckdb')!r}, read_only=True)"
         ".execute('SELECT count(*) FROM head_attention_long').fetchone()[0])"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )
    con = connect(root)
    assert int(out.stdout) == 25 * con.execute("SELECT count(*) FROM head_attention").fetchone()[0]


def test_rerun_is_a_no_op_and_other_parameters_are_refused(finished, capsys):
    cfg, root, _ = finished
    before = {p: p.stat().st_mtime_ns for p in table_files(root)}
    run(cfg)
    assert {p: p.stat().st_mtime_ns for p in table_files(root)} == before
    code = main(["--dataset", cfg.dataset, "--model", cfg.model, "--out", str(root), "--seed", "7",
                 "--cache", str(cfg.cache), "--no-progress", "--easy-negatives", "3", "--batch-size", "4"])
    assert code == 2
    assert "differs from the run already in this folder" in capsys.readouterr().err


def _tables(root: Path) -> dict:
    return {name: read_table(root, name) for name in ("pairs", "head_attention", "head_attention_agg")}


@pytest.mark.slow
def test_kill_minus_nine_then_rerun_equals_an_uninterrupted_run(dataset, tmp_path):
    model = build("bert", tmp_path / "model")
    args = ["--dataset", str(dataset), "--model", str(model), "--cache", str(tmp_path / "cache"), "--easy-negatives", "3",
            "--batch-size", "1", "--chunk-size", "2", "--ablations", "none", "--no-progress"]
    killed = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "precompute", *args, "--out", str(killed)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parts = killed / "_parts" / "pairs"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(parts.glob("*.parquet"))) < 3:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["status"] == "running", "the job finished before it could be killed; the test proves nothing"
    assert not (killed / "pairs.parquet").exists()

    assert main([*args, "--out", str(killed)]) == 0
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0
    resumed, clean = _tables(killed), _tables(tmp_path / "clean")
    assert resumed["pairs"].equals(clean["pairs"])
    assert resumed["head_attention"].equals(clean["head_attention"])
    agg_r, agg_c = resumed["head_attention_agg"].to_pandas(), clean["head_attention_agg"].to_pandas()
    assert agg_r[["layer", "head", "qid", "neg_type", "grade", "n"]].equals(agg_c[["layer", "head", "qid", "neg_type", "grade", "n"]])
    np.testing.assert_allclose(agg_r.filter(like="_sum").to_numpy(), agg_c.filter(like="_sum").to_numpy(), rtol=1e-12)
    assert not list(killed.rglob(".*.tmp-*"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--dataset", "no-such-dataset"], "unknown dataset"),
        (["--model", "/nonexistent/model"], "model folder /nonexistent/model does not exist"),
        (["--model", "no-such-org/no-such-cross-encoder"], "could not be loaded"),
        (["--max-queries", "0"], "--max-queries '0': expected an integer of at least 1"),
    ],
)
def test_bad_input_gives_one_line_and_exit_2(extra, message, dataset, tmp_path, capsys):
    model = build("bert", tmp_path / "model")
    args = ["--dataset", str(dataset), "--model", str(model), "--out", str(tmp_path / "out"), "--cache",
            str(tmp_path / "cache"), "--no-progress", *extra]
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any(message in line for line in err), err


def test_model_without_classification_head_is_refused(dataset, tmp_path, capsys):
    from transformers import BertConfig, BertModel

    folder = build("bert", tmp_path / "model")
    BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                         intermediate_size=64)).save_pretrained(folder)
    code = main(["--dataset", str(dataset), "--model", str(folder), "--out", str(tmp_path / "out"),
                 "--cache", str(tmp_path / "cache"), "--no-progress"])
    assert code == 2
    assert "not a sequence-classification cross-encoder" in capsys.readouterr().err


def test_unwritable_output_and_other_schema_version(dataset, tmp_path, capsys):
    model = build("bert", tmp_path / "model")
    blocker = tmp_path / "file"
    blocker.write_text("")
    base = ["--dataset", str(dataset), "--model", str(model), "--cache", str(tmp_path / "cache"), "--no-progress"]
    assert main([*base, "--out", str(blocker / "run")]) == 2
    assert "not writable" in capsys.readouterr().err
    old = tmp_path / "old"
    old.mkdir()
    (old / "manifest.json").write_text(json.dumps({"schema_version": SCHEMA_VERSION + 100}))
    assert main([*base, "--out", str(old)]) == 2
    assert "schema version" in capsys.readouterr().err
    assert json.loads((old / "manifest.json").read_text())["schema_version"] == SCHEMA_VERSION + 100


def test_a_second_job_on_the_same_folder_is_refused(dataset, tmp_path, capsys):
    from precompute.store.writer import RunWriter

    model = build("bert", tmp_path / "model")
    busy = RunWriter(tmp_path / "run")
    busy.ensure_writable()  # holds the folder's lock, as a running job does
    code = main(["--dataset", str(dataset), "--model", str(model), "--out", str(tmp_path / "run"),
                 "--cache", str(tmp_path / "cache"), "--no-progress"])
    assert code == 2
    assert "another precompute job is writing" in capsys.readouterr().err


@pytest.mark.parametrize("raised, code, message", [
    (KeyboardInterrupt(), 130, "interrupted: finished parts are kept"),
    (RuntimeError("boom\nsecond line"), 1, "error: unexpected RuntimeError: boom (a bug; the traceback is in"),
])
def test_interruptions_and_bugs_are_one_line(raised, code, message, dataset, tmp_path, capsys, monkeypatch):
    """Ctrl-C and an unexpected exception print one line (no traceback); a bug's traceback is saved for the report."""
    import precompute.job

    def fail(cfg):
        raise raised

    monkeypatch.setattr(precompute.job, "run", fail)
    assert main(["--dataset", str(dataset), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache")]) == code
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err, err
    if code == 1:
        assert "Traceback" in (tmp_path / "cache" / "last-error.txt").read_text()


def test_flag_errors_are_one_line_and_the_usage_comes_with_help_only(capsys):
    """argparse printed its 22-line usage block before every flag error."""
    from precompute.report.cli import main as report_main

    for entry, argv in [(main, ["--ablations", "bogus"]), (main, ["--batch-size", "0"]), (main, ["--device", "tpu"]),
                        (main, ["--no-such-flag"]), (report_main, ["run", "--sort", "bogus"]), (report_main, [])]:
        with pytest.raises(SystemExit) as exit_:
            entry(argv)
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        assert "usage:" not in err and err.rstrip().endswith("--help"), err
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m precompute")


@pytest.mark.parametrize("inside", ["dataset", "model"])
def test_a_run_folder_inside_the_dataset_or_the_model_folder_is_refused(inside, tmp_path, capsys):
    """The job wrote its tables, manifest, lock and catalog there (exit 0)."""
    from tests.precompute.conftest import make_dataset, refused
    from tests.precompute.test_datasets import listing

    dataset, model = make_dataset(tmp_path / "data"), build("bert", tmp_path / "model")
    folder = dataset if inside == "dataset" else model
    (tmp_path / "link").symlink_to(folder)
    before = listing(folder)
    for out in (folder, folder / "runs" / "x", tmp_path / "link" / "x"):
        line = refused(dataset, model, tmp_path, capsys, out=out)
        assert f"lies inside the {inside} folder" in line and "pass an --out (or --store) outside it" in line
    assert listing(folder) == before


def test_the_manifest_records_every_invocation(small_runs):
    """A folder two jobs worked on lists both, each with its timings and what it computed (the manifest used to
    describe only the last)."""
    from precompute.store.manifest import read_manifest

    _, fresh, added = small_runs
    one, two = read_manifest(fresh), read_manifest(added)
    assert len(one.invocations) == 1 and len(two.invocations) == 2 and two.invocations[0] == one.invocations[0]
    first, second = two.invocations
    assert first.status == second.status == "complete" and first.started <= second.started
    assert two.timings == second.timings and {"summaries_s", "ablations_s", "total_s"} <= set(second.timings)
    assert first.computed["ablations"] == len(one.ablations.conditions) == 7  # the baseline and the six groups
    assert second.computed["ablations"] == two.ablations.last_request["computed_now"] == 6  # the groups at layer 1
    assert first.computed["summaries"] is None and second.computed["summaries"] == 0  # computed (not counted); done


def test_an_older_manifest_keeps_its_last_timings_as_the_first_invocation(small_runs, tmp_path):
    import shutil

    from precompute.store.manifest import read_manifest

    config, fresh, _ = small_runs
    root = tmp_path / "run"
    shutil.copytree(fresh, root)
    data = json.loads((root / "manifest.json").read_text())
    del data["invocations"]  # as versions before issue 16 wrote it
    (root / "manifest.json").write_text(json.dumps(data))
    assert read_manifest(root).invocations == []
    run(config(root))
    older, this = read_manifest(root).invocations
    assert (older.started, older.status, older.timings) == (None, "complete", data["timings"])
    assert this.status == "complete" and this.computed["ablations"] == 0


def test_the_cls_experiment_on_a_model_without_a_pooling_position_is_refused_before_any_pass(tmp_path, capfd):
    """MonoT5 has no pooling position: --patching cls was refused only after the summary and ablation passes."""
    from tests.precompute.conftest import make_dataset, refused
    from tests.tiny_families import build_family

    dataset, model = make_dataset(tmp_path / "data", n_queries=2), build_family("monot5", tmp_path / "model")
    line = refused(dataset, model, tmp_path, capfd, "--patching", "cls", "--max-length", "128")
    assert line.startswith("error: --patching cls: the cls experiment patches the pooling position"), line


def test_a_run_is_rebuilt_from_its_manifest_alone(small_runs, tmp_path):
    """Every setting of every job is in the manifest: the last job's record alone (into a new folder) gives a run of
    the same identity with the same conditions and the same scores."""
    import dataclasses

    from precompute.config import JobConfig
    from precompute.settings import from_record, to_record
    from precompute.store.manifest import read_manifest
    from tests.precompute.crashing import single_thread

    config, _, added = small_runs
    manifest = read_manifest(added)
    record = manifest.invocations[-1].settings
    assert record == to_record(config(added, "all", "1")) and set(record) == {s.name for s in JobConfig.settings()}
    assert manifest.invocations[0].settings["ablation_layers"] == ["all"]  # each job's own
    cfg = from_record(JobConfig, record, out=tmp_path / "rebuilt")
    assert cfg == dataclasses.replace(config(added, "all", "1"), out=tmp_path / "rebuilt")
    with single_thread():
        run(cfg)
    rebuilt = read_manifest(tmp_path / "rebuilt")
    assert rebuilt.identity == manifest.identity and rebuilt.ablations.conditions == manifest.ablations.conditions
    for table in ("pairs", "ablation_scores"):
        assert pq.read_table(tmp_path / "rebuilt" / f"{table}.parquet").equals(pq.read_table(added / f"{table}.parquet"))
