"""The summary kernel: eager attention that, inside the same call and on the same device,

* reduces each layer's weights ``[batch, head, query_pos, key_pos]`` to the summary metrics of
  :mod:`precompute.metrics` (full attention tensors never reach the host), the value-weighted masses included: the
  norms ||W_O^h v_j|| of the layer's value vectors are computed once per call (:func:`value_norms`, from the head's
  Gram matrix W_O^h^T W_O^h) and weight the same blocks of weights, and/or
* applies an :class:`~precompute.kernels.state.Intervention`: remove (src, dst) segment directions
  (``zero`` after the softmax without renormalising, or ``mask`` before it) and zero whole heads' outputs,
  per batch row, so several ablation conditions share one forward batch and one model load serves all.

:func:`attend` is the core both entry points share: :func:`atlas_attention` (installed through
``AttentionInterface``) and the swapped module forwards of families that compute attention inline.
The softmax and every reduction run in float32 whatever the model's dtype.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from precompute import metrics
from precompute.kernels.arguments import parse_call
from precompute.kernels.block_hooks import head_outputs
from precompute.kernels.probe import Probe, current_state
from precompute.kernels.state import BatchState, Intervention

IMPLEMENTATION = "matching_atlas"


BLOCK_MB = float(os.environ.get("ATLAS_ATTENTION_BLOCK_MB", "512"))


def block_rows(batch: int, heads: int, rows: int, keys: int) -> int:
    """Query rows per block so that a block's float32 logits, weights and reductions stay within ATLAS_ATTENTION_BLOCK_MB
    (512 by default): a 24-layer model at batch 64 x 512 tokens never holds a [batch, head, seq, seq] tensor."""
    per_row = batch * heads * keys * 4 * 3
    return max(1, min(rows, int(BLOCK_MB * 2**20) // per_row))


def _softmax_removing(logits: torch.Tensor, removal: torch.Tensor | None, mode: str | None,
                      key_padding: torch.Tensor) -> torch.Tensor:
    """Softmax over keys with an intervention's (query token, key token) removal [b, r, k] applied, in place:
    ``logits`` (float32) is consumed and becomes the weights. Where autograd records the pass (attribution
    patching: ``logits`` requires grad) the same steps run out of place, as autograd needs."""
    if logits.requires_grad:
        return _softmax_removing_recorded(logits, removal, mode, key_padding)
    if removal is not None and mode == "mask":
        removal = removal | key_padding[:, None, :]  # padding keys must not take the freed mass
        weights = torch.softmax(logits.masked_fill_(removal[:, None], float("-inf")), dim=-1, out=logits)
        return weights.masked_fill_(removal.all(-1)[:, None, :, None], 0.0)  # nothing left: output 0, not NaN
    weights = torch.softmax(logits, dim=-1, out=logits)
    return weights if removal is None else weights.masked_fill_(removal[:, None], 0.0)


def _softmax_removing_recorded(logits, removal, mode, key_padding):
    if removal is not None and mode == "mask":
        removal = removal | key_padding[:, None, :]
        weights = torch.softmax(logits.masked_fill(removal[:, None], float("-inf")), dim=-1)
        return weights.masked_fill(removal.all(-1)[:, None, :, None], 0.0)
    weights = torch.softmax(logits, dim=-1)
    return weights if removal is None else weights.masked_fill(removal[:, None], 0.0)


def value_norms(value: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """[batch, head, key] float32 norms ||W_O^h v_j|| of value vectors [batch, head, key, dv], from each head's Gram
    matrix W_O^h^T W_O^h [head, dv, dv] (dv^2 rather than dv * hidden products per token)."""
    v = value.float()
    squared = torch.einsum("bhkd,hde,bhke->bhk", v, gram, v)
    return squared.clamp_min_(0.0).sqrt_()


def output_grams(lm) -> list[torch.Tensor]:
    """Per summarised layer, [head, dv, dv] float32 W_O^h^T W_O^h from the family's per-head output projections."""
    return [torch.matmul(w.float().transpose(1, 2), w.float()) for w in lm.family.output_weights(lm.model)]


