"""The summary stage: score every pair and summarise its attention (pairs, head_attention, head_attention_agg).

The pass itself (chunks, length-sorted batches, the attention kernel) is :mod:`precompute.summaries`; this
module decides which chunks are missing, estimates their run time first, writes one part per chunk, merges
the parts and records counts and nDCG@10 in the manifest.
"""

from __future__ import annotations

import time

from precompute import evaluation
from precompute.names import METRICS
from precompute.stages.base import Stage
from precompute.store.manifest import TableInfo

PAIRS, HEADS, AGG = "pairs", "head_attention", "head_attention_agg"


def estimate(ctx, pairs) -> float:
    """Seconds the summary pass will take for ``pairs``, from one timed batch of typical length (discarded)."""
    from precompute.attention import AtlasProbe
    from precompute.summaries import summarise_batch, typical_batch

    lm, cfg = ctx.lm, ctx.cfg
    sample = typical_batch(pairs, cfg.batch_size)
    with AtlasProbe(lm.model) as probe:
        summarise_batch(probe, lm, sample, cfg.max_length)  # warm-up
        t0 = time.perf_counter()
        summarise_batch(probe, lm, sample, cfg.max_length)
    return (time.perf_counter() - t0) / len(sample) * len(pairs)


class Summaries(Stage):
    name = "summaries"
    tables = (PAIRS, HEADS, AGG)

    def compute(self, ctx) -> None:
        from precompute.summaries import chunked, summarise_chunk

        cfg, lm, writer, pairs = ctx.cfg, ctx.lm, ctx.writer, ctx.pair_set.pairs
        todo = [(key, chunk) for key, chunk in chunked(pairs, cfg.chunk_size)
                if not (writer.has_part(PAIRS, key) and writer.has_part(HEADS, key))]
        done = len(pairs) - sum(len(c) for _, c in todo)
        if todo:
            if lm.device == "cpu":
                import torch

                ctx.console.log(f"No GPU in use: running on the CPU ({torch.get_num_threads()} threads). For a first try "
                                "use a small model and --max-queries, e.g. --model ../shared/models/minilm-l6-msmarco-ce "
                                "--max-queries 3.")
            seconds = estimate(ctx, [p for _, c in todo for p in c])
            ctx.console.log(f"Summary pass: {len(pairs):,} pairs ({done:,} already done), "
                            f"estimated {seconds / 60:.1f} min on {lm.device} ({lm.dtype}).")
        with ctx.console.bar(len(pairs), "summaries", "pair") as bar:
            bar.update(done)
            for key, chunk in todo:
                pairs_part, heads_part = summarise_chunk(lm, chunk, batch_size=cfg.batch_size,
                                                         max_length=cfg.max_length, on_batch=bar.update)
                writer.write_part(HEADS, key, heads_part)
                writer.write_part(PAIRS, key, pairs_part)  # written last: its presence marks the chunk done

    def merge(self, ctx) -> None:
        writer = ctx.writer
        parts = {name: writer.root / "_parts" / name for name in (PAIRS, HEADS)}
        agg_cols = ", ".join(
            [f"sum(CAST(h.{m} AS DOUBLE)) AS {m}_sum" for m in METRICS]
            + [f"sum(CAST(h.{m} AS DOUBLE) * CAST(h.{m} AS DOUBLE)) AS {m}_sumsq" for m in METRICS]
        )
        writer.merge_parts(
            AGG,
            sources=parts,
            select_sql=(
                f"SELECT h.layer, h.head, p.qid, p.neg_type, p.grade, count(*) AS n, {agg_cols} "
                "FROM parts_head_attention h JOIN parts_pairs p USING (pair_id) "
                "GROUP BY h.layer, h.head, p.qid, p.neg_type, p.grade"
            ),
        )
        writer.merge_parts(HEADS)
        writer.merge_parts(PAIRS)  # last: pairs.parquet present = every summary table finished
        writer.drop_parts(HEADS)
        writer.drop_parts(PAIRS)

    def record(self, ctx) -> None:
        """Counts and nDCG@10 of the stored scores (ir_measures over the stored table, not in-memory copies)."""
        import pyarrow.parquet as pq

        writer, manifest = ctx.writer, ctx.manifest
        table = pq.read_table(writer.table_path(PAIRS), columns=["qid", "docid", "score", "truncated"])
        cols = table.to_pydict()
        qrels = evaluation.qrels_for(ctx.ds.qrels(), ctx.pair_set.queries)
        run = evaluation.run_records(cols["qid"], cols["docid"], cols["score"])
        measures = evaluation.parse_measures(evaluation.DEFAULT_MEASURES)
        manifest.metrics = {**evaluation.aggregate(measures, qrels, run), "scope": "pairs"}
        manifest.counts.truncated = int(sum(cols["truncated"]))
        heads = pq.ParquetFile(writer.table_path(HEADS)).metadata.num_rows
        manifest.tables.update({PAIRS: TableInfo(rows=table.num_rows), HEADS: TableInfo(rows=heads)})


STAGE = Summaries()
