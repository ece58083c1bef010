"""How conditions are applied to a forward pass, and which conditions can share one.

A forward of the ablation pass holds ``k`` conditions, each on its own block of rows (the batch's pairs repeated per
condition). Each condition's kind writes what it removes into the forward's :class:`Edits` (its
:meth:`~precompute.conditions.kinds.ConditionKind.apply`); the pass (:mod:`precompute.analyses.ablations`) hands the
tensors to the kernels. Conditions share a forward only when their kinds' forward keys agree
(:func:`forward_groups`), so the modes a forward runs in (:func:`forward_mode`) are one per mechanism.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from precompute.names import SEGMENT_INDEX, split_direction


@dataclass(frozen=True)
class QKTarget:
    """One subspace edit: the top ``k`` singular components of (layer, head)'s W_Q W_K^T times ``factor``, for the
    rows of condition ``row``."""

    row: int
    layer: int
    head: int
    k: int
    factor: float
    aligned: bool = False  # the k components with the largest sigma-weighted alignment instead of the top k


@dataclass
class Edits:
    """What the conditions of one forward remove, per condition (first axis). Tensors are torch, on the CPU."""

    n_conditions: int
    n_layers: int
    n_heads: int
    directions: object = None  # [conditions, layers, 5, 5] bool: (src, dst) removed
    heads: object = None  # [conditions, layers, heads] bool: head output zeroed
    components: object = None  # [conditions, layers, 2] int8 per block (attn, mlp): -1 kept, ALL_TOKENS, a segment
    qk: list[QKTarget] = field(default_factory=list)

    def remove_direction(self, row: int, layer: int, direction: str) -> None:
        import torch

        if self.directions is None:
            self.directions = torch.zeros(self.n_conditions, self.n_layers, 5, 5, dtype=torch.bool)
        src, dst = split_direction(direction)
        self.directions[row, layer, SEGMENT_INDEX[src], SEGMENT_INDEX[dst]] = True

    def remove_head(self, row: int, layer: int, head: int) -> None:
        import torch

        if self.heads is None:
            self.heads = torch.zeros(self.n_conditions, self.n_layers, self.n_heads, dtype=torch.bool)
        self.heads[row, layer, head] = True

    def remove_component(self, row: int, layer: int, component: str, segment: str | None) -> None:
        """Remove block ``component`` ('attn' or 'mlp') of ``layer`` at one segment's tokens, or at all (None)."""
        import torch

        from precompute.kernels.block_hooks import ALL_TOKENS, COMPONENTS

        if self.components is None:
            self.components = torch.full((self.n_conditions, self.n_layers, len(COMPONENTS)), -1, dtype=torch.int8)
        self.components[row, layer, COMPONENTS.index(component)] = ALL_TOKENS if segment is None else SEGMENT_INDEX[segment]

    def edit_qk(self, row: int, layer: int, head: int, k: int, factor: float, *, aligned: bool = False) -> None:
        self.qk.append(QKTarget(row, layer, head, k, factor, aligned))


def forward_edits(conditions: Sequence, n_layers: int, n_heads: int) -> Edits:
    """The Edits of ``conditions`` sharing a forward (condition i on row block i)."""
    edits = Edits(len(conditions), n_layers, n_heads)
    for i, c in enumerate(conditions):
        c.spec.apply(c, i, edits)
    return edits


def forward_key(c) -> str:
    return c.spec.forward_key(c)


def forward_mode(conditions: Sequence) -> tuple[str, str]:
    """(direction mode, component mode) of conditions sharing a forward pass; ValueError when they disagree."""
    modes: dict[str, set[str]] = {}
    for c in conditions:
        for mechanism, mode in c.spec.forward_modes(c).items():
            modes.setdefault(mechanism, set()).add(mode)
    if any(len(v) > 1 for v in modes.values()):
        raise ValueError(f"conditions sharing a forward pass must share a mode, got {sorted({forward_key(c) for c in conditions})}")
    return next(iter(modes.get("direction", {"zero"}))), next(iter(modes.get("component", {"zero"})))


def forward_groups(conditions: Sequence, stack: int) -> list[list]:
    """Conditions cut into groups of ``stack`` that share forwards (one forward key per group), in order."""
    by_key: dict[str, list] = {}
    for c in conditions:
        by_key.setdefault(forward_key(c), []).append(c)
    out = []
    for key in sorted(by_key, key=lambda k: (k == "_any", k)):
        cs = by_key[key]
        out += [cs[i : i + stack] for i in range(0, len(cs), stack)]
    return out
