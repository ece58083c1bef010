"""Component conditions (the paper's open question 2: what the feed-forward blocks contribute).

``mlp@<layers>[:<segment>]/<mode>`` and ``attn@<layers>[:<segment>]/<mode>`` remove a layer's MLP output or whole
attention output (the block's output projection, before its residual add: :mod:`precompute.kernels.block_hooks`),
at every token or only at one segment's tokens (``mlp@3:d/mean`` = the MLP of layer 3 at document tokens only),
with mode ``zero`` or ``mean`` (replaced by its mean over the run's pairs, per layer and segment; the means are
stored in ``component_means``). ``--ablations components`` runs every layer x {mlp, attn} x {all tokens, cls, q, d}
in ``--component-mode``, one condition per layer.
"""

from __future__ import annotations

import re

from precompute.conditions.condition import Condition
from precompute.conditions.vocabulary import AblationSpecError, check_layers, parse_layers
from precompute.names import SEGMENTS

COMPONENT_MODES: tuple[str, ...] = ("zero", "mean")
DEFAULT_COMPONENT_MODE = "mean"
SWEEP_SEGMENTS: tuple[str | None, ...] = (None, "cls", "q", "d")  # the 'components' set: all tokens, CLS, Q, D
_SPEC = re.compile(r"^(mlp|attn)@([^:/]+)(?::([a-z0-9]+))?/(zero|mean)$")


def component_condition(component: str, layers: str, layer_set: tuple[int, ...], segment: str | None,
                        mode: str) -> Condition:
    name = component if segment is None else f"{component}:{segment}"
    layer = layer_set[0] if len(layer_set) == 1 else None
    return Condition(f"{name}@{layers}/{mode}", name, mode, layers, layer, None, "component", None, layer_set,
                     component=component, segment=segment)


def _parts(spec: str) -> tuple[str, str, str | None, str]:
    """(component, layer spec, segment or None, mode) of ``mlp@3:d/mean``; errors quote ``spec`` as typed."""
    m = _SPEC.match(spec.strip().lower())
    if not m:
        raise AblationSpecError(f"--ablation-components {spec!r}: expected mlp|attn@LAYERS[:SEGMENT]/zero|mean, "
                                "e.g. mlp@3:d/mean or attn@0-2/zero")
    component, layer_spec, segment, mode = m.groups()
    if segment is not None and segment not in SEGMENTS:
        raise AblationSpecError(f"--ablation-components {spec!r}: unknown segment {segment!r}; use {', '.join(SEGMENTS)}")
    return component, layer_spec, segment, mode


def parse_component(spec: str, n_layers: int) -> Condition:
    """``mlp@3:d/mean`` -> its condition; AblationSpecError naming what is wrong, quoting ``spec`` as typed."""
    component, layer_spec, segment, mode = _parts(spec)
    label, layer_set = parse_layers(layer_spec, n_layers, flag=f"--ablation-components {spec!r}")
    return component_condition(component, label, layer_set, segment, mode)


def check_component_spec(spec: str) -> None:
    """Syntax only, layers included (their numbers are checked against the model once it is loaded)."""
    check_layers(_parts(spec)[1], flag=f"--ablation-components {spec!r}")


def sweep(n_layers: int, mode: str) -> list[Condition]:
    """The ``components`` set: every layer x {mlp, attn} x {all tokens, cls, q, d}."""
    return [component_condition(component, str(layer), (layer,), segment, mode)
            for layer in range(n_layers) for component in ("mlp", "attn") for segment in SWEEP_SEGMENTS]


def component_targets(conditions, n_layers: int):
    """[conditions, layers, 2] int8 (attn, mlp) for torch: -1 nothing, ALL_TOKENS every token, 0..4 a segment."""
    import torch

    from precompute.kernels.block_hooks import ALL_TOKENS, COMPONENTS

    out = torch.full((len(conditions), n_layers, len(COMPONENTS)), -1, dtype=torch.int8)
    for i, c in enumerate(conditions):
        if c.kind == "component":
            target = ALL_TOKENS if c.segment is None else SEGMENTS.index(c.segment)
            for layer in c.layer_set:
                out[i, layer, COMPONENTS.index(c.component)] = target
    return out if bool((out != -1).any()) else None
