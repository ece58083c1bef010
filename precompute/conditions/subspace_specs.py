"""QK-subspace conditions (the paper's open question 3): ``qk:<layer>.<head>:k<k>/remove`` removes the top-k
singular components of one head's W_Q W_K^T inside the attention function, ``.../scale=<f>`` multiplies them by f
(:mod:`precompute.analyses.subspace`). ``--ablations subspace`` runs every head of ``--subspace-heads`` (``top:5`` = the five
heads with the largest query-level effect (d_z) of ``q_d`` for relevant vs easy negatives in ``head_contrasts``, or a
list such as ``3.5,4.1``) x ``--subspace-k`` (default 1-4) x ``--subspace-ops`` (default remove, scale=2).
"""

from __future__ import annotations

import re

from precompute.conditions.condition import Condition
from precompute.conditions.kinds import SUBSPACE, ConditionKind, register
from precompute.conditions.vocabulary import AblationSpecError

TOP_METRIC, TOP_CONTRAST = "q_d", "relevant_vs_easy"  # what --subspace-heads top:N ranks heads by
_OPERATION = re.compile(r"^(remove|scale=(\d+(?:\.\d+)?))$")  # a plain decimal: no nan, inf, 1e309 or sign
_ID = re.compile(r"^qk:(\d+)\.(\d+):k(\d+)/(.+)$")


_ALIGNED_ID = re.compile(r"^qk:(\d+)\.(\d+):a(\d+)/(.+)$")


class Subspace(ConditionKind):
    name = "subspace"
    analysis = SUBSPACE
    title = "QK subspaces: a head's top-k singular components of W_Q W_K^T removed or scaled"
    description = "one head's top-k singular components of W_Q W_K^T removed or scaled"
    condition_set = "subspace"
    set_help = "every --subspace-heads head x --subspace-k x --subspace-ops"
    grammar = "qk:<layer>.<head>:k<k>/remove|scale=<f>"
    example = "qk:3.5:k2/remove"
    reserved = ("qk",)
    measures_head = True

    def parse(self, text, groups=None):
        m = _ID.match(text)
        if not m:
            return None
        layer, head, k, operation = m.groups()
        if int(k) < 1:
            raise AblationSpecError(f"condition {text!r}: k counts singular components, from 1")
        return self.make(int(layer), int(head), int(k), operation)

    def make(self, layer: int, head: int, k: int, operation: str) -> Condition:
        operation = operation.strip()
        return Condition(self.name, "qk", operation, str(layer), layer, head, k=k, operation=operation,
                         factor=parse_operation(operation))

    def format(self, c) -> str:
        return f"qk:{c.layer}.{c.head}:k{c.k}/{c.operation}"

    def check(self, request) -> None:
        parse_heads_spec(request.subspace_heads)
        parse_ks(request.subspace_k)
        for op in request.subspace_ops:
            parse_operation(op)

    def conditions(self, request, model):
        """Every head of ``model.subspace_heads`` (resolved by the stage) x k x operation."""
        if self.condition_set not in request.asked_sets():
            return []
        ks = parse_ks(request.subspace_k)
        if model.head_dim is not None and max(ks) > model.head_dim:
            raise AblationSpecError(f"--subspace-k {request.subspace_k!r}: a head has only {model.head_dim} singular "
                                    f"components; pass k values up to {model.head_dim}")
        out = []
        for layer, head in model.subspace_heads:
            if not (0 <= layer < model.n_layers and 0 <= head < model.n_heads):
                raise AblationSpecError(f"--subspace-heads {layer}.{head}: the model has layers 0-{model.n_layers - 1} "
                                        f"and heads 0-{model.n_heads - 1}")
            out += [self.make(layer, head, k, op) for k in ks for op in request.subspace_ops]
        return out

    def forward_key(self, c) -> str:
        return "subspace"

    def apply(self, c, row, edits) -> None:
        edits.edit_qk(row, c.layer, c.head, c.k, c.factor)


