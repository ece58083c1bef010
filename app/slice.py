"""The slice every page respects: the filter itself, its sidebar widgets and their URL parameters.

A slice is a filter on the store: a range of layers, a set of heads, negative types, grades and
queries. An empty set means *all*. :class:`Slice` is a frozen dataclass (hashable), so cached query
functions take it as an argument. :func:`widgets` draws it in the sidebar; each widget mirrors one
URL parameter (``PARAM_KEYS``) through ``app.state``, so a shared link carries the slice, and a
value the run does not have (a link from another run, a hand-edited one) is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import streamlit as st

from app import state
from precompute.names import NEG_TYPES

# URL keys of the slice (short, so a shared URL stays readable).
PARAM_LAYERS = "layers"
PARAM_HEADS = "heads"
PARAM_NEG = "neg"
PARAM_GRADES = "grades"
PARAM_QUERIES = "q"
PARAM_KEYS: tuple[str, ...] = (PARAM_LAYERS, PARAM_HEADS, PARAM_NEG, PARAM_GRADES, PARAM_QUERIES)


@dataclass(frozen=True)
class Slice:
    """A filter on (layer, head, query, negative type, grade). ``None``/empty means no filter."""

    layers: tuple[int, int] | None = None  # inclusive range
    heads: tuple[int, ...] = ()
    neg_types: tuple[str, ...] = ()
    grades: tuple[int, ...] = ()
    qids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # Normalise so that equal slices hash equally (cache hits) whatever order the widgets gave.
        object.__setattr__(self, "heads", tuple(sorted(set(int(h) for h in self.heads))))
        object.__setattr__(self, "grades", tuple(sorted(set(int(g) for g in self.grades))))
        object.__setattr__(self, "neg_types", tuple(sorted(set(str(n) for n in self.neg_types))))
        object.__setattr__(self, "qids", tuple(sorted(set(str(q) for q in self.qids))))
        if self.layers is not None:
            lo, hi = (int(x) for x in self.layers)
            object.__setattr__(self, "layers", (min(lo, hi), max(lo, hi)))

    # -- derived slices -------------------------------------------------------------------
    def with_(self, **changes) -> "Slice":
        return replace(self, **changes)

    def pairs_only(self) -> "Slice":
        """The same slice without its layer/head filter (for tables with no layer or head)."""
        return replace(self, layers=None, heads=())

    def describe(self) -> str:
        """One line for captions, e.g. ``layers 0-3, heads 1,2, relevant, all grades, 5 queries``."""
        parts = [
            "all layers" if self.layers is None else f"layers {self.layers[0]}-{self.layers[1]}",
            "all heads" if not self.heads else "heads " + ",".join(map(str, self.heads)),
            "all negative types" if not self.neg_types else "/".join(self.neg_types),
            "all grades" if not self.grades else "grades " + ",".join(map(str, self.grades)),
            "all queries" if not self.qids else f"{len(self.qids)} quer{'y' if len(self.qids) == 1 else 'ies'}",
        ]
        return ", ".join(parts)

    def clamp(self, *, layers: int, heads: int) -> "Slice":
        """Drop layers and heads a model does not have (another run's model on the Compare page)."""
        lay = self.layers
        if lay is not None:
            lo, hi = max(0, lay[0]), min(layers - 1, lay[1])
            lay = None if lo > hi or (lo == 0 and hi == layers - 1) else (lo, hi)
        return replace(self, layers=lay, heads=tuple(h for h in self.heads if 0 <= h < heads))

# -- the sidebar widgets and their URL round trip -------------------------------------------------
def _parse_range(raw: str) -> tuple[int, int]:
    lo, _, hi = raw.partition("-")
    return (int(lo), int(hi or lo))


def _reset(layers: int) -> None:
    st.session_state["sl_layers"] = (0, max(layers - 1, 0))
    for key in ("sl_heads", "sl_neg", "sl_grades", "sl_qids"):
        st.session_state[key] = []


def neg_order(values) -> list[str]:
    """Negative types in the project's order (relevant, hard, easy, unjudged), then any other, sorted."""
    values = list(values)
    return [n for n in NEG_TYPES if n in values] + sorted(v for v in values if v not in NEG_TYPES)


def widgets(*, layers: int, heads: int, neg_types, grades, queries: dict[str, str]) -> Slice:
    """Draw the slice in the sidebar (options: the run's negative types, grades and ``{qid: text}``) and return it."""
    sb = st.sidebar
    neg_options = neg_order(neg_types)
    grade_options = sorted(int(g) for g in grades)
    qids = list(queries)
    full = (0, max(layers - 1, 0))

    sb.subheader("Slice", help="Every page shows the pairs and heads of this slice. An empty box means all.")
    if layers > 1:
        state.bind("sl_layers", full, param=PARAM_LAYERS, parse=_parse_range,
                   clean=lambda v: (max(0, min(int(v[0]), full[1])), max(0, min(int(v[1]), full[1]))))
        sb.slider("Layers", min_value=0, max_value=full[1], key="sl_layers")
        state.publish("sl_layers", param=PARAM_LAYERS, fmt=lambda v: f"{v[0]}-{v[1]}", default=full)
    lay = tuple(st.session_state.get("sl_layers", full)) if layers > 1 else full

    state.bind("sl_heads", [], param=PARAM_HEADS, parse=lambda s: [int(x) for x in state.split(s)],
               clean=state.subset(list(range(heads))))
    sb.multiselect("Heads", list(range(heads)), key="sl_heads", placeholder="all heads")
    state.publish("sl_heads", param=PARAM_HEADS, fmt=state.join, default=[])

    state.bind("sl_neg", [], param=PARAM_NEG, parse=state.split, clean=state.subset(neg_options))
    sb.multiselect("Negative types", neg_options, key="sl_neg", placeholder="all negative types")
    state.publish("sl_neg", param=PARAM_NEG, fmt=state.join, default=[])

    state.bind("sl_grades", [], param=PARAM_GRADES, parse=lambda s: [int(x) for x in state.split(s)],
               clean=state.subset(grade_options))
    sb.multiselect("Grades", grade_options, key="sl_grades", placeholder="all grades",
                   help="NIST grades 0-3; -1 = easy negative (never judged for the query).")
    state.publish("sl_grades", param=PARAM_GRADES, fmt=state.join, default=[])

    state.bind("sl_qids", [], param=PARAM_QUERIES, parse=state.split, clean=state.subset(qids))
    sb.multiselect("Queries", qids, key="sl_qids", placeholder=f"all {len(qids)} queries",
                   format_func=lambda q: f"{q}: {str(queries.get(q, ''))[:60]}")
    state.publish("sl_qids", param=PARAM_QUERIES, fmt=state.join, default=[])

    sb.button("Reset slice", on_click=_reset, args=(layers,), icon=":material/restart_alt:")
    return Slice(
        layers=None if lay == full else lay,
        heads=tuple(st.session_state["sl_heads"]),
        neg_types=tuple(st.session_state["sl_neg"]),
        grades=tuple(st.session_state["sl_grades"]),
        qids=tuple(st.session_state["sl_qids"]),
    )
