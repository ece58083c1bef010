"""Installing a kernel into a model for a ``with`` block, and running one forward pass with its batch state.

Two ways in, chosen by the model family (:mod:`precompute.families`):

* ``interface``: transformers dispatches every attention call through ``AttentionInterface``; the probe
  registers its function under its own name, switches the model to it, and switches back on exit.
* ``swap``: architectures that compute their softmax inline (DeBERTa-v2, MPNet) get their attention
  modules' ``forward`` replaced, for the ``with`` block only, by one that computes the same logits and
  hands them to the kernel; the original forwards are restored on exit, whatever happened.

Calls are mapped to layers by module (the family's :meth:`attention_sites`), never by counting calls, and
after every forward each mapped layer must have run exactly once (TransformerLens-style hooks as objects).
"""

from __future__ import annotations

import contextlib
from typing import Any

from precompute.kernels.state import BatchState, KernelError, Scratch

_ACTIVE: BatchState | None = None  # the state of the forward pass in flight, set by Probe.forward


def current_state() -> BatchState:
    if _ACTIVE is None:
        raise KernelError("a Matching Atlas kernel ran outside a probe's forward pass")
    return _ACTIVE


def _full_sdpa_mask(*args, **kwargs):
    """transformers' SDPA mask, never skipped: a skipped causal mask would leave causality to an ``is_causal``
    flag that SDPA reads but a kernel with interventions must apply itself."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


class Probe:
    """Base of the summary and ablation probes: install, forward with a state, restore."""

    implementation: str = ""  # name registered with AttentionInterface
    mask_kind: str = "eager"  # which transformers mask function builds this kernel's masks: 'eager' | 'sdpa'

    def __init__(self, lm):
        self.lm = lm
        self.family = lm.family
        self.model = lm.model
        self._exit = contextlib.ExitStack()
        self.sites: dict[int, Any] = {}
        self.scratch = Scratch()

    @staticmethod
    def attention_function(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        raise NotImplementedError

    # -- install / restore ------------------------------------------------------------------------
    def __enter__(self):
        self.sites = {id(module): site for module, site in self.family.attention_sites(self.model)}
        try:
            if self.family.attention == "interface":
                self._install_interface()
            else:
                self._exit.enter_context(self.family.swap(self.model, self))
        except BaseException:
            self._exit.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._exit.close()

    def _install_interface(self) -> None:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

        AttentionInterface.register(self.implementation, self.attention_function)
        ALL_MASK_ATTENTION_FUNCTIONS.register(self.implementation, eager_mask if self.mask_kind == "eager" else _full_sdpa_mask)
        previous = self.model.config._attn_implementation
        self.model.set_attn_implementation(self.implementation)
        self._exit.callback(self.model.set_attn_implementation, previous or "eager")

    # -- one forward pass ---------------------------------------------------------------------------
    def forward(self, batch, *, scale: str = "score", **state_options) -> tuple[Any, BatchState]:
        """(scores [batch] float32, state) of one forward pass of ``batch`` (an EncodedBatch on the model's device).
        ``scale``: what score is returned (families.base.SCALES). With ``gates`` among the state options (attribution
        patching) the pass builds an autograd graph instead of running in inference mode."""
        import torch

        global _ACTIVE
        state = BatchState(batch.segments, batch.inputs["input_ids"], sites=self.sites, causal=self.family.causal,
                           scratch=self.scratch, **state_options)
        _ACTIVE = state
        try:
            with torch.enable_grad() if state.gates is not None else torch.inference_mode():
                scores = self.family.scores(self.lm, batch, scale)
        finally:
            _ACTIVE = None
        self._check_calls(state)
        return scores, state

    def _check_calls(self, state: BatchState) -> None:
        ran = {site: n for site, n in state.calls.items()}
        for site in set(self.sites.values()):
            expected = 0 if site.role == "self" and site.layer in state.skipped else 1
            if ran.get(site, 0) != expected:
                raise KernelError(f"{site.role} attention of layer {site.layer} ran {ran.get(site, 0)} times in one "
                                  f"forward pass, expected {expected}; is the model loaded as its family expects?")
