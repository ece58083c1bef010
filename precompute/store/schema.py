"""The store's schema as code: every table, every column, its Arrow type and its meaning.

Writers validate against these schemas, ``docs/store.md`` is checked against them by a test,
and ``SCHEMA_VERSION`` guards readers: bump it whenever a column changes meaning or type. Over 350 lines on
purpose: declarations only, every table in one place so that the docs and the app read one contract.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from precompute.metrics import METRICS, SUMMARY_METRICS
from precompute.names import SEGMENTS

SCHEMA_VERSION = 9
# Versions this checkout reads. Version 2 added decoder_cross_attention, made the summary metrics nullable (NULL
# where a metric is undefined: directions a causal model cannot attend, empty template segments) and the model
# family to the manifest; a version-1 store is a version-2 store without NULLs or the new table. Version 3 stores a
# condition's parts as columns of ablation_conditions and ablation_summary (kind, analysis, directions, component,
# segment, k, operation, factor), component ids in their documented form (mlp@3:d/mean, not mlp:d@3/mean) and the
# baseline's analysis as NULL; precompute.store.connect derives those columns for stores of versions 1 and 2.
# Version 4 (issue 19): patching_effects.method and .graddrop, patching_pairs' qid and how each input was built, the
# materialised patching_summary, and component 'resid' of patching_effects is the stream entering a layer (it was
# the layer's output: precompute.store.connect shows older rows as the same activation under the new names).
# Version 5 (issue 22): head_attention is one file per layer (head_attention/layer=L/data.parquet) and the job stores
# subspace_effects; stores of versions 1 to 4 hold head_attention as one file and no subspace_effects (its view
# computes it). Readers tell the layouts apart by what is on disk; the version tells an older reader, which would
# find no head_attention.parquet, that the store is newer than it.
# Version 6 (issue 18): head_contrasts tests over queries (n_queries, effect and its interval, effect_dz, t, paired p
# and p_holm), the pooled Mann-Whitney p moved to pooled_p, contrast 'hard_vs_easy'; connect shows older
# head_contrasts in this form with the query-level columns NULL (no stars from pooled tests).
# Version 7 (issue 18): the 25 value-weighted shares vw_<src>_<dst> (metrics.VALUE_WEIGHTED) in head_attention,
# head_attention_agg (their sums and sums of squares) and subspace_head_metrics, and as metrics of head_contrasts and
# subspace_effects; connect shows older stores' tables with those columns NULL.
# Version 8 (issue 22): patching_summary.n_null and .sd, the moments the Patching page shows for the whole run, so that
# no page scans patching_effects unsliced; connect shows older stores' patching_summary with them NULL, and the reader
# then computes them from the effects as before.
# Version 9 (issue 22): head_attention_totals, head_attention_agg summed over queries, so that a view of every query
# (the Directions page's matrix: 0.47 s over 2,000 queries x 384 heads) reads a few thousand rows; older stores get a
# view of the same name computing it from head_attention_agg.
READABLE_SCHEMA_VERSIONS: tuple[int, ...] = (1, 2, 3, 4, 5, 6, 7, 8, 9)


# The store's Arrow types as DuckDB names them (casts in merges, the partition column of a Hive-style folder).
_DUCK_TYPES = {
    pa.int8(): "TINYINT",
    pa.int16(): "SMALLINT",
    pa.int32(): "INTEGER",
    pa.int64(): "BIGINT",
    pa.float32(): "FLOAT",
    pa.float64(): "DOUBLE",
    pa.string(): "VARCHAR",
    pa.bool_(): "BOOLEAN",
}


def duck_type(t: pa.DataType) -> str:
    """DuckDB's name of a store column type (lists as lists of their element type)."""
    return f"{duck_type(t.value_type)}[]" if pa.types.is_list(t) else _DUCK_TYPES[t]


# Value ranges a column's values must lie in (inclusive; None = unbounded on that side). Declared once here, checked
# by precompute.store.integrity.verify wherever a file is verified (the job's reads and the app's opening of a run).
UNIT = (0.0, 1.0)  # attention masses, shares and weights; probabilities
COUNT = (0, None)  # counts, indices and ids


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    doc: str
    nullable: bool = False
    bounds: tuple[float | None, float | None] | None = None  # (low, high): see UNIT, COUNT


@dataclass(frozen=True)
class Table:
    name: str
    grain: str
    columns: tuple[Column, ...]
    sort_key: tuple[str, ...]
    doc: str
    internal: bool = False  # a table of resumable parts only, merged into a public one; not in docs/store.md
    row_groups_by: tuple[str, ...] = ()  # sort-key columns a row group never straddles (one head per row group)
    row_group_rows: int = 122_880  # rows per row group at most (DuckDB's row-group size)
    # The first sort-key column, when the table is a folder of one file per value of it (Hive style,
    # <table>/<column>=<value>/data.parquet: precompute.store.layout) rather than one file.
    partition_by: str | None = None

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, c.type, nullable=c.nullable, metadata={"doc": c.doc}) for c in self.columns],
            metadata={"table": self.name, "schema_version": str(SCHEMA_VERSION)},
        )

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def bounds(self) -> dict[str, tuple[float | None, float | None]]:
        """Column -> (low, high) for the columns whose values the schema bounds."""
        return {c.name: c.bounds for c in self.columns if c.bounds is not None}


