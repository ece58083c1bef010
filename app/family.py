"""What the five segment columns mean for a run's model family, and which directions it cannot attend.

The store keeps five segment columns (``cls``, ``q``, ``sep1``, ``d``, ``sep2``) and 25 direction names
(``q_d``, ...) for every family; what they mean is the manifest's ``model.segment_labels``
(CLS/Query/SEP1/Document/SEP2 for pair templates, Prefix/Query/Middle/Document/Suffix for text templates).
A version-1 manifest (bert-style encoders only) has no such field: its labels are ``precompute.names``'s.

Causal models (``model.causal``): a token attends only to earlier ones, so a direction whose destination
segment comes after its source (``q_d``: the query precedes the document) does not exist; the store holds
NULL there (head_attention, and NULL sums in head_attention_agg). :class:`Labels` says so for a direction or
a metric (a matching metric is undefined wherever the direction it measures is, ``precompute.metrics``), so
pages show "not possible (causal)" instead of a number. No Streamlit here.
"""

from __future__ import annotations

from dataclasses import dataclass

from precompute.metrics import BY_NAME, metric_label as _metric_label
from precompute.names import CAUSAL_IMPOSSIBLE, DIRECTIONS, SEGMENT_LABELS, SEGMENTS, direction_label, split_direction
from precompute.store.manifest import ModelInfo

NOT_POSSIBLE = "not possible (causal)"
UNDEFINED = "undefined (no token in the segment)"


@dataclass(frozen=True)
class Labels:
    """A run's words for its segments, and whether its model is causal. Hashable (cached queries may take it)."""

    names: tuple[str, ...] = tuple(SEGMENT_LABELS[s] for s in SEGMENTS)  # in SEGMENTS order
    causal: bool = False
    family: str | None = None

    @classmethod
    def of(cls, model: ModelInfo | None) -> "Labels":
        """The labels of a manifest's model section; the pair template's where it records none (version 1)."""
        given = dict((model.segment_labels if model is not None else None) or {})
        names = tuple(str(given.get(s) or SEGMENT_LABELS[s]) for s in SEGMENTS)
        return cls(names=names, causal=bool(model is not None and model.causal),
                   family=(model.family if model is not None else None))

    @property
    def mapping(self) -> dict[str, str]:
        return dict(zip(SEGMENTS, self.names))

    def segment(self, name: str) -> str:
        """``q`` -> ``Query``; a name that is not a segment (``all``) is returned as it is."""
        return self.mapping.get(name, name)

    def direction(self, name: str) -> str:
        """``q_d`` -> ``Query->Document`` in the family's words."""
        src, dst = split_direction(name)
        return f"{self.segment(src)}->{self.segment(dst)}"

    def metric(self, name: str) -> str:
        """Axis and legend label of a summary metric (precompute.metrics), in the family's words."""
        text = _metric_label(name)
        d = BY_NAME[name].direction
        return text.replace(direction_label(d), self.direction(d))

    def possible(self, name: str) -> bool:
        """False for a direction (or a metric of a direction) that this model cannot attend (causal: dst after src)."""
        d = BY_NAME[name].direction if name in BY_NAME else name
        return not (self.causal and d in CAUSAL_IMPOSSIBLE)

    @property
    def impossible(self) -> tuple[str, ...]:
        """The directions this model cannot attend (empty for non-causal models)."""
        return tuple(d for d in DIRECTIONS if not self.possible(d))

    def missing(self, name: str) -> str:
        """What a NULL value of a direction or metric means: not possible (causal), or undefined."""
        return NOT_POSSIBLE if not self.possible(name) else UNDEFINED

    def why_empty(self, name: str) -> str:
        """One sentence for a chart of ``name`` that holds no value."""
        d = BY_NAME[name].direction if name in BY_NAME else name
        if not self.possible(name):
            src, dst = split_direction(d)
            return (f"{name} is not possible (causal): this model's {self.segment(src)} tokens attend only to earlier "
                    f"tokens, and the {self.segment(dst)} comes after the {self.segment(src)}, so the store holds NULL "
                    "there (not 0).")
        return f"{name} has no value in this slice (NULL: a segment with no token, or no pair)."


def refused_reason(condition_id: str, groups: dict[str, list[str]] | None, labels: Labels) -> tuple[str, str]:
    """(the directions a refused condition removes, why it was refused), for the Ablations page. The job refuses,
    before the run, conditions that remove only directions the model cannot attend (manifest ablations.refused)."""
    from precompute.conditions import AblationSpecError, parse

    try:
        dirs = parse(condition_id, groups={k: tuple(v) for k, v in (groups or {}).items()}).directions or ()
    except AblationSpecError:
        dirs = ()
    named = ", ".join(f"{d} ({labels.direction(d)})" for d in dirs) or condition_id
    return named, ("removes only directions this causal model cannot attend (each goes into a later segment): "
                   "nothing to remove, so it was not run and is not in the Holm family")


def labels_of(run) -> Labels:
    """The labels of a :class:`app.runs.RunInfo` (or anything with a ``model`` section)."""
    return Labels.of(getattr(run, "model", None))
