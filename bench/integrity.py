"""Cost of the store's integrity checks on a large-ish synthetic head_attention (MonoBERT-large-shaped: 24 x 16 heads).

    python bench/integrity.py [--pairs 5200] [--repeats 2]

Writes the table as parts of 256 pairs, then times (best of --repeats):
* merging the parts into the finished table: DuckDB's COPY (what the job did before: no page checksums) vs the
  job's merge (DuckDB's sorted result streamed as Arrow batches into a checksummed pyarrow file);
* reading the finished table: plain pyarrow read vs ``integrity.verify`` (page CRCs, row counts, statistics);
* verifying every part (what a rerun does before merging);
* head_attention_agg: DuckDB's parallel ``sum`` (run-to-run float noise; what the job did before), DuckDB's
  ``sum(... ORDER BY pair_id)`` (deterministic) and the job's streamed sums (deterministic, precompute.stages.aggregate_stage),
  each with its peak memory (measured in a child process).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=5200, help="pairs (x 384 heads = rows). Default: %(default)s")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()

    import duckdb
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from precompute.metrics import METRICS
    from precompute.stages.summary_stage import AGG
    from precompute.store import integrity, layout
    from precompute.store.schema import TABLES, duck_type
    from precompute.store.writer import BATCH_ROWS as ROW_GROUP_SIZE, RunWriter, _q

    root = Path(tempfile.mkdtemp(prefix="atlas-integrity-"))
    try:
        writer = RunWriter(root, identity={"model": "bench"})
        rng = np.random.default_rng(0)
        layers, heads, chunk = 24, 16, 256
        for k, start in enumerate(range(0, args.pairs, chunk)):
            ids = np.arange(start, min(start + chunk, args.pairs), dtype=np.int32)
            n = len(ids) * layers * heads
            cols = {"pair_id": np.repeat(ids, layers * heads),
                    "layer": np.tile(np.repeat(np.arange(layers, dtype=np.int8), heads), len(ids)),
                    "head": np.tile(np.arange(heads, dtype=np.int8), len(ids) * layers)}
            cols.update({m: rng.random(n, dtype=np.float32) for m in METRICS})
            writer.write_part("head_attention", f"{k:06d}", pa.table(cols))
            pairs = {c.name: pa.nulls(len(ids), c.type) if c.nullable else pa.array(
                [False if pa.types.is_boolean(c.type) else "x" if pa.types.is_string(c.type) else 0] * len(ids), c.type)
                for c in TABLES["pairs"].columns}
            pairs.update(pair_id=pa.array(ids), qid=pa.array([str(i % 54) for i in ids]),
                         neg_type=pa.array(["hard"] * len(ids)), grade=pa.array(np.zeros(len(ids), np.int8)))
            writer.write_part("pairs", f"{k:06d}", pa.table(pairs))
        rows = args.pairs * layers * heads
        spec = TABLES["head_attention"]
        parts = root / "_parts" / "head_attention"

        def copy() -> None:
            casts = ", ".join(f"CAST({_q(c.name)} AS {duck_type(c.type)}) AS {_q(c.name)}" for c in spec.columns)
            duckdb.connect().execute(
                f"COPY (SELECT {casts} FROM read_parquet('{parts}/*.parquet') ORDER BY layer, head, pair_id) "
                f"TO '{root / 'copy.parquet'}' (FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_SIZE})")

        t_copy = best(copy, args.repeats)
        t_merge = best(lambda: writer.merge_parts("head_attention", staged=True), args.repeats)
        files = layout.files_in(writer.staged_path("head_attention"), "head_attention")  # one per layer
        t_read = best(lambda: [pq.read_table(f) for f in files], args.repeats)
        t_verify = best(lambda: [integrity.verify(f, spec.name, spec.schema) for f in files], args.repeats)
        t_parts = best(lambda: [integrity.verify(p, spec.name, spec.schema) for p in sorted(parts.glob("*.parquet"))],
                       args.repeats)
        writer.merge_parts("pairs", staged=True)
        aggregates = {how: aggregate_cost(root, how) for how in ("sum", "ordered", "streamed")}
        mb = lambda *paths: sum(path.stat().st_size for path in paths) / 1e6  # noqa: E731
        print(f"head_attention: {rows:,} rows ({args.pairs:,} pairs x {layers * heads} heads), best of {args.repeats}")
        print(f"merge, DuckDB COPY (no checksums)     : {t_copy:6.2f} s  ({mb(root / 'copy.parquet'):.0f} MB)")
        print(f"merge, streamed pyarrow + checksums   : {t_merge:6.2f} s  ({mb(*files):.0f} MB in {len(files)} files)")
        print(f"read, plain pyarrow                   : {t_read:6.2f} s")
        print(f"read, integrity.verify                : {t_verify:6.2f} s")
        print(f"verify every part ({len(list(parts.glob('*.parquet')))} parts)          : {t_parts:6.2f} s")
        for how, label in (("sum", "DuckDB sum (parallel order)"), ("ordered", "DuckDB sum ORDER BY pair_id"),
                           ("streamed", "streamed sums (the job)")):
            seconds, peak = aggregates[how]
            print(f"{AGG}, {label:28}: {seconds:6.2f} s, peak {peak:,.0f} MB")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


AGGREGATE = """
import sys, time
sys.path.insert(0, {repo!r})
import duckdb
from precompute.metrics import METRICS
from precompute.stages.aggregate_stage import aggregate_pieces
heads, pairs, how = {heads!r}, {pairs!r}, {how!r}  # heads: the files of head_attention, one per layer
t0 = time.perf_counter()
if how == "streamed":
    for piece in aggregate_pieces(heads, pairs):
        pass
else:
    order = " ORDER BY h.pair_id" if how == "ordered" else ""
    cols = ", ".join(f"sum(CAST(h.{{m}} AS DOUBLE){{order}}), sum(CAST(h.{{m}} AS DOUBLE) ^ 2{{order}})" for m in METRICS)
    duckdb.sql(f"SELECT h.layer, h.head, p.qid, p.neg_type, p.grade, count(*), {{cols}} FROM read_parquet({{heads}}) h "
               f"JOIN '{{pairs}}' p USING (pair_id) GROUP BY ALL").fetchall()
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))  # this process only
print(time.perf_counter() - t0, int(peak.split()[1]) / 1024)
"""


def aggregate_cost(root: Path, how: str) -> tuple[float, float]:
    """(seconds, peak MB) of one way of computing head_attention_agg, in a fresh process (so peaks compare; VmHWM,
    because ru_maxrss would carry this process's own peak over into the child)."""
    import subprocess

    from precompute.store import layout

    heads = [str(f) for f in layout.files_in(root / "_staged" / "head_attention", "head_attention")]
    code = AGGREGATE.format(repo=str(REPO), heads=heads,
                            pairs=str(root / "_staged" / "pairs.parquet"), how=how)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    seconds, peak = out.strip().splitlines()[-1].split()
    return float(seconds), float(peak)


if __name__ == "__main__":
    raise SystemExit(main())
