"""Write Parquet files that can be checked, and check them before anything merges or trusts them.

Why: DuckDB reads a Parquet page whose bytes were flipped without complaint (200 flipped bytes in a part
became values of 3.9e36 in the merged store, exit code 0), and a file cut short by a full disk or a power
cut may still have a readable start. So every file the job writes carries

* a CRC-32 of every page (``write_page_checksum``), verified by pyarrow while it decodes the page;
* in its key-value metadata, the table it holds (``atlas.table``), its row count (``atlas.rows``) and the
  identity of the run that wrote it (``atlas.identity``, JSON): deleting manifest.json cannot erase which run
  a folder holds.

:func:`verify` reads a file whole, one row group at a time per thread (memory stays flat): the footer must
parse, the columns must be the table's, every page's CRC must match, the rows must add up to the footer's count
and to the recorded one, no column chunk's statistics may exclude a value of its data (DuckDB skips row groups
by their min/max, so a flipped statistic would silently drop rows from a query), and every value must lie in
the bounds the schema declares for its column (a mass in [0, 1]). Given the run's identity, the file must
record it (a table copied from another run is refused), and a partition file of a partitioned table
(``head_attention/layer=3/data.parquet``) must hold only its folder's value. :func:`check_footer` is the part of these
checks that reads the footer only. Files written by older versions carry no checksums, count or identity; the checks that
apply to them still run.

Cost, measured on a 2-million-row head_attention (``python bench/integrity.py``, 2 CPU cores): merging parts
through pyarrow with checksums takes what DuckDB's COPY took (1.7 s vs 1.6 s, same size), and verifying reads
the file once (1.3 s, about 3x a plain read; 1.0 s for its 21 parts). A rerun verifies each table once.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from precompute.console import first_line
from precompute.store import layout
from precompute.store.schema import TABLES

ROWS, TABLE, IDENTITY = "atlas.rows", "atlas.table", "atlas.identity"
FLOAT_SLACK = 1e-3  # rounding a float column may show beyond its schema bounds (float32 sums of softmax weights)


class CorruptFile(Exception):
    """A Parquet file that is not what was written (message: one line naming the file and what is wrong)."""


def metadata(table: str, rows: int, identity: dict | None) -> dict[str, str]:
    """The key-value metadata every file of the store carries."""
    out = {TABLE: table, ROWS: str(rows)}
    if identity is not None:
        out[IDENTITY] = json.dumps(identity, sort_keys=True)
    return out


# Data pages of the tables looked up by one value of their last sort-key column inside row groups of one group
# (head_attention: one pair on every head, the Pair explorer's grid), as bytes (pyarrow's default is 1 MB): with the
# page index (``write_page_index``) such a lookup decodes the one page per row group that can hold the pair, not the
# whole row group. On 64 row groups of 65,536 rows: 0.19 s with 1 MB pages and a dictionary-coded pair_id, 0.021 s
# with 8 KB pages, the page index and a delta-coded pair_id (DuckDB 2.0, 2 threads, load 12); a scan of one head
# took the same (0.023 / 0.028 s); 32 KB pages: 0.040 s. Other tables keep 1 MB pages (a full scan of a large table
# decodes fewer pages).
LOOKUP_PAGE_BYTES = 8192


def options(schema: pa.Schema, table: str | None = None) -> dict:
    """ParquetWriter options: page checksums, zstd, dictionaries only where they pay (keys and strings; a dictionary
    over random floats doubles the write time and grows the file by half). A table whose row groups hold one group
    each (``row_groups_by``: head_attention) also gets small pages with a page index, and its last sort-key column
    (pair_id: one value per row within its row group, where a dictionary is as large as the data) is delta-coded
    instead: a sorted run of ids takes a few bytes per page."""
    spec = TABLES.get(table) if table is not None else None
    lookup = spec is not None and bool(spec.row_groups_by)
    delta = [f.name for f in schema if lookup and f.name == spec.sort_key[-1] and pa.types.is_integer(f.type)]
    out = {
        "compression": "zstd",
        "write_page_checksum": True,
        "use_dictionary": [f.name for f in schema if not pa.types.is_floating(f.type) and f.name not in delta],
    }
    if lookup:
        out.update(write_page_index=True, data_page_size=LOOKUP_PAGE_BYTES,
                   column_encoding=dict.fromkeys(delta, "DELTA_BINARY_PACKED"))
    return out


def write(data: pa.Table, path: Path, *, table: str, identity: dict | None, row_group_size: int) -> None:
    """Write ``data`` to ``path`` (not atomically: callers write to a temporary name and rename)."""
    with pq.ParquetWriter(path, data.schema, **options(data.schema, table)) as w:
        w.write_table(data, row_group_size=row_group_size)
        w.add_key_value_metadata(metadata(table, data.num_rows, identity))


def write_batches(reader: pa.RecordBatchReader, schema: pa.Schema, path: Path, *, table: str,
                  identity: dict | None, row_group_size: int, group_by: tuple[str, ...] = ()) -> int:
    """Stream record batches of any size into row groups of ``row_group_size`` rows, so memory stays at one row group
    and the file does not depend on how the batches were cut. With ``group_by`` (columns the stream is sorted by) a
    row group also ends wherever their values change: no row group holds two groups, so a query on one group (one
    head of head_attention) reads only its own row groups. Each batch is looked at once (its rows against the current
    group's values), so many small batches cost what a few large ones do."""
    rows = 0
    pending: list[pa.RecordBatch] = []
    held = 0
    with pq.ParquetWriter(path, schema, **options(schema, table)) as w:
        def emit() -> None:
            """Write the pending rows as one row group."""
            nonlocal pending, held, rows
            if held:
                w.write_table(pa.Table.from_batches(pending, schema=schema), row_group_size=held)
                rows += held
            pending, held = [], 0

        for batch in reader:
            batch = batch.cast(schema) if batch.schema != schema else batch
            while batch.num_rows:
                key = _key(pending[0] if pending else batch, group_by)
                change = _first_change(batch, group_by, key)
                part = batch.slice(0, batch.num_rows if change is None else change)
                while held + part.num_rows >= row_group_size:  # a full row group
                    pending.append(part.slice(0, row_group_size - held))
                    part = part.slice(row_group_size - held)
                    held = row_group_size
                    emit()
                if part.num_rows:
                    pending.append(part)
                    held += part.num_rows
                if change is None:
                    break
                emit()  # the group ends here
                batch = batch.slice(change)
        emit()
        w.add_key_value_metadata(metadata(table, rows, identity))
    return rows


def _key(batch: pa.RecordBatch, keys: tuple[str, ...]) -> tuple:
    return tuple(batch.column(k)[0] for k in keys)


def _first_change(batch: pa.RecordBatch, keys: tuple[str, ...], values: tuple) -> int | None:
    """Index of the first row of ``batch`` whose ``keys`` differ from ``values``; None when all rows have them (or
    no keys)."""
    changed = None
    for key, value in zip(keys, values):
        diff = pc.not_equal(batch.column(key), value)
        changed = diff if changed is None else pc.or_(changed, diff)
    if changed is None:
        return None
    index = pc.index(changed, True).as_py()
    return index if index >= 0 else None


def _key_values(md: pq.FileMetaData) -> dict[str, str]:
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in (md.metadata or {}).items()}


