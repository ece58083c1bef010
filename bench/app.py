"""Interaction latency of the explorer: time the queries behind each page on a 10^8-row store (or 3 x 10^8, 10^9).

    python bench/app.py                      # generate (or reuse) /tmp/atlas-bench, then time
    python bench/app.py --dir data/bench --rows 3e8 --layers 24 --heads 16 --repeat 5
    python bench/app.py --dir data/bench --rows 1e9 --layers 24 --heads 16 --only-layers 12   # 10^9, one layer on disk

The synthetic run has the shape of a BERT-base cross-encoder on a large judged set: 12 layers x
12 heads x 720,896 pairs = 103,809,024 head_attention rows (one file per layer, sorted by head and pair_id, in row
groups of 65,536 rows that never hold two heads, written by the job's own writer), 2,000 queries, and every other
table of the store schema at a matching size: 348 ablation conditions (96 component and 40 QK-subspace ones among
them, the latter with 40 x 720,896 subspace_head_metrics rows and their subspace_effects), and activation patching
of 20,000 tfc1 and 20,000 cls patch pairs (12 layers x (12 heads + 18 components) and 12 x (12 heads + 3
components): 10,800,000 patching_effects rows, and their patching_summary, whose moments are the effects' own).
decoder_cross_attention (MonoT5 only) is not generated. It is computed by DuckDB (``SELECT ... FROM range(...)``)
and streamed into checksummed Parquet files that carry the run's identity, as the job writes its tables (so the app
verifies it as it would a real run: bench/verify.py times that); memory stays at a few row groups whatever
``--rows``. A few minutes, ~12 GB, reused when present (3 x 10^8 rows: 12 minutes, 56 GB). The numbers are uniform
noise inside the schema's bounds: only the sizes matter.

``--only-layers L,...`` writes only those layers' files of head_attention (everything else at full size): a query
on one head or one layer reads only its layer's file, so its time at 10^9 rows is measured on a disk that cannot hold
the 107 GB of a whole 10^9-row table; queries over every layer (the Pair explorer's all-heads grid) then cover the
layers on disk only.

Every query is a method of the reader (``matching_atlas.Run``), called exactly as the pages call it
(a fresh cursor of the run's one connection, as ``app.data`` does), without the
Streamlit result cache: what a user waits for on a cache miss. Each query runs once to warm the
OS page cache, then ``--repeat`` times; the median and the maximum are printed (the row groups and megabytes
each query reads, in docs/store.md, came from DuckDB's JSON profile of the same SQL on one cursor: the reader's
methods run on their own cursors, which this script does not profile). The script exits 1 if any median is over ``--budget`` seconds (0.5 s by default).

Over 350 lines on purpose: the generator writes every table of the schema at a matching size, and the list of
timed queries names every page's calls; split apart, the sizes and the queries that depend on them would drift.
Figures at 3 x 10^8 and 10^9 rows: docs/store.md, "Scale".
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from matching_atlas.slice import Slice  # noqa: E402
from precompute.metrics import METRICS  # noqa: E402
from precompute.names import DIRECTIONS  # noqa: E402
from precompute.store import layout  # noqa: E402
from precompute.store.schema import SCHEMA_VERSION, TABLES, duck_type  # noqa: E402

RUN_NAME = "bench__synthetic-bert-base"
ROW_GROUP = 122_880
BENCH_VERSION = 8  # bumped when the generated tables change: an older bench store is regenerated
# The run's identity, recorded in every file as the job records its own (the app checks it when it opens the run)
IDENTITY = {"model": "synthetic/bert-base-shape", "dataset": "bench/app.py", "dtype": "float32", "seed": 0,
            "max_length": 512}
PATCH_PAIRS = 20_000  # per experiment
SUBSPACE_HEADS = ((3, 5), (5, 1), (7, 2), (8, 8), (10, 4))


def _copy(con, select: str, path: Path) -> None:
    """Stream the SELECT's result into ``path`` as the job writes a table: page checksums, the table's name, row count
    and the run's identity in the footer, row groups that never straddle two heads (precompute.store.integrity)."""
    from precompute.store import integrity

    spec = TABLES[path.stem]
    tmp = path.with_name(f".{path.name}.tmp")
    reader = con.sql(select).to_arrow_reader(ROW_GROUP)
    integrity.write_batches(reader, spec.schema, tmp, table=spec.name, identity=IDENTITY, row_group_size=ROW_GROUP,
                            group_by=spec.row_groups_by)
    os.replace(tmp, path)


