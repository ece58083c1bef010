"""The SQL page's engine and sessions: nothing a visitor types can write, reach another session, or crash.

Everything goes through ``app.connections.run_sql``, the function the page calls, on a registry of
per-session workers like the server's (``app.connections.SqlSessions``).
"""

from __future__ import annotations

import threading
import time

import duckdb
import pytest

from app.connections import SqlBusy, SqlSessions, run_sql
from app.runs import inspect_run
from app.sql_console import MAX_ROW_LIMIT, SqlError, SqlLimits, check
from app.sql_results import unique_names
from app.sql_worker import open_sql
from tests.app.conftest import DL19, DL20
from tests.app.statements import ALLOWED, NOT_FROM_TEXT, STATEMENTS, file_hashes, fingerprint, variants


@pytest.fixture
def run(store, tmp_path):
    """A private copy of the dl20 run (the tests try to write into it)."""
    import shutil

    shutil.copytree(store / DL20, tmp_path / DL20)
    return inspect_run(tmp_path / DL20)


@pytest.fixture
def sessions():
    reg = SqlSessions(limit=4)
    yield reg
    reg.close_all()


def test_the_statements_cover_every_statement_type():
    con = duckdb.connect()
    seen = set()
    for text in STATEMENTS.values():
        try:
            seen.add(con.extract_statements(text.format(run="/x"))[0].type.name)
        except ValueError:
            seen.add("no Python name")
    assert seen >= {t.name for t in duckdb.StatementType} - NOT_FROM_TEXT
    assert "no Python name" in seen


def test_no_statement_type_writes_or_reaches_another_session(run, sessions):
    """Every statement type, bare, under EXPLAIN and under EXPLAIN ANALYZE: refused (only bare SELECTs run), the
    run's files byte-identical, and what another session (and the attacker's own) sees of the catalog unchanged."""
    def seen(session):
        return fingerprint(lambda q: run_sql(run, q, limit=MAX_ROW_LIMIT, sessions=sessions, session=session)
                           .frame.to_numpy().tolist())

    files = file_hashes(run.path)
    before = seen("observer")
    own = None
    for label, text in variants(run.path):
        if label in ALLOWED:
            assert len(run_sql(run, text, sessions=sessions, session="attacker").frame) == 1
        else:
            with pytest.raises(SqlError) as err:
                run_sql(run, text, sessions=sessions, session="attacker")
            assert "\n" not in str(err.value), label
        if own is None:
            own = seen("attacker")
    assert file_hashes(run.path) == files
    assert seen("observer") == before
    assert seen("attacker") == own  # its own catalog too: nothing ran


def test_explain_is_a_toggle_on_a_checked_select(run, sessions):
    res = run_sql(run, "SELECT neg_type, count(*) FROM pairs GROUP BY ALL", explain="EXPLAIN ANALYZE",
                  sessions=sessions, session="s")
    assert list(res.frame.columns) == ["explain_key", "explain_value"] and "Total Time" in res.frame["explain_value"][0]
    with pytest.raises(SqlError, match="EXPLAIN statements are not allowed"):
        run_sql(run, "EXPLAIN ANALYZE COPY (SELECT 1) TO 'x.csv'", sessions=sessions, session="s")
    with pytest.raises(SqlError, match="COPY statements are not allowed"):
        run_sql(run, "COPY (SELECT 1) TO 'x.csv'", explain="EXPLAIN ANALYZE", sessions=sessions, session="s")


