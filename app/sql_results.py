"""A SQL result as the page shows it, and what it costs once converted (no Streamlit, no DuckDB).

Arrow bytes say little about a result's cost in pandas: a ``list<null>`` of 20,000 NULLs is ~4 Arrow
bytes and 20,000 Python object slots once converted. So results are bounded by ``cells`` (values, every
element of a list, map or struct counted) before conversion, and by ``frame_bytes`` (the converted
frame's size, what pandas' own deep count leaves out included) after it. ``displayable`` is the one
conversion with fallbacks (inside the worker); ``to_frame`` repeats it on the server without them.
"""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pyarrow as pa

from matching_atlas.errors import error_text


class ResultError(ValueError):
    """A column that cannot be shown (the message names it and says what to do)."""


def cells(data) -> int:
    """The values in ``data`` (an Arrow array, chunked array, record batch or table) with every element of a
    nested value counted: what a conversion to pandas turns into array slots and Python objects."""
    if isinstance(data, (pa.RecordBatch, pa.Table)):
        return sum(cells(column) for column in data.columns)
    if isinstance(data, pa.ChunkedArray):
        return sum(cells(chunk) for chunk in data.chunks)
    kind, n = data.type, len(data)
    if pa.types.is_map(kind):  # (no flatten kernel for maps: the entries of this slice, by its offsets)
        start, end = data.offsets[0].as_py(), data.offsets[-1].as_py()
        return n + cells(data.keys.slice(start, end - start)) + cells(data.items.slice(start, end - start))
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)
            or pa.types.is_list_view(kind) or pa.types.is_large_list_view(kind)):
        return n + cells(data.flatten())
    if pa.types.is_struct(kind):
        return n + sum(cells(field) for field in data.flatten())
    if pa.types.is_union(kind):  # every child counted whole: more than the rows use, never less
        return n + sum(cells(data.field(i)) for i in range(kind.num_fields))
    if pa.types.is_dictionary(kind):
        return n + len(data.dictionary)
    return n


def unique_names(names: list[str]) -> list[str]:
    """Column names made unique with ``_1``, ``_2``... suffixes that collide with no other name."""
    taken: set[str] = set()
    original = set(names)
    out = []
    for name in names:
        candidate, k = name, 0
        while candidate in taken or (k and candidate in original):
            k += 1
            candidate = f"{name}_{k}"
        taken.add(candidate)
        out.append(candidate)
    return out


def displayable(table: pa.Table) -> tuple[pa.Table, pd.DataFrame]:
    """The table as the page shows it (unique names; a column pandas cannot hold, such as a union or a date out
    of range, as text) and its frame; ResultError naming a column that cannot be shown either way."""
    table = table.rename_columns(unique_names([str(n) for n in table.column_names]))
    shown, columns = [], {}
    for name, column in zip(table.column_names, table.columns):
        try:
            columns[name] = column.to_pandas()
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            try:
                column = column.cast(pa.string())
                columns[name] = column.to_pandas()
            except (pa.ArrowException, ValueError, TypeError, OverflowError) as err:
                raise ResultError(f"column {name!r} ({column.type}) cannot be shown: cast it in the query, "
                               f"e.g. {name}::VARCHAR ({error_text(err)})") from err
        shown.append(column)
    return pa.table(shown, names=table.column_names), pd.DataFrame(columns, index=pd.RangeIndex(table.num_rows))


def to_frame(table: pa.Table) -> pd.DataFrame:
    """The frame of a table ``displayable`` already made (the server's side: the same conversion, no fallbacks)."""
    columns = {name: column.to_pandas() for name, column in zip(table.column_names, table.columns)}
    return pd.DataFrame(columns, index=pd.RangeIndex(table.num_rows))


def frame_bytes(frame: pd.DataFrame) -> int:
    """The frame's size in memory: pandas' deep count, plus what it leaves out of object columns (the numpy
    arrays a list column holds per row, and what dicts, lists and tuples hold)."""
    total = int(frame.memory_usage(deep=True, index=False).sum())
    for name, dtype in frame.dtypes.items():
        if dtype == object:
            total += sum(_held(v) for v in frame[name].array)
    return total


def _held(value) -> int:
    """Bytes ``value`` holds beyond what ``sys.getsizeof`` (pandas' deep count) reports for it."""
    if isinstance(value, np.ndarray):
        data = value.nbytes if value.base is not None else 0  # an owning array's getsizeof counts its data
        return data + (sum(_size(v) for v in value.flat) if value.dtype == object else 0)
    if isinstance(value, dict):
        return sum(_size(v) for v in value.values())  # keys are the struct's field names, shared
    if isinstance(value, (list, tuple)):
        return sum(_size(v) for v in value)
    return 0


def _size(value) -> int:
    if value is None or isinstance(value, bool):
        return 0  # singletons
    return sys.getsizeof(value) + _held(value)