class AlignedSubspace(Subspace):
    """The components of a head's W_Q W_K^T chosen by alignment instead of by singular value: ``qk:L.H:aN/remove``
    removes (``scale=f`` scales) the N components with the largest sigma-weighted alignment ``sigma_k (u_k . v_k)``
    (:func:`precompute.analyses.subspace.aligned_components`), the part of the head that matches a token to tokens
    like itself; the alignment of every removed component is stored with the condition
    (``ablation_conditions.alignments``). Same heads, N values and operations as the 'subspace' set
    (--subspace-heads, --subspace-k, --subspace-ops), same Holm family."""

    name = "subspace_aligned"
    title = "QK subspaces by alignment: a head's N most aligned components of W_Q W_K^T removed or scaled"
    description = ("one head's N components of W_Q W_K^T with the largest sigma_k * (u_k . v_k) removed or scaled "
                   "(the alignments stored)")
    condition_set = "aligned"
    set_help = "every --subspace-heads head x N in --subspace-k x --subspace-ops, components chosen by alignment"
    grammar = "qk:<layer>.<head>:a<n>/remove|scale=<f>"
    example = "qk:3.5:a2/remove"
    reserved = ()

    def parse(self, text, groups=None):
        m = _ALIGNED_ID.match(text)
        if not m:
            return None
        layer, head, n, operation = m.groups()
        if int(n) < 1:
            raise AblationSpecError(f"condition {text!r}: a<n> counts aligned components, from 1")
        return self.make(int(layer), int(head), int(n), operation)

    def make(self, layer: int, head: int, k: int, operation: str, alignments=None) -> Condition:
        operation = operation.strip()
        return Condition(self.name, "qk", operation, str(layer), layer, head, k=k, operation=operation,
                         factor=parse_operation(operation), alignments=alignments)

    def format(self, c) -> str:
        return f"qk:{c.layer}.{c.head}:a{c.k}/{c.operation}"

    def conditions(self, request, model):
        if self.condition_set not in request.asked_sets():
            return []
        base = [c for c in SUBSPACE_KIND.conditions(_asking(request, SUBSPACE_KIND.condition_set), model)]
        known = model.alignments
        return [self.make(c.layer, c.head, c.k, c.operation,
                          None if known is None else tuple(known(c.layer, c.head, c.k))) for c in base]

    def apply(self, c, row, edits) -> None:
        edits.edit_qk(row, c.layer, c.head, c.k, c.factor, aligned=True)


def _asking(request, condition_set: str):
    """``request`` asking for ``condition_set`` (so a kind can expand another kind's set with the same flags)."""
    from dataclasses import replace

    return replace(request, sets=(*request.sets, condition_set))


def aligned_order(sigma, alignment, n: int) -> list[int]:
    """The ``n`` components (indices k, 0 = largest singular value) an aligned condition ``qk:L.H:a<n>`` edits: the
    largest sigma-weighted alignment ``sigma_k * (u_k . v_k)`` first, ties by singular value order. A component with
    alignment near 1 and sigma near 0 adds nothing to any logit, so alignment alone would not do."""
    score = [float(s) * float(a) for s, a in zip(sigma, alignment)]
    return sorted(range(len(score)), key=lambda k: (-score[k], k))[:n]


def removed_components(condition_id: str) -> tuple[int, int, str, int] | None:
    """(layer, head, "top" or "aligned", n) of a QK-subspace condition id (``qk:3.5:k2/remove``,
    ``qk:3.5:a2/scale=2``); None for any other text."""
    for kind, how in ((SUBSPACE_KIND, "top"), (ALIGNED_KIND, "aligned")):
        try:
            c = kind.parse(str(condition_id))
        except AblationSpecError:
            return None
        if c is not None:
            return c.layer, c.head, how, c.k
    return None


def parse_heads_spec(spec: str) -> int | list[tuple[int, int]]:
    """``top:N`` -> N; ``3.5,4.1`` -> [(3, 5), (4, 1)]; AblationSpecError otherwise."""
    spec = spec.strip().lower()
    m = re.fullmatch(r"top:(\d+)", spec)
    if m and int(m.group(1)) > 0:
        return int(m.group(1))
    items = [t for t in re.split(r"[,\s]+", spec) if t]
    heads = []
    for item in items:
        m = re.fullmatch(r"(\d+)\.(\d+)", item)
        if not m:
            raise AblationSpecError(f"--subspace-heads {spec!r}: expected top:N or LAYER.HEAD items such as 3.5,4.1")
        heads.append((int(m.group(1)), int(m.group(2))))
    if not heads:
        raise AblationSpecError(f"--subspace-heads {spec!r}: no head given")
    return heads


def parse_operation(op: str) -> float:
    """``remove`` -> 0.0, ``scale=2`` -> 2.0; AblationSpecError otherwise (the factor is a finite number >= 0)."""
    m = _OPERATION.match(op.strip())
    if not m:
        raise AblationSpecError(f"--subspace-ops {op!r}: expected remove or scale=<factor> with a plain decimal factor "
                                "(scale=2, scale=0.5)")
    return 0.0 if m.group(1) == "remove" else float(m.group(2))


def parse_ks(spec: str) -> tuple[int, ...]:
    """``1-4`` or ``1,2,8`` -> the k values; AblationSpecError otherwise."""
    m = re.fullmatch(r"(\d+)-(\d+)", spec.strip())
    items = [t for t in re.split(r"[,\s]+", spec.strip()) if t]
    ks = (list(range(int(m.group(1)), int(m.group(2)) + 1)) if m else
          [int(t) for t in items] if all(t.isdigit() for t in items) else [])  # 1,x is refused, not read as 1
    if not ks or min(ks) < 1:
        raise AblationSpecError(f"--subspace-k {spec!r}: expected a range 1-4 or a list 1,2,8 of positive numbers")
    return tuple(sorted(set(ks)))


SUBSPACE_KIND = register(Subspace())
ALIGNED_KIND = register(AlignedSubspace())
