"""Activation patching over a run's pairs, batched: how much of the score difference between a clean and a corrupted
input one activation recovers, computed exactly (this module) or to first order (:mod:`precompute.analyses.attribution`).

For a (clean, corrupted) input pair (:mod:`precompute.analyses.patching_inputs`), the corrupted input is run with
one activation replaced by the clean run's, and ``effect = (patched - corrupted) / (clean - corrupted)`` (1 = the
activation carries the whole difference, 0 = nothing); where ``|clean - corrupted| < EPSILON`` the pair's effect is
NULL (its scores are kept). Scores are read on the run's patching scale (``--patching-score``: the relevance logit
or log-odds, or the probability of relevance; families.base.SCALES). Summaries robust to small differences, with
intervals over queries: :mod:`precompute.analyses.patching_ranking`.

What is patched (a *site*: a layer and a :class:`Variant`), as TransformerLens, MechIR and Chen et al. name it:

* ``resid``: the residual stream entering the layer (TransformerLens' ``resid_pre``), at every token or one segment's;
* ``attn`` and ``mlp``: the attention and MLP blocks' output projections, before their residual add;
* ``resid_post``: the last layer's output (the stream the score is read from), at the last layer only (elsewhere a
  layer's output is the next layer's ``resid``);
* ``head``: one head's attention output before the output projection, at every position (inserting experiments)
  or at the pooling position (cls).

Segments: inserting experiments align every position, so block sites are patched at all tokens (``all``) and at
each segment's; ``cls`` patches the model's pooling position only (its family's: [CLS] for encoders, where
transformers pools for decoder classifiers, the answer position of yes/no rerankers; MonoT5 has none and is
refused).

Exact patching is batched: patch pairs of similar token length form a batch; the clean run is captured once per
batch; all sites of one layer are rows of one forward pass; the layers below the patched one are not recomputed
(they return the corrupted run's captured output of the layer below, shared, not copied per layer).
bench/patching.py measures it against one full forward per (pair, head) and against attribution patching.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from precompute.kernels.block_hooks import FINAL, OUTPUT, PatchOp, repeat_rows
from precompute.names import PATCH_COMPONENTS, PATCHING_EPSILON, SEGMENTS

EPSILON = PATCHING_EPSILON  # |clean - corrupted| below EPSILON: the pair's effect is NULL
ALL = "all"  # segment of a patch at every token
POOLED = "cls"  # segment of a patch at the pooling position (the cls experiment)
METHODS = ("exact", "attribution")


class PatchingError(ValueError):
    """A patching request this model or run cannot have (one line, for the CLI)."""


@dataclass(frozen=True)
class Variant:
    """One patched activation of a layer: component ('resid', 'attn', 'mlp', 'resid_post' or 'head'), segment
    ('all', a segment, or 'cls' = the pooling position), head."""

    component: str
    segment: str
    head: int | None = None


Site = tuple[int, Variant]  # (layer, variant)


def pooled(experiment: str) -> bool:
    """Is the experiment patched at the pooling position only (its inputs do not align)?"""
    return experiment == "cls"


def segments_of(experiment: str) -> tuple[str, ...]:
    return (POOLED,) if pooled(experiment) else (ALL, *SEGMENTS)


def block_sites(experiment: str, layers: int) -> list[Site]:
    """Every block site of an experiment: resid, attn, mlp at every layer and resid_post at the last, per segment."""
    segments = segments_of(experiment)
    out = [(layer, Variant(c, s)) for layer in range(layers) for c in PATCH_COMPONENTS for s in segments]
    return out + [(layers - 1, Variant(FINAL, s)) for s in segments]


def head_sites(experiment: str, layers: int, heads: int) -> list[Site]:
    segment = POOLED if pooled(experiment) else ALL
    return [(layer, Variant("head", segment, h)) for layer in range(layers) for h in range(heads)]


def all_sites(experiment: str, layers: int, heads: int) -> list[Site]:
    return block_sites(experiment, layers) + head_sites(experiment, layers, heads)


def check_pooling(lm) -> None:
    """Refuse the cls experiment for a model whose score is read at no single encoder position (PatchingError)."""
    from precompute.families import FamilyError

    try:
        lm.family.check_pooling(lm.model)
    except FamilyError as err:
        raise PatchingError(f"the cls experiment patches the position the score is read at, and {err}; use tfc1") from err


def pooling_positions(lm, batch) -> torch.Tensor:
    """[batch] position each row's score is read at, as the model's family pools it."""
    return lm.family.pooling_positions(lm.model, batch.inputs)


def site_masks(lm, experiment: str, batch) -> dict[str, torch.Tensor]:
    """segment -> [batch, seq] bool: where a site of that segment patches ``batch`` (the corrupted input)."""
    seg = batch.segments.long()
    if pooled(experiment):
        where = torch.zeros_like(seg, dtype=torch.bool)
        where[torch.arange(len(seg)), pooling_positions(lm, batch)] = True
        return {POOLED: where}
    return {ALL: seg >= 0, **{s: seg == i for i, s in enumerate(SEGMENTS)}}


def on_corrupted(lm, experiment: str, clean: torch.Tensor, clean_batch, corrupted_batch) -> torch.Tensor:
    """A clean activation [n, seq_clean, ...] laid out on the corrupted input's positions: itself where the inputs
    align; at the corrupted pooling position, the clean pooling position's value (cls; zeros elsewhere)."""
    if not pooled(experiment):
        return clean
    out = clean.new_zeros((*corrupted_batch.segments.shape, *clean.shape[2:]))
    rows = torch.arange(len(out))
    out[rows, pooling_positions(lm, corrupted_batch)] = clean[rows, pooling_positions(lm, clean_batch)]
    return out


