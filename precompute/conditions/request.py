"""The ablation flags of one job invocation, resolved against the model into conditions."""

from __future__ import annotations

import re
from dataclasses import dataclass

from precompute.conditions import component_specs as comp
from precompute.conditions import subspace_specs as qk
from precompute.conditions.condition import Condition, baseline_condition, direction_condition, head_condition
from precompute.conditions.vocabulary import (
    DEFAULT_SETS,
    DEFAULT_SWEEP,
    GROUPS,
    AblationSpecError,
    check_layers,
    check_modes,
    check_sets,
    parse_directions,
    parse_group,
    parse_heads,
    parse_layers,
)
from precompute.names import DIRECTIONS
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

        Every flag is checked whether or not a set that reads it is asked for, so a typo is never silently ignored;
        component conditions and user groups (computed whenever given) are refused with ``--ablations none``."""
        sets = check_sets(self.sets)
        check_modes(self.modes)
        user = self.user_groups()
        for spec in self.layers:
            check_layers(spec)
        for target in self.sweep:
            if target.strip() and target.strip() not in user and target.strip() not in GROUPS:
                try:
                    dirs = parse_directions(target, user)
                except AblationSpecError as err:
                    raise AblationSpecError(f"--ablation-sweep {err}") from None
                if len(dirs) != 1:
                    raise AblationSpecError(f"--ablation-sweep {target!r}: name one direction or a group per item")
        for spec in self.heads:
            for item in (t for t in re.split(r"[,\s]+", spec.strip()) if t):
                if item.lower() != "all" and not re.fullmatch(r"(\d+|\*)\.(\d+|\*)", item):
                    raise AblationSpecError(f"--ablation-heads {item!r}: expected all or LAYER.HEAD such as 3.5, 3.* or *.0")
        if self.component_mode not in comp.COMPONENT_MODES:
            raise AblationSpecError(f"--component-mode {self.component_mode!r}: expected zero or mean")
        for spec in self.components:
            comp.check_component_spec(spec)
        qk.parse_heads_spec(self.subspace_heads)
        qk.parse_ks(self.subspace_k)
        for op in self.subspace_ops:
            qk.parse_operation(op)
        if not sets and self.groups:
            raise AblationSpecError("--ablation-group needs an ablation stage; drop --ablations none")
        if not sets and self.components:
            raise AblationSpecError(f"--ablation-components {self.components[0]!r} needs an ablation stage; drop "
                                    "--ablations none")

    def user_groups(self) -> dict[str, tuple[str, ...]]:
        out: dict[str, tuple[str, ...]] = {}
        for spec in self.groups:
            try:
                name, dirs = parse_group(spec, out)
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
                   head_dim: int | None = None) -> list[Condition]:
        """Every condition requested, baseline first, deduplicated by id (first wins), in a stable order.

        ``subspace_heads``: the heads of the 'subspace' set, resolved by the stage (``top:N`` needs head_contrasts)."""
        sets = check_sets(self.sets)
        if not sets:
            return []
        modes = check_modes(self.modes)
        user = self.user_groups()
        layer_specs = list(dict.fromkeys(parse_layers(s, n_layers) for s in self.layers)) or [parse_layers("all", n_layers)]
        out: dict[str, Condition] = {}

        def add(c: Condition) -> None:
            out.setdefault(c.condition_id, c)

        add(baseline_condition())
        for mode in modes:
            for label, layer_set in layer_specs:
                if "directions" in sets:
                    for d in DIRECTIONS:
                        add(direction_condition(d, (d,), mode, label, layer_set, "direction"))
                named = ({name: dirs for name, (dirs, _, _) in GROUPS.items()} if "groups" in sets else {}) | user
                for name, dirs in named.items():
                    add(direction_condition(name, dirs, mode, label, layer_set, "direction" if name in DIRECTIONS else "group"))
            if "layers" in sets:
                for target in self.sweep:
                    target = target.strip()
                    if not target:
                        continue
                    if target in user or target in GROUPS:
                        name, dirs = target, user.get(target) or GROUPS[target][0]
                    else:
                        dirs = parse_directions(target, user)
                        if len(dirs) != 1:
                            raise AblationSpecError(f"--ablation-sweep {target!r}: name one direction or a group per item "
                                                    "(define a group with --ablation-group NAME=...)")
                        name = dirs[0]
                    for layer in range(n_layers):
                        add(direction_condition(name, dirs, mode, str(layer), (layer,), "layer_sweep"))
        if "heads" in sets:
            for layer, head in parse_heads(self.heads or ("all",), n_layers, n_heads):
                add(head_condition(layer, head))
        if "components" in sets:
            for c in comp.sweep(n_layers, self.component_mode):
                add(c)
        for spec in self.components:
            add(comp.parse_component(spec, n_layers))
        if "subspace" in sets:
            ks = qk.parse_ks(self.subspace_k)
            if head_dim is not None and max(ks) > head_dim:
                raise AblationSpecError(f"--subspace-k {self.subspace_k!r}: a head has only {head_dim} singular "
                                        f"components; pass k values up to {head_dim}")
            for layer, head in subspace_heads:
                if not (0 <= layer < n_layers and 0 <= head < n_heads):
                    raise AblationSpecError(f"--subspace-heads {layer}.{head}: the model has layers 0-{n_layers - 1} "
                                            f"and heads 0-{n_heads - 1}")
                for k in ks:
                    for op in self.subspace_ops:
                        add(qk.subspace_condition(layer, head, k, op.strip(), qk.parse_operation(op)))
        return list(out.values())
