"""Ablation conditions and the ablation pass: re-score every pair with attention directions or heads removed.

Conditions
----------
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

The pass
--------
Pairs are cut into the summary pass's chunks, then length-sorted batches. ``stack`` conditions share a
forward pass: every batch of ``batch_size // stack`` pairs is replicated once per condition (rows =
pairs x conditions, each row with its own :class:`~precompute.attention.Intervention` slice), so a forward
keeps about ``batch_size`` rows. Conditions sharing a forward must share a direction mode.

Two kernels compute the same thing:

* ``sdpa`` (default): :func:`ablation_attention`, built on ``scaled_dot_product_attention`` (fused kernels,
  no [batch, head, seq, seq] weights in memory). ``mask`` mode is one SDPA call with the removed
  (query token, key token) pairs masked. ``zero`` mode uses ``sum_kept p_ij v_j = m_i * softmax_kept(v)_i``
  with ``m_i`` the softmax mass row i keeps: a second SDPA call whose values are the one-hot key segments
  gives each row's mass per segment, and only the rows whose segment loses something are computed.
* ``eager``: :class:`precompute.attention.AtlasProbe` (the summary pass's own attention function), slower.

Both equal a hand-written forward pass to 1e-5 (tests/precompute/test_ablation.py). A row left with
nothing to attend to (all its keys removed in ``mask`` mode) outputs zeros, never NaN.

The baseline ``none`` is scored by the same pass (same kernel and batching) as the conditions, so every
delta compares like with like. With the eager kernel and ``stack`` 1 it is bit-identical to
``pairs.score``; with sdpa it equals a plain SDPA scoring pass bit for bit and ``pairs.score`` to a few 1e-6
(two kernels summing in a different order; 3e-6 on MiniLM logits of magnitude ~10). Stacking conditions
(``stack`` > 1) changes the shapes of the matrix products and moves scores by float noise (< 1e-5) too.

Storage
-------
Scores go to ``_parts/ablation_scores/c<chunk>-<hash>.parquet``, one part per (chunk, group of conditions
sharing forwards), written atomically. A rerun reads which (condition, chunk) the parts hold and computes
only the rest; when every requested condition is complete the parts are merged with the existing
``ablation_scores.parquet`` (the conditions of earlier runs are kept), ``ablation_conditions`` is rewritten,
and ``ablation_metrics`` / ``ablation_summary`` are recomputed (:mod:`precompute.significance`).

This module imports no torch or pyarrow at import time: ``--help`` reads the names from it.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from precompute.names import DIRECTIONS, SEGMENT_INDEX, SEGMENTS, split_direction

if TYPE_CHECKING:  # pragma: no cover
    import torch

# --------------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------------

CONDITION_SETS: tuple[str, ...] = ("directions", "groups", "layers", "heads", "none")
DEFAULT_SETS: tuple[str, ...] = ("directions", "groups")
MODES: tuple[str, ...] = ("zero", "mask")
KERNELS: tuple[str, ...] = ("sdpa", "eager")
DEFAULT_SWEEP: tuple[str, ...] = ("q_d", "d_q", "cross")
KINDS: tuple[str, ...] = ("baseline", "direction", "group", "layer_sweep", "head")
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


# --------------------------------------------------------------------------------------------------
# The attention function (sdpa kernel)
# --------------------------------------------------------------------------------------------------

IMPLEMENTATION = "matching_atlas_ablation"
_ACTIVE = None


class _State:
    """What the ablation attention needs to know about the batch being run."""

    def __init__(self, segments, intervention):
        import torch

        from precompute.attention import padded_segments, segment_pair_index

        self.segments = segments
        self.intervention = intervention
        self.layer = 0
        self.key_padding = segments < 0  # [batch, seq]
        self.seg6 = padded_segments(segments)
        self._cached: tuple | None = None  # (directions of one layer [batch, 5, 5], masks)
        if intervention is not None and intervention.directions is not None:
            self.pair_index = segment_pair_index(segments)
            self.onehot = torch.nn.functional.one_hot(segments.clamp(min=0), len(SEGMENTS)) * (~self.key_padding)[..., None]

    def masks(self, layer: int):
        """None when nothing is removed at ``layer``; else (removal [b, s, s], row keeps a segment [b, s, 5],
        rows that lose something [b, s]) for that layer, cached across layers with the same table."""
        import torch
        import torch.nn.functional as F

        from precompute.attention import token_removal

        iv = self.intervention
        if iv is None or iv.directions is None:
            return None
        remove = iv.directions[:, layer]  # [batch, 5, 5]
        if self._cached is not None and torch.equal(self._cached[0], remove):
            return self._cached[1]
        if not bool(remove.any()):
            masks = None
        else:
            b, s = self.segments.shape
            removal = token_removal(remove, self.pair_index)  # [batch, seq, seq]
            keep6 = F.pad(~remove, (0, 0, 0, 1), value=True)  # [batch, 6, 5]: padding rows keep everything
            keep_rows = keep6.gather(1, self.seg6[..., None].expand(b, s, len(SEGMENTS)))  # [batch, seq, 5]
            loses = F.pad(remove.any(-1), (0, 1)).gather(1, self.seg6)  # [batch, seq]
            masks = (removal, keep_rows, loses)
        self._cached = (remove, masks)
        return masks


def _allowed(attention_mask, removal, key_padding):
    """[batch, 1, seq, seq] bool: True where a query token may attend to a key token."""
    import torch

    allowed = ~(removal | key_padding[:, None, :])[:, None]
    if attention_mask is not None:
        base = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        allowed = allowed & base
    return allowed


def ablation_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA attention with the active batch's :class:`Intervention` applied per row (see the module docstring).

    query, key, value: [batch, head, seq, head_dim]; returns ([batch, seq, head, head_dim], None).
    """
    import torch.nn.functional as F

    state = _ACTIVE
    if state is None:
        raise RuntimeError("matching_atlas_ablation attention called outside AblationProbe.run(); use AblationProbe")
    layer = state.layer
    state.layer += 1
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    masks = state.masks(layer)
    if masks is None:  # nothing removed here: exactly the stock SDPA call
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, scale=scaling)
    else:
        removal, keep_rows, loses = masks
        allowed = _allowed(attention_mask, removal, state.key_padding)
        empty = ~allowed.any(-1)  # [batch, 1, seq]: rows with nothing left to attend to
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, dropout_p=0.0, scale=scaling)
        if state.intervention.mode == "zero":
            out = out * _kept_mass(query, key, state, keep_rows, loses, scaling)[..., None]
        out = out.masked_fill(empty[..., None], 0.0)  # also clears NaN where a kernel gives NaN for such rows
    iv = state.intervention
    if iv is not None and iv.heads is not None:
        out = out * (~iv.heads[:, layer]).to(out.dtype)[:, :, None, None]
    return out.transpose(1, 2).contiguous(), None


