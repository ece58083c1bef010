"""The spectra stage: the SVD of every head's query-key matrix, from the weights alone (table ``svd``)."""

from __future__ import annotations

from precompute import crash
from precompute.stages.base import Stage
from precompute.store.manifest import SpectraInfo


class Spectra(Stage):
    name = "spectra"
    tables = ("svd",)
    rebuildable = ("svd",)  # from the model's weights

    def compute(self, ctx) -> None:
        from precompute.analyses.spectra import SpectraError, spectra_table

        try:
            table, _ = spectra_table(ctx.lm)
        except SpectraError as err:  # not a plain bilinear attention: say so (record keeps the reason), go on
            ctx.console.log(f"spectra skipped: {err}")
            return
        ctx.writer.write_table("svd", table)
        crash.point("spectra.written")

    def record(self, ctx) -> None:
        from precompute.analyses.spectra import SpectraError, matrix_note

        if ctx.writer.has_table("svd"):
            import pyarrow.parquet as pq

            rows = pq.ParquetFile(ctx.writer.table_path("svd")).metadata.num_rows
            ctx.manifest.spectra = SpectraInfo(computed=True, rows=rows, matrix=matrix_note(ctx.lm))
            return
        try:
            matrix_note(ctx.lm)
            reason = "not computed"
        except SpectraError as err:
            reason = str(err)
        ctx.manifest.spectra = SpectraInfo(computed=False, reason=reason)


STAGE = Spectra()
