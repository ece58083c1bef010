"""The per-head summary metrics, each declared once: name, label, description and reduction.

The store's ``head_attention`` columns, docs/store.md, the app's labels and the attention kernel all read
:data:`SUMMARY_METRICS`: adding a metric is one declaration here (its reduction included), nothing else.

A reduction takes one layer's attention weights ``[batch, head, query_pos, key_pos]`` (float32) and the
batch's :class:`~precompute.kernels.state.BatchState`, and returns ``[batch, head, n]`` for the ``n``
metrics it declares. Reductions use tensor methods only, so this module imports no torch: the app and
``--help`` read the declarations without it.

Values are NaN (stored NULL) where a metric is not defined: a direction a causal model cannot attend
(its destination segment comes after its source, see ``BatchState.impossible``), or a source segment with
no token in the input template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from precompute.names import DIRECTIONS, SEGMENT_LABELS, split_direction


@dataclass(frozen=True)
class SummaryMetric:
    name: str  # head_attention column
    label: str  # axis and legend label
    doc: str  # column description (docs/store.md)
    direction: str  # the direction it measures: undefined (NULL) wherever that direction is


@dataclass(frozen=True)
class MetricGroup:
    """Metrics computed by one reduction (the 25 masses come from one matrix product).

    A reduction is split so that attention can be processed in blocks of query rows (bounded memory at long
    sequences): ``partial(w, state, rows)`` sums the block's contribution over its rows, ``[b, h, n]``;
    ``denominator(state)`` is what the summed contributions of all rows are divided by, ``[b, n]``.
    """

    metrics: tuple[SummaryMetric, ...]
    partial: Callable  # (weights [b, h, r, k] float32 of query rows ``rows``, state, rows: slice) -> [b, h, n]
    denominator: Callable  # (state) -> [b, n]


# -- reductions --------------------------------------------------------------------------------------


def _masses(w, state, rows):
    """Summed over the block's src tokens: the weight they give each dst segment, src-major, [b, h, 25]."""
    to_seg = w @ state.onehot[:, None]  # [b, h, r, 5]: weight each query token gives each segment
    return (state.onehot[:, rows].transpose(1, 2)[:, None] @ to_seg).flatten(2)  # [b, h, 5 src, 5 dst]


def _value_weighted(w, state, rows):
    """The value-weighted masses' sums (Kobayashi et al., EMNLP 2020): with ||a_ij W_O^h v_j|| = a_ij n_j (n_j the
    layer's ``state.value_norms`` [b, h, k], set by the kernel before its blocks), each source row's share of segment T
    is sum_{j in T} a_ij n_j / sum_j a_ij n_j, one product with the norm-weighted segment one-hot (no [b, h, r, k]
    temporary); summed over the block's rows of each src segment like the masses: [b, h, 25]."""
    weighted = w @ (state.value_norms[..., None] * state.onehot[:, None])  # [b, h, r, 5]
    total = weighted.sum(-1, keepdim=True).clamp_min(1e-30)  # a row with no weight left (all removed): shares 0
    return (state.onehot[:, rows].transpose(1, 2)[:, None] @ (weighted / total)).flatten(2)  # [b, h, 5 src, 5 dst]


def _mass_counts(state):
    return state.counts.repeat_interleave(5, dim=1)  # [b, 25]: src tokens (an empty src segment: 0/0 = NaN, NULL)


def _query_rows(w, state, rows):
    """(weights of the block's query-span rows [b, h, r', k], their query mask [b, r'], their offset in the span)."""
    start = rows.start or 0
    lo, hi = max(start, state.q_lo), min(start + w.shape[2], state.q_hi)
    if lo >= hi:
        return None, None, None
    return w[:, :, lo - start : hi - start], state.q_rows[:, lo - state.q_lo : hi - state.q_lo], lo - state.q_lo


