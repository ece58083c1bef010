"""The attention function the job installs into the model: summaries and ablations in one place.

Transformers 5 dispatches every self-attention call through ``AttentionInterface``; we register
``matching_atlas`` there. The function computes attention like the eager implementation and,
inside the same call and on the same device,

* reduces the layer's weights ``[batch, head, query_pos, key_pos]`` to the per-head summaries of
  ``names.METRICS`` (so full attention tensors never reach the host), and/or
* applies an :class:`Intervention`: remove (src, dst) segment directions (``zero`` after the
  softmax without renormalising, or ``mask`` before it) and zero whole heads' outputs, per batch
  row, so several ablation conditions share one forward batch and one model load serves all.

Use it through :class:`AtlasProbe`, a context manager that always restores the model's previous
attention implementation (TransformerLens-style hooks as first-class objects).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from precompute.hooks import AttentionHooks, next_layer
from precompute.names import METRICS, SEGMENTS
from precompute.segments import D, Q

IMPLEMENTATION = "matching_atlas"
N_SEG = len(SEGMENTS)
N_METRICS = len(METRICS)


@dataclass
class Intervention:
    """Per-row ablation of one forward pass (rows = pairs x conditions)."""

    mode: str = "zero"  # 'zero' | 'mask'
    directions: torch.Tensor | None = None  # [batch, layers, 5, 5] bool, True = remove src -> dst
    heads: torch.Tensor | None = None  # [batch, layers, heads] bool, True = zero that head's output

    def __post_init__(self):
        if self.mode not in ("zero", "mask"):
            raise ValueError(f"ablation mode {self.mode!r}: expected 'zero' or 'mask'")


@dataclass
class _BatchState:
    """What the attention function needs to know about the batch being run."""

    segments: torch.Tensor  # [batch, seq] long, -1 = padding
    input_ids: torch.Tensor  # [batch, seq]
    summarise: bool
    intervention: Intervention | None
    layer: int = 0
    summaries: list[torch.Tensor] = field(default_factory=list)  # per layer [batch, head, N_METRICS]

    def __post_init__(self):
        seg = self.segments
        self.onehot = F.one_hot(seg.clamp(min=0), N_SEG).float() * (seg >= 0)[..., None].float()  # [batch, seq, 5]
        self.counts = self.onehot.sum(1)  # [batch, 5]
        q_pos = (seg == Q).any(0).nonzero().flatten()
        self.q_lo, self.q_hi = int(q_pos.min()), int(q_pos.max()) + 1  # query span over the batch
        self.q_rows = (seg[:, self.q_lo : self.q_hi] == Q).float()  # [batch, nq]
        self.d_tok = (seg == D).float()  # [batch, seq]
        q_ids = self.input_ids[:, self.q_lo : self.q_hi]
        same = q_ids[:, :, None] == self.input_ids[:, None, :]  # [batch, nq, seq]
        self.exact = same.float() * self.q_rows[..., None] * self.d_tok[:, None, :]  # [batch, nq, seq]
        self.other = (~same).float() * self.q_rows[..., None] * self.d_tok[:, None, :]
        if self.intervention is not None and self.intervention.directions is not None:
            self.pair_index = segment_pair_index(seg)  # [batch, seq*seq]
            self.key_padding = seg < 0  # [batch, seq]


def padded_segments(segments: torch.Tensor) -> torch.Tensor:
    """[batch, seq] long segment ids with padding mapped to a 6th index (which no intervention removes)."""
    return torch.where(segments >= 0, segments.long(), N_SEG)


def segment_pair_index(segments: torch.Tensor) -> torch.Tensor:
    """[batch, seq*seq]: for every (query_pos, key_pos) its cell in a padded 6 x 6 segment table."""
    seg6 = padded_segments(segments)
    return (seg6[:, :, None] * (N_SEG + 1) + seg6[:, None, :]).flatten(1)


def token_removal(remove: torch.Tensor, pair_index: torch.Tensor) -> torch.Tensor:
    """Expand a per-row direction table remove [batch, 5, 5] to tokens: [batch, seq, seq] bool."""
    b = remove.shape[0]
    s = int(round(pair_index.shape[1] ** 0.5))
    table = F.pad(remove, (0, 1, 0, 1)).flatten(1)  # [batch, 36]; padding row/col never removed
    return table.gather(1, pair_index).view(b, s, s)


def _token_removal(state: _BatchState, layer: int) -> torch.Tensor | None:
    """[batch, seq, seq] bool: True where the intervention removes query_pos -> key_pos at ``layer``."""
    iv = state.intervention
    if iv is None or iv.directions is None:
        return None
    remove = iv.directions[:, layer]  # [batch, 5, 5]
    if not bool(remove.any()):
        return None
    return token_removal(remove, state.pair_index)


def summarise(weights: torch.Tensor, state: _BatchState) -> torch.Tensor:
    """Reduce one layer's attention weights to the summary metrics, in float32.

    weights: [batch, head, query_pos, key_pos]; returns [batch, head, N_METRICS] in METRICS order.
    """
    w = weights.float()
    to_seg = w @ state.onehot[:, None]  # [batch, head, seq, 5]: weight each token gives each segment
    masses = state.onehot.transpose(1, 2)[:, None] @ to_seg  # [batch, head, 5, 5] summed over src tokens
    masses = masses / state.counts[:, None, :, None].clamp(min=1)

    wq = w[:, :, state.q_lo : state.q_hi]  # [batch, head, nq, seq] query rows only
    n_q = state.q_rows.sum(1)[:, None].clamp(min=1)  # [batch, 1]
    q_mean = lambda x: (x * state.q_rows[:, None]).sum(-1) / n_q  # noqa: E731  [batch, head, nq] -> [batch, head]
    q2d_max = q_mean((wq * state.d_tok[:, None, None]).amax(-1))
    q_d_exact = q_mean((wq * state.exact[:, None]).sum(-1))
    q_d_other = q_mean((wq * state.other[:, None]).sum(-1))

    wk = w[:, :, :, state.q_lo : state.q_hi]  # [batch, head, seq, nq] query columns only
    d_max = (wk * state.q_rows[:, None, None]).amax(-1)  # [batch, head, seq]
    d2q_max = (d_max * state.d_tok[:, None]).sum(-1) / state.d_tok.sum(1)[:, None].clamp(min=1)

    return torch.cat(
        [masses.flatten(2), torch.stack([q2d_max, d2q_max, q_d_exact, q_d_other], -1)], dim=-1
    )  # [batch, head, 29]


def atlas_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Eager attention plus summaries / interventions for the batch set by :class:`AtlasProbe`.

    query, key, value: [batch, head, seq, head_dim]; returns ([batch, seq, head, head_dim], None).
    """
    state, layer, scaling = next_layer(query, scaling)
    logits = torch.matmul(query, key.transpose(2, 3)) * scaling  # [batch, head, seq, seq]
    if attention_mask is not None:
        logits = logits + attention_mask
    removal = _token_removal(state, layer)
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
        state.summaries.append(summarise(weights, state))
    out = torch.matmul(weights, value).transpose(1, 2)  # [batch, seq, head, head_dim]
    iv = state.intervention
    if iv is not None and iv.heads is not None:
        keep = (~iv.heads[:, layer]).to(out.dtype)  # [batch, head]
        out = out * keep[:, None, :, None]
    return out.contiguous(), None


class AtlasProbe(AttentionHooks):
    """Installs ``matching_atlas`` attention (summaries and interventions) into a model.

    >>> with AtlasProbe(model) as probe:
    ...     logits, summaries = probe.run(batch.inputs, batch.segments, summarise=True)
    """

    implementation = IMPLEMENTATION

    @staticmethod
    def register() -> None:
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

        AttentionInterface.register(IMPLEMENTATION, atlas_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(IMPLEMENTATION, eager_mask)

    @torch.inference_mode()
    def run(self, inputs: dict, segments: torch.Tensor, *, summarise: bool = False, intervention: Intervention | None = None):
        """One forward pass. Returns (logits [batch, labels], summaries [batch, layer, head, N_METRICS] or None)."""
        state = _BatchState(segments.long(), inputs["input_ids"], summarise, intervention)
        logits = self._forward(inputs, state)
        summaries = torch.stack(state.summaries, 1) if summarise else None
        return logits, summaries


@contextlib.contextmanager
def plain_attention(model, implementation: str = "sdpa"):
    """Run the model with a stock attention implementation (the plain scoring baseline)."""
    previous = model.config._attn_implementation
    model.set_attn_implementation(implementation)
    try:
        yield model
    finally:
        model.set_attn_implementation(previous)
