"""How users name what ablation conditions remove: modes, kernels, built-in groups, directions, layers and heads, and
the parsers of the flags that name them (the kinds of condition are :mod:`precompute.conditions.kinds`).

Imports nothing heavy (no torch, no pyarrow): ``--help`` reads the names from here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from precompute.names import DIRECTIONS, SEGMENTS, split_direction

DEFAULT_SETS: tuple[str, ...] = ("directions", "groups")
MODES: tuple[str, ...] = ("zero", "mask")
KERNELS: tuple[str, ...] = ("auto", "sdpa", "eager")  # precompute.analyses.ablations.resolve_kernel
DEFAULT_SWEEP: tuple[str, ...] = ("q_d", "d_q", "cross")
BASELINE = "none"  # the baseline's condition id
HEAD_MODE = "zero"  # a head ablation zeroes the head's output


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
GROUP_NAME = re.compile(r"^[a-z][a-z0-9_+]*$")  # a group's name (and the start of its ids)


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


def parse_group(spec: str, groups: dict[str, tuple[str, ...]] | None = None,
                reserved: Iterable[str] = ()) -> tuple[str, tuple[str, ...]]:
    """``--ablation-group`` value: ``NAME=DIRS`` or ``DIRS`` (named after its directions, e.g. ``q_d+d_q``,
    or after the built-in group it equals). ``reserved``: names other kinds' ids begin with (``head``, ``mlp``)."""
    name, sep, dirs_spec = spec.partition("=")
    if not sep:
        dirs = parse_directions(spec, groups)
        same = [g for g, (gd, _, _) in GROUPS.items() if gd == dirs]
        return (same[0] if same else dirs[0] if len(dirs) == 1 else "+".join(dirs)), dirs
    name = name.strip()
    if not GROUP_NAME.match(name):
        raise AblationSpecError(f"--ablation-group {spec!r}: name {name!r} must be lower case letters, digits, _ or +")
    if name in DIRECTIONS or name in set(reserved):
        raise AblationSpecError(f"--ablation-group {spec!r}: {name!r} is a reserved name; pick another")
    dirs = parse_directions(dirs_spec, groups)
    if name in GROUPS and GROUPS[name][0] != dirs:
        raise AblationSpecError(f"--ablation-group {spec!r}: {name!r} is a built-in group ({GROUPS[name][2]}); pick another name")
    return name, dirs


def _layer_range(spec: str, where: str) -> tuple[int, int] | None:
    """(first, last) layer of a spec, None for ``all``; AblationSpecError (prefixed by ``where``) otherwise."""
    s = spec.strip().lower()
    if s == "all":
        return None
    m = re.fullmatch(r"(\d+)(?:-(\d+))?", s)
    if not m:
        raise AblationSpecError(f"{where}: expected all, a layer (3) or a range (0-5)")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if lo > hi:
        raise AblationSpecError(f"{where}: the range is reversed ({lo} > {hi}); write {hi}-{lo}")
    return lo, hi


def check_layers(spec: str, *, flag: str | None = None) -> None:
    """The syntax of a layer spec, without a model (layer numbers are checked by :func:`parse_layers`)."""
    _layer_range(spec, flag or f"--ablation-layers {spec!r}")


def layer_label(spec: str, where: str) -> tuple[str, int | None]:
    """(label, the single layer or None) of the layers part of a condition id, without a model: ``all``, ``3``,
    ``0-5`` (``3-3`` is ``3``); AblationSpecError prefixed by ``where`` otherwise."""
    bounds = _layer_range(spec, where)
    if bounds is None:
        return "all", None
    lo, hi = bounds
    return (str(lo), lo) if lo == hi else (f"{lo}-{hi}", None)


def parse_layers(spec: str, n_layers: int, *, flag: str | None = None) -> tuple[str, tuple[int, ...]]:
    """A layer spec -> (label, layers): ``all``; ``3``; ``0-5`` (a range covering every layer is ``all``).

    ``flag``: how errors name the user's input (default ``--ablation-layers '<spec>'``); a flag that embeds layers in
    a longer value (``--ablation-components 'mlp@99:q/mean'``) passes its own, quoting the value as typed."""
    where = flag or f"--ablation-layers {spec!r}"
    bounds = _layer_range(spec, where)
    if bounds is None:
        return "all", tuple(range(n_layers))
    lo, hi = bounds
    if hi >= n_layers:
        raise AblationSpecError(f"{where}: the model has layers 0-{n_layers - 1}")
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


def check_modes(modes: Sequence[str]) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(m.strip() for m in modes if m.strip()))
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise AblationSpecError(f"--ablation-mode {','.join(modes)}: expected zero, mask or zero,mask")
    return modes
