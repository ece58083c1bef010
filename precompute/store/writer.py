"""Streaming, atomic, resumable, verifiable writes of one run folder.

Work is cut into *parts* (a fixed, deterministic slice of the job each, e.g. 256 pairs). A part is written to
``_parts/<table>/<key>.parquet`` through a temporary file and ``os.replace``, so a killed run leaves either the
whole part or nothing. A rerun keeps the parts that verify (:mod:`precompute.store.integrity`: page checksums,
row counts, statistics) and recomputes the others. When every part is there, ``merge_parts`` merges them
(DuckDB, sorted by the table's sort key, spilling to disk, streamed into a checksummed Parquet file, so memory
stays flat; a partitioned table into one file per partition, :mod:`precompute.store.layout`) into a new table, and
:meth:`RunWriter.commit` installs a stage's new tables together
(:mod:`precompute.store.commit`). Every file carries the run's identity in its metadata, so a folder says which
run it holds even without its manifest. Readers only ever see finished tables, and only once
``manifest.json`` (written last, atomically) says so.
"""

from __future__ import annotations

import errno
import itertools
import os
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

from precompute.console import log as console_log
from precompute.store import commit as _commit
from precompute.store import integrity, layout
from precompute.store.manifest import Manifest, ManifestError, read_manifest, write_manifest
from precompute.store.schema import SCHEMA_VERSION, TABLES, Table, duck_type
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
    """Validate ``data`` against ``table``'s schema and write it to ``path`` atomically, checksummed, in the table's
    row groups (``row_groups_by``: a head's rows in row groups of their own, parts included, which the partitioned
    merge reads one at a time)."""
    data = data.select(table.column_names).cast(table.schema)
    tmp = _atomic_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    integrity.write_batches(pa.RecordBatchReader.from_batches(table.schema, data.to_batches()), table.schema, tmp,
                            table=table.name, identity=identity, row_group_size=table.row_group_rows,
                            group_by=table.row_groups_by)
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
        """Every Parquet file of the folder: finished tables (each partition of a partitioned one), staged tables and
        parts."""
        staged = self.root / _commit.STAGED
        partitions = [f for folder in (self.root, staged) for t in TABLES if TABLES[t].partition_by
                      for f in layout.files_in(folder / t, t) if (folder / t).is_dir()]
        return sorted([*self.root.glob("*.parquet"), *staged.glob("*.parquet"), *partitions,
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
        """Verify ``path`` (a file, or a partition folder: each of its files) as ``table`` unless this process wrote or
        verified it unchanged; CorruptFile otherwise."""
        for file in layout.files_in(path, table):
            if self._trusted.get(file) == self._stat(file):
                continue
            integrity.verify(file, table, TABLES[table].schema)
            self._trust(file)

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
        layout.remove(self.table_path(table))

    # -- parts ---------------------------------------------------------------------------
    def part_path(self, table: str, key: str, partition: tuple[str, int] | None = None) -> Path:
        folder = self.root / PARTS / table
        return (folder / f"{partition[0]}={partition[1]}" if partition else folder) / f"{key}.parquet"

    def _part_folders(self, table: str) -> list[Path]:
        """The partition folders of a partitioned table's parts (``_parts/<table>/<column>=<value>``)."""
        column = TABLES[table].partition_by
        return layout.partition_folders(self.root / PARTS / table, column) if column else []

    def has_part(self, table: str, key: str) -> bool:
        """Whether the part ``key`` is there: for a partitioned table, in every partition folder its parts have (a
        partition's part deleted as damaged makes the chunk missing, so it is computed again whole)."""
        if TABLES[table].partition_by:
            folders = self._part_folders(table)
            return bool(folders) and all((folder / f"{key}.parquet").exists() for folder in folders)
        return self.part_path(table, key).exists()

    def write_part(self, table: str, key: str, data: pa.Table) -> None:
        """Write one part, sorted by the table's sort key, so that parts of consecutive pair ranges merge by
        concatenation (:meth:`merge_parts`). A partitioned table's part is one file per partition,
        ``_parts/<table>/<column>=<value>/<key>.parquet``, in row groups of one ``row_groups_by`` group each."""
        spec = TABLES[table]
        data = data.select(spec.column_names).cast(spec.schema)
        if spec.sort_key:
            data = data.sort_by([(k, "ascending") for k in spec.sort_key])
        if spec.partition_by is None:
            path = self.part_path(table, key)
            write_parquet(spec, data, path, self.identity)
            self._trust(path)
            return
        for value, batches in _partitions(pa.RecordBatchReader.from_batches(spec.schema, data.to_batches()),
                                          spec.partition_by):
            path = self.part_path(table, key, (spec.partition_by, value))
            write_parquet(spec, pa.Table.from_batches(list(batches), spec.schema), path, self.identity)
            self._trust(path)

    def part_paths(self, table: str) -> list[Path]:
        folder = self.root / PARTS / table
        return sorted([*folder.glob("*.parquet"), *(p for f in self._part_folders(table) for p in f.glob("*.parquet"))])

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
        """The finished table: its file, or its partition folder (a partitioned table of an older store may be one
        file: that one while it is there)."""
        return layout.location(self.root, table) or layout.path(self.root, table)

    def table_files(self, table: str) -> list[Path]:
        """The finished table's data files (one, or one per partition in partition order)."""
        return layout.files(self.root, table)

    def table_rows(self, table: str) -> int:
        """Rows of the finished table, from its files' footers."""
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in self.table_files(table))

    def staged_path(self, table: str) -> Path:
        return _commit.staged_path(self.root, table)

    def has_table(self, table: str) -> bool:
        return layout.exists(self.root, table)

    def write_table(self, table: str, data: pa.Table, *, staged: bool = False) -> Path:
        """Write a whole (small) table at once, sorted by its sort key: into place, or staged for :meth:`commit`."""
        spec = TABLES[table]
        data = data.sort_by([(k, "ascending") for k in spec.sort_key]) if spec.sort_key else data
        if spec.partition_by:
            data = data.select(spec.column_names).cast(spec.schema)
            return self._write_stream(spec, pa.RecordBatchReader.from_batches(spec.schema, data.to_batches()), staged)
        path = self.staged_path(table) if staged else self.table_path(table)
        write_parquet(spec, data, path, self.identity)
        self._trust(path)
        return path

    def merge_parts(self, table: str, *, select_sql: str | None = None, sources: dict[str, Path] | None = None,
                    staged: bool = False, threads: int | None = None) -> Path:
        """Merge every part of ``table`` into ``<table>.parquet`` (or its staged copy), sorted by its sort key.

        ``select_sql`` (optional) derives the table from other data: it may name ``parts_<name>`` for each entry
        of ``sources`` (a name -> a parts folder, or one Parquet file). The result is streamed from DuckDB as
        Arrow batches into a checksummed file (DuckDB's own COPY writes no page checksums).

        Without ``select_sql``, parts that already follow each other in the table's order (each part sorted, parts
        of consecutive pair ranges: the summary pass's chunks) are concatenated instead, one row group at a time:
        DuckDB's sort would hold the whole table in memory up to its memory limit (+180 MB for 480,000
        head_attention rows, measured), the concatenation holds one row group (:func:`_concatenated`).

        ``threads`` (DuckDB's, default all): 1 makes sums of floating-point values add in the sources' order, so the
        file is the same bytes on every run.
        """
        import duckdb

        spec = TABLES[table]
        if select_sql is None and not sources:
            ordered = _concatenated(spec, self.root / PARTS / table)
            if ordered is not None:
                return self._write_stream(spec, ordered, staged)
        con = duckdb.connect()
        try:
            spill = self.root / PARTS / ".duckdb-tmp"
            con.execute(f"SET temp_directory = {literal(spill)}")
            con.execute("SET preserve_insertion_order = true")
            if threads:
                con.execute(f"SET threads = {int(threads)}")
            if select_sql is None:  # (a partitioned table's parts lie in its partition folders: ** reaches them)
                select_sql = (f"SELECT * FROM read_parquet({literal(f'{self.root / PARTS / table}/**/*.parquet')}, "
                              "hive_partitioning = false)")
            for name, source in (sources or {}).items():
                glob = f"{source}/*.parquet" if Path(source).is_dir() else str(source)
                con.execute(f"CREATE VIEW parts_{name} AS SELECT * FROM read_parquet({literal(glob)})")
            casts = ", ".join(f"CAST({_q(c.name)} AS {duck_type(c.type)}) AS {_q(c.name)}" for c in spec.columns)
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
        """Stream ``reader`` (in the table's sort order) into the table's file (or its staged copy) through a temporary
        file, checksummed; a partitioned table into a temporary folder of one file per partition, renamed into place
        whole."""
        target = self.staged_path(spec.name) if staged else layout.path(self.root, spec.name)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _atomic_path(target)
        if spec.partition_by is None:
            self._write_file(spec, reader, tmp)
            os.replace(tmp, target)
            self._trust(target)
            return target
        layout.remove(tmp)
        for value, batches in _partitions(reader, spec.partition_by):
            file = layout.partition_path(tmp, spec.partition_by, value)
            file.parent.mkdir(parents=True)
            self._write_file(spec, pa.RecordBatchReader.from_batches(reader.schema, batches), file)
        if not tmp.exists():
            raise StoreError(f"no rows to write for table {spec.name}")
        _replace_folder(tmp, target)
        if not staged:
            layout.remove_superseded(self.root, spec.name)
        for file in layout.files_in(target, spec.name):
            self._trust(file)
        return target

    def _write_file(self, spec: Table, reader: pa.RecordBatchReader, path: Path) -> None:
        integrity.write_batches(reader, spec.schema, path, table=spec.name, identity=self.identity,
                                row_group_size=spec.row_group_rows, group_by=spec.row_groups_by)

    def commit(self, label: str, tables: list[str], drop_parts: list[str] = ()) -> None:
        """Install the staged ``tables`` and drop the parts of ``drop_parts`` as one atomic step."""
        _commit.commit(self.root, label, tables, drop_parts, self.drop_parts)
        for table in tables:
            for file in self.table_files(table):
                self._trust(file)

    def drop_parts(self, table: str) -> None:
        """Remove a merged table's parts; the parts folder goes too once nothing is left in it."""
        parts = self.root / PARTS
        shutil.rmtree(parts / table, ignore_errors=True)
        shutil.rmtree(parts / ".duckdb-tmp", ignore_errors=True)
        if parts.exists() and not any(parts.iterdir()):
            parts.rmdir()

    def remove_stale_temporaries(self) -> None:
        """Temporary files and partition folders a killed run left behind (never read: only finished files and
        folders are renamed into place)."""
        for tmp in sorted(self.root.rglob(".*.tmp-*"), key=lambda p: len(p.parts)):
            if tmp.exists() or tmp.is_symlink():  # (inside a temporary folder removed before it: gone)
                layout.remove(tmp)

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


def _partitions(reader: pa.RecordBatchReader, column: str) -> Iterator[tuple[int, Iterator[pa.RecordBatch]]]:
    """(value, its batches) for each run of equal ``column`` values of a stream sorted by it, lazily: one batch in
    memory at a time."""
    def pieces() -> Iterator[tuple[int, pa.RecordBatch]]:
        for batch in reader:
            if batch.num_rows == 0:
                continue
            if batch.column(column).null_count:
                raise StoreError(f"column {column} holds NULLs; a table cannot be partitioned by it")
            values = batch.column(column).to_numpy()
            bounds = np.flatnonzero(np.r_[True, values[1:] != values[:-1], True])
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                yield int(values[lo]), batch.slice(lo, hi - lo)

    seen: set[int] = set()
    for value, group in itertools.groupby(pieces(), key=lambda piece: piece[0]):
        if value in seen:
            raise StoreError(f"the rows of {column}={value} are not contiguous: the stream is not sorted by {column}")
        seen.add(value)
        yield value, (batch for _, batch in group)


def _concatenated(spec: Table, folder: Path) -> pa.RecordBatchReader | None:
    """The rows of the parts in ``folder`` in the table's order, when the parts follow each other: in name order (the
    chunks' keys), a strictly ascending first sort column (pairs: the chunks' pair ids), or, for a partitioned table,
    per partition, ascending and disjoint ranges of the sort key's last column (pair_id) over parts each sorted by the
    sort key (:meth:`RunWriter.write_part`). None otherwise: the caller sorts. Checked first (on the footers, and on
    that one column), so nothing is written when the parts do not follow each other.

    A partitioned table's partition is handed out group by group (head by head), each group as its row groups of
    each part in turn (a part holds one row group per head, :meth:`RunWriter.write_part`), so one part's row group is
    in memory at a time whatever the size of the run: reading a layer's parts whole held +84 MB at 15,000 pairs
    against +25 MB at 1,500 (bench/memory.py). Only the row groups' head ranges are kept from the footers (60 parts'
    decoded footers held 28 MB); a read opens its part again: ~2 ms, so ~4 s for 15,000 pairs x 32 heads in 256-pair
    parts and ~35 min for MS MARCO top-100 on a 24 x 16 model (10^6 row groups), beside a summary pass of hours. A
    row group holding several groups (parts of older versions) is read for each of them and filtered.
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if spec.partition_by is None:
        parts = sorted(folder.glob("*.parquet"))
        if not parts or not spec.sort_key or not _strictly_ascending(parts, spec.sort_key[0]):
            return None

        def batches() -> Iterator[pa.RecordBatch]:
            for part in parts:
                yield from pq.ParquetFile(part).iter_batches(batch_size=BATCH_ROWS)
        return pa.RecordBatchReader.from_batches(spec.schema, batches())

    groups = [c for c in spec.row_groups_by if c != spec.partition_by]
    folders = layout.partition_folders(folder, spec.partition_by)
    if len(groups) != 1 or not folders or any(folder.glob("*.parquet")):
        return None
    group = groups[0]
    plans = []  # per partition: (part, (min, max) of the group column in each of its row groups)
    for partition in folders:
        parts = sorted(partition.glob("*.parquet"))
        pair_ranges, extents = [], []
        for part in parts:  # footers are read here and dropped: a part's footer takes ~0.5 MB once decoded
            md = pq.read_metadata(part)
            pair_ranges.append(_range(md, spec.sort_key[-1], None))
            extents.append([_range(md, group, i) for i in range(md.num_row_groups)])
        if not _ranges_ascending(pair_ranges) or any(e is None for part in extents for e in part):
            return None
        plans.append(list(zip(parts, extents)))

    def batches() -> Iterator[pa.RecordBatch]:
        for plan in plans:
            values = sorted({v for _, extents in plan for lo, hi in extents for v in range(lo, hi + 1)})
            for value in values:
                for part, extents in plan:
                    indices = [i for i, (lo, hi) in enumerate(extents) if lo <= value <= hi]
                    if not indices:
                        continue
                    with pq.ParquetFile(part) as f:
                        rows = f.read_row_groups(indices)
                    if any(extents[i] != (value, value) for i in indices):
                        rows = rows.filter(pc.equal(rows.column(group), value))
                    yield from rows.to_batches()
    return pa.RecordBatchReader.from_batches(spec.schema, batches())


def _range(md, column: str, group: int | None) -> tuple | None:
    """(min, max) of ``column`` in one row group, or over the file (``group`` None); None without statistics."""
    names = [md.schema.column(j).name for j in range(md.num_columns)]
    j = names.index(column)
    extents = []
    for i in range(md.num_row_groups) if group is None else [group]:
        stats = md.row_group(i).column(j).statistics
        if stats is None or not stats.has_min_max:
            return None
        extents.append((stats.min, stats.max))
    return (min(e[0] for e in extents), max(e[1] for e in extents)) if extents else None


def _strictly_ascending(parts: list[Path], column: str) -> bool:
    """Whether ``column``, read part after part, is strictly ascending (so the parts are sorted and follow each other,
    whatever wrote them)."""
    import pyarrow.parquet as pq

    last = None
    for part in parts:
        values = pq.read_table(part, columns=[column]).column(0)
        if values.null_count:
            return False
        values = values.to_numpy()
        if len(values) and ((last is not None and not last < values[0]) or not (values[1:] > values[:-1]).all()):
            return False
        last = values[-1] if len(values) else last
    return True


def _ranges_ascending(extents: list[tuple | None]) -> bool:
    """Whether the ranges, in order, are ascending and disjoint (each ends before the next begins)."""
    if any(e is None for e in extents):
        return False
    return all(a[1] < b[0] for a, b in zip(extents, extents[1:]))


def _replace_folder(new: Path, target: Path) -> None:
    """Put the folder ``new`` at ``target``, replacing what is there (a rename of folders cannot replace a non-empty
    one: the old folder is moved aside first and deleted after)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}.tmp-{os.getpid()}")
    if target.exists():
        layout.remove(old)
        os.replace(target, old)
    os.replace(new, target)
    layout.remove(old)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
