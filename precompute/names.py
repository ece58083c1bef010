"""Names shared by the precompute job, the store and the app.

One module owns the vocabulary of the project (segments, directions, negative types, contrasts, score kinds,
patching experiments) so that a column called ``q_d`` means Query -> Document everywhere; the summary metrics are
declared in :mod:`precompute.metrics`.
It imports nothing heavy: the app and ``--help`` import it without torch.
"""

from __future__ import annotations

# The five input segments of ``[CLS] query [SEP] document [SEP]``, in input order.
SEGMENTS: tuple[str, ...] = ("cls", "q", "sep1", "d", "sep2")
SEGMENT_LABELS: dict[str, str] = {
    "cls": "CLS",
    "q": "Query",
    "sep1": "SEP1",
    "d": "Document",
    "sep2": "SEP2",
}
SEGMENT_INDEX: dict[str, int] = {name: i for i, name in enumerate(SEGMENTS)}
PADDING = -1  # segment id of padding tokens: they belong to no segment

# The 25 attention directions, named ``<src>_<dst>`` (``q_d`` = Query tokens attending to Document tokens).
DIRECTIONS: tuple[str, ...] = tuple(f"{src}_{dst}" for src in SEGMENTS for dst in SEGMENTS)


def split_direction(name: str) -> tuple[str, str]:
    """``q_d`` -> ("q", "d"); raises ValueError on anything that is not one of the 25 names."""
    for src in SEGMENTS:
        for dst in SEGMENTS:
            if name == f"{src}_{dst}":
                return src, dst
    raise ValueError(f"unknown direction {name!r}: expected <src>_<dst> with src, dst in {', '.join(SEGMENTS)}")


# Directions a causal model (a decoder) cannot attend: the destination segment comes after the source in the input.
CAUSAL_IMPOSSIBLE: frozenset[str] = frozenset(
    f"{src}_{dst}" for src in SEGMENTS for dst in SEGMENTS if SEGMENT_INDEX[dst] > SEGMENT_INDEX[src]
)


def direction_label(name: str) -> str:
    """Human label, e.g. ``q_d`` -> ``Query->Document`` (the paper writes Q->D)."""
    src, dst = split_direction(name)
    return f"{SEGMENT_LABELS[src]}->{SEGMENT_LABELS[dst]}"


# Pair kinds. Easy negatives and unjudged run candidates are stored with grade -1 (never judged for that query).
UNJUDGED = "unjudged"  # a run candidate with no judgment (only with --candidates run:NAME)
NEG_TYPES: tuple[str, ...] = ("relevant", "hard", "easy", UNJUDGED)
EASY_GRADE = -1

# Matching-head contrasts (head_contrasts.contrast): name -> (group a, group b) as pairs.neg_type values, and labels.
CONTRASTS: dict[str, tuple[str, str]] = {
    "relevant_vs_easy": ("relevant", "easy"),
    "relevant_vs_hard": ("relevant", "hard"),
    "hard_vs_easy": ("hard", "easy"),
}
CONTRAST_LABELS: dict[str, str] = {
    "relevant_vs_easy": "Relevant - easy negatives",
    "relevant_vs_hard": "Relevant - hard negatives",
    "hard_vs_easy": "Hard - easy negatives",
}

# What pairs.score is, per manifest model.score value (the app's axis titles and the report read it from here).
SCORE_KINDS: dict[str, str] = {
    "logit": "relevance score (logit)",
    "log_softmax[1]": "log-probability of relevance",
    "log_softmax[answer]": "log-probability of the positive answer token (vs the negative one)",
}

# Activation-patching experiments (precompute.analyses.patching_inputs; docs/patching.md), how effects are computed
# (precompute.analyses.patching: exact; .attribution: first order; both: attribution everywhere, exact for the top
# heads), the scales scores are patched on (families.base.SCALES) and the score difference below which an effect is NULL.
PATCHING_EXPERIMENTS: tuple[str, ...] = ("tfc1", "tfc2", "stmc1", "cls")
PATCHING_METHODS: tuple[str, ...] = ("exact", "attribution", "both")
PATCHING_SCORES: tuple[str, ...] = ("logit", "probability")
PATCHING_EPSILON = 1e-3
# The block activations patched at every layer (patching_effects.component besides 'head'), in the order pages and the
# report show them, and the last layer's output, patched at that layer only (elsewhere it is the next layer's resid).
PATCH_COMPONENTS: tuple[str, ...] = ("resid", "attn", "mlp")
FINAL_COMPONENT = "resid_post"
