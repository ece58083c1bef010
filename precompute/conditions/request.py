"""The ablation flags of one job invocation, resolved against the model into conditions by the registered kinds."""

from __future__ import annotations

from dataclasses import dataclass

from precompute.conditions import component_specs as comp
from precompute.conditions import subspace_specs as qk
from precompute.conditions.condition import Condition
from precompute.conditions.kinds import REGISTRY, ModelShape, check_sets, reserved_names
from precompute.conditions.vocabulary import DEFAULT_SETS, DEFAULT_SWEEP, AblationSpecError, parse_group, parse_layers
from precompute.settings import request_values


@dataclass
class AblationRequest:
    """The ablation flags of one job invocation (strings as given; resolved against the model by ``conditions``)."""

    sets: tuple[str, ...] = DEFAULT_SETS
    modes: tuple[str, ...] = ("zero",)
    layers: tuple[str, ...] = ("all",)
    groups: tuple[str, ...] = ()
    sweep: tuple[str, ...] = DEFAULT_SWEEP
    heads: tuple[str, ...] = ("all",)
    component_mode: str = comp.DEFAULT_COMPONENT_MODE  # the 'components' set's mode
    components: tuple[str, ...] = ()  # explicit component conditions, computed whenever given
    subspace_heads: str = "top:5"
    subspace_k: str = "1-4"
    subspace_ops: tuple[str, ...] = ("remove", "scale=2")

    @classmethod
    def from_config(cls, cfg) -> "AblationRequest":
        """The request of a job's settings: each field from the setting declared to feed it (precompute.config)."""
        return cls(**request_values(cfg))

    def check(self) -> None:
        """Validate the flags' syntax without a model (layer and head numbers are checked against the model later).

        Every kind checks its flags whether or not its set is asked for, so a typo is never silently ignored;
        conditions computed whenever given (user groups, --ablation-components) are refused with ``--ablations none``."""
        self.asked_sets()
        for kind in REGISTRY.values():
            kind.check(self)

    def asked_sets(self) -> tuple[str, ...]:
        """The validated ``--ablations`` sets; () for none."""
        return check_sets(self.sets)

    def layer_specs(self, n_layers: int) -> list[tuple[str, tuple[int, ...]]]:
        """(label, layers) of each ``--ablation-layers`` spec, in order, once each."""
        return list(dict.fromkeys(parse_layers(s, n_layers) for s in self.layers)) or [parse_layers("all", n_layers)]

    def user_groups(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for spec in self.groups:
            try:
                name, dirs = parse_group(spec, out, reserved_names())
            except AblationSpecError as err:
                msg = str(err)
                raise AblationSpecError(msg if msg.startswith("--") else f"--ablation-group {msg}") from None
            if name in out and out[name] != dirs:
                raise AblationSpecError(f"--ablation-group {name!r} given twice with different directions")
            out[name] = dirs
        return out

    def subspace_targets(self) -> int | list[tuple[int, int]]:
        """``top:N`` as N (the stage ranks heads in head_contrasts), or the listed (layer, head) pairs."""
        return qk.parse_heads_spec(self.subspace_heads)

    def conditions(self, n_layers: int, n_heads: int, *, subspace_heads: list[tuple[int, int]] = (),
                   head_dim: int | None = None, alignments=None) -> list[Condition]:
        """Every condition requested, baseline first, then each registered kind's, deduplicated by id (the first kind
        keeps an id two produce), in a stable order.

        ``subspace_heads``: the heads of the 'subspace' and 'aligned' sets, resolved by the stage (``top:N`` needs
        head_contrasts); ``alignments``: (layer, head, n) -> the alignments of the components an aligned condition
        removes (:attr:`~precompute.conditions.kinds.ModelShape.alignments`)."""
        if not self.asked_sets():
            return []
        model = ModelShape(n_layers, n_heads, head_dim, tuple(subspace_heads), alignments)
        out: dict[str, Condition] = {}
        for kind in REGISTRY.values():
            for c in kind.conditions(self, model):
                out.setdefault(c.condition_id, c)
        return list(out.values())
