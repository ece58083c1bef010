"""One ablation condition: its parts, which are the columns of ``ablation_conditions`` (and of ``ablation_summary``).

Its kind (:mod:`precompute.conditions.kinds`) prints the id from the parts and parses an id back into them, so the
store keeps the parts as columns and no reader parses an id again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from precompute.conditions.kinds import analysis_of, kind_of, parse


@dataclass(frozen=True)
class Condition:
    """One ablation condition. Fields a kind does not use are None (NULL in the store)."""

    kind: str
    condition: str  # what is removed: a direction, a group, 'head', 'mlp' / 'attn', 'qk', 'none'
    mode: str  # how: the id's part after '/' ('zero', 'mask', 'mean', 'remove', 'scale=2', 'none')
    layers: str  # 'all', a range '0-5', a layer '3', 'none' (the baseline)
    layer: int | None = None  # the single layer, when one
    head: int | None = None
    directions: tuple[str, ...] | None = None  # attention directions removed
    component: str | None = None  # 'attn' | 'mlp'
    segment: str | None = None  # the segment a component is removed at; None = every token
    k: int | None = None  # top singular components (subspace)
    operation: str | None = None  # 'remove' | 'scale=<f>' (subspace)
    factor: float | None = None  # what the components are multiplied by: 0 = remove (subspace)
    # the alignment u_k . v_k of each component an aligned subspace condition removes, in its order (the model's fact,
    # not the id's: a condition parsed from its id has None; stored in ablation_conditions.alignments)
    alignments: tuple[float, ...] | None = field(default=None, compare=False)

    @cached_property
    def condition_id(self) -> str:
        return kind_of(self.kind).format(self)

    @property
    def analysis(self) -> str | None:
        """The Holm family the condition is tested in; None for the baseline."""
        return analysis_of(self.kind)

    @property
    def spec(self):
        """Its :class:`~precompute.conditions.kinds.ConditionKind`."""
        return kind_of(self.kind)

    def layer_indices(self, n_layers: int) -> tuple[int, ...]:
        """The layers ``layers`` names in a model of ``n_layers``."""
        if self.layers == "all":
            return tuple(range(n_layers))
        if self.layers == "none":
            return ()
        lo, _, hi = self.layers.partition("-")
        return tuple(range(int(lo), int(hi or lo) + 1))

    def row(self) -> dict:
        """Its ``ablation_conditions`` row."""
        return {
            "condition_id": self.condition_id, "condition": self.condition, "mode": self.mode, "layers": self.layers,
            "layer": self.layer, "head": self.head, "kind": self.kind, "analysis": self.analysis,
            "directions": ",".join(self.directions) if self.directions is not None else None,
            "component": self.component, "segment": self.segment, "k": self.k, "operation": self.operation,
            "factor": self.factor,
            "alignments": None if self.alignments is None else list(self.alignments),
        }

    @classmethod
    def from_row(cls, row: dict) -> "Condition":
        """The condition of a stored ``ablation_conditions`` row (its kind's grammar reads the id; the stored
        directions name a user group's)."""
        dirs = row.get("directions")
        groups = {row["condition"]: tuple(dirs.split(","))} if dirs else None
        found = parse(row["condition_id"], row["kind"], groups)
        if row.get("alignments") is not None:
            from dataclasses import replace

            found = replace(found, alignments=tuple(float(a) for a in row["alignments"]))
        return found
