"""The store: Parquet tables plus a manifest, one folder per run, queried with DuckDB.

Its schema (``schema.py``) is the project's public API; ``docs/store.md`` documents it and a
test keeps the two in step.
"""