def test_queries_that_read_work(run, sessions, sql):
    def q(text, **kw):
        return run_sql(run, text, sessions=sessions, session="s", **kw)

    assert q("SELECT count(*) AS n FROM head_attention").frame["n"][0] == 3 * 4 * 48
    res = q("SELECT * FROM pairs", limit=5)
    assert len(res.frame) == 5 and "row limit" in res.truncated
    assert len(q("DESCRIBE pairs").frame) > 10
    assert len(q("SUMMARIZE head_attention_agg").frame) > 10
    assert len(q("FROM head_alignment").frame) == 12
    direct = sql(DL20, "SELECT layer, avg(q_d) AS m FROM {head_attention} GROUP BY layer ORDER BY layer")
    got = q("SELECT layer, avg(q_d) AS m FROM head_attention GROUP BY layer ORDER BY layer").frame
    assert got["m"].tolist() == pytest.approx(direct["m"].tolist(), rel=1e-12)
    assert len(q("SELECT * FROM pairs PIVOT (count(*) FOR neg_type IN ('relevant', 'easy'))").frame) == 48


@pytest.mark.parametrize("text, expect", [
    ("SELECT 170141183460469231731687303715884105727::HUGEINT AS h", "row"),
    ("SELECT INTERVAL '100000000 years' AS i", "row"),
    ("SELECT 'infinity'::DATE AS d", "row"),
    ("SELECT 1 AS a, 2 AS a, 3 AS a_1", "row"),
    ("SELECT union_value(a := 1) AS u", "cannot be shown"),
    ("UPDATE EXTENSIONS", "not allowed"),
    ("SELECT ?", "Invalid Input Error"),
    ("SELEC 1", "Parser Error"),
    ("SELECT * FROM read_csv('/etc/passwd')", "Permission Error"),
    ("SELECT * FROM read_text('{run}/../../../../etc/passwd')", "Permission Error"),
    ("SELECT * FROM glob('/etc/*')", "Permission Error"),
    ("SELECT * FROM read_parquet('{other}/pairs.parquet')", "Permission Error"),
    ("   ", "enter a query"),
    (";;", "enter a query"),
])
def test_every_error_is_one_line(run, sessions, store, text, expect):
    text = text.format(run=run.path, other=store / DL19)
    if expect == "row":
        res = run_sql(run, text, sessions=sessions, session="s")
        assert len(res.frame) == 1 and len(set(res.frame.columns)) == len(res.frame.columns)
    else:
        with pytest.raises(SqlError, match=expect) as err:
            run_sql(run, text, sessions=sessions, session="s")
        assert "\n" not in str(err.value)


def test_duplicate_names_stay_distinct():
    assert unique_names(["a", "a", "a_1"]) == ["a", "a_2", "a_1"]
    assert unique_names(["x", "x", "x"]) == ["x", "x_1", "x_2"]


def test_results_are_capped_in_bytes(run, sessions):
    """30 values of 10 MB: the fetch stops before holding more than the cap, and says so."""
    cap = sessions.limits.max_bytes
    res = run_sql(run, "SELECT repeat('x', 10000000) AS s FROM range(30)", sessions=sessions, session="s")
    assert len(res.frame) * 10_000_000 <= cap and "over 16 MB" in res.truncated
    res = run_sql(run, "SELECT repeat('x', 1000000) AS s FROM range(30)", sessions=sessions, session="s")
    assert 0 < len(res.frame) < 30 and res.frame["s"].str.len().sum() <= cap


def test_the_last_result_is_kept_per_session_only(run, sessions):
    a = run_sql(run, "SELECT random() AS r", sessions=sessions, session="s")
    assert run_sql(run, "SELECT random() AS r", sessions=sessions, session="s") is a  # a rerun of the page
    assert run_sql(run, "SELECT random() AS r", sessions=sessions, session="t") is not a


def test_long_queries_are_interrupted(run):
    """Inside a worker: what DuckDB interrupts stops at the time limit and the connection stays usable."""
    from app.sql_console import execute

    con = open_sql(run.path, run.path.parent / "spill")
    with pytest.raises(SqlError, match="longer than 0.5 s"):
        execute(con, "SELECT count(*) FROM range(10000000000) a, range(1000) b", limits=SqlLimits(timeout_s=0.5))
    assert execute(con, "SELECT 42 AS x").table["x"][0].as_py() == 42


