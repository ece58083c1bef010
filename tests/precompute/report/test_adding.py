"""README's "How to add ...": a toy summary metric declared through ``precompute.metrics.declare`` only is a column of
the store's schema and docs (docs/store.md's generator), a choice of the report's --metric (parser and help) and
labelled for the app; the toy condition kind's half is tests/precompute/conditions/test_registry.py. Every file the
README section names exists."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO

TOY = '''
from precompute import metrics
from precompute.metrics import MetricGroup, SummaryMetric

toy = SummaryMetric("q_d_toy", "Toy Query->Document mass", "A toy metric: the Query->Document mass again.", "q_d")
metrics.declare(MetricGroup((toy,), metrics._query_mass_on("exact"), metrics._per_query))

from precompute.report.cli import build_parser
from precompute.store import docs, schema

assert "q_d_toy" in schema.TABLES["head_attention"].schema.names, "schema"
assert "q_d_toy" in docs.render(), "store docs"
assert "q_d_toy" in " ".join(build_parser().format_help().split()), "report help"
assert build_parser().parse_args(["run", "--compare", "other", "--metric", "q_d_toy"]).metric == "q_d_toy"
assert metrics.metric_label("q_d_toy") == "Toy Query->Document mass", "app label"
print("ok")
'''


def test_a_toy_metric_declared_once_is_in_the_schema_docs_and_report():
    out = subprocess.run([sys.executable, "-c", TOY], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_the_files_the_how_to_add_section_names_exist():
    readme = (REPO / "README.md").read_text()
    section = readme.split("## How to add", 1)[1].split("\n## ", 1)[0]
    paths = set(re.findall(r"`((?:precompute|app|matching_atlas|tests|docs)/[\w/.]+)`", section))
    assert len(paths) >= 8
    for path in paths:
        assert (REPO / path.rstrip("/")).exists(), path