PAIRS = Table(
    name="pairs",
    grain="one row per query-passage pair",
    sort_key=("pair_id",),
    doc="The query-passage pairs the model scored, with their judgments and the model's relevance score.",
    columns=(
        Column("pair_id", pa.int32(), "Pair number, 0-based: queries in dataset order; within a query relevant, hard, easy, each by docid (with --candidates: run candidates by rank, then easy). Joins every other table.", bounds=COUNT),
        Column("qid", pa.string(), "Query id (official TREC/MS MARCO id)."),
        Column("docid", pa.string(), "Passage id (official MS MARCO passage id)."),
        Column("query", pa.string(), "Query text."),
        Column("doc", pa.string(), "Passage text (before truncation)."),
        Column("grade", pa.int8(), "NIST relevance grade 0-3; -1 when the passage was never judged for this query."),
        Column("neg_type", pa.string(), "'relevant' (grade >= 1), 'hard' (judged grade 0), 'easy' (random passage from "
               "other queries' candidates), 'unjudged' (run candidate with no judgment; only with --candidates run:NAME)."),
        Column("score", pa.float32(), "The model's relevance score (what each family scores: the manifest's "
               "model.score): the logit of one-label classifiers (cross-encoders, decoder classifiers); the "
               "log-probability of the positive class for two-label classifiers (MonoBERT); for generative rerankers "
               "the log-softmax over the two answer tokens of the positive one (MonoT5: 'true' vs 'false' at the "
               "first decoder step; yes/no rerankers: 'yes' vs 'no' at the last token; --answer-tokens)."),
        Column("q_tokens", pa.int16(), "Number of query tokens (segment Q).", bounds=COUNT),
        Column("d_tokens", pa.int16(), "Number of document tokens kept after truncation (segment D).", bounds=COUNT),
        Column("d_tokens_full", pa.int32(), "Number of document tokens before truncation.", bounds=COUNT),
        Column("truncated", pa.bool_(), "True when the document was cut to fit max_length (only the document is ever cut)."),
        Column("q_exact_tokens", pa.int16(), "Query tokens whose token id occurs among the kept document tokens.", bounds=COUNT),
        Column("d_exact_tokens", pa.int16(), "Kept document tokens whose token id occurs in the query (the tokens q_d_exact covers).", bounds=COUNT),
        Column("run_rank", pa.int16(), "1-based rank in the candidate run (--candidates run:NAME); NULL for pairs not taken from a run.", nullable=True,
               bounds=(1, None)),
        Column("run_score", pa.float32(), "Score in the candidate run; NULL for pairs not taken from a run.", nullable=True),
    ),
)

HEAD_ATTENTION = Table(
    name="head_attention",
    grain="one row per pair x layer x head",
    sort_key=("layer", "head", "pair_id"),
    row_groups_by=("layer", "head"),  # a head's rows in row groups of their own: per-head queries read only those
    # A head of up to 65,536 pairs is one row group; a larger head spans several, all its own. Not larger: looking up
    # one pair on every head (the Pair explorer) decodes one row group per head: on a 7.5e7-row file (one thread)
    # 1.15 s at 196,608-row groups against 0.45 s at 65,536; on 3e8 rows (bench/app.py) 4.2 s at 10^6 (one thread)
    # against 0.96 s (two). Per-head scans read the same bytes either way, plus more row-group statistics.
    row_group_rows=65_536,
    # One file per layer (head_attention/layer=L/data.parquet): a query on some layers opens only their files, and
    # a query on one head checks the statistics of its layer's row groups, not of every row group of the run. On the
    # 3e8-row bench (bench/app.py, 4,608 row groups in one file) one head's count took 0.25 s in one file, 0.020 s
    # per layer and 0.005 s per (layer, head) file; per layer keeps the all-heads lookup of one pair on 24 files
    # (docs/store.md, Scale).
    partition_by="layer",
    doc="Per-head attention summaries over the five segments CLS, Q, SEP1, D, SEP2 (25 directions) and matching signals.",
    columns=(
        Column("pair_id", pa.int32(), "Pair (joins pairs.pair_id).", bounds=COUNT),
        Column("layer", pa.int8(), "Layer, 0-based.", bounds=COUNT),
        Column("head", pa.int8(), "Head within the layer, 0-based.", bounds=COUNT),
        *(Column(m.name, pa.float32(), m.doc + " NULL where undefined (see Segments and families).", nullable=True,
                 bounds=UNIT)
          for m in SUMMARY_METRICS),
    ),
)

