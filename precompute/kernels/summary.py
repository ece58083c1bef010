"""The summary kernel: eager attention that, inside the same call and on the same device,

* reduces each layer's weights ``[batch, head, query_pos, key_pos]`` to the summary metrics of
  :mod:`precompute.metrics` (full attention tensors never reach the host), and/or
* applies an :class:`~precompute.kernels.state.Intervention`: remove (src, dst) segment directions
  (``zero`` after the softmax without renormalising, or ``mask`` before it) and zero whole heads' outputs,
  per batch row, so several ablation conditions share one forward batch and one model load serves all.

:func:`attend` is the core both entry points share: :func:`atlas_attention` (installed through
``AttentionInterface``) and the swapped module forwards of families that compute attention inline.
The softmax and every reduction run in float32 whatever the model's dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from precompute import metrics
from precompute.kernels.arguments import parse_call
from precompute.kernels.components import head_outputs
from precompute.kernels.probe import Probe, current_state
from precompute.kernels.state import BatchState, Intervention

IMPLEMENTATION = "matching_atlas"


def attend(state: BatchState, layer: int, logits: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Softmax, summaries and interventions of one self-attention layer.

    logits: [batch, head, q, k] float32, masked; value: [batch, head, k, dv]. Returns [batch, head, q, dv].
    """
    removal = state.removal(layer)
    if removal is not None and state.intervention.mode == "mask":
        removal = removal | state.key_padding[:, None, :]  # padding keys must not take the freed mass
        logits = logits.masked_fill(removal[:, None], float("-inf"))
        weights = F.softmax(logits, dim=-1)
        weights = weights.masked_fill(removal.all(-1)[:, None, :, None], 0.0)  # nothing left: output 0, not NaN
    else:
        weights = F.softmax(logits, dim=-1)
        if removal is not None:
            weights = weights.masked_fill(removal[:, None], 0.0)
    if state.summarise:
        state.summaries[layer] = metrics.summarise(weights, state)
    out = torch.matmul(weights.to(value.dtype), value)  # [batch, head, q, dv]
    heads = state.heads_removed(layer)
    if heads is not None:
        out = out * (~heads).to(out.dtype)[:, :, None, None]
    return head_outputs(state, layer, out)


def cross_masses(weights: torch.Tensor, state: BatchState) -> torch.Tensor:
    """[batch, head, 5]: the weight the decoder's scoring position (its first) gives each encoder segment."""
    return (weights[:, :, 0:1].float() @ state.onehot[:, None])[:, :, 0]


def atlas_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention plus summaries / interventions for the state of the probe's forward pass.

    query, key, value: [batch, head, seq, head_dim]; returns ([batch, seq, head, head_dim], None).
    """
    state = current_state()
    site = state.enter(module)
    call = parse_call(module, query, key, value, attention_mask, scaling, dropout, kwargs)
    if site.role == "self":
        call.query, correction = state.edit_queries(site.layer, call.query)
        logits = call.logits()
        if correction is not None:
            logits = logits + correction[..., None] * call.scaling
        out = attend(state, site.layer, logits, call.value)
    else:  # an encoder-decoder's decoder: computed as the model does; cross-attention summarised on request
        weights = F.softmax(call.logits(), dim=-1)
        if site.role == "cross" and state.summarise:
            state.cross[site.layer] = cross_masses(weights, state)
        out = torch.matmul(weights.to(call.value.dtype), call.value)
    return out.transpose(1, 2).contiguous(), None


class SummaryProbe(Probe):
    """Installs the summary kernel into a loaded model (``precompute.model.LoadedModel``).

    >>> with SummaryProbe(lm) as probe:
    ...     scores, summaries, cross = probe.run(batch, summarise=True)
    """

    implementation = IMPLEMENTATION
    mask_kind = "eager"
    attention_function = staticmethod(atlas_attention)

    def run(self, batch, *, summarise: bool = False, intervention: Intervention | None = None):
        """One forward pass: (scores [batch], summaries [batch, layer, head, metric] or None,
        cross-attention masses [batch, decoder layer, head, 5] or None)."""
        scores, state = self.forward(batch, summarise=summarise, intervention=intervention)
        if not summarise:
            return scores, None, None
        summaries = torch.stack([state.summaries[i] for i in sorted(state.summaries)], 1)
        cross = torch.stack([state.cross[i] for i in sorted(state.cross)], 1) if state.cross else None
        return scores, summaries, cross
