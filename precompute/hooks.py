"""Attention functions as installable hooks: the active batch state and the context manager that installs them.

Transformers 5 calls the registered attention function of every layer with no handle on our batch;
:meth:`AttentionHooks._forward` makes the batch's state visible to it for one forward pass, and
:func:`next_layer` gives each call its layer. Imports nothing heavy, so modules that must stay light at
import time (the ablation pass, read by ``--help``) can subclass it.
"""

from __future__ import annotations

_ACTIVE = None  # the batch state of the forward pass in flight, set by AttentionHooks._forward


def next_layer(query, scaling: float | None):
    """(batch state, this call's layer, scaling) for an attention function called inside AttentionHooks._forward."""
    state = _ACTIVE
    if state is None:
        raise RuntimeError("Matching Atlas attention called outside a probe's run(); use AtlasProbe or AblationProbe")
    layer = state.layer
    state.layer += 1
    return state, layer, query.size(-1) ** -0.5 if scaling is None else scaling


class AttentionHooks:
    """Installs a registered attention implementation for a ``with`` block and always restores the previous one
    (TransformerLens-style hooks as first-class objects). Subclasses name the implementation and register it."""

    implementation: str

    def __init__(self, model):
        self.model = model
        self._previous: str | None = None

    @staticmethod
    def register() -> None:
        raise NotImplementedError

    def __enter__(self):
        self.register()
        self._previous = self.model.config._attn_implementation
        self.model.set_attn_implementation(self.implementation)
        return self

    def __exit__(self, *exc) -> None:
        self.model.set_attn_implementation(self._previous or "eager")

    def _forward(self, inputs: dict, state):
        """Logits of one forward pass with ``state`` visible to the attention function of every layer."""
        global _ACTIVE
        _ACTIVE = state
        try:
            logits = self.model(**inputs).logits
        finally:
            _ACTIVE = None
        n_layers = self.model.config.num_hidden_layers
        if state.layer != n_layers:
            raise RuntimeError(f"attention ran {state.layer} times for a {n_layers}-layer model; is it a plain encoder?")
        return logits
