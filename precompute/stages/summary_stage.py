"""The summary stage: score every pair and summarise its attention (pairs, head_attention, head_attention_agg).

The pass itself (chunks, length-sorted batches, the attention kernel) is :mod:`precompute.analyses.summaries`; this
module decides which chunks are missing (damaged parts are deleted and computed again), estimates their run
time first, writes one part per chunk, merges the parts, sums head_attention_agg from the merged table
(:mod:`precompute.stages.aggregate_stage`: bit-identical across runs), installs the tables in one commit and
records counts and nDCG@10 in the manifest.
"""

from __future__ import annotations

import time

from precompute import crash, evaluation
from precompute.stages.base import Stage
from precompute.stages.aggregate_stage import aggregate_pieces
from precompute.store import layout
from precompute.store.manifest import TableInfo

PAIRS, HEADS, AGG, CROSS = "pairs", "head_attention", "head_attention_agg", "decoder_cross_attention"
TOTALS = "head_attention_totals"


def has_cross_attention(ctx) -> bool:
    """Encoder-decoder families (MonoT5) also summarise the decoder's cross-attention onto the encoder segments."""
    return any(site.role == "cross" for _, site in ctx.lm.family.attention_sites(ctx.lm.model))


def estimate(ctx, pairs) -> float:
    """Seconds the summary pass will take for ``pairs``, from one timed batch of typical length (discarded)."""
    from precompute.kernels.eager import SummaryProbe
    from precompute.analyses.batching import length_batches, typical_batch
    from precompute.analyses.summaries import summarise_batch

    lm, cfg = ctx.lm, ctx.cfg
    sample = length_batches(lm, typical_batch(pairs, cfg.batch_size), cfg.batch_size, cfg.max_length, cfg.batch_tokens)[0]
    with SummaryProbe(lm) as probe:
        summarise_batch(probe, lm, sample, cfg.max_length)  # warm-up
        t0 = time.perf_counter()
        summarise_batch(probe, lm, sample, cfg.max_length)
    return (time.perf_counter() - t0) / len(sample) * len(pairs)


class Summaries(Stage):
    name = "summaries"
    sharded = True
    tables = (PAIRS, HEADS, AGG, TOTALS)
    optional = (CROSS,)
    rebuildable = (AGG, TOTALS)  # from pairs and head_attention

    def done(self, ctx) -> bool:
        return super().done(ctx) and (not has_cross_attention(ctx) or ctx.writer.has_table(CROSS))

    @staticmethod
    def part_tables(ctx) -> tuple[str, ...]:
        """The tables a chunk writes parts of, pairs last (its part marks the chunk done)."""
        return (HEADS, CROSS, PAIRS) if has_cross_attention(ctx) else (HEADS, PAIRS)

    @classmethod
    def pass_finished(cls, ctx) -> bool:
        """The pass's own tables are finished: only the tables derived from them (the aggregate, its totals) are
        missing."""
        return all(ctx.writer.has_table(t) for t in cls.part_tables(ctx))

    def compute(self, ctx) -> None:
        from precompute.analyses.batching import chunked
        from precompute.analyses.summaries import summarise_chunk

        cfg, lm, writer, pairs = ctx.cfg, ctx.lm, ctx.writer, ctx.pair_set.pairs
        if self.pass_finished(ctx):
            return
        tables = self.part_tables(ctx)
        for table in tables:
            writer.verify_parts(table)
        mine = ctx.world.share(list(chunked(pairs, cfg.chunk_size)))  # this rank's chunks (all of them alone)
        todo = [(key, chunk) for key, chunk in mine if not all(writer.has_part(table, key) for table in tables)]
        done = sum(len(c) for _, c in mine) - sum(len(c) for _, c in todo)
        if todo:
            if lm.device == "cpu":
                import torch

                ctx.console.log(f"No GPU in use: running on the CPU ({torch.get_num_threads()} threads). For a first try "
                                "use a small model and --max-queries, e.g. --model ../shared/models/minilm-l6-msmarco-ce "
                                "--max-queries 3.")
            seconds = estimate(ctx, [p for _, c in todo for p in c])
            ranks = f" (this rank's {sum(len(c) for _, c in mine):,} of {ctx.world.size} ranks)" \
                if ctx.world.distributed else ""
            size = f"; {lm.footprint.describe()}" if lm.footprint is not None else ""
            ctx.console.log(f"Summary pass: {len(pairs):,} pairs{ranks} ({done:,} already done), "
                            f"estimated {seconds / 60:.1f} min on {lm.device} ({lm.dtype}){size}.")
        with ctx.console.bar(sum(len(c) for _, c in mine), "summaries", "pair") as bar:
            bar.update(done)
            for key, chunk in todo:
                pairs_part, heads_part, cross_part = summarise_chunk(lm, chunk, batch_size=cfg.batch_size,
                                                                     max_length=cfg.max_length,
                                                                     batch_tokens=cfg.batch_tokens, on_batch=bar.update)
                writer.write_part(HEADS, key, heads_part)
                if cross_part is not None:
                    writer.write_part(CROSS, key, cross_part)
                crash.point("summaries.part")
                writer.write_part(PAIRS, key, pairs_part)  # written last: its presence marks the chunk done
                crash.point("summaries.chunk")

    def merge(self, ctx) -> None:
        """The new tables are staged, then installed together with the parts dropped (one atomic commit). When the
        pass's tables are finished and only the aggregate is missing (it was damaged), it is rebuilt from them."""
        writer = ctx.writer
        if self.pass_finished(ctx):
            stage_aggregate(writer, writer.table_path(HEADS), writer.table_path(PAIRS))
            writer.commit(self.name, [AGG, TOTALS])
            return
        tables = self.part_tables(ctx)
        for table in tables:
            writer.merge_parts(table, staged=True)
        stage_aggregate(writer, writer.staged_path(HEADS), writer.staged_path(PAIRS))
        writer.commit(self.name, [*tables, AGG, TOTALS], drop_parts=list(tables))

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
        for name in (HEADS, CROSS):
            if writer.has_table(name):
                manifest.tables[name] = TableInfo(rows=writer.table_rows(name))
        manifest.tables[PAIRS] = TableInfo(rows=table.num_rows)


def stage_aggregate(writer, heads, pairs) -> None:
    """Stage head_attention_agg, summed from head_attention at ``heads`` (its partition folder or file) one head at a
    time and written as it comes (see :mod:`.aggregate_stage`), and head_attention_totals, its sums over queries
    (DuckDB over the staged file, one thread so that its float sums are the same bytes on every run)."""
    from precompute.store.connect import totals_sql

    writer.write_pieces(AGG, aggregate_pieces(layout.files_in(heads, HEADS), pairs), staged=True)
    writer.merge_parts(TOTALS, select_sql=totals_sql("parts_agg"), sources={"agg": writer.staged_path(AGG)},
                       staged=True, threads=1)


STAGE = Summaries()