def heads_per_row_group(paths: list[Path]) -> tuple[int, bool]:
    """(row groups, whether none holds two (layer, head) cells) of head_attention's files: the job's layout, checked
    from the footers."""
    import pyarrow.parquet as pq

    groups, aligned = 0, True
    for path in paths:
        md = pq.ParquetFile(path).metadata
        names = [md.schema.column(j).name for j in range(md.num_columns)]
        layer, head = names.index("layer"), names.index("head")

        def single(group, j) -> bool:
            stats = md.row_group(group).column(j).statistics
            return stats is not None and stats.min == stats.max

        groups += md.num_row_groups
        aligned &= all(single(g, layer) and single(g, head) for g in range(md.num_row_groups))
    return groups, aligned


def _cast(table: str, exprs: dict[str, str]) -> str:
    """SELECT list casting each expression to the schema's type, in the schema's column order."""
    cols = TABLES[table].columns
    return ", ".join(f"CAST({exprs[c.name]} AS {duck_type(c.type)}) AS \"{c.name}\"" for c in cols)


def _write_head_attention(con, run: Path, *, layers: int, heads: int, per_head: int, only: list[int]) -> None:
    """head_attention through the job's writer (precompute.store.writer: one checksummed file per layer, row groups
    of one head), streamed from DuckDB layer by layer: one row group in memory whatever the size."""
    import pyarrow as pa

    from precompute.store.writer import RunWriter

    ha = {"pair_id": f"i % {per_head}", "layer": f"i // ({heads} * {per_head})", "head": f"(i // {per_head}) % {heads}"}
    ha.update({m: "random()" for m in METRICS})
    per_layer = heads * per_head

    def batches():
        for layer in only:  # i enumerates (layer, head, pair_id) in sort order
            sql = f"SELECT {_cast('head_attention', ha)} FROM range({layer * per_layer}, {(layer + 1) * per_layer}) t(i)"
            yield from (pa.table(b) for b in con.sql(sql).to_arrow_reader(ROW_GROUP))

    RunWriter(run, identity=IDENTITY).write_pieces("head_attention", batches())


