"""Ablation conditions and the ablation pass: re-score every pair with attention directions or heads removed.

What a condition is and how it is named: :mod:`precompute.conditions`.

The pass
--------
Pairs are cut into the summary pass's chunks, then length-sorted batches. ``stack`` conditions share a
forward pass: every batch of ``batch_size // stack`` pairs is replicated once per condition (rows =
pairs x conditions, each row with its own :class:`~precompute.attention.Intervention` slice), so a forward
keeps about ``batch_size`` rows. Conditions sharing a forward must share a direction mode.

Two kernels compute the same thing:

* ``sdpa`` (default): :func:`ablation_attention`, built on ``scaled_dot_product_attention`` (fused kernels,
  no [batch, head, seq, seq] weights in memory). ``mask`` mode is one SDPA call with the removed
  (query token, key token) pairs masked. ``zero`` mode uses ``sum_kept p_ij v_j = m_i * softmax_kept(v)_i``
  with ``m_i`` the softmax mass row i keeps: a second SDPA call whose values are the one-hot key segments
  gives each row's mass per segment, and only the rows whose segment loses something are computed.
* ``eager``: :class:`precompute.attention.AtlasProbe` (the summary pass's own attention function), slower.

Both equal a hand-written forward pass to 1e-5 (tests/precompute/test_ablation.py). A row left with
nothing to attend to (all its keys removed in ``mask`` mode) outputs zeros, never NaN.

The baseline ``none`` is scored by the same pass (same kernel and batching) as the conditions, so every
delta compares like with like. With the eager kernel and ``stack`` 1 it is bit-identical to
``pairs.score``; with sdpa it equals a plain SDPA scoring pass bit for bit and ``pairs.score`` to a few 1e-6
(two kernels summing in a different order; 3e-6 on MiniLM logits of magnitude ~10). Stacking conditions
(``stack`` > 1) changes the shapes of the matrix products and moves scores by float noise (< 1e-5) too.

Where the scores go and how reruns resume: :mod:`precompute.stages.ablations`.

This module imports no torch or pyarrow at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from precompute.conditions import (
    Condition,
    forward_mode,
    intervention_arrays,
)
from precompute.hooks import AttentionHooks, next_layer
from precompute.names import SEGMENTS

# --------------------------------------------------------------------------------------------------
# The attention function (sdpa kernel)
# --------------------------------------------------------------------------------------------------

IMPLEMENTATION = "matching_atlas_ablation"


class _State:
    """What the ablation attention needs to know about the batch being run."""

    def __init__(self, segments, intervention):
        import torch

        from precompute.attention import padded_segments, segment_pair_index

        self.segments = segments
        self.intervention = intervention
        self.layer = 0
        self.key_padding = segments < 0  # [batch, seq]
        self.seg6 = padded_segments(segments)
        self._cached: tuple | None = None  # (directions of one layer [batch, 5, 5], masks)
        if intervention is not None and intervention.directions is not None:
            self.pair_index = segment_pair_index(segments)
            self.onehot = torch.nn.functional.one_hot(segments.clamp(min=0), len(SEGMENTS)) * (~self.key_padding)[..., None]

    def masks(self, layer: int):
        """None when nothing is removed at ``layer``; else (removal [b, s, s], row keeps a segment [b, s, 5],
        rows that lose something [b, s]) for that layer, cached across layers with the same table."""
        import torch
        import torch.nn.functional as F

        from precompute.attention import token_removal

        iv = self.intervention
        if iv is None or iv.directions is None:
            return None
        remove = iv.directions[:, layer]  # [batch, 5, 5]
        if self._cached is not None and torch.equal(self._cached[0], remove):
            return self._cached[1]
        if not bool(remove.any()):
            masks = None
        else:
            b, s = self.segments.shape
            removal = token_removal(remove, self.pair_index)  # [batch, seq, seq]
            keep6 = F.pad(~remove, (0, 0, 0, 1), value=True)  # [batch, 6, 5]: padding rows keep everything
            keep_rows = keep6.gather(1, self.seg6[..., None].expand(b, s, len(SEGMENTS)))  # [batch, seq, 5]
            loses = F.pad(remove.any(-1), (0, 1)).gather(1, self.seg6)  # [batch, seq]
            masks = (removal, keep_rows, loses)
        self._cached = (remove, masks)
        return masks


def _allowed(attention_mask, removal, key_padding):
    """[batch, 1, seq, seq] bool: True where a query token may attend to a key token."""
    import torch

    allowed = ~(removal | key_padding[:, None, :])[:, None]
    if attention_mask is not None:
        base = attention_mask if attention_mask.dtype == torch.bool else attention_mask == 0
        allowed = allowed & base
    return allowed


def ablation_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """SDPA attention with the active batch's :class:`Intervention` applied per row (see the module docstring).

    query, key, value: [batch, head, seq, head_dim]; returns ([batch, seq, head, head_dim], None).
    """
    import torch.nn.functional as F

    state, layer, scaling = next_layer(query, scaling)
    masks = state.masks(layer)
    if masks is None:  # nothing removed here: exactly the stock SDPA call
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, scale=scaling)
    else:
        removal, keep_rows, loses = masks
        allowed = _allowed(attention_mask, removal, state.key_padding)
        empty = ~allowed.any(-1)  # [batch, 1, seq]: rows with nothing left to attend to
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, dropout_p=0.0, scale=scaling)
        if state.intervention.mode == "zero":
            out = out * _kept_mass(query, key, state, keep_rows, loses, scaling)[..., None]
        out = out.masked_fill(empty[..., None], 0.0)  # also clears NaN where a kernel gives NaN for such rows
    iv = state.intervention
    if iv is not None and iv.heads is not None:
        out = out * (~iv.heads[:, layer]).to(out.dtype)[:, :, None, None]
    return out.transpose(1, 2).contiguous(), None


def _kept_mass(query, key, state, keep_rows, loses, scaling):
    """[batch, head, seq]: softmax mass (over all non-padding keys) that each query row keeps; 1 for rows that
    lose nothing. Computed as SDPA with one-hot key segments as values, only for the rows that lose something."""
    import torch
    import torch.nn.functional as F

    b, h, s, dh = query.shape
    n_seg = len(SEGMENTS)
    rows = int(loses.sum(1).max())
    if rows == 0:
        return torch.ones(b, h, s, dtype=query.dtype, device=query.device)
    idx = torch.argsort((~loses).to(torch.int8), dim=1, stable=True)[:, :rows]  # [batch, rows]: losing rows first
    q_sub = query.gather(2, idx[:, None, :, None].expand(b, h, rows, dh))
    onehot = state.onehot.to(query.dtype)
    if dh > n_seg:  # fused kernels want value dim == query dim
        onehot = F.pad(onehot, (0, dh - n_seg))
    masses = F.scaled_dot_product_attention(
        q_sub, key, onehot[:, None].expand(b, h, s, onehot.shape[-1]),
        attn_mask=~state.key_padding[:, None, None, :], dropout_p=0.0, scale=scaling,
    )[..., :n_seg]  # [batch, head, rows, 5]
    keep_sub = keep_rows.gather(1, idx[..., None].expand(b, rows, n_seg)).to(masses.dtype)  # [batch, rows, 5]
    kept = (masses * keep_sub[:, None]).sum(-1)  # [batch, head, rows]
    kept = torch.where(loses.gather(1, idx)[:, None], kept, torch.ones_like(kept))
    return torch.ones(b, h, s, dtype=query.dtype, device=query.device).scatter(2, idx[:, None].expand(b, h, rows), kept)


class AblationProbe(AttentionHooks):
    """Installs :func:`ablation_attention` for the duration of a ``with`` block (restores the previous one)."""

    implementation = IMPLEMENTATION

    @staticmethod
    def register() -> None:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register(IMPLEMENTATION, ablation_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, sdpa_mask)

    def run(self, inputs: dict, segments, *, intervention=None):
        """One forward pass; returns logits [batch, labels]."""
        import torch

        with torch.inference_mode():
            return self._forward(inputs, _State(segments.long(), intervention))


class _EagerProbe:
    """The summary pass's attention function (``AtlasProbe``) behind the same interface."""

    def __init__(self, model):
        from precompute.attention import AtlasProbe

        self._probe = AtlasProbe(model)

    def __enter__(self):
        self._probe.__enter__()
        return self

    def __exit__(self, *exc):
        self._probe.__exit__(*exc)

    def run(self, inputs, segments, *, intervention=None):
        return self._probe.run(inputs, segments, intervention=intervention)[0]