HEAD_ATTENTION_AGG = Table(
    name="head_attention_agg",
    grain="one row per layer x head x qid x neg_type x grade",
    sort_key=("layer", "head", "qid", "neg_type", "grade"),
    # Written as the job sums it, one head at a time (precompute.stages.aggregate_stage); the writer holds one row group
    # of 66 columns (8 bytes each) until it is full, so this size bounds the job's memory while it writes the table.
    # At 122,880 rows that is 65 MB once a run has more than 120,000 rows (bench/memory.py's 10,000 pairs: 160,000);
    # at 16,384 rows 8.6 MB whatever the run (merge peak at 7,500 pairs: 419 -> 390 MB).
    row_group_rows=16_384,
    doc="Sums and sums of squares of every head_attention metric per (layer, head, query, negative type, grade). "
    "Means and variances of any slice come from it without scanning head_attention: "
    "mean = sum(<m>_sum) / sum(n), var = sum(<m>_sumsq) / sum(n) - mean^2.",
    columns=(
        Column("layer", pa.int8(), "Layer, 0-based.", bounds=COUNT),
        Column("head", pa.int8(), "Head, 0-based.", bounds=COUNT),
        Column("qid", pa.string(), "Query id."),
        Column("neg_type", pa.string(), "Pair kind, as pairs.neg_type."),
        Column("grade", pa.int8(), "Grade, as pairs.grade."),
        Column("n", pa.int32(), "Number of pairs in the group.", bounds=COUNT),
        *(Column(f"{m}_sum", pa.float64(), f"Sum of head_attention.{m} over the group; NULL where it is undefined.",
                 nullable=True, bounds=(0, None)) for m in METRICS),
        *(Column(f"{m}_sumsq", pa.float64(), f"Sum of squares of head_attention.{m} over the group; NULL where it "
                 "is undefined.", nullable=True, bounds=(0, None)) for m in METRICS),
    ),
)

HEAD_ATTENTION_TOTALS = Table(
    name="head_attention_totals",
    grain="one row per layer x head x neg_type x grade",
    sort_key=("layer", "head", "neg_type", "grade"),
    doc="head_attention_agg summed over queries (the same columns without qid), written with it by the job: a slice "
    "that names no queries (layers, heads, negative types, grades) reads its means and variances here, a few "
    "thousand rows whatever the number of queries. Stores of schema version 8 and older show a view of this name "
    "computing it from head_attention_agg.",
    columns=tuple(c for c in HEAD_ATTENTION_AGG.columns if c.name != "qid"),
)

_CONDITION_COLUMNS = (
    Column("condition_id", pa.string(), "Unique id of the ablation condition, as users type it in flags and SQL (see "
           "Condition kinds below): 'q_d@all/zero', 'cross@3/mask', 'head:3.5/zero', 'mlp@3:d/mean', "
           "'qk:3.5:k2/remove', 'none' for the unablated baseline (joins ablation_conditions). Stores of schema "
           "versions 1 and 2 hold component ids as 'mlp:d@3/mean'."),
    Column("condition", pa.string(), "What is removed: a direction (q_d = Query -> Document), a group name "
           "(see ablation_conditions.directions), 'head', 'mlp' or 'attn' (a component), 'qk' (a QK subspace), "
           "'none' for the baseline."),
    Column("mode", pa.string(), "How, the id's part after '/': 'zero' (post-softmax weights set to 0, not "
           "renormalised; the paper's) or 'mask' (removed before the softmax) for directions and groups; 'zero' for "
           "heads; 'zero' or 'mean' (replaced by component_means) for components; the operation for QK subspaces; "
           "'none' for the baseline."),
    Column("layers", pa.string(), "Layers the condition applies to: 'all', a range '0-5', a single layer '3'; "
           "'none' for the baseline."),
    Column("layer", pa.int8(), "The single layer of the condition (a per-layer sweep, a head, a component or "
           "subspace condition at one layer); NULL when several layers.", nullable=True, bounds=COUNT),
    Column("head", pa.int8(), "The head (head ablation, QK subspace); NULL otherwise.", nullable=True, bounds=COUNT),
)

