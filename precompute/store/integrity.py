"""Write Parquet files that can be checked, and check them before anything merges or trusts them.

Why: DuckDB reads a Parquet page whose bytes were flipped without complaint (200 flipped bytes in a part
became values of 3.9e36 in the merged store, exit code 0), and a file cut short by a full disk or a power
cut may still have a readable start. So every file the job writes carries

* a CRC-32 of every page (``write_page_checksum``), verified by pyarrow while it decodes the page;
* in its key-value metadata, the table it holds (``atlas.table``), its row count (``atlas.rows``) and the
  identity of the run that wrote it (``atlas.identity``, JSON): deleting manifest.json cannot erase which run
  a folder holds.

:func:`verify` reads a file whole, one row group at a time (memory stays flat): the footer must parse, the
columns must be the table's, every page's CRC must match, the rows must add up to the footer's count and to
the recorded one, and no column chunk's statistics may exclude a value of its data (DuckDB skips row groups
by their min/max, so a flipped statistic would silently drop rows from a query). Files written by older
versions carry no checksums or count; the checks that apply to them still run.

Cost, measured on a 2-million-row head_attention (``python bench/integrity.py``, 2 CPU cores): merging parts
through pyarrow with checksums takes what DuckDB's COPY took (1.7 s vs 1.6 s, same size), and verifying reads
the file once (1.3 s, about 3x a plain read; 1.0 s for its 21 parts). A rerun verifies each table once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROWS, TABLE, IDENTITY = "atlas.rows", "atlas.table", "atlas.identity"


class CorruptFile(Exception):
    """A Parquet file that is not what was written (message: one line naming the file and what is wrong)."""


def metadata(table: str, rows: int, identity: dict | None) -> dict[str, str]:
    """The key-value metadata every file of the store carries."""
    out = {TABLE: table, ROWS: str(rows)}
    if identity is not None:
        out[IDENTITY] = json.dumps(identity, sort_keys=True)
    return out


def options(schema: pa.Schema) -> dict:
    """ParquetWriter options: page checksums, zstd, dictionaries only where they pay (keys and strings; a
    dictionary over random floats doubles the write time and grows the file by half)."""
    return {
        "compression": "zstd",
        "write_page_checksum": True,
        "use_dictionary": [f.name for f in schema if not pa.types.is_floating(f.type)],
    }


def write(data: pa.Table, path: Path, *, table: str, identity: dict | None, row_group_size: int) -> None:
    """Write ``data`` to ``path`` (not atomically: callers write to a temporary name and rename)."""
    with pq.ParquetWriter(path, data.schema, **options(data.schema)) as w:
        w.write_table(data, row_group_size=row_group_size)
        w.add_key_value_metadata(metadata(table, data.num_rows, identity))


def write_batches(reader: pa.RecordBatchReader, schema: pa.Schema, path: Path, *, table: str,
                  identity: dict | None, row_group_size: int, group_by: tuple[str, ...] = ()) -> int:
    """Stream record batches of any size into row groups of ``row_group_size`` rows, so memory stays at one row group
    and the file does not depend on how the batches were cut. With ``group_by`` (columns the stream is sorted by) a
    row group also ends wherever their values change: no row group holds two groups, so a query on one group (one
    head of head_attention) reads only its own row groups."""
    rows = 0
    pending: list[pa.RecordBatch] = []
    held = 0
    with pq.ParquetWriter(path, schema, **options(schema)) as w:
        def flush(final: bool) -> None:
            """Write every row group the pending rows complete (all of them when ``final``)."""
            nonlocal pending, held, rows
            while held:
                change = _first_change(pending, group_by)
                if change is not None:
                    cut = min(change, row_group_size)
                elif held >= row_group_size or final:
                    cut = min(held, row_group_size)
                else:
                    return  # the current group may go on in the next batch
                block = pa.Table.from_batches(pending, schema=schema)
                w.write_table(block.slice(0, cut), row_group_size=cut)
                rest = block.slice(cut)
                pending, held = rest.to_batches(), rest.num_rows
                rows += cut

        for batch in reader:
            pending.append(batch.cast(schema) if batch.schema != schema else batch)
            held += batch.num_rows
            flush(final=False)
        flush(final=True)
        w.add_key_value_metadata(metadata(table, rows, identity))
    return rows


def _first_change(batches: list[pa.RecordBatch], keys: tuple[str, ...]) -> int | None:
    """Index of the first row whose ``keys`` differ from the first row's, over the concatenated batches; None when all
    rows share them (or no keys)."""
    if not keys or not batches:
        return None
    table = pa.Table.from_batches(batches)
    changed = None
    for key in keys:
        column = table.column(key)
        diff = pc.not_equal(column, column[0])
        changed = diff if changed is None else pc.or_(changed, diff)
    index = pc.index(changed, True).as_py()
    return index if index >= 0 else None


def _key_values(md: pq.FileMetaData) -> dict[str, str]:
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in (md.metadata or {}).items()}


def stored_identity(path: Path) -> dict | None:
    """The identity recorded in a file's footer; None for files written before identities were recorded."""
    try:
        kv = _key_values(pq.read_metadata(path))
    except (OSError, pa.ArrowException) as err:
        raise CorruptFile(f"{path} is not a readable Parquet file ({_first_line(err)})") from err
    if IDENTITY not in kv:
        return None
    try:
        return json.loads(kv[IDENTITY])
    except ValueError as err:
        raise CorruptFile(f"{path} has a damaged run identity in its metadata ({err})") from err


