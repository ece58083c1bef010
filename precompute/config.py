"""The job's settings: every flag of ``python -m precompute``, declared once as a field of :class:`JobConfig`.

Each field's :func:`~precompute.settings.setting` says its flag, help, argument group, value kind, default and
whether it is part of the run identity; :mod:`precompute.settings` explains what is generated from it (the parser,
the manifest's identity and settings, the ablation request, the rerun command). The ablation flags' defaults are
the :class:`~precompute.conditions.AblationRequest`'s own (the request is the grammar those flags feed).

Imports nothing heavy (no torch, no pyarrow): ``--help`` reads it; the checks that need ir_measures import it when
they run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from precompute import settings as S
from precompute.conditions import KERNELS, AblationRequest, check_sets, help_text, ids_help, sets_help
from precompute.conditions import contrasts as C
from precompute.conditions.component_specs import COMPONENT_MODES
from precompute.evaluation import DEFAULT_MEASURES
from precompute.names import PATCHING_EPSILON, PATCHING_EXPERIMENTS, PATCHING_METHODS, PATCHING_SCORES
from precompute.pairs import CANDIDATES_EXPECTED, is_candidate_source, split_depth

DEFAULT_MODEL = "castorini/monobert-large-msmarco"
_REQUEST = AblationRequest()  # the defaults of the ablation flags

# Argument groups of --help, in order: name -> description (None: none).
# A group's description, or a function of none giving it (read when the parser is built, so kinds registered
# after import are listed).
ARGUMENT_GROUPS: dict[str, str | Callable[[], str] | None] = {
    "data": None,
    "model": None,
    "ablations": lambda: ("Re-score every pair with something removed inside the forward pass (one model load serves "
                          "every condition).\nCondition ids (<layers>: all, 0-5 or 3):\n" + ids_help() + "\n" + help_text()),
    "activation patching": "The corrupted input run with one activation replaced by the clean run's; effect = "
                           "(patched - corrupted) / (clean - corrupted), per layer x component x segment and per "
                           "layer x head (table patching_effects), exactly or to first order (attribution patching, "
                           "AtP*), summarised robustly with intervals over queries (patching_summary). "
                           "docs/patching.md.",
    "output": None,
}


def _model_help() -> str:
    """The --model help, naming every family (read when --help is printed: the families import torch)."""
    from precompute.families import supported

    return ("Hugging Face id or local folder of a reranker of a supported family (README, Model families); the "
            f"family is read from its config: {supported()}")


@dataclass
class JobConfig:
    # -- what is run: the dataset, the model, the pairs
    dataset: str = S.setting(
        "dl20", S.text(), flag="--dataset", group="data", identity=True, shown=True,
        identity_doc="The dataset's source: absolute path of a local folder, else the ir_datasets id.",
        help="dl19 or dl20 (ir_datasets msmarco-passage/trec-dl-20XX/judged), any ir_datasets id with queries, docs and "
             "qrels, or a local folder with queries.tsv, docs.tsv, qrels.txt and optional runs/*.trec (e.g. "
             "../shared/data/trec-dl-2020)")
    model: str = S.setting(
        DEFAULT_MODEL, S.text(), flag="--model", group="model", identity=True, shown=True,
        identity_doc="The model: absolute path of a local folder, else the Hugging Face id (of a PEFT adapter: the "
                     "adapter's; its base in base_model).", help=_model_help)
    revision: str | None = S.setting(
        None, S.text(), flag="--revision", group="model", identity=True, metavar="REV",
        help="branch, tag or commit of a Hugging Face --model (and of its tokenizer), so a rerun scores with the same "
             "weights; the commit it resolved to is recorded as model.revision")
    base_model: str | None = S.setting(
        None, S.text(), flag="--base-model", group="model", identity=True, metavar="ID_OR_DIR",
        identity_doc="The base model a PEFT adapter --model was applied to (absolute path of a local folder, else the "
                     "Hugging Face id); null for a model that is not an adapter.",
        help="the base model of a PEFT adapter --model (a folder or id with adapter_config.json, e.g. RankLLaMA's "
             "LoRA): a local copy of it; default: the base_model_name_or_path its adapter_config.json names")
    trust_remote_code: bool = S.setting(
        False, S.switch(), flag="--trust-remote-code", group="model",  # a permission: the numbers are the model's
        help="let a model whose config names classes of its own (auto_map: jina-reranker, gte-multilingual-reranker) "
             "run the Python in its files; without it such a model is refused. Give it only for files you trust")
    easy_negatives: int = S.setting(
        20, S.integer(low=0), flag="--easy-negatives", group="data", identity=True, metavar="K",
        help="random passages per query drawn from other queries' candidates, never judged for the query (grade -1)")
    seed: int = S.setting(
        0, S.integer(), flag="--seed", group="data", identity=True,
        help="seed of the easy-negative draw (per query, so --max-queries keeps each query's negatives) and of the cls "
             "patching pairs")
    candidates: str | None = S.setting(
        None, S.text(expected=CANDIDATES_EXPECTED, check=is_candidate_source,
                     malformed=("bm25", "run:", "scoreddocs:0", "scoreddocs:x")),
        flag="--candidates", group="data", identity=True, metavar="SOURCE",
        identity_doc="The candidate source: run:NAME as given, run:PATH with the file's absolute path, scoreddocs; "
                     "null for the judged set.",
        help="take the pairs from a first-stage ranking's top --depth instead of the judged set (needed for nDCG over "
             "a realistic ranking): run:NAME (runs/NAME.trec of a dataset folder, e.g. run:bm25), run:PATH (any TREC "
             "run file, e.g. run:/runs/bm25.trec) or scoreddocs (the ranking an ir_datasets dataset ships, e.g. the "
             "official BM25 top-1000 of dl19/dl20; scoreddocs:K = --depth K)")
    depth: int = S.setting(
        100, S.integer(low=1), flag="--depth", group="data", identity=True, needs="candidates",
        identity_doc="--depth of the candidate run; null without --candidates.",
        help="top-k of the run with --candidates")
    max_queries: int | None = S.setting(
        None, S.integer(low=1), flag="--max-queries", group="data", identity=True,
        identity_doc="--max-queries, or null for every judged query.",
        help="only the first N judged queries (quick runs)")
    # -- model
    prompt_template: str | None = S.setting(
        None, S.text_or_file(), flag="--prompt-template", group="model", identity="template",
        identity_doc="--prompt-template of a template family as given (the text of an @FILE); null = the family's "
                     "default (the template used is model.template).",
        help="input template of template families (MonoT5, decoder rerankers) with {query} and {document} (and "
             "{bos}/{eos} for the tokenizer's special tokens); @FILE reads it from a file. Default: the family's own "
             "(see README, Model families)")
    answer_tokens: tuple[str, str] | None = S.setting(
        None, S.pair(expected="two tokens, positive then negative: yes,no"), flag="--answer-tokens", group="model",
        identity=True, metavar="YES,NO",
        identity_doc="--answer-tokens of a generative reranker as given; null = the family's default (the tokens used "
                     "are model.answer_tokens).",
        help="generative rerankers: the positive and negative answer tokens, each a single token (a leading space "
             "counts: ' yes, no' keeps it on yes). Default: the family's own (true,false for MonoT5; yes,no for "
             "Qwen3-Reranker style)")
    max_length: int = S.setting(
        512, S.integer(low=1), flag="--max-length", group="model", identity=True,
        help="max tokens per pair; only the document is truncated (truncated pairs are flagged)")
    batch_size: int = S.setting(
        32, S.integer(low=1), flag="--batch-size", group="model", identity=True,
        help="pairs per forward pass (length-sorted batches; fixes the float summation order)")
    batch_tokens: int | None = S.setting(
        None, S.integer(low=1), flag="--batch-tokens", group="model", identity=True,
        identity_doc="--batch-tokens: most padded tokens per forward pass; null = --batch-size pairs whatever their "
                     "length.",
        help="also cap each forward pass at N padded tokens (pairs x the batch's longest pair): batch size follows the "
             "sequence lengths, so long templated pairs of a decoder reranker do not run out of memory while short "
             "ones fill --batch-size. Default: no cap")
    device: str = S.setting(
        "auto", S.choice(("auto", "cpu", "cuda")), flag="--device", group="model",
        help="auto = cuda when a GPU is visible")
    dtype: str = S.setting(
        "auto", S.choice(("auto", "float32", "bfloat16", "float16")), flag="--dtype", group="model", identity=True,
        help="auto = bfloat16 on GPU, float32 on CPU; summaries are always reduced in float32")
    # -- ablations (not part of the identity: conditions accumulate in the folder and a rerun computes only the
    #    missing ones; kernel and stack stay those of the folder)
    ablations: tuple[str, ...] = S.setting(
        _REQUEST.sets, S.items(normalise=check_sets, empty="none", metavar="SETS", malformed=("bogus", "none,groups")),
        flag="--ablations", group="ablations", request="sets",
        help=sets_help)
    ablation_modes: tuple[str, ...] = S.setting(
        _REQUEST.modes, S.items(metavar="MODE", malformed=("bogus",)), flag="--ablation-mode", group="ablations",
        request="modes",
        help="zero: set the removed post-softmax weights to 0, no renormalisation (the paper's); mask: remove them "
             "before the softmax (a row left with nothing outputs zeros); zero,mask: both")
    ablation_layers: tuple[str, ...] = S.setting(
        _REQUEST.layers, S.items(metavar="SPECS", malformed=("x", "5-2")), flag="--ablation-layers", group="ablations",
        request="layers",
        help="layers the directions and groups are removed at: all, a range 0-5, a layer 3; several specs "
             "comma-separated give one condition each (all,0-2,3-5)")
    ablation_groups: tuple[str, ...] = S.setting(
        _REQUEST.groups, S.repeated(lambda v: None, metavar="[NAME=]DIRS", malformed=("bogus", "x=q_q_q")),
        flag="--ablation-group", group="ablations", request="groups",
        help="a user group, repeatable: NAME=Q->D,D->Q or q_d,d_q (named q_d+d_q); accepts q_d, Q->D, "
             "Query->Document, Q<->D, wildcards *->CLS and q_*, and group names. Computed whenever given")
    ablation_sweep: tuple[str, ...] = S.setting(
        _REQUEST.sweep, S.items(metavar="TARGETS", malformed=("bogus",)), flag="--ablation-sweep", group="ablations",
        request="sweep",
        help="directions or groups swept layer by layer by the 'layers' set (n_layers conditions each)")
    ablation_heads: tuple[str, ...] = S.setting(
        _REQUEST.heads, S.items(metavar="HEADS", malformed=("x.y", "3")), flag="--ablation-heads", group="ablations",
        request="heads",
        help="heads zeroed one at a time by the 'heads' set: all, or LAYER.HEAD items with * wildcards (3.5,4.0 or "
             "3.* or *.0)")
    ablation_stack: int = S.setting(
        1, S.integer(low=1), flag="--ablation-stack", group="ablations", metavar="K",
        help="conditions sharing a forward pass (each forward holds batch-size/K pairs x K conditions); fixed for a "
             "run folder")
    ablation_kernel: str = S.setting(
        "auto", S.choice(KERNELS), flag="--ablation-kernel", group="ablations",
        help="auto: sdpa where it computes the model family's attention exactly, else eager; sdpa: fused "
             "scaled_dot_product_attention; eager: the summary pass's attention function (bit-identical baseline, "
             "slower); fixed for a run folder")
    ablation_components: tuple[str, ...] = S.setting(
        _REQUEST.components, S.items(metavar="SPECS", malformed=("bogus", "mlp@x/mean")), flag="--ablation-components",
        group="ablations", request="components",
        help="component conditions computed whenever given: mlp|attn@LAYERS[:SEGMENT]/zero|mean, comma-separated "
             "(mlp@3:d/mean = layer 3's MLP output at document tokens replaced by its mean)")
    component_mode: str = S.setting(
        _REQUEST.component_mode, S.choice(COMPONENT_MODES), flag="--component-mode", group="ablations",
        request="component_mode",
        help="mode of the 'components' set (every layer x {mlp, attn} x {all tokens, cls, q, d}): zero, or mean (the "
             "block's mean output over the run's pairs, per layer and segment; stored in component_means)")
    subspace_heads: str = S.setting(
        _REQUEST.subspace_heads, S.text(malformed=("bogus", "top:0")), flag="--subspace-heads", group="ablations",
        request="subspace_heads", metavar="HEADS",
        help="heads of the 'subspace' set: top:N (largest lower bound of the query-level effect of q_d, relevant vs "
             "easy negatives, in head_contrasts: its 95% bootstrap interval over queries) or LAYER.HEAD items (3.5,4.1)")
    subspace_k: str = S.setting(
        _REQUEST.subspace_k, S.text(malformed=("bogus", "0", "1,x")), flag="--subspace-k", group="ablations",
        request="subspace_k", metavar="KS",
        help="top singular components of each head's W_Q W_K^T removed or scaled: a range (1-4) or a list (1,2,8)")
    subspace_ops: tuple[str, ...] = S.setting(
        _REQUEST.subspace_ops, S.items(metavar="OPS", malformed=("bogus", "scale=nan", "scale=-1")),
        flag="--subspace-ops", group="ablations", request="subspace_ops",
        help="what is done to them: remove and/or scale=F")
    measures: tuple[str, ...] = S.setting(
        DEFAULT_MEASURES, S.items(metavar="MEASURES", malformed=("bogus", "nDCG@0")), flag="--measures",
        group="ablations",
        help="ir_measures names evaluated per query for every condition, comma-separated (nDCG@10,RR@10,nDCG@20)")
    eval_scopes: tuple[str, ...] | None = S.setting(
        None, S.items(metavar="SCOPES", malformed=("bogus", "run")), flag="--eval-scopes", group="ablations",
        help="pairs ranked per query: pairs (all; easy negatives non-relevant), judged (judged pairs only), run (the "
             "run's candidates, with --candidates). Default: pairs, plus run with --candidates")
    contrasts: tuple[str, ...] = S.setting(
        (C.DEFAULT_CONTRASTS,), S.items(normalise=C.normalise, metavar="A:B,...", malformed=("q_d", "a:b:c", "a:")),
        flag="--contrasts", group="ablations",
        help="pairs of conditions the report and the Ablations page compare directly, query by query (paired t-test "
             "of the measure, bootstrap intervals of the ranking statistics): condition names over all layers or "
             "condition ids, e.g. q_d:d_q,cross:all. Q->D vs D->Q (q_d:d_q) is always compared. Computed from the "
             "stored scores when read, so a later report can name others")
    # -- activation patching
    patching: tuple[str, ...] = S.setting(
        (), S.items(allowed=PATCHING_EXPERIMENTS, metavar="EXPERIMENTS"), flag="--patching", group="activation patching",
        help="comma-separated: tfc1 (a query term vs a filler of as many tokens inserted at the passage's start), "
             "tfc2 (the term twice vs the term and a filler), stmc1 (a word related to the term vs a filler), cls "
             "(relevant vs hard negative of a query, patched at the pooling position)")
    patching_pairs: int = S.setting(
        10, S.integer(low=1), flag="--patching-pairs", group="activation patching", metavar="K",
        help="input pairs per query of every experiment, drawn with --seed (cls: (relevant, hard) combinations)")
    patching_method: str = S.setting(
        "both", S.choice(PATCHING_METHODS), flag="--patching-method", group="activation patching",
        help="exact (a forward pass per patched activation), attribution (first-order estimates of every activation "
             "from one backward pass per batch, AtP*), both (attribution everywhere, exact for the --patching-top "
             "heads: their agreement is measured on every run)")
    patching_top: int = S.setting(
        10, S.integer(low=1), flag="--patching-top", group="activation patching", metavar="N",
        help="heads patched exactly per experiment under --patching-method both (the top N by attribution's ratio of "
             "sums, lower bound)")
    patching_score: str = S.setting(
        "logit", S.choice(PATCHING_SCORES), flag="--patching-score", group="activation patching",
        help="the scale scores are patched on: logit (the relevance logit, or the log-odds of relevance of two-label "
             "and answer-token models) or probability (of relevance, as MechIR)")
    patching_min_delta: float | None = S.setting(
        None, S.number(low=PATCHING_EPSILON), flag="--patching-min-delta", group="activation patching", metavar="D",
        help="pairs with |clean - corrupted| below D are left out of the thresholded mean (and counted). Default: "
             "0.05 on the logit scale (odds moved by 5%%), 0.0125 on the probability scale (docs/patching.md)")
    patching_graddrop: bool = S.setting(
        False, S.switch(), flag="--patching-graddrop", group="activation patching",
        help="add AtP*'s GradDrop score (a guard against cancelling paths) to attribution rows: one more backward "
             "pass per layer")
    # -- output
    out: Path | None = S.setting(
        None, S.folder(), flag="--out", group="output", help="run folder (default: <store>/<dataset>__<model>)")
    store: Path = S.setting(
        Path("data/store"), S.folder(), flag="--store", group="output", help="store root holding one folder per run")
    cache: Path = S.setting(
        Path("data/cache"), S.folder(), flag="--cache", group="output",
        help="the job's own cache (doc lookup index); dataset folders are never written to")
    chunk_size: int = S.setting(
        256, S.integer(low=1), flag="--chunk-size", group="output", identity=True,
        help="pairs per resumable part")
    progress: bool = S.setting(
        True, S.switch(), flag="--no-progress", group="output", help="no progress bars (logs, CI)")
    # Stages, run in this order (precompute.stages.STAGES): patching last, ablations before it (component means must
    # precede the ablations that use them; the others need no scores). Not a flag: tests run fewer.
    stages: tuple[str, ...] = ("summaries", "spectra", "contrasts", "component_means", "ablations", "patching")

    def __post_init__(self) -> None:
        """``--candidates scoreddocs:K`` is ``--candidates scoreddocs --depth K`` (one identity for one run)."""
        source, depth = split_depth(self.candidates)
        if depth is None:
            return
        default = next(s.default for s in self.settings() if s.name == "depth")
        if self.depth not in (default, depth):
            raise ValueError(f"--candidates {self.candidates} gives the depth {depth} but --depth gives {self.depth}; "
                             "give one of them")
        self.candidates, self.depth = source, depth

    def check(self) -> None:
        """The checks that need every setting together or a vocabulary beyond the flag's own syntax, without a model
        (layer and head numbers are checked against the model once it is loaded): ValueError, one line naming the
        flag."""
        from precompute import evaluation
        from precompute.analyses import significance

        AblationRequest.from_config(self).check()
        try:
            evaluation.parse_measures(self.measures)
        except ValueError as err:
            raise ValueError(f"--measures {','.join(self.measures)!r}: {err}") from None
        significance.resolve_scopes(self.eval_scopes, self.candidates)

    @classmethod
    def settings(cls) -> tuple[S.Setting, ...]:
        """Every declared setting, in declaration order (the order of --help and of rerun commands)."""
        return S.declared(cls)


def rerun_command(values: Mapping[str, Any], out: Path | str, **changes: Any) -> str:
    """The command that runs the job of ``values`` (settings by field name, e.g. ``Manifest.job_settings()``) again
    into the run folder ``out``, with ``changes`` replacing settings: ``python -m precompute``, every setting that
    differs from its default (the dataset, the model and the changed ones always), ``--out out``; shell-quoted. Run on
    an unfinished folder it resumes it; on a finished one it computes only what ``changes`` add."""
    return S.rerun_command(JobConfig, {**values, **changes}, out, leave_out=("out", "store"), show=tuple(changes))