def stored_identity(path: Path) -> dict | None:
    """The identity recorded in a file's footer; None for files written before identities were recorded."""
    try:
        md = pq.read_metadata(path)
    except (OSError, pa.ArrowException) as err:
        raise CorruptFile(f"{path} is not a readable Parquet file ({first_line(err)})") from err
    return _identity(path, _key_values(md))


def _identity(path: Path, kv: dict[str, str]) -> dict | None:
    if IDENTITY not in kv:
        return None
    try:
        value = json.loads(kv[IDENTITY])
    except ValueError as err:
        raise CorruptFile(f"{path} has a damaged run identity in its metadata ({err})") from err
    if not isinstance(value, dict):
        raise CorruptFile(f"{path} has a damaged run identity in its metadata (a JSON {type(value).__name__})")
    return value


def check_footer(path: Path, name: str, expected: pa.Schema | None, *, rows: int | None = None,
                 identity: dict | None = None) -> pq.FileMetaData:
    """Read ``path``'s footer only and check what it says (cheap: no data page is read); returns it, else CorruptFile.

    The footer must parse and name table ``name`` (``atlas.table``); its columns must be ``expected``'s (names and
    types; None skips this, for a table of an older schema version); its row count must be the one written
    (``atlas.rows``) and, given ``rows``, the one the manifest recorded; given ``identity``, the file must record that
    run identity (``atlas.identity``; keys missing on one side count as null), so a table copied from another run is
    refused even when its rows and columns fit.
    """
    try:
        md = pq.read_metadata(path)
        have = [(fld.name, fld.type) for fld in md.schema.to_arrow_schema()]
    except (OSError, pa.ArrowException, ValueError, TypeError) as err:
        raise CorruptFile(f"{path} is damaged ({first_line(err)})") from err
    kv = _key_values(md)
    if kv.get(TABLE, name) != name:
        raise CorruptFile(f"{path} holds table {kv[TABLE]!r}, not {name!r}")
    want = have if expected is None else [(fld.name, fld.type) for fld in expected]
    if have != want:
        raise CorruptFile(f"{path} {_column_difference(have, want)}")
    if ROWS in kv and kv[ROWS] != str(md.num_rows):
        raise CorruptFile(f"{path} has {md.num_rows} rows in its footer, {kv[ROWS]} were written")
    partition = layout.partition_of(path, name)
    if partition is not None:
        _check_partition(path, md, *partition)
    if rows is not None and md.num_rows != rows:
        raise CorruptFile(f"{path} has {md.num_rows:,} rows, the manifest recorded {rows:,}: the file was replaced "
                          "or cut short")
    if identity is not None:
        stored = _identity(path, kv)
        if stored is None:
            raise CorruptFile(f"{path} does not record which run wrote it, the run's other tables do: it was copied "
                              "from another run or rewritten by another tool")
        for key in sorted(set(stored) | set(identity)):
            if stored.get(key) != identity.get(key):
                raise CorruptFile(f"{path} was written by another run: its {key} is {_short(stored.get(key))}, "
                                  f"the manifest's is {_short(identity.get(key))}")
    return md


