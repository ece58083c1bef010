"""head_attention_agg from a finished (or staged) head_attention: counts, sums and sums of squares per
(layer, head, query, negative type, grade), computed so that identical runs give identical bits.

Why not DuckDB's GROUP BY: its parallel sums add in whatever order its threads finish, so two identical runs
differed in the last bits (up to 5e-20). ``sum(x ORDER BY pair_id)`` fixes the order but, measured on a
2-million-row head_attention (bench/integrity.py), took 6.3 s and 2.5 GB of memory against 2.2 s and 0.3 GB
for the plain sums; this module takes 1.3 s and 0.25 GB.
Here the file is read one row group at a time (memory: one row group plus the sums): head_attention is
sorted by (layer, head, pair_id), each group's rows of a row group are summed in that order (a stable sort
keeps it), and the row groups' partial sums are added in file order. Every step depends only on the file's
bytes, and the rebuild of a damaged aggregate reads the same file as the merge that wrote it.

A metric is NULL where it is undefined; as in SQL, a sum skips NULLs and is NULL when the group has none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from precompute.metrics import METRICS

_PAIR_KEYS = ("qid", "neg_type", "grade")


def aggregate_table(heads: Path, pairs: Path) -> pa.Table:
    """The head_attention_agg rows of the head_attention file ``heads`` and the pairs file ``pairs``."""
    code, labels = _pair_codes(pq.read_table(pairs, columns=["pair_id", *_PAIR_KEYS]))
    n_codes = len(labels)
    counts: dict[int, int] = {}
    sums: dict[int, np.ndarray] = {}  # key -> [2, metrics]: sum, sum of squares
    present: dict[int, np.ndarray] = {}  # key -> [metrics]: non-NULL values seen
    file = pq.ParquetFile(heads, pre_buffer=False)
    for group in range(file.num_row_groups):
        batch = file.read_row_group(group, columns=["layer", "head", "pair_id", *METRICS])
        layer = batch.column("layer").to_numpy().astype(np.int64)
        head = batch.column("head").to_numpy().astype(np.int64)
        keys = ((layer << 8) | head) * n_codes + code[batch.column("pair_id").to_numpy()]
        order = np.argsort(keys, kind="stable")  # stable: pair order within a key, as in the file
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
        part = np.empty((len(starts), 2, len(METRICS)))  # per key of this row group: sums, sums of squares
        part_seen = np.empty((len(starts), len(METRICS)), np.int64)
        for j, m in enumerate(METRICS):  # one column at a time: memory stays at a few columns of one row group
            values = _float64(batch.column(m))[order]
            seen = ~np.isnan(values)
            values[~seen] = 0.0
            part[:, 0, j] = np.add.reduceat(values, starts)
            part[:, 1, j] = np.add.reduceat(values * values, starts)
            part_seen[:, j] = np.add.reduceat(seen.astype(np.int64), starts)
        part_counts = np.diff(np.r_[starts, len(sorted_keys)])
        for i, key in enumerate(sorted_keys[starts].tolist()):
            if key in sums:
                sums[key] += part[i]
                present[key] += part_seen[i]
                counts[key] += int(part_counts[i])
            else:
                sums[key], present[key], counts[key] = part[i].copy(), part_seen[i].copy(), int(part_counts[i])
    return _table(sums, present, counts, labels, n_codes)


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


def _table(sums, present, counts, labels, n_codes) -> pa.Table:
    keys = sorted(sums)
    stacked = np.stack([sums[k] for k in keys]) if keys else np.zeros((0, 2, len(METRICS)))
    seen = np.stack([present[k] for k in keys]) if keys else np.zeros((0, len(METRICS)), np.int64)
    blocks, codes = np.divmod(np.asarray(keys, np.int64), n_codes)
    out = {
        "layer": pa.array(blocks >> 8, pa.int8()),
        "head": pa.array(blocks & 0xFF, pa.int8()),
        **{k: [labels[c][i] for c in codes.tolist()] for i, k in enumerate(_PAIR_KEYS)},
        "n": pa.array([counts[k] for k in keys], pa.int32()),
    }
    for j, m in enumerate(METRICS):
        out[f"{m}_sum"] = pa.array(stacked[:, 0, j], pa.float64(), mask=seen[:, j] == 0)
    for j, m in enumerate(METRICS):
        out[f"{m}_sumsq"] = pa.array(stacked[:, 1, j], pa.float64(), mask=seen[:, j] == 0)
    return pa.table(out)
