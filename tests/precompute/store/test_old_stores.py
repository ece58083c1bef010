"""A run folder written by the code before schema version 2 (tests/fixtures/store-v1, commit faacb0f) still
opens: the typed manifest reads it, and python -m precompute.report prints the table that code printed."""

from __future__ import annotations

import json

from precompute import report
from precompute.store.manifest import Manifest, read_manifest
from tests.conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "store-v1"
RUN = FIXTURE / "tiny-dl__tiny-bert"


def kept(old, new) -> bool:
    """Every key and value of the old manifest is in the round trip's (which may add fields at their defaults)."""
    if isinstance(old, dict):
        return isinstance(new, dict) and all(k in new and kept(v, new[k]) for k, v in old.items())
    return old == new


def test_the_typed_manifest_reads_a_version_1_manifest():
    manifest = read_manifest(RUN)
    assert manifest.schema_version == 1 and manifest.status == "complete"
    assert (manifest.model.layers, manifest.model.heads, manifest.model.score) == (3, 4, "logit")
    assert manifest.counts.pairs == 30 and manifest.counts.neg_type == {"relevant": 16, "hard": 8, "easy": 6}
    assert len(manifest.ablations.conditions) == 32 and manifest.ablations.kernel == "sdpa"
    assert manifest.tables["head_attention"].rows == 30 * 3 * 4
    assert kept(json.loads((RUN / "manifest.json").read_text()), manifest.to_dict())


def test_report_prints_what_the_old_code_printed(monkeypatch, capsys):
    """The tables as that code printed them, then the command that reruns the run (which that code did not print),
    written from the old manifest's identity: the dataset and model as recorded and every non-default setting."""
    monkeypatch.chdir(REPO)  # the report's first line names the folder as given
    assert report.main(["tests/fixtures/store-v1/tiny-dl__tiny-bert"]) == 0
    tables, rerun = capsys.readouterr().out.split("\nRerun ", 1)
    assert tables == (FIXTURE / "report.txt").read_text()
    assert rerun.splitlines()[1].strip() == (
        "python -m precompute --dataset /tmp/exp/v1/tiny-dl --model /tmp/exp/v1/tiny-bert --easy-negatives 2 "
        "--max-queries 3 --batch-size 4 --chunk-size 8 --out tests/fixtures/store-v1/tiny-dl__tiny-bert")


def test_report_reads_the_manifest_through_the_typed_module():
    manifest, measure, rows = report.load(RUN, "nDCG@10", "pairs")
    assert isinstance(manifest, Manifest) and measure == "nDCG@10" and len(rows) == 32