# A condition's parts beyond those ablation_metrics repeats: the columns of ablation_conditions and ablation_summary.
_CONDITION_PARTS = (
    Column("kind", pa.string(), "The condition's kind (see Condition kinds below): 'baseline', 'direction', 'group', "
           "'layer_sweep', 'head', 'component' or 'subspace'."),
    Column("analysis", pa.string(), "The analysis the condition belongs to, its Holm family: 'attention' "
           "(directions, groups, layer sweeps, heads), 'components' (MLP and attention blocks), 'subspace' (QK "
           "subspaces); NULL for the baseline, which every family is tested against and which is tested in none.",
           nullable=True),
    Column("directions", pa.string(), "Comma-separated attention directions removed (e.g. 'q_d,d_q'); NULL for "
           "other kinds.", nullable=True),
    Column("component", pa.string(), "'mlp' or 'attn': the block whose output a component condition removes; NULL "
           "for other kinds.", nullable=True),
    Column("segment", pa.string(), "The segment whose tokens a component condition removes the block's output at "
           "(cls, q, sep1, d, sep2); NULL at every token and for other kinds.", nullable=True),
    Column("k", pa.int16(), "QK subspace: the top singular components of the head's W_Q W_K^T edited; NULL "
           "otherwise.", nullable=True, bounds=(1, None)),
    Column("operation", pa.string(), "QK subspace: 'remove' or 'scale=<f>' (as --subspace-ops); NULL otherwise.",
           nullable=True),
    Column("factor", pa.float64(), "QK subspace: what the components are multiplied by (0 = remove); NULL "
           "otherwise.", nullable=True, bounds=(0, None)),
    Column("alignments", pa.list_(pa.float32()), "Aligned QK subspace (kind subspace_aligned, 'qk:3.5:a2/remove'): "
           "the alignment u_k . v_k (svd.alignment) of each component removed or scaled, largest sigma_k * "
           "alignment_k first; NULL for every other kind and in stores before schema 4.", nullable=True),
)

ABLATION_CONDITIONS = Table(
    name="ablation_conditions",
    grain="one row per ablation condition",
    sort_key=("condition_id",),
    doc="Every ablation condition computed for the run (and the baseline 'none'), with its id's parts as columns.",
    columns=(*_CONDITION_COLUMNS, *_CONDITION_PARTS),
)

ABLATION_SCORES = Table(
    name="ablation_scores",
    grain="one row per condition x pair",
    sort_key=("condition_id", "pair_id"),
    doc="The model's score of every pair under every ablation condition.",
    columns=(
        Column("condition_id", pa.string(), "Condition (joins ablation_conditions)."),
        Column("pair_id", pa.int32(), "Pair (joins pairs.pair_id).", bounds=COUNT),
        Column("score", pa.float32(), "Relevance score under the ablation (same definition as pairs.score)."),
    ),
)

ABLATION_METRICS = Table(
    name="ablation_metrics",
    grain="one row per condition x scope x measure x query",
    sort_key=("condition_id", "scope", "measure", "qid"),
    doc="Per-query effectiveness (ir_measures) of the ranking each condition's scores induce.",
    columns=(
        *_CONDITION_COLUMNS,
        Column("scope", pa.string(), "Which pairs are ranked: 'pairs' (all pairs of the run; easy negatives count as "
               "non-relevant), 'judged' (judged pairs only), 'run' (the candidate run's pairs)."),
        Column("qid", pa.string(), "Query id."),
        Column("measure", pa.string(), "ir_measures name, e.g. 'nDCG@10'."),
        Column("value", pa.float64(), "The measure's value for this query."),
    ),
)

ABLATION_SUMMARY = Table(
    name="ablation_summary",
    grain="one row per condition x scope x measure",
    sort_key=("scope", "measure", "condition_id"),
    doc="Run-level effect of each condition: its parts (as ablation_conditions), mean over queries, delta to the "
    "baseline, paired two-sided t-test over queries, Holm-corrected across the run's conditions of the same analysis "
    "(per analysis, scope and measure).",
    columns=(
        *_CONDITION_COLUMNS,
        *_CONDITION_PARTS,
        Column("scope", pa.string(), "As ablation_metrics.scope."),
        Column("measure", pa.string(), "ir_measures name."),
        Column("n_queries", pa.int32(), "Queries the mean is over.", bounds=COUNT),
        Column("mean", pa.float64(), "Mean of the measure over queries under the condition."),
        Column("baseline", pa.float64(), "Mean of the measure over the same queries without ablation."),
        Column("delta", pa.float64(), "mean - baseline."),
        Column("t", pa.float64(), "Paired t statistic (condition vs baseline, per query); NULL if undefined.", nullable=True),
        Column("p", pa.float64(), "Two-sided p-value of the paired t-test; NULL if undefined (identical scores).", nullable=True,
               bounds=UNIT),
        Column("p_holm", pa.float64(), "p after Holm correction across the run's conditions of the same analysis (per "
               "scope and measure).", nullable=True, bounds=UNIT),
    ),
)

