"""The app under hostile links and damaged stores, through AppTest: one line of error, never a traceback.

The SQL page with its query in the URL (``?sql_q=``, as a shared link gives it) for every statement type;
the store root that no URL can move; runs chosen by folder; damaged runs listed with their file.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from app.connections import run_sql
from matching_atlas.opening import inspect_run
from app.sql_console import MAX_ROW_LIMIT
from tests.app.conftest import DL19, DL20, MAIN, SMALL
from tests.app.statements import ALLOWED, file_hashes, fingerprint, variants


def page(root: Path, view: str, monkeypatch, **params):
    """A fresh session (a browser tab opening a link with ``params``) that shows ``views/<view>.py``."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("ATLAS_STORE", str(root))
    at = AppTest.from_file(str(MAIN), default_timeout=60)
    at.switch_page(f"views/{view}.py")  # honoured on a first run where the page's url path is its file name (sql)
    for key, value in params.items():
        at.query_params[key] = value
    at.run()
    if view not in ("overview", "sql"):  # the others: from the default page, as the app fixture does
        at.switch_page(f"views/{view}.py")
        for key, value in params.items():
            at.query_params[key] = value
        at.run()
    return at


def result(at):
    """The SQL page's result table (the others list the schema: column, type)."""
    frames = [d.value for d in at.dataframe if list(d.value.columns) != ["column", "type"]]
    assert len(frames) == 1, [list(f.columns) for f in frames]
    return frames[0]


def one_line_errors(at) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]
    msgs = [e.value for e in at.error]
    assert all("\n" not in m and "Traceback" not in m for m in msgs), msgs
    return msgs


@pytest.fixture
def own_store(store, tmp_path):
    """A private copy of the store's dl20 and dl19 runs (tests damage or attack them)."""
    for name in (DL20, DL19):
        shutil.copytree(store / name, tmp_path / name)
    return tmp_path


# -- the SQL page, query in the URL --------------------------------------------------------------
def test_sql_links_of_every_statement_type_change_nothing(own_store, monkeypatch):
    run = inspect_run(own_store / DL20)

    def seen():
        return fingerprint(lambda q: run_sql(run, q, limit=MAX_ROW_LIMIT, session="test-observer").frame
                           .to_numpy().tolist())

    files = file_hashes(run.path)
    before = seen()
    for label, text in variants(run.path):
        at = page(own_store, "sql", monkeypatch, run=DL20, sql_q=text)
        errors = one_line_errors(at)
        if label in ALLOWED:
            assert not errors and result(at).shape == (1, 1), label
        else:
            assert len(errors) == 1, (label, errors)  # refused, or a parser error: nothing ran
    assert file_hashes(run.path) == files
    assert seen() == before


@pytest.mark.parametrize("text, shown", [
    ("UPDATE EXTENSIONS", "error"),
    ("SELECT INTERVAL '100000000 years' AS i", "table"),
    ("SELECT 170141183460469231731687303715884105727::HUGEINT AS h", "table"),
    ("SELECT 1 AS a, 2 AS a, 3 AS a_1", "table"),
    ("SELECT 'infinity'::DATE AS d", "table"),
    ("SELECT union_value(a := 1) AS u", "error"),
    ("SELECT repeat('x', 10000000) AS s FROM range(30)", "warning"),
    ("SELECT repeat('x', 3000) AS s FROM range(100000)", "warning"),
])
def test_sql_crash_cases_show_one_line(store, monkeypatch, text, shown):
    at = page(store, "sql", monkeypatch, run=DL20, sql_q=text)
    errors = one_line_errors(at)
    if shown == "error":
        assert len(errors) == 1
    elif shown == "warning":
        assert not errors and any("The result was cut at" in w.value for w in at.warning)
        assert result(at).memory_usage(deep=True).sum() < 64 * 2**20
    else:
        assert not errors and len(result(at)) == 1
        assert len(set(result(at).columns)) == len(result(at).columns)


# -- the store root is the server's; the URL picks among its runs --------------------------------
def test_store_in_the_url_is_ignored(store, monkeypatch, tmp_path):
    at = page(store, "overview", monkeypatch, store=str(tmp_path), run=DL20)
    one_line_errors(at)
    assert at.title[0].value.startswith("Overview") and at.sidebar.selectbox(key="run").value == DL20
    assert "store" not in at.query_params
    assert len(at.sidebar.selectbox(key="run").options) == 3  # the server's store: its three runs
    assert not any(inp.key == "store" for inp in at.sidebar.text_input)  # no editable store box either


