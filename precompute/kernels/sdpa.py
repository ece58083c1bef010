"""The SDPA ablation kernel: attention through ``scaled_dot_product_attention`` with the batch's
:class:`~precompute.kernels.state.Intervention` applied per row (fused kernels, no [batch, head, seq, seq]
weights in memory).

* ``mask`` mode is one SDPA call with the removed (query token, key token) pairs masked.
* ``zero`` mode uses ``sum_kept p_ij v_j = m_i * softmax_kept(v)_i`` with ``m_i`` the softmax mass row i
  keeps: a second SDPA call whose values are the one-hot key segments gives each row's mass per segment,
  and only the rows whose segment loses something are computed.

Position biases (T5) enter as an additive float mask, grouped-query heads are repeated; logit soft-capping
cannot be expressed in SDPA, so families with it are ablated with the summary kernel's eager path
(``families.Family.sdpa_ablation``). A row left with nothing to attend to outputs zeros, never NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from precompute.kernels.arguments import AttentionCall, parse_call
from precompute.kernels.block_hooks import head_outputs
from precompute.kernels.probe import Probe, current_state
from precompute.kernels.state import N_SEG, BatchState, Intervention, KernelError

IMPLEMENTATION = "matching_atlas_ablation"


def _allowed(call: AttentionCall) -> torch.Tensor | None:
    """[b, 1|h, q, k] bool: where the model's own mask lets a query token attend (None = everywhere)."""
    if call.mask is None:
        return None
    return call.mask if call.mask.dtype == torch.bool else call.mask == 0


def _sdpa_mask(allowed: torch.Tensor | None, position_bias: torch.Tensor | None):
    """What SDPA takes: the bool mask, or (with a position bias) the bias with disallowed cells at -inf."""
    if position_bias is None:
        return allowed
    bias = position_bias.float()
    return bias if allowed is None else bias.masked_fill(~allowed, float("-inf"))


def ablation_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """SDPA attention with the state's intervention applied (see the module docstring).

    query, key, value: [batch, head, seq, head_dim]; returns ([batch, seq, head, head_dim], None).
    """
    state = current_state()
    site = state.enter(module)
    call = parse_call(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, kwargs=kwargs)
    if call.softcap is not None:
        raise KernelError("logit soft-capping cannot run in the SDPA ablation kernel; use --ablation-kernel eager")
    if site.role == "self":  # QK-subspace edits; their per-row logit correction cannot change a softmax
        call.query, _ = state.edit_queries(site.layer, call.query)
    q, k, v = call.query, call.key, call.value
    allowed = _allowed(call)
    masks = state.removal_masks(site.layer) if site.role == "self" else None
    if masks is None:  # nothing removed here: exactly the stock SDPA call
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_sdpa_mask(allowed, call.position_bias),
                                             dropout_p=0.0, scale=call.scaling)
    else:
        removal, keep_rows, loses = masks
        kept = ~(removal | state.key_padding[:, None, :])[:, None]  # [b, 1, q, k]
        kept = kept if allowed is None else kept & allowed
        empty = ~kept.any(-1)  # [b, 1|h, q]: rows with nothing left to attend to
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=_sdpa_mask(kept, call.position_bias),
                                             dropout_p=0.0, scale=call.scaling)
        if state.intervention.mode == "zero":
            out = out * _kept_mass(call, allowed, state, keep_rows, loses)[..., None]
        out = out.masked_fill(empty[..., None], 0.0)  # also clears NaN where a kernel gives NaN for such rows
    if site.role == "self":
        heads = state.heads_removed(site.layer)
        if heads is not None:
            out = out * (~heads).to(out.dtype)[:, :, None, None]
        out = head_outputs(state, site.layer, out)
    return out.transpose(1, 2).contiguous(), None


def _rows(x: torch.Tensor | None, idx: torch.Tensor, batch: int) -> torch.Tensor | None:
    """Gather query rows ``idx`` [b, rows] of a [1|b, 1|h, q, k] mask or bias."""
    if x is None:
        return None
    x = x.expand(batch, *x.shape[1:])
    return x.gather(2, idx[:, None, :, None].expand(batch, x.shape[1], idx.shape[1], x.shape[-1]))


def _kept_mass(call: AttentionCall, allowed, state: BatchState, keep_rows, loses) -> torch.Tensor:
    """[batch, head, seq]: softmax mass (over every key the row may attend) that each query row keeps; 1 for
    rows that lose nothing. SDPA with one-hot key segments as values, only for the rows that lose something."""
    query, key = call.query, call.key
    b, h, s, dh = query.shape
    rows = int(loses.sum(1).max())
    if rows == 0:
        return torch.ones(b, h, s, dtype=query.dtype, device=query.device)
    idx = torch.argsort((~loses).to(torch.int8), dim=1, stable=True)[:, :rows]  # [batch, rows]: losing rows first
    q_sub = query.gather(2, idx[:, None, :, None].expand(b, h, rows, dh))
    onehot = state.onehot.to(query.dtype)
    if dh > N_SEG:  # fused kernels want value dim == query dim
        onehot = F.pad(onehot, (0, dh - N_SEG))
    base = ~state.key_padding[:, None, None, :]  # [b, 1, 1, k]
    if allowed is not None:
        base = base & _rows(allowed, idx, b)
    masses = F.scaled_dot_product_attention(
        q_sub, key, onehot[:, None].expand(b, h, s, onehot.shape[-1]),
        attn_mask=_sdpa_mask(base, _rows(call.position_bias, idx, b)), dropout_p=0.0, scale=call.scaling,
    )[..., :N_SEG]  # [batch, head, rows, 5]
    keep_sub = keep_rows.gather(1, idx[..., None].expand(b, rows, N_SEG)).to(masses.dtype)  # [batch, rows, 5]
    kept = (masses * keep_sub[:, None]).sum(-1)  # [batch, head, rows]
    kept = torch.where(loses.gather(1, idx)[:, None], kept, torch.ones_like(kept))
    return torch.ones(b, h, s, dtype=query.dtype, device=query.device).scatter(2, idx[:, None].expand(b, h, rows), kept)


class AblationProbe(Probe):
    """Installs :func:`ablation_attention` for a ``with`` block (restores the model's attention on exit)."""

    implementation = IMPLEMENTATION
    mask_kind = "sdpa"
    attention_function = staticmethod(ablation_attention)

    def run(self, batch, *, intervention: Intervention | None = None) -> torch.Tensor:
        """One forward pass; returns scores [batch] float32."""
        return self.forward(batch, intervention=intervention)[0]
