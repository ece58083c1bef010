"""The contrasts stage: matching-head statistics, relevant vs easy and hard negatives and hard vs easy, tested over
queries (table ``head_contrasts``)."""

from __future__ import annotations

from precompute import crash
from precompute.stages.base import Stage
from precompute.store.manifest import ContrastsInfo

TEST = ("paired t-test over queries (per-query group means), two-sided, Holm per contrast; 95% percentile bootstrap "
        "over queries; pooled Mann-Whitney U descriptive only")


class Contrasts(Stage):
    name = "contrasts"
    tables = ("head_contrasts",)
    needs = ("pairs", "head_attention", "head_attention_agg")
    rebuildable = ("head_contrasts",)  # from pairs, head_attention and head_attention_agg

    def compute(self, ctx) -> None:
        from precompute.analyses.contrasts import contrasts_table
        from precompute.store.connect import connect

        con = connect(ctx.writer.root)
        try:  # closed here, not when collected: its buffers are freed before the next stage
            ctx.writer.write_table("head_contrasts", contrasts_table(con, seed=ctx.cfg.seed))
        finally:
            con.close()
        crash.point("contrasts.written")

    def record(self, ctx) -> None:
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(ctx.writer.table_path("head_contrasts")).metadata.num_rows
        ctx.manifest.contrasts = ContrastsInfo(rows=rows, test=TEST)


STAGE = Contrasts()