def attend(state: BatchState, layer: int, logits, value: torch.Tensor, rows: int | None = None) -> torch.Tensor:
    """Softmax, summaries and interventions of one self-attention layer, in blocks of query rows.

    logits: [batch, head, q, k] float32 and masked, or a function of a slice of query rows giving those rows' logits
    (then ``rows`` = q); either way they are consumed (softmaxed in place). value: [batch, head, k, dv].
    Returns [batch, head, q, dv].
    """
    b, h, k = value.shape[0], value.shape[1], value.shape[2]
    q = logits.shape[2] if isinstance(logits, torch.Tensor) else rows
    removal = state.removal(layer)
    mode = state.intervention.mode if state.intervention is not None else None
    step = block_rows(b, h, q, k)
    if state.summarise:
        state.value_norms = value_norms(value, state.output_grams[layer])
    sums, outs, kept = None, [], []
    for start in range(0, q, step):
        part = slice(start, min(q, start + step))
        block = logits[:, :, part] if isinstance(logits, torch.Tensor) else logits(part)
        weights = _softmax_removing(block, None if removal is None else removal[:, part], mode, state.key_padding)
        if state.summarise:
            partial = metrics.partial_sums(weights, state, part)
            sums = partial if sums is None else sums + partial
        if "weights" in state.capture:
            kept.append(weights)
        outs.append(torch.matmul(weights.to(value.dtype), value))  # [batch, head, rows, dv]
    if state.summarise:
        state.summaries[layer] = metrics.finish(sums, state)
        state.value_norms = None
    if kept:  # attribution patching's QK fix reads them (precompute.analyses.attribution)
        state.captured[("weights", layer)] = kept[0] if len(kept) == 1 else torch.cat(kept, dim=2)
    out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
    heads = state.heads_removed(layer)
    if heads is not None:
        out = out * (~heads).to(out.dtype)[:, :, None, None]
    return head_outputs(state, layer, out)


def cross_masses(weights: torch.Tensor, state: BatchState) -> torch.Tensor:
    """[batch, head, 5]: the weight the decoder's scoring position (its first) gives each encoder segment."""
    return (weights[:, :, 0:1].float() @ state.onehot[:, None])[:, :, 0]


def atlas_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Eager attention plus summaries / interventions for the state of the probe's forward pass.

    query, key, value: [batch, head, seq, head_dim]; returns ([batch, seq, head, head_dim], None).
    """
    state = current_state()
    site = state.enter(module)
    call = parse_call(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, kwargs=kwargs)
    if site.role == "self":
        call.query, correction = state.edit_queries(site.layer, call.query)

        def logits(rows: slice) -> torch.Tensor:
            shape = (*call.query.shape[:2], len(range(*rows.indices(call.query.shape[2]))), call.key.shape[2])
            recorded = call.query.requires_grad or call.key.requires_grad  # autograd cannot differentiate out=
            buffer = None if recorded else state.scratch.take(shape, call.query.device)
            block = call.logits(rows, out=buffer)
            return block if correction is None else block.add_(correction[:, :, rows, None] * call.scaling)

        out = attend(state, site.layer, logits, call.value, rows=call.query.shape[2])
    else:  # an encoder-decoder's decoder: computed as the model does; cross-attention summarised on request
        weights = F.softmax(call.logits(), dim=-1)
        if site.role == "cross" and state.summarise:
            state.cross[site.layer] = cross_masses(weights, state)
        out = torch.matmul(weights.to(call.value.dtype), call.value)
    return out.transpose(1, 2).contiguous(), None


class SummaryProbe(Probe):
    """Installs the summary kernel into a loaded model (``precompute.families.loading.LoadedModel``).

    >>> with SummaryProbe(lm) as probe:
    ...     scores, summaries, cross = probe.run(batch, summarise=True)
    """

    implementation = IMPLEMENTATION
    mask_kind = "eager"
    attention_function = staticmethod(atlas_attention)
    _grams: list[torch.Tensor] | None = None

    def grams(self) -> list[torch.Tensor]:
        """The model's per-head output Gram matrices (kernel.output_grams), computed once per probe."""
        if self._grams is None:
            self._grams = output_grams(self.lm)  # on the weights' device
        return self._grams

    def run(self, batch, *, summarise: bool = False, intervention: Intervention | None = None):
        """One forward pass: (scores [batch], summaries [batch, layer, head, metric] or None,
        cross-attention masses [batch, decoder layer, head, 5] or None)."""
        scores, state = self.forward(batch, summarise=summarise, intervention=intervention,
                                     output_grams=self.grams() if summarise else None)
        if not summarise:
            return scores, None, None
        summaries = torch.stack([state.summaries[i] for i in sorted(state.summaries)], 1)
        cross = torch.stack([state.cross[i] for i in sorted(state.cross)], 1) if state.cross else None
        return scores, summaries, cross