def _kept_mass(query, key, state, keep_rows, loses, scaling):
    """[batch, head, seq]: softmax mass (over all non-padding keys) that each query row keeps; 1 for rows that
    lose nothing. Computed as SDPA with one-hot key segments as values, only for the rows that lose something."""
    import torch
    import torch.nn.functional as F

    b, h, s, dh = query.shape
    n_seg = len(SEGMENTS)
    rows = int(loses.sum(1).max())
    if rows == 0:
        return torch.ones(b, h, s, dtype=query.dtype, device=query.device)
    idx = torch.argsort((~loses).to(torch.int8), dim=1, stable=True)[:, :rows]  # [batch, rows]: losing rows first
    q_sub = query.gather(2, idx[:, None, :, None].expand(b, h, rows, dh))
    onehot = state.onehot.to(query.dtype)
    if dh > n_seg:  # fused kernels want value dim == query dim
        onehot = F.pad(onehot, (0, dh - n_seg))
    masses = F.scaled_dot_product_attention(
        q_sub, key, onehot[:, None].expand(b, h, s, onehot.shape[-1]),
        attn_mask=~state.key_padding[:, None, None, :], dropout_p=0.0, scale=scaling,
    )[..., :n_seg]  # [batch, head, rows, 5]
    keep_sub = keep_rows.gather(1, idx[..., None].expand(b, rows, n_seg)).to(masses.dtype)  # [batch, rows, 5]
    kept = (masses * keep_sub[:, None]).sum(-1)  # [batch, head, rows]
    kept = torch.where(loses.gather(1, idx)[:, None], kept, torch.ones_like(kept))
    return torch.ones(b, h, s, dtype=query.dtype, device=query.device).scatter(2, idx[:, None].expand(b, h, rows), kept)


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(IMPLEMENTATION, ablation_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)


