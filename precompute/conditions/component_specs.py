"""Component conditions (the paper's open question 2: what the feed-forward blocks contribute).

``mlp@<layers>[:<segment>]/<mode>`` and ``attn@<layers>[:<segment>]/<mode>`` remove a layer's MLP output or whole
attention output (the block's output projection, before its residual add: :mod:`precompute.kernels.block_hooks`),
at every token or only at one segment's tokens (``mlp@3:d/mean`` = the MLP of layer 3 at document tokens only),
with mode ``zero`` or ``mean`` (replaced by its mean over the run's pairs, per layer and segment; the means are
stored in ``component_means``). ``--ablations components`` runs every layer x {mlp, attn} x {all tokens, cls, q, d}
in ``--component-mode``, one condition per layer; ``--ablation-components`` names more, computed whenever given.

Stores of schema versions 1 and 2 hold these ids as ``mlp:d@3/mean``; that form still parses (to the documented id).
"""

from __future__ import annotations

import re

from precompute.conditions.condition import Condition
from precompute.conditions.kinds import COMPONENTS, ConditionKind, register
from precompute.conditions.vocabulary import AblationSpecError, layer_label, parse_layers
from precompute.names import SEGMENTS

COMPONENT_MODES: tuple[str, ...] = ("zero", "mean")
DEFAULT_COMPONENT_MODE = "mean"
BLOCKS: tuple[str, ...] = ("mlp", "attn")  # what a component condition removes
SWEEP_SEGMENTS: tuple[str | None, ...] = (None, "cls", "q", "d")  # the 'components' set: all tokens, CLS, Q, D
_ID = re.compile(r"^(mlp|attn)@([^:/@]+)(?::([a-z0-9]+))?/([a-z]+)$")  # mlp@3:d/mean
_LEGACY_ID = re.compile(r"^(mlp|attn)(?::([a-z0-9]+))?@([^:/@]+)/([a-z]+)$")  # mlp:d@3/mean (schema 1 and 2)
_GRAMMAR = "mlp|attn@<layers>[:<segment>]/zero|mean"


class Component(ConditionKind):
    name = "component"
    analysis = COMPONENTS
    title = "Components: attention and MLP block outputs removed"
    description = "a layer's MLP or attention block output removed, at every token or at one segment's"
    condition_set = "components"
    set_help = "every layer x {mlp, attn} x {all tokens, cls, q, d} in --component-mode"
    grammar = _GRAMMAR
    example = "mlp@3:d/mean"
    reserved = BLOCKS

    def parse(self, text, groups=None):
        low = text.lower()
        return _parse(low, f"condition {text!r}") if _ID.match(low) or _LEGACY_ID.match(low) else None

    def make(self, component: str, layers: str, layer: int | None, segment: str | None, mode: str) -> Condition:
        return Condition(self.name, component, mode, layers, layer, component=component, segment=segment)

    def format(self, c) -> str:
        return f"{c.component}@{c.layers}{'' if c.segment is None else ':' + c.segment}/{c.mode}"

    def check(self, request) -> None:
        if request.component_mode not in COMPONENT_MODES:
            raise AblationSpecError(f"--component-mode {request.component_mode!r}: expected zero or mean")
        for spec in request.components:
            _parse(spec, f"--ablation-components {spec!r}")
        if request.components and not request.asked_sets():
            raise AblationSpecError(f"--ablation-components {request.components[0]!r} needs an ablation stage; drop "
                                    "--ablations none")

    def conditions(self, request, model):
        """The 'components' set, then the conditions of --ablation-components (layers checked against the model)."""
        out = []
        if self.condition_set in request.asked_sets():
            out += [self.make(block, str(layer), layer, segment, request.component_mode) for layer in range(model.n_layers)
                    for block in BLOCKS for segment in SWEEP_SEGMENTS]
        for spec in request.components:
            c = _parse(spec, f"--ablation-components {spec!r}")
            label, layer_set = parse_layers(c.layers, model.n_layers, flag=f"--ablation-components {spec!r}")
            out.append(self.make(c.component, label, layer_set[0] if len(layer_set) == 1 else None, c.segment, c.mode))
        return out

    def forward_key(self, c) -> str:
        return f"component/{c.mode}"

    def forward_modes(self, c) -> dict[str, str]:
        return {"component": c.mode}

    def apply(self, c, row, edits) -> None:
        for layer in c.layer_indices(edits.n_layers):
            edits.remove_component(row, layer, c.component, c.segment)

    def uses_means(self, c) -> bool:
        return c.mode == "mean"


def _parse(spec: str, where: str) -> Condition:
    """``mlp@3:d/mean`` (or the legacy ``mlp:d@3/mean``) -> its condition, layers unchecked against a model;
    AblationSpecError naming what is wrong, ``where`` quoting the input as typed."""
    text = spec.strip().lower()
    m, legacy = _ID.match(text), _LEGACY_ID.match(text)
    if m:
        component, layers, segment, mode = m.groups()
    elif legacy:
        component, segment, layers, mode = legacy.groups()
    else:
        raise AblationSpecError(f"{where}: expected {_GRAMMAR}, e.g. mlp@3:d/mean or attn@0-2/zero")
    if segment is not None and segment not in SEGMENTS:
        raise AblationSpecError(f"{where}: unknown segment {segment!r}; use {', '.join(SEGMENTS)}")
    if mode not in COMPONENT_MODES:
        raise AblationSpecError(f"{where}: mode {mode!r}; expected zero or mean")
    label, layer = layer_label(layers, where)
    return COMPONENT.make(component, label, layer, segment, mode)


COMPONENT = register(Component())