SVD = Table(
    name="svd",
    grain="one row per layer x head x singular value",
    sort_key=("layer", "head", "k"),
    doc="Spectrum of each head's query-key matrix W_Q^h (W_K^h)^T (d_model x d_model, rank <= head_dim); which part of "
    "the attention logit it describes for the run's family is the manifest's spectra.matrix.",
    columns=(
        Column("layer", pa.int8(), "Layer, 0-based.", bounds=COUNT),
        Column("head", pa.int8(), "Head, 0-based.", bounds=COUNT),
        Column("kv_head", pa.int8(), "The key head whose keys this (query) head meets: under grouped-query attention "
               "several heads share one (head // (heads / key heads)); equal to head otherwise. Absent from "
               "schema-version-1 stores.", bounds=COUNT),
        Column("k", pa.int16(), "Index of the singular value, 0 = largest.", bounds=COUNT),
        Column("sigma", pa.float32(), "k-th singular value of the unscaled W_Q^h (W_K^h)^T (the attention logit divides by sqrt(head_dim)).",
               bounds=(0, None)),
        Column("alignment", pa.float32(), "u_k . v_k: cosine between the k-th left and right singular vectors (1 = "
               "the head matches a direction with itself, the signature of a matching head).",
               bounds=(-1.0, 1.0)),
    ),
)

HEAD_CONTRASTS = Table(
    name="head_contrasts",
    grain="one row per layer x head x metric x contrast",
    sort_key=("contrast", "metric", "layer", "head"),
    doc="Matching-head statistics: how each head's summary metric differs between two kinds of pairs, query by query "
    "(the query is the unit: effect, interval and test are over queries), with pooled pair-level numbers kept as a "
    "description only. See 'Statistics' below.",
    columns=(
        Column("layer", pa.int8(), "Layer, 0-based.", bounds=COUNT),
        Column("head", pa.int8(), "Head, 0-based.", bounds=COUNT),
        Column("metric", pa.string(), "A head_attention metric column (e.g. 'q_d', 'q2d_max', 'q_d_exact')."),
        Column("contrast", pa.string(), "'relevant_vs_easy', 'relevant_vs_hard' or 'hard_vs_easy' (group a vs group b; "
               "names.CONTRASTS). Schema-version-4 and older stores have no 'hard_vs_easy'."),
        Column("n_queries", pa.int32(), "Queries with pairs of both groups: what effect, interval and test rest on. "
               "NULL in stores of schema version 5 and older (pooled tests only).", nullable=True, bounds=COUNT),
        Column("effect", pa.float64(), "Mean over those queries of (mean of the metric over the query's group-a "
               "pairs - the same over its group-b pairs). NULL in older stores.", nullable=True, bounds=(-1.0, 1.0)),
        Column("effect_low", pa.float64(), "Lower end of the 95% percentile bootstrap interval of effect, resampling "
               "queries (n_resamples, seeded with the run's seed).", nullable=True, bounds=(-1.0, 1.0)),
        Column("effect_high", pa.float64(), "Upper end of that interval.", nullable=True, bounds=(-1.0, 1.0)),
        Column("effect_dz", pa.float64(), "Standardised effect d_z = effect / sd of the per-query differences "
               "(ddof=1); NULL below 2 queries or when the sd is 0.", nullable=True),
        Column("t", pa.float64(), "Paired t statistic over queries (per-query group means), n_queries - 1 degrees of "
               "freedom; NULL where effect_dz is.", nullable=True),
        Column("p", pa.float64(), "Two-sided p-value of that paired t-test; NULL where untested. (Schema version 4 "
               "and older: read as pooled_p, and p is NULL.)", nullable=True, bounds=UNIT),
        Column("p_holm", pa.float64(), "p after Holm correction across all layers x heads x metrics of the contrast "
               "within the metric's family (the attention metrics; the value-weighted shares vw_*, schema 7, a family "
               "of their own); untested rows not counted. Stars need n_queries >= 10.", nullable=True, bounds=UNIT),
        Column("n_resamples", pa.int32(), "Bootstrap resamples behind effect_low and effect_high.", nullable=True,
               bounds=COUNT),
        Column("n_a", pa.int32(), "Pairs of group a in the run (pooled, descriptive).", bounds=COUNT),
        Column("n_b", pa.int32(), "Pairs of group b in the run (pooled, descriptive).", bounds=COUNT),
        Column("mean_a", pa.float64(), "Mean over group-a pairs, pooled across queries (descriptive).", bounds=UNIT),
        Column("mean_b", pa.float64(), "Mean over group-b pairs, pooled across queries (descriptive).", bounds=UNIT),
        Column("diff", pa.float64(), "mean_a - mean_b (pooled, descriptive).", bounds=(-1.0, 1.0)),
        Column("cohen_d", pa.float64(), "Cohen's d over pooled pairs (pooled standard deviation; descriptive: pairs of "
               "one query are not independent); NULL when both groups are constant.", nullable=True),
        Column("u", pa.float64(), "Mann-Whitney U statistic of group a over pooled pairs (descriptive).", bounds=(0, None)),
        Column("pooled_p", pa.float64(), "Two-sided Mann-Whitney p-value over pooled pairs, uncorrected: descriptive "
               "only, it treats pairs as independent; never starred.", nullable=True, bounds=UNIT),
    ),
)

