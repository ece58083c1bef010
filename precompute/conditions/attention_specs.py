"""The kinds of the attention analysis (the paper's): attention directions, groups of them, per-layer sweeps and heads
removed inside the attention function, and the baseline every condition is tested against.

Ids::

    none              the baseline, nothing removed
    q_d@all/zero      Query -> Document removed at every layer, post-softmax weights set to 0 (the paper's)
    cross@0-2/mask    group 'cross' (q_d, d_q) removed at layers 0..2 before the softmax
    q_d@3/zero        Query -> Document at layer 3 only (a per-layer sweep, or --ablation-layers 3)
    head:3.5/zero     head 5 of layer 3: its output zeroed

A per-layer sweep's id is a direction's or a group's at one layer: the id alone parses to a direction or group
condition; the stored ``kind`` says which set asked for it (the first of directions, groups, layers keeps an id two
of them produce).
"""

from __future__ import annotations

import re

from precompute.conditions.condition import Condition
from precompute.conditions.kinds import ATTENTION, ConditionKind, register, reserved_names
from precompute.conditions.vocabulary import (
    BASELINE,
    GROUP_NAME,
    GROUPS,
    HEAD_MODE,
    MODES,
    AblationSpecError,
    check_layers,
    check_modes,
    parse_directions,
    parse_heads,
    layer_label,
)
from precompute.names import DIRECTIONS

_REMOVAL = re.compile(r"^([a-z][a-z0-9_+]*)@([^/@]+)/([a-z]+)$")  # <name>@<layers>/<mode>
_HEAD = re.compile(r"^head:(\d+)\.(\d+)/([a-z]+)$")


class Baseline(ConditionKind):
    name = "baseline"
    analysis = None  # tested against by every family, tested in none (its t, p and p_holm are NULL)
    title = "Baseline"
    description = "the unablated model, the reference of every condition"
    grammar = BASELINE
    example = BASELINE
    reserved = (BASELINE,)

    def parse(self, text, groups=None):
        return self.make() if text == BASELINE else None

    def make(self) -> Condition:
        return Condition(self.name, BASELINE, "none", "none")

    def format(self, c) -> str:
        return BASELINE

    def conditions(self, request, model):
        return [self.make()]


class _Removal(ConditionKind):
    """Attention directions removed at some layers: ``<direction or group>@<layers>/<zero|mask>``."""

    analysis = ATTENTION
    grammar = "<name>@<layers>/<mode>"

    def names(self, name: str) -> bool:
        """Whether ``name`` (the id's part before '@') is one this kind removes."""
        raise NotImplementedError

    def parse(self, text, groups=None):
        m = _REMOVAL.match(text)
        if not m or not self.names(m.group(1)):
            return None
        name, layers, mode = m.groups()
        if mode not in MODES:
            raise AblationSpecError(f"condition {text!r}: mode {mode!r}; expected {' or '.join(MODES)}")
        label, layer = layer_label(layers, f"condition {text!r}")
        return self.make(name, _directions(name, groups), mode, label, layer)

    def make(self, name: str, dirs: tuple[str, ...] | None, mode: str, layers: str, layer: int | None) -> Condition:
        return Condition(self.name, name, mode, layers, layer, directions=dirs)

    def format(self, c) -> str:
        return f"{c.condition}@{c.layers}/{c.mode}"

    def forward_key(self, c) -> str:
        return f"direction/{c.mode}"

    def forward_modes(self, c) -> dict[str, str]:
        return {"direction": c.mode}

    def apply(self, c, row, edits) -> None:
        for d in c.directions:
            for layer in c.layer_indices(edits.n_layers):
                edits.remove_direction(row, layer, d)


def _directions(name: str, groups: dict[str, tuple[str, ...]] | None) -> tuple[str, ...] | None:
    """The directions a direction or group name removes; None for a user group the id alone does not define."""
    if name in DIRECTIONS:
        return (name,)
    if groups and name in groups:
        return tuple(groups[name])
    if name in GROUPS:
        return GROUPS[name][0]
    if "+" in name:  # a group named after its directions (--ablation-group q_d,d_q is 'q_d+d_q')
        return parse_directions(name)
    return None


class Direction(_Removal):
    name = "direction"
    title = "Directions"
    description = "one attention direction removed (q_d = Query -> Document)"
    condition_set = "directions"
    set_help = "the 25 single directions at every --ablation-layers spec"
    grammar = "<direction>@<layers>/<zero|mask>"
    example = "q_d@all/zero"

    def names(self, name):
        return name in DIRECTIONS

    def check(self, request) -> None:
        check_modes(request.modes)
        for spec in request.layers:
            check_layers(spec)

    def conditions(self, request, model):
        if self.condition_set not in request.asked_sets():
            return []
        return [self.make(d, (d,), mode, label, _single(layer_set))
                for mode in check_modes(request.modes) for label, layer_set in request.layer_specs(model.n_layers)
                for d in DIRECTIONS]