def probe(model, kernel: str = "sdpa"):
    if kernel == "sdpa":
        return AblationProbe(model)
    if kernel == "eager":
        return _EagerProbe(model)
    raise ValueError(f"--ablation-kernel {kernel!r}: expected sdpa or eager")


# --------------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------------


def score_conditions(lm, pairs: Sequence, conditions: Sequence[Condition], *, batch_size: int, max_length: int,
                     kernel: str = "sdpa", on_batch: Callable[[int], None] | None = None) -> dict:
    """Score ``pairs`` under every condition, all conditions sharing each forward pass.

    Returns condition_id -> float32 scores aligned with ``pairs``. Rows of a forward are the batch's pairs
    repeated per condition (condition-major); a batch holds ``batch_size // len(conditions)`` pairs.
    """
    import numpy as np

    from precompute.attention import Intervention
    from precompute.model import relevance
    from precompute.segments import encode
    from precompute.summaries import length_batches

    if not conditions or not pairs:
        return {c.condition_id: np.zeros(0, np.float32) for c in conditions}
    cfg = lm.config
    k = len(conditions)
    mode = forward_mode(conditions)
    dirs, heads = intervention_arrays(conditions, cfg.num_hidden_layers, cfg.num_attention_heads)
    dirs = dirs.to(lm.device) if dirs is not None else None
    heads = heads.to(lm.device) if heads is not None else None
    position = {p.pair_id: i for i, p in enumerate(pairs)}
    out = np.full((k, len(pairs)), np.nan, dtype=np.float32)
    with probe(lm.model, kernel) as pr:
        for batch in length_batches(lm, pairs, max(1, batch_size // k), max_length):
            enc = encode(lm.tokenizer, [p.query for p in batch], [p.doc for p in batch], max_length).to(lm.device)
            n = len(batch)
            inputs = {name: t.repeat(k, 1) for name, t in enc.inputs.items()}
            iv = Intervention(
                mode,
                dirs.repeat_interleave(n, 0) if dirs is not None else None,
                heads.repeat_interleave(n, 0) if heads is not None else None,
            )
            logits = pr.run(inputs, enc.segments.repeat(k, 1), intervention=iv)
            scores = relevance(logits).view(k, n).cpu().numpy()
            cols = [position[p.pair_id] for p in batch]
            out[:, cols] = scores
            if on_batch:
                on_batch(n * k)
    if np.isnan(out).any():
        raise RuntimeError("ablation pass produced NaN scores")
    return {c.condition_id: out[i] for i, c in enumerate(conditions)}


# The estimate's timing probe scores a throw-away batch; it calls this name, not score_conditions, so
# what the pass itself scores stays observable (the tests count score_conditions calls).
_timing_scorer = score_conditions


def seconds_per_scoring(lm, pairs: Sequence, condition: Condition, *, batch_size: int, max_length: int,
                        kernel: str) -> float:
    """Seconds per (pair, condition) scoring, from one timed batch of typical length after a warm-up (discarded)."""
    import time

    from precompute.summaries import typical_batch

    sample = typical_batch(pairs, batch_size)
    kw = dict(batch_size=batch_size, max_length=max_length, kernel=kernel)
    _timing_scorer(lm, sample, [condition], **kw)  # warm-up
    t0 = time.perf_counter()
    _timing_scorer(lm, sample, [condition], **kw)
    return (time.perf_counter() - t0) / len(sample)