def _q2d_max(w, state, rows):
    wq, mask, _ = _query_rows(w, state, rows)
    if wq is None:
        return w.new_zeros(*w.shape[:2], 1)
    return ((wq * state.d_tok[:, None, None]).amax(-1) * mask[:, None]).sum(-1)[..., None]


def _d2q_max(w, state, rows):
    wk = w[..., state.q_lo : state.q_hi]  # [b, h, r, nq]: query columns only
    d_max = (wk * state.q_rows[:, None, None]).amax(-1)  # [b, h, r]
    return (d_max * state.d_tok[:, rows][:, None]).sum(-1)[..., None]


def _query_mass_on(which: str):
    def partial(w, state, rows):
        wq, mask, offset = _query_rows(w, state, rows)
        if wq is None:
            return w.new_zeros(*w.shape[:2], 1)
        keys = getattr(state, which)[:, offset : offset + wq.shape[2]]  # [b, r', k]
        return ((wq * keys[:, None]).sum(-1) * mask[:, None]).sum(-1)[..., None]

    return partial


def _per_query(state):
    return state.n_query[:, None]


def _per_document_token(state):
    return state.n_doc[:, None]


# -- declarations --------------------------------------------------------------------------------------


def _mass(name: str) -> SummaryMetric:
    src, dst = split_direction(name)
    a, b = SEGMENT_LABELS[src], SEGMENT_LABELS[dst]
    return SummaryMetric(
        name, f"{a}->{b} attention mass",
        f"{a} -> {b}: mean over {a} tokens of the summed attention weight they give to {b} tokens. "
        "The five masses of one src sum to 1 over the segments it can attend.",
        name,
    )


def _value_weighted_mass(name: str) -> SummaryMetric:
    src, dst = split_direction(name)
    a, b = SEGMENT_LABELS[src], SEGMENT_LABELS[dst]
    return SummaryMetric(
        f"vw_{name}", f"{a}->{b} value-weighted share",
        f"{a} -> {b}, value-weighted (Kobayashi et al., EMNLP 2020): for each {a} token i, the share of its head's "
        f"output norm that {b} tokens contribute, sum over {b} tokens j of ||a_ij W_O^h v_j|| / sum over all tokens j "
        "of ||a_ij W_O^h v_j|| (v_j the head's value vector, W_O^h the head's slice of the attention output "
        f"projection, its bias left out as it does not depend on j), then averaged over {a} tokens like the mass "
        f"{name}. The five shares of one src sum to 1. A segment with high attention mass but a low share is read "
        "without contributing (a no-op target).",
        name,
    )


MASSES = MetricGroup(tuple(_mass(d) for d in DIRECTIONS), _masses, _mass_counts)
VALUE_WEIGHTED = MetricGroup(tuple(_value_weighted_mass(d) for d in DIRECTIONS), _value_weighted, _mass_counts)
MATCHING_GROUPS: tuple[MetricGroup, ...] = (
    MetricGroup((SummaryMetric("q2d_max", "Query->Document max weight",
                               "Mean over query tokens of their largest attention weight on any document token.", "q_d"),),
                _q2d_max, _per_query),
    MetricGroup((SummaryMetric("d2q_max", "Document->Query max weight",
                               "Mean over document tokens of their largest attention weight on any query token.", "d_q"),),
                _d2q_max, _per_document_token),
    MetricGroup((SummaryMetric("q_d_exact", "Query->Document mass on exact-match tokens",
                               "Mean over query tokens of the summed weight on document tokens with the same token id "
                               "(exact lexical match); 0 for query tokens with no match. q_d_exact + q_d_other = q_d.",
                               "q_d"),),
                _query_mass_on("exact"), _per_query),
    MetricGroup((SummaryMetric("q_d_other", "Query->Document mass on other document tokens",
                               "Mean over query tokens of the summed weight on document tokens with a different token id.",
                               "q_d"),),
                _query_mass_on("other"), _per_query),
)
GROUPS: tuple[MetricGroup, ...] = (MASSES, *MATCHING_GROUPS, VALUE_WEIGHTED)  # value-weighted last: stored columns keep their order

