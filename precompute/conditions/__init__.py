"""Ablation conditions: what a condition removes, where and how, and how users name them.

A *condition* removes something inside the forward pass (never in the weights, so one model load serves every
condition) and re-scores every pair. Its id says what, where and how::

    q_d@all/zero      Query -> Document removed at every layer, post-softmax weights set to 0 (the paper's)
    cross@0-2/mask    group 'cross' (q_d, d_q) removed at layers 0..2 before the softmax
    q_d@3/zero        Query -> Document at layer 3 only (a per-layer sweep, or --ablation-layers 3)
    head:3.5/zero     head 5 of layer 3: its output zeroed
    mlp@3:d/mean      layer 3's MLP output at document tokens replaced by its mean
    qk:3.5:k2/remove  the top 2 singular components of head 3.5's W_Q W_K^T removed
    none              the baseline, nothing removed

Each kind of condition is one registered object (:mod:`precompute.conditions.kinds`): its name, analysis, title, id
grammar, the ``--ablations`` set that asks for it and how it is applied. They are registered here, in this order.

``--ablations`` picks condition *sets* (comma-separated), one per kind:

* ``directions``: the 25 single directions (``names.DIRECTIONS``), at every layer spec of ``--ablation-layers``;
* ``groups``: the built-in :data:`GROUPS` plus the user's ``--ablation-group`` lists, at every layer spec;
* ``layers``: per-layer sweeps, one condition per layer for each target of ``--ablation-sweep`` (default
  ``q_d,d_q,cross``: 3 x n_layers conditions, which stays sane for 24-layer models; name any direction or group);
* ``heads``: zero one head's output at a time, every layer x head or the ``--ablation-heads`` subset;
* ``components``, ``subspace``: :mod:`~precompute.conditions.component_specs`, :mod:`~precompute.conditions.subspace_specs`;
* ``none``: nothing (the stage is skipped; ``--ablation-group`` is then refused).

Groups given with ``--ablation-group`` are computed whenever given, with or without the ``groups`` set.

The attention sets are crossed with the ``--ablation-mode`` list (``zero`` and/or ``mask``), except head ablations,
whose mode is always ``zero`` (a head's output is zeroed; there is nothing to mask). When two sets produce
the same condition id (``--ablation-layers 3`` and the layer sweep), the first set listed above keeps it.

Imports nothing heavy (no torch, no pyarrow): ``--help`` reads the names from here.
"""

from __future__ import annotations

from precompute.conditions import attention_specs  # registers baseline, direction, group, layer_sweep, head (first)
from precompute.conditions import component_specs, subspace_specs  # registers component, subspace
from precompute.conditions.component_specs import COMPONENT_MODES, DEFAULT_COMPONENT_MODE
from precompute.conditions.condition import Condition
from precompute.conditions.forward import Edits, forward_edits, forward_groups, forward_mode
from precompute.conditions.kinds import (
    REGISTRY,
    ConditionKind,
    analyses,
    analysis_of,
    check_sets,
    condition_sets,
    ids_help,
    kind_of,
    parse,
    register,
    sets_help,
)
from precompute.conditions.request import AblationRequest
from precompute.conditions.vocabulary import (
    BASELINE,
    DEFAULT_SETS,
    DEFAULT_SWEEP,
    GROUPS,
    HEAD_MODE,
    KERNELS,
    MODES,
    SHORT,
    AblationSpecError,
    check_modes,
    help_text,
    parse_directions,
    parse_group,
    parse_heads,
    parse_layers,
    short_label,
)

__all__ = [
    "AblationRequest", "AblationSpecError", "BASELINE", "COMPONENT_MODES", "Condition", "ConditionKind",
    "DEFAULT_COMPONENT_MODE", "DEFAULT_SETS", "DEFAULT_SWEEP", "Edits", "GROUPS", "HEAD_MODE", "KERNELS", "MODES",
    "REGISTRY", "SHORT", "analyses", "analysis_of", "attention_specs", "check_modes", "check_sets", "component_specs",
    "condition_sets", "forward_edits", "forward_groups", "forward_mode", "help_text", "ids_help", "kind_of", "parse",
    "parse_directions", "parse_group", "parse_heads", "parse_layers", "register", "sets_help", "short_label",
    "subspace_specs",
]
