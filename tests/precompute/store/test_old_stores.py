"""Run folders written before schema version 3 still open and report as they did: tests/fixtures/store-v1 (commit
faacb0f, before schema version 2) and tests/fixtures/store-v2 (commit 52f6eab, every condition kind, component ids
in the legacy form). The typed manifest reads them, python -m precompute.report prints what that code printed, and
their ablation views have the columns of schema 3, derived from the stored ids in one place
(precompute.store.connect). What the app shows of them: tests/app/test_old_stores.py."""

from __future__ import annotations

import json

import pytest

from precompute import report
from precompute.store.connect import connect
from precompute.store.manifest import Manifest, read_manifest
from precompute.store.schema import READABLE_SCHEMA_VERSIONS, SCHEMA_VERSION, TABLES
from tests.conftest import REPO

FIXTURES = REPO / "tests" / "fixtures"
RUN = FIXTURES / "store-v1" / "tiny-dl__tiny-bert"
RUN_V2 = FIXTURES / "store-v2" / "tiny-dl__tiny-bert"


def kept(old, new) -> bool:
    """Every key and value of the old manifest is in the round trip's (which may add fields at their defaults)."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(k in new and kept(v, new[k]) for k, v in old.items())
    if isinstance(old, list):
        return isinstance(new, list) and len(old) == len(new) and all(kept(a, b) for a, b in zip(old, new))
    return old == new


def test_the_typed_manifest_reads_a_version_1_manifest():
    manifest = read_manifest(RUN)
    assert manifest.schema_version == 1 and manifest.status == "complete"
    assert (manifest.model.layers, manifest.model.heads, manifest.model.score) == (3, 4, "logit")
    assert manifest.counts.pairs == 30 and manifest.counts.neg_type == {"relevant": 16, "hard": 8, "easy": 6}
    assert len(manifest.ablations.conditions) == 32 and manifest.ablations.kernel == "sdpa"
    assert manifest.tables["head_attention"].rows == 30 * 3 * 4
    assert kept(json.loads((RUN / "manifest.json").read_text()), manifest.to_dict())


def test_the_typed_manifest_reads_a_version_2_manifest():
    manifest = read_manifest(RUN_V2)
    assert manifest.schema_version == 2 and manifest.status == "complete" and SCHEMA_VERSION == 9
    assert {1, 2, 3, 4, 5, 6, 7, 8, 9} == set(READABLE_SCHEMA_VERSIONS)
    assert len(manifest.ablations.conditions) == 85 and "mlp:d@0/mean" in manifest.ablations.conditions
    assert manifest.ablations.extra == {"holm_family": 47}  # a field this checkout dropped is kept, not lost
    assert kept(json.loads((RUN_V2 / "manifest.json").read_text()), manifest.to_dict())


@pytest.mark.parametrize("fixture", ["store-v1", "store-v2"])
def test_report_prints_what_the_old_code_printed(fixture, monkeypatch, capsys):
    """The ablation tables as that code printed them (with issue 18's few-queries warning and query-level Table 1),
    then the command that reruns the run (which that code did not print). The activation-patching section is this version's robust summary (schema 4, issue 19), computed when
    read from the old rows: the plain mean the old code printed is its last column."""
    monkeypatch.chdir(REPO)  # the report's first line names the folder as given
    assert report.main([f"tests/fixtures/{fixture}/tiny-dl__tiny-bert"]) == 0
    tables, rerun = capsys.readouterr().out.split("\nRerun ", 1)
    want = (FIXTURES / fixture / "report.txt").read_text()
    mark = "\nActivation patching"
    assert tables.split(mark, 1)[0] == want.split(mark, 1)[0]
    assert (mark in tables) == (mark in want)
    if mark in want:
        assert "ratio of sums" in tables.split(mark, 1)[1] and "bootstrap interval over queries" in tables
    assert rerun.splitlines()[1].strip().endswith(f"--out tests/fixtures/{fixture}/tiny-dl__tiny-bert")


def test_the_rerun_command_of_an_old_run_comes_from_its_identity(monkeypatch, capsys):
    """Written from the old manifest's identity: the dataset and model as recorded and every non-default setting."""
    monkeypatch.chdir(REPO)
    assert report.main(["tests/fixtures/store-v1/tiny-dl__tiny-bert"]) == 0
    rerun = capsys.readouterr().out.split("\nRerun ", 1)[1]
    assert rerun.splitlines()[1].strip() == (
        "python -m precompute --dataset /tmp/exp/v1/tiny-dl --model /tmp/exp/v1/tiny-bert --easy-negatives 2 "
        "--max-queries 3 --batch-size 4 --chunk-size 8 --out tests/fixtures/store-v1/tiny-dl__tiny-bert")


def test_report_reads_the_manifest_through_the_typed_module():
    manifest, measure, rows = report.load(RUN, "nDCG@10", "pairs")
    assert isinstance(manifest, Manifest) and measure == "nDCG@10" and len(rows) == 32


@pytest.mark.parametrize("run", [RUN, RUN_V2], ids=["v1", "v2"])
def test_old_ablation_views_have_the_columns_of_schema_3(run):
    con = connect(run)
    for table in ("ablation_conditions", "ablation_summary", "ablation_metrics"):
        columns = con.execute(f"DESCRIBE {table}").fetchall()
        assert [c[0] for c in columns] == TABLES[table].column_names, table
    stored = con.execute(f"SELECT count(*) FROM read_parquet('{run / 'ablation_summary.parquet'}')").fetchone()[0]
    assert con.execute("SELECT count(*) FROM ablation_summary").fetchone()[0] == stored  # every row kept
    assert con.execute("SELECT analysis FROM ablation_conditions WHERE condition_id = 'none'").fetchone() == (None,)


def test_old_ids_are_kept_and_their_parts_derived():
    con = connect(RUN_V2)
    rows = {r[0]: r[1:] for r in con.execute(
        "SELECT condition_id, kind, analysis, condition, component, segment, layer, head, k, operation, factor "
        "FROM ablation_conditions").fetchall()}
    assert rows["mlp:d@0/mean"] == ("component", "components", "mlp", "mlp", "d", 0, None, None, None, None)
    assert rows["attn@2/mean"][3:5] == ("attn", None)
    assert rows["qk:1.1:k2/scale=2"] == ("subspace", "subspace", "qk", None, None, 1, 1, 2, "scale=2", 2.0)
    assert rows["cross@1/zero"][:2] == ("layer_sweep", "attention")  # the stored kind, not the id's default
    stored = dict(con.execute(f"SELECT condition_id, directions FROM read_parquet('{RUN_V2 / 'ablation_conditions.parquet'}')"
                              ).fetchall())
    assert dict(con.execute("SELECT condition_id, directions FROM ablation_conditions").fetchall()) == stored
    # the summary's and the per-query table's condition columns come from the same derived rows
    assert con.execute("SELECT count(*) FROM ablation_summary s JOIN ablation_conditions c USING (condition_id) "
                       "WHERE s.component IS DISTINCT FROM c.component OR s.k IS DISTINCT FROM c.k").fetchone() == (0,)
    assert con.execute("SELECT DISTINCT condition FROM ablation_metrics WHERE condition_id LIKE 'mlp%'").fetchall() == \
        [("mlp",)]
    assert con.execute("SELECT count(*) FROM ablation_summary WHERE analysis = 'attention' AND kind = 'baseline'"
                       ).fetchone() == (0,)  # schema 2 stored 'attention' for the baseline


def test_the_catalog_of_an_old_store_holds_the_derived_views(tmp_path):
    import shutil

    import duckdb

    from precompute.store.connect import write_catalog

    run = tmp_path / "run"
    shutil.copytree(RUN_V2, run)
    con = duckdb.connect(str(write_catalog(run)), read_only=True)
    assert con.execute("SELECT component, segment FROM ablation_summary WHERE condition_id = 'attn:q@1/mean'"
                       ).fetchall() == [("attn", "q")]
