"""The slice: a filter on the store by layers, heads, negative types, grades and queries, that every page of the app
and the reader's slice-aware methods respect (``Run.head_means(metric, where=Slice(...))``).

An empty set means *all*. :class:`Slice` is a frozen dataclass whose fields are normalised (sorted, deduplicated),
so equal filters hash equally: the app's cached queries take it as an argument.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


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