class AblationProbe:
    """Installs :func:`ablation_attention` for the duration of a ``with`` block (restores the previous one)."""

    def __init__(self, model):
        self.model = model
        self._previous: str | None = None

    def __enter__(self) -> "AblationProbe":
        _register()
        self._previous = self.model.config._attn_implementation
        self.model.set_attn_implementation(IMPLEMENTATION)
        return self

    def __exit__(self, *exc) -> None:
        self.model.set_attn_implementation(self._previous or "eager")

    def run(self, inputs: dict, segments, *, intervention=None):
        """One forward pass; returns logits [batch, labels]."""
        import torch

        global _ACTIVE
        with torch.inference_mode():
            state = _State(segments.long(), intervention)
            _ACTIVE = state
            try:
                logits = self.model(**inputs).logits
            finally:
                _ACTIVE = None
        n_layers = self.model.config.num_hidden_layers
        if state.layer != n_layers:
            raise RuntimeError(f"attention ran {state.layer} times for a {n_layers}-layer model; is it a plain encoder?")
        return logits


class _EagerProbe:
    """The summary pass's attention function (``AtlasProbe``) behind the same interface."""

    def __init__(self, model):
        from precompute.attention import AtlasProbe

        self._probe = AtlasProbe(model)

    def __enter__(self):
        self._probe.__enter__()
        return self

    def __exit__(self, *exc):
        self._probe.__exit__(*exc)

    def run(self, inputs, segments, *, intervention=None):
        return self._probe.run(inputs, segments, intervention=intervention)[0]


