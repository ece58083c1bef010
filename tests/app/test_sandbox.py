"""The SQL page's connection: read-only and confined, each defence shown on its own."""

from __future__ import annotations

import duckdb
import pytest

from app.sandbox import SandboxError, check_statements, open_sandbox, run_sql
from tests.app.conftest import DL20


@pytest.fixture(scope="module")
def sandbox(store):
    return open_sandbox(store / DL20)


def test_select_over_the_views_works(sandbox):
    res = run_sql(sandbox, "SELECT count(*) AS n FROM head_attention")
    assert res.frame["n"][0] == 3 * 4 * 48
    res = run_sql(sandbox, "SELECT * FROM pairs", limit=5)
    assert len(res.frame) == 5 and res.truncated
    assert len(run_sql(sandbox, "DESCRIBE pairs").frame) > 10
    assert len(run_sql(sandbox, "SUMMARIZE head_attention_agg").frame) > 10
    assert len(run_sql(sandbox, "FROM head_alignment").frame) == 12


@pytest.mark.parametrize("statement", [
    "COPY (SELECT 1) TO '/tmp/atlas-sandbox-leak.csv'",
    "COPY pairs TO 'pairs.parquet' (FORMAT parquet)",
    "EXPORT DATABASE '/tmp/atlas-export'",
    "ATTACH '/tmp/atlas-other.duckdb' AS other",
    "ATTACH ':memory:' AS scratch",
    "INSTALL httpfs",
    "LOAD httpfs",
    "CREATE TABLE t AS SELECT 1",
    "CREATE TEMP TABLE t AS SELECT 1",
    "CREATE OR REPLACE VIEW pairs AS SELECT 1",
    "INSERT INTO pairs SELECT * FROM pairs",
    "DROP VIEW pairs",
    "SET enable_external_access = true",
    "RESET lock_configuration",
    "PRAGMA enable_profiling",
    "CALL pragma_version()",
    "SELECT 1; DROP VIEW pairs",
])
def test_only_queries_pass_the_statement_check(sandbox, statement):
    with pytest.raises(SandboxError, match="not allowed"):
        run_sql(sandbox, statement)
    assert run_sql(sandbox, "SELECT count(*) AS n FROM pairs").frame["n"][0] == 48  # nothing changed


@pytest.mark.parametrize("statement", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_parquet('{other}/pairs.parquet')",
    "SELECT * FROM read_text('{run}/../../../../etc/passwd')",
])
def test_files_outside_the_run_cannot_be_read(sandbox, store, statement):
    with pytest.raises(SandboxError, match="Permission Error"):
        run_sql(sandbox, statement.format(other=store / "trec-dl-2019__tiny-ce", run=store / DL20))


def test_files_of_the_run_can_be_read(sandbox, store):
    res = run_sql(sandbox, f"SELECT count(*) AS n FROM read_parquet('{store / DL20 / 'pairs.parquet'}')")
    assert res.frame["n"][0] == 48


@pytest.mark.parametrize("statement, error", [
    ("COPY (SELECT 1) TO '/tmp/atlas-sandbox-leak.csv'", duckdb.PermissionException),
    ("ATTACH '/tmp/atlas-other.duckdb' AS other", duckdb.PermissionException),
    ("INSTALL httpfs", duckdb.PermissionException),
    ("LOAD httpfs", duckdb.PermissionException),
    ("SELECT * FROM read_csv('/etc/passwd')", duckdb.PermissionException),
    ("SET enable_external_access = true", duckdb.InvalidInputException),
    ("SET allowed_directories = ['/']", duckdb.InvalidInputException),
    ("SET lock_configuration = false", duckdb.InvalidInputException),
])
def test_the_connection_itself_is_locked(sandbox, statement, error):
    """Second line of defence: even a statement that got past the check is refused by DuckDB."""
    with pytest.raises(error):
        sandbox.cursor().execute(statement)


def test_statement_check_counts_and_rejects_empty(sandbox):
    assert check_statements(sandbox, "SELECT 1; SELECT 2") == 2
    with pytest.raises(SandboxError):
        check_statements(sandbox, "   ")
    with pytest.raises(SandboxError, match="Parser Error"):
        check_statements(sandbox, "SELEC 1")


def test_long_queries_are_interrupted(sandbox):
    with pytest.raises(SandboxError, match="longer than"):
        run_sql(sandbox, "SELECT count(*) FROM range(10000000000) a, range(1000) b", timeout_s=0.5)
