"""Command line of the precompute job. Imports nothing heavy until work starts, so --help is instant."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = """\
examples:
  first try on a CPU (minutes):
    python -m precompute --dataset ../shared/data/trec-dl-2020 --model ../shared/models/minilm-l6-msmarco-ce --max-queries 3
  the paper's setting (GPU):
    python -m precompute --dataset dl20 --model castorini/monobert-large-msmarco --device cuda --dtype bfloat16

The store lands in --out (default data/store/<dataset>__<model>), one folder per run; see docs/store.md.
Rerunning the same command resumes an interrupted run and skips finished work.
exit codes: 0 done, 1 unexpected failure (a bug: one line, the traceback saved in <cache>/last-error.txt),
2 bad input (dataset, model, output folder, flags, damaged files, full disk), 130 interrupted.
"""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``error: ...; see --help``) with exit code 2: the usage block,
    22 lines for this CLI, is printed by ``--help`` only."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
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
    m.add_argument("--prompt-template", metavar="TEXT", help="input template of template families (MonoT5, decoder "
                   "rerankers) with {query} and {document} (and {bos}/{eos} for the tokenizer's special tokens); @FILE "
                   "reads it from a file. Default: the family's own (see README, Model families)")
    m.add_argument("--answer-tokens", metavar="YES,NO", help="generative rerankers: the positive and negative answer "
                   "tokens, each a single token (a leading space counts: ' yes, no' keeps it on yes). Default: the "
                   "family's own (true,false for MonoT5; yes,no for Qwen3-Reranker style)")
    m.add_argument("--max-length", type=int, default=512, help="max tokens per pair; only the document is truncated "
                   "(truncated pairs are flagged). Default: %(default)s")
    m.add_argument("--batch-size", type=int, default=32, help="pairs per forward pass (length-sorted batches). Default: %(default)s")
    m.add_argument("--batch-tokens", type=int, metavar="N", help="also cap each forward pass at N padded tokens (pairs x "
                   "the batch's longest pair): batch size follows the sequence lengths, so long templated pairs of a "
                   "decoder reranker do not run out of memory while short ones fill --batch-size. Default: no cap")
    m.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda when a GPU is visible. Default: %(default)s")
    m.add_argument("--dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="auto = bfloat16 on GPU, float32 on CPU; summaries are always reduced in float32. Default: %(default)s")
    from precompute import conditions
    from precompute.names import PATCHING_METHODS, PATCHING_SCORES

    a = p.add_argument_group(
        "ablations",
        "Re-score every pair with attention removed inside the attention function (one model load serves every "
        "condition).\nCondition ids: <direction or group>@<layers>/<mode> (q_d@all/zero, cross@3/mask), head:<L>.<H>/zero, "
        "none (the baseline).\n" + conditions.help_text(),
    )
    a.add_argument("--ablations", default="directions,groups", metavar="SETS",
                   help="comma-separated condition sets: directions (the 25), groups (the named groups above plus "
                   "--ablation-group), layers (per-layer sweeps of --ablation-sweep), heads (zero one head's output at a "
                   "time), none (skip ablations). Rerunning with more sets computes only what the folder lacks. "
                   "Default: %(default)s")
    a.add_argument("--ablation-mode", default="zero", metavar="MODE",
                   help="zero: set the removed post-softmax weights to 0, no renormalisation (the paper's); mask: remove "
                   "them before the softmax (a row left with nothing outputs zeros); zero,mask: both. Default: %(default)s")
    a.add_argument("--ablation-layers", default="all", metavar="SPECS",
                   help="layers the directions and groups are removed at: all, a range 0-5, a layer 3; several specs "
                   "comma-separated give one condition each (all,0-2,3-5). Default: %(default)s")
    a.add_argument("--ablation-group", action="append", default=[], metavar="[NAME=]DIRS",
                   help="a user group, repeatable: NAME=Q->D,D->Q or q_d,d_q (named q_d+d_q); accepts q_d, Q->D, "
                   "Query->Document, Q<->D, wildcards *->CLS and q_*, and group names. Computed whenever given")
    a.add_argument("--ablation-sweep", default=",".join(conditions.DEFAULT_SWEEP), metavar="TARGETS",
                   help="directions or groups swept layer by layer by the 'layers' set (n_layers conditions each). "
                   "Default: %(default)s")
    a.add_argument("--ablation-heads", default="all", metavar="HEADS",
                   help="heads zeroed one at a time by the 'heads' set: all, or LAYER.HEAD items with * wildcards "
                   "(3.5,4.0 or 3.* or *.0). Default: %(default)s")
    a.add_argument("--ablation-stack", type=int, default=1, metavar="K",
                   help="conditions sharing a forward pass (each forward holds batch-size/K pairs x K conditions). "
                   "Default: %(default)s")
    a.add_argument("--ablation-kernel", choices=conditions.KERNELS, default="auto",
                   help="auto: sdpa where it computes the model family's attention exactly, else eager; "
                   "sdpa: fused scaled_dot_product_attention; eager: the summary pass's attention function "
                   "(bit-identical baseline, slower). Default: %(default)s")
    a.add_argument("--ablation-components", default="", metavar="SPECS",
                   help="component conditions computed whenever given: mlp|attn@LAYERS[:SEGMENT]/zero|mean, comma-"
                   "separated (mlp@3:d/mean = layer 3's MLP output at document tokens replaced by its mean)")
    a.add_argument("--component-mode", choices=conditions.COMPONENT_MODES, default=conditions.DEFAULT_COMPONENT_MODE,
                   help="mode of the 'components' set (every layer x {mlp, attn} x {all tokens, cls, q, d}): zero, or "
                   "mean (the block's mean output over the run's pairs, per layer and segment; stored in "
                   "component_means). Default: %(default)s")
    a.add_argument("--subspace-heads", default="top:5", metavar="HEADS",
                   help="heads of the 'subspace' set: top:N (largest Cohen's d of q_d, relevant vs easy negatives, in "
                   "head_contrasts) or LAYER.HEAD items (3.5,4.1). Default: %(default)s")
    a.add_argument("--subspace-k", default="1-4", metavar="KS", help="top singular components of each head's "
                   "W_Q W_K^T removed or scaled: a range (1-4) or a list (1,2,8). Default: %(default)s")
    a.add_argument("--subspace-ops", default="remove,scale=2", metavar="OPS",
                   help="what is done to them: remove and/or scale=F. Default: %(default)s")
    a.add_argument("--measures", default="nDCG@10", metavar="MEASURES",
                   help="ir_measures names evaluated per query for every condition, comma-separated (nDCG@10,RR@10,"
                   "nDCG@20). Default: %(default)s")
    a.add_argument("--eval-scopes", metavar="SCOPES",
                   help="pairs ranked per query: pairs (all; easy negatives non-relevant), judged (judged pairs only), "
                   "run (the run's candidates, with --candidates). Default: pairs, plus run with --candidates")
    t = p.add_argument_group("activation patching", "The corrupted input run with one activation replaced by the clean "
                             "run's; effect = (patched - corrupted) / (clean - corrupted), per layer x component x segment "
                             "and per layer x head (table patching_effects), exactly or to first order (attribution "
                             "patching, AtP*), summarised robustly with intervals over queries (patching_summary). "
                             "docs/patching.md.")
    t.add_argument("--patching", default="", metavar="EXPERIMENTS",
                   help="comma-separated: tfc1 (a query term vs a filler of as many tokens inserted at the passage's "
                   "start), tfc2 (the term twice vs the term and a filler), stmc1 (a word related to the term vs a "
                   "filler), cls (relevant vs hard negative of a query, patched at the pooling position)")
    t.add_argument("--patching-pairs", type=int, default=10, metavar="K",
                   help="input pairs per query of every experiment, drawn with --seed (cls: (relevant, hard) "
                   "combinations). Default: %(default)s")
    t.add_argument("--patching-method", choices=PATCHING_METHODS, default="both",
                   help="exact (a forward pass per patched activation), attribution (first-order estimates of every "
                   "activation from one backward pass per batch, AtP*), both (attribution everywhere, exact for the "
                   "--patching-top heads: their agreement is measured on every run). Default: %(default)s")
    t.add_argument("--patching-top", type=int, default=10, metavar="N",
                   help="heads patched exactly per experiment under --patching-method both (the top N by attribution's "
                   "ratio of sums, lower bound). Default: %(default)s")
    t.add_argument("--patching-score", choices=PATCHING_SCORES, default="logit",
                   help="the scale scores are patched on: logit (the relevance logit, or the log-odds of relevance of "
                   "two-label and answer-token models) or probability (of relevance, as MechIR). Default: %(default)s")
    t.add_argument("--patching-min-delta", type=float, metavar="D",
                   help="pairs with |clean - corrupted| below D are left out of the thresholded mean (and counted). "
                   "Default: 0.05 on the logit scale (odds moved by 5%%), 0.0125 on the probability scale (docs/patching.md)")
    t.add_argument("--patching-graddrop", action="store_true",
                   help="add AtP*'s GradDrop score (a guard against cancelling paths) to attribution rows: one more "
                   "backward pass per layer")
    o = p.add_argument_group("output")
    o.add_argument("--out", type=Path, help="run folder (default: <store>/<dataset>__<model>)")
    o.add_argument("--store", type=Path, default=Path("data/store"), help="store root holding one folder per run. Default: %(default)s")
    o.add_argument("--cache", type=Path, default=Path("data/cache"), help="the job's own cache (doc lookup index); dataset "
                   "folders are never written to. Default: %(default)s")
    o.add_argument("--chunk-size", type=int, default=256, help="pairs per resumable part. Default: %(default)s")
    o.add_argument("--no-progress", action="store_true", help="no progress bars (logs, CI)")
    return p


def _check(args, parser) -> None:
    for flag in ("easy_negatives", "depth", "max_length", "batch_size", "chunk_size", "batch_tokens"):
        value = getattr(args, flag)
        if flag == "batch_tokens" and value is None:
            continue
        if value is None or value < (0 if flag == "easy_negatives" else 1):
            parser.error(f"--{flag.replace('_', '-')} must be a positive number, got {value}")
    if args.max_queries is not None and args.max_queries < 1:
        parser.error(f"--max-queries must be at least 1, got {args.max_queries}")
    if args.ablation_stack < 1:
        parser.error(f"--ablation-stack must be at least 1, got {args.ablation_stack}")
    if args.patching_pairs < 1:
        parser.error(f"--patching-pairs must be at least 1, got {args.patching_pairs}")
    if args.patching_top < 1:
        parser.error(f"--patching-top must be at least 1, got {args.patching_top}")
    from precompute.names import PATCHING_EPSILON

    if args.patching_min_delta is not None and not PATCHING_EPSILON <= args.patching_min_delta < float("inf"):
        parser.error(f"--patching-min-delta must be a number of at least {PATCHING_EPSILON} (the difference below "
                     f"which a pair has no effect at all), got {args.patching_min_delta}")
    from precompute.names import PATCHING_EXPERIMENTS

    bad = [e for e in _split(args.patching) if e not in PATCHING_EXPERIMENTS]
    if bad:
        parser.error(f"--patching {bad[0]!r}: expected any of {', '.join(PATCHING_EXPERIMENTS)}")
    if args.answer_tokens is not None and len(_answer_tokens(args.answer_tokens)) != 2:
        parser.error(f"--answer-tokens {args.answer_tokens!r}: expected two tokens, positive then negative: yes,no")
    try:
        args.prompt_template = _template(args.prompt_template)
    except OSError as err:
        parser.error(f"--prompt-template {args.prompt_template!r}: cannot read the file ({err.strerror})")
    from precompute.conditions import AblationSpecError

    try:
        _request(args).check()
    except AblationSpecError as err:
        parser.error(str(err))
    from precompute import evaluation
    from precompute.analyses import significance

    try:
        evaluation.parse_measures(_split(args.measures) or ("",))
        significance.resolve_scopes(_split(args.eval_scopes), args.candidates)
    except ValueError as err:
        parser.error(str(err))


def _answer_tokens(value: str) -> tuple[str, ...]:
    """'yes,no' -> ('yes', 'no'); spaces inside an item are kept (' yes, no' -> (' yes', ' no'))."""
    return tuple(v for v in value.split(",") if v.strip())


def _template(value: str | None) -> str | None:
    """The template text; ``@FILE`` reads it from FILE (trailing newline dropped)."""
    if value is None or not value.startswith("@"):
        return value
    return Path(value[1:]).read_text().rstrip("\n")


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(v.strip() for v in (value or "").split(",") if v.strip())


def _request(args):
    from precompute.conditions import AblationRequest

    return AblationRequest(
        sets=_split(args.ablations), modes=_split(args.ablation_mode), layers=_split(args.ablation_layers),
        groups=tuple(args.ablation_group), sweep=_split(args.ablation_sweep), heads=_split(args.ablation_heads),
        component_mode=args.component_mode, components=_split(args.ablation_components),
        subspace_heads=args.subspace_heads, subspace_k=args.subspace_k, subspace_ops=_split(args.subspace_ops),
    )


def config_from_args(args):
    from precompute.config import JobConfig

    return JobConfig(
        dataset=args.dataset, model=args.model, out=args.out, store=args.store, cache=args.cache,
        easy_negatives=args.easy_negatives, seed=args.seed, candidates=args.candidates, depth=args.depth,
        max_queries=args.max_queries, max_length=args.max_length, batch_size=args.batch_size,
        batch_tokens=args.batch_tokens, chunk_size=args.chunk_size, device=args.device, dtype=args.dtype, progress=not args.no_progress,
        ablations=tuple(s for s in _split(args.ablations) if s != "none"), ablation_modes=_split(args.ablation_mode),
        ablation_layers=_split(args.ablation_layers), ablation_groups=tuple(args.ablation_group),
        ablation_sweep=_split(args.ablation_sweep), ablation_heads=_split(args.ablation_heads),
        ablation_stack=args.ablation_stack, ablation_kernel=args.ablation_kernel, measures=_split(args.measures),
        eval_scopes=_split(args.eval_scopes) or None, component_mode=args.component_mode,
        ablation_components=_split(args.ablation_components), subspace_heads=args.subspace_heads,
        subspace_k=args.subspace_k, subspace_ops=_split(args.subspace_ops), patching=_split(args.patching),
        patching_pairs=args.patching_pairs, patching_method=args.patching_method, patching_top=args.patching_top,
        patching_score=args.patching_score, patching_min_delta=args.patching_min_delta,
        patching_graddrop=args.patching_graddrop, prompt_template=args.prompt_template,
        answer_tokens=_answer_tokens(args.answer_tokens) if args.answer_tokens else None,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _check(args, parser)
    from precompute.datasets import DatasetError
    from precompute.console import log
    from precompute.job import run
    from precompute.families.loading import ModelError
    from precompute.store.writer import StoreError

    from precompute.distributed import RankFailure, World

    cfg = config_from_args(args)
    if World.from_env().distributed:  # a launcher that ends the job (torchrun after a rank failed) sends SIGTERM
        signal.signal(signal.SIGTERM, _stopped_by_launcher)
    try:
        root = run(cfg)
    except (DatasetError, ModelError, StoreError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except RankFailure as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted: finished parts are kept; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # a bug: one line for the user, the traceback kept for the report
        print(f"error: unexpected {type(err).__name__}: {_first_line(err)} (a bug; the traceback is in "
              f"{_save_traceback(cfg.cache)}); finished parts are kept, run the same command again to resume",
              file=sys.stderr)
        return EXIT_FAILED
    if World.from_env().leader:
        log(f"store ready: {root}  (open it: duckdb -readonly {root / 'atlas.duckdb'})")
    return EXIT_OK


def _stopped_by_launcher(signum, frame) -> None:
    from precompute.distributed import RankFailure

    raise RankFailure("stopped by the launcher (another rank failed or the job was cancelled); finished parts are "
                      "kept, rerun the same command to resume")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else "no message"


def _save_traceback(cache: Path) -> Path:
    """Write the current exception's traceback to ``<cache>/last-error.txt`` (or the temp folder when the cache
    cannot be written) and return where it went."""
    import tempfile
    import traceback

    text = traceback.format_exc()
    for folder in (Path(cache), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "last-error.txt").write_text(text)
            return folder / "last-error.txt"
        except OSError:
            continue
    return Path("(nowhere: no writable folder)")