def _check_partition(path: Path, md: pq.FileMetaData, column: str, value: str) -> None:
    """Every row group's statistics of ``column`` say it holds only ``value``, the folder's (``layer=3``): a file moved
    into another partition's folder would be read as that partition (the reader takes the value from the folder).
    The statistics themselves are checked against the data by :func:`verify`."""
    names = [md.schema.column(j).name for j in range(md.num_columns)]
    if column not in names:
        raise CorruptFile(f"{path} lacks the column {column} its folder partitions by")
    j = names.index(column)
    for i in range(md.num_row_groups):
        stats = md.row_group(i).column(j).statistics
        held = (stats.min, stats.max) if stats is not None and stats.has_min_max else None
        if held is None or str(held[0]) != value or str(held[1]) != value:
            what = f"{column} {held[0]}..{held[1]}" if held else f"{column} values without statistics"
            raise CorruptFile(f"{path} holds rows of {what} in row group {i}, its folder says {column}={value}: it "
                              "was moved from another partition")


def verify(path: Path, name: str, expected: pa.Schema | None, *, rows: int | None = None,
           identity: dict | None = None, threads: int = 1, progress: Callable[[int], None] | None = None) -> int:
    """Read ``path`` whole and check it (see the module docstring); returns its row count, else CorruptFile.

    ``expected`` None skips the column check (a table of an older schema version, read as it is); ``rows`` and
    ``identity``: see :func:`check_footer`. Values must lie in the bounds ``precompute.store.schema`` declares for
    the table's columns. ``threads`` > 1 verifies row groups in parallel (pyarrow decodes without the GIL);
    ``progress(rows verified so far)`` is called in the calling thread, a few times a second at most.
    """
    path = Path(path)
    try:
        md = check_footer(path, name, expected, rows=rows, identity=identity)
        return _check_data(path, md, _bounds(name), max(1, int(threads)), progress)
    except CorruptFile:
        raise
    except (OSError, pa.ArrowException, ValueError, TypeError) as err:
        raise CorruptFile(f"{path} is damaged ({first_line(err)})") from err


def _bounds(name: str) -> dict[str, tuple[float | None, float | None]]:
    return TABLES[name].bounds if name in TABLES else {}


def _check_data(path: Path, md: pq.FileMetaData, bounds: dict, threads: int,
                progress: Callable[[int], None] | None) -> int:
    """Decode every row group (pyarrow checks each page's CRC) and check its rows, NULLs, statistics and bounds.

    Row groups are handed out one at a time to ``threads`` workers, each with its own ParquetFile (one row group
    per worker in memory). The first failure stops the others and is raised.
    """
    groups = iter(range(md.num_row_groups))
    lock, stop = threading.Lock(), threading.Event()
    done = [0]

    def work(report: Callable[[int], None] | None) -> int:
        f = pq.ParquetFile(path, page_checksum_verification=True)
        verified = 0
        while not stop.is_set():
            with lock:
                i = next(groups, None)
            if i is None:
                break
            group = f.read_row_group(i, use_threads=threads == 1)  # decodes every page of the group, CRCs checked
            meta = md.row_group(i)
            if group.num_rows != meta.num_rows:
                raise CorruptFile(f"{path}: row group {i} has {group.num_rows} rows, its footer says {meta.num_rows}")
            for j, column in enumerate(group.columns):
                col = group.column_names[j]
                _check_column(path, i, col, column, meta.column(j).statistics, bounds.get(col))
            verified += group.num_rows
            with lock:
                done[0] += group.num_rows
            if report is not None:
                report(done[0])
        return verified

    if threads == 1 or md.num_row_groups < 2:
        rows = work(_throttled(progress))
    else:
        with ThreadPoolExecutor(threads, thread_name_prefix="atlas-verify") as pool:
            futures = [pool.submit(work, None) for _ in range(min(threads, md.num_row_groups))]
            try:
                while True:
                    finished, pending = wait(futures, timeout=0.25, return_when=FIRST_EXCEPTION)
                    if progress is not None:
                        progress(done[0])
                    failed = next((f for f in finished if f.exception() is not None), None)
                    if failed is not None:
                        raise failed.exception()
                    if not pending:
                        break
            finally:
                stop.set()
            rows = sum(f.result() for f in futures)
    if rows != md.num_rows:
        raise CorruptFile(f"{path} has {rows} rows, its footer says {md.num_rows}")
    return rows


