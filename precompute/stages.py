"""The job's stages, by name. Each takes the run's context and leaves finished tables behind.

A stage checks the run folder first and does only what is missing, so reruns are cheap and
resume where a killed run stopped.
"""

from __future__ import annotations

import time

from precompute import evaluation
from precompute.names import METRICS


def _progress(total: int, desc: str, unit: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=not enabled, smoothing=0.1)


def estimate(lm, pairs, cfg) -> float:
    """Seconds the summary pass will take, from one timed batch of typical length (the batch is discarded)."""
    from precompute.attention import AtlasProbe
    from precompute.summaries import summarise_batch, typical_batch

    sample = typical_batch(pairs, cfg.batch_size)
    with AtlasProbe(lm.model) as probe:
        summarise_batch(probe, lm, sample, cfg.max_length)  # warm-up
        t0 = time.perf_counter()
        summarise_batch(probe, lm, sample, cfg.max_length)
    return (time.perf_counter() - t0) / len(sample) * len(pairs)


def summaries(*, cfg, lm, ds, pair_set, writer, manifest) -> None:
    """Score every pair and write pairs, head_attention, head_attention_agg; nDCG@10 into the manifest."""
    from precompute.job import log
    from precompute.summaries import chunked, summarise_chunk

    if not all(writer.has_table(t) for t in ("pairs", "head_attention", "head_attention_agg")):
        chunks = list(chunked(pair_set.pairs, cfg.chunk_size))
        todo = [(key, chunk) for key, chunk in chunks if not (writer.has_part("pairs", key) and writer.has_part("head_attention", key))]
        done = len(pair_set.pairs) - sum(len(c) for _, c in todo)
        if todo:
            if lm.device == "cpu":
                import torch

                threads = torch.get_num_threads()
                log(f"No GPU in use: running on the CPU ({threads} threads). For a first try use a small model and "
                    "--max-queries, e.g. --model ../shared/models/minilm-l6-msmarco-ce --max-queries 3.")
            seconds = estimate(lm, [p for _, c in todo for p in c], cfg)
            log(f"Summary pass: {len(pair_set.pairs):,} pairs ({done:,} already done), "
                f"estimated {seconds / 60:.1f} min on {lm.device} ({lm.dtype}).")
        with _progress(len(pair_set.pairs), "summaries", "pair", cfg.progress) as bar:
            bar.update(done)
            for key, chunk in todo:
                pairs_part, heads_part = summarise_chunk(
                    lm, chunk, batch_size=cfg.batch_size, max_length=cfg.max_length, on_batch=bar.update
                )
                writer.write_part("head_attention", key, heads_part)
                writer.write_part("pairs", key, pairs_part)  # written last: its presence marks the chunk done
        _merge_summary_tables(writer)
    _record_summary_stats(writer, ds, pair_set, manifest)


def _merge_summary_tables(writer) -> None:
    parts = {name: writer.root / "_parts" / name for name in ("pairs", "head_attention")}
    agg_cols = ", ".join(
        [f"sum(CAST(h.{m} AS DOUBLE)) AS {m}_sum" for m in METRICS]
        + [f"sum(CAST(h.{m} AS DOUBLE) * CAST(h.{m} AS DOUBLE)) AS {m}_sumsq" for m in METRICS]
    )
    writer.merge_parts(
        "head_attention_agg",
        sources=parts,
        select_sql=(
            f"SELECT h.layer, h.head, p.qid, p.neg_type, p.grade, count(*) AS n, {agg_cols} "
            "FROM parts_head_attention h JOIN parts_pairs p USING (pair_id) "
            "GROUP BY h.layer, h.head, p.qid, p.neg_type, p.grade"
        ),
    )
    writer.merge_parts("head_attention")
    writer.merge_parts("pairs")  # last: pairs.parquet present = every summary table finished
    writer.drop_parts("head_attention")
    writer.drop_parts("pairs")


def _record_summary_stats(writer, ds, pair_set, manifest) -> None:
    """Counts and nDCG@10 of the stored scores (ir_measures over the stored table, not in-memory copies)."""
    import pyarrow.parquet as pq

    table = pq.read_table(writer.table_path("pairs"), columns=["qid", "docid", "score", "truncated"])
    cols = table.to_pydict()
    qrels = evaluation.qrels_for(ds.qrels(), pair_set.queries)
    run = evaluation.run_records(cols["qid"], cols["docid"], cols["score"])
    measures = evaluation.parse_measures(evaluation.DEFAULT_MEASURES)
    manifest["metrics"] = {**evaluation.aggregate(measures, qrels, run), "scope": "pairs"}
    manifest["counts"]["truncated"] = int(sum(cols["truncated"]))
    heads = pq.ParquetFile(writer.table_path("head_attention")).metadata.num_rows
    manifest["tables"] = {**manifest.get("tables", {}), "pairs": {"rows": table.num_rows}, "head_attention": {"rows": heads}}


def spectra(*, cfg, lm, ds, pair_set, writer, manifest) -> None:
    """SVD spectra of every head's query-key matrix (from the weights; no pairs needed)."""
    from precompute.job import log
    from precompute.spectra import SpectraError, spectra_table

    if writer.has_table("svd"):
        return
    try:
        table = spectra_table(lm.model)
    except SpectraError as err:  # not a plain bilinear attention: say so, keep the rest of the run
        log(f"spectra skipped: {err}")
        manifest["spectra"] = {"computed": False, "reason": str(err)}
        return
    writer.write_table("svd", table)
    manifest["spectra"] = {"computed": True, "rows": table.num_rows, "matrix": "W_Q^h (W_K^h)^T, unscaled"}


def contrasts(*, cfg, lm, ds, pair_set, writer, manifest) -> None:
    """Matching-head statistics (relevant vs easy / hard negatives) over the finished summary tables."""
    from precompute.contrasts import contrasts_table
    from precompute.store.connect import connect

    if writer.has_table("head_contrasts"):
        return
    table = contrasts_table(connect(writer.root))
    writer.write_table("head_contrasts", table)
    manifest["contrasts"] = {"rows": table.num_rows, "test": "Mann-Whitney U, two-sided, Holm per contrast"}


def ablations(*, cfg, lm, ds, pair_set, writer, manifest) -> None:
    """Re-score every pair under the requested ablation conditions the folder lacks; write the ablation_* tables."""
    from precompute.ablation import run_stage

    if not cfg.ablations:
        return  # --ablations none
    run_stage(cfg=cfg, lm=lm, ds=ds, pair_set=pair_set, writer=writer, manifest=manifest)


STAGES = {"summaries": summaries, "spectra": spectra, "contrasts": contrasts, "ablations": ablations}