DECODER_CROSS_ATTENTION = Table(
    name="decoder_cross_attention",
    grain="one row per pair x decoder layer x head (encoder-decoder families only: MonoT5)",
    sort_key=("layer", "head", "pair_id"),
    doc="Cross-attention of the decoder's scoring position (its first step) onto the encoder's five segments: the "
    "weight it gives each segment's tokens, summed. The five values of a row sum to 1.",
    columns=(
        Column("pair_id", pa.int32(), "Pair (joins pairs.pair_id).", bounds=COUNT),
        Column("layer", pa.int8(), "Decoder layer, 0-based.", bounds=COUNT),
        Column("head", pa.int8(), "Head within the layer, 0-based.", bounds=COUNT),
        *(Column(seg, pa.float32(), f"Summed cross-attention weight on the encoder's {seg} segment (meaning per "
                 "family in the manifest's model.segment_labels).", bounds=UNIT) for seg in SEGMENTS),
    ),
)

_COMPONENT = Column("component", pa.string(), "'attn' (the attention block's output projection) or 'mlp' (the MLP "
                    "block's output projection), before the block's residual add.")
_SEGMENT = Column("segment", pa.string(), "Segment of the tokens averaged: cls, q, sep1, d, sep2 (meaning per family "
                  "in the manifest's model.segment_labels).")

COMPONENT_MEANS = Table(
    name="component_means",
    grain="one row per layer x component x segment",
    sort_key=("layer", "component", "segment"),
    doc="Mean output of each layer's attention and MLP blocks over every token of a segment, across all the run's "
    "pairs: what mean-mode component ablations (mlp@3:d/mean) put in place of the removed output, stored so the "
    "ablation scores are reproducible.",
    columns=(
        Column("layer", pa.int8(), "Layer, 0-based.", bounds=COUNT),
        _COMPONENT,
        _SEGMENT,
        Column("tokens", pa.int64(), "Tokens averaged over (all pairs).", bounds=COUNT),
        Column("mean", pa.list_(pa.float32()), "The mean output vector (hidden size)."),
    ),
)

COMPONENT_SUMS = Table(
    name="component_sums",
    grain="one row per chunk x layer x component x segment",
    sort_key=("layer", "component", "segment"),
    doc="Per-chunk sums behind component_means (resumable parts).",
    internal=True,
    columns=(
        Column("layer", pa.int8(), "Layer.", bounds=COUNT),
        _COMPONENT,
        _SEGMENT,
        Column("tokens", pa.int64(), "Tokens summed.", bounds=COUNT),
        Column("sum", pa.list_(pa.float64()), "Sum of the output vectors."),
    ),
)

PATCHING_PAIRS = Table(
    name="patching_pairs",
    grain="one row per experiment x patch pair",
    sort_key=("experiment", "patch_id"),
    doc="The (clean, corrupted) inputs of each activation-patching experiment and how each was built "
    "(precompute/analyses/patching_inputs.py; docs/patching.md): tfc1 = a query term (clean) or a filler of as many "
    "tokens (corrupted) inserted at the passage's start; tfc2 = the term twice, or the term and a filler; stmc1 = a "
    "word related to the term (not a query word) or a filler; cls = a relevant passage (clean) against a hard "
    "negative (corrupted) of the same query.",
    columns=(
        Column("experiment", pa.string(), "'tfc1', 'tfc2', 'stmc1' or 'cls'."),
        Column("patch_id", pa.int32(), "The input pair within the experiment (joins patching_effects).", bounds=COUNT),
        Column("pair_id", pa.int32(), "The run's pair the corrupted input is (tfc1, tfc2, stmc1: the pair whose "
               "passage got the corrupted insert; cls: the hard negative). Joins pairs.", bounds=COUNT),
        Column("clean_pair_id", pa.int32(), "cls: the relevant pair (the clean input); NULL otherwise.", nullable=True,
               bounds=COUNT),
        Column("qid", pa.string(), "The query (the unit the summaries' intervals resample). Absent from stores of "
               "schema version 3 and older (join pairs on pair_id).", nullable=True),
        Column("term", pa.string(), "The query term the input is about (tfc1, tfc2, stmc1); NULL for cls.",
               nullable=True),
        Column("filler", pa.string(), "The filler word of the corrupted input (as many tokens as what it stands for); "
               "NULL for cls.", nullable=True),
        Column("clean_insert", pa.string(), "The words inserted at the start of the clean passage (tfc1: the term; "
               "tfc2: the term twice; stmc1: the related word); NULL for cls and in older stores.", nullable=True),
        Column("corrupted_insert", pa.string(), "The words inserted at the start of the corrupted passage (tfc1, "
               "stmc1: the filler; tfc2: the term and the filler); NULL for cls and in older stores.", nullable=True),
        Column("rule", pa.string(), "Why this term, filler and related word: 'the query's first content word', or "
               "which content word was taken and which earlier ones were skipped and why; stmc1 adds the related "
               "word's cosine; cls says what it pairs. NULL in older stores.", nullable=True),
        Column("similarity", pa.float32(), "stmc1: cosine between the related word's and the term's input embeddings "
               "(the term's tokens averaged); NULL otherwise.", nullable=True, bounds=(-1.0, 1.0)),
    ),
)