def activation(acts: dict, layer: int, variant: Variant) -> torch.Tensor:
    """The captured activation a site patches: [n, seq, hidden], or [n, seq, head_dim] for a head."""
    if variant.component == "head":
        return acts[("head", layer)][:, variant.head]
    return acts[(variant.component, layer)]


class Patcher:
    """A probe and the component hooks of a model, installed together for a sweep: the SDPA kernel where it computes
    the family's attention exactly (exact patching), else, and for attribution patching (which needs the attention
    weights and a graph), the summary kernel's eager path."""

    def __init__(self, lm, *, eager: bool = False):
        from precompute.kernels.block_hooks import ComponentHooks
        from precompute.kernels.eager import SummaryProbe
        from precompute.kernels.sdpa import AblationProbe

        self.lm = lm
        self.probe = AblationProbe(lm) if lm.family.sdpa_ablation(lm.model) and not eager else SummaryProbe(lm)
        self.hooks = ComponentHooks(lm)

    def __enter__(self):
        self.probe.__enter__()
        try:
            self.hooks.__enter__()
        except BaseException:
            self.probe.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)
        self.probe.__exit__(*exc)

    def run(self, batch, **state):
        """(scores, batch state) of one forward pass with the given options (scale, capture, patches, skipped, ...)."""
        return self.probe.forward(batch, **state)


def _captured_kinds(sites: Sequence[Site]) -> frozenset[str]:
    return frozenset(v.component for _, v in sites)


def patch_batch(patcher: Patcher, experiment: str, clean, corrupted, sites: Sequence[Site], *, rows_per_forward: int,
                scale: str = "logit", resume: bool = True):
    """Exact patching of ``sites`` for one batch of patch pairs: (clean [n], corrupted [n], patched {site: [n]}).
    ``resume`` False recomputes the layers below each patched one (the plain way, for comparisons)."""
    lm = patcher.lm
    n = corrupted.segments.shape[0]
    clean_scores, state = patcher.run(clean, scale=scale, capture=_captured_kinds(sites))
    clean_acts = state.captured
    corrupted_scores, state = patcher.run(corrupted, scale=scale, capture=frozenset({OUTPUT} if resume else ()))
    corrupted_out = state.captured
    masks = site_masks(lm, experiment, corrupted)
    per_forward = max(1, rows_per_forward // n)
    by_layer: dict[int, list[Variant]] = {}
    for layer, variant in sites:
        by_layer.setdefault(layer, []).append(variant)
    patched: dict[Site, torch.Tensor] = {}
    for layer, todo in sorted(by_layer.items()):
        for start in range(0, len(todo), per_forward):
            group = todo[start : start + per_forward]
            k = len(group)
            ops = tuple(PatchOp(v.component, layer, slice(i * n, (i + 1) * n), masks[v.segment],
                                on_corrupted(lm, experiment, activation(clean_acts, layer, v), clean, corrupted),
                                v.head) for i, v in enumerate(group))
            batch = corrupted.repeat(k)
            if resume and layer > 0:
                with patcher.hooks.resume_above(layer, repeat_rows(corrupted_out[(OUTPUT, layer - 1)], k, n)):
                    scores, _ = patcher.run(batch, scale=scale, patches=ops, skipped=frozenset(range(layer)))
            else:
                scores, _ = patcher.run(batch, scale=scale, patches=ops)
            for i, v in enumerate(group):
                patched[(layer, v)] = scores[i * n : (i + 1) * n]
    return clean_scores, corrupted_scores, patched


def effect(clean: np.ndarray, corrupted: np.ndarray, patched: np.ndarray) -> np.ndarray:
    """(patched - corrupted) / (clean - corrupted), NaN (stored NULL) where |clean - corrupted| < EPSILON."""
    diff = clean - corrupted
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.abs(diff) < EPSILON, np.nan, (patched - corrupted) / diff)


def effect_columns(experiment: str, method: str, items: Sequence, clean, corrupted, patched: dict,
                   graddrop: dict | None = None) -> dict[str, object]:
    """``patching_effects`` columns of one batch (numpy arrays, site-major): ``patched`` and ``graddrop`` map sites to
    [n] tensors or arrays."""
    clean = np.asarray(torch.as_tensor(clean).float().cpu())
    corrupted = np.asarray(torch.as_tensor(corrupted).float().cpu())
    sites = list(patched)
    n, k = len(items), len(sites)
    values = np.stack([np.asarray(torch.as_tensor(patched[s]).float().cpu()) for s in sites]) if k else \
        np.zeros((0, n))
    effects = effect(clean[None], corrupted[None], values)
    heads = np.array([-1 if v.head is None else v.head for _, v in sites], dtype=np.int32)
    cols = {
        "experiment": np.full(n * k, experiment, dtype=object), "method": np.full(n * k, method, dtype=object),
        "patch_id": np.tile([i.patch_id for i in items], k), "pair_id": np.tile([i.pair_id for i in items], k),
        "layer": np.repeat([layer for layer, _ in sites], n),
        "head": np.ma.masked_less(np.repeat(heads, n), 0),
        "component": np.repeat(np.array([v.component for _, v in sites], dtype=object), n),
        "segment": np.repeat(np.array([v.segment for _, v in sites], dtype=object), n),
        "clean": np.tile(clean, k), "corrupted": np.tile(corrupted, k), "patched": values.ravel(),
        "effect": np.ma.masked_invalid(effects.ravel()),
        "graddrop": np.ma.masked_all(n * k) if graddrop is None else
        np.stack([np.asarray(torch.as_tensor(graddrop[s]).float().cpu()) for s in sites]).ravel(),
    }
    return cols