def generate(root: Path, *, rows: int, layers: int, heads: int, queries: int, threads: int,
             only_layers: list[int] | None = None) -> Path:
    import duckdb

    run = root / RUN_NAME
    only = sorted(set(only_layers)) if only_layers else list(range(layers))
    if (run / "manifest.json").exists():
        man = json.loads((run / "manifest.json").read_text())
        bench = man.get("bench", {})
        if bench.get("rows") == rows and bench.get("version") == BENCH_VERSION and bench.get("layers") == only and \
                man.get("schema_version") == SCHEMA_VERSION:
            print(f"reusing {run} ({man['tables']['head_attention']['rows']:,} head_attention rows)")
            return run
    run.mkdir(parents=True, exist_ok=True)
    # pairs per head a multiple of the row group (or of DuckDB's 2,048-row vectors for a head that fits in one), so
    # DuckDB's row groups end exactly where a head does, as the job writes them
    cap = TABLES["head_attention"].row_group_rows
    per_head_wanted = rows / (layers * heads)
    unit = cap if per_head_wanted > cap else 2048
    n_pairs = math.ceil(per_head_wanted / unit) * unit
    per_q = math.ceil(n_pairs / queries)
    # a bounded share of the machine (other jobs run beside it; at 3e8 rows the sorts spill to disk)
    con = duckdb.connect(config={"threads": threads, "preserve_insertion_order": True, "memory_limit": "4GB"})
    con.execute(f"SET temp_directory = '{root / '.duckdb-tmp'}'")
    t0 = time.time()

    # pairs: per query 30% relevant (grades 1-3), 40% hard (grade 0), 30% easy (grade -1)
    pos = f"(i % {per_q}) / {per_q}"
    neg_type = f"CASE WHEN {pos} < 0.3 THEN 'relevant' WHEN {pos} < 0.7 THEN 'hard' ELSE 'easy' END"
    grade = f"CASE WHEN {pos} < 0.3 THEN 1 + (i % 3) WHEN {pos} < 0.7 THEN 0 ELSE -1 END"
    pairs = {
        "pair_id": "i", "qid": f"CAST(1000000 + i // {per_q} AS VARCHAR)", "docid": "CAST(8000000 + i * 7 AS VARCHAR)",
        "query": f"'synthetic query number ' || (i // {per_q})",
        "doc": "'synthetic passage ' || i || ' ' || repeat('lorem ipsum dolor sit amet ', 1 + (i % 7))",
        "grade": grade, "neg_type": neg_type, "score": f"(CASE WHEN {pos} < 0.3 THEN 2 ELSE 0 END) + random() * 4 - 2",
        "q_tokens": "4 + (i % 9)", "d_tokens": "40 + (i % 200)", "d_tokens_full": "40 + (i % 260)",
        "truncated": "(i % 260) >= 200", "q_exact_tokens": "i % 4", "d_exact_tokens": "i % 11",
        "run_rank": "NULL", "run_score": "NULL",
    }
    _copy(con, f"SELECT {_cast('pairs', pairs)} FROM range({n_pairs}) t(i) ORDER BY i", run / "pairs.parquet")
    print(f"  pairs: {n_pairs:,} rows ({time.time() - t0:.0f} s)")

    t1 = time.time()
    _write_head_attention(con, run, layers=layers, heads=heads, per_head=n_pairs, only=only)
    files = layout.files(run, "head_attention")
    groups, aligned = heads_per_row_group(files)
    print(f"  head_attention: {len(only) * heads * n_pairs:,} rows in {len(files)} files (layers "
          f"{only[0]}-{only[-1] if len(only) > 1 else only[0]}{'' if len(only) == layers else ' only'}), {groups:,} row "
          f"groups, {'none shared by two heads' if aligned else 'NOT aligned to heads'} ({time.time() - t1:.0f} s)")

    # head_attention_agg: one row per layer x head x (qid, neg_type, grade) group of pairs, sums of the right size
    t1 = time.time()
    con.execute(f"CREATE TEMP TABLE groups AS SELECT qid, neg_type, grade, count(*) AS n FROM "
                f"read_parquet('{run / 'pairs.parquet'}') GROUP BY ALL")
    agg = {"layer": "l.layer", "head": "h.head", "qid": "g.qid", "neg_type": "g.neg_type", "grade": "g.grade", "n": "g.n"}
    agg.update({f"{m}_sum": "g.n * (0.25 + random() * 0.5)" for m in METRICS})
    agg.update({f"{m}_sumsq": "g.n * (0.1 + random() * 0.2)" for m in METRICS})
    _copy(con, f"SELECT {_cast('head_attention_agg', agg)} FROM range({layers}) l(layer), range({heads}) h(head), groups g "
               "ORDER BY l.layer, h.head, g.qid, g.neg_type, g.grade", run / "head_attention_agg.parquet")
    # head_attention_totals: the job's query over the aggregate (precompute.store.connect.totals_sql)
    from precompute.store.connect import totals_sql

    con.execute(f"CREATE TEMP VIEW agg_file AS SELECT * FROM read_parquet('{run / 'head_attention_agg.parquet'}')")
    _copy(con, f"SELECT * FROM ({totals_sql('agg_file')}) ORDER BY layer, head, neg_type, grade",
          run / "head_attention_totals.parquet")
    print(f"  head_attention_agg and its totals ({time.time() - t1:.0f} s)")

    # ablations: baseline, 25 directions, 6 groups, 3 layer sweeps x layers, every head, components, QK subspaces;
    # every row as the job writes it (parsed by its kind: precompute.conditions)
    from precompute import conditions as C

    groups = {g: ("q_d", "d_q") for g in ("q_to_special", "d_to_special", "within", "to_cls", "to_sep")}
    ids = ["none", *(f"{d}@all/zero" for d in DIRECTIONS),
           *(f"{g}@all/zero" for g in ("cross", "q_to_special", "d_to_special", "within", "to_cls", "to_sep"))]
    sweeps = [f"{c}@{layer}/zero" for c in ("q_d", "d_q", "cross") for layer in range(layers)]
    ids += [f"head:{layer}.{head}/zero" for layer in range(layers) for head in range(heads)]
    ids += [f"{c}@{layer}{seg}/mean" for layer in range(layers) for c in ("mlp", "attn") for seg in ("", ":cls", ":q", ":d")]
    ids += [f"qk:{layer}.{head}:k{k}/{op}" for layer, head in SUBSPACE_HEADS for k in range(1, 5)
            for op in ("remove", "scale=2")]
    conds = [C.parse(i, groups=groups).row() for i in ids] + [{**C.parse(i).row(), "kind": "layer_sweep"} for i in sweeps]
    subspace = [r for r in conds if r["kind"] == "subspace"]
    import pyarrow as pa

    con.register("cond_rows", pa.Table.from_pylist(conds, schema=TABLES["ablation_conditions"].schema))
    con.execute("CREATE TEMP TABLE conds AS SELECT * FROM cond_rows")
    _copy(con, f"SELECT {_cast('ablation_conditions', {c: c for c in TABLES['ablation_conditions'].column_names})} "
               "FROM conds ORDER BY condition_id", run / "ablation_conditions.parquet")
    t1 = time.time()
    _copy(con, "SELECT CAST(c.condition_id AS VARCHAR) AS condition_id, CAST(p.i AS INTEGER) AS pair_id, "
               f"CAST(random() AS FLOAT) AS score FROM (SELECT * FROM conds WHERE kind IN ('baseline', 'direction', "
               f"'group')) c, range({n_pairs}) p(i) ORDER BY condition_id, pair_id", run / "ablation_scores.parquet")
    con.execute("CREATE TEMP TABLE qids AS SELECT DISTINCT qid FROM groups")
    cond_cols = [c for c in TABLES["ablation_metrics"].column_names if c in TABLES["ablation_conditions"].column_names]
    metrics = {c: f"c.{c}" for c in cond_cols}
    metrics.update({"scope": "s.scope", "qid": "q.qid", "measure": "m.measure",
                    "value": "CASE WHEN c.kind = 'baseline' THEN 0.7 ELSE 0.7 - random() * 0.2 END + random() * 0.1"})
    _copy(con, f"SELECT {_cast('ablation_metrics', metrics)} FROM conds c, qids q, "
               "(VALUES ('pairs'), ('judged')) s(scope), (VALUES ('nDCG@10'), ('RR@10')) m(measure) "
               "ORDER BY condition_id, scope, measure, qid", run / "ablation_metrics.parquet")
    summary = {c: f"c.{c}" for c in TABLES["ablation_conditions"].column_names}
    summary.update({"scope": "s.scope",
                    "measure": "m.measure", "n_queries": str(queries),
                    "mean": "0.7 - random() * 0.2", "baseline": "0.7", "delta": "-random() * 0.2",
                    "t": "-random() * 5", "p": "random() * 0.1", "p_holm": "random() * 0.2"})
    _copy(con, f"SELECT {_cast('ablation_summary', summary)} FROM conds c, "
               "(VALUES ('pairs'), ('judged')) s(scope), (VALUES ('nDCG@10'), ('RR@10')) m(measure) "
               "ORDER BY scope, measure, condition_id", run / "ablation_summary.parquet")
    print(f"  ablations: {len(conds)} conditions ({time.time() - t1:.0f} s)")

    svd = {"layer": "l.layer", "head": "h.head", "kv_head": "h.head", "k": "k.k", "sigma": "(64 - k.k) * (1 + random())",
           "alignment": "random() * 2 - 1"}
    _copy(con, f"SELECT {_cast('svd', svd)} FROM range({layers}) l(layer), range({heads}) h(head), range(64) k(k) "
               "ORDER BY 1, 2, 3", run / "svd.parquet")
    hc = {"layer": "l.layer", "head": "h.head", "metric": "m.metric", "contrast": "c.contrast", "n_a": "60000",
          "n_b": "80000", "mean_a": "random()", "mean_b": "random()", "diff": "random() - 0.5",
          "cohen_d": "random() * 2 - 1", "u": "random() * 1e9", "p": "random()", "p_holm": "random()",
          "n_queries": str(queries), "effect": "random() - 0.5", "effect_low": "random() - 1", "effect_high": "random()",
          "effect_dz": "random() * 2 - 1", "t": "random() * 10 - 5", "n_resamples": "2000", "pooled_p": "random()"}
    mlist = ", ".join(f"('{m}')" for m in METRICS)
    _copy(con, f"SELECT {_cast('head_contrasts', hc)} FROM range({layers}) l(layer), range({heads}) h(head), "
               f"(VALUES {mlist}) m(metric), (VALUES ('relevant_vs_easy'), ('relevant_vs_hard')) c(contrast) "
               "ORDER BY contrast, metric, layer, head", run / "head_contrasts.parquet")
    t1 = time.time()
    _generate_analyses(con, run, n_pairs=n_pairs, queries=queries, layers=layers, heads=heads, subspace=subspace)
    print(f"  components, subspaces, patching ({time.time() - t1:.0f} s)")
    counts = {t: con.execute(f"SELECT count(*) FROM {layout.scan_sql(layout.location(run, t), t)}").fetchone()[0]
              for t in TABLES if layout.exists(run, t)}
    con.close()
    manifest = {
        "schema_version": SCHEMA_VERSION, "status": "complete", "identity": IDENTITY,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {"id": "synthetic/bert-base-shape", "name": "synthetic-bert-base", "layers": layers, "heads": heads,
                  "hidden": 768, "num_labels": 1, "score": "logit", "architecture": "synthetic", "model_type": "bert"},
        "dataset": {"spec": "synthetic", "name": "bench", "source": "bench/app.py"},
        "parameters": {"max_length": 512, "seed": 0},
        "counts": {"pairs": n_pairs, "queries": queries},
        "metrics": {"nDCG@10": None},
        "tables": {t: {"rows": n} for t, n in counts.items()},
        "bench": {"rows": rows, "version": BENCH_VERSION, "layers": only, "seconds": round(time.time() - t0, 1)},
    }
    (run / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"generated {run} in {time.time() - t0:.0f} s")
    return run


