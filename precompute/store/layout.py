"""Where a table's data lives in a run folder: one Parquet file, or a folder of one file per partition.

A table of the schema is the file ``<run>/<table>.parquet``, except a table with ``partition_by``
(``head_attention``, by layer), which the job writes Hive style as one file per value of that column::

    head_attention/layer=0/data.parquet  head_attention/layer=1/data.parquet  ...

Every partition file is a whole file of the table (all its columns, the partition column included, with its own
checksums, row count and run identity), so it is verified like any other; the folder's ``layer=L`` must agree with the
column (:func:`precompute.store.integrity.check_footer`). DuckDB reads the folder with ``hive_partitioning``: a query on
some layers opens only their files. Stores written before the partitioned layout hold the table as one file; every
reader finds a table through this module, which tells the two layouts apart by what is on disk, so both open.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from precompute.store.schema import TABLES, duck_type
from precompute.store.sql import literal

PARTITION_FILE = "data.parquet"


def partition_column(table: str) -> str | None:
    spec = TABLES.get(table)
    return spec.partition_by if spec is not None else None


def path(folder: Path, table: str) -> Path:
    """Where the job writes ``table`` in ``folder`` (a run folder or its ``_staged``): its file, or its partition
    folder."""
    return Path(folder) / (table if partition_column(table) else f"{table}.parquet")


def partition_path(table_folder: Path, column: str, value: int) -> Path:
    return Path(table_folder) / f"{column}={int(value)}" / PARTITION_FILE


def location(root: Path, table: str) -> Path | None:
    """The table's partition folder (with at least one partition file) or its single file in ``root``; None when
    absent. A table the job partitions may be one file in a store written before the partitioned layout."""
    root = Path(root)
    if partition_column(table) and _partition_files(root / table, partition_column(table)):
        return root / table
    single = root / f"{table}.parquet"
    return single if single.is_file() else None


def exists(root: Path, table: str) -> bool:
    return location(root, table) is not None


def files(root: Path, table: str) -> list[Path]:
    """The table's data files in ``root``, in partition order; [] when absent."""
    found = location(root, table)
    return [] if found is None else files_in(found, table)


def files_in(found: Path, table: str) -> list[Path]:
    """The data files of the table at ``found`` (a file, or a partition folder: its files by partition value)."""
    found = Path(found)
    column = partition_column(table)
    return _partition_files(found, column) if column and found.is_dir() else [found]


def _partition_files(folder: Path, column: str) -> list[Path]:
    """``<folder>/<column>=<value>/data.parquet`` files, by value (a value that is not an integer sorts last: the
    verification names it)."""
    return [f / PARTITION_FILE for f in partition_folders(folder, column) if (f / PARTITION_FILE).is_file()]


def partition_folders(folder: Path, column: str) -> list[Path]:
    """The ``<column>=<value>`` folders in ``folder``, by value (the job's parts of a partitioned table lie in such
    folders too)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [p for p in folder.glob(f"{column}=*") if p.is_dir()]
    return sorted(found, key=lambda p: _sort_value(p.name.partition("=")[2]))


def _sort_value(text: str) -> tuple[int, int | str]:
    return (0, int(text)) if re.fullmatch(r"-?[0-9]+", text) else (1, text)


def partition_of(file: Path, table: str) -> tuple[str, str] | None:
    """(column, value as written in the folder name) of a file of ``table`` in a partition folder (a finished
    partition, or a part of one); None for a single file."""
    file = Path(file)
    column = partition_column(table)
    if column is None or not file.parent.name.startswith(f"{column}="):
        return None
    return column, file.parent.name.partition("=")[2]


def run_folder(file: Path, table: str) -> Path:
    """The run folder a finished data file of ``table`` lies in (a partition file lies two folders deeper)."""
    file = Path(file)
    return file.parents[2] if partition_of(file, table) else file.parent


def scan_sql(found: Path, table: str) -> str:
    """DuckDB's ``read_parquet(...)`` of the table at ``found`` (a file or a partition folder), with the schema's
    column types (the partition column's from the folder names, cast to its type). A folder's files are listed, not
    globbed: a run folder's name may hold glob characters (``[``), and a file the job did not write is not read."""
    found = Path(found)
    column = partition_column(table)
    if column and found.is_dir():
        kind = duck_type(next(c.type for c in TABLES[table].columns if c.name == column))
        listed = ", ".join(literal(f) for f in files_in(found, table))
        return f"read_parquet([{listed}], hive_partitioning = true, hive_types = {{'{column}': {kind}}})"
    return f"read_parquet({literal(found)})"


def remove(target: Path) -> None:
    """Delete a table's file or partition folder (absent: nothing to do)."""
    target = Path(target)
    if target.is_dir():
        shutil.rmtree(target)
    else:
        target.unlink(missing_ok=True)


def remove_superseded(root: Path, table: str) -> None:
    """Once the partition folder of ``table`` is installed, the single file of the older layout is deleted (it would
    otherwise hold rows that no longer belong to the run)."""
    if partition_column(table):
        (Path(root) / f"{table}.parquet").unlink(missing_ok=True)