def _throttled(progress: Callable[[int], None] | None) -> Callable[[int], None] | None:
    """``progress``, called at most four times a second."""
    if progress is None:
        return None
    last = [0.0]

    def report(rows: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.25:
            last[0] = now
            progress(rows)
    return report


def _check_column(path: Path, group: int, name: str, column: pa.ChunkedArray, stats,
                  bounds: tuple[float | None, float | None] | None) -> None:
    """Statistics may be loose (older writers truncate strings) but must never exclude a value of the data; the
    values (NaN aside: an undefined statistic) must lie within the schema's ``bounds``."""
    if stats is not None and stats.has_null_count and stats.null_count != column.null_count:
        raise CorruptFile(f"{path}: column {name} of row group {group} has {column.null_count} NULLs, "
                          f"its statistics say {stats.null_count}")
    with_stats = stats is not None and stats.has_min_max
    if pa.types.is_nested(column.type) or not (with_stats or bounds):  # lists (component_means.mean): no min/max
        return
    extent = _min_max(column)
    if extent is None:
        return
    low, high = extent
    if with_stats:
        try:
            bad = stats.min > low or stats.max < high
        except TypeError:  # statistics of another type than the column: the footer is damaged
            bad = True
        if bad or any(isinstance(v, float) and math.isnan(v) for v in (stats.min, stats.max)):
            raise CorruptFile(f"{path}: column {name} of row group {group} holds values in [{low}, {high}], "
                              f"its statistics say [{stats.min}, {stats.max}]")
    if bounds:
        slack = FLOAT_SLACK if pa.types.is_floating(column.type) else 0
        lo, hi = bounds
        if (lo is not None and low < lo - slack) or (hi is not None and high > hi + slack):
            raise CorruptFile(f"{path}: column {name} of row group {group} holds values in [{low}, {high}], outside "
                              f"the range the store schema allows ({_interval(lo, hi)})")


def _min_max(column: pa.ChunkedArray) -> tuple | None:
    """(min, max) of the non-NULL, non-NaN values as Python scalars; None when there are none. Numbers go through
    numpy (about ten times faster than pyarrow's min_max kernel), other types through pyarrow."""
    kind = column.type
    if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        values = column.drop_null()
        if len(values) == 0:
            return None
        low, high = (v.as_py() for v in pc.min_max(values).values())
        return low, high
    low = high = None
    for chunk in column.chunks:
        values = chunk.drop_null().to_numpy(zero_copy_only=True) if chunk.null_count else \
            chunk.to_numpy(zero_copy_only=True)
        if len(values) == 0:
            continue
        lo, hi = values.min(), values.max()
        if pa.types.is_floating(kind) and (lo != lo or hi != hi):  # NaN present: ignore it, as statistics do
            values = values[values == values]
            if len(values) == 0:
                continue
            lo, hi = values.min(), values.max()
        lo, hi = lo.item(), hi.item()
        low = lo if low is None else min(low, lo)
        high = hi if high is None else max(high, hi)
    return None if low is None else (low, high)


def _interval(lo: float | None, hi: float | None) -> str:
    if lo is None:
        return f"at most {hi}"
    return f"at least {lo}" if hi is None else f"from {lo} to {hi}"


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def _column_difference(have: list[tuple[str, pa.DataType]], want: list[tuple[str, pa.DataType]]) -> str:
    """How the columns ``have`` differ from the table's ``want``, as the end of a sentence naming the file."""
    types, wanted = dict(have), dict(want)
    missing = [n for n in wanted if n not in types]
    if missing:
        return f"lacks the column(s) {_listed(missing)} of the store schema"
    extra = [n for n in types if n not in wanted]
    if extra:
        return f"has column(s) {_listed(extra)} that the store schema does not have"
    other = next((n for n in wanted if types[n] != wanted[n]), None)
    if other is not None:
        return f"holds column {other} as {types[other]}, the store schema's type is {wanted[other]}"
    return "has the store schema's columns in another order"


def _listed(names: list[str]) -> str:
    text = ", ".join(names)
    return text if len(text) < 200 else text[:200] + "..."