def probe(model, kernel: str = "sdpa"):
    if kernel == "sdpa":
        return AblationProbe(model)
    if kernel == "eager":
        return _EagerProbe(model)
    raise ValueError(f"--ablation-kernel {kernel!r}: expected sdpa or eager")


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def score_conditions(lm, pairs: Sequence, conditions: Sequence[Condition], *, batch_size: int, max_length: int,
                     kernel: str = "sdpa", on_batch: Callable[[int], None] | None = None) -> dict:
    """Score ``pairs`` under every condition, all conditions sharing each forward pass.

    Returns condition_id -> float32 scores aligned with ``pairs``. Rows of a forward are the batch's pairs
    repeated per condition (condition-major); a batch holds ``batch_size // len(conditions)`` pairs.
    """
    import numpy as np

    from precompute.attention import Intervention
    from precompute.model import relevance
    from precompute.segments import encode
    from precompute.summaries import length_batches

    if not conditions or not pairs:
        return {c.condition_id: np.zeros(0, np.float32) for c in conditions}
    cfg = lm.config
    k = len(conditions)
    mode = forward_mode(conditions)
    dirs, heads = intervention_arrays(conditions, cfg.num_hidden_layers, cfg.num_attention_heads)
    dirs = dirs.to(lm.device) if dirs is not None else None
    heads = heads.to(lm.device) if heads is not None else None
    position = {p.pair_id: i for i, p in enumerate(pairs)}
    out = np.full((k, len(pairs)), np.nan, dtype=np.float32)
    with probe(lm.model, kernel) as pr:
        for batch in length_batches(lm, pairs, max(1, batch_size // k), max_length):
            enc = encode(lm.tokenizer, [p.query for p in batch], [p.doc for p in batch], max_length).to(lm.device)
            n = len(batch)
            inputs = {name: t.repeat(k, 1) for name, t in enc.inputs.items()}
            iv = Intervention(
                mode,
                dirs.repeat_interleave(n, 0) if dirs is not None else None,
                heads.repeat_interleave(n, 0) if heads is not None else None,
            )
            logits = pr.run(inputs, enc.segments.repeat(k, 1), intervention=iv)
            scores = relevance(logits).view(k, n).cpu().numpy()
            cols = [position[p.pair_id] for p in batch]
            out[:, cols] = scores
            if on_batch:
                on_batch(n * k)
    if np.isnan(out).any():
        raise RuntimeError("ablation pass produced NaN scores")
    return {c.condition_id: out[i] for i, c in enumerate(conditions)}


# --------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------

SCORES, CONDITIONS = "ablation_scores", "ablation_conditions"


# The estimate's timing probe scores a throw-away batch; it calls this name, not score_conditions, so
# what the pass itself scores stays observable (the tests count score_conditions calls).
_timing_scorer = score_conditions


def _seconds_per_scoring(lm, pairs: Sequence, condition: Condition, cfg, kernel: str) -> float:
    """From one timed batch of typical length after a warm-up (its scores are discarded)."""
    import time

    from precompute.summaries import typical_batch

    sample = typical_batch(pairs, cfg.batch_size)
    kw = dict(batch_size=cfg.batch_size, max_length=cfg.max_length, kernel=kernel)
    _timing_scorer(lm, sample, [condition], **kw)  # warm-up
    t0 = time.perf_counter()
    _timing_scorer(lm, sample, [condition], **kw)
    return (time.perf_counter() - t0) / len(sample)


def _part_key(chunk_key: str, ids: Sequence[str]) -> str:
    return f"c{chunk_key}-{hashlib.sha1(','.join(ids).encode()).hexdigest()[:12]}"


def _done_in_parts(writer) -> set[tuple[str, str]]:
    """(condition_id, chunk key) held by the score parts already on disk."""
    import pyarrow.parquet as pq

    done = set()
    for path in writer.part_paths(SCORES):
        chunk = path.stem.split("-", 1)[0][1:]
        for cid in set(pq.read_table(path, columns=["condition_id"]).column("condition_id").to_pylist()):
            done.add((cid, chunk))
    return done


def _computed(writer) -> set[str]:
    """Condition ids in the finished ablation_scores table."""
    if not writer.has_table(SCORES):
        return set()
    import duckdb

    path = str(writer.table_path(SCORES)).replace("'", "''")
    return {r[0] for r in duckdb.sql(f"SELECT DISTINCT condition_id FROM read_parquet('{path}')").fetchall()}


def _known_definitions(writer) -> dict[str, dict]:
    """condition_id -> ablation_conditions row, from the finished table and pending parts."""
    import pyarrow.parquet as pq

    rows: dict[str, dict] = {}
    paths = ([writer.table_path(CONDITIONS)] if writer.has_table(CONDITIONS) else []) + writer.part_paths(CONDITIONS)
    for path in paths:
        for row in pq.read_table(path).to_pylist():
            rows.setdefault(row["condition_id"], row)
    return rows


def _check_definitions(requested: Sequence[Condition], known: dict[str, dict]) -> None:
    for c in requested:
        old = known.get(c.condition_id)
        if old is not None and old["directions"] != c.row()["directions"]:
            raise ValueError(
                f"condition {c.condition_id} was computed in this run folder with directions {old['directions']}, "
                f"now {c.row()['directions']}; give the group another name (--ablation-group NAME=...)"
            )


def _check_settings(manifest: dict, writer, kernel: str, stack: int) -> None:
    from precompute.store.writer import StoreError

    old = manifest.get("ablations") or {}
    if not (writer.has_table(SCORES) or writer.part_paths(SCORES)):
        return
    for key, value, flag in (("kernel", kernel, "--ablation-kernel"), ("stack", stack, "--ablation-stack")):
        if key in old and old[key] != value:
            raise StoreError(
                f"{flag} {value} differs from the ablations already in this folder ({old[key]}); "
                f"pass {flag} {old[key]}, another --out, or delete that folder"
            )


def run_stage(*, cfg, lm, ds, pair_set, writer, manifest) -> None:
    """Compute the requested conditions that the run folder lacks, then (re)write the ablation tables."""
    import numpy as np
    import pyarrow as pa

    from precompute import significance
    from precompute.job import log
    from precompute.stages import _progress
    from precompute.store.writer import StoreError
    from precompute.summaries import chunked

    request = AblationRequest.from_config(cfg)
    n_layers, n_heads = lm.config.num_hidden_layers, lm.config.num_attention_heads
    requested = request.conditions(n_layers, n_heads)
    if not requested:
        return
    if not writer.has_table("pairs"):
        raise StoreError("the ablations stage needs the pairs table of the summary pass; run the summaries stage first")
    kernel, stack = cfg.ablation_kernel, max(1, int(cfg.ablation_stack))
    _check_settings(manifest, writer, kernel, stack)
    known = _known_definitions(writer)
    _check_definitions(requested, known)
    computed = _computed(writer)
    todo = [c for c in requested if c.condition_id not in computed]
    chunks = list(chunked(pair_set.pairs, cfg.chunk_size))
    chunk_keys = {key for key, _ in chunks}

    if todo:
        # kernel and stack fix the numbers of every part: record them before the first part is written
        manifest["ablations"] = {**(manifest.get("ablations") or {}), "kernel": kernel, "stack": stack}
        writer.write_manifest(manifest)
        pending = [c for c in todo if c.condition_id not in known]
        if pending:  # definitions first, so a folder never holds scores it cannot describe
            writer.write_part(CONDITIONS, _part_key("defs", [c.condition_id for c in pending]),
                              pa.Table.from_pylist([c.row() for c in pending]))
        done = _done_in_parts(writer)
        work = [(group, key, chunk) for group in forward_groups(todo, stack) for key, chunk in chunks]
        total = len(todo) * len(pair_set.pairs)
        left = sum(len(chunk) * sum((c.condition_id, key) not in done for c in group) for group, key, chunk in work)
        seconds = _seconds_per_scoring(lm, pair_set.pairs, todo[0], cfg, kernel) * left if left else 0.0
        log(f"Ablation pass: {len(todo)} of {len(requested)} requested conditions to compute ({len(requested) - len(todo)} "
            f"already in the folder) x {len(pair_set.pairs):,} pairs: {left:,} scorings left (kernel {kernel}, "
            f"{stack} condition(s) per forward, on {lm.device}), estimated {seconds / 60:.1f} min.")
        with _progress(total, "ablations", "scoring", cfg.progress) as bar:
            bar.update(total - left)
            for group, key, chunk in work:
                missing = [c for c in group if (c.condition_id, key) not in done]
                if not missing:
                    continue
                scores = score_conditions(lm, chunk, missing, batch_size=cfg.batch_size, max_length=cfg.max_length,
                                          kernel=kernel, on_batch=bar.update)
                ids = [p.pair_id for p in chunk]
                writer.write_part(SCORES, _part_key(key, [c.condition_id for c in missing]), pa.table({
                    "condition_id": [c.condition_id for c in missing for _ in ids],
                    "pair_id": pa.array(ids * len(missing), pa.int32()),
                    "score": pa.array(np.concatenate([scores[c.condition_id] for c in missing]), pa.float32()),
                }))
    complete = _complete_in_parts(writer, chunk_keys) - computed
    if complete:
        _merge_scores(writer, complete)
    computed = _computed(writer)
    lacking = {c.condition_id for c in requested} - computed
    if lacking:
        raise RuntimeError(f"ablation scores missing after the pass: {sorted(lacking)[:5]}")

    definitions = {**_known_definitions(writer), **{c.condition_id: c.row() for c in requested}}
    if computed - set(definitions):
        raise StoreError(f"ablation_scores holds conditions without a definition ({sorted(computed - set(definitions))[:3]}); "
                         "delete the ablation_* tables and rerun")
    rows = [definitions[cid] for cid in sorted(computed)]
    changed = bool(complete) or not writer.has_table(CONDITIONS)
    if changed:
        writer.write_table(CONDITIONS, pa.Table.from_pylist(rows))

    old = manifest.get("ablations") or {}
    measures = list(dict.fromkeys([*old.get("measures", []), *cfg.measures]))
    scopes = significance.resolve_scopes(cfg.eval_scopes, cfg.candidates)
    scopes = [s for s in significance.SCOPES if s in set(old.get("scopes", [])) | set(scopes)]
    stats = significance.write_tables(writer, ds, pair_set, measures, scopes, rebuild=changed)
    _clean_parts(writer, computed)

    kinds: dict[str, int] = {}
    for row in rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
    manifest["ablations"] = {
        "kernel": kernel,
        "stack": stack,
        "conditions": sorted(computed),
        "counts": kinds,
        "measures": measures,
        "scopes": scopes,
        "groups": {r["condition"]: r["directions"].split(",") for r in rows if r["kind"] == "group"},
        "last_request": {
            "sets": list(request.sets), "modes": list(request.modes), "layers": list(request.layers),
            "groups": list(request.groups), "sweep": list(request.sweep), "heads": list(request.heads),
            "requested": len(requested), "computed_now": len(todo),
        },
        "holm_family": stats["holm_family"],
    }
    manifest["tables"] = {**manifest.get("tables", {}), **stats["tables"]}


def _complete_in_parts(writer, chunk_keys: set[str]) -> set[str]:
    """Condition ids whose score parts cover every chunk of the run."""
    chunks: dict[str, set[str]] = {}
    for cid, key in _done_in_parts(writer):
        chunks.setdefault(cid, set()).add(key)
    return {cid for cid, keys in chunks.items() if keys >= chunk_keys}


def _merge_scores(writer, new: set[str]) -> None:
    """Existing ablation_scores + the conditions ``new`` from the parts -> ablation_scores.parquet (atomic)."""
    parts = writer.root / "_parts" / SCORES
    ids = ", ".join("'" + cid.replace("'", "''") + "'" for cid in sorted(new))
    pieces = [
        f"SELECT condition_id, pair_id, score FROM parts_scores WHERE condition_id IN ({ids}) "
        "QUALIFY row_number() OVER (PARTITION BY condition_id, pair_id) = 1"
    ]
    if writer.has_table(SCORES):
        old = str(writer.table_path(SCORES)).replace("'", "''")
        pieces.insert(0, f"SELECT condition_id, pair_id, score FROM read_parquet('{old}') WHERE condition_id NOT IN ({ids})")
    writer.merge_parts(SCORES, select_sql=" UNION ALL ".join(f"({p})" for p in pieces), sources={"scores": parts})


def _clean_parts(writer, computed: set[str]) -> None:
    """Remove the parts whose conditions are all in the finished tables; keep the work of unfinished ones."""
    import pyarrow.parquet as pq

    for table in (SCORES, CONDITIONS):
        for path in writer.part_paths(table):
            if set(pq.read_table(path, columns=["condition_id"]).column("condition_id").to_pylist()) <= computed:
                path.unlink()
        if not writer.part_paths(table):
            writer.drop_parts(table)
