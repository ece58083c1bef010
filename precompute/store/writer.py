"""Streaming, atomic, resumable, verifiable writes of one run folder.

Work is cut into *parts* (a fixed, deterministic slice of the job each, e.g. 256 pairs). A part is written to
``_parts/<table>/<key>.parquet`` through a temporary file and ``os.replace``, so a killed run leaves either the
whole part or nothing. A rerun keeps the parts that verify (:mod:`precompute.store.integrity`: page checksums,
row counts, statistics) and recomputes the others. When every part is there, ``merge_parts`` merges them
(DuckDB, sorted by the table's sort key, spilling to disk, streamed into a checksummed Parquet file, so memory
stays flat) into a new table, and :meth:`RunWriter.commit` installs a stage's new tables together
(:mod:`precompute.store.commit`). Every file carries the run's identity in its metadata, so a folder says which
run it holds even without its manifest. Readers only ever see finished tables, and only once
``manifest.json`` (written last, atomically) says so.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from precompute.console import log as console_log
from precompute.store import commit as _commit
from precompute.store import integrity
from precompute.store.manifest import Manifest, ManifestError, read_manifest, write_manifest
from precompute.store.schema import SCHEMA_VERSION, TABLES, Table
from precompute.store.sql import literal

LOCK = ".lock"
PARTS = "_parts"
BATCH_ROWS = 122_880  # rows per Arrow batch streamed out of DuckDB (row groups: schema.Table.row_group_rows)


class StoreError(Exception):
    """A run folder that cannot be written or read as asked (message is one line, for the CLI)."""


class CorruptTable(StoreError):
    """A finished table that fails verification; ``table`` names it (stages rebuild the ones they can)."""

    def __init__(self, table: str, reason: str):
        super().__init__(reason)
        self.table = table


def _atomic_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def write_parquet(table: Table, data: pa.Table, path: Path, identity: dict | None = None) -> None:
    """Validate ``data`` against ``table``'s schema and write it to ``path`` atomically, checksummed."""
    data = data.select(table.column_names).cast(table.schema)
    tmp = _atomic_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    integrity.write(data, tmp, table=table.name, identity=identity, row_group_size=table.row_group_rows)
    os.replace(tmp, path)


