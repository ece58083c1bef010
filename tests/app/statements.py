"""One statement per statement type DuckDB knows, for the SQL page's tests (``{run}``: the run folder).

Every member of ``duckdb.StatementType`` is produced by one of ``STATEMENTS`` (tests/app/test_sql_console.py
checks it), except ``NOT_FROM_TEXT``: types the parser never gives to SQL text (the text meant for them,
listed here too, parses as another type). ``UPDATE EXTENSIONS`` has a type the Python enum cannot name.
The dangerous ones aim at the run folder, the one place the SQL connection may touch.
"""

from __future__ import annotations

STATEMENTS: dict[str, str] = {
    "SELECT": "SELECT count(*) AS n FROM pairs",
    "SELECT (a run file)": "SELECT count(*) AS n FROM read_parquet('{run}/pairs.parquet')",
    "INSERT": "INSERT INTO pairs SELECT * FROM pairs",
    "UPDATE": "UPDATE pairs SET score = 0",
    "CREATE": "CREATE OR REPLACE VIEW svd AS SELECT 1 AS k",
    "CREATE_FUNC (parses as CREATE)": "CREATE OR REPLACE MACRO lower(x) AS 'x'",
    "DELETE": "DELETE FROM pairs",
    "PREPARE": "PREPARE p AS SELECT 1",
    "EXECUTE": "EXECUTE p",
    "ALTER": "ALTER VIEW svd RENAME TO svd_old",
    "TRANSACTION": "BEGIN TRANSACTION",
    "COPY": "COPY (SELECT 1 AS pair_id) TO '{run}/pairs.parquet' (FORMAT parquet)",
    "ANALYZE (parses as VACUUM)": "ANALYZE",
    "VACUUM": "VACUUM",
    "VARIABLE_SET (parses as SET)": "SET VARIABLE atlas = 1",
    "SET": "SET threads = 1",
    "SET (reset the lock)": "RESET lock_configuration",
    "EXPLAIN": "EXPLAIN SELECT 1",
    "DROP": "DROP VIEW svd",
    "EXPORT": "EXPORT DATABASE '{run}/export'",
    "PRAGMA": "PRAGMA enable_profiling",
    "COPY_DATABASE (parses as PRAGMA)": "COPY FROM DATABASE memory TO memory",
    "CALL": "CALL pragma_version()",
    "LOAD": "LOAD httpfs",
    "LOAD (install)": "INSTALL httpfs",
    "ATTACH": "ATTACH '{run}/scratch.duckdb' AS scratch",
    "DETACH": "DETACH scratch",
    "MULTI": "PIVOT pairs ON neg_type USING count(*)",
    "MERGE_INTO": "MERGE INTO pairs USING (SELECT 0 AS pair_id) s ON pairs.pair_id = s.pair_id "
                  "WHEN MATCHED THEN DELETE",
    "UPDATE_EXTENSIONS (no Python name)": "UPDATE EXTENSIONS",
    "two statements": "SELECT 1; DROP VIEW svd",
}
NOT_FROM_TEXT = {"INVALID", "ANALYZE", "VARIABLE_SET", "CREATE_FUNC", "RELATION", "EXTENSION", "LOGICAL_PLAN",
                 "COPY_DATABASE"}
ALLOWED = {"SELECT", "SELECT (a run file)"}  # the only bare statements that run
WRAPPERS = ("", "EXPLAIN ", "EXPLAIN ANALYZE ")


def variants(run) -> list[tuple[str, str]]:
    """(label, text) of every statement bare, under EXPLAIN and under EXPLAIN ANALYZE."""
    return [(f"{w}{label}", w + text.format(run=run)) for label, text in STATEMENTS.items() for w in WRAPPERS]


def fingerprint(query) -> dict:
    """What a session sees of the catalog, functions (macros included) and settings; ``query(sql)`` gives rows."""
    q = {
        "functions": "SELECT function_name, function_type, schema_name, macro_definition FROM duckdb_functions() "
                     "ORDER BY ALL",
        "views": "SELECT view_name, sql FROM duckdb_views() ORDER BY ALL",
        "tables": "SELECT table_name, sql FROM duckdb_tables() ORDER BY ALL",
        "settings": "SELECT name, value FROM duckdb_settings() ORDER BY name",
        "databases": "SELECT database_name, path FROM duckdb_databases() ORDER BY ALL",
        "pairs": "SELECT count(*), sum(score) FROM pairs",
    }
    return {k: query(v) for k, v in q.items()}


def file_hashes(folder) -> dict[str, str]:
    """sha256 of every file under ``folder`` (new and missing files show too)."""
    import hashlib
    from pathlib import Path

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file()}