def test_sessions_are_capped_least_recently_used_first(run, sessions):
    for sid in ("a", "b", "c", "d"):
        run_sql(run, "SELECT 1 AS x", sessions=sessions, session=sid)
    run_sql(run, "SELECT 1 AS x", sessions=sessions, session="a")  # a is now the most recent
    run_sql(run, "SELECT 1 AS x", sessions=sessions, session="e")
    assert len(sessions) == 4 and set(sessions._slots) == {"c", "d", "a", "e"}  # b, the least recent, was closed


def test_a_new_session_is_refused_while_every_slot_runs(run):
    reg = SqlSessions(limit=1)
    started, release = threading.Event(), threading.Event()

    def hold():
        with reg.session("busy", run):
            started.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    started.wait(10)
    try:
        with pytest.raises(SqlBusy, match="all 1 SQL sessions"):
            with reg.session("newcomer", run):
                pass
        with pytest.raises(SqlError, match="try again"):
            run_sql(run, "SELECT 1", sessions=reg, session="newcomer")
    finally:
        release.set()
        t.join()
    assert run_sql(run, "SELECT 1 AS x", sessions=reg, session="newcomer").frame["x"][0] == 1
    reg.close_all()


def test_a_rerun_interrupts_the_sessions_previous_query(run, sessions):
    out = {}

    def slow():
        try:
            run_sql(run, "SELECT count(*) FROM range(10000000000) a, range(1000) b", sessions=sessions, session="s")
        except SqlError as err:
            out["err"] = str(err)

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    start = time.perf_counter()
    assert run_sql(run, "SELECT 7 AS x", sessions=sessions, session="s").frame["x"][0] == 7
    t.join()
    assert time.perf_counter() - start < 10 and "interrupted (a newer query" in out["err"]


def test_a_sibling_folder_with_the_runs_name_as_prefix_is_not_readable(run, sessions):
    """allowed_directories admits the run folder, not every path starting with its name: the README's
    '<run>-all' next to it stays out of reach."""
    import shutil

    sibling = run.path.parent / f"{run.name}-all"
    shutil.copytree(run.path, sibling)
    with pytest.raises(SqlError, match="Permission Error"):
        run_sql(run, f"SELECT count(*) FROM read_parquet('{sibling}/pairs.parquet')", sessions=sessions, session="s")


@pytest.mark.parametrize("statement, error", [
    ("COPY (SELECT 1) TO '/tmp/atlas-sandbox-leak.csv'", duckdb.PermissionException),
    ("ATTACH '/tmp/atlas-other.duckdb' AS other", duckdb.PermissionException),
    ("INSTALL httpfs", duckdb.PermissionException),
    ("LOAD httpfs", duckdb.PermissionException),
    ("SELECT * FROM read_csv('/etc/passwd')", duckdb.PermissionException),
    ("SET enable_external_access = true", duckdb.InvalidInputException),
    ("SET allowed_directories = ['/']", duckdb.InvalidInputException),
    ("SET memory_limit = '100GB'", duckdb.InvalidInputException),
    ("SET lock_configuration = false", duckdb.InvalidInputException),
])
def test_the_connection_itself_is_locked(run, tmp_path, statement, error):
    """Second line of defence: a statement that got past the allow-list is refused by DuckDB itself (on the
    connection a worker opens)."""
    con = open_sql(run.path, tmp_path / "spill")
    with pytest.raises(error):
        con.execute(statement)


def test_check_accepts_only_one_select():
    con = duckdb.connect()
    assert check(con, "WITH a AS (SELECT 1) SELECT * FROM a") == "WITH a AS (SELECT 1) SELECT * FROM a"
    for text in ("SELECT 1; SELECT 2", "EXPLAIN SELECT 1", "PIVOT (SELECT 1 AS a) ON a", "CALL pragma_version()"):
        with pytest.raises(SqlError):
            check(con, text)