def is_disk_full(err: BaseException) -> bool:
    """ENOSPC / EDQUOT, whether raised by Python, pyarrow (an OSError with the errno) or DuckDB (text only)."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(err) or "Disk quota exceeded" in str(err)


class RunWriter:
    """Writes the tables of one run folder, part by part; ``identity`` (the run's, as a dict) is stamped on
    every file it writes."""

    def __init__(self, root: Path, identity: dict | None = None):
        self.root = Path(root)
        self.identity = identity
        self._trusted: dict[Path, tuple[int, int, int]] = {}  # verified (or written) by this process: path -> stat

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
        _commit.recover(self.root, self.drop_parts, self._verify_staged, console_log)

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

    def data_files(self) -> list[Path]:
        """Every Parquet file of the folder: finished tables, staged tables and parts."""
        return sorted([*self.root.glob("*.parquet"), *(self.root / _commit.STAGED).glob("*.parquet"),
                       *(self.root / PARTS).glob("*/*.parquet")])

    def check_identity(self, has_manifest: bool) -> None:
        """Refuse a folder whose files another run wrote (their metadata says so even without manifest.json),
        and a folder with files but no manifest whose files do not say which run wrote them (older versions)."""
        for path in self.data_files():
            try:
                stored = integrity.stored_identity(path)
            except integrity.CorruptFile:
                continue  # verification names it when the file is used
            if stored is None:
                if has_manifest:
                    continue
                raise StoreError(
                    f"{self.root} holds tables but no manifest.json, and {path.name} does not record which run wrote it "
                    "(an older version); restore its manifest.json, pass another --out, or delete that folder"
                )
            for key, value in (self.identity or {}).items():
                if stored.get(key) != value:
                    raise StoreError(
                        f"{key} differs from the run already in this folder ({stored.get(key)!r} in {path.name}, "
                        f"{value!r} now); pass another --out or delete that folder"
                    )

    # -- verification --------------------------------------------------------------------
    def _stat(self, path: Path) -> tuple[int, int, int]:
        st = path.stat()
        return st.st_size, st.st_mtime_ns, st.st_ino

    def _trust(self, path: Path) -> None:
        self._trusted[path] = self._stat(path)

    def _verified(self, table: str, path: Path) -> None:
        """Verify ``path`` as ``table`` unless this process wrote or verified it unchanged; CorruptFile otherwise."""
        if self._trusted.get(path) == self._stat(path):
            return
        integrity.verify(path, table, TABLES[table].schema)
        self._trust(path)

    def _verify_staged(self, table: str, path: Path) -> None:
        try:
            self._verified(table, path)
        except integrity.CorruptFile as err:
            raise StoreError(f"{err}; delete the folder {path.parent} and rerun the same command (the stage merges again)") from err

    def check_table(self, table: str) -> None:
        """A finished table is what was written, or CorruptTable naming it."""
        try:
            self._verified(table, self.table_path(table))
        except integrity.CorruptFile as err:
            raise CorruptTable(table, str(err)) from err

    def drop_corrupt_table(self, table: str, reason: str, what: str) -> None:
        """Delete a damaged table that its stage can rebuild (``what``: from what), with a log line saying so."""
        console_log(f"{reason}: deleted, it is rebuilt {what}")
        self.table_path(table).unlink(missing_ok=True)

    # -- parts ---------------------------------------------------------------------------
    def part_path(self, table: str, key: str) -> Path:
        return self.root / PARTS / table / f"{key}.parquet"

    def has_part(self, table: str, key: str) -> bool:
        return self.part_path(table, key).exists()

    def write_part(self, table: str, key: str, data: pa.Table) -> None:
        path = self.part_path(table, key)
        write_parquet(TABLES[table], data, path, self.identity)
        self._trust(path)

    def part_paths(self, table: str) -> list[Path]:
        return sorted((self.root / PARTS / table).glob("*.parquet"))

    def verify_parts(self, table: str) -> list[Path]:
        """The parts of ``table`` that verify; a damaged one is deleted (it is resumable work) with a log line."""
        good = []
        for path in self.part_paths(table):
            try:
                self._verified(table, path)
            except integrity.CorruptFile as err:
                console_log(f"{err}: deleted, it is computed again")
                path.unlink()
                continue
            good.append(path)
        return good

    # -- tables --------------------------------------------------------------------------
    def table_path(self, table: str) -> Path:
        return self.root / f"{table}.parquet"

    def staged_path(self, table: str) -> Path:
        return _commit.staged_path(self.root, table)

    def has_table(self, table: str) -> bool:
        return self.table_path(table).exists()

    def write_table(self, table: str, data: pa.Table, *, staged: bool = False) -> Path:
        """Write a whole (small) table at once, sorted by its sort key: into place, or staged for :meth:`commit`."""
        spec = TABLES[table]
        data = data.sort_by([(k, "ascending") for k in spec.sort_key]) if spec.sort_key else data
        path = self.staged_path(table) if staged else self.table_path(table)
        write_parquet(spec, data, path, self.identity)
        self._trust(path)
        return path

    def merge_parts(self, table: str, *, select_sql: str | None = None, sources: dict[str, Path] | None = None,
                    staged: bool = False) -> Path:
        """Merge every part of ``table`` into ``<table>.parquet`` (or its staged copy), sorted by its sort key.

        ``select_sql`` (optional) derives the table from other data: it may name ``parts_<name>`` for each entry
        of ``sources`` (a name -> a parts folder, or one Parquet file). The result is streamed from DuckDB as
        Arrow batches into a checksummed file (DuckDB's own COPY writes no page checksums).
        """
        import duckdb

        spec = TABLES[table]
        con = duckdb.connect()
        try:
            spill = self.root / PARTS / ".duckdb-tmp"
            con.execute(f"SET temp_directory = {literal(spill)}")
            con.execute("SET preserve_insertion_order = true")
            if select_sql is None:
                select_sql = f"SELECT * FROM read_parquet({literal(f'{self.root / PARTS / table}/*.parquet')})"
            for name, source in (sources or {}).items():
                glob = f"{source}/*.parquet" if Path(source).is_dir() else str(source)
                con.execute(f"CREATE VIEW parts_{name} AS SELECT * FROM read_parquet({literal(glob)})")
            casts = ", ".join(f"CAST({_q(c.name)} AS {_duck_type(c.type)}) AS {_q(c.name)}" for c in spec.columns)
            order = ", ".join(_q(k) for k in spec.sort_key)
            reader = con.sql(f"SELECT {casts} FROM ({select_sql}) ORDER BY {order}").to_arrow_reader(BATCH_ROWS)
            return self._write_stream(spec, reader, staged)
        finally:
            con.close()

    def write_pieces(self, table: str, pieces: Iterable[pa.Table], *, staged: bool = False) -> Path:
        """Write a table that arrives as consecutive pieces already in its sort order (e.g. one head at a time), so
        only one piece and one row group are ever in memory: into place, or staged for :meth:`commit`."""
        spec = TABLES[table]
        batches = (b for piece in pieces for b in piece.select(spec.column_names).cast(spec.schema).to_batches())
        return self._write_stream(spec, pa.RecordBatchReader.from_batches(spec.schema, batches), staged)

    def _write_stream(self, spec: Table, reader: pa.RecordBatchReader, staged: bool) -> Path:
        """Stream ``reader`` into the table's file (or its staged copy) through a temporary file, checksummed."""
        target = self.staged_path(spec.name) if staged else self.table_path(spec.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _atomic_path(target)
        integrity.write_batches(reader, spec.schema, tmp, table=spec.name, identity=self.identity,
                                row_group_size=spec.row_group_rows, group_by=spec.row_groups_by)
        os.replace(tmp, target)
        self._trust(target)
        return target

    def commit(self, label: str, tables: list[str], drop_parts: list[str] = ()) -> None:
        """Install the staged ``tables`` and drop the parts of ``drop_parts`` as one atomic step."""
        _commit.commit(self.root, label, tables, drop_parts, self.drop_parts)
        for table in tables:
            self._trust(self.table_path(table))

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
            raise StoreError(f"{err}; delete it and rerun the same command (the tables are kept and the manifest "
                             "is rebuilt), or pass another --out") from err

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
