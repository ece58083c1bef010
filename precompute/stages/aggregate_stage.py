"""head_attention_agg from a finished (or staged) head_attention: counts, sums and sums of squares per
(layer, head, query, negative type, grade), computed so that identical runs give identical bits.

Why not DuckDB's GROUP BY: its parallel sums add in whatever order its threads finish, so two identical runs
differed in the last bits (up to 5e-20). ``sum(x ORDER BY pair_id)`` fixes the order but, measured on a
2-million-row head_attention (bench/integrity.py), took 6.3 s and 2.5 GB of memory against 2.2 s and 0.3 GB
for the plain sums; this module takes 1.3 s and 0.25 GB.
Here the files (one per layer) are read one row group at a time: head_attention is sorted by (layer, head, pair_id),
each group's rows of a row group are summed in that order (a stable sort keeps it), and the row groups' partial sums
are added in file order. Every step depends only on the files' bytes (the same row groups whether the table is one
file or one per layer: no row group holds two heads), and the rebuild of a damaged aggregate reads the same files as
the merge that wrote them. The rows of one head are handed out as soon as its last row group is read
(:func:`aggregate_pieces`), so memory holds one row group and one head's sums (queries x negative types x grades),
not the whole aggregate: built as one table (a dict of per-group arrays, then stacked) it took the job's peak
from 600 to 975 MB on bench/memory.py's 10,000-pair run (160,000 aggregate rows), against 726 MB this way, and
would take gigabytes for MS MARCO's 7,000 queries on 384 heads.

A metric is NULL where it is undefined; as in SQL, a sum skips NULLs and is NULL when the group has none.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from precompute.metrics import METRICS

_PAIR_KEYS = ("qid", "neg_type", "grade")


def aggregate_pieces(heads: Sequence[Path], pairs: Path) -> Iterator[pa.Table]:
    """The head_attention_agg rows of the head_attention files ``heads`` (in partition order) and the pairs file
    ``pairs``, one (layer, head) at a time in file order, each sorted by the table's sort key (so the pieces follow
    each other in the table's order: RunWriter.write_pieces)."""
    code, labels = _pair_codes(pq.read_table(pairs, columns=["pair_id", *_PAIR_KEYS]))
    n_codes = len(labels)
    cell, acc = None, None  # the (layer, head) being summed and its sums
    for path in heads:
        file = pq.ParquetFile(path, pre_buffer=False)
        for group in range(file.num_row_groups):
            batch = file.read_row_group(group, columns=["layer", "head", "pair_id", *METRICS])
            cells = (batch.column("layer").to_numpy().astype(np.int64) << 8) | batch.column("head").to_numpy().astype(np.int64)
            bounds = np.flatnonzero(np.r_[True, cells[1:] != cells[:-1], True])  # runs of one head (one in the job's files)
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                if int(cells[lo]) != cell:
                    if acc is not None:
                        yield _table(cell, *acc, labels)
                    cell, acc = int(cells[lo]), _empty_sums(n_codes)
                _add(acc, batch.slice(lo, hi - lo), code)
    if acc is not None:
        yield _table(cell, *acc, labels)


def _empty_sums(n_codes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sums and sums of squares [codes, 2, metrics], non-NULL values seen [codes, metrics], rows [codes])."""
    return np.zeros((n_codes, 2, len(METRICS))), np.zeros((n_codes, len(METRICS)), np.int64), np.zeros(n_codes, np.int64)


def _add(acc, rows: pa.RecordBatch, code: np.ndarray) -> None:
    """Add one head's rows of one row group to its sums: summed per group in file order, then added."""
    sums, present, counts = acc
    pair_ids = rows.column("pair_id").to_numpy()
    keys = code[pair_ids] if not len(pair_ids) or pair_ids.max() < len(code) else np.array([-1])
    if (keys < 0).any():
        raise ValueError("head_attention holds pair ids the pairs table lacks: the store is incomplete")
    order = np.argsort(keys, kind="stable")  # stable: pair order within a group, as in the file
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    groups = sorted_keys[starts]
    for j, m in enumerate(METRICS):  # one column at a time: memory stays at a few columns of one row group
        values = _float64(rows.column(m))[order]
        seen = ~np.isnan(values)
        values[~seen] = 0.0
        sums[groups, 0, j] += np.add.reduceat(values, starts)
        sums[groups, 1, j] += np.add.reduceat(values * values, starts)
        present[groups, j] += np.add.reduceat(seen.astype(np.int64), starts)
    counts[groups] += np.diff(np.r_[starts, len(sorted_keys)])


def _pair_codes(pairs: pa.Table) -> tuple[np.ndarray, list[tuple]]:
    """pair_id -> code of its (qid, neg_type, grade), and the (qid, neg_type, grade) of every code."""
    cols = pairs.to_pydict()
    labels: dict[tuple, int] = {}
    code = np.full(max(cols["pair_id"], default=-1) + 1, -1, np.int64)
    for pid, *label in zip(cols["pair_id"], *(cols[k] for k in _PAIR_KEYS)):
        code[pid] = labels.setdefault(tuple(label), len(labels))
    return code, list(labels)


def _float64(column: pa.Array) -> np.ndarray:
    return column.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def _table(cell: int, sums: np.ndarray, present: np.ndarray, counts: np.ndarray, labels: list[tuple]) -> pa.Table:
    """One head's head_attention_agg rows (the groups it has rows of), sorted by (qid, neg_type, grade)."""
    codes = np.flatnonzero(counts)
    out = {
        "layer": pa.array(np.full(len(codes), cell >> 8), pa.int8()),
        "head": pa.array(np.full(len(codes), cell & 0xFF), pa.int8()),
        **{k: [labels[c][i] for c in codes.tolist()] for i, k in enumerate(_PAIR_KEYS)},
        "n": pa.array(counts[codes], pa.int32()),
    }
    for j, m in enumerate(METRICS):
        out[f"{m}_sum"] = pa.array(sums[codes, 0, j], pa.float64(), mask=present[codes, j] == 0)
    for j, m in enumerate(METRICS):
        out[f"{m}_sumsq"] = pa.array(sums[codes, 1, j], pa.float64(), mask=present[codes, j] == 0)
    return pa.table(out).sort_by([(k, "ascending") for k in _PAIR_KEYS])
