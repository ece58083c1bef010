"""The contrasts stage: matching-head statistics, relevant vs easy and hard negatives (table ``head_contrasts``)."""

from __future__ import annotations

from precompute import crash
from precompute.stages.base import Stage
from precompute.store.manifest import ContrastsInfo

TEST = "Mann-Whitney U, two-sided, Holm per contrast"


class Contrasts(Stage):
    name = "contrasts"
    tables = ("head_contrasts",)
    needs = ("pairs", "head_attention")
    rebuildable = ("head_contrasts",)  # from pairs and head_attention

    def compute(self, ctx) -> None:
        from precompute.analyses.contrasts import contrasts_table
        from precompute.store.connect import connect

        ctx.writer.write_table("head_contrasts", contrasts_table(connect(ctx.writer.root)))
        crash.point("contrasts.written")

    def record(self, ctx) -> None:
        import pyarrow.parquet as pq

        rows = pq.ParquetFile(ctx.writer.table_path("head_contrasts")).metadata.num_rows
        ctx.manifest.contrasts = ContrastsInfo(rows=rows, test=TEST)


STAGE = Contrasts()