@pytest.mark.parametrize("asked", ["../../etc", "/etc", f"{DL20}/..", "nope"])
def test_run_outside_the_store_is_rejected(store, monkeypatch, asked):
    at = page(store, "overview", monkeypatch, run=asked)
    one_line_errors(at)
    assert at.sidebar.selectbox(key="run").value in {DL19, DL20, SMALL}
    assert at.query_params["run"] in {DL19, DL20, SMALL}
    assert any("does not list" in w.value for w in at.sidebar.warning)


def test_a_run_folder_as_the_store(store, monkeypatch):
    """streamlit run app/main.py -- --store RUNFOLDER opens that run."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv("ATLAS_STORE", raising=False)
    monkeypatch.setattr(sys, "argv", ["app/main.py", "--store", str(store / DL19)])
    at = AppTest.from_file(str(MAIN), default_timeout=60).run()
    one_line_errors(at)
    assert at.sidebar.selectbox(key="run").options == ["trec-dl-2019 x tiny-ce"]
    assert at.title[0].value == "Overview: trec-dl-2019 x tiny-ce"


def test_two_runs_with_one_label_are_both_selectable(store, tmp_path, monkeypatch, sql):
    shutil.copytree(store / DL20, tmp_path / DL20)
    shutil.copytree(store / DL20, tmp_path / f"{DL20}-all")
    at = page(tmp_path, "overview", monkeypatch, run=f"{DL20}-all")
    one_line_errors(at)
    assert at.sidebar.selectbox(key="run").value == f"{DL20}-all"
    assert f"{tmp_path / f'{DL20}-all'}" in at.caption[0].value
    at.sidebar.selectbox(key="run").set_value(DL20).run()
    assert at.sidebar.selectbox(key="run").value == DL20 and at.query_params["run"] == DL20
    at.sidebar.selectbox(key="run").set_value(f"{DL20}-all").run()
    assert at.sidebar.selectbox(key="run").value == f"{DL20}-all"
    assert f"{tmp_path / f'{DL20}-all'}" in at.caption[0].value


# -- damaged runs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("file", ["manifest.json", "pairs.parquet", "head_attention_agg.parquet", "svd.parquet",
                                  "ablation_metrics.parquet"])
def test_a_damaged_run_is_named_and_the_others_stay_usable(own_store, monkeypatch, file):
    path = own_store / DL19 / file
    path.write_bytes(path.read_bytes()[:100])
    at = page(own_store, "overview", monkeypatch, run=DL19)
    errors = one_line_errors(at)
    assert any(str(path) in e for e in errors), errors
    assert at.title[0].value == "Matching Atlas"  # the welcome page, no chart of the damaged run
    assert any(DL20 in i.value for i in at.info)  # it names the runs that can be opened
    at.sidebar.selectbox(key="run").set_value(DL20).run()
    for view in ("overview", "head_atlas", "spectra", "ablations", "compare"):
        at.switch_page(f"views/{view}.py").run()
        assert not one_line_errors(at), view


def test_a_table_of_another_type_makes_the_run_unopenable(own_store, monkeypatch):
    """A column rewritten with another type (kind as int8) used to pass the footer check and fail one page's query:
    the run is now refused with the file and the column named, before any page reads it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = own_store / DL20 / "ablation_summary.parquet"
    t = pq.read_table(path)
    pq.write_table(t.set_column(t.schema.get_field_index("kind"), "kind", pa.array([0] * len(t), pa.int8())), path)
    assert f"{path} holds column kind as int8, the store schema's type is string" in inspect_run(path.parent).problem
    at = page(own_store, "overview", monkeypatch, run=DL20)
    errors = one_line_errors(at)
    assert any(str(path) in e for e in errors) and at.title[0].value == "Matching Atlas", errors


def test_a_page_query_that_fails_is_one_line(own_store, monkeypatch):
    """A query that fails on a verified run (here DuckDB's conversion error, raised by the Ablations page's first
    query): that page says so in one line naming the run, the other pages of the run work."""
    import duckdb

    from matching_atlas import Run

    def ablation_options(self):
        raise duckdb.ConversionException("Conversion Error: Could not convert string 'direction' to INT8")

    monkeypatch.setattr(Run, "ablation_options", ablation_options)
    at = page(own_store, "ablations", monkeypatch, run=DL20)
    errors = one_line_errors(at)
    assert len(errors) == 1 and DL20 in errors[0] and "Conversion Error" in errors[0], errors
    for view in ("overview", "head_atlas", "spectra"):
        at.switch_page(f"views/{view}.py").run()
        assert not one_line_errors(at), view
