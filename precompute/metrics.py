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
    """Metrics computed by one reduction (the 25 masses come from one matrix product)."""

    metrics: tuple[SummaryMetric, ...]
    reduce: Callable  # (weights [b, h, q, k] float32, state) -> [b, h, len(metrics)]


# -- reductions --------------------------------------------------------------------------------------


def _masses(w, state):
    """[b, h, 25]: mean over src tokens of the summed weight on dst tokens, src-major (names.DIRECTIONS order)."""
    to_seg = w @ state.onehot[:, None]  # [b, h, q, 5]: weight each query token gives each segment
    sums = state.onehot.transpose(1, 2)[:, None] @ to_seg  # [b, h, 5, 5] summed over src tokens
    return (sums / state.counts[:, None, :, None]).flatten(2)  # empty src segment: 0/0 = NaN (NULL)


def _q_rows(w, state):
    return w[:, :, state.q_lo : state.q_hi]  # [b, h, nq, k]: query rows only


def _mean_over_query(x, state):
    """[b, h, nq] -> [b, h]: mean over each pair's query tokens."""
    return (x * state.q_rows[:, None]).sum(-1) / state.n_query[:, None]


def _q2d_max(w, state):
    return _mean_over_query((_q_rows(w, state) * state.d_tok[:, None, None]).amax(-1), state)[..., None]


def _d2q_max(w, state):
    wk = w[:, :, :, state.q_lo : state.q_hi]  # [b, h, q, nq]: query columns only
    d_max = (wk * state.q_rows[:, None, None]).amax(-1)  # [b, h, q]
    return ((d_max * state.d_tok[:, None]).sum(-1) / state.n_doc[:, None])[..., None]


def _q_d_exact(w, state):
    return _mean_over_query((_q_rows(w, state) * state.exact[:, None]).sum(-1), state)[..., None]


def _q_d_other(w, state):
    return _mean_over_query((_q_rows(w, state) * state.other[:, None]).sum(-1), state)[..., None]


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


MASSES = MetricGroup(tuple(_mass(d) for d in DIRECTIONS), _masses)
MATCHING_GROUPS: tuple[MetricGroup, ...] = (
    MetricGroup((SummaryMetric("q2d_max", "Query->Document max weight",
                               "Mean over query tokens of their largest attention weight on any document token.", "q_d"),),
                _q2d_max),
    MetricGroup((SummaryMetric("d2q_max", "Document->Query max weight",
                               "Mean over document tokens of their largest attention weight on any query token.", "d_q"),),
                _d2q_max),
    MetricGroup((SummaryMetric("q_d_exact", "Query->Document mass on exact-match tokens",
                               "Mean over query tokens of the summed weight on document tokens with the same token id "
                               "(exact lexical match); 0 for query tokens with no match. q_d_exact + q_d_other = q_d.",
                               "q_d"),),
                _q_d_exact),
    MetricGroup((SummaryMetric("q_d_other", "Query->Document mass on other document tokens",
                               "Mean over query tokens of the summed weight on document tokens with a different token id.",
                               "q_d"),),
                _q_d_other),
)
GROUPS: tuple[MetricGroup, ...] = (MASSES, *MATCHING_GROUPS)

SUMMARY_METRICS: tuple[SummaryMetric, ...] = tuple(m for g in GROUPS for m in g.metrics)
METRICS: tuple[str, ...] = tuple(m.name for m in SUMMARY_METRICS)  # head_attention's metric columns, in order
MATCHING_METRICS: tuple[str, ...] = tuple(m.name for g in MATCHING_GROUPS for m in g.metrics)
BY_NAME: dict[str, SummaryMetric] = {m.name: m for m in SUMMARY_METRICS}
DIRECTION_INDEX: tuple[int, ...] = tuple(DIRECTIONS.index(m.direction) for m in SUMMARY_METRICS)


def metric_label(name: str) -> str:
    """Axis/legend label of any summary metric."""
    return BY_NAME[name].label


def summarise(weights, state):
    """One layer's weights [b, h, q, k] -> [b, h, len(METRICS)] float32, NaN where a metric is undefined."""
    import torch

    w = weights.float()
    out = torch.cat([g.reduce(w, state) for g in GROUPS], dim=-1)
    if state.impossible is not None:  # causal models: directions into later segments do not exist
        undefined = state.impossible.flatten()[list(DIRECTION_INDEX)]  # [n_metrics]
        out = out.masked_fill(undefined, float("nan"))
    return out