SUMMARY_METRICS: tuple[SummaryMetric, ...] = tuple(m for g in GROUPS for m in g.metrics)
METRICS: tuple[str, ...] = tuple(m.name for m in SUMMARY_METRICS)  # head_attention's metric columns, in order
MATCHING_METRICS: tuple[str, ...] = tuple(m.name for g in MATCHING_GROUPS for m in g.metrics)
VALUE_WEIGHTED_METRICS: tuple[str, ...] = tuple(m.name for m in VALUE_WEIGHTED.metrics)  # schema version 7
BY_NAME: dict[str, SummaryMetric] = {m.name: m for m in SUMMARY_METRICS}
DIRECTION_INDEX: tuple[int, ...] = tuple(DIRECTIONS.index(m.direction) for m in SUMMARY_METRICS)


def declare(group: MetricGroup) -> MetricGroup:
    """Add a matching metric group (a plugin's, or a test's toy metric) to the declarations above, before the store's
    schema, its docs or the report read them (they read the tuples when imported): a new metric is this call, or one
    more entry of ``MATCHING_GROUPS``."""
    import sys

    global GROUPS, MATCHING_GROUPS, SUMMARY_METRICS, METRICS, MATCHING_METRICS, BY_NAME, DIRECTION_INDEX
    if "precompute.store.schema" in sys.modules:
        raise RuntimeError("declare metrics before precompute.store is imported: its schema reads them once")
    clash = [m.name for m in group.metrics if m.name in BY_NAME]
    if clash:
        raise ValueError(f"metric {clash[0]!r} is declared already")
    MATCHING_GROUPS = (*MATCHING_GROUPS, group)
    GROUPS = (MASSES, *MATCHING_GROUPS, VALUE_WEIGHTED)
    SUMMARY_METRICS = tuple(m for g in GROUPS for m in g.metrics)
    METRICS = tuple(m.name for m in SUMMARY_METRICS)
    MATCHING_METRICS = tuple(m.name for g in MATCHING_GROUPS for m in g.metrics)
    BY_NAME = {m.name: m for m in SUMMARY_METRICS}
    DIRECTION_INDEX = tuple(DIRECTIONS.index(m.direction) for m in SUMMARY_METRICS)
    return group


def holm_family(name: str) -> str:
    """The multiple-comparison family a metric's head tests belong to: the value-weighted shares are a second,
    separate question about the same heads (what a target contributes, not how much it is attended), so their
    Holm correction runs over themselves and adding them leaves the attention metrics' corrected p unchanged."""
    return "value-weighted" if name in VALUE_WEIGHTED_METRICS else "attention"


def metric_label(name: str) -> str:
    """Axis/legend label of any summary metric."""
    return BY_NAME[name].label


def partial_sums(weights, state, rows: slice = slice(None)):
    """The summed contributions [b, h, len(METRICS)] of a block of query rows' weights [b, h, r, k] (float32)."""
    import torch

    w = weights.float()
    return torch.cat([g.partial(w, state, rows) for g in GROUPS], dim=-1)


def finish(sums, state):
    """Summed contributions of every query row -> the metrics [b, h, len(METRICS)], NaN where undefined."""
    import torch

    out = sums / torch.cat([g.denominator(state) for g in GROUPS], dim=-1)[:, None]
    if state.impossible is not None:  # causal models: directions into later segments do not exist
        undefined = state.impossible.flatten()[list(DIRECTION_INDEX)]  # [n_metrics]
        out = out.masked_fill(undefined, float("nan"))
    return out


def summarise(weights, state):
    """One layer's weights [b, h, q, k] -> [b, h, len(METRICS)] float32, NaN where a metric is undefined."""
    return finish(partial_sums(weights, state), state)