def _generate_analyses(con, run: Path, *, n_pairs: int, queries: int, layers: int, heads: int,
                       subspace: list[dict]) -> None:
    """component_means, subspace_head_metrics (every subspace condition x pair) and both patching experiments."""
    cm = {"layer": "l.layer", "component": "c.component", "segment": "s.segment", "tokens": "1000000",
          "mean": "list_transform(range(768), lambda x: random() - 0.5)"}
    _copy(con, f"SELECT {_cast('component_means', cm)} FROM range({layers}) l(layer), "
               "(VALUES ('attn'), ('mlp')) c(component), (VALUES ('cls'), ('q'), ('sep1'), ('d'), ('sep2')) s(segment) "
               "ORDER BY 1, 2, 3", run / "component_means.parquet")
    values = ", ".join(f"('{c['condition_id']}', {c['layer']}, {c['head']})" for c in subspace)
    shm = {"condition_id": "c.condition_id", "pair_id": "p.i", "layer": "c.layer", "head": "c.head"}
    shm.update({m: "random()" for m in METRICS})
    _copy(con, f"SELECT {_cast('subspace_head_metrics', shm)} FROM (VALUES {values}) c(condition_id, layer, head), "
               f"range({n_pairs}) p(i) ORDER BY condition_id, pair_id", run / "subspace_head_metrics.parquet")
    # what the job stores with them (precompute.analyses.subspace_effects): per condition and metric, its size
    effects = {"condition_id": "condition_id", "layer": "layer", "head": "head", "metric": "metric", "n": str(n_pairs),
               "mean": "mean", "baseline": "baseline", "delta": "mean - baseline", "sd_delta": "random() * 0.2"}
    metrics = ", ".join(f"('{m}')" for m in METRICS)
    _copy(con, f"SELECT {_cast('subspace_effects', effects)} FROM (SELECT *, random() AS mean, random() AS baseline "
               f"FROM (VALUES {values}) c(condition_id, layer, head), (VALUES {metrics}) m(metric)) "
               "ORDER BY condition_id, metric", run / "subspace_effects.parquet")
    pp = {"experiment": "e.experiment", "patch_id": "p.i", "pair_id": f"(p.i * 34 + e.k) % {n_pairs}",
          "clean_pair_id": f"CASE WHEN e.experiment = 'cls' THEN (p.i * 34 + 1) % {n_pairs} END",
          "term": "CASE WHEN e.experiment = 'tfc1' THEN 'query' END",
          "filler": "CASE WHEN e.experiment = 'tfc1' THEN 'the' END", "qid": "q.qid",
          "clean_insert": "CASE WHEN e.experiment = 'tfc1' THEN 'query' END",
          "corrupted_insert": "CASE WHEN e.experiment = 'tfc1' THEN 'the' END",
          "rule": "CASE WHEN e.experiment = 'tfc1' THEN 'first query term' ELSE 'same query' END",
          "similarity": "CASE WHEN e.experiment = 'cls' THEN random() END"}
    _copy(con, f"SELECT {_cast('patching_pairs', pp)} FROM (VALUES ('cls', 2), ('tfc1', 0)) e(experiment, k), "
               f"range({PATCH_PAIRS}) p(i) JOIN read_parquet('{run / 'pairs.parquet'}') q "
               f"ON q.pair_id = (p.i * 34 + e.k) % {n_pairs} ORDER BY 1, 2", run / "patching_pairs.parquet")
    # variants per layer: tfc1 = 3 components x 6 segments + every head; cls = 3 components at 'cls' + every head
    variants = [("tfc1", c, s, "NULL") for c in ("resid", "attn", "mlp") for s in ("all", "cls", "q", "sep1", "d", "sep2")]
    variants += [("tfc1", "head", "all", str(h)) for h in range(heads)]
    variants += [("cls", c, "cls", "NULL") for c in ("resid", "attn", "mlp")] + [("cls", "head", "cls", str(h))
                                                                                  for h in range(heads)]
    vals = ", ".join(f"('{e}', '{c}', '{s}', {h})" for e, c, s, h in variants)
    pe = {"experiment": "v.experiment", "method": "'exact'", "graddrop": "NULL", "patch_id": "p.i", "pair_id": f"(p.i * 34 + CASE WHEN v.experiment = 'cls' "
          f"THEN 2 ELSE 0 END) % {n_pairs}", "layer": "l.layer", "head": "v.head", "component": "v.component",
          "segment": "v.segment", "clean": "1 + (p.i % 7) * 0.1", "corrupted": "0.5 - (p.i % 5) * 0.1",
          "patched": "random()", "effect": "CASE WHEN p.i % 20 = 0 THEN NULL ELSE random() * 1.2 - 0.1 END"}
    _copy(con, f"SELECT {_cast('patching_effects', pe)} FROM (VALUES {vals}) v(experiment, component, segment, head), "
               f"range({layers}) l(layer), range({PATCH_PAIRS}) p(i) "
               "ORDER BY experiment, method, layer, component, segment, head, patch_id", run / "patching_effects.parquet")
    # the job's patching_summary: its moments are the effects' own (what the Patching page reads for the whole run);
    # the robust statistics are noise in their bounds, the heads ranked by ratio_low
    robust = {f"{s}{part}": f"random(){' - 0.5' if part == '_low' else ' + 0.5' if part == '_high' else ''}"
              for s in ("median", "ratio", "tmean") for part in ("", "_low", "_high")}
    ps = {"experiment": "experiment", "method": "method", "layer": "layer", "head": "head", "component": "component",
          "segment": "segment", "n_queries": f"least(n_pairs, {queries})", "n_pairs": "n_pairs",
          "n_excluded": "n_null", "n_raised": "0", "mean": "mean", "sd": "sd", "n_null": "n_null", **robust,
          "ratio_low": "ratio_low",
          "rank": "CASE WHEN component = 'head' THEN row_number() OVER (PARTITION BY experiment, method, component = "
                  "'head' ORDER BY ratio_low DESC) END"}
    _copy(con, f"SELECT {_cast('patching_summary', ps)} FROM (SELECT *, random() - 0.5 AS ratio_low FROM ("
               "SELECT experiment, method, layer, head, component, segment, count(*) AS n_pairs, "
               "count(*) - count(effect) AS n_null, avg(effect) AS mean, stddev_samp(effect) AS sd "
               f"FROM read_parquet('{run / 'patching_effects.parquet'}') GROUP BY ALL)) "
               "ORDER BY experiment, method, layer, component, segment, head", run / "patching_summary.parquet")


