"""The ablation flags of one job invocation, resolved against the model into conditions."""

from __future__ import annotations

import re
from dataclasses import dataclass

from precompute.conditions.condition import Condition, baseline_condition, direction_condition, head_condition
from precompute.conditions.vocabulary import (
    DEFAULT_SETS,
    DEFAULT_SWEEP,
    GROUPS,
    AblationSpecError,
    check_modes,
    check_sets,
    parse_directions,
    parse_group,
    parse_heads,
    parse_layers,
)
from precompute.names import DIRECTIONS


@dataclass
class AblationRequest:
    """The ablation flags of one job invocation (strings as given; resolved against the model by ``conditions``)."""

    sets: tuple[str, ...] = DEFAULT_SETS
    modes: tuple[str, ...] = ("zero",)
    layers: tuple[str, ...] = ("all",)
    groups: tuple[str, ...] = ()
    sweep: tuple[str, ...] = DEFAULT_SWEEP
    heads: tuple[str, ...] = ("all",)

    @classmethod
    def from_config(cls, cfg) -> "AblationRequest":
        return cls(tuple(cfg.ablations), tuple(cfg.ablation_modes), tuple(cfg.ablation_layers),
                   tuple(cfg.ablation_groups), tuple(cfg.ablation_sweep), tuple(cfg.ablation_heads))

    def check(self) -> None:
        """Validate the flags' syntax without a model (layer and head numbers are checked against the model later)."""
        sets = check_sets(self.sets)
        if not sets:
            if self.groups:
                raise AblationSpecError("--ablation-group needs an ablation stage; drop --ablations none")
            return
        check_modes(self.modes)
        user = self.user_groups()
        for spec in self.layers:
            if spec.strip().lower() != "all" and not re.fullmatch(r"\d+(-\d+)?", spec.strip()):
                raise AblationSpecError(f"--ablation-layers {spec!r}: expected all, a layer (3) or a range (0-5)")
        for target in self.sweep:
            if target.strip() and target.strip() not in user and target.strip() not in GROUPS:
                if len(parse_directions(target, user)) != 1:
                    raise AblationSpecError(f"--ablation-sweep {target!r}: name one direction or a group per item")
        for spec in self.heads:
            for item in (t for t in re.split(r"[,\s]+", spec.strip()) if t):
                if item.lower() != "all" and not re.fullmatch(r"(\d+|\*)\.(\d+|\*)", item):
                    raise AblationSpecError(f"--ablation-heads {item!r}: expected all or LAYER.HEAD such as 3.5, 3.* or *.0")

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

    def conditions(self, n_layers: int, n_heads: int) -> list[Condition]:
        """Every condition requested, baseline first, deduplicated by id (first wins), in a stable order."""
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
        return list(out.values())