PATCHING_EFFECTS = Table(
    name="patching_effects",
    grain="one row per experiment x method x patch pair x layer x patched activation",
    sort_key=("experiment", "method", "layer", "component", "segment", "head", "patch_id"),
    doc="Activation patching: the corrupted input run with one activation replaced by the clean run's, computed "
    "exactly or to first order (attribution patching, AtP*). effect = (patched - corrupted) / (clean - corrupted), the "
    "share of the score difference the activation recovers; scores on the run's patching scale (manifest "
    "patching.score). Robust summaries per activation: patching_summary.",
    columns=(
        Column("experiment", pa.string(), "'tfc1', 'tfc2', 'stmc1' or 'cls' (see patching_pairs)."),
        Column("method", pa.string(), "'exact' (a forward pass with the activation patched) or 'attribution' (the "
               "first-order estimate (a_clean - a_corrupted) . d score / d a from the corrupted run's gradient, with "
               "AtP*'s QK fix for resid; patched = corrupted + estimate). Stores of schema version 3 and older hold "
               "exact rows only (the column reads 'exact')."),
        Column("patch_id", pa.int32(), "The input pair (joins patching_pairs).", bounds=COUNT),
        Column("pair_id", pa.int32(), "The run's pair the corrupted input is (joins pairs: neg_type, grade).", bounds=COUNT),
        Column("layer", pa.int8(), "Layer of the patched activation, 0-based.", bounds=COUNT),
        Column("head", pa.int8(), "The patched head (component 'head'); NULL for block components.", nullable=True,
               bounds=COUNT),
        Column("component", pa.string(), "'resid' (the residual stream entering the layer, TransformerLens' "
               "resid_pre), 'attn' and 'mlp' (the blocks' output projections, before their residual add), "
               "'resid_post' (the last layer's output, the stream the score is read from; last layer only), 'head' "
               "(one head's attention output before the output projection). In stores of schema version 3 and older "
               "'resid' was the layer's output: the reader shows those rows as 'resid' of the next layer (and "
               "'resid_post' of the last), which is the same activation."),
        Column("segment", pa.string(), "Where it is patched: 'all' tokens or one segment's (tfc1, tfc2, stmc1; the "
               "inputs align), 'cls' = the model's pooling position only (cls experiment)."),
        Column("clean", pa.float32(), "Score of the clean input."),
        Column("corrupted", pa.float32(), "Score of the corrupted input."),
        Column("patched", pa.float32(), "Score of the corrupted input with the activation patched in (attribution: "
               "corrupted + the first-order estimate)."),
        Column("effect", pa.float32(), "(patched - corrupted) / (clean - corrupted); NULL where |clean - corrupted| < "
               "1e-3 (precompute.analyses.patching.EPSILON).", nullable=True),
        Column("graddrop", pa.float32(), "attribution rows with --patching-graddrop: AtP*'s GradDrop score, the mean "
               "over dropped layers l of |estimate with the gradient through layer l's blocks dropped| (sum / (L - 1)); "
               "large where the plain estimate may hide cancelling paths. NULL otherwise.", nullable=True,
               bounds=(0, None)),
    ),
)

_INTERVAL = "bootstrap interval over queries (manifest patching.resamples resamples, seed patching.seed, percentile)"