def verify(path: Path, name: str, expected: pa.Schema | None) -> int:
    """Read ``path`` whole and check it (see the module docstring); returns its row count, else CorruptFile.
    ``expected`` None skips the column check (a table of an older schema version, read as it is)."""
    try:
        return _verify(Path(path), name, expected)
    except CorruptFile:
        raise
    except (OSError, pa.ArrowException, ValueError, TypeError) as err:
        raise CorruptFile(f"{path} is damaged ({_first_line(err)})") from err


def _verify(path: Path, name: str, expected: pa.Schema | None) -> int:
    f = pq.ParquetFile(path, page_checksum_verification=True)
    md = f.metadata
    kv = _key_values(md)
    if kv.get(TABLE, name) != name:
        raise CorruptFile(f"{path} holds table {kv[TABLE]!r}, not {name!r}")
    have = [(fld.name, fld.type) for fld in f.schema_arrow]
    want = have if expected is None else [(fld.name, fld.type) for fld in expected]
    if have != want:
        raise CorruptFile(f"{path} has columns {_names(have)}, expected {_names(want)}")
    if ROWS in kv and kv[ROWS] != str(md.num_rows):
        raise CorruptFile(f"{path} has {md.num_rows} rows in its footer, {kv[ROWS]} were written")
    rows = 0
    for i in range(md.num_row_groups):
        group = f.read_row_group(i)  # decodes every page of the group; pyarrow checks each page's CRC
        if group.num_rows != md.row_group(i).num_rows:
            raise CorruptFile(f"{path}: row group {i} has {group.num_rows} rows, its footer says {md.row_group(i).num_rows}")
        for j, column in enumerate(group.columns):
            _check_statistics(path, i, group.column_names[j], column, md.row_group(i).column(j).statistics)
        rows += group.num_rows
    if rows != md.num_rows:
        raise CorruptFile(f"{path} has {rows} rows, its footer says {md.num_rows}")
    return rows


def _check_statistics(path: Path, group: int, name: str, column: pa.ChunkedArray, stats) -> None:
    """Statistics may be loose (older writers truncate strings) but must never exclude a value of the data."""
    if stats is None:
        return
    if stats.has_null_count and stats.null_count != column.null_count:
        raise CorruptFile(f"{path}: column {name} of row group {group} has {column.null_count} NULLs, "
                          f"its statistics say {stats.null_count}")
    if not stats.has_min_max or pa.types.is_nested(column.type):  # lists (component_means.mean) have no min/max
        return
    values = column.drop_null()
    if pa.types.is_floating(values.type):
        values = values.filter(pc.invert(pc.is_nan(values)))
    if len(values) == 0:
        return
    low, high = (v.as_py() for v in pc.min_max(values).values())
    try:
        bad = stats.min > low or stats.max < high
    except TypeError:  # statistics of another type than the column: the footer is damaged
        bad = True
    if bad or any(isinstance(v, float) and math.isnan(v) for v in (stats.min, stats.max)):
        raise CorruptFile(f"{path}: column {name} of row group {group} holds values in [{low}, {high}], "
                          f"its statistics say [{stats.min}, {stats.max}]")


def _names(columns: list[tuple[str, pa.DataType]]) -> str:
    text = ", ".join(f"{n} {t}" for n, t in columns)
    return text if len(text) < 200 else text[:200] + "..."


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
