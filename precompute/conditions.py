"""Ablation conditions: what a condition removes, where and how, and how users name them.

A *condition* removes something inside the attention computation (never in the weights, so one model
load serves every condition) and re-scores every pair. Its id says what, where and how::

    q_d@all/zero      Query -> Document removed at every layer, post-softmax weights set to 0 (the paper's)
    cross@0-2/mask    group 'cross' (q_d, d_q) removed at layers 0..2 before the softmax
    q_d@3/zero        Query -> Document at layer 3 only (a per-layer sweep, or --ablation-layers 3)
    head:3.5/zero     head 5 of layer 3: its output zeroed
    none              the baseline, nothing removed

``--ablations`` picks condition *sets* (comma-separated):

* ``directions``: the 25 single directions (``names.DIRECTIONS``), at every layer spec of ``--ablation-layers``;
* ``groups``: the built-in :data:`GROUPS` plus the user's ``--ablation-group`` lists, at every layer spec;
* ``layers``: per-layer sweeps, one condition per layer for each target of ``--ablation-sweep`` (default
  ``q_d,d_q,cross``: 3 x n_layers conditions, which stays sane for 24-layer models; name any direction or group);
* ``heads``: zero one head's output at a time, every layer x head or the ``--ablation-heads`` subset;
* ``none``: nothing (the stage is skipped; ``--ablation-group`` is then refused).

Groups given with ``--ablation-group`` are computed whenever given, with or without the ``groups`` set.

Every set is crossed with the ``--ablation-mode`` list (``zero`` and/or ``mask``), except head ablations,
whose mode is always ``zero`` (a head's output is zeroed; there is nothing to mask). When two sets produce
the same condition id (``--ablation-layers 3`` and the layer sweep), the first set listed above keeps it.

Imports nothing heavy (no torch, no pyarrow): ``--help`` reads the names from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from precompute.names import DIRECTIONS, SEGMENT_INDEX, SEGMENTS, split_direction

# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------

CONDITION_SETS: tuple[str, ...] = ("directions", "groups", "layers", "heads", "none")
DEFAULT_SETS: tuple[str, ...] = ("directions", "groups")
MODES: tuple[str, ...] = ("zero", "mask")
KERNELS: tuple[str, ...] = ("auto", "sdpa", "eager")  # precompute.ablation.resolve_kernel
DEFAULT_SWEEP: tuple[str, ...] = ("q_d", "d_q", "cross")
BASELINE = "none"
HEAD_MODE = "zero"


def _into(dst: str) -> tuple[str, ...]:
    return tuple(f"{src}_{dst}" for src in SEGMENTS)


# Built-in groups: name -> (directions, short label, description).
GROUPS: dict[str, tuple[tuple[str, ...], str, str]] = {
    "cross": (("q_d", "d_q"), "Q<->D", "all cross directions Query <-> Document (q_d, d_q)"),
    "into_cls": (_into("cls"), "*->CLS", "everything into CLS (*_cls)"),
    "into_sep1": (_into("sep1"), "*->SEP1", "everything into SEP1 (*_sep1)"),
    "into_sep2": (_into("sep2"), "*->SEP2", "everything into SEP2 (*_sep2)"),
    "into_sep": (_into("sep1") + _into("sep2"), "*->SEP", "everything into SEP1 and SEP2 (*_sep1, *_sep2)"),
    "all": (DIRECTIONS, "all 25", "all 25 directions at once"),
}

SHORT = {"cls": "CLS", "q": "Q", "sep1": "SEP1", "d": "D", "sep2": "SEP2"}
# Spellings accepted for a segment in direction specs (case-insensitive).
_SEGMENT_ALIASES = {
    "cls": "cls", "q": "q", "query": "q", "sep1": "sep1", "d": "d", "doc": "d", "document": "d",
    "passage": "d", "p": "d", "sep2": "sep2", "*": "*",
}
_NAME = re.compile(r"^[a-z][a-z0-9_+]*$")


def short_label(name: str) -> str:
    """``q_d`` -> ``Q->D``, a group -> its label (``cross`` -> ``Q<->D``), anything else unchanged."""
    if name in GROUPS:
        return GROUPS[name][1]
    try:
        src, dst = split_direction(name)
    except ValueError:
        return name
    return f"{SHORT[src]}->{SHORT[dst]}"


def help_text() -> str:
    """The names --help lists (directions as a 5 x 5 grid, then groups)."""
    rows = ["directions (<src>_<dst>; Q->D style also accepted):"]
    for src in SEGMENTS:
        rows.append("  " + " ".join(f"{src + '_' + dst:<10}" for dst in SEGMENTS).rstrip())
    rows.append("groups:")
    rows += [f"  {name:<10} {desc}" for name, (_, _, desc) in GROUPS.items()]
    return "\n".join(rows)


class AblationSpecError(ValueError):
    """A bad ablation flag (one line, for the CLI)."""


def _segment(token: str, spec: str) -> str:
    seg = _SEGMENT_ALIASES.get(token.strip().lower())
    if seg is None:
        raise AblationSpecError(
            f"{spec!r}: unknown segment {token!r}; use one of CLS, Q, SEP1, D, SEP2 (or * for all)"
        )
    return seg


def parse_directions(spec: str, groups: dict[str, tuple[str, ...]] | None = None) -> tuple[str, ...]:
    """Directions named by ``spec``: a comma/space/'+'-separated list of ``q_d``, ``Q->D``, ``Query->Document``,
    ``Q<->D`` (both ways), wildcards (``*->CLS``, ``q_*``) and group names. Returned in ``DIRECTIONS`` order."""
    known = {name: dirs for name, (dirs, _, _) in GROUPS.items()} | (groups or {})
    out: set[str] = set()
    tokens = [t for t in re.split(r"[,\s+]+", spec.strip()) if t]
    if not tokens:
        raise AblationSpecError(f"{spec!r}: no direction given")
    for token in tokens:
        if token in DIRECTIONS:
            out.add(token)
        elif token in known:
            out.update(known[token])
        elif "<->" in token:
            a, b = token.split("<->", 1)
            a, b = _segment(a, spec), _segment(b, spec)
            out.update(_expand(a, b) + _expand(b, a))
        elif "->" in token:
            a, b = token.split("->", 1)
            out.update(_expand(_segment(a, spec), _segment(b, spec)))
        elif "_" in token and token.count("_") == 1:
            a, b = token.split("_")
            out.update(_expand(_segment(a, spec), _segment(b, spec)))
        else:
            raise AblationSpecError(
                f"{spec!r}: {token!r} is neither a direction (q_d, Q->D, *->CLS) nor a group ({', '.join(known)})"
            )
    return tuple(d for d in DIRECTIONS if d in out)


def _expand(src: str, dst: str) -> tuple[str, ...]:
    srcs = SEGMENTS if src == "*" else (src,)
    dsts = SEGMENTS if dst == "*" else (dst,)
    return tuple(f"{s}_{d}" for s in srcs for d in dsts)


def parse_group(spec: str, groups: dict[str, tuple[str, ...]] | None = None) -> tuple[str, tuple[str, ...]]:
    """``--ablation-group`` value: ``NAME=DIRS`` or ``DIRS`` (named after its directions, e.g. ``q_d+d_q``,
    or after the built-in group it equals)."""
    name, sep, dirs_spec = spec.partition("=")
    if not sep:
        dirs = parse_directions(spec, groups)
        same = [g for g, (gd, _, _) in GROUPS.items() if gd == dirs]
        return (same[0] if same else dirs[0] if len(dirs) == 1 else "+".join(dirs)), dirs
    name = name.strip()
    if not _NAME.match(name):
        raise AblationSpecError(f"--ablation-group {spec!r}: name {name!r} must be lower case letters, digits, _ or +")
    if name in DIRECTIONS or name in (BASELINE, "head"):
        raise AblationSpecError(f"--ablation-group {spec!r}: {name!r} is a reserved name; pick another")
    dirs = parse_directions(dirs_spec, groups)
    if name in GROUPS and GROUPS[name][0] != dirs:
        raise AblationSpecError(f"--ablation-group {spec!r}: {name!r} is a built-in group ({GROUPS[name][2]}); pick another name")
    return name, dirs


def parse_layers(spec: str, n_layers: int) -> tuple[str, tuple[int, ...]]:
    """A layer spec -> (label, layers): ``all``; ``3``; ``0-5`` (a range covering every layer is ``all``)."""
    s = spec.strip().lower()
    if s == "all":
        return "all", tuple(range(n_layers))
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", s)
    if not m:
        raise AblationSpecError(f"--ablation-layers {spec!r}: expected all, a layer (3) or a range (0-5)")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if lo > hi or hi >= n_layers:
        raise AblationSpecError(f"--ablation-layers {spec!r}: the model has layers 0-{n_layers - 1}")
    if lo == 0 and hi == n_layers - 1:
        return "all", tuple(range(n_layers))
    return (str(lo) if lo == hi else f"{lo}-{hi}"), tuple(range(lo, hi + 1))


def parse_heads(specs: Iterable[str], n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """``all`` or ``L.H`` items with ``*`` wildcards (``3.5``, ``3.*``, ``*.0``), in (layer, head) order."""
    out: set[tuple[int, int]] = set()
    for spec in specs:
        for item in (t for t in re.split(r"[,\s]+", spec.strip()) if t):
            if item.lower() == "all":
                out.update((l, h) for l in range(n_layers) for h in range(n_heads))
                continue
            m = re.fullmatch(r"(\d+|\*)\.(\d+|\*)", item)
            if not m:
                raise AblationSpecError(f"--ablation-heads {item!r}: expected all or LAYER.HEAD such as 3.5, 3.* or *.0")
            layers = range(n_layers) if m.group(1) == "*" else [int(m.group(1))]
            heads = range(n_heads) if m.group(2) == "*" else [int(m.group(2))]
            for l in layers:
                for h in heads:
                    if l >= n_layers or h >= n_heads:
                        raise AblationSpecError(
                            f"--ablation-heads {item!r}: the model has layers 0-{n_layers - 1} and heads 0-{n_heads - 1}"
                        )
                    out.add((l, h))
    return sorted(out)


def check_sets(sets: Sequence[str]) -> tuple[str, ...]:
    """Validate ``--ablations``; () means no ablation stage."""
    sets = tuple(s.strip() for s in sets if s.strip())
    bad = [s for s in sets if s not in CONDITION_SETS]
    if bad:
        raise AblationSpecError(f"--ablations {','.join(sets)}: unknown set {bad[0]!r}; use any of {', '.join(CONDITION_SETS)}")
    if "none" in sets:
        if len(sets) > 1:
            raise AblationSpecError("--ablations none cannot be combined with other sets")
        return ()
    return tuple(dict.fromkeys(sets))


def check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(m.strip() for m in modes if m.strip()))
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise AblationSpecError(f"--ablation-mode {','.join(modes)}: expected zero, mask or zero,mask")
    return modes


# --------------------------------------------------------------------------------------------------
# Conditions
# --------------------------------------------------------------------------------------------------


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

    def row(self) -> dict:
        return {
            "condition_id": self.condition_id, "condition": self.condition, "mode": self.mode,
            "layers": self.layers, "layer": self.layer, "head": self.head, "kind": self.kind,
            "directions": ",".join(self.directions) if self.directions is not None else None,
        }

    @property
    def label(self) -> str:
        if self.kind == "head":
            return f"L{self.layer}.H{self.head}"
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


def forward_mode(conditions: Sequence[Condition]) -> str:
    modes = {c.mode for c in conditions if c.kind not in ("head", "baseline")}
    if len(modes) > 1:
        raise ValueError(f"conditions sharing a forward pass must share a mode, got {sorted(modes)}")
    return modes.pop() if modes else "zero"


def forward_groups(conditions: Sequence[Condition], stack: int) -> list[list[Condition]]:
    """Conditions cut into groups of ``stack`` that share forwards (same mode within a group), in order."""
    by_mode: dict[str, list[Condition]] = {}
    for c in conditions:
        key = c.mode if c.kind not in ("head", "baseline") else "_any"
        by_mode.setdefault(key, []).append(c)
    out = []
    for key in sorted(by_mode, key=lambda k: (k == "_any", k)):
        cs = by_mode[key]
        out += [cs[i : i + stack] for i in range(0, len(cs), stack)]
    return out
