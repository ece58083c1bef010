"""Streaming, atomic, resumable writes of one run folder.

Work is cut into *parts* (a fixed, deterministic slice of the job each, e.g. 256 pairs). A part
is written to ``_parts/<table>/<key>.parquet`` through a temporary file and ``os.replace``, so a
killed run leaves either the whole part or nothing. A rerun skips the parts that exist; when every
part is there, ``finalize`` merges them (DuckDB, sorted by the table's sort key, spilling to disk,
so memory stays flat) into ``<table>.parquet``, again through a temporary file. Readers only ever
see finished tables, and only once ``manifest.json`` (written last, atomically) says so.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from precompute.store.manifest import Manifest, ManifestError, read_manifest, write_manifest
from precompute.store.schema import SCHEMA_VERSION, TABLES, Table

LOCK = ".lock"
PARTS = "_parts"
ROW_GROUP_SIZE = 122_880  # DuckDB's row-group size: zone maps then prune per layer/head


class StoreError(Exception):
    """A run folder that cannot be written or read as asked (message is one line, for the CLI)."""


def _atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_parquet(table: Table, data: pa.Table, path: Path) -> None:
    """Validate ``data`` against ``table``'s schema and write it to ``path`` atomically."""
    data = data.select(table.column_names).cast(table.schema)
    tmp = _atomic_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(data, tmp, row_group_size=ROW_GROUP_SIZE, compression="zstd")
    os.replace(tmp, path)


class RunWriter:
    """Writes the tables of one run folder, part by part."""

    def __init__(self, root: Path):
        self.root = Path(root)

    # -- checks --------------------------------------------------------------------------
    def ensure_writable(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise StoreError(f"output folder {self.root} is not writable ({err.strerror}); pass --out with a folder you can write to") from err
        self._lock()
        self.remove_stale_temporaries()  # safe now: no other job can be writing here
        manifest = self.read_manifest()
        if manifest is not None and manifest.schema_version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.root} holds a store of schema version {manifest.schema_version}, this job writes "
                f"version {SCHEMA_VERSION}; pass another --out or delete that folder"
            )

    def _lock(self) -> None:
        """Hold an exclusive lock on the run folder for the life of the process: two jobs never write one run."""
        import fcntl

        handle = open(self.root / LOCK, "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            handle.close()
            raise StoreError(f"another precompute job is writing {self.root}; wait for it to finish or pass another --out") from err
        self._lock_handle = handle  # released when the process ends (or the writer is collected)

    # -- parts ---------------------------------------------------------------------------
    def part_path(self, table: str, key: str) -> Path:
        return self.root / PARTS / table / f"{key}.parquet"

    def has_part(self, table: str, key: str) -> bool:
        return self.part_path(table, key).exists()

    def write_part(self, table: str, key: str, data: pa.Table) -> None:
        write_parquet(TABLES[table], data, self.part_path(table, key))

    def part_paths(self, table: str) -> list[Path]:
        return sorted((self.root / PARTS / table).glob("*.parquet"))

    # -- tables --------------------------------------------------------------------------
    def table_path(self, table: str) -> Path:
        return self.root / f"{table}.parquet"

    def has_table(self, table: str) -> bool:
        return self.table_path(table).exists()

    def write_table(self, table: str, data: pa.Table) -> None:
        """Write a whole (small) table at once, sorted by its sort key."""
        spec = TABLES[table]
        data = data.sort_by([(k, "ascending") for k in spec.sort_key]) if spec.sort_key else data
        write_parquet(spec, data, self.table_path(table))

    def merge_parts(self, table: str, *, select_sql: str | None = None, sources: dict[str, Path] | None = None) -> None:
        """Merge every part of ``table`` into ``<table>.parquet``, sorted by its sort key.

        ``select_sql`` (optional) derives the table from the parts of other tables: it may name
        ``parts_<name>`` for each entry of ``sources`` (a table name -> parts folder).
        """
        import duckdb

        spec = TABLES[table]
        target = self.table_path(table)
        tmp = _atomic_path(target)
        con = duckdb.connect()
        try:
            spill = self.root / PARTS / ".duckdb-tmp"
            con.execute(f"SET temp_directory = '{spill}'")
            con.execute("SET preserve_insertion_order = true")
            if select_sql is None:
                select_sql = f"SELECT * FROM read_parquet('{self.root / PARTS / table}/*.parquet')"
            for name, folder in (sources or {}).items():
                con.execute(f"CREATE VIEW parts_{name} AS SELECT * FROM read_parquet('{folder}/*.parquet')")
            casts = ", ".join(f"CAST({_q(c.name)} AS {_duck_type(c.type)}) AS {_q(c.name)}" for c in spec.columns)
            order = ", ".join(_q(k) for k in spec.sort_key)
            con.execute(
                f"COPY (SELECT {casts} FROM ({select_sql}) ORDER BY {order}) TO '{tmp}' "
                f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_SIZE})"
            )
        finally:
            con.close()
        os.replace(tmp, target)

    def drop_parts(self, table: str) -> None:
        """Remove a merged table's parts; the parts folder goes too once nothing is left in it."""
        parts = self.root / PARTS
        shutil.rmtree(parts / table, ignore_errors=True)
        shutil.rmtree(parts / ".duckdb-tmp", ignore_errors=True)
        if parts.exists() and not any(parts.iterdir()):
            parts.rmdir()

    def remove_stale_temporaries(self) -> None:
        """Temporary files a killed run left behind (never read: only finished files are renamed into place)."""
        for tmp in self.root.rglob(".*.tmp-*"):
            tmp.unlink(missing_ok=True)

    # -- manifest ------------------------------------------------------------------------
    def read_manifest(self) -> Manifest | None:
        try:
            return read_manifest(self.root)
        except ManifestError as err:
            raise StoreError(f"{err}; delete it to start the run over, or pass another --out") from err

    def write_manifest(self, manifest: Manifest) -> None:
        manifest.schema_version = SCHEMA_VERSION
        write_manifest(self.root, manifest)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_DUCK_TYPES = {
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
}


def _duck_type(t: pa.DataType) -> str:
    return _DUCK_TYPES[t]