PATCHING_SUMMARY = Table(
    name="patching_summary",
    grain="one row per experiment x method x layer x patched activation",
    sort_key=("experiment", "method", "layer", "component", "segment", "head"),
    doc="Patching effects summarised so that a near-zero score difference cannot dominate them "
    "(precompute/analyses/patching_ranking.py): median, ratio of sums and thresholded mean, each with a "
    f"{_INTERVAL}; the plain mean for comparison; heads ranked by the ratio of sums' lower bound. Written with "
    "patching_effects.",
    columns=(
        Column("experiment", pa.string(), "As patching_effects.experiment."),
        Column("method", pa.string(), "As patching_effects.method."),
        Column("layer", pa.int8(), "Layer, 0-based.", bounds=COUNT),
        Column("head", pa.int8(), "The head (component 'head'); NULL for block components.", nullable=True,
               bounds=COUNT),
        Column("component", pa.string(), "As patching_effects.component."),
        Column("segment", pa.string(), "As patching_effects.segment."),
        Column("n_queries", pa.int32(), "Queries the input pairs come from (the unit the intervals resample).",
               bounds=COUNT),
        Column("n_pairs", pa.int32(), "Input pairs.", bounds=COUNT),
        Column("n_excluded", pa.int32(), "Pairs with |clean - corrupted| below the min delta (manifest "
               "patching.min_delta, --patching-min-delta): left out of the thresholded mean only.", bounds=COUNT),
        Column("n_raised", pa.int32(), "Pairs where the corruption raised the score (corrupted > clean); kept in "
               "every statistic.", bounds=COUNT),
        Column("mean", pa.float64(), "Plain mean of the pairs' effects (pairs with an effect): shown for comparison, "
               "dominated by near-zero differences.", nullable=True),
        *(Column(f"{name}{part}", pa.float64(), f"{text}{suffix}", nullable=True)
          for name, text in (("median", "Median of the pairs' effects"),
                             ("ratio", "Ratio of sums: sum(patched - corrupted) / sum(clean - corrupted) over the pairs"),
                             ("tmean", "Mean effect over the pairs with |clean - corrupted| >= the min delta"))
          for part, suffix in (("", "."), ("_low", f": lower end of its {_INTERVAL}."),
                               ("_high", ": upper end of the same interval."))),
        Column("rank", pa.int16(), "Heads: rank within (experiment, method) by ratio_low, largest first (1 = the "
               "head whose recovered share is surely largest); NULL for block components.", nullable=True,
               bounds=(1, None)),
        Column("n_null", pa.int32(), "Input pairs whose effect is NULL (|clean - corrupted| < epsilon): out of mean, "
               "sd and median; n_pairs - n_null pairs have an effect (schema 8; NULL in older stores).",
               nullable=True, bounds=COUNT),
        Column("sd", pa.float64(), "Sample standard deviation of the pairs' effects (pairs with an effect; NULL "
               "below two): with mean and n_pairs - n_null, the whole run's pair-level moments, which the reader "
               "serves from here instead of scanning patching_effects (schema 8; NULL in older stores).",
               nullable=True),
    ),
)

SUBSPACE_HEAD_METRICS = Table(
    name="subspace_head_metrics",
    grain="one row per subspace condition x pair",
    sort_key=("condition_id", "pair_id"),
    doc="The summary metrics of a QK-subspace condition's own head (layer, head) on every pair, under the "
    "intervention; the same head's head_attention row is its value without it (their means: subspace_effects).",
    columns=(
        Column("condition_id", pa.string(), "A subspace condition, e.g. 'qk:3.5:k2/remove' (joins ablation_conditions)."),
        Column("pair_id", pa.int32(), "Pair (joins pairs.pair_id).", bounds=COUNT),
        Column("layer", pa.int8(), "The condition's layer.", bounds=COUNT),
        Column("head", pa.int8(), "The condition's head.", bounds=COUNT),
        *(Column(m.name, pa.float32(), f"{m.label} of the head under the intervention (head_attention.{m.name}).",
                 nullable=True, bounds=UNIT) for m in SUMMARY_METRICS),
    ),
)

SUBSPACE_EFFECTS = Table(
    name="subspace_effects",
    grain="one row per subspace condition x metric (metrics NULL on every pair have none)",
    sort_key=("condition_id", "metric"),
    doc="What each QK-subspace condition did to its own head, over the run's pairs: per metric, the mean with the "
    "intervention (subspace_head_metrics), without it (the head's head_attention rows) and the mean and standard "
    "deviation of the per-pair difference, over the pairs where both are defined. Written by the job with "
    "subspace_head_metrics (the same commit), so no page aggregates that table; stores written before it have a view "
    "of the same name and columns computing it (see Views).",
    columns=(
        Column("condition_id", pa.string(), "A subspace condition (joins ablation_conditions)."),
        Column("layer", pa.int8(), "The condition's layer.", bounds=COUNT),
        Column("head", pa.int8(), "The condition's head.", bounds=COUNT),
        Column("metric", pa.string(), "A head_attention metric column (e.g. 'q_d')."),
        Column("n", pa.int64(), "Pairs where the metric is defined with and without the intervention.", bounds=COUNT),
        Column("mean", pa.float64(), "Mean of the metric under the intervention.", bounds=UNIT),
        Column("baseline", pa.float64(), "Mean of the metric without it (head_attention), over the same pairs.",
               bounds=UNIT),
        Column("delta", pa.float64(), "Mean of the per-pair difference (with - without) = mean - baseline.",
               bounds=(-1.0, 1.0)),
        Column("sd_delta", pa.float64(), "Sample standard deviation of the per-pair difference; NULL for one pair.",
               nullable=True, bounds=(0, None)),
    ),
)

TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        PAIRS, HEAD_ATTENTION, HEAD_ATTENTION_AGG, HEAD_ATTENTION_TOTALS, ABLATION_CONDITIONS, ABLATION_SCORES, ABLATION_METRICS,
        ABLATION_SUMMARY, SVD, HEAD_CONTRASTS, DECODER_CROSS_ATTENTION, COMPONENT_MEANS, COMPONENT_SUMS,
        PATCHING_PAIRS, PATCHING_EFFECTS, PATCHING_SUMMARY, SUBSPACE_HEAD_METRICS, SUBSPACE_EFFECTS,
    )
}
