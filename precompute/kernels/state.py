"""The batch state: what an attention kernel knows about the forward pass in flight.

Transformers calls a layer's attention with the layer's tensors only; the kernels need the batch's
segments, what to summarise and what to remove. :class:`BatchState` holds all of it for one forward
pass, shared by the summary kernel, the SDPA ablation kernel and the swapped module forwards. Derived
tensors (one-hot segments, query span, exact-match masks, removal tables) are computed on first use
only, so each kernel pays for what it reads.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

import torch
import torch.nn.functional as F

from precompute.kernels.site import KernelError, Site  # noqa: F401 - the kernels' names for them
from precompute.names import CAUSAL_IMPOSSIBLE, SEGMENT_INDEX, SEGMENTS

N_SEG = len(SEGMENTS)
Q, D = SEGMENT_INDEX["q"], SEGMENT_INDEX["d"]


@dataclass
class QKEdit:
    """Remove (factor 0) or scale the top-k singular components of one head's W_Q W_K^T, for some rows.

    With ``c = (q - b_q) . A`` (the query's content coordinates on the top-k left singular directions, read in the
    head's query space) the query becomes ``q + (factor - 1) c B^T``, so ``q' . k = q . k + (factor - 1) sum_k
    sigma_k (x_i . u_k)(x_j . v_k) - correction``: the content term of exactly those components is scaled, and the
    key bias' share (``correction``, constant over keys) is added back to the logits (see precompute.analyses.subspace).
    """

    rows: torch.Tensor  # [batch] bool
    layer: int
    head: int
    a: torch.Tensor  # [head_dim, k]
    b: torch.Tensor  # [head_dim, k], sigma folded in
    factor: float
    query_bias: torch.Tensor | None  # [head_dim]
    key_bias_b: torch.Tensor | None  # [k]: b_k . b, the key bias' coordinates (for the correction)


@dataclass
class Intervention:
    """Per-row interventions of one forward pass (rows = pairs x conditions)."""

    mode: str = "zero"  # directions: 'zero' | 'mask'
    directions: torch.Tensor | None = None  # [batch, layers, 5, 5] bool, True = remove src -> dst
    heads: torch.Tensor | None = None  # [batch, layers, heads] bool, True = zero that head's output
    components: torch.Tensor | None = None  # [batch, layers, 2] int: attn/mlp target (kernels.components)
    component_mode: str = "zero"  # 'zero' | 'mean'
    means: torch.Tensor | None = None  # [layers, 2, 5, hidden]: component means per segment (mean mode)
    qk: tuple[QKEdit, ...] = ()

    def __post_init__(self):
        if self.mode not in ("zero", "mask"):
            raise ValueError(f"ablation mode {self.mode!r}: expected 'zero' or 'mask'")
        if self.component_mode not in ("zero", "mean"):
            raise ValueError(f"component mode {self.component_mode!r}: expected 'zero' or 'mean'")
        if self.component_mode == "mean" and self.components is not None and self.means is None:
            raise ValueError("mean component ablation needs the run's component means")


def causal_impossible(device=None) -> torch.Tensor:
    """[5, 5] bool: True where src -> dst cannot exist in a causal model (names.CAUSAL_IMPOSSIBLE)."""
    cells = [[f"{s}_{d}" in CAUSAL_IMPOSSIBLE for d in SEGMENTS] for s in SEGMENTS]
    return torch.tensor(cells, dtype=torch.bool, device=device)


def padded_segments(segments: torch.Tensor) -> torch.Tensor:
    """[batch, seq] long segment ids with padding mapped to a 6th index (which no intervention removes)."""
    return torch.where(segments >= 0, segments.long(), N_SEG)


def token_removal(remove: torch.Tensor, pair_index: torch.Tensor) -> torch.Tensor:
    """Expand a per-row direction table remove [batch, 5, 5] to tokens: [batch, seq, seq] bool."""
    b = remove.shape[0]
    s = int(round(pair_index.shape[1] ** 0.5))
    table = F.pad(remove, (0, 1, 0, 1)).flatten(1)  # [batch, 36]; padding row/col never removed
    return table.gather(1, pair_index).view(b, s, s)


class Scratch:
    """One float32 buffer that every attention block of a probe's forward passes writes its logits into (CPU only).

    The CPU allocator returns large tensors to the system on free, so a fresh [batch, head, q, k] tensor per layer
    and block is paid again in page faults: on MiniLM at batch 32 that costs more than the product itself. CUDA's
    caching allocator already reuses freed blocks, so there the buffer is not kept (it would only raise the peak).
    """

    def __init__(self):
        self._buffer: torch.Tensor | None = None

    def take(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor | None:
        """A contiguous float32 tensor of ``shape`` whose contents are garbage; None off the CPU."""
        if device.type != "cpu":
            return None
        n = math.prod(shape)
        if self._buffer is None or self._buffer.numel() < n:
            self._buffer = None  # free the old one first: never hold both
            self._buffer = torch.empty(n, dtype=torch.float32)
        return self._buffer[:n].view(shape)


class BatchState:
    """One forward pass: its segments, what to summarise and remove, and what the kernels produced."""

    def __init__(self, segments: torch.Tensor, input_ids: torch.Tensor, *, sites: dict[int, Site],
                 summarise: bool = False, intervention: Intervention | None = None, causal: bool = False,
                 capture: frozenset[str] = frozenset(), patches: tuple = (), skipped: frozenset[int] = frozenset(),
                 gates=None, stop_after: int | None = None, scratch: Scratch | None = None,
                 output_grams: list[torch.Tensor] | None = None):
        self.segments = segments.long()  # [batch, seq], -1 = padding
        self.input_ids = input_ids  # [batch, seq]
        self.sites = sites  # id(attention module) -> Site
        self.summarise = summarise
        self.intervention = intervention
        self.impossible = causal_impossible(segments.device) if causal else None
        self.summaries: dict[int, torch.Tensor] = {}  # layer -> [batch, head, N_METRICS]
        self.output_grams = output_grams  # per layer [head, dv, dv]: W_O^h^T W_O^h (summaries: value-weighted masses)
        self.value_norms: torch.Tensor | None = None  # [batch, head, key]: ||W_O^h v_j|| of the layer being summarised
        self.cross: dict[int, torch.Tensor] = {}  # decoder layer -> [batch, head, 5]: cross-attention masses
        self.calls: Counter[Site] = Counter()
        self.capture = capture  # what to keep (kernels.block_hooks): 'resid', 'attn', 'mlp', 'resid_post', 'head',
        # 'output' (each layer's whole output), 'weights' (attention weights, eager kernel)
        self.captured: dict[tuple[str, int], object] = {}  # (kind, layer) -> activation
        self.patches = patches  # kernels.block_hooks.PatchOp, applied where their kind and layer come by
        self.skipped = skipped  # layers resumed from captured outputs (their attention does not run)
        self.gates = gates  # kernels.block_hooks.GradGates of an attribution pass (its forward builds a graph)
        self.stop_after = stop_after  # end the pass after this layer's attention (kernels.block_hooks.Stopped)
        self._masks_cache: tuple | None = None
        self.scratch = scratch or Scratch()  # the probe's, kept across its forward passes

    # -- where a call comes from -------------------------------------------------------------------
    def enter(self, module) -> Site:
        """The site of the attention module calling the kernel; KernelError for a module the probe did not map."""
        site = self.sites.get(id(module))
        if site is None:
            raise KernelError(f"attention was called by a {type(module).__name__} the model family does not map to a "
                              "layer; this architecture is not supported as loaded")
        self.calls[site] += 1
        return site

    # -- segments ------------------------------------------------------------------------------------
    @cached_property
    def onehot(self) -> torch.Tensor:
        """[batch, seq, 5] float: token -> its segment (padding rows are zero)."""
        seg = self.segments
        return F.one_hot(seg.clamp(min=0), N_SEG).float() * (seg >= 0)[..., None].float()

    @cached_property
    def counts(self) -> torch.Tensor:
        return self.onehot.sum(1)  # [batch, 5] tokens per segment

    @cached_property
    def key_padding(self) -> torch.Tensor:
        return self.segments < 0  # [batch, seq]

    @cached_property
    def _query_span(self) -> tuple[int, int]:
        q_pos = (self.segments == Q).any(0).nonzero().flatten()
        return int(q_pos.min()), int(q_pos.max()) + 1  # the query span over the batch

    @property
    def q_lo(self) -> int:
        return self._query_span[0]

    @property
    def q_hi(self) -> int:
        return self._query_span[1]

    @cached_property
    def q_rows(self) -> torch.Tensor:
        return (self.segments[:, self.q_lo : self.q_hi] == Q).float()  # [batch, nq]

    @cached_property
    def n_query(self) -> torch.Tensor:
        return self.q_rows.sum(1).clamp(min=1)  # [batch]

    @cached_property
    def d_tok(self) -> torch.Tensor:
        return (self.segments == D).float()  # [batch, seq]

    @cached_property
    def n_doc(self) -> torch.Tensor:
        return self.d_tok.sum(1).clamp(min=1)  # [batch]

    @cached_property
    def _same(self) -> torch.Tensor:
        q_ids = self.input_ids[:, self.q_lo : self.q_hi]
        return q_ids[:, :, None] == self.input_ids[:, None, :]  # [batch, nq, seq]

    @cached_property
    def exact(self) -> torch.Tensor:
        return self._same.float() * self.q_rows[..., None] * self.d_tok[:, None, :]  # [batch, nq, seq]

    @cached_property
    def other(self) -> torch.Tensor:
        return (~self._same).float() * self.q_rows[..., None] * self.d_tok[:, None, :]  # [batch, nq, seq]

    # -- interventions -------------------------------------------------------------------------------
    @cached_property
    def seg6(self) -> torch.Tensor:
        return padded_segments(self.segments)  # [batch, seq]

    @cached_property
    def pair_index(self) -> torch.Tensor:
        """[batch, seq*seq]: for every (query_pos, key_pos) its cell in a padded 6 x 6 segment table."""
        return (self.seg6[:, :, None] * (N_SEG + 1) + self.seg6[:, None, :]).flatten(1)

    def directions_removed(self, layer: int) -> torch.Tensor | None:
        """[batch, 5, 5] bool of the directions removed at ``layer``; None when nothing is."""
        iv = self.intervention
        if iv is None or iv.directions is None:
            return None
        remove = iv.directions[:, layer]
        return remove if bool(remove.any()) else None

    def removal(self, layer: int) -> torch.Tensor | None:
        """[batch, seq, seq] bool: True where the intervention removes query_pos -> key_pos at ``layer``."""
        remove = self.directions_removed(layer)
        return None if remove is None else token_removal(remove, self.pair_index)

    def removal_masks(self, layer: int):
        """For the SDPA kernel: None when nothing is removed at ``layer``; else (removal [b, s, s], row keeps a
        segment [b, s, 5], rows that lose something [b, s]), cached across consecutive layers with one table."""
        remove = self.directions_removed(layer)
        if remove is None:
            return None
        if self._masks_cache is not None and torch.equal(self._masks_cache[0], remove):
            return self._masks_cache[1]
        b, s = self.segments.shape
        removal = token_removal(remove, self.pair_index)  # [batch, seq, seq]
        keep6 = F.pad(~remove, (0, 0, 0, 1), value=True)  # [batch, 6, 5]: padding rows keep everything
        keep_rows = keep6.gather(1, self.seg6[..., None].expand(b, s, N_SEG))  # [batch, seq, 5]
        loses = F.pad(remove.any(-1), (0, 1)).gather(1, self.seg6)  # [batch, seq]
        masks = (removal, keep_rows, loses)
        self._masks_cache = (remove, masks)
        return masks

    def qk_edits(self, layer: int) -> list[QKEdit]:
        return [e for e in (self.intervention.qk if self.intervention is not None else ()) if e.layer == layer]

    def edit_queries(self, layer: int, query: torch.Tensor):
        """(query [b, h, q, dh] with the QK-subspace edits of ``layer`` applied, logit correction [b, h, q] or None)."""
        edits = self.qk_edits(layer)
        if not edits:
            return query, None
        query = query.clone()
        correction = torch.zeros(query.shape[:3], dtype=torch.float32, device=query.device)
        for e in edits:
            q = query[:, e.head].float()  # [b, q, dh]
            content = q - e.query_bias.float() if e.query_bias is not None else q
            c = content @ e.a.float()  # [b, q, k]
            rows = e.rows[:, None, None].float()
            query[:, e.head] = (q + (e.factor - 1.0) * rows * (c @ e.b.float().T)).to(query.dtype)
            if e.key_bias_b is not None:  # give back the key bias' share: constant over keys, exact logits
                correction[:, e.head] -= (e.factor - 1.0) * rows[..., 0] * (c @ e.key_bias_b.float())
        return query, correction

    def heads_removed(self, layer: int) -> torch.Tensor | None:
        """[batch, heads] bool of the heads whose output is zeroed at ``layer``; None when none are."""
        iv = self.intervention
        if iv is None or iv.heads is None:
            return None
        return iv.heads[:, layer]
