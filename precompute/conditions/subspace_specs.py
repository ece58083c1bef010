"""QK-subspace conditions (the paper's open question 3): ``qk:<layer>.<head>:k<k>/remove`` removes the top-k
singular components of one head's W_Q W_K^T inside the attention function, ``.../scale=<f>`` multiplies them by f
(:mod:`precompute.analyses.subspace`). ``--ablations subspace`` runs every head of ``--subspace-heads`` (``top:5`` = the five
heads with the largest query-level effect (d_z) of ``q_d`` for relevant vs easy negatives in ``head_contrasts``, or a
list such as ``3.5,4.1``) x ``--subspace-k`` (default 1-4) x ``--subspace-ops`` (default remove, scale=2).
"""

from __future__ import annotations

import re

from precompute.conditions.condition import Condition
from precompute.conditions.vocabulary import AblationSpecError

TOP_METRIC, TOP_CONTRAST = "q_d", "relevant_vs_easy"  # what --subspace-heads top:N ranks heads by
_OPERATION = re.compile(r"^(remove|scale=(\d+(?:\.\d+)?))$")  # a plain decimal: no nan, inf, 1e309 or sign


def subspace_condition(layer: int, head: int, k: int, operation: str, factor: float) -> Condition:
    return Condition(f"qk:{layer}.{head}:k{k}/{operation}", f"qk:k{k}", operation, str(layer), layer, head,
                     "subspace", None, (layer,), k=k, factor=factor)


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
    ks = list(range(int(m.group(1)), int(m.group(2)) + 1)) if m else [int(t) for t in re.split(r"[,\s]+", spec.strip())
                                                                        if t.isdigit()]
    if not ks or min(ks) < 1:
        raise AblationSpecError(f"--subspace-k {spec!r}: expected a range 1-4 or a list 1,2,8 of positive numbers")
    return tuple(sorted(set(ks)))
