"""The SQL page's engine and sessions: nothing a visitor types can write, reach another session, or crash.

Everything goes through ``app.connections.run_sql``, the function the page calls, on a registry of
per-session workers like the server's (``app.connections.SqlSessions``).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import duckdb
import pytest

from app.connections import SqlBusy, SqlSessions, run_sql
from matching_atlas.opening import inspect_run
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


# -- bounded in memory and time, whatever the statement (issue 16) ------------------------------------------
UNIONS = 10_000
HEAVY = {  # statement classes that took the server to 3-8 GB or held a session for minutes when run in it
    "memory in one function: damerau_levenshtein": "SELECT damerau_levenshtein(repeat('a', 40000), repeat('b', 40000))",
    "memory in one function: unnest": "SELECT unnest(range(1000000000))",
    "memory in one function: list_sort": "SELECT list_sort(range(200000000))",
    "memory in one function: lpad": "SELECT lpad('x', 1500000000, 'y')",
    "memory in one function: printf": "SELECT printf('%01500000000d', 1)",
    "memory in the planner: 10,000 chained UNION ALL": " UNION ALL ".join(f"SELECT {i}" for i in range(UNIONS)),
    "long single-value function: jaro_similarity": "SELECT jaro_similarity(repeat('ab', 1500000), repeat('ba', 1500000))",
    "optimizer-heavy WHERE: 60,000 OR terms": "SELECT count(*) FROM pairs WHERE "
                                              + " OR ".join(f"pair_id = {i}" for i in range(60_000)),
    "list-of-NULL result (the issue's)": "SELECT list_resize([NULL], 20000) AS l FROM range(100000)",
    "list-of-NULL result (5,000 rows)": "SELECT list_resize([NULL], 20000) AS l FROM range(5000)",
}
STOPPED = ("needs more memory than a SQL session may use", "ran longer than", "SQL session stopped while running")


def peak_rss_growth(fn) -> tuple[int, object]:
    """(growth of this process's peak resident memory while ``fn`` ran, its value): VmHWM, reset before through
    /proc/self/clear_refs."""
    def status(key: str) -> int:
        line = next(ln for ln in Path("/proc/self/status").read_text().splitlines() if ln.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    Path("/proc/self/clear_refs").write_text("5")
    before = status("VmRSS")
    value = fn()
    return status("VmHWM") - before, value


def test_every_heavy_statement_class_stops_in_time_without_growing_the_server(run):
    """Every class of the issue at once, one session each (statements of 3-8 GB and minutes when the server ran
    them): each ends for its visitor within the time limit + 5 s with one line (or, for a list-of-NULL result,
    cut at the value cap), the server (this process) grows by less than its documented SQL budget, and every
    session answers its next query. The text-length bound is lifted here so that the parser and optimizer
    payloads reach their workers (the server's bound refuses them, next test)."""
    limits = SqlLimits(timeout_s=3, memory=512 * 2**20, max_chars=2_000_000)
    reg = SqlSessions(limit=len(HEAVY), limits=limits)
    out: dict[str, tuple[float, str, object]] = {}

    def one(label: str, text: str) -> None:
        start = time.perf_counter()
        try:
            res = run_sql(run, text, limit=MAX_ROW_LIMIT, sessions=reg, session=label)
            out[label] = (time.perf_counter() - start, "", res)
        except SqlError as err:
            out[label] = (time.perf_counter() - start, str(err), None)

    def all_at_once() -> None:
        threads = [threading.Thread(target=one, args=item) for item in HEAVY.items()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)

    try:
        growth, _ = peak_rss_growth(all_at_once)
        assert set(out) == set(HEAVY)
        for label, (elapsed, error, res) in out.items():
            assert elapsed <= limits.timeout_s + 5, (label, elapsed, error)
            if res is not None:  # only a list-of-NULL result may come back: cut at the value cap
                assert label.startswith("list-of-NULL") and "over 2,000,000 values" in res.truncated, label
                assert len(res.frame) <= limits.max_cells // 20_000
            else:
                assert "\n" not in error and any(s in error for s in STOPPED), (label, error)
        assert growth < reg.server_bytes, f"the server grew by {growth / 2**20:.0f} MiB"
        for label in HEAVY:
            assert run_sql(run, "SELECT 42 AS x", sessions=reg, session=label).frame["x"][0] == 42, label
    finally:
        reg.close_all()


def test_text_over_the_length_bound_is_refused_before_parsing(run, sessions):
    text = " UNION ALL ".join(f"SELECT {i}" for i in range(UNIONS))
    start = time.perf_counter()
    with pytest.raises(SqlError, match="characters long; the SQL page takes at most 100,000"):
        run_sql(run, text, sessions=sessions, session="s")
    assert time.perf_counter() - start < 0.5 and len(sessions) == 0  # no worker was even asked


def test_a_worker_is_capped_niced_and_small(run, sessions):
    """The worker's limits as the operating system sees them: RLIMIT_DATA = the session's memory, nice 19, and
    DuckDB's memory_limit and threads as configured; its spawner holds no thread (fork safety)."""
    from app.sql_worker import NICE, SPAWNER

    res = run_sql(run, "SELECT current_setting('memory_limit') AS m, current_setting('threads') AS t",
                  sessions=sessions, session="s")
    worker = sessions._slots["s"].worker
    limits = Path(f"/proc/{worker.pid}/limits").read_text()
    data = next(ln for ln in limits.splitlines() if ln.startswith("Max data size")).split()
    assert int(data[3]) == int(data[4]) == sessions.limits.memory
    assert int(Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()[16]) == NICE
    assert res.frame["t"][0] == sessions.limits.threads
    alone = duckdb.connect()
    alone.execute(f"SET memory_limit = '{sessions.limits.duckdb_memory // 2**20}MiB'")
    assert res.frame["m"][0] == alone.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    assert len(list(Path(f"/proc/{SPAWNER.pid}/task").iterdir())) == 1


def test_allocations_outside_duckdbs_buffer_manager_hit_the_os_cap(run):
    """A 1.5 GB printf result fails in a 512 MiB worker with one line (DuckDB's memory_limit does not see it: with
    memory_limit = 128MB and no OS cap it peaks at 2.9 GB); the session's next query gets a fresh worker."""
    reg = SqlSessions(limit=1, limits=SqlLimits(memory=512 * 2**20))
    try:
        with pytest.raises(SqlError, match="needs more memory than a SQL session may use \\(512 MiB\\)"):
            run_sql(run, "SELECT length(printf('%01500000000d', 1)) AS n", sessions=reg, session="s")
        first = reg._slots["s"].worker.pid
        assert run_sql(run, "SELECT 1 AS x", sessions=reg, session="s").frame["x"][0] == 1
        assert reg._slots["s"].worker.pid != first
    finally:
        reg.close_all()


def test_workers_end_with_their_sessions(run):
    """Closing the sessions ends their workers; a worker whose server end is closed ends on its own."""
    reg = SqlSessions(limit=2)
    run_sql(run, "SELECT 1 AS x", sessions=reg, session="a")
    run_sql(run, "SELECT 1 AS x", sessions=reg, session="b")
    pids = [reg._slots[s].worker.pid for s in ("a", "b")]
    orphan = reg._slots["b"].worker
    orphan._conn.close()  # as if the server were gone
    deadline = time.time() + 5
    while Path(f"/proc/{pids[1]}").exists() and Path(f"/proc/{pids[1]}/stat").read_text().split()[2] != "Z":
        assert time.time() < deadline, "the worker did not end when its server end closed"
        time.sleep(0.05)
    reg.close_all()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_values_are_counted_with_nested_elements():
    import pyarrow as pa

    from app.sql_results import cells

    lists = pa.array([[1, 2, 3], [], None, [4]])
    structs = pa.array([{"a": 1, "b": [1, 2]}, {"a": 2, "b": [3]}])
    maps = pa.array([[("k", 1), ("l", 2)], [("m", 3)]], type=pa.map_(pa.string(), pa.int64()))
    assert cells(lists) == 4 + 4 and cells(lists.slice(0, 1)) == 1 + 3
    assert cells(structs) == 2 + 2 + (2 + 3) and cells(structs.slice(1, 1)) == 1 + 1 + (1 + 1)
    assert cells(maps) == 2 + 3 + 3 and cells(maps.slice(1, 1)) == 1 + 1 + 1
    assert cells(pa.table({"l": lists, "x": pa.array([1, 2, 3, 4])})) == 8 + 4


def test_the_frames_size_counts_what_its_list_cells_hold():
    import pyarrow as pa

    from app.sql_results import displayable, frame_bytes

    table = pa.table({"l": pa.array([[None] * 20_000] * 50, type=pa.list_(pa.null()))})
    _, frame = displayable(table)
    assert frame.memory_usage(deep=True).sum() < 50 * 20_000  # pandas alone sees the array headers
    assert frame_bytes(frame) >= 50 * 20_000 * 8  # one pointer per NULL


def test_a_result_is_cut_to_its_size_as_a_table(run, sessions):
    """100,000 structs of 16 booleans: 2 bytes a row in Arrow and 1.7 million values, within both caps, but a
    dict per row in pandas (~470 bytes): cut where the frame fits its 32 MB, measured as converted."""
    from app.sql_results import frame_bytes

    fields = ", ".join(f"f{i}: true" for i in range(16))
    res = run_sql(run, f"SELECT {{{fields}}} AS s FROM range(100000)", limit=MAX_ROW_LIMIT, sessions=sessions,
                  session="s")
    assert "MB as a table" in res.truncated and 0 < len(res.frame) < 100_000
    assert frame_bytes(res.frame) <= sessions.limits.max_frame_bytes < frame_bytes(res.frame) * 100_000 / len(res.frame)


def test_an_allocation_that_failed_is_named_however_it_surfaces():
    """DuckDB's "Out of Memory Error" may reach the page as a plain duckdb.Error or a SqlError without its cause (seen
    for a WHERE of 60,000 OR terms under load): it is still told as the session's memory cap, not as a bare error."""
    from app.sql_console import SqlError, _out_of_memory

    assert _out_of_memory(SqlError("Out of Memory Error: Failed to allocate block of 16777216 bytes (bad allocation)"))
    wrapped = SqlError("check failed")
    wrapped.__cause__ = duckdb.OutOfMemoryException("could not allocate")
    assert _out_of_memory(wrapped) and _out_of_memory(MemoryError())
    assert not _out_of_memory(SqlError("Parser Error: syntax error at or near \"SELEC\""))
