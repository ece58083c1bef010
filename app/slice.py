"""The slice every page respects, and its round trip through the URL (``st.query_params``).

A slice is a filter on the store: a range of layers, a set of heads, negative types, grades and
queries. An empty set means *all*. It is a frozen dataclass (hashable) so cached query functions
can take it as an argument. Nothing here imports Streamlit: ``to_params``/``from_params`` work
on plain ``dict[str, str]``, which is what ``st.query_params`` holds.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Mapping

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

    def is_empty(self) -> bool:
        return self == Slice()

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

    # -- URL round trip -------------------------------------------------------------------
    def to_params(self) -> dict[str, str]:
        """Query-string entries for the non-empty filters (empty filters are left out of the URL)."""
        out: dict[str, str] = {}
        if self.layers is not None:
            out[PARAM_LAYERS] = f"{self.layers[0]}-{self.layers[1]}"
        if self.heads:
            out[PARAM_HEADS] = ",".join(map(str, self.heads))
        if self.neg_types:
            out[PARAM_NEG] = ",".join(self.neg_types)
        if self.grades:
            out[PARAM_GRADES] = ",".join(map(str, self.grades))
        if self.qids:
            out[PARAM_QUERIES] = ",".join(self.qids)
        return out

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> "Slice":
        """Parse what :meth:`to_params` wrote; malformed entries are ignored (a hand-edited URL must not crash)."""
        layers = _parse_range(params.get(PARAM_LAYERS))
        return cls(
            layers=layers,
            heads=tuple(_parse_ints(params.get(PARAM_HEADS))),
            neg_types=tuple(_parse_strs(params.get(PARAM_NEG))),
            grades=tuple(_parse_ints(params.get(PARAM_GRADES))),
            qids=tuple(_parse_strs(params.get(PARAM_QUERIES))),
        )

    def clamp(self, *, layers: int, heads: int, neg_types=None, grades=None, qids=None) -> "Slice":
        """Drop values the run does not have (a URL shared from another run, or a hand-edited one)."""
        lay = self.layers
        if lay is not None:
            lo, hi = max(0, lay[0]), min(layers - 1, lay[1])
            lay = None if lo > hi or (lo == 0 and hi == layers - 1) else (lo, hi)
        keep = lambda values, allowed: tuple(v for v in values if allowed is None or v in allowed)  # noqa: E731
        return Slice(
            layers=lay,
            heads=tuple(h for h in self.heads if 0 <= h < heads),
            neg_types=keep(self.neg_types, None if neg_types is None else set(neg_types)),
            grades=keep(self.grades, None if grades is None else set(grades)),
            qids=keep(self.qids, None if qids is None else set(qids)),
        )


def _parse_ints(raw: str | None) -> list[int]:
    out = []
    for tok in (raw or "").split(","):
        tok = tok.strip()
        try:
            out.append(int(tok))
        except ValueError:
            continue
    return out


def _parse_strs(raw: str | None) -> list[str]:
    return [tok.strip() for tok in (raw or "").split(",") if tok.strip()]


def _parse_range(raw: str | None) -> tuple[int, int] | None:
    if not raw:
        return None
    lo, sep, hi = raw.partition("-")
    try:
        return (int(lo), int(hi)) if sep else (int(lo), int(lo))
    except ValueError:
        return None