def page_queries(run, layers: int, heads: int) -> list[tuple[str, str, object]]:
    """(page, label, thunk) for the queries each page runs, with the default slice and a narrow one."""
    con = run.connection
    full = Slice()
    qids = [r[0] for r in con.execute("SELECT DISTINCT qid FROM head_attention_agg ORDER BY qid LIMIT 50").fetchall()]
    narrow = Slice(layers=(layers // 3, 2 * layers // 3), neg_types=("relevant", "hard"), qids=tuple(qids))
    L, H = layers // 2, heads // 2
    pair_id = con.execute("SELECT max(pair_id) // 2 FROM pairs").fetchone()[0]
    qid = qids[0]
    out = []

    def add(page, label, name, *args, **kwargs):
        out.append((page, label, lambda: getattr(run, name)(*args, **kwargs)))

    add("sidebar", "slice_options", "slice_options")
    add("sidebar", "query_list", "queries")
    add("overview", "pair_counts (all)", "pair_counts", where=full)
    add("overview", "ndcg_per_query (all)", "ndcg", where=full)
    add("overview", "score_histogram (all)", "score_histogram", 40, where=full)
    add("overview", "score_summary (all)", "score_summary", where=full)
    add("overview", "pair_counts (50 queries, rel+hard)", "pair_counts", where=narrow.pairs_only())
    add("head atlas", "head_means q_d (all)", "head_means", "q_d", where=full)
    add("head atlas", "head_means q2d_max (narrow)", "head_means", "q2d_max", where=narrow)
    add("head atlas", "head_difference relevant-easy (all)", "head_difference", "q_d", "relevant_vs_easy", where=full)
    add("head atlas", "head_difference relevant-hard (narrow)", "head_difference", "q_d_exact", "relevant_vs_hard", where=narrow)
    add("head atlas", "head_contrasts", "head_contrasts", "q_d", "relevant_vs_easy")
    add("head atlas", f"head_values {L}.{H} (all)", "head_values", L, H, "q_d", where=full)
    add("head atlas", f"head_values {L}.{H} (narrow)", "head_values", L, H, "q_d", where=narrow)
    add("head atlas", f"head_histogram {L}.{H} (all)", "head_histogram", L, H, "q_d", 30, where=full)
    add("head atlas", f"head_top_pairs {L}.{H} (all)", "head_top_pairs", L, H, "q_d", 20, True, where=full)
    add("head atlas", f"head_top_pairs {L}.{H} (narrow)", "head_top_pairs", L, H, "q_d", 20, False, where=narrow)
    add("directions", "direction_matrix (all)", "direction_matrix", where=full)
    add("directions", "direction_matrix (narrow)", "direction_matrix", where=narrow)
    add("directions", f"direction_matrix head {L}.{H}", "direction_matrix", where=full.with_(layers=(L, L), heads=(H,)))
    add("directions", "direction_by_layer 8 dirs (all)", "direction_by_layer", ("q_d", "d_q", "q_q", "d_d", "q_cls", "d_cls", "q_sep2", "d_sep2"), where=full)
    add("directions", "direction_by_layer 25 dirs (narrow)", "direction_by_layer", DIRECTIONS, where=narrow)
    add("ablations", "ablation_options", "ablation_options")
    add("ablations", "ablation_table", "table1", measure="nDCG@10", scope="pairs")
    add("ablations", "ablation_layer_sweeps", "layer_sweeps", measure="nDCG@10", scope="pairs")
    add("ablations", "ablation_heads", "head_ablations", measure="nDCG@10", scope="pairs")
    add("ablations", "ablation_per_query (all)", "per_query", "q_d@all/zero", measure="nDCG@10", scope="pairs", where=full)
    add("ablations", "ablation_slice_means (50 queries)", "slice_means", measure="nDCG@10", scope="pairs", where=narrow)
    add("ablations", "analysis_families", "holm_families", measure="nDCG@10", scope="pairs")
    add("ablations", "component_table", "component_effects", measure="nDCG@10", scope="pairs")
    add("ablations", "subspace_table (40 conditions)", "subspace_effects", measure="nDCG@10", scope="pairs")
    sub = f"qk:{SUBSPACE_HEADS[0][0]}.{SUBSPACE_HEADS[0][1]}:k2/remove"
    add("ablations", "subspace_metric_deltas (1 condition)", "subspace_metric_deltas", sub)
    add("patching", "patching_experiments", "patching_experiments")
    add("patching", "patching_summary tfc1", "patching_summary", "tfc1", "exact")
    for exp in ("tfc1", "cls"):
        add("patching", f"patching_heads {exp} (all)", "patching_heads", exp, where=full)
        add("patching", f"patching_heads {exp} (narrow)", "patching_heads", exp, where=narrow)
        add("patching", f"patching_components {exp} (all)", "patching_components", exp, where=full)
        add("patching", f"patching_components {exp} (narrow)", "patching_components", exp, where=narrow)
    add("patching", f"patching_top_pairs head {L}.{H} tfc1 (all)", "patching_top_pairs", "tfc1", L, "head", None, H, 20, True, where=full)
    add("patching", f"patching_top_pairs mlp/d {L} tfc1 (narrow)", "patching_top_pairs", "tfc1", L, "mlp", "d", None, 20, True, where=narrow)
    add("patching", f"patching_top_pairs head {L}.{H} cls (narrow)", "patching_top_pairs", "cls", L, "head", None, H, 20, False, where=narrow)
    add("spectra", "alignment_scores", "head_alignment", where=full)
    add("spectra", f"svd_spectra layer {L}", "spectra", where=full.with_(layers=(L, L)))
    add("spectra", "alignment_vs_contrast", "alignment_vs_contrast", "q_d", "relevant_vs_easy", where=full)
    add("spectra", "alignment_vs_slice_difference", "alignment_vs_slice_difference", "q_d", "relevant_vs_easy", where=full)
    add("pair explorer", "query_pairs", "pairs", qid, where=full)
    add("pair explorer", "pair_row", "pair", pair_id)
    add("pair explorer", f"pair_head_metrics {L}.{H}", "pair_head_metrics", pair_id, L, H)
    add("pair explorer", "pair_metric_grid (all heads)", "pair_metric_grid", pair_id, "q_d", where=full)
    add("pair explorer", "pair_metric_grid (narrow)", "pair_metric_grid", pair_id, "q2d_max", where=narrow)
    add("sql", "schema_listing", "columns")
    add("compare", "head_means q_d (second run = same store)", "head_means", "q_d", where=full)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("ATLAS_BENCH_DIR", "/tmp/atlas-bench")),
                    help="store folder of the synthetic run (reused when present). Default: %(default)s")
    ap.add_argument("--rows", type=lambda v: int(float(v)), default=100_000_000,
                    help="head_attention rows (at least; 3e8 is accepted). Default: %(default)s")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per query after one warm-up. Default: %(default)s")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--budget", type=float, default=0.5, help="fail when a median is above this (s). Default: %(default)s")
    ap.add_argument("--sql", action="store_true", help="also time a query through a SQL page session (its worker process)")
    ap.add_argument("--only-layers", type=lambda v: [int(x) for x in v.split(",")], default=None, metavar="L,...",
                    help="write only these layers of head_attention (see above). Default: every layer")
    args = ap.parse_args(argv)
    if args.only_layers and not all(0 <= layer < args.layers for layer in args.only_layers):
        ap.error(f"--only-layers: layers are 0-{args.layers - 1}")

    run = generate(args.dir, rows=args.rows, layers=args.layers, heads=args.heads, queries=args.queries,
                   threads=args.threads, only_layers=args.only_layers)
    from matching_atlas import Run
    from matching_atlas.opening import inspect_run

    t = time.perf_counter()
    reader = Run(inspect_run(run), threads=min(4, args.threads))  # as app.data does (once per run and server process)
    con = reader.connection
    setup = time.perf_counter() - t
    n = con.execute("SELECT count(*) FROM head_attention").fetchone()[0]
    print(f"\nrun {run}: {n:,} head_attention rows; {args.threads} cores; median of {args.repeat} after 1 warm-up; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"connection setup (once per run and server process, cached by st.cache_resource): {setup:.2f} s\n")
    rows = []
    for page, label, thunk in page_queries(reader, args.layers, args.heads):
        t = time.perf_counter()
        thunk()
        first = time.perf_counter() - t
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            thunk()
            times.append(time.perf_counter() - t)
        rows.append((page, label, first, statistics.median(times), max(times)))
    if args.sql:
        from app.connections import SqlSessions, run_sql
        from matching_atlas.opening import inspect_run

        sql = "SELECT neg_type, count(*) AS n, avg(score) FROM pairs GROUP BY ALL"
        times, sessions, info = [], SqlSessions(limit=1), inspect_run(run)  # as one SQL page session (its worker)
        for i in range(args.repeat + 1):
            t = time.perf_counter()
            run_sql(info, f"{sql} -- {i}", sessions=sessions, session="bench")  # (a new text: no reuse of the last)
            times.append(time.perf_counter() - t)
        sessions.close_all()
        rows.append(("sql", "user SQL: pairs by neg_type", times[0], statistics.median(times[1:]), max(times[1:])))

    width = max(len(r[1]) for r in rows)
    print(f"{'page':<14} {'query':<{width}}  {'first s':>8} {'median s':>9} {'max s':>7}")
    for page, label, first, med, mx in rows:
        flag = "  OVER" if med > args.budget else ""
        print(f"{page:<14} {label:<{width}}  {first:8.3f} {med:9.3f} {mx:7.3f}{flag}")
    slowest = sorted(rows, key=lambda r: r[3], reverse=True)
    print("\nslowest medians: " + "; ".join(f"{r[1]} ({r[0]}) {r[3]:.3f} s" for r in slowest[:5]))
    print(f"{sum(r[3] <= args.budget for r in rows)} of {len(rows)} medians within the budget of {args.budget} s; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 1 if slowest[0][3] > args.budget else 0


if __name__ == "__main__":
    raise SystemExit(main())
