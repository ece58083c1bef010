"""Command line of the precompute job. Imports nothing heavy until work starts, so --help is instant."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = """\
examples:
  first try on a CPU (minutes):
    python -m precompute --dataset ../shared/data/trec-dl-2020 --model ../shared/models/minilm-l6-msmarco-ce --max-queries 5
  the paper's setting (GPU):
    python -m precompute --dataset dl20 --model castorini/monobert-large-msmarco --device cuda --dtype bfloat16

The store lands in --out (default data/store/<dataset>__<model>), one folder per run; see docs/store.md.
Rerunning the same command resumes an interrupted run and skips finished work.
exit codes: 0 done, 1 unexpected failure, 2 bad input (dataset, model, output folder, flags), 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m precompute",
        description="Run a cross-encoder over TREC DL query-passage pairs and write per-pair, per-head attention "
        "summaries (25 segment directions + matching signals), scores and nDCG@10 into a Parquet store.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = p.add_argument_group("data")
    d.add_argument("--dataset", default="dl20", help="dl19 or dl20 (ir_datasets msmarco-passage/trec-dl-20XX/judged), any "
                   "ir_datasets id with queries, docs and qrels, or a local folder with queries.tsv, docs.tsv, qrels.txt "
                   "and optional runs/*.trec (e.g. ../shared/data/trec-dl-2020). Default: %(default)s")
    d.add_argument("--easy-negatives", type=int, default=20, metavar="K", help="random passages per query drawn from other "
                   "queries' candidates, never judged for the query (grade -1). Default: %(default)s")
    d.add_argument("--seed", type=int, default=0, help="seed of the easy-negative draw (per query, so --max-queries keeps "
                   "each query's negatives). Default: %(default)s")
    d.add_argument("--candidates", metavar="run:NAME", help="take the pairs from a run file's top --depth (e.g. run:bm25 for "
                   "runs/bm25.trec) instead of the judged set; needed for nDCG over a realistic ranking")
    d.add_argument("--depth", type=int, default=100, help="top-k of the run with --candidates. Default: %(default)s")
    d.add_argument("--max-queries", type=int, metavar="N", help="only the first N judged queries (quick runs)")
    m = p.add_argument_group("model")
    m.add_argument("--model", default="castorini/monobert-large-msmarco", help="Hugging Face id or local folder of a "
                   "sequence-classification cross-encoder (BERT, MiniLM, ELECTRA, DistilBERT, RoBERTa-style). "
                   "Default: %(default)s (the paper's)")
    m.add_argument("--max-length", type=int, default=512, help="max tokens per pair; only the document is truncated "
                   "(truncated pairs are flagged). Default: %(default)s")
    m.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (length-sorted batches). Default: %(default)s")
    m.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda when a GPU is visible. Default: %(default)s")
    m.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="auto = bfloat16 on GPU, float32 on CPU; summaries are always reduced in float32. Default: %(default)s")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, help="run folder (default: <store>/<dataset>__<model>)")
    o.add_argument("--store", type=Path, default=Path("data/store"), help="store root holding one folder per run. Default: %(default)s")
    o.add_argument("--cache", type=Path, default=Path("data/cache"), help="the job's own cache (doc lookup index); dataset "
                   "folders are never written to. Default: %(default)s")
    o.add_argument("--chunk-size", type=int, default=256, help="pairs per resumable part. Default: %(default)s")
    o.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    return p


def _check(args, parser) -> None:
    for flag in ("easy_negatives", "depth", "max_length", "batch_size", "chunk_size"):
        value = getattr(args, flag)
        if value is None or value < (0 if flag == "easy_negatives" else 1):
            parser.error(f"--{flag.replace('_', '-')} must be a positive number, got {value}")
    if args.max_queries is not None and args.max_queries < 1:
        parser.error(f"--max-queries must be at least 1, got {args.max_queries}")


def config_from_args(args):
    from precompute.job import JobConfig

    return JobConfig(
        dataset=args.dataset, model=args.model, out=args.out, store=args.store, cache=args.cache,
        easy_negatives=args.easy_negatives, seed=args.seed, candidates=args.candidates, depth=args.depth,
        max_queries=args.max_queries, max_length=args.max_length, batch_size=args.batch_size,
        chunk_size=args.chunk_size, device=args.device, dtype=args.dtype, progress=not args.no_progress,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    from precompute.datasets import DatasetError
    from precompute.job import log, run
    from precompute.model import ModelError
    from precompute.store.writer import StoreError

    try:
        root = run(config_from_args(args))
    except (DatasetError, ModelError, StoreError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted: finished parts are kept; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    log(f"store ready: {root}  (open it: duckdb -readonly {root / 'atlas.duckdb'})")
    return EXIT_OK
