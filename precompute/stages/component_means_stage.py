"""The component-means stage: ``component_means`` (see :mod:`precompute.analyses.component_means`), run only when the
ablations ask for a mean-mode component condition, before the ablation stage reads it."""

from __future__ import annotations

from precompute import crash
from precompute.stages.base import Stage
from precompute.store.manifest import TableInfo

SUMS, MEANS = "component_sums", "component_means"


def needs_means(ctx) -> bool:
    from precompute.stages.ablations_stage import Ablations

    return bool(ctx.cfg.ablations) and any(c.spec.uses_means(c) for c in Ablations.requested(ctx))


class ComponentMeans(Stage):
    name = "component_means"
    sharded = True
    tables = (MEANS,)

    def wanted(self, ctx) -> bool:
        return needs_means(ctx)

    def compute(self, ctx) -> int:
        from precompute.analyses.component_means import sums_chunk
        from precompute.analyses.batching import chunked

        cfg, writer = ctx.cfg, ctx.writer
        writer.verify_parts(SUMS)  # a damaged part is deleted (and computed again below), never merged
        mine = ctx.world.share(list(chunked(ctx.pair_set.pairs, cfg.chunk_size)))  # this rank's chunks
        todo = [(key, chunk) for key, chunk in mine if not writer.has_part(SUMS, key)]
        ctx.console.log(f"Component means: {sum(len(c) for _, c in todo):,} pairs to run (one plain forward pass each).")
        with ctx.console.bar(sum(len(c) for _, c in todo), "component means", "pair") as bar:
            for key, chunk in todo:
                writer.write_part(SUMS, key, sums_chunk(ctx.lm, chunk, batch_size=cfg.batch_size,
                                                        max_length=cfg.max_length, batch_tokens=cfg.batch_tokens))
                crash.point("component_means.part")
                bar.update(len(chunk))
        return sum(len(c) for _, c in todo)

    def merge(self, ctx) -> None:
        import pyarrow.parquet as pq

        from precompute.analyses.component_means import means_table

        writer = ctx.writer
        writer.write_table(MEANS, means_table([pq.read_table(p) for p in writer.verify_parts(SUMS)]), staged=True)
        writer.commit(self.name, [MEANS], drop_parts=[SUMS])

    def record(self, ctx) -> None:
        import pyarrow.parquet as pq

        ctx.manifest.tables[MEANS] = TableInfo(rows=pq.ParquetFile(ctx.writer.table_path(MEANS)).metadata.num_rows)


STAGE = ComponentMeans()
