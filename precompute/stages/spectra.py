"""The spectra stage: the SVD of every head's query-key matrix, from the weights alone (table ``svd``)."""

from __future__ import annotations

from precompute.stages.base import Stage
from precompute.store.manifest import SpectraInfo

MATRIX = "W_Q^h (W_K^h)^T, unscaled"


class Spectra(Stage):
    name = "spectra"
    tables = ("svd",)

    def compute(self, ctx) -> None:
        from precompute.spectra import SpectraError, spectra_table

        try:
            table = spectra_table(ctx.lm.model)
        except SpectraError as err:  # not a plain bilinear attention: say so (record keeps the reason), go on
            ctx.console.log(f"spectra skipped: {err}")
            return
        ctx.writer.write_table("svd", table)

    def record(self, ctx) -> None:
        from precompute.spectra import SpectraError, check_supported

        if ctx.writer.has_table("svd"):
            import pyarrow.parquet as pq

            rows = pq.ParquetFile(ctx.writer.table_path("svd")).metadata.num_rows
            ctx.manifest.spectra = SpectraInfo(computed=True, rows=rows, matrix=MATRIX)
            return
        try:
            check_supported(ctx.lm.model)
            reason = "not computed"
        except SpectraError as err:
            reason = str(err)
        ctx.manifest.spectra = SpectraInfo(computed=False, reason=reason)


STAGE = Spectra()
