"""One ablation condition (a row of ``ablation_conditions``), its constructors, and how conditions share forwards."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from precompute.conditions.vocabulary import BASELINE, HEAD_MODE, short_label
from precompute.names import SEGMENT_INDEX, split_direction

# Which analysis a condition kind belongs to: each analysis is its own Holm family (precompute.analyses.significance).
ANALYSIS_OF_KIND: dict[str, str] = {
    "baseline": "attention", "direction": "attention", "group": "attention", "layer_sweep": "attention",
    "head": "attention", "component": "components", "subspace": "subspace",
}


@dataclass(frozen=True)
class Condition:
    """One ablation condition (a row of ``ablation_conditions``) plus the layers it resolves to."""

    condition_id: str
    condition: str
    mode: str
    layers: str
    layer: int | None
    head: int | None
    kind: str
    directions: tuple[str, ...] | None
    layer_set: tuple[int, ...] = field(default=(), compare=False)
    component: str | None = field(default=None, compare=False)  # 'attn' | 'mlp' (kind 'component')
    segment: str | None = field(default=None, compare=False)  # tokens a component is removed at; None = all
    k: int | None = field(default=None, compare=False)  # top singular components (kind 'subspace')
    factor: float | None = field(default=None, compare=False)  # 0 = remove (kind 'subspace')

    def row(self) -> dict:
        return {
            "condition_id": self.condition_id, "condition": self.condition, "mode": self.mode,
            "layers": self.layers, "layer": self.layer, "head": self.head, "kind": self.kind,
            "directions": ",".join(self.directions) if self.directions is not None else None,
        }

    @property
    def analysis(self) -> str:
        return ANALYSIS_OF_KIND[self.kind]

    @property
    def label(self) -> str:
        if self.kind == "head":
            return f"L{self.layer}.H{self.head}"
        if self.kind in ("component", "subspace"):
            return self.condition_id
        if self.kind == "baseline":
            return "baseline"
        return short_label(self.condition)


def direction_condition(name: str, dirs: tuple[str, ...], mode: str, layers: str, layer_set: tuple[int, ...],
                        kind: str) -> Condition:
    layer = layer_set[0] if len(layer_set) == 1 else None
    return Condition(f"{name}@{layers}/{mode}", name, mode, layers, layer, None, kind, dirs, layer_set)


def head_condition(layer: int, head: int) -> Condition:
    return Condition(f"head:{layer}.{head}/{HEAD_MODE}", "head", HEAD_MODE, str(layer), layer, head, "head", None, (layer,))


def baseline_condition() -> Condition:
    return Condition(BASELINE, BASELINE, "none", "none", None, None, "baseline", None, ())


def intervention_arrays(conditions: Sequence[Condition], n_layers: int, n_heads: int):
    """([conditions, layers, 5, 5] bool or None, [conditions, layers, heads] bool or None) for torch."""
    import torch

    dirs = torch.zeros(len(conditions), n_layers, 5, 5, dtype=torch.bool)
    heads = torch.zeros(len(conditions), n_layers, n_heads, dtype=torch.bool)
    for i, c in enumerate(conditions):
        if c.kind == "head":
            heads[i, c.layer, c.head] = True
        elif c.directions:
            for d in c.directions:
                src, dst = split_direction(d)
                for layer in c.layer_set:
                    dirs[i, layer, SEGMENT_INDEX[src], SEGMENT_INDEX[dst]] = True
    return (dirs if bool(dirs.any()) else None), (heads if bool(heads.any()) else None)


def forward_key(c: Condition) -> str:
    """Conditions with one key can share a forward pass (one direction mode, one component mode per forward)."""
    if c.kind in ("head", "baseline"):
        return "_any"
    if c.kind == "component":
        return f"component/{c.mode}"
    if c.kind == "subspace":
        return "subspace"
    return f"direction/{c.mode}"


def forward_mode(conditions: Sequence[Condition]) -> tuple[str, str]:
    """(direction mode, component mode) of conditions sharing a forward pass; ValueError when they disagree."""
    keys = {forward_key(c) for c in conditions} - {"_any", "subspace"}
    directions = {k.split("/")[1] for k in keys if k.startswith("direction/")}
    components = {k.split("/")[1] for k in keys if k.startswith("component/")}
    if len(directions) > 1 or len(components) > 1:
        raise ValueError(f"conditions sharing a forward pass must share a mode, got {sorted(keys)}")
    return (directions.pop() if directions else "zero"), (components.pop() if components else "zero")


def forward_groups(conditions: Sequence[Condition], stack: int) -> list[list[Condition]]:
    """Conditions cut into groups of ``stack`` that share forwards (one forward key per group), in order."""
    by_key: dict[str, list[Condition]] = {}
    for c in conditions:
        by_key.setdefault(forward_key(c), []).append(c)
    out = []
    for key in sorted(by_key, key=lambda k: (k == "_any", k)):
        cs = by_key[key]
        out += [cs[i : i + stack] for i in range(0, len(cs), stack)]
    return out