class Group(_Removal):
    name = "group"
    title = "Groups"
    description = "a group of directions removed together (built-in or --ablation-group)"
    condition_set = "groups"
    set_help = "the built-in groups plus --ablation-group, at every --ablation-layers spec"
    grammar = "<group>@<layers>/<zero|mask>"
    example = "cross@0-2/mask"

    def names(self, name):
        return name not in DIRECTIONS and name not in reserved_names() and bool(GROUP_NAME.match(name))

    def check(self, request) -> None:
        request.user_groups()
        if request.groups and not request.asked_sets():
            raise AblationSpecError("--ablation-group needs an ablation stage; drop --ablations none")

    def conditions(self, request, model):
        """The built-in groups (set 'groups') and the user's (whenever given; one naming a single direction is that
        direction's condition)."""
        named = ({name: dirs for name, (dirs, _, _) in GROUPS.items()} if self.condition_set in request.asked_sets()
                 else {}) | request.user_groups()
        return [(DIRECTION if name in DIRECTIONS else self).make(name, dirs, mode, label, _single(layer_set))
                for mode in check_modes(request.modes) for label, layer_set in request.layer_specs(model.n_layers)
                for name, dirs in named.items()]


class LayerSweep(_Removal):
    name = "layer_sweep"
    title = "Per-layer sweeps (delta per layer)"
    description = "a direction or group removed at one layer (the layers set sweeps every layer)"
    condition_set = "layers"
    set_help = "per-layer sweeps of --ablation-sweep, one condition per layer each"
    grammar = "<direction or group>@<layer>/<zero|mask>"
    example = "q_d@3/zero"

    def names(self, name):
        return DIRECTION.names(name) or GROUP.names(name)

    def parse(self, text, groups=None):
        found = super().parse(text, groups)
        if found is not None and found.layer is None:
            raise AblationSpecError(f"condition {text!r}: a per-layer sweep removes at one layer, e.g. q_d@3/zero")
        return found

    def check(self, request) -> None:
        user = request.user_groups()
        for target in request.sweep:
            if target.strip() and target.strip() not in user and target.strip() not in GROUPS:
                try:
                    dirs = parse_directions(target, user)
                except AblationSpecError as err:
                    raise AblationSpecError(f"--ablation-sweep {err}") from None
                if len(dirs) != 1:
                    raise AblationSpecError(f"--ablation-sweep {target!r}: name one direction or a group per item")

    def conditions(self, request, model):
        if self.condition_set not in request.asked_sets():
            return []
        user, out = request.user_groups(), []
        for mode in check_modes(request.modes):
            for target in (t.strip() for t in request.sweep if t.strip()):
                if target in user or target in GROUPS:
                    name, dirs = target, user.get(target) or GROUPS[target][0]
                else:
                    dirs = parse_directions(target, user)
                    if len(dirs) != 1:
                        raise AblationSpecError(f"--ablation-sweep {target!r}: name one direction or a group per item "
                                                "(define a group with --ablation-group NAME=...)")
                    name = dirs[0]
                out += [self.make(name, dirs, mode, str(layer), layer) for layer in range(model.n_layers)]
        return out


class Head(ConditionKind):
    name = "head"
    analysis = ATTENTION
    title = "Heads (delta per head; row = layer)"
    description = "one head's attention output zeroed"
    condition_set = "heads"
    set_help = "zero one head's output at a time, every --ablation-heads head"
    grammar = f"head:<layer>.<head>/{HEAD_MODE}"
    example = "head:3.5/zero"
    reserved = ("head",)

    def parse(self, text, groups=None):
        m = _HEAD.match(text)
        if not m:
            return None
        if m.group(3) != HEAD_MODE:
            raise AblationSpecError(f"condition {text!r}: a head ablation's mode is {HEAD_MODE}")
        return self.make(int(m.group(1)), int(m.group(2)))

    def make(self, layer: int, head: int) -> Condition:
        return Condition(self.name, "head", HEAD_MODE, str(layer), layer, head)

    def format(self, c) -> str:
        return f"head:{c.layer}.{c.head}/{c.mode}"

    def check(self, request) -> None:
        for spec in request.heads:
            for item in (t for t in re.split(r"[,\s]+", spec.strip()) if t):
                if item.lower() != "all" and not re.fullmatch(r"(\d+|\*)\.(\d+|\*)", item):
                    raise AblationSpecError(f"--ablation-heads {item!r}: expected all or LAYER.HEAD such as 3.5, 3.* or *.0")

    def conditions(self, request, model):
        if self.condition_set not in request.asked_sets():
            return []
        return [self.make(layer, head) for layer, head in parse_heads(request.heads or ("all",), model.n_layers,
                                                                      model.n_heads)]

    def apply(self, c, row, edits) -> None:
        edits.remove_head(row, c.layer, c.head)


def _single(layer_set: tuple[int, ...]) -> int | None:
    return layer_set[0] if len(layer_set) == 1 else None


BASELINE_KIND = register(Baseline())
DIRECTION = register(Direction())
GROUP = register(Group())
LAYER_SWEEP = register(LayerSweep())
HEAD = register(Head())
